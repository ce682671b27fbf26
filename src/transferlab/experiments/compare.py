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
from transferlab.experiments.config import CompareConfig
from transferlab.experiments.datasets import class_weights_for, labels_of, prepare_data, scan_folders
from transferlab.experiments.interrupts import RunInterrupted, StopRequests, interruptible
from transferlab.experiments.run_dir import (default_cache_dir, environment, load_checkpoint, new_run_dir,
                                             read_run_config, save_checkpoint)
from transferlab.models.backbones import PretrainedBackbone, create_backbone, load_backbone
from transferlab.models.freezing import (UnfreezePlan, freeze_backbone, unfreeze_last_blocks,
                                         unfreeze_last_layers)
from transferlab.models.saved import save_model
from transferlab.models.transfer_model import HeadConfig, TransferModel
from transferlab.training.inputs import CachedInputs, ImageInputs
from transferlab.training.metrics import balanced_accuracy, confusion_matrix
from transferlab.training.loop import PhaseSpec, PhaseState, evaluate, train_phase
from transferlab.training.prefix_cache import prefix_outputs

log = logging.getLogger(__name__)
PHASES = ("scratch", "frozen", "finetuned")


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
    """Shared state of one compare run; each phase is one call of `_run_phase`."""

    def __init__(self, cfg: CompareConfig, run_dir: Path, resuming: bool, device: torch.device,
                 stop: StopRequests):
        self.cfg, self.run_dir, self.resuming, self.device, self.stop = cfg, run_dir, resuming, device, stop
        self.history: list[dict] = []
        self.phases: dict[str, dict] = {}
        self.predictions: dict[str, np.ndarray] = {}

    def run_phase(self, name: str, model: TransferModel, forward, train_inputs, val_inputs,
                  train_modules: list, epochs: int, lr: float) -> tuple[PhaseState, float]:
        cfg = self.cfg
        spec = PhaseSpec(name=name, epochs=epochs, learning_rate=lr, batch_size=cfg.batch_size, seed=cfg.seed,
                         class_weights=self.class_weights)
        saved = load_checkpoint(self.run_dir, name) if self.resuming else None
        state, optimizer_state = None, None
        if saved is not None:
            module_state, optimizer_state, state = saved
            model.load_state_dict(module_state)
        started = time.perf_counter()
        already = sum(r["seconds"] for r in state.history) if state else 0.0

        def checkpoint(s: PhaseState, optimizer) -> None:
            save_checkpoint(self.run_dir, name, model, optimizer, s)
            write_jsonl_atomic(self.run_dir / "metrics.jsonl", self.history + s.history)

        with self.stop.deferred():  # a signal lets the epoch finish and be checkpointed, then stops
            state = train_phase(model, forward, train_inputs, self.train_labels, val_inputs, self.val_labels,
                                spec, train_modules, self.device, state=state, optimizer_state=optimizer_state,
                                on_epoch_end=checkpoint, should_stop=self.stop,
                                show_progress=cfg.show_progress)
        if state.best_state is None:  # zero epochs asked for
            state.best_state = model.state_dict()
        self.history += state.history
        return state, time.perf_counter() - started + already

    def train_and_summarise(self, name: str, model: TransferModel, forward, train_inputs, val_inputs,
                            train_modules: list, epochs: int, lr: float, cache_seconds: float = 0.0,
                            extra: dict | None = None) -> dict:
        """Run one phase, re-evaluate its kept best checkpoint on validation and record the summary."""
        state, seconds = self.run_phase(name, model, forward, train_inputs, val_inputs, train_modules, epochs, lr)
        final = evaluate(forward, val_inputs, self.val_labels, self.cfg.batch_size * 2, self.device)
        self.predictions[name] = final.predictions
        self.phases[name] = _phase_summary(state, seconds, cache_seconds, lr, model, final, self.val_labels,
                                           self.n_classes, extra)
        return self.phases[name]


def _phase_summary(state: PhaseState, seconds: float, cache_seconds: float, lr: float, model: TransferModel,
                   final_val, labels: np.ndarray, n_classes: int, extra: dict | None = None) -> dict:
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
    train_acc = best["train_acc"] if best else None
    return {"epochs": state.history, "best_epoch": state.best_epoch, "train_acc": train_acc,
            "val_acc": final_val.accuracy,
            "balanced_val_acc": balanced_accuracy(labels, final_val.predictions, n_classes),
            "gap": None if train_acc is None else train_acc - final_val.accuracy,
            "seconds": seconds + cache_seconds, "cache_seconds": cache_seconds, "train_seconds": seconds,
            "learning_rate": lr,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.parameters()), **(extra or {})}


