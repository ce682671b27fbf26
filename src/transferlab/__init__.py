"""transferlab: a strong image classifier from a small dataset by transfer learning, and the proof.

Public API:
    compare(CompareConfig(...)) -> run dir with results.json, report.md, model.safetensors
        (under torchrun: data-parallel over the ranks; rank 0 writes)
    study(StudyConfig(CompareConfig(...), studies=("data",), seeds=3)) -> study dir with results.json, report.md
    load_model(run_dir), predict(run_dir, images), evaluate_folder(run_dir, labelled_dir)
    export(run_dir) -> model.onnx + model.onnx.json (parity-checked); predict(..., onnx=True) runs it
"""

from pathlib import Path

from transferlab.api_checks import check_flag, check_instance, check_path
from transferlab.deploy import export_model as export
from transferlab.errors import UserError
from transferlab.experiments.compare import resume_compare, run_compare
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.study import StudyConfig, run_study
from transferlab.experiments.tracking import log_report
from transferlab.models.saved import load_model
from transferlab.predict import Prediction, evaluate_folder, predict
from transferlab.reporting.report import write_report
from transferlab.reporting.study_report import write_study_report
from transferlab.training.distributed import torchrun_ranks

__all__ = ["CompareConfig", "Prediction", "StudyConfig", "UserError", "compare", "evaluate_folder", "export",
           "load_model", "predict", "resume", "study", "write_report", "write_study_report"]


def compare(cfg: CompareConfig) -> Path:
    """Run the three phases and write the report; returns the run directory."""
    check_instance("compare", "cfg", cfg, CompareConfig, "compare(CompareConfig(data_dir='data'))")
    run_dir = run_compare(cfg)
    if torchrun_ranks().is_main:  # under torchrun only rank 0 writes
        write_report(run_dir)
        log_report(run_dir)
    return run_dir


def resume(run_dir: Path, show_progress: bool = True) -> Path:
    """Continue an interrupted compare run from its last finished epoch."""
    check_path("resume", "run_dir", run_dir), check_flag("resume", "show_progress", show_progress)
    run_dir = resume_compare(run_dir, show_progress=show_progress)
    if torchrun_ranks().is_main:  # under torchrun only rank 0 writes
        write_report(run_dir)
        log_report(run_dir)
    return run_dir


def study(cfg: StudyConfig) -> Path:
    """Train the study's missing cells and write its report; returns the study directory."""
    check_instance("study", "cfg", cfg, StudyConfig, "study(StudyConfig(CompareConfig(data_dir='data')))")
    study_dir = run_study(cfg)
    if torchrun_ranks().is_main:
        write_study_report(study_dir)
    return study_dir
