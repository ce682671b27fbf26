"""A trained model on disk: model.safetensors (tensors only, no pickle) + model.json (how to rebuild it)."""

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from transferlab.atomic import write_atomic, write_json_atomic
from transferlab.data.images import Preprocessing
from transferlab.errors import UserError
from transferlab.models.backbones import create_backbone
from transferlab.models.transfer_model import HeadConfig, TransferModel

FORMAT_VERSION = 1


def save_model(directory: Path, model: TransferModel, *, backbone: str, class_names: list[str],
               preprocessing: Preprocessing, head: HeadConfig, phase: str, val_acc: float) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(Path(directory) / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(Path(directory) / "model.json", {
        "format_version": FORMAT_VERSION, "backbone": backbone, "class_names": class_names,
        "preprocessing": preprocessing.to_dict(),
        "head": {"hidden_units": head.hidden_units, "dropout": head.dropout},
        "trained_phase": phase, "val_acc": val_acc})


def load_model(directory: Path) -> tuple[TransferModel, dict]:
    """Rebuild from model.json and load model.safetensors strictly; returns (model in eval mode, meta)."""
    directory = Path(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(f"'{directory}' has no model.json + model.safetensors; give a run folder that "
                        "finished `transferlab compare`")
    try:
        meta = json.loads(meta_path.read_text())
        head = HeadConfig(**meta["head"])
        model = TransferModel(create_backbone(meta["backbone"]), len(meta["class_names"]), head)
        model.load_state_dict(load_file(weights_path))
    except (KeyError, TypeError, json.JSONDecodeError, RuntimeError, OSError) as e:
        raise UserError(f"model in '{directory}' cannot be loaded ({str(e).splitlines()[0][:150]}); "
                        "re-run compare to recreate it") from None
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    return model.eval(), meta
