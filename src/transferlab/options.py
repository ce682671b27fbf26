"""The values that options naming a backend take, and the default cache folder, declared where nothing heavy
is imported: the CLI builds its parser, and a config is checked, without loading torch."""

import math
import os
from pathlib import Path

from transferlab.errors import UserError

ENGINES = ("auto", "torch", "onnxruntime")   # what runs the frozen backbone pass (training/engines.py)
PRECISIONS = ("auto", "fp32", "bf16")        # what training forwards compute in (training/precision.py)
EXPORT_FORMATS = ("onnx",)                   # what `transferlab export` writes (deploy.py)


def parse_duration(text: str) -> float:
    """'30m', '90s', '1.5h' or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):  # '1e999s' is not a way to say "no budget"
        raise UserError(f"'{text}' is not a duration like 30m, 90s or 1.5h")
    return seconds


def default_cache_dir() -> Path:
    """Decoded pixels, backbone outputs, ONNX graphs and measured precision choices, shared across runs."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transferlab"
