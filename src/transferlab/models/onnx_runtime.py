"""ONNX graphs run by ONNX Runtime, without torch: the frozen pass's prefix graphs and a run's export.

Nothing here imports torch, so `predict` on a run's export prints its first answer in under a second where
the PyTorch path spends 4-6 s importing torch, torchvision and timm on 2 cores (measured in README)."""

import os
from pathlib import Path
from typing import Callable

import numpy as np

from transferlab.data.fingerprints import file_digest_once
from transferlab.data.images import Preprocessing
from transferlab.errors import UserError, error_text, quoted
from transferlab.models.model_meta import META_FILE, WEIGHTS_FILE, read_model_meta

INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_FILE, SIDECAR_FILE = "model.onnx", "model.onnx.json"
AUTO_ONNX = "the run's ONNX export when it was made from the run's model, else PyTorch"  # what onnx=None does

Logits = Callable[[np.ndarray], np.ndarray]  # normalised NCHW float32 batch -> logits


def has_model(run_dir: Path) -> bool:
    """A run folder holds the PyTorch model; an export on its own (`export --out`) does not."""
    return (Path(run_dir) / META_FILE).is_file() and (Path(run_dir) / WEIGHTS_FILE).is_file()


def export_fix(run_dir: Path) -> str:
    if not has_model(run_dir):
        return f"export it again from its run folder: `transferlab export RUN --out {run_dir}`"
    return f"run `transferlab export {run_dir}` to make it again, or use --no-onnx"


def onnxruntime_session(path: Path, threads: int | None = None):
    """All graph optimisations; intra-op threads as given (torch's count in training), else OMP_NUM_THREADS
    as torch reads it, else ONNX Runtime's default of one per physical core."""
    import onnxruntime  # here, not at the top: a run on CUDA never pays for the import

    options = onnxruntime.SessionOptions()
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"]) or None
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is one chain of convolutions: nothing to run beside it
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def has_export(run_dir: Path) -> bool:
    return (Path(run_dir) / ONNX_FILE).is_file() and (Path(run_dir) / SIDECAR_FILE).is_file()


def export_problem(run_dir: Path) -> str | None:
    """Why the export in `run_dir` must not stand for the model beside it, or None. Its sidecar must be sound,
    and match model.json's fields and the weights' digest: a model trained again, or files copied in beside an
    older export, do not. An export on its own (`export --out`) is its own model. Either way the graph must be
    the one its sidecar was written for: another run's model.onnx copied in would give its logits under these
    class names."""
    run_dir = Path(run_dir)
    try:
        sidecar = read_model_meta(run_dir / SIDECAR_FILE, fix="")
    except UserError as e:
        return str(e)
    onnx = sidecar.get("onnx") if isinstance(sidecar.get("onnx"), dict) else {}
    if onnx.get("graph_digest") is None:
        return f"{quoted(run_dir / SIDECAR_FILE)} does not record the graph it describes (an older transferlab)"
    if onnx["graph_digest"] != file_digest_once(run_dir / ONNX_FILE):
        return f"{quoted(run_dir / ONNX_FILE)} is not the graph {quoted(run_dir / SIDECAR_FILE)} was written for"
    meta_path, weights_path = run_dir / META_FILE, run_dir / WEIGHTS_FILE
    if not has_model(run_dir):
        return None
    digest = onnx.get("weights_digest")
    if digest is None:
        return f"{quoted(run_dir / SIDECAR_FILE)} does not record the weights it was made from (an older transferlab)"
    model_json = read_model_meta(meta_path)
    if {k: sidecar.get(k) for k in model_json} != model_json or digest != file_digest_once(weights_path):
        return f"{quoted(run_dir / ONNX_FILE)} was not exported from the model now in '{run_dir}'"
    return None


def load_onnx_model(run_dir: Path) -> tuple[Logits, dict]:
    """(logits of normalised NCHW batches, meta) from an export (`transferlab export`), for `predict`."""
    run_dir = Path(run_dir)
    onnx_path, sidecar_path = run_dir / ONNX_FILE, run_dir / SIDECAR_FILE
    if not has_export(run_dir):
        raise UserError(f"'{run_dir}' has no {ONNX_FILE} + {SIDECAR_FILE}; run `transferlab export {run_dir}` first")
    problem = export_problem(run_dir)
    if problem:
        raise UserError(f"{problem}; {export_fix(run_dir)}")
    meta = read_model_meta(sidecar_path)
    try:
        session = onnxruntime_session(onnx_path)
    except Exception as e:  # onnxruntime raises its own exception types for damaged graphs
        raise UserError(f"{quoted(onnx_path)} cannot be loaded ({error_text(e)}); "
                        f"{export_fix(run_dir)}") from None

    def logits(x: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: x})[0]

    return logits, meta | {"preprocessing": Preprocessing.from_dict(meta["preprocessing"])}
