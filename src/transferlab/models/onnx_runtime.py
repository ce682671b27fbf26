"""ONNX graphs run by ONNX Runtime, without torch: the frozen pass's prefix graphs and a run's export.

Nothing here imports torch, so `predict` on a run's export prints its first answer in under a second where
the PyTorch path spends 4-6 s importing torch, torchvision and timm on 2 cores (measured in README)."""

from pathlib import Path
from typing import Callable

import numpy as np

from transferlab.data.fingerprints import file_digest
from transferlab.data.images import Preprocessing
from transferlab.errors import UserError, quoted
from transferlab.models.model_meta import read_model_meta

INPUT_NAME = "image"
ONNX_FILE, SIDECAR_FILE = "model.onnx", "model.onnx.json"
META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"  # the PyTorch model an export was made from

Logits = Callable[[np.ndarray], np.ndarray]  # normalised NCHW float32 batch -> logits


def onnxruntime_session(path: Path, threads: int | None = None):
    """All graph optimisations; intra-op threads as given (torch's count in training), else ONNX Runtime's
    default of one per physical core, which is also torch's."""
    import onnxruntime  # here, not at the top: a run on CUDA never pays for the import

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is one chain of convolutions: nothing to run beside it
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def has_export(run_dir: Path) -> bool:
    return (Path(run_dir) / ONNX_FILE).is_file() and (Path(run_dir) / SIDECAR_FILE).is_file()


def is_stale_export(run_dir: Path, sidecar: dict) -> bool:
    """An export beside a model it was not made from (the model was trained again, or its files copied in):
    its model.json fields or its weights' digest differ. An export on its own (`export --out`) is its own model."""
    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / META_FILE, run_dir / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        return False
    model_json = read_model_meta(meta_path)
    onnx = sidecar.get("onnx")
    digest = onnx.get("weights_digest") if isinstance(onnx, dict) else None
    return {k: sidecar.get(k) for k in model_json} != model_json or digest != file_digest(weights_path)


def load_onnx_model(run_dir: Path) -> tuple[Logits, dict]:
    """(logits of normalised NCHW batches, meta) from an export (`transferlab export`), for `predict`."""
    run_dir = Path(run_dir)
    onnx_path, sidecar_path = run_dir / ONNX_FILE, run_dir / SIDECAR_FILE
    if not has_export(run_dir):
        raise UserError(f"'{run_dir}' has no {ONNX_FILE} + {SIDECAR_FILE}; run `transferlab export {run_dir}` first")
    meta = read_model_meta(sidecar_path)
    if is_stale_export(run_dir, meta):
        raise UserError(f"{quoted(onnx_path)} was not exported from the model now in '{run_dir}'; run "
                        f"`transferlab export {run_dir}` again")
    try:
        session = onnxruntime_session(onnx_path)
    except Exception as e:  # onnxruntime raises its own exception types for damaged graphs
        raise UserError(f"{quoted(onnx_path)} cannot be loaded ({str(e).splitlines()[0][:120]}); "
                        f"run `transferlab export {run_dir}` again") from None

    def logits(x: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: x})[0]

    return logits, meta | {"preprocessing": Preprocessing.from_dict(meta["preprocessing"])}