def run_compare(cfg: CompareConfig, run_dir: Path | None = None) -> Path:
    """Train the three phases and write results.json; returns the run directory. `run_dir` given = resume it.

    Options, data, device and weights are checked before the run directory is made, so a bad input leaves
    nothing behind. config.json stores the resolved config (the backbone actually used, absolute paths) and
    the environment (weights fingerprint, library versions, threads), so a resume cannot drift.
    """
    resuming = run_dir is not None
    folders = scan_folders(cfg)
    device = resolve_device(cfg.device)
    pretrained: PretrainedBackbone = load_backbone(cfg.backbone, cfg.weights, cfg.image_size_px)
    env = environment(device, pretrained.weights)
    if resuming:
        _check_same_weights(run_dir, env)
    else:
        cfg = replace(cfg.with_absolute_paths(), backbone=pretrained.name,
                      image_size_px=pretrained.preprocessing.image_size_px,
                      cache_dir=(cfg.cache_dir or default_cache_dir()).expanduser().resolve())
        run_dir = new_run_dir(cfg.runs_dir, cfg.name or Path(cfg.data_dir or cfg.train_dir).name)
        write_json_atomic(run_dir / "config.json", {"config": cfg.to_dict(), "environment": env})
    if pretrained.notice:
        warnings.warn(pretrained.notice, stacklevel=2)
    with interruptible(run_dir) as stop:
        results = _train_and_evaluate(cfg, folders, pretrained, run_dir, resuming, device, stop)
    write_json_atomic(run_dir / "results.json", results | {"environment": env})
    return run_dir


def _check_same_weights(run_dir: Path, env: dict) -> None:
    before = read_run_config(run_dir).get("environment", {}).get("weights", {})
    if before.get("fingerprint") not in (None, env["weights"]["fingerprint"]):
        raise UserError(f"the weights of this run ({before.get('location')}) changed since it started; "
                        "restore them or start a new run instead of resuming")


