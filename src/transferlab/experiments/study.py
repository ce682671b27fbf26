"""A study is many cells; `compare` is the study of one cell.

A cell is one run of the phases (experiments/phases.py) on one training subset and seed, planned by
experiments/study_plan.py. Each is stored under STUDY_DIR/cells/<hash of its resolved config>/: a cell
whose results.json exists is reused, one with checkpoints resumes from its last epoch, so re-running a
study, adding seeds or adding a k trains only what is missing, and an interrupted study continues where it
stopped. This module runs plans: one loop (`run_cells`) over cells, each `run_cell_plan` in this process or,
with --ray, as a Ray task (experiments/study_ray.py); torchrun is for one compare run, not for a study.
"""

import copy
import os
import socket
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from transferlab.atomic import write_json_atomic
from transferlab.data.decoded import DecodedImages
from transferlab.errors import UserError
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import (Folders, PreparedData, Split, decode_folders, labels_of, prepare_data,
                                              scan_folders, screen_test_set, subset_of)
from transferlab.experiments.interrupts import StopRequests, interruptible
from transferlab.experiments.phases import (CellData, CellPhases, CellSetting, FineTuneStage, check_input_size,
                                            run_cell, unfreeze_for_finetuning, with_input_sizes)
from transferlab.experiments.scoring import predict_test_set, record_test_accuracy
from transferlab.experiments.run_dir import (check_output_folders, checkpoint_path, default_cache_dir, environment,
                                             safe_name)
from transferlab.experiments.study_config import StudyConfig
from transferlab.experiments.study_plan import (CellPlan, Variant, images_digest,
                                                plan_cells, plan_schedule, unfreeze_grid)
from transferlab.experiments.study_store import lock_study_dir, start_study
from transferlab.formats import STUDY_FORMAT_VERSION
from transferlab.progress import progress_bar
from transferlab.models.backbones import PretrainedBackbone, load_backbone
from transferlab.models.inference_cost import measure_inference
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.results import (BackboneResult, Budget, CellPhaseResult, CellResult, EpochBudget, FailedCell,
                                 Leakage, ScheduleStage, StudyData, StudyResult, UnfreezePoint, UnfreezeSchedule,
                                 Weights)
from transferlab.results_io import from_json, read_cell_result, to_json, write_results
from transferlab.training.devices import resolve_device
from transferlab.training.engines import resolve_engine
from transferlab.training.ranks import torchrun_ranks
from transferlab.training.precision import check_precision, precision_policy


if TYPE_CHECKING:
    from transferlab.experiments.study_ray import RayStudy

STUDY_DATA_CHANGED = "give another --study-dir for the changed data (the finished cells trained on the old images)"
TORCHRUN_REFUSAL = ("a study does not run under torchrun (torchrun trains one compare run); its cells run in "
                    "parallel as Ray tasks: `transferlab study DATA --ray local|auto|ADDRESS`")


class ScreenedTestSet:
    """The test set, screened for copies of training images once the first cell has trained: its one read
    happens only after that cell's choices are made."""

    def __init__(self, prepared: PreparedData, cfg: CompareConfig):
        self.prepared, self.cfg, self.images = prepared, cfg, None

    def __call__(self) -> DecodedImages:
        if self.images is None:
            self.images = screen_test_set(self.prepared, self.cfg)
            if not self.images.images:
                raise UserError("the test set is empty; give a larger --test-fraction or a --test folder")
        return self.images


@dataclass(frozen=True)
class StudyRun:
    """Where and on what a study's cells run: the same for every cell of one backbone."""

    study_dir: Path
    folders: Folders
    pretrained: PretrainedBackbone
    split: Split
    test_set: ScreenedTestSet
    device: torch.device
    stop: StopRequests
    env: dict
    ray: "RayStudy | None" = None  # where cells run as Ray tasks (experiments/study_ray.py); None: here
    failed: list[FailedCell] = field(default_factory=list)  # cells that failed on Ray, over all of the study's parts

    def common_key(self, variant: Variant) -> dict:
        """What every cell of `variant` depends on besides its seed and images; its hash names the cell."""
        cfg, b = variant.cfg, self.pretrained
        key = {"format": STUDY_FORMAT_VERSION, "backbone": b.name, "weights": b.weights.fingerprint,
               "preprocessing": b.preprocessing.to_dict(), "recipe": cfg.recipe.to_dict(),
               "batch_size": cfg.batch_size, "class_weights": cfg.class_weights, "engine": cfg.engine,
               "precision": precision_policy(cfg.precision, self.device), "device": self.device.type,
               "val": images_digest(self.split.val), "test": images_digest(self.split.test), "dedupe": cfg.dedupe,
               "skip_scratch": variant.skip_scratch, "versions": self.env["versions"]}
        return key | ({"stages": [s.to_dict() for s in variant.stages]} if variant.skip_scratch else {})


