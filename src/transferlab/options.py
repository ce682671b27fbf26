"""The values that options naming a backend take, and the default cache folder, declared where nothing heavy
is imported: the CLI builds its parser, and a config is checked, without loading torch."""

import os
from pathlib import Path

ENGINES = ("auto", "torch", "onnxruntime")   # what runs the frozen backbone pass (training/engines.py)
PRECISIONS = ("auto", "fp32", "bf16")        # what training forwards compute in (training/precision.py)
EXPORT_FORMATS = ("onnx",)                   # what `transferlab export` writes (deploy.py)


def default_cache_dir() -> Path:
    """Decoded pixels, backbone outputs, ONNX graphs and measured precision choices, shared across runs."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "transferlab"
