"""Several `compare` processes on different data sharing one cache dir finish with their solo results."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import metrics_rows

N_RUNS = 3




def _args(data: Path, runs: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "transferlab.cli", "compare", str(data), "--backbone", "tf_efficientnet_lite0",
            "--image-size", "32", "--frozen-epochs", "1", "--finetune-epochs", "1", "--scratch-epochs", "1",
            "--unfreeze-blocks", "2", "--no-augment", "--batch-size", "16", "--runs-dir", str(runs),
            "--cache-dir", str(cache), "--quiet"]


@pytest.fixture(scope="module")
def datasets(small_data, tmp_path_factory) -> list[Path]:
    """Three different datasets: each drops one class and takes other images of the rest."""
    root = tmp_path_factory.mktemp("concurrent")
    classes = sorted(p.name for p in small_data.iterdir())
    made = []
    for i in range(N_RUNS):
        data = root / f"data{i}"
        for name in classes[:i] + classes[i + 1:]:
            (data / name).mkdir(parents=True)
            for image in sorted((small_data / name).iterdir())[i:i + 9]:
                shutil.copy(image, data / name / image.name)
        made.append(data)
    return made


def test_concurrent_runs_on_one_cache_match_solo_runs(datasets, tmp_path):
    solo = []
    for i, data in enumerate(datasets):  # each alone, with a cache of its own
        subprocess.run(_args(data, tmp_path / f"solo{i}", tmp_path / f"cache{i}"), check=True, timeout=600,
                       capture_output=True)
        solo.append(next((tmp_path / f"solo{i}").iterdir()))
    shared = tmp_path / "shared-cache"
    processes = [subprocess.Popen(_args(data, tmp_path / f"together{i}", shared), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i, data in enumerate(datasets)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert "corrupt" not in err and "Traceback" not in err
    for i, reference in enumerate(solo):
        together = next((tmp_path / f"together{i}").iterdir())
        assert metrics_rows(together) == metrics_rows(reference)
        accuracies = [json.loads((run / "results.json").read_text())["phases"] for run in (together, reference)]
        assert {k: p["val_acc"] for k, p in accuracies[0].items()} == \
            {k: p["val_acc"] for k, p in accuracies[1].items()}