def setup_backbone(name: str | None, cfg: CompareConfig, n_classes: int
                   ) -> tuple[PretrainedBackbone, int, CompareConfig]:
    """Weights, input sizes and the fine-tune cut checked before anything trains (UserError otherwise);
    returns the backbone, its number of timm blocks and `cfg` with the input sizes resolved."""
    recipe = cfg.recipe
    pretrained = load_backbone(name, cfg.weights if name == cfg.backbone else None, recipe.image_size_px)
    probe = TransferModel(copy.deepcopy(pretrained.module), n_classes, HeadConfig(dropout=recipe.head_dropout))
    check_input_size(probe, pretrained)
    unfreeze_for_finetuning(probe, recipe)
    return pretrained, len(probe.backbone_units.block_starts), with_input_sizes(cfg, probe, pretrained)


def run_study(cfg: StudyConfig) -> Path:
    """Train what is missing, write results.json; returns the study folder. Checked before anything is written.
    Every cell trains with `cell_threads` torch threads, here or on a Ray worker."""
    started = time.perf_counter()
    if torchrun_ranks().is_distributed:
        raise UserError(TORCHRUN_REFUSAL)
    if cfg.ray is not None:
        _study_ray().import_ray()  # a missing extra is one line before anything is done
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.cell_threads or threads)
    try:
        return _run_study(cfg, started)
    finally:
        torch.set_num_threads(threads)


def _run_study(cfg: StudyConfig, started: float) -> Path:
    base = cfg.compare.with_absolute_paths()
    folders = scan_folders(base)
    device = resolve_device(base.device)
    resolve_engine(base.engine, device)
    check_precision(base.precision, device)
    pretrained, n_blocks, base = setup_backbone(base.backbone, base, len(folders.train.class_names))
    base = replace(base, backbone=pretrained.name,
                   cache_dir=(base.cache_dir or default_cache_dir()).expanduser().resolve())
    # a cell learns from its k images only (README, "Study"): no final fit. Every cell is allowed the same
    # steps; scratch stops on the recipe's plateau rule, but on no wall-clock budget, which would make a cached
    # cell depend on the machine's speed
    recipe = base.recipe
    base = replace(base, recipe=replace(recipe, final_fit=False,
                                        scratch_stopping=replace(recipe.scratch_stopping, budget_seconds=None)))
    check_output_folders(base)  # and every image decoded: a bad input fails before the study folder exists
    folders = decode_folders(base, folders, pretrained.preprocessing, base.cache_dir)
    name = base.name or Path(base.data_dir or base.train_dir).name
    study_dir = Path(cfg.study_dir or base.runs_dir / f"study-{safe_name(name)}").expanduser().resolve()
    env = environment(device, pretrained.weights)
    study_ray = _study_ray() if cfg.ray is not None else None
    # Ray is connected to, and checked to fit a cell, before the study folder is made
    with study_ray.connected(cfg, device) if study_ray else nullcontext():
        lock = lock_study_dir(study_dir)
        try:
            start_study(study_dir, cfg, base, env)
            hint = ("the same command (`transferlab study …` or `transferlab demo --study …`; finished cells are "
                    "kept, the stopped one resumes)")
            with interruptible(study_dir, hint) as stop, \
                    study_ray.driving(cfg, study_dir, base, device) if study_ray else nullcontext() as remote:
                prepared = prepare_data(base, folders, pretrained.preprocessing, study_dir,
                                        data_changed_fix=STUDY_DATA_CHANGED)
                run = StudyRun(study_dir, folders, pretrained, prepared.split, ScreenedTestSet(prepared, base),
                               device, stop, env, remote)
                results = run_studies(cfg, base, run, n_blocks)
                write_results(study_dir / "results.json",
                              replace(results, wall_seconds=time.perf_counter() - started))
        finally:
            lock.release()
    return study_dir


