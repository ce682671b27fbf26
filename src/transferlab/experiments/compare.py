"""The seeds' experiment: from-scratch baseline vs. pretrained-frozen vs. fine-tuned, on one split.

The transfer phases run first (they produce the model the user keeps), then the scratch baseline.
Each phase writes a checkpoint per epoch, so `resume_compare` continues an interrupted run exactly.
"""

import logging
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from transferlab.atomic import write_json_atomic, write_jsonl_atomic
from transferlab.data.decoded import DecodedImages
from transferlab.errors import UserError
from transferlab.experiments.config import RUN_FORMAT_VERSION, CompareConfig
from transferlab.experiments.datasets import (class_weights_for, labels_of, prepare_data, scan_folders,
                                              screen_test_set)
from transferlab.experiments.interrupts import StopRequests, interruptible
from transferlab.experiments.run_dir import (default_cache_dir, environment, load_checkpoint, new_run_dir,
                                             read_run_config, save_checkpoint)
from transferlab.models.backbones import PretrainedBackbone, create_backbone, load_backbone
from transferlab.models.freezing import (UnfreezePlan, freeze_backbone, unfreeze_last_blocks,
                                         unfreeze_last_keras_layers, unfreeze_last_layers)
from transferlab.models.saved import save_model
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.training.engines import resolve_engine
from transferlab.training.inputs import CachedInputs, ImageInputs
from transferlab.training.metrics import balanced_accuracy, confusion_matrix
from transferlab.training.loop import PhaseSpec, PhaseState, evaluate, train_phase
from transferlab.training.prefix_cache import prefix_outputs
from transferlab.training.recipes import Recipe, check_unfreeze

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`name` was checked by CompareConfig; here only whether a GPU is really there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices are visible")
    return device


class _Runner:
    """Shared state of one compare run; each phase is one call of `train_and_summarise`."""

    def __init__(self, cfg: CompareConfig, recipe: Recipe, run_dir: Path, resuming: bool, device: torch.device,
                 stop: StopRequests):
        self.cfg, self.recipe, self.run_dir, self.resuming = cfg, recipe, run_dir, resuming
        self.device, self.stop = device, stop
        self.history: list[dict] = []
        self.phases: dict[str, dict] = {}
        self.predictions: dict[str, np.ndarray] = {}

    def spec(self, name: str, epochs: int, lr: float) -> PhaseSpec:
        r = self.recipe
        return PhaseSpec(name=name, epochs=epochs, learning_rate=lr, batch_size=self.cfg.batch_size,
                         seed=self.cfg.seed, class_weights=self.class_weights, optimizer=r.optimizer,
                         weight_decay=r.weight_decay, adam_eps=r.adam_eps, schedule=r.schedule,
                         label_smoothing=r.label_smoothing, keep_best_epoch=r.keep_best_epoch)

    def run_phase(self, spec: PhaseSpec, model: TransferModel, forward, train_inputs, val_inputs,
                  train_modules: list) -> tuple[PhaseState, float]:
        saved = load_checkpoint(self.run_dir, spec.name) if self.resuming else None
        state, optimizer_state = None, None
        if saved is not None:
            module_state, optimizer_state, state = saved
            model.load_state_dict(module_state)
        started = time.perf_counter()
        already = sum(r["seconds"] for r in state.history) if state else 0.0

        def checkpoint(s: PhaseState, optimizer) -> None:
            save_checkpoint(self.run_dir, spec.name, model, optimizer, s)
            write_jsonl_atomic(self.run_dir / "metrics.jsonl", self.history + s.history)

        with self.stop.deferred():  # a signal lets the epoch finish and be checkpointed, then stops
            state = train_phase(model, forward, train_inputs, self.train_labels, val_inputs, self.val_labels,
                                spec, train_modules, self.device, state=state, optimizer_state=optimizer_state,
                                on_epoch_end=checkpoint, should_stop=self.stop,
                                show_progress=self.cfg.show_progress)
        if state.best_state is None:  # zero epochs asked for
            state.best_state = copy_state(model)
        self.history += state.history
        return state, time.perf_counter() - started + already

    def train_and_summarise(self, spec: PhaseSpec, model: TransferModel, forward, train_inputs, val_inputs,
                            train_modules: list, cache_seconds: float = 0.0, extra: dict | None = None) -> dict:
        """Run one phase, re-evaluate its kept checkpoint on validation and record the summary."""
        state, seconds = self.run_phase(spec, model, forward, train_inputs, val_inputs, train_modules)
        model.eval()  # also when no epoch ran: dropout off, BatchNorm on its running statistics
        final = evaluate(forward, val_inputs, self.val_labels, self.cfg.batch_size * 2, self.device)
        self.predictions[spec.name] = final.predictions
        self.phases[spec.name] = _phase_summary(state, seconds, cache_seconds, spec.learning_rate, model, final,
                                                self.val_labels, self.n_classes, extra)
        return self.phases[spec.name]


