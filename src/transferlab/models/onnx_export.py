"""A network as an ONNX graph, for ONNX Runtime's frozen pass (training/engines.py) and `transferlab export`.

Graphs have a dynamic batch axis and fp32 weights inside. Two exporters, both torch's own: the TorchScript
one first, because it takes 0.45 s for MobileNetV2 where `dynamo=True` (torch.export + onnxscript, the
default since torch 2.9) takes 7.6 s on 2 CPU cores, a third of a cold 1,000-image run, for a graph ONNX
Runtime runs at the same speed (188.7 vs 191.6 img/s, measured here). The TorchScript exporter is
deprecated: where it is gone or fails, the dynamo one exports. Either graph is checked against PyTorch
before its outputs are used (by the engine, and by `transferlab export`), and graphs are cached by
everything that shapes them.
"""

import logging
import warnings

from importlib.metadata import version
from pathlib import Path

import timm
import torch
from torch import nn

from transferlab.atomic import write_atomic
from transferlab.data.fingerprints import key_digest
from transferlab.errors import error_text
from transferlab.models.onnx_runtime import INPUT_NAME
from transferlab.models.transfer_model import UNITS_LAYOUT

log = logging.getLogger(__name__)

EXPORTERS = "torchscript, else dynamo"  # part of the cache keys: which exporter wrote a cached graph
EXAMPLE_BATCH_SIZE = 2  # torch.export specialises a batch of 1 to a constant; 2 keeps the axis symbolic


def output_names(last_units: list[int]) -> list[str]:
    return [f"units_{n}" for n in last_units]


class OnnxExportError(Exception):
    """Neither exporter can express the network; the message is what the second one said, in one line."""


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> Path:
    """`module` (eval mode, one image batch like `example` in) to `path`, dynamic batch axis, weights inside.

    `example` has EXAMPLE_BATCH_SIZE images. The caller puts the module in eval mode (BatchNorm on its
    running statistics) and restores its mode. Whatever the second exporter raises, but an OSError, becomes
    OnnxExportError: torch's exporters report a network they cannot express in many types.
    """

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
        log.info("TorchScript ONNX export failed (%s); exporting with dynamo=True", error_text(e))
        try:
            write_atomic(Path(path), dynamo)
        except OSError:
            raise  # a full or read-only disk is the disk's failure, not the network's
        except Exception as second:  # noqa: BLE001 - torch's exporters raise many types for what they cannot express
            raise OnnxExportError(error_text(second)) from second
    return Path(path)


def cached_onnx(module: nn.Module, example: torch.Tensor, outputs: list[str], cache_dir: Path, *key: object) -> Path:
    """`module` exported into `cache_dir`/onnx once per `key`, which must identify everything that shapes it
    (network, weights, inputs, which outputs: the prefix's cuts, the audit's levels); the versions of the tools
    that write the graph are added here."""
    digest = key_digest(UNITS_LAYOUT, EXPORTERS, *key, torch.__version__, timm.__version__,
                        version("onnx"), version("onnxscript"))  # metadata, not an import: onnxscript takes 0.5 s
    path = Path(cache_dir) / "onnx" / f"prefix-{digest}.onnx"
    if not path.exists():
        export_onnx(module, example, path, outputs)
    return path
