"""The phases every experiment is made of, on one train/validation pair: a *cell*.

Transfer first (frozen head on cached pooled features, then fine-tuning of the tail on cached activations
at the cut), then the scratch baseline on decoded images, then — once every choice was made on
validation — the one read of the test set. `compare` runs one cell; a study runs many, each in its own
folder, so checkpoints, resume and interrupts work the same for both.
"""

import functools
import logging
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from transferlab.atomic import write_jsonl_atomic
from transferlab.data.decoded import DecodedImages
from transferlab.data.images import resized_rows
from transferlab.data.row_store import RowView
from transferlab.errors import UserError, error_text
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import class_weights_for, labels_of
from transferlab.experiments.interrupts import StopRequests
from transferlab.experiments.run_dir import default_cache_dir, load_checkpoint, save_checkpoint
from transferlab.models.backbones import PretrainedBackbone, create_backbone
from transferlab.models.freezing import changing_state_keys, freeze_backbone, unfreeze
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.results import PhaseResult
from transferlab.training.distributed import SINGLE, Ranks, any_rank, fill_shard_wise, gather_objects
from transferlab.training.inputs import CachedInputs, ImageInputs, Inputs
from transferlab.training.loop import PhaseSpec, PhaseState, batches_per_epoch, evaluate, train_phase
from transferlab.training.metrics import balanced_accuracy
from transferlab.training.precision import MEASURE, measure_cpu_precision, precision_policy
from transferlab.training.prefix_cache import prefix_outputs
from transferlab.training.stopping import GAIN_WINDOW, recent_gain
from transferlab.training.recipes import Recipe, Stopping, Unfreeze

log = logging.getLogger(__name__)

@dataclass
class CellData:
    """What one cell trains and chooses on; its test set is read only by `predict_test_set`, at the end. The
    final fit has no `val`: it trains on those images, with nothing left to choose."""

    train: DecodedImages
    val: DecodedImages | None
    n_classes: int


@dataclass(frozen=True)
class CellSetting:
    """What every phase of a cell runs with: the config (and its recipe), the backbone, where, how to stop."""

    cfg: CompareConfig
    pretrained: PretrainedBackbone
    device: torch.device
    cache_dir: Path
    stop: StopRequests
    ranks: Ranks = SINGLE

    @property
    def recipe(self) -> Recipe:
        return self.cfg.recipe


@dataclass(frozen=True)
class Phase:
    """One phase: a module, where its inputs enter it (`forward`), its input sources, what is in train mode."""

    spec: PhaseSpec
    model: TransferModel
    forward: Callable[[torch.Tensor], torch.Tensor]
    train_inputs: Inputs
    val_inputs: Inputs | None
    train_modules: list