def _phase_summary(state: PhaseState, seconds: float, cache_seconds: float, lr: float, model: TransferModel,
                   final_val, labels: np.ndarray, n_classes: int, extra: dict | None = None) -> dict:
    kept = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
    train_acc = kept["train_acc"] if kept else None
    last_val = state.history[-1]["val_acc"] if state.history else None
    return {"epochs": state.history, "best_epoch": state.best_epoch, "train_acc": train_acc,
            "val_acc": final_val.accuracy,
            "balanced_val_acc": balanced_accuracy(labels, final_val.predictions, n_classes),
            # what choosing the epoch on validation added: the optimism of a validation-only report
            "val_acc_over_last_epoch": None if last_val is None else final_val.accuracy - last_val,
            "gap": None if train_acc is None else train_acc - final_val.accuracy,
            "seconds": seconds + cache_seconds, "cache_seconds": cache_seconds, "train_seconds": seconds,
            "learning_rate": lr,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.parameters()), **(extra or {})}


def run_compare(cfg: CompareConfig, run_dir: Path | None = None) -> Path:
    """Train the three phases and write results.json; returns the run directory. `run_dir` given = resume it.

    Options, data, device and weights are checked before the run directory is made, so a bad input leaves
    nothing behind. config.json stores the resolved config (the backbone actually used, every recipe field,
    absolute paths) and the environment (weights fingerprint, library versions, threads), so a resume
    cannot drift.
    """
    resuming = run_dir is not None
    if not resuming:
        cfg = cfg.with_absolute_paths()  # scanned as stored: a resume sees the very same paths
    folders = scan_folders(cfg)
    device = resolve_device(cfg.device)
    resolve_engine(cfg.engine, device)
    recipe = cfg.resolved_recipe()
    pretrained: PretrainedBackbone = load_backbone(cfg.backbone, cfg.weights, recipe.image_size_px)
    torch.manual_seed(cfg.seed)
    model = TransferModel(pretrained.module, len(folders.train.class_names), HeadConfig(dropout=recipe.head_dropout))
    _check_input_size(model, pretrained)
    plan = unfreeze_for_finetuning(model, recipe)  # a backbone that cannot be cut there fails now, not mid-run
    env = environment(device, pretrained.weights)
    if resuming:
        stored = read_run_config(run_dir)
        _check_same_weights(stored, env)
        overridden = stored.get("recipe", {}).get("overridden", [])
    else:
        overridden = cfg.overridden_recipe_fields()
        cfg = replace(cfg.with_recipe_filled_in(pretrained.preprocessing.image_size_px), backbone=pretrained.name,
                      cache_dir=(cfg.cache_dir or default_cache_dir()).expanduser().resolve())
        run_dir = new_run_dir(cfg.runs_dir, cfg.name or Path(cfg.data_dir or cfg.train_dir).name)
        write_json_atomic(run_dir / "config.json", {
            "format_version": RUN_FORMAT_VERSION, "config": cfg.to_dict(),
            "recipe": {"name": cfg.recipe, "overridden": overridden, **cfg.resolved_recipe().to_dict()},
            "environment": env})
    if pretrained.notice:
        warnings.warn(pretrained.notice, stacklevel=2)
    with interruptible(run_dir) as stop:
        results = _train_and_evaluate(cfg, folders, pretrained, model, plan.first_trainable_unit, run_dir,
                                      resuming, device, stop)
        results["recipe"] = {"overridden": overridden, **results["recipe"]}
        write_json_atomic(run_dir / "results.json",
                          {"format_version": RUN_FORMAT_VERSION} | results | {"environment": env})
    return run_dir


