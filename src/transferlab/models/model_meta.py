"""model.json (and an export's sidecar): what a saved model is, checked field by field without torch.

Kept apart from the weights so that `predict --onnx` reads a model's description without importing torch
(2.4 s of a 3 s start on 2 cores)."""

import json
import math
from pathlib import Path
from typing import Any, Callable

from transferlab.data.images import INTERPOLATIONS, MAX_IMAGE_SIZE_PX, MIN_IMAGE_SIZE_PX
from transferlab.errors import UserError, quoted
from transferlab.formats import MODEL_FORMAT_VERSION

META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"  # a saved model: how to rebuild it, its tensors
MAX_HIDDEN_UNITS = 65536  # bounds what a damaged model.json can make us allocate before the shapes are checked
FIX = "restore it from a backup or re-run `transferlab compare` to recreate it"


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


def read_model_meta(path: Path, fix: str = FIX) -> dict:
    """model.json (or an export's sidecar) checked against SCHEMA; a problem is one UserError naming the file
    and, unless `fix` is empty, what to do."""
    try:
        meta = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{quoted(path)} is not valid JSON ({e})" + (f"; {fix}" if fix else "")) from None
    problem = _schema_problem(meta)
    if problem:
        raise UserError(f"{quoted(path)} {problem}" + (f"; {fix}" if fix else ""))
    return meta
