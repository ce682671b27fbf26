"""The compare experiment's settings: one frozen dataclass, written to config.json in the run dir.

Every option is checked here, when the config is built, so a bad value fails before any file is created.
"""

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from transferlab.errors import UserError

MIN_IMAGE_SIZE_PX = 16      # below this the backbones' strided stems leave no spatial map
MAX_IMAGE_SIZE_PX = 1024    # the decode cache holds size² × 3 bytes per image: 1024 px is 3 MB each
MAX_NAME_CHARS = 80         # a run folder name is <timestamp>-<name>; file systems allow 255 bytes
MAX_CACHED_VIEWS = 32
MAX_BATCH_SIZE = 4096
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class CompareConfig:
    data_dir: Path | None = None         # DATA/<class>/*; split into train/val here
    train_dir: Path | None = None        # or an explicit pair, which bypasses the split
    val_dir: Path | None = None
    backbone: str | None = None          # None: MobileNetV2 if its weights can be had, else EfficientNet-Lite0
    weights: Path | None = None          # local .safetensors/.pth, first in the resolution order
    image_size_px: int | None = None     # None: the weights' own input size
    val_fraction: float = 0.2            # seed 002's validation_split
    seed: int = 42
    batch_size: int = 32                 # Keras' default, which the seeds used
    scratch_epochs: int = 10             # the "before": enough epochs to show it overfits
    scratch_lr: float = 1e-3             # Adam's default
    frozen_epochs: int = 5
    frozen_lr: float = 1e-3              # only the new head trains, so the usual Adam rate is safe
    finetune_epochs: int = 5
    finetune_lr: float = 1e-5            # 100x lower: nudge pretrained filters, don't overwrite them
    unfreeze_last: int | None = 20       # seed 002: base.layers[-20:]
    unfreeze_blocks: int | None = None   # alternative: the last K blocks
    augment: bool = False
    cached_views: int = 4                # augmented views cached per image when augment is on
    dedupe: bool = False                 # drop validation images that duplicate training images
    class_weights: str = "none"          # "auto": inverse class frequency in the loss
    target_val_acc: float = 0.80
    time_budget_seconds: float = 1800.0  # the seeds' "under 30 minutes"
    skip_scratch: bool = False
    strict: bool = False                 # an undecodable file is an error instead of a skip
    device: str = "auto"
    runs_dir: Path = Path("runs")
    name: str | None = None
    cache_dir: Path | None = None        # None: ~/.cache/transferlab (or $XDG_CACHE_HOME)
    show_progress: bool = True

    def __post_init__(self) -> None:
        if (self.data_dir is None) == (self.train_dir is None):
            raise UserError("give either a data folder (compare DATA) or --train DIR with --val DIR, not both")
        if (self.train_dir is None) != (self.val_dir is None):
            raise UserError("--train and --val go together; give both folders")
        if self.unfreeze_blocks is not None and self.unfreeze_last not in (None, 20):
            raise UserError("give --unfreeze-last or --unfreeze-blocks, not both")
        if self.class_weights not in ("none", "auto"):
            raise UserError(f"--class-weights must be 'none' or 'auto' (got '{self.class_weights}')")
        for name in ("scratch_epochs", "frozen_epochs", "finetune_epochs"):
            _check_int(name, getattr(self, name), 0, 10_000)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("cached_views", self.cached_views, 1, MAX_CACHED_VIEWS)
        _check_int("seed", self.seed, 0, 2**32 - 1)
        for name in ("unfreeze_last", "unfreeze_blocks"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0, 100_000)
        if self.image_size_px is not None:
            _check_int("image_size", self.image_size_px, MIN_IMAGE_SIZE_PX, MAX_IMAGE_SIZE_PX)
        for name in ("scratch_lr", "frozen_lr", "finetune_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 10):
                raise UserError(f"--{_flag(name)} must be a finite learning rate in (0, 10] (got {value})")
        if not (math.isfinite(self.val_fraction) and 0 < self.val_fraction < 1):
            raise UserError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")
        if not (math.isfinite(self.target_val_acc) and 0 <= self.target_val_acc <= 1):
            raise UserError(f"--target-val-acc must be between 0 and 1 (got {self.target_val_acc})")
        if not (math.isfinite(self.time_budget_seconds) and self.time_budget_seconds > 0):
            raise UserError(f"--time-budget must be a positive duration such as 30m (got {self.time_budget_seconds})")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise UserError(f"--device '{self.device}' is not supported; use auto, cpu, cuda or cuda:N")
        if self.name is not None and not 0 < len(self.name) <= MAX_NAME_CHARS:
            raise UserError(f"--name must be 1 to {MAX_NAME_CHARS} characters (got {len(self.name)})")
        if self.backbone is not None and not self.backbone.strip():
            raise UserError("--backbone is empty; give a timm model name such as tf_efficientnet_lite0")

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CompareConfig":
        paths = {f.name for f in fields(cls) if "Path" in str(f.type)}
        return cls(**{k: Path(v) if k in paths and v is not None else v for k, v in d.items()
                      if k in {f.name for f in fields(cls)}})

    @classmethod
    def from_file(cls, path: Path) -> "CompareConfig":
        try:
            stored = json.loads(Path(path).read_text())
            return cls.from_dict(stored["config"] if "config" in stored else stored)
        except (OSError, json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise UserError(f"cannot read run config '{path}': {e}; is this a transferlab run folder?") from None

    def with_absolute_paths(self) -> "CompareConfig":
        """What config.json stores: a resume from another working directory finds the same folders."""
        changes = {f.name: Path(getattr(self, f.name)).expanduser().resolve() for f in fields(self)
                   if "Path" in str(f.type) and getattr(self, f.name) is not None}
        return type(self)(**(asdict(self) | changes))


def _flag(name: str) -> str:
    return {"image_size_px": "image-size"}.get(name, name.replace("_", "-"))


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"--{_flag(name)} must be a whole number from {low} to {high} (got {value})")
