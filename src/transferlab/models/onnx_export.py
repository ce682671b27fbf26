"""The frozen prefix of a TransferModel as an ONNX graph, for ONNX Runtime (and `transferlab export`).

One graph gives the outputs at every requested cut, like `TransferModel.prefixes`, with a dynamic batch
axis and fp32 weights. Two exporters, both torch's own: the TorchScript one first, because it takes
0.45 s for MobileNetV2 where `dynamo=True` (torch.export + onnxscript, the default since torch 2.9)
takes 7.6 s on 2 CPU cores, a third of a cold 1,000-image run, for a graph ONNX Runtime runs at the same
speed (188.7 vs 191.6 img/s, measured here). The TorchScript exporter is deprecated: where it is gone or
fails, the dynamo one exports. Either graph is checked against PyTorch before its outputs are used (by
the engine, and by `transferlab export`), and graphs are cached by everything that shapes them.
"""

import logging
import warnings

from importlib.metadata import version
from pathlib import Path

import timm
import torch
from torch import nn

from transferlab.atomic import write_atomic
from transferlab.data.row_store import key_digest
from transferlab.models.transfer_model import UNITS_LAYOUT, TransferModel

log = logging.getLogger(__name__)

INPUT_NAME = "image"
EXPORTERS = "torchscript, else dynamo"  # part of the cache key: which exporter wrote a cached graph
EXAMPLE_BATCH_SIZE = 2  # torch.export specialises a batch of 1 to a constant; 2 keeps the axis symbolic


class _Prefixes(nn.Module):
    """TransferModel.prefixes as a forward(), the one entry point an exporter traces."""

    def __init__(self, model: TransferModel, last_units: list[int]):
        super().__init__()
        self.model = model
        self.last_units = list(last_units)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.prefixes(x, self.last_units))


def output_names(last_units: list[int]) -> list[str]:
    return [f"units_{n}" for n in last_units]


def export_onnx(module: nn.Module, image_size_px: int, path: Path, outputs: list[str]) -> Path:
    """`module` (eval mode, one NCHW image batch in) to `path`, with a dynamic batch axis, weights inside.

    The caller puts the module in eval mode (BatchNorm on its running statistics) and restores its mode.
    """
    device = next(module.parameters()).device
    example = torch.zeros(EXAMPLE_BATCH_SIZE, 3, image_size_px, image_size_px, device=device)

    def torchscript(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its deprecation notice, on every call
            torch.onnx.export(module, (example,), tmp, dynamo=False, input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]})

    def dynamo(tmp: Path) -> None:
        torch.onnx.export(module, (example,), tmp, dynamo=True, external_data=False, verbose=False,
                          input_names=[INPUT_NAME], output_names=outputs,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))

    try:
        write_atomic(Path(path), torchscript)
    except Exception as e:  # noqa: BLE001 - removed, or an operator it cannot express: the other exporter
        log.info("TorchScript ONNX export failed (%s); exporting with dynamo=True", str(e).splitlines()[0][:120]
                 if str(e) else type(e).__name__)
        write_atomic(Path(path), dynamo)
    return Path(path)


def export_prefix_onnx(model: TransferModel, last_units: list[int], image_size_px: int, path: Path) -> Path:
    """Write the prefix units[:n] for each n in `last_units` to `path` in one file (weights inside)."""
    was_training = model.training
    try:
        return export_onnx(_Prefixes(model, last_units).eval(), image_size_px, path, output_names(last_units))
    finally:
        model.train(was_training)


def cached_prefix_onnx(model: TransferModel, last_units: list[int], image_size_px: int, cache_dir: Path,
                       model_key: str) -> Path:
    """The exported prefix from `cache_dir`, exported first if no graph has this key yet.

    `model_key` must identify the backbone and its weights (PretrainedBackbone.cache_key); the size, the
    cuts and the versions of every tool that shapes the graph are added here.
    """
    key = key_digest(UNITS_LAYOUT, EXPORTERS, model_key, image_size_px, list(last_units), torch.__version__,
                     timm.__version__,
                     version("onnx"), version("onnxscript"))  # metadata, not an import: onnxscript takes 0.5 s
    path = Path(cache_dir) / "onnx" / f"prefix-{key}.onnx"
    if not path.exists():
        export_prefix_onnx(model, last_units, image_size_px, path)
    return path
