"""A run's model as ONNX (`transferlab export`): one graph from normalised image to logits, plus a sidecar.

The graph has a dynamic batch axis and takes NCHW float32 images already normalised; the sidecar JSON
(model.json's fields, so `predict` checks it the same way, plus an "onnx" section with the digest of the
weights it was made from) says how to decode and normalise. compare writes one at the end of every run.
The export shares its exporter with the frozen-pass engine, and is checked against PyTorch before it is
kept: a graph that does not reproduce the model's logits is never left behind.
"""

import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from transferlab.api_checks import check_path, check_paths
from transferlab.atomic import check_creatable, check_not_in_the_way, write_json_atomic
from transferlab.data.fingerprints import file_digest
from transferlab.data.images import ImageDecodeError, load_for_model, normalised_nchw
from transferlab.errors import UserError, error_text, quoted
from transferlab.options import EXPORT_FORMATS
from transferlab.models.onnx_export import EXAMPLE_BATCH_SIZE, OnnxExportError, export_onnx
from transferlab.models.model_meta import WEIGHTS_FILE
from transferlab.models.onnx_runtime import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, SIDECAR_FILE, onnxruntime_session
from transferlab.models.saved import load_model

PARITY_TOLERANCE = 1e-4   # max |delta logit|, fp32 on CPU
RANDOM_PARITY_IMAGES = 8  # without --check-images: seeded noise images, decoded-pixel range


def _parity_inputs(prep, images: list[Path]) -> tuple[torch.Tensor, str]:
    """Normalised as `predict` normalises (NumPy), so the check covers the very inputs the export will get."""
    if images:
        try:
            pixels, used = np.stack([load_for_model(p, prep) for p in images]), f"{len(images)} given images"
        except ImageDecodeError as e:
            raise UserError(f"--check-images: {e}; give Pillow-readable images") from None
    else:
        size = prep.image_size_px
        pixels = np.random.default_rng(0).integers(0, 256, size=(RANDOM_PARITY_IMAGES, size, size, 3), dtype=np.uint8)
        used = f"{RANDOM_PARITY_IMAGES} seeded noise images"
    return torch.from_numpy(normalised_nchw(pixels, prep)), used


def export_model(run_dir: Path, out_dir: Path | None = None, fmt: str = "onnx",
                 check_images: list[Path] | None = None) -> dict:
    """Write model.onnx + model.onnx.json into `out_dir` (default: the run folder); returns the sidecar."""
    run_dir = check_path("export", "run_dir", run_dir)
    check_images = [] if check_images is None else check_paths("export", "check_images (--check-images)", check_images)
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {quoted(fmt)} (option --format); choose one of: "
                        f"{', '.join(EXPORT_FORMATS)}")
    out_dir = run_dir if out_dir is None else check_path("export", "out_dir (--out)", out_dir)
    check_creatable(out_dir, "--out")  # before the model is even read: a bad --out costs nothing
    if (out_dir / WEIGHTS_FILE).exists() and out_dir.resolve() != run_dir.resolve():  # its own export, replaced
        raise UserError(f"--out {quoted(out_dir)} is another run's folder (it has {WEIGHTS_FILE}): its export "
                        f"would be replaced by this run's; give a folder of its own, or `transferlab export "
                        f"{quoted(out_dir)}` for that run")
    check_not_in_the_way(files=[out_dir / ONNX_FILE, out_dir / SIDECAR_FILE])
    model, meta = load_model(run_dir)
    prep = meta["preprocessing"]
    x, inputs_used = _parity_inputs(prep, check_images)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, sidecar_path = out_dir / ONNX_FILE, out_dir / SIDECAR_FILE
    checking = out_dir / f".{ONNX_FILE}.checking"  # an earlier export stays until this one has passed
    try:
        size = prep.image_size_px
        export_onnx(model.eval(), torch.zeros(EXAMPLE_BATCH_SIZE, 3, size, size), checking, [OUTPUT_NAME])
    except OnnxExportError as e:
        raise UserError(f"cannot export the model of {quoted(run_dir)} to ONNX ({e}); report this with the "
                        "backbone's name") from None
    with torch.no_grad():
        expected = model(x).numpy()
    try:
        got = onnxruntime_session(checking, torch.get_num_threads()).run(None, {INPUT_NAME: x.contiguous().numpy()})[0]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types, e.g. for an operator it lacks
        checking.unlink(missing_ok=True)
        raise UserError(f"ONNX Runtime cannot run the export of {quoted(run_dir)} ({error_text(e)}); nothing "
                        "was changed; report this with the backbone's name") from None
    delta = float(np.abs(got - expected).max())
    if not delta <= PARITY_TOLERANCE:
        checking.unlink()
        raise UserError(f"the ONNX export of {quoted(run_dir)} differs from PyTorch by {delta:.1e} in the logits "
                        f"(limit {PARITY_TOLERANCE:g}); nothing was changed; report this with the backbone's name")
    sidecar_path.unlink(missing_ok=True)  # a graph without its sidecar is refused, never paired with a stale one
    os.replace(checking, onnx_path)
    sidecar = meta | {"preprocessing": prep.to_dict(), "onnx": {
        "file": ONNX_FILE, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "input_layout": "NCHW float32, decoded and normalised as 'preprocessing' says; any batch size",
        "parity_max_abs_logit_delta": delta, "parity_inputs": inputs_used,
        "weights_digest": file_digest(run_dir / WEIGHTS_FILE), "graph_digest": file_digest(onnx_path),
        "torch": torch.__version__, "onnxruntime": version("onnxruntime")}}
    write_json_atomic(sidecar_path, sidecar)
    return sidecar