class CellPhases:
    """One cell's phases: what they share (setting, labels, precision) and what each left (summaries,
    validation predictions, the epoch log). Each phase is one call of `train_and_summarise`."""

    def __init__(self, setting: CellSetting, data: CellData, run_dir: Path, resuming: bool,
                 on_epoch: Callable[[dict], None] | None = None):
        self.setting, self.data, self.run_dir, self.resuming = setting, data, run_dir, resuming
        self.cfg, self.recipe, self.device, self.stop, self.ranks = (setting.cfg, setting.recipe, setting.device,
                                                                     setting.stop, setting.ranks)
        self.on_epoch = on_epoch  # a tracking sink (experiments/tracking.py), fed after each checkpoint; rank 0's
        self.precision = precision_policy(self.cfg.precision, self.device)
        self.train_labels, self.n_classes = labels_of(data.train), data.n_classes
        self.val_labels = None if data.val is None else labels_of(data.val)
        if self.val_labels is not None and len(self.val_labels) == 0:
            raise UserError("the validation set is empty: every class has a single image; add images or give --val")
        self.class_weights = (class_weights_for(self.train_labels, data.n_classes)
                              if self.cfg.class_weights == "auto" else None)
        self.history: list[dict] = []
        self.precision_probes: dict[str, dict] = {}  # phase: what measure_cpu_precision found, where it ran
        self.phases: dict[str, PhaseResult] = {}
        self.predictions: dict[str, np.ndarray] = {}

    def spec(self, name: str, epochs: int, lr: float, stopping: Stopping = Stopping()) -> PhaseSpec:
        return PhaseSpec(name=name, epochs=epochs, learning_rate=lr, batch_size=self.cfg.batch_size,
                         seed=self.cfg.seed, class_weights=self.class_weights,
                         optimization=self.recipe.optimization, stopping=stopping, precision=self.precision)

    def run_phase(self, phase: Phase) -> tuple[PhaseState, float, str]:
        """(state, seconds, precision it trained in) of one phase, resumed from its checkpoint if any."""
        spec, model, forward, train_inputs = phase.spec, phase.model, phase.forward, phase.train_inputs
        train_modules = phase.train_modules
        changing = changing_state_keys(model, train_modules)
        saved = load_checkpoint(self.run_dir, spec.name, model, changing) if self.resuming else None
        optimizer_state, state = saved or (None, None)
        started = time.perf_counter()
        if state is not None and state.history:  # resumed: on in the precision its first epochs ran in
            spec = replace(spec, precision=state.history[0].get("precision", "fp32"))  # older runs: fp32
        elif spec.precision == MEASURE and spec.epochs == 0:
            spec = replace(spec, precision="fp32")  # nothing trains: nothing to measure
        elif spec.precision == MEASURE:
            probe = measure_cpu_precision(model, forward, train_inputs, self.train_labels, spec.batch_size,
                                         train_modules, default_cache_dir())
            probe = gather_objects(probe, self.ranks)[0]  # every rank trains as rank 0 measured
            log.info("%s: %s on this CPU (fp32 %.3f s, bf16 %.3f s a step)", spec.name, probe["precision"],
                     probe["step_seconds"]["fp32"], probe["step_seconds"]["bf16"])
            spec, self.precision_probes[spec.name] = replace(spec, precision=probe["precision"]), probe
        already = sum(r["seconds"] for r in state.history) if state else 0.0

        def checkpoint(s: PhaseState, optimizer) -> None:
            if self.ranks.is_main:
                save_checkpoint(self.run_dir, spec.name, model, optimizer, s, changing)
                write_jsonl_atomic(self.run_dir / "metrics.jsonl", self.history + s.history)
            if self.on_epoch is not None:
                self.on_epoch(s.history[-1])

        def should_stop() -> bool:  # a signal to one rank stops them all after the same epoch
            self.stop.requested = any_rank(self.stop.requested, self.ranks)
            return self.stop.requested

        with self.stop.deferred():  # a signal lets the epoch finish and be checkpointed, then stops
            state = train_phase(model, forward, train_inputs, self.train_labels, phase.val_inputs, self.val_labels,
                                spec, train_modules, self.device, state=state, optimizer_state=optimizer_state,
                                on_epoch_end=checkpoint, should_stop=should_stop,
                                show_progress=self.cfg.show_progress, ranks=self.ranks)
        if state.best_state is None:  # zero epochs asked for
            state.best_state = copy_state(model)
        self.history += state.history
        return state, time.perf_counter() - started + already, spec.precision

    def train_and_summarise(self, phase: Phase, cache_seconds: float = 0.0, extra: dict | None = None) -> PhaseResult:
        """Run one phase, re-evaluate its kept checkpoint on validation and record the summary; `extra` holds
        PhaseResult's optional fields (the freezing plan as `unfreeze`)."""
        state, seconds, precision = self.run_phase(phase)
        spec, model = phase.spec, phase.model
        model.eval()  # also when no epoch ran: dropout off, BatchNorm on its running statistics
        kept = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
        train_acc = kept["train_acc"] if kept else None
        val_numbers = dict(val_acc=None, balanced_val_acc=None, val_acc_over_last_epoch=None, gap=None)
        if phase.val_inputs is not None:
            final = evaluate(phase.forward, phase.val_inputs, self.val_labels, self.cfg.batch_size * 2, self.device,
                             precision, self.ranks)
            self.predictions[spec.name] = final.predictions
            last_val = state.history[-1]["val_acc"] if state.history else None
            val_numbers = dict(
                val_acc=final.accuracy,
                balanced_val_acc=balanced_accuracy(self.val_labels, final.predictions, self.n_classes),
                # what choosing the epoch on validation added: the optimism of a validation-only report
                val_acc_over_last_epoch=None if last_val is None else final.accuracy - last_val,
                gap=None if train_acc is None else train_acc - final.accuracy)
        self.phases[spec.name] = PhaseResult(
            epochs=state.history, best_epoch=state.best_epoch, train_acc=train_acc, **val_numbers,
            seconds=seconds + cache_seconds, cache_seconds=cache_seconds, train_seconds=seconds,
            learning_rate=spec.learning_rate,
            trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
            total_parameters=sum(p.numel() for p in model.parameters()),
            steps=len(state.history) * batches_per_epoch(len(phase.train_inputs), spec.batch_size), precision=precision,
            precision_probe=self.precision_probes.get(spec.name),
            stopped=state.stop_reason or ("epochs" if state.history else None),
            recent_val_gain=None if phase.val_inputs is None else recent_gain([r["val_acc"] for r in state.history],
                                                                              GAIN_WINDOW), **(extra or {}))
        return self.phases[spec.name]