def _check_input_size(model: TransferModel, pretrained: PretrainedBackbone) -> None:
    """ViTs and Swins are built for one input size: another --image-size fails here, before any folder."""
    size = pretrained.preprocessing.image_size_px
    try:
        with torch.no_grad():
            model.backbone.eval().forward_features(torch.zeros(1, 3, size, size))
    except (AssertionError, RuntimeError) as e:
        raise UserError(f"backbone '{pretrained.name}' cannot take {size} px inputs ({str(e).splitlines()[0][:120]}); "
                        "drop --image-size (or the recipe's size) to use the weights' own") from None


def _check_same_weights(stored: dict, env: dict) -> None:
    before = stored.get("environment", {}).get("weights", {})
    if before.get("fingerprint") not in (None, env["weights"]["fingerprint"]):
        raise UserError(f"the weights of this run ({before.get('location')}) changed since it started; "
                        "restore them or start a new run instead of resuming")


def _train_and_evaluate(cfg: CompareConfig, folders, pretrained: PretrainedBackbone, model: TransferModel,
                        cut: int, run_dir: Path, resuming: bool, device: torch.device, stop: StopRequests) -> dict:
    started = time.perf_counter()
    recipe = cfg.resolved_recipe()
    runner = _Runner(cfg, recipe, run_dir, resuming, device, stop)
    cache_dir, show = Path(cfg.cache_dir or default_cache_dir()), cfg.show_progress
    prep = pretrained.preprocessing
    decode_started = time.perf_counter()
    prepared = prepare_data(cfg, folders, prep, cache_dir, run_dir, resuming)
    split = prepared.split
    decode_seconds = time.perf_counter() - decode_started
    n_classes = len(split.class_names)
    runner.train_labels, runner.val_labels = labels_of(split.train), labels_of(split.val)
    runner.n_classes = n_classes
    if len(runner.val_labels) == 0:
        raise UserError("the validation set is empty: every class has a single image; add images or give --val")
    runner.class_weights = (class_weights_for(runner.train_labels, n_classes)
                            if cfg.class_weights == "auto" else None)
    views = recipe.cached_views if recipe.augment else 1

    def cached(last_units: list[int], decoded: DecodedImages, n_views: int) -> tuple[list[CachedInputs], float]:
        """One pass per view through the frozen prefix, keeping the output at every requested cut."""
        t = time.perf_counter()
        per_view = [prefix_outputs(model, last_units, decoded.pixels, decoded.content_keys, prep,
                                   cache_dir, pretrained.cache_key, device, view=v, engine=cfg.engine,
                                   show_progress=show)
                    for v in range(n_views)]
        inputs = [CachedInputs([rows[i] for rows in per_view], device, seed=cfg.seed) for i in range(len(last_units))]
        return inputs, time.perf_counter() - t

    model = model.to(device, memory_format=torch.channels_last)
    head_cfg = HeadConfig(dropout=recipe.head_dropout)
    # where fine-tuning will cut decides which activations to cache alongside the pooled features
    end = len(model.units)
    frozen_plan = freeze_backbone(model)
    (train_features, train_acts), t_train = cached([end, cut], split.train, views)
    (val_features, val_acts), t_val = cached([end, cut], split.val, 1)
    # the one backbone pass is counted in the frozen phase; the fine-tune cut comes with it for free
    cache_frozen, cache_finetune = t_train + t_val, 0.0

    # frozen: the whole backbone is the cached prefix; only the head trains
    frozen_forward = lambda x: model.forward_from(end, x)  # noqa: E731
    frozen = runner.train_and_summarise(runner.spec("frozen", recipe.frozen_epochs, recipe.frozen_lr), model,
                                        frozen_forward, train_features, val_features, [model.head],
                                        cache_frozen, {"unfreeze": frozen_plan.to_dict()})
    kept = {"frozen": (frozen["val_acc"], copy_state(model))}

    # fine-tune: continue from the frozen phase's kept state; only the tail after the cut runs
    plan = unfreeze_for_finetuning(model, recipe)
    log.info("fine-tune: %s", plan)
    finetune_forward = lambda x: model.forward_from(cut, x)  # noqa: E731
    finetuned = runner.train_and_summarise(runner.spec("finetuned", recipe.finetune_epochs, recipe.finetune_lr),
                                           model, finetune_forward, train_acts, val_acts,
                                           [model.head, *plan.train_mode_modules], cache_finetune,
                                           {"unfreeze": plan.to_dict()})
    kept["finetuned"] = (finetuned["val_acc"], copy_state(model))

    # scratch: same architecture, random init, everything trains, on decoded images, same augmentation
    scratch = None
    if not cfg.skip_scratch:
        torch.manual_seed(cfg.seed)
        scratch = TransferModel(create_backbone(pretrained.name), n_classes, head_cfg)
        scratch = scratch.to(device, memory_format=torch.channels_last)
        train_in = ImageInputs(split.train.pixels, prep, device, cfg.seed if recipe.augment else None)
        val_in = ImageInputs(split.val.pixels, prep, device)
        runner.train_and_summarise(runner.spec("scratch", recipe.scratch_epochs, recipe.scratch_lr), scratch,
                                   scratch, train_in, val_in, [scratch])
    phases = runner.phases

    # every choice is made on validation: the transfer model to keep, then the test set is read, once
    model_phase = max(kept, key=lambda p: kept[p][0])
    test_predictions = {}
    if split.test is not None:
        split.test = screen_test_set(prepared, cfg)
        if not split.test.images:
            raise UserError("the test set is empty (too few images per class, or every test image duplicates a "
                            "training one); give a larger --test-fraction or a --test folder")
        test_predictions = _evaluate_on_test(split.test, model, kept, scratch, [end, cut], prep, cache_dir,
                                             pretrained.cache_key, device, cfg, show)
        test_labels = labels_of(split.test)
        for name, predicted in test_predictions.items():
            phases[name]["test_acc"] = float((predicted == test_labels).mean()) if len(test_labels) else 0.0
            phases[name]["balanced_test_acc"] = balanced_accuracy(test_labels, predicted, n_classes)
    model.load_state_dict(kept[model_phase][1])
    save_model(run_dir, model, backbone=pretrained.name, class_names=list(split.class_names),
               preprocessing=prep, head=head_cfg, phase=model_phase, val_acc=kept[model_phase][0])
    best_phase = max(phases, key=lambda p: phases[p]["val_acc"])
    transfer_seconds = decode_seconds + phases["frozen"]["seconds"] + phases["finetuned"]["seconds"]
    on_test = split.test is not None
    headline = phases[model_phase]["test_acc" if on_test else "val_acc"]
    counts = lambda d: np.bincount(labels_of(d), minlength=n_classes).tolist()  # noqa: E731
    matrix_labels, matrix_predictions = ((labels_of(split.test), test_predictions[best_phase]) if on_test
                                         else (runner.val_labels, runner.predictions[best_phase]))
    return {
        "run_dir": str(run_dir), "backbone": pretrained.name,
        "weights": {"kind": pretrained.weights.kind, "location": pretrained.weights.location},
        "notice": pretrained.notice, "device": str(device), "preprocessing": prep.to_dict(),
        "recipe": recipe.to_dict(),
        "augment": {"enabled": recipe.augment, "cached_views": views,
                    "mode": (f"{views} augmented views cached per image" if recipe.augment
                             else "no augmentation; exact feature cache")},
        "data": {"source": str(cfg.data_dir or cfg.train_dir), "val_source": str(cfg.val_dir or ""),
                 "test_source": str(cfg.test_dir or ("split.json" if cfg.test_fraction else "")),
                 "split": "split.json" if cfg.data_dir else "explicit --train/--val",
                 "class_names": list(split.class_names), "train_per_class": counts(split.train),
                 "val_per_class": counts(split.val), "n_train": len(split.train.images),
                 "n_val": len(split.val.images), "n_test": len(split.test.images) if on_test else 0,
                 "skipped": [{"path": str(s.path), "reason": s.reason} for s in prepared.skipped],
                 "ignored_files": [str(p) for p in split.ignored_files], "leakage": prepared.leakage,
                 "imbalanced": max(counts(split.train)) > 1.5 * max(min(counts(split.train)), 1)},
        "decode_seconds": decode_seconds,
        "phases": phases,
        "model_phase": model_phase,
        "best_phase": best_phase,
        "confusion_matrix": {"phase": best_phase, "subset": "test" if on_test else "validation",
                             "matrix": confusion_matrix(matrix_labels, matrix_predictions, n_classes)},
        "verdict": {"subset": "test" if on_test else "validation", "target_acc": cfg.target_acc,
                    "acc": headline, "target_met": headline >= cfg.target_acc,
                    "val_optimism": None if on_test else phases[model_phase]["val_acc_over_last_epoch"],
                    "time_budget_seconds": cfg.time_budget_seconds, "transfer_seconds": transfer_seconds,
                    "time_target_met": transfer_seconds <= cfg.time_budget_seconds},
        "engine": resolve_engine(cfg.engine, device),
        "total_seconds": time.perf_counter() - started,
    }


