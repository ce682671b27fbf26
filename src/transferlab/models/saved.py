"""A trained model on disk: model.safetensors (tensors only, no pickle) + model.json (how to rebuild it).

Both files can be edited, truncated or copied from another run, so model.json is checked field by field
and the tensors' shapes against it before anything is built: a damaged file is one named UserError.
"""

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from transferlab.atomic import write_bytes_atomic, write_json_atomic
from transferlab.data.images import INTERPOLATIONS, MAX_IMAGE_SIZE_PX, MIN_IMAGE_SIZE_PX, Preprocessing
from transferlab.errors import UserError, quoted
from transferlab.formats import MODEL_FORMAT_VERSION
from transferlab.models.backbones import create_backbone
from transferlab.models.transfer_model import HeadConfig, TransferModel

MAX_HIDDEN_UNITS = 65536  # bounds what a damaged model.json can make us allocate before the shapes are checked
FIX = "restore it from a backup or re-run `transferlab compare` to recreate it"


def save_model(directory: Path, model: TransferModel, *, backbone: str, class_names: list[str],
               preprocessing: Preprocessing, head: HeadConfig, phase: str, val_acc: float) -> None:
    """Serialised in memory, then one atomic write: a full disk is a plain OSError, the old file intact."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(Path(directory) / "model.safetensors", save(state))
    write_json_atomic(Path(directory) / "model.json", {
        "format_version": MODEL_FORMAT_VERSION, "backbone": backbone, "class_names": class_names,
        "preprocessing": preprocessing.to_dict(),
        "head": {"hidden_units": head.hidden_units, "dropout": head.dropout},
        "trained_phase": phase, "val_acc": val_acc})


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_number(v: Any, lo: float, hi: float) -> bool:
    """Bounds first: math.isfinite overflows on a JSON integer beyond float range."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi and math.isfinite(v)


def _are_numbers(v: Any, n: int, lo: float, hi: float) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_number(x, lo, hi) for x in v)


def _are_class_names(v: Any) -> bool:
    return (isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) and c for c in v)
            and len(set(v)) == len(v))


# (dotted field, is it valid, what it must be): the whole of what save_model writes
SCHEMA: list[tuple[str, Callable[[Any], bool], str]] = [
    ("format_version", lambda v: _is_int(v, MODEL_FORMAT_VERSION, MODEL_FORMAT_VERSION), f"{MODEL_FORMAT_VERSION} (the format this transferlab reads)"),
    ("backbone", lambda v: isinstance(v, str) and bool(v), "a timm model name"),
    ("class_names", _are_class_names, "a list of at least 2 distinct, non-empty class names"),
    ("preprocessing.image_size_px", lambda v: _is_int(v, MIN_IMAGE_SIZE_PX, MAX_IMAGE_SIZE_PX),
     f"an integer from {MIN_IMAGE_SIZE_PX} to {MAX_IMAGE_SIZE_PX}"),
    ("preprocessing.mean", lambda v: _are_numbers(v, 3, 0, 1), "3 numbers from 0 to 1 (R, G, B)"),
    ("preprocessing.std", lambda v: _are_numbers(v, 3, 0, 1) and min(v) > 0, "3 numbers above 0, at most 1"),
    ("preprocessing.interpolation", lambda v: isinstance(v, str) and v in INTERPOLATIONS,
     f"one of {', '.join(INTERPOLATIONS)}"),
    ("preprocessing.crop_pct", lambda v: _is_number(v, 0, 2) and v > 0, "a number above 0, at most 2"),
    ("head.hidden_units", lambda v: _is_int(v, 1, MAX_HIDDEN_UNITS), f"an integer from 1 to {MAX_HIDDEN_UNITS}"),
    ("head.dropout", lambda v: _is_number(v, 0, 1) and v < 1, "a number from 0 to below 1"),
    ("trained_phase", lambda v: isinstance(v, str), "a phase name"),
    ("val_acc", lambda v: _is_number(v, 0, 1), "a number from 0 to 1"),
]


def _schema_problem(meta: Any) -> str | None:
    """The first field of model.json that is missing or out of range, said as a fix-it phrase."""
    if not isinstance(meta, dict):
        return f"holds a JSON {type(meta).__name__}, not an object"
    for field, is_valid, expected in SCHEMA:
        value, parts = meta, field.split(".")
        for depth, key in enumerate(parts):
            if not isinstance(value, dict):
                return f"'{'.'.join(parts[:depth])}' must be an object (got {_short(value)})"
            if key not in value:
                return f"has no '{'.'.join(parts[:depth + 1])}'"
            value = value[key]
        if not is_valid(value):
            return f"'{field}' must be {expected} (got {_short(value)})"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def read_model_meta(path: Path) -> dict:
    """model.json (or an export's sidecar) checked against SCHEMA; a problem is one UserError naming the file."""
    try:
        meta = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{quoted(path)} is not valid JSON ({e}); {FIX}") from None
    problem = _schema_problem(meta)
    if problem:
        raise UserError(f"{quoted(path)} {problem}; {FIX}")
    return meta


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except SafetensorError as e:
        raise UserError(f"{quoted(path)} is damaged or truncated ({str(e).splitlines()[0][:120]}); {FIX}") from None


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
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
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
