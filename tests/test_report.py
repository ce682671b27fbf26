"""report on runs that did not finish, and on many classes: one `error:` line, or a bounded plot."""

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.cli import main
from transferlab.reporting.plots import ANNOTATE_MAX_CLASSES
from transferlab.reporting.report import write_report

MAX_PNG_SIDE_PX = 2500


@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.mark.parametrize("content", [None, b"", b'{"phases": {', b"[]"],
                         ids=["missing", "empty", "cut short", "not an object"])
def test_report_on_an_unfinished_run_is_one_line_naming_results_json(run_copy, capsys, content):
    results = run_copy / "results.json"
    if content is None:
        results.unlink()
    else:
        results.write_bytes(content)
    assert main(["report", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert str(results) in err and f"--resume '{run_copy}'" in err


def test_report_on_a_missing_run_folder_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(tmp_path / "nowhere") in err


def _with_classes(results: dict, n: int) -> dict:
    """The finished run's results, re-labelled as n classes with a plausible (diagonal-heavy) matrix."""
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 3, (n, n)) + np.diag(rng.integers(5, 40, n))
    names = [f"species {i:03d} with a long descriptive name" for i in range(n)]
    data = results["data"] | {"class_names": names, "train_per_class": [10] * n}
    return results | {"data": data, "confusion_matrix": results["confusion_matrix"] | {"matrix": matrix.tolist()}}


@pytest.mark.parametrize("n_classes", [45, 250])
def test_many_classes_give_a_bounded_confusion_matrix_and_say_so(run_copy, n_classes):
    assert "the plot shows" not in (run_copy / "report.md").read_text()  # 5 classes: every count is drawn
    results = json.loads((run_copy / "results.json").read_text())
    (run_copy / "results.json").write_text(json.dumps(_with_classes(results, n_classes)))
    write_report(run_copy)
    with Image.open(run_copy / "confusion_matrix.png") as png:
        assert max(png.size) <= MAX_PNG_SIDE_PX, png.size
    report = (run_copy / "report.md").read_text()
    assert f"With {n_classes} classes the plot shows" in report
    assert f"counts up to {ANNOTATE_MAX_CLASSES} classes" in report
    assert f"With {n_classes} classes the plot shows" in (run_copy / "report.html").read_text()



def test_html_embeds_images_renders_tables_and_escapes_names(tmp_path):
    from transferlab.reporting.report import markdown_to_html
    Image.new("RGB", (3, 2), "red").save(tmp_path / "plot.png")
    page = markdown_to_html("# Run\n\n| model | val acc |\n|---|---:|\n| fine-tuned | 90.0% |\n\n"
                            "![a plot](plot.png)\n\n- `<script>` & **met**\n", tmp_path)
    assert re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", page) == ["model", "val acc", "fine-tuned", "90.0%"]
    png = base64.b64encode((tmp_path / "plot.png").read_bytes()).decode("ascii")
    assert re.findall(r'<img[^>]*src="([^"]+)"', page) == [f"data:image/png;base64,{png}"]
    assert "<h1>Run</h1>" in page and "<li><code>&lt;script&gt;</code> &amp; <strong>met</strong></li>" in page