def _study_ray():
    """experiments/study_ray.py, imported only when --ray asks for it: Ray is an optional extra, and that module
    imports this one."""
    from transferlab.experiments import study_ray
    return study_ray


def run_studies(cfg: StudyConfig, base: CompareConfig, run: StudyRun, n_blocks: int) -> StudyResult:
    """Each asked-for study's plans, run in turn; then the data summary, with the test set as screened."""
    rows, unfreeze, schedule, backbones = [], [], None, []
    if "data" in cfg.studies or "time" in cfg.studies:  # `time` alone needs only all of the data
        ks = tuple(dict.fromkeys((*cfg.ks, None))) if "data" in cfg.studies else (None,)  # all: the reference
        variant = Variant("data", base, base.backbone)
        scratch_ks = cfg.scratch_ks_run() if "data" in cfg.studies else (None,)
        rows = run_cells(plan_cells(variant, cfg.seeds, ks, run.split, run.common_key(variant), scratch_ks), run)
    if "unfreeze" in cfg.studies:
        for point, variant in unfreeze_grid(base, n_blocks):
            plans = plan_cells(variant, cfg.seeds, (None,), run.split, run.common_key(variant))
            unfreeze.append(UnfreezePoint(**point, cells=run_cells(plans, run)))
        planned = plan_schedule([to_json(p) for p in unfreeze], n_blocks, base.recipe)  # study_plan reads JSON's shape
        stages = tuple(FineTuneStage.from_dict(s, base.recipe) for s in planned["stages"])
        variant = Variant("stage by stage", base, base.backbone, skip_scratch=True, stages=stages)
        schedule = UnfreezeSchedule(
            learning_rate=planned["learning_rate"], stages=[ScheduleStage(**s) for s in planned["stages"]],
            cells=run_cells(plan_cells(variant, cfg.seeds, (None,), run.split, run.common_key(variant)), run))
    if "backbones" in cfg.studies:
        backbones = [backbone_entry(name, cfg, base, run) for name in cfg.backbones]
    recipe, p = base.recipe, run.pretrained
    return StudyResult(
        study_dir=str(run.study_dir), studies=list(cfg.studies), seeds=list(range(cfg.seeds)),
        backbone=p.name, weights=Weights(kind=p.weights.kind, location=p.weights.location),
        notice=p.notice, device=str(run.device), image_size_px=p.preprocessing.image_size_px,
        recipe=recipe.to_dict(),
        budget=Budget(kind="fixed steps", pool_images=len(run.split.train.images),
                      epochs=EpochBudget(frozen=recipe.frozen_epochs, finetuned=recipe.finetune_epochs,
                                         scratch=recipe.scratch_epochs), batch_size=base.batch_size),
        cells=rows, backbones=backbones, unfreeze=unfreeze, unfreeze_schedule=schedule,
        environment=run.env, data=_data_summary(run.test_set.prepared, run.test_set()), target_acc=base.target_acc,
        failed=run.failed or None)


def _data_summary(prepared: PreparedData, test: DecodedImages) -> StudyData:
    split = prepared.split
    return StudyData(class_names=list(split.class_names),
                     pool_per_class=np.bincount(labels_of(split.train), minlength=len(split.class_names)).tolist(),
                     n_val=len(split.val.images), n_test=len(test.images), test_labels=labels_of(test).tolist(),
                     leakage=from_json(Leakage, prepared.leakage))  # datasets.py reports it as a dict


def run_cells(plans: list[CellPlan], run: StudyRun) -> list[CellResult]:
    """Every plan as one row, in plan order whatever order they finish in; the cells with scratch (the costly
    ones) start first. A cell that failed on Ray has no row: it is listed in `run.failed`."""
    order = sorted(range(len(plans)), key=lambda i: plans[i].skip_scratch)
    label = plans[0].variant.label if plans else ""
    rows: dict[int, CellResult] = {}
    with progress_bar(total=len(plans), desc=f"study cells: {label}", unit="cell",
                      show=bool(plans) and plans[0].variant.cfg.show_progress) as bar, \
            closing(_finished_cells(plans, order, run)) as finished:  # closing: Ctrl-C cancels the Ray tasks
        for i, outcome in finished:
            if isinstance(outcome, FailedCell):
                run.failed.append(outcome)
            else:
                rows[i] = outcome
            bar.set_postfix(trained=sum(not r.reused for r in rows.values()),
                            reused=sum(bool(r.reused) for r in rows.values()), refresh=False)
            bar.update()  # the count and the postfix drawn together: never trained=1 at 0/12
    return [rows[i] for i in sorted(rows)]


