"""report.html in a real headless browser: opened alone, offline, every section and plot renders."""

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium/Chrome on PATH "
                                "(`apt-get install chromium`; .ci/run installs it where apt-get works)")
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--hide-scrollbars"]


def _browser(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, *OFFLINE, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=True)


def render(html: Path, tmp_path: Path) -> tuple[str, np.ndarray]:
    """(the DOM after load, the screenshot as an RGB array) of `html` copied alone into an empty folder."""
    alone = tmp_path / "alone"
    alone.mkdir()
    page = Path(shutil.copy(html, alone / "report.html"))
    dom = _browser("--dump-dom", page.as_uri(), cwd=alone).stdout
    _browser(f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1200,3000", page.as_uri(), cwd=alone)
    return dom, np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))


def test_compare_report_renders_offline_with_its_plots_embedded(finished_run, tmp_path):
    dom, shot = render(finished_run / "report.html", tmp_path)
    headings = re.findall(r"<h2[^>]*>([^<]+)", dom)
    for section in ("Before and after", "Verdict", "Learning curves", "Confusion matrix"):
        assert any(h.startswith(section) for h in headings), (section, headings)
    sources = re.findall(r'<img[^>]*src="([^"]+)"', dom)
    assert len(sources) >= 2
    for src in sources:  # nothing to fetch: each plot is inside the page and a valid PNG
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert min(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size) > 100
    assert "<table" in dom and "fine-tuned" in dom
    rows_with_ink = np.nonzero((shot < 200).any(axis=(1, 2)))[0]
    assert shot.shape[0] == 3000 and rows_with_ink.max() - rows_with_ink.min() > 1000  # text and plots drawn


def test_audit_report_shows_the_top_issues_as_thumbnails(planted_labels, tmp_path):
    from conftest import tiny_config
    from transferlab.experiments.audit import run_audit
    folder = run_audit(tiny_config(planted_labels[0], tmp_path, image_size_px=64))
    dom, _ = render(folder / "report.html", tmp_path)
    assert any(h.startswith("Audit") for h in re.findall(r"<h2[^>]*>([^<]+)", dom))
    tags = [tag for tag in re.findall(r"<img[^>]*>", dom) if 'alt="the top issues"' in tag]
    assert len(tags) == 1
    src = re.search(r'src="([^"]+)"', tags[0]).group(1)
    assert src.startswith("data:image/png;base64,")
    assert min(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size) > 100