def _evaluate_on_test(test: DecodedImages, model: TransferModel, kept: dict, scratch: TransferModel | None,
                      cuts: list[int], prep, cache_dir: Path, model_key: str, device: torch.device,
                      cfg: CompareConfig, show: bool) -> dict[str, np.ndarray]:
    """Predictions of every phase's kept model on the test set: the only place the test set is read."""
    labels, batch_size = labels_of(test), cfg.batch_size * 2
    end, cut = cuts
    # the frozen phase's state holds the pretrained backbone: after fine-tuning, the pooled features would
    # come from the fine-tuned tail and poison the cache kept under the pretrained weights' key
    model.load_state_dict(kept["frozen"][1])
    features, activations = prefix_outputs(model, cuts, test.pixels, test.content_keys, prep, cache_dir,
                                           model_key, device, engine=cfg.engine, show_progress=show)
    predictions = {}
    for name, first_unit, rows in (("frozen", end, features), ("finetuned", cut, activations)):
        model.load_state_dict(kept[name][1])
        predictions[name] = evaluate(lambda x: model.forward_from(first_unit, x), CachedInputs([rows], device),
                                     labels, batch_size, device).predictions
    if scratch is not None:
        scratch.eval()
        predictions["scratch"] = evaluate(scratch, ImageInputs(test.pixels, prep, device), labels, batch_size,
                                          device).predictions
    return predictions


def unfreeze_for_finetuning(model: TransferModel, recipe: Recipe) -> UnfreezePlan:
    kind, count = check_unfreeze(recipe.unfreeze)
    unfreeze = {"layers": unfreeze_last_layers, "blocks": unfreeze_last_blocks,
                "keras": unfreeze_last_keras_layers}[kind]
    return unfreeze(model, count, train_batchnorm=recipe.train_batchnorm)


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def resume_compare(run_dir: Path, show_progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    cfg = CompareConfig.from_file(run_dir / "config.json")
    return run_compare(replace(cfg, show_progress=show_progress), run_dir=run_dir)