def _finished_cells(plans: list[CellPlan], order: list[int], run: StudyRun
                    ) -> Iterator[tuple[int, CellResult | FailedCell]]:
    """(position in `plans`, outcome) as each cell finishes: here, one after the other, or on Ray."""
    if run.ray is None:
        yield from ((i, run_cell_plan(plans[i], run)) for i in order)
    else:
        yield from _study_ray().run_on_ray(plans, order, run)


def backbone_entry(name: str, cfg: StudyConfig, base: CompareConfig, run: StudyRun) -> BackboneResult:
    """Transfer cells on all of the data for one backbone; one whose weights cannot be had (or that cannot be
    cut for fine-tuning) is listed as skipped with the reason, never dropped silently."""
    n_classes = len(run.split.class_names)
    try:
        b, _, _ = setup_backbone(name, base, n_classes)
    except UserError as e:
        return BackboneResult(name=name, skipped=str(e))
    prepared = prepare_data(base, run.folders, b.preprocessing, run.study_dir, data_changed_fix=STUDY_DATA_CHANGED)
    own = replace(run, pretrained=b, split=prepared.split, test_set=ScreenedTestSet(prepared, base))
    variant = Variant(b.name, base, b.name, skip_scratch=True)
    rows = run_cells(plan_cells(variant, cfg.seeds, (None,), prepared.split, own.common_key(variant)), own)
    return BackboneResult(name=b.name, weights=Weights(kind=b.weights.kind, location=b.weights.location), cells=rows,
                          **measure_inference(b, n_classes, run.device))


def finished_cell(plan: CellPlan, study_dir: Path) -> CellResult | None:
    """The cell's row when its results.json says it is finished (it is then reused, not trained)."""
    done = study_dir / "cells" / plan.hash / "results.json"
    return replace(read_cell_result(done), k=plan.k_label, reused=True) if done.exists() else None


def run_cell_plan(plan: CellPlan, run: StudyRun, on_epoch: Callable[[dict], None] | None = None) -> CellResult:
    """One cell: reused when finished, resumed when stopped, else trained; then its one read of the test set.
    `on_epoch` is fed each epoch's row after its checkpoint (CellPhases)."""
    reused = finished_cell(plan, run.study_dir)
    if reused is not None:
        return reused
    started = time.perf_counter()
    cell_dir = run.study_dir / "cells" / plan.hash
    resuming = checkpoint_path(cell_dir, "frozen").parent.is_dir()  # a stopped cell: each phase resumes
    write_json_atomic(cell_dir / "cell.json", plan.key)
    cfg = replace(plan.variant.cfg, seed=plan.seed, show_progress=False)
    n_classes = len(run.split.class_names)
    torch.manual_seed(cfg.seed)
    model = TransferModel(copy.deepcopy(run.pretrained.module), n_classes, HeadConfig(dropout=cfg.recipe.head_dropout))
    data = CellData(subset_of(run.split.train, list(plan.chosen) * plan.repeats), run.split.val, n_classes)
    setting = CellSetting(cfg, run.pretrained, run.device, cfg.cache_dir, run.stop)  # one process per cell
    phases = CellPhases(setting, data, cell_dir, resuming, on_epoch)
    models = run_cell(phases, model, plan.skip_scratch, list(plan.variant.stages) or None)
    test = run.test_set()  # every choice of this cell is made: its one read of the test set
    predictions = predict_test_set(setting, test, models)
    record_test_accuracy(phases.phases, predictions, labels_of(test), n_classes)
    result = CellResult(hash=plan.hash, seed=plan.seed, k=plan.k_label, images_per_class=plan.images_per_class,
                        repeats=plan.repeats,
                        phases={name: CellPhaseResult.of(p) for name, p in phases.phases.items()},
                        test_predictions={name: predicted.tolist() for name, predicted in predictions.items()},
                        seconds=time.perf_counter() - started, ran_on=f"{socket.gethostname()}:{os.getpid()}")
    write_results(cell_dir / "results.json", result)  # written last: its presence means the cell is finished
    return replace(result, reused=False)
