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

import numpy as np

from transferlab.data.decoded import DecodedImages
from transferlab.data.fingerprints import config_hash, keys_digest
from transferlab.data.scan import LabelledImage
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import Split, labels_of, subset_of
from transferlab.experiments.phases import FineTuneStage
from transferlab.experiments.study_config import UNFREEZE_BLOCKS, UNFREEZE_LRS
from transferlab.training.recipes import Recipe, Unfreeze

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
    """One cell, named by paths rather than pixels: cheap to send to a Ray worker, which reads the pixels from the
    shared cache."""

    variant: Variant
    seed: int
    k: int | None                 # as asked; None = all
    images_per_class: float       # what it trained on, on average over classes
    skip_scratch: bool            # the variant's, or scratch does not train at this k
    chosen: tuple[LabelledImage, ...]  # its subset of the training pool, which trains repeated `repeats` times
    repeats: int
    key: dict                     # the resolved config the hash is taken of

    @property
    def hash(self) -> str:
        return config_hash(self.key)

    @property
    def k_label(self) -> int | str:
        """k as results.json writes it."""
        return "all" if self.k is None else self.k


def cell_key(common_key: dict, seed: int, subset: DecodedImages, repeats: int, skip_scratch: bool) -> dict:
    """A cell's resolved config: what its variant shares (`StudyRun.common_key`), its seed and its images."""
    return common_key | {"seed": seed, "images": images_digest(subset), "repeats": repeats,
                         "skip_scratch": skip_scratch}


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


def plan_cells(variant: Variant, seeds: int, ks: tuple[int | None, ...], split: Split, common_key: dict,
               scratch_ks: tuple[int | None, ...] = (None,)) -> list[CellPlan]:
    """Seeds x ks of one variant; scratch trains only at `scratch_ks` (all of the data: always). A k at or
    above every class's pool is the same subset as 'all', and so the same cell (its hash says so): it is
    listed once."""
    pool_size = len(split.train.images)
    n_classes = len(split.class_names)
    cells, seen = [], set()
    for seed in range(seeds):
        for k in ks:
            chosen = nested_subset(split.train, k, seed)
            repeats = max(1, round(pool_size / max(len(chosen), 1)))
            skip_scratch = variant.skip_scratch or (k not in scratch_ks and len(chosen) < pool_size)
            key = cell_key(common_key, seed, subset_of(split.train, chosen), repeats, skip_scratch)
            cell = CellPlan(variant, seed, k, len(chosen) / n_classes, skip_scratch, tuple(chosen), repeats, key)
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
