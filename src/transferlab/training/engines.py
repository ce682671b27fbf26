"""Which engine runs a frozen pass (the prefix whose outputs the caches keep, the audit's feature levels):
PyTorch, or ONNX Runtime on CPU.

Both take the decode cache's uint8 NHWC pixels: the ONNX graph normalises inside, where ONNX Runtime
fuses it into the first convolution's input, instead of PyTorch making three float copies per batch first.

On CPU, ONNX Runtime runs the frozen prefix 2.7-4.7x faster than PyTorch eager channels_last (2 cores,
224 px: EfficientNet-Lite0 49 -> 131 img/s, MobileNetV2 47 -> 219 img/s); on CUDA, PyTorch is the fast one.
An ONNX graph is a second implementation of the network, so the first batch is checked against PyTorch
and on a mismatch the runner falls back to PyTorch for good, with one warning: the caches must hold
what the PyTorch model computes.
"""

import logging
import warnings
from pathlib import Path
from typing import Callable

import torch

from transferlab.data.images import Preprocessing
from transferlab.errors import UserError
from transferlab.options import ENGINES
from torch import nn

from transferlab.models.onnx_export import (EXAMPLE_BATCH_SIZE, EXPORTERS, OnnxExportError, cached_onnx,
                                             output_names)
from transferlab.models.onnx_runtime import INPUT_NAME, onnxruntime_session
from transferlab.models.transfer_model import TransferModel
from transferlab.training.inputs import normalisation, normalise_by
from transferlab.training.precision import prefix_autocast

log = logging.getLogger(__name__)

# Parity rule, per output: max |onnx - torch| <= PARITY_TOLERANCE * max(1, max |torch|), i.e. absolute for
# outputs within +-1 and relative to the largest magnitude above that (mid-network activations reach ~30).
# Measured: ~1e-6 of the scale; the fp16 caches round at ~5e-4 relative, so this is well below what is kept.
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 8  # of the first batch: every kernel runs on them, and PyTorch pays for 8 images, not 64

Prefixes = Callable[[torch.Tensor], list[torch.Tensor]]


def resolve_engine(engine: str, device: torch.device) -> str:
    """'auto' -> onnxruntime on CPU, torch elsewhere; a choice that cannot run is a UserError."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}' (option --engine); choose one of: {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnxruntime" if device.type == "cpu" else "torch"
    if engine == "onnxruntime" and device.type != "cpu":
        raise UserError(f"--engine onnxruntime runs on the CPU only; use --engine torch or auto with "
                        f"--device {device.type}")
    return engine


def engine_version(engine: str) -> str:
    """Part of every cache key: the stored rows come from this engine's kernels."""
    if engine == "onnxruntime":
        import onnxruntime
        return onnxruntime.__version__
    return torch.__version__


PIXELS_IN = "uint8 NHWC pixels in, normalised in the graph"  # part of the graph's cache key


def computed_by(engine: str, device: torch.device) -> tuple:
    """What makes rows from `engine` (resolved) differ from another's: part of every frozen-pass cache key."""
    return (compute_dtype(device), engine, engine_version(engine),
            (EXPORTERS, PIXELS_IN) if engine == "onnxruntime" else None)


def compute_dtype(device: torch.device) -> str:
    """What the frozen prefix runs in (bf16 on GPUs that have it, else fp32)."""
    with prefix_autocast(device):
        return str(torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32)


class PixelsToOutputs(nn.Module):
    """uint8 NHWC pixels -> `outputs(network, normalised images)`: a frozen pass as one forward()."""

    def __init__(self, network: nn.Module, outputs: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]],
                 prep: Preprocessing):
        super().__init__()
        self.network, self.outputs = network, outputs  # a submodule: its weights go into the exported graph
        mean, std = normalisation(prep, next(network.parameters()).device)
        self.register_buffer("mean", mean, persistent=False)  # buffers: traced as graph constants
        self.register_buffer("std", std, persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.outputs(self.network, normalise_by(pixels, self.mean, self.std)))


def prefixes_of(model: TransferModel, last_units: list[int], prep: Preprocessing) -> PixelsToOutputs:
    """The frozen pass of the caches: `model.prefixes` at `last_units`."""
    cuts = list(last_units)
    return PixelsToOutputs(model, lambda network, x: network.prefixes(x, cuts), prep)