@dataclass(frozen=True)
class FineTuneStage:
    """One fine-tuning phase, trained as its recipe's unfreeze, finetune_epochs and finetune_lr say; a cell
    runs one (the recipe's) or several in a row (unfreezing stage by stage)."""

    name: str
    recipe: Recipe

    def to_dict(self) -> dict:
        r = self.recipe
        return {"name": self.name, "unfreeze": str(r.unfreeze), "epochs": r.finetune_epochs,
                "learning_rate": r.finetune_lr}

    @classmethod
    def from_dict(cls, d: dict, base: Recipe) -> "FineTuneStage":
        return cls(d["name"], replace(base, unfreeze=Unfreeze.parse(d["unfreeze"]), finetune_epochs=d["epochs"],
                                      finetune_lr=d["learning_rate"]))


def recipe_stages(recipe: Recipe) -> list[FineTuneStage]:
    return [FineTuneStage("finetuned", recipe)]


@dataclass
class CellModels:
    """What a cell's phases leave behind for the test read and for saving."""

    model: TransferModel                         # the transfer model (holds the last phase's state)
    kept: dict[str, tuple[float, dict]]          # frozen and each fine-tune stage: (val accuracy, kept state)
    first_units: dict[str, int]                  # where each of those enters the model (its cached prefix ends)
    scratch: TransferModel | None
    precisions: dict[str, str]                   # what each phase trained and was validated in


def prefix_rows(setting: CellSetting, model: TransferModel, last_units: list[int], decoded: DecodedImages,
                view: int = 0) -> list[RowView]:
    """`prefix_outputs` for all of `decoded`; under torchrun each rank first computes its share of them."""
    cfg, pretrained = setting.cfg, setting.pretrained

    def outputs(positions: np.ndarray) -> list[RowView]:
        return prefix_outputs(model, last_units, decoded.pixels.subset(positions),
                              [decoded.content_keys[i] for i in positions], pretrained.preprocessing,
                              setting.cache_dir, pretrained.cache_key, setting.device, view=view, engine=cfg.engine,
                              show_progress=cfg.show_progress)
    everything = np.arange(len(decoded.content_keys))
    fill_shard_wise(outputs, len(everything), setting.ranks)
    return outputs(everything)


def cache_prefix_inputs(setting: CellSetting, model: TransferModel, last_units: list[int], decoded: DecodedImages,
                        n_views: int) -> tuple[dict[int, CachedInputs], float]:
    """One pass per view through the frozen prefix, keeping the output at every requested cut (by unit)."""
    started = time.perf_counter()
    per_view = [prefix_rows(setting, model, last_units, decoded, v) for v in range(n_views)]
    inputs = {unit: CachedInputs([rows[i] for rows in per_view], setting.device, seed=setting.cfg.seed)
              for i, unit in enumerate(last_units)}
    return inputs, time.perf_counter() - started


