"""The compare experiment's settings: one frozen dataclass, written to config.json in the run dir."""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from transferlab.errors import UserError


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
        for name in ("scratch_epochs", "frozen_epochs", "finetune_epochs", "cached_views", "batch_size"):
            if getattr(self, name) < (1 if name in ("cached_views", "batch_size") else 0):
                raise UserError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")

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
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise UserError(f"cannot read run config '{path}': {e}; is this a transferlab run folder?") from None
