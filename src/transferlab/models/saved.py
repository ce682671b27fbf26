"""A trained model on disk: model.safetensors (tensors only, no pickle) + model.json (how to rebuild it).

Both files can be edited, truncated or copied from another run, so model.json is checked field by field
and the tensors' shapes against it before anything is built: a damaged file is one named UserError.
"""

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from transferlab.atomic import write_bytes_atomic, write_json_atomic
from transferlab.data.images import Preprocessing
from transferlab.errors import UserError, error_text, quoted
from transferlab.formats import MODEL_FORMAT_VERSION
from transferlab.models.backbones import create_backbone
from transferlab.models.model_meta import FIX, META_FILE, WEIGHTS_FILE, read_model_meta
from transferlab.models.transfer_model import HeadConfig, TransferModel


def save_model(directory: Path, model: TransferModel, *, backbone: str, class_names: list[str],
               preprocessing: Preprocessing, head: HeadConfig, phase: str, val_acc: float) -> None:
    """Serialised in memory, then one atomic write: a full disk is a plain OSError, the old file intact."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(Path(directory) / WEIGHTS_FILE, save(state))
    write_json_atomic(Path(directory) / META_FILE, {
        "format_version": MODEL_FORMAT_VERSION, "backbone": backbone, "class_names": class_names,
        "preprocessing": preprocessing.to_dict(),
        "head": {"hidden_units": head.hidden_units, "dropout": head.dropout},
        "trained_phase": phase, "val_acc": val_acc})


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except SafetensorError as e:
        raise UserError(f"{quoted(path)} is damaged or truncated ({error_text(e)}); {FIX}") from None


def _shape_problem(model: TransferModel, state: dict[str, torch.Tensor], n_classes: int) -> str | None:
    """Compared before loading, so a model.json from another run is named as such, not as a size mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    output_key = next(k for k in reversed(expected) if k.startswith("head.") and k.endswith(".weight"))
    trained_classes = found.get(output_key, ())[:1]
    if trained_classes and trained_classes[0] != n_classes:
        return f"was trained for {trained_classes[0]} classes but model.json lists {n_classes} class_names"
    if expected.keys() != found.keys():
        missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        return (f"does not fit the backbone and head in model.json ({len(missing)} tensors missing, e.g. "
                f"{missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})")
    wrong = [k for k in expected if expected[k] != found[k]]
    if wrong:
        return (f"does not fit the backbone and head in model.json ('{wrong[0]}' is {list(found[wrong[0]])}, "
                f"expected {list(expected[wrong[0]])})")
    return None


def load_model(directory: Path) -> tuple[TransferModel, dict]:
    """Rebuild from model.json and load model.safetensors strictly; returns (model in eval mode, meta).

    meta is model.json with "preprocessing" as a Preprocessing: predictions decode exactly as training did.
    """
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(f"'{directory}' has no model.json + model.safetensors; give a run folder that "
                        "finished `transferlab compare`")
    meta = read_model_meta(meta_path)
    state = _read_weights(weights_path)
    try:
        backbone = create_backbone(meta["backbone"])
    except UserError as e:
        raise UserError(f"{quoted(meta_path)}: {e}; {FIX}") from None
    head = HeadConfig(hidden_units=meta["head"]["hidden_units"], dropout=meta["head"]["dropout"])
    model = TransferModel(backbone, len(meta["class_names"]), head)
    problem = _shape_problem(model, state, len(meta["class_names"]))
    if problem:
        raise UserError(f"{quoted(weights_path)} {problem}; {FIX}")
    model.load_state_dict(state)
    return model.eval(), meta | {"preprocessing": Preprocessing.from_dict(meta["preprocessing"])}