def run_cell(cell: CellPhases, model: TransferModel, skip_scratch: bool = False,
             stages: list[FineTuneStage] | None = None) -> CellModels:
    """Frozen, then each fine-tune stage from the previous one's kept state (the recipe's one stage by
    default), then scratch, on one train/validation pair; summaries land in `cell.phases`."""
    setting, data, recipe, device = cell.setting, cell.data, cell.recipe, cell.device
    stages = stages or recipe_stages(recipe)
    views = recipe.cached_views if recipe.augment else 1
    model = model.to(device, memory_format=torch.channels_last)
    # where fine-tuning will cut decides which activations to cache alongside the pooled features; each
    # stage's prefix stays frozen through the stages before it (they unfreeze later blocks only, or the same)
    end = len(model.units)
    cuts = {s.name: unfreeze_for_finetuning(model, s.recipe).first_trainable_unit for s in stages}
    frozen_plan = freeze_backbone(model)
    units = list(dict.fromkeys([end, *cuts.values()]))
    train_at, t_train = cache_prefix_inputs(setting, model, units, data.train, views)
    val_at, t_val = cache_prefix_inputs(setting, model, units, data.val, 1) if data.val is not None else ({}, 0.0)

    # frozen: the whole backbone is the cached prefix; only the head trains. The one backbone pass is
    # counted here; the fine-tune cuts come with it for free
    frozen = cell.train_and_summarise(
        Phase(cell.spec("frozen", recipe.frozen_epochs, recipe.frozen_lr), model,
              functools.partial(model.forward_from, end), train_at[end], val_at.get(end), [model.head]),
        t_train + t_val, {"unfreeze": frozen_plan.to_dict()})
    kept, first_units = {"frozen": (frozen.val_acc, copy_state(model))}, {"frozen": end}

    # fine-tune: continue from the previous phase's kept state; only the tail after the cut runs
    for stage in stages:
        plan = unfreeze_for_finetuning(model, stage.recipe)
        log.info("%s: %s", stage.name, plan)
        cut = cuts[stage.name]
        summary = cell.train_and_summarise(
            Phase(cell.spec(stage.name, stage.recipe.finetune_epochs, stage.recipe.finetune_lr), model,
                  functools.partial(model.forward_from, cut), train_at[cut], val_at.get(cut),
                  [model.head, *plan.train_mode_modules]), 0.0, {"unfreeze": plan.to_dict()})
        kept[stage.name], first_units[stage.name] = (summary.val_acc, copy_state(model)), cut

    # scratch: same architecture, random init, everything trains, on decoded images, same augmentation
    scratch = None if skip_scratch else train_scratch(cell)
    return CellModels(model=model, kept=kept, first_units=first_units, scratch=scratch,
                      precisions={name: summary.precision for name, summary in cell.phases.items()})


def train_scratch(cell: CellPhases) -> TransferModel:
    """The "before": the backbone's architecture, randomly initialised, everything trains on decoded images
    with the same augmentation, at the recipe's scratch input size; its summary lands in `cell.phases`."""
    setting, data, recipe, device, seed = cell.setting, cell.data, cell.recipe, cell.device, cell.cfg.seed
    torch.manual_seed(seed)
    scratch = TransferModel(create_backbone(setting.pretrained.name), data.n_classes,
                            HeadConfig(dropout=recipe.head_dropout)).to(device, memory_format=torch.channels_last)
    spec = cell.spec("scratch", recipe.scratch_epochs, recipe.scratch_lr, recipe.scratch_stopping)
    cell.train_and_summarise(Phase(spec, scratch, scratch, scratch_inputs(setting, data.train, augment=recipe.augment),
                                   scratch_inputs(setting, data.val), [scratch]))
    return scratch


RESIZE_CHUNK = 256  # rows resized at a time: memory holds one chunk at the decoded size, not the dataset