def _train_and_evaluate(cfg: CompareConfig, folders, pretrained: PretrainedBackbone, run_dir: Path,
                        resuming: bool, device: torch.device, stop: StopRequests) -> dict:
    started = time.perf_counter()
    runner = _Runner(cfg, run_dir, resuming, device, stop)
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
    views = cfg.cached_views if cfg.augment else 1
    head_cfg = HeadConfig()

    def cached(last_units: list[int], decoded: DecodedImages, n_views: int) -> tuple[list[CachedInputs], float]:
        """One pass per view through the frozen prefix, keeping the output at every requested cut."""
        t = time.perf_counter()
        per_view = [prefix_outputs(model, last_units, decoded.pixels, decoded.content_keys, prep,
                                   cache_dir, pretrained.cache_key, device, view=v, show_progress=show)
                    for v in range(n_views)]
        inputs = [CachedInputs([rows[i] for rows in per_view], device, seed=cfg.seed) for i in range(len(last_units))]
        return inputs, time.perf_counter() - t

    torch.manual_seed(cfg.seed)
    model = TransferModel(pretrained.module, n_classes, head_cfg).to(device, memory_format=torch.channels_last)
    # where fine-tuning will cut decides which activations to cache alongside the pooled features
    cut, end = unfreeze_for_finetuning(model, cfg).first_trainable_unit, len(model.units)
    frozen_plan = freeze_backbone(model)
    (train_features, train_acts), t_train = cached([end, cut], split.train, views)
    (val_features, val_acts), t_val = cached([end, cut], split.val, 1)
    # the one backbone pass is counted in the frozen phase; the fine-tune cut comes with it for free
    cache_frozen, cache_finetune = t_train + t_val, 0.0

    # frozen: the whole backbone is the cached prefix; only the head trains
    frozen = runner.train_and_summarise("frozen", model, lambda x: model.forward_from(end, x), train_features,
                                        val_features, [model.head], cfg.frozen_epochs, cfg.frozen_lr,
                                        cache_frozen, {"unfreeze": frozen_plan.to_dict()})
    best_state = {"frozen": (frozen["val_acc"], copy_state(model))}

    # fine-tune: continue from the frozen phase's best; only the tail after the cut runs
    plan = unfreeze_for_finetuning(model, cfg)
    log.info("fine-tune: %s", plan)
    finetuned = runner.train_and_summarise("finetuned", model, lambda x: model.forward_from(cut, x), train_acts,
                                           val_acts, [model.head], cfg.finetune_epochs, cfg.finetune_lr,
                                           cache_finetune, {"unfreeze": plan.to_dict()})
    best_state["finetuned"] = (finetuned["val_acc"], copy_state(model))
    transfer_model = model

    # scratch: same architecture, random init, everything trains, on decoded images
    if not cfg.skip_scratch:
        torch.manual_seed(cfg.seed)
        scratch = TransferModel(create_backbone(pretrained.name), n_classes, head_cfg)
        scratch = scratch.to(device, memory_format=torch.channels_last)
        train_in = ImageInputs(split.train.pixels, prep, device, cfg.seed if cfg.augment else None)
        val_in = ImageInputs(split.val.pixels, prep, device)
        runner.train_and_summarise("scratch", scratch, scratch, train_in, val_in, [scratch],
                                   cfg.scratch_epochs, cfg.scratch_lr)
    phases, predictions = runner.phases, runner.predictions

    best_transfer = max(best_state, key=lambda p: best_state[p][0])
    transfer_model.load_state_dict(best_state[best_transfer][1])
    save_model(run_dir, transfer_model, backbone=pretrained.name, class_names=list(split.class_names),
               preprocessing=prep, head=head_cfg, phase=best_transfer, val_acc=best_state[best_transfer][0])
    best_phase = max(phases, key=lambda p: phases[p]["val_acc"])
    transfer_seconds = decode_seconds + phases["frozen"]["seconds"] + phases["finetuned"]["seconds"]
    best_val = phases[best_transfer]["val_acc"]
    counts = lambda d: np.bincount(labels_of(d), minlength=n_classes).tolist()  # noqa: E731
    return {
        "run_dir": str(run_dir), "backbone": pretrained.name,
        "weights": {"kind": pretrained.weights.kind, "location": pretrained.weights.location},
        "notice": pretrained.notice, "device": str(device), "preprocessing": prep.to_dict(),
        "augment": {"enabled": cfg.augment, "cached_views": views,
                    "mode": (f"{views} augmented views cached per image" if cfg.augment
                             else "no augmentation; exact feature cache")},
        "data": {"source": str(cfg.data_dir or cfg.train_dir), "val_source": str(cfg.val_dir or ""),
                 "split": "split.json" if cfg.data_dir else "explicit --train/--val",
                 "class_names": list(split.class_names), "train_per_class": counts(split.train),
                 "val_per_class": counts(split.val), "n_train": len(split.train.images),
                 "n_val": len(split.val.images),
                 "skipped": [{"path": str(s.path), "reason": s.reason} for s in prepared.skipped],
                 "ignored_files": [str(p) for p in split.ignored_files], "leakage": prepared.leakage,
                 "imbalanced": max(counts(split.train)) > 1.5 * max(min(counts(split.train)), 1)},
        "decode_seconds": decode_seconds,
        "phases": phases,
        "model_phase": best_transfer,
        "best_phase": best_phase,
        "confusion_matrix": {"phase": best_phase,
                             "matrix": confusion_matrix(runner.val_labels, predictions[best_phase], n_classes)},
        "verdict": {"target_val_acc": cfg.target_val_acc, "val_acc": best_val,
                    "val_target_met": best_val >= cfg.target_val_acc,
                    "time_budget_seconds": cfg.time_budget_seconds, "transfer_seconds": transfer_seconds,
                    "time_target_met": transfer_seconds <= cfg.time_budget_seconds},
        "total_seconds": time.perf_counter() - started,
    }


def unfreeze_for_finetuning(model: TransferModel, cfg: CompareConfig) -> UnfreezePlan:
    if cfg.unfreeze_blocks is not None:
        return unfreeze_last_blocks(model, cfg.unfreeze_blocks)
    return unfreeze_last_layers(model, cfg.unfreeze_last or 0)


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def resume_compare(run_dir: Path, show_progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    cfg = CompareConfig.from_file(run_dir / "config.json")
    return run_compare(replace(cfg, show_progress=show_progress), run_dir=run_dir)
