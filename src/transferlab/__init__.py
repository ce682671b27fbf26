"""transferlab: a strong image classifier from a small dataset by transfer learning, and the proof.

Public API:
    compare(CompareConfig(...)) -> run dir with results.json, report.md, model.safetensors
        (under torchrun: data-parallel over the ranks; rank 0 writes)
    study(StudyConfig(CompareConfig(...), studies=("data",), seeds=3)) -> study dir with results.json, report.md
    load_model(run_dir), predict(run_dir, images), evaluate_folder(run_dir, labelled_dir)
    export(run_dir) -> model.onnx + model.onnx.json (parity-checked; compare writes them too), which predict and
        evaluate_folder run on ONNX Runtime by default (onnx=False: the PyTorch model)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.api_checks import check_flag, check_instance, check_path
from transferlab.errors import UserError

if TYPE_CHECKING:
    from transferlab.experiments.config import CompareConfig
    from transferlab.experiments.study_config import StudyConfig

__all__ = ["CompareConfig", "Prediction", "StudyConfig", "UserError", "compare", "evaluate_folder", "export",
           "load_model", "predict", "resume", "study", "write_report", "write_study_report"]

# Imported on first use (PEP 562), so that `import transferlab` and `transferlab report` load neither torch
# nor timm: name -> (module, attribute in it).
_LAZY = {"CompareConfig": ("transferlab.experiments.config", "CompareConfig"),
         "StudyConfig": ("transferlab.experiments.study", "StudyConfig"),
         "export": ("transferlab.deploy", "export_model"),
         "load_model": ("transferlab.models.saved", "load_model"),
         "Prediction": ("transferlab.predict", "Prediction"),
         "evaluate_folder": ("transferlab.predict", "evaluate_folder"),
         "predict": ("transferlab.predict", "predict"),
         "write_report": ("transferlab.reporting.report", "write_report"),
         "write_study_report": ("transferlab.reporting.study_report", "write_study_report")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'transferlab' has no attribute '{name}'")
    module = importlib.import_module(_LAZY[name][0])
    # All of that module's names at once: importing the submodule transferlab.predict has just set this
    # package's `predict` to the module, and the function of the same name must take it back.
    globals().update({api_name: getattr(module, attribute) for api_name, (module_name, attribute) in _LAZY.items()
                      if module_name == module.__name__})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def compare(cfg: CompareConfig) -> Path:
    """Run the three phases and write the report; returns the run directory."""
    from transferlab.experiments.compare import run_compare
    from transferlab.experiments.config import CompareConfig
    from transferlab.experiments.tracking import log_report
    from transferlab.reporting.report import write_report
    from transferlab.training.ranks import torchrun_ranks
    check_instance("compare", "cfg", cfg, CompareConfig, "compare(CompareConfig(data_dir='data'))")
    run_dir = run_compare(cfg)
    if torchrun_ranks().is_main:  # under torchrun only rank 0 writes
        write_report(run_dir)
        log_report(run_dir)
    return run_dir


def resume(run_dir: Path, show_progress: bool = True) -> Path:
    """Continue an interrupted compare run from its last finished epoch."""
    from transferlab.experiments.compare import resume_compare
    from transferlab.experiments.tracking import log_report
    from transferlab.reporting.report import write_report
    from transferlab.training.ranks import torchrun_ranks
    check_path("resume", "run_dir", run_dir), check_flag("resume", "show_progress", show_progress)
    run_dir = resume_compare(run_dir, show_progress=show_progress)
    if torchrun_ranks().is_main:  # under torchrun only rank 0 writes
        write_report(run_dir)
        log_report(run_dir)
    return run_dir


def study(cfg: StudyConfig) -> Path:
    """Train the study's missing cells and write its report; returns the study directory."""
    from transferlab.experiments.study import run_study
    from transferlab.experiments.study_config import StudyConfig
    from transferlab.reporting.study_report import write_study_report
    check_instance("study", "cfg", cfg, StudyConfig, "study(StudyConfig(CompareConfig(data_dir='data')))")
    study_dir = run_study(cfg)
    write_study_report(study_dir)
    return study_dir