def torch_runner(pass_: PixelsToOutputs, device: torch.device) -> Prefixes:
    def run(pixels: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad(), prefix_autocast(device):
            return list(pass_(pixels.to(device, non_blocking=True)))
    return run


def torch_prefixes(model: TransferModel, last_units: list[int], prep: Preprocessing, device: torch.device) -> Prefixes:
    return torch_runner(prefixes_of(model, last_units, prep), device)


def parity_error(outputs: list[torch.Tensor], references: list[torch.Tensor]) -> tuple[float, float]:
    """(max |delta|, max |delta| / max(1, max |reference|)) over all outputs: the second is checked."""
    deltas = [float((y.float() - r.float()).abs().max()) for y, r in zip(outputs, references)]
    scales = [max(1.0, float(r.float().abs().max())) for r in references]
    return max(deltas), max(d / s for d, s in zip(deltas, scales))


class PassRunner:
    """uint8 NHWC pixels -> a frozen pass's outputs, on ONNX Runtime when a session is given.

    `engine` says what actually ran ('onnxruntime' can become 'torch' after the first batch) and
    `max_abs_delta` what the parity check measured, so the caller can log both.
    """

    def __init__(self, reference: Prefixes, session=None):
        self.reference = reference
        self.session = session
        self.engine = "torch" if session is None else "onnxruntime"
        self.max_abs_delta: float | None = None

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.engine == "torch":
            return self.reference(x)
        outputs = [torch.from_numpy(y) for y in self.session.run(None, {INPUT_NAME: x.contiguous().numpy()})]
        if self.max_abs_delta is None:
            self.max_abs_delta, relative = parity_error([y[:PARITY_IMAGES] for y in outputs],
                                                        self.reference(x[:PARITY_IMAGES]))
            log.info("frozen pass on onnxruntime: max |delta| vs torch %.1e (%.1e of the output scale)",
                     self.max_abs_delta, relative)
            if relative > PARITY_TOLERANCE:
                warnings.warn(f"ONNX Runtime differs from PyTorch by {relative:.1e} of the output scale "
                              f"(limit {PARITY_TOLERANCE:g}); running the frozen pass on PyTorch",
                              stacklevel=2)
                self.engine = "torch"
                return self.reference(x)
        return outputs


def prefix_runner(model: TransferModel, last_units: list[int], prep: Preprocessing, device: torch.device,
                  engine: str, cache_dir: Path, model_key: str) -> PassRunner:
    """The frozen prefix on `engine` ('auto', 'torch', 'onnxruntime'): `model.prefixes` of raw pixels.

    For ONNX Runtime the prefix is exported once per `model_key` (the backbone and its weights),
    preprocessing and cuts into `cache_dir`/onnx. A network the exporter cannot handle runs on PyTorch, with a warning.
    """
    return pass_runner(prefixes_of(model, last_units, prep), output_names(last_units), prep, device, engine,
                       cache_dir, model_key, list(last_units))


def pass_runner(pass_: PixelsToOutputs, outputs: list[str], prep: Preprocessing, device: torch.device, engine: str,
                cache_dir: Path, model_key: str, *what: object) -> PassRunner:
    """`pass_` on `engine`, exported once per `model_key` (the network and its weights), preprocessing and `what`
    (which outputs it computes); checked against PyTorch on its first batch; PyTorch where it cannot export."""
    reference = torch_runner(pass_, device)
    if resolve_engine(engine, device) == "torch":
        return PassRunner(reference)
    size = prep.image_size_px
    example = torch.zeros(EXAMPLE_BATCH_SIZE, size, size, 3, dtype=torch.uint8)
    was_training = pass_.network.training
    try:
        path = cached_onnx(pass_.eval(), example, outputs, cache_dir, PIXELS_IN, model_key, prep.to_dict(), *what)
    except OSError as e:  # a read-only or full cache: the export is an optimisation, not a result
        warnings.warn(f"cannot write the ONNX export to {cache_dir} ({e.strerror}); running the frozen pass "
                      "on PyTorch", stacklevel=2)
        return PassRunner(reference)
    except OnnxExportError as e:  # both exporters failed: PyTorch is the reference
        warnings.warn(f"cannot export {model_key} to ONNX ({e}); running the frozen pass on PyTorch", stacklevel=2)
        return PassRunner(reference)
    finally:
        pass_.network.train(was_training)
    return PassRunner(reference, onnxruntime_session(path, torch.get_num_threads()))
