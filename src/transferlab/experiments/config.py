"""The compare experiment's settings: one frozen dataclass, written to config.json in the run dir.

Every option is checked here, when the config is built, so a bad value fails before any file is created.
"""

import json
import math
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from transferlab.api_checks import check_field_types
from transferlab.atomic import local_path_text
from transferlab.errors import UserError, quoted
from transferlab.formats import RUN_FORMAT_VERSION
from transferlab.experiments.tracking import check_tracking_options
from transferlab.options import ENGINES, PRECISIONS
from transferlab.training.recipes import (Recipe, Stopping, overridden_fields, recipe_fields, resolve_recipe,
                                         scratch_size_for)

MAX_NAME_CHARS = 80         # a run folder name is <timestamp>-<name>; file systems allow 255 bytes
MAX_BATCH_SIZE = 4096
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class CompareConfig:
    data_dir: Path | None = None         # DATA/<class>/*; split into train/val(/test) here
    train_dir: Path | None = None        # or an explicit pair, which bypasses the split
    val_dir: Path | None = None
    test_dir: Path | None = None         # reported once at the end, never used for a choice
    test_fraction: float = 0.0           # or a stratified test part of DATA (0: none; the report says so)
    backbone: str | None = None          # None: MobileNetV2 if its weights can be had, else EfficientNet-Lite0
    weights: Path | None = None          # local .safetensors/.pth, first in the resolution order
    val_fraction: float = 0.2            # seed 002's validation_split
    seed: int = 42
    batch_size: int = 32                 # Keras' default, which the seeds used
    recipe: Recipe | str = "default"     # a Recipe, or a preset's name (training/recipes.py); resolve_recipe overrides
    dedupe: bool = False                 # drop validation/test images that duplicate training images
    class_weights: str = "none"          # "auto": inverse class frequency in the loss
    target_acc: float = 0.80             # on test when there is a test set, else on validation
    time_budget_seconds: float = 1800.0  # the seeds' "under 30 minutes"
    skip_scratch: bool = False
    strict: bool = False                 # an undecodable file is an error instead of a skip
    device: str = "auto"
    engine: str = "auto"                 # the frozen pass: auto (ONNX Runtime on CPU), torch, onnxruntime
    precision: str = "auto"              # training forwards: auto (bf16 on GPUs that have it), fp32, bf16
    runs_dir: Path = Path("runs")
    name: str | None = None
    cache_dir: Path | None = None        # None: ~/.cache/transferlab (or $XDG_CACHE_HOME)
    show_progress: bool = True
    tensorboard_dir: Path | None = None  # event files per epoch and phase, in DIR/<run folder name>/
    mlflow_uri: str | None = None        # an MLflow tracking URI: params, per-epoch metrics, the report
    exclude: tuple[str, ...] = ()        # images left out of train/validation (--exclude FILE: data/exclude.py)
    audit: bool = True                   # compare's Audit section (experiments/audit.py): off with --no-audit

    def __post_init__(self) -> None:
        if isinstance(self.recipe, str):  # a preset's name: the preset itself
            object.__setattr__(self, "recipe", resolve_recipe(self.recipe, {}))
        check_field_types(self)  # the API's types first: CompareConfig(data_dir=5) is named, not a TypeError later
        object.__setattr__(self, "exclude", tuple(dict.fromkeys(str(_absolute(p)) for p in self.exclude)))
        if self.data_dir is None and self.train_dir is None:
            raise UserError("give a data folder (compare DATA; data_dir=) or --train DIR with --val DIR (train_dir=, "
                            "val_dir=)")
        if self.data_dir is not None and self.train_dir is not None:
            raise UserError("give either a data folder (compare DATA) or --train DIR with --val DIR, not both")
        if (self.train_dir is None) != (self.val_dir is None):
            raise UserError("--train and --val go together; give both folders")
        if self.test_dir is not None and self.test_fraction:
            raise UserError("give --test DIR or --test-fraction, not both")
        if self.val_dir is not None and self.test_fraction:
            raise UserError("--test-fraction splits a data folder; with --train/--val give a --test DIR")
        if self.test_dir is not None:
            for name, other in self.data_folders():
                if name != "--test" and _overlap(Path(self.test_dir), other):
                    raise UserError(f"--test '{self.test_dir}' overlaps the {name} '{other}': test images must "
                                    "never train or choose; give a separate folder")
        if self.val_dir is not None and _overlap(Path(self.val_dir), Path(self.train_dir)):
            raise UserError(f"--val '{self.val_dir}' overlaps --train '{self.train_dir}': validation images would "
                            "be trained on; give a separate folder")
        self.check_outside_the_data("--runs-dir", self.runs_dir)
        self.check_outside_the_data("--cache-dir", self.cache_dir)
        if self.class_weights not in ("none", "auto"):
            raise UserError(f"--class-weights must be 'none' or 'auto' (got '{self.class_weights}')")
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("seed", self.seed, 0, 2**32 - 1)
        for name, value in (("val_fraction", self.val_fraction), ("test_fraction", self.test_fraction)):
            if not (math.isfinite(value) and (0 < value < 1 or (name == "test_fraction" and value == 0))):
                raise UserError(f"--{_flag(name)} must be between 0 and 1 (got {value})")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise UserError("--val-fraction plus --test-fraction leave under 10% of the images to train on")
        if not (math.isfinite(self.target_acc) and 0 <= self.target_acc <= 1):
            raise UserError(f"--target-acc must be between 0 and 1 (got {self.target_acc})")
        if not (math.isfinite(self.time_budget_seconds) and self.time_budget_seconds > 0):
            raise UserError(f"--time-budget must be a positive duration such as 30m (got {self.time_budget_seconds})")
        if self.engine not in ENGINES:
            raise UserError(f"--engine '{self.engine}' is unknown; choose one of {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision '{self.precision}' is unknown; choose one of {', '.join(PRECISIONS)}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise UserError(f"--device '{self.device}' is not supported; use auto, cpu, cuda or cuda:N")
        if self.name is not None and not 0 < len(self.name) <= MAX_NAME_CHARS:
            raise UserError(f"--name must be 1 to {MAX_NAME_CHARS} characters (got {len(self.name)})")
        if self.backbone is not None and not self.backbone.strip():
            raise UserError("--backbone is empty; give a timm model name such as tf_efficientnet_lite0")
        check_tracking_options(self.tensorboard_dir, self.mlflow_uri)

    def data_folders(self) -> list[tuple[str, Path]]:
        """(how the user named it, folder) for each folder of images given."""
        named = (("data folder", self.data_dir), ("--train", self.train_dir), ("--val", self.val_dir),
                 ("--test", self.test_dir))
        return [(name, Path(folder)) for name, folder in named if folder is not None]

    def check_outside_the_data(self, flag: str, folder: Path | None) -> None:
        """A folder transferlab writes must not lie in a data folder: the next scan would read it as a class
        (a second `compare .` run from inside the data trained on a class 'runs' of the first run's plots)."""
        if folder is None:
            return
        for name, root in self.data_folders():
            if _contains(root, folder):
                raise UserError(f"{flag} {quoted(_absolute(folder))} is inside the {name} {quoted(_absolute(root))}: "
                                "the next run would read what transferlab writes there as a class; give a "
                                f"{flag} outside it")

    def overridden_recipe_fields(self) -> list[str]:
        return overridden_fields(self.recipe)

    def with_image_size(self, image_size_px: int) -> "CompareConfig":
        """The input sizes resolved (the weights' own, and scratch's), written into the recipe as config.json
        stores it."""
        recipe = replace(self.recipe, image_size_px=image_size_px)
        return replace(self, recipe=replace(recipe, scratch_image_size_px=scratch_size_for(recipe)))

    def to_dict(self) -> dict:
        """Flat, as config.json stores it: the recipe's name under `recipe`, each of its fields beside the rest."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "recipe"}
        return ({k: str(v) if isinstance(v, Path) else v for k, v in own.items()}
                | {"recipe": self.recipe.name} | {k: v for k, v in self.recipe.to_dict().items() if k != "name"})

    @classmethod
    def from_dict(cls, d: dict) -> "CompareConfig":
        paths = _path_fields(cls)
        own = {k: Path(v) if k in paths and v is not None else tuple(v) if k == "exclude" else v
               for k, v in d.items() if k in {f.name for f in fields(cls)} - {"recipe"}}
        return cls(**own, recipe=resolve_recipe(d.get("recipe", "default"),
                                                {f.name: d[f.name] for f in recipe_fields() if f.name in d},
                                                exact=True))

    @classmethod
    def from_file(cls, path: Path) -> "CompareConfig":
        def unreadable(e: Exception) -> UserError:
            return UserError(f"cannot read run config '{path}': {e}; is this a transferlab run folder?")

        try:
            stored = json.loads(Path(path).read_bytes())  # UTF-8 whatever the locale
            if "study" in stored and "config" not in stored:
                raise UserError(f"{quoted(Path(path).parent)} is a study folder, not a compare run; to continue it, "
                                "run the same `transferlab study` command again (with --study-dir for this folder)")
            paths = _path_fields(cls)  # as this locale spells file names
            stored["config"] = {k: local_path_text(v) if k in paths and isinstance(v, str) else v
                                for k, v in stored["config"].items()}
            if stored.get("format_version") != RUN_FORMAT_VERSION:
                raise UserError(f"run '{Path(path).parent}' was made by an older transferlab (config format "
                                f"{stored.get('format_version', 1)}, this one reads {RUN_FORMAT_VERSION}); start a "
                                "new run instead of resuming")
        except (OSError, json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
            raise unreadable(e) from None
        # runs from before the final fit, the scratch stopping rule and the scratch input size had none
        before = {"final_fit": False, "scratch_image_size_px": None} | {f.name: f.default for f in fields(Stopping)}
        try:
            return cls.from_dict(before | stored["config"])
        except UserError as e:  # checked as if typed: its message names a flag the user never gave
            raise UserError(f"run config {quoted(path)} holds a value this transferlab refuses: {e}; was it edited? "
                            "put the value back or start a new run") from None
        except (TypeError, KeyError, AttributeError) as e:
            raise unreadable(e) from None

    def with_absolute_paths(self) -> "CompareConfig":
        """What config.json stores: a resume from another working directory finds the same folders."""
        changes = {name: _absolute(getattr(self, name)) for name in _path_fields(type(self))
                   if getattr(self, name) is not None}
        return replace(self, **changes)


def _path_fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if "Path" in str(f.type)}


def _absolute(path: Path) -> Path:
    """Absolute without following symlinks: the same normalisation the split uses for every file."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _contains(outer: Path, inner: Path) -> bool:
    """As written and with links followed: a symlink must not carry a folder around these checks."""
    return any(o == i or o in i.parents for o, i in ((_absolute(outer), _absolute(inner)),
                                                     (Path(outer).expanduser().resolve(),
                                                      Path(inner).expanduser().resolve())))


def _overlap(a: Path, b: Path) -> bool:
    return _contains(a, b) or _contains(b, a)


def _flag(name: str) -> str:
    return {"image_size_px": "image-size", "time_budget_seconds": "time-budget"}.get(name, name.replace("_", "-"))


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"--{_flag(name)} must be a whole number from {low} to {high} (got {value})")