def scratch_inputs(setting: CellSetting, decoded: DecodedImages, augment: bool = False) -> ImageInputs:
    """The scratch baseline's input: the decoded pixels, resized once to the recipe's scratch_image_size_px when
    that differs from the transfer models' size (no second decode of the files). Each distinct row is resized
    once: a study cell's k-subset is its rows repeated to the pool's size."""
    prep, size = setting.pretrained.preprocessing, setting.recipe.scratch_image_size_px
    pixels = decoded.pixels
    if size is not None and size != prep.image_size_px:
        _, first, inverse = np.unique(pixels.row_indices, return_index=True, return_inverse=True)
        rows = np.empty((len(first), size, size, 3), np.uint8)
        for start in range(0, len(first), RESIZE_CHUNK):
            chunk = slice(start, start + RESIZE_CHUNK)
            rows[chunk] = resized_rows(pixels[first[chunk]], size, prep.interpolation)
        pixels, prep = RowView(rows, inverse.reshape(-1)), replace(prep, image_size_px=size)
    return ImageInputs(pixels, prep, setting.device, setting.cfg.seed if augment else None)


FINAL_FIT_DIR = "final"  # the final fit's checkpoints and metrics, beside the selection's


def run_final_fit(selection: CellPhases, train_and_val: DecodedImages, through: str, model: TransferModel,
                  initial_state: dict) -> tuple[CellModels, dict[str, PhaseResult]]:
    """The pipeline validation kept (`through`: frozen, or frozen then fine-tuned), trained again from
    `initial_state` on train + validation with the same epochs and schedule, the last epoch kept; no epoch is
    evaluated on validation (it trains on those images).

    Validation has made every choice by then; what it can still give is data: on the embedded set (seeds
    0-2) fine-tuned test accuracy rose from 78.8 % to 82.1 %. Its validation numbers are not reported (it
    trained on those images); its checkpoints live in run_dir/final, so it resumes like the other phases.
    """
    recipe = selection.recipe
    recipe = replace(recipe, optimization=replace(recipe.optimization, keep_best_epoch=False),
                     finetune_epochs=0 if through == "frozen" else recipe.finetune_epochs)
    setting = replace(selection.setting, cfg=replace(selection.cfg, recipe=recipe))
    final_dir = Path(selection.run_dir) / FINAL_FIT_DIR
    if setting.ranks.is_main:
        final_dir.mkdir(exist_ok=True)
    final = CellPhases(setting, CellData(train_and_val, None, selection.data.n_classes), final_dir,
                       selection.resuming)
    model.load_state_dict(initial_state)
    return run_cell(final, model, skip_scratch=True), final.phases


def unfreeze_for_finetuning(model: TransferModel, recipe: Recipe):
    return unfreeze(model, *astuple(recipe.unfreeze), recipe.train_batchnorm)


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_input_size(model: TransferModel, pretrained: PretrainedBackbone) -> None:
    """ViTs and Swins are built for one input size: another --image-size fails here, before any folder."""
    size = pretrained.preprocessing.image_size_px
    if (error := input_size_error(model, size)) is not None:
        raise UserError(f"backbone '{pretrained.name}' cannot take {size} px inputs ({error}); drop --image-size "
                        "(or the recipe's size) to use the weights' own")


def with_input_sizes(cfg: CompareConfig, model: TransferModel, pretrained: PretrainedBackbone) -> CompareConfig:
    """The recipe's input sizes resolved for this backbone; a --scratch-image-size it cannot take fails here."""
    size = pretrained.preprocessing.image_size_px
    resolved = cfg.with_image_size(size)
    scratch = resolved.recipe.scratch_image_size_px
    if cfg.skip_scratch or scratch == size or (error := input_size_error(model, scratch)) is None:
        return resolved
    raise UserError(f"backbone '{pretrained.name}' cannot take {scratch} px inputs ({error}); "
                    f"drop --scratch-image-size")


def input_size_error(model: TransferModel, size: int) -> str | None:
    """Why the backbone cannot take `size` px inputs (ViTs and Swins are built for one size), or None."""
    try:
        with torch.no_grad():
            model.backbone.eval().forward_features(torch.zeros(1, 3, size, size))
    except (AssertionError, RuntimeError) as e:
        return error_text(e)
    return None

