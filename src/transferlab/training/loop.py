"""The one training loop: scratch, frozen and fine-tune phases all run through `train_phase`.

A phase is: a module, a forward function (where inputs enter it), input sources, and which
sub-modules are in train mode. Everything random is seeded per (seed, epoch), so a run resumed from
the checkpoint of epoch k goes on exactly as if it had never stopped.
"""

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from transferlab.progress import progress_bar

from transferlab.errors import UserError
from transferlab.models.freezing import set_train_mode
from transferlab.training.distributed import (SINGLE, Ranks, broadcast_buffers, data_parallel, gather_objects,
                                              sum_over_ranks)
from transferlab.training.inputs import Inputs, epoch_rng
from transferlab.training.precision import autocast
from transferlab.training.recipes import Optimization, Stopping
from transferlab.training.stopping import epochs_without_gain


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    class_weights: tuple[float, ...] | None = None
    optimization: Optimization = Optimization()  # the recipe's part: optimiser, schedule, smoothing, kept epoch
    stopping: Stopping = Stopping()              # before the epoch cap: a plateau, a budget (none by default)
    precision: str = "fp32"              # fp32 | bf16 (autocast) | measure (training/precision.py)


@dataclass
class PhaseState:
    """Everything a checkpoint needs besides the module and optimizer state."""

    next_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def stop_reason(self) -> str | None:
        """'plateau' or 'budget' when the phase stopped before its epoch cap (its last row says so)."""
        return self.history[-1].get("stopped") if self.history else None

    @property
    def is_finished(self) -> bool:
        return self.stop_reason is not None


def stop_reason(history: list[dict], stopping: Stopping, warmup_epochs: int = 0) -> str | None:
    """Whether the phase stops after the last epoch of `history`, and why (training/stopping.py). Epochs of
    the learning-rate warm-up do not count towards the plateau's patience: a network from scratch can sit at
    chance while its rate is still small (icons, 64 px, seed 2 stopped at chance in the 6th of 6 warm-up
    epochs of a 60-epoch cap)."""
    val_accs = [r["val_acc"] for r in history]
    if stopping.plateau_patience and min(epochs_without_gain(val_accs, stopping.plateau_min_gain),
                                         len(history) - warmup_epochs) >= stopping.plateau_patience:
        return "plateau"
    if stopping.budget_seconds is not None and history[-1]["elapsed_seconds"] >= stopping.budget_seconds:
        return "budget"
    return None


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs, labels: np.ndarray,
             batch_size: int, device: torch.device, precision: str = "fp32", ranks: Ranks = SINGLE) -> Evaluation:
    """Under torchrun each rank evaluates its share; every rank gets the same loss and all predictions."""
    mine = ranks.share(len(inputs))
    losses, predictions = [], []
    for start in range(0, len(mine), batch_size):
        positions = mine[start:start + batch_size]
        with autocast(device, precision):
            logits = forward(inputs.batch(positions, epoch=0)).float()
        target = torch.as_tensor(labels[positions], device=logits.device, dtype=torch.long)
        losses.append(nn.functional.cross_entropy(logits, target, reduction="sum").item())
        predictions.append(logits.argmax(1).cpu().numpy())
    predicted = np.concatenate(predictions) if predictions else np.zeros(0, np.int64)
    loss_sum = sum(losses)
    if ranks.is_distributed:
        loss_sum = sum_over_ranks([loss_sum], ranks)[0]
        predicted = np.concatenate(gather_objects(predicted, ranks))
    return Evaluation(loss=loss_sum / max(len(labels), 1),
                      accuracy=float((predicted == labels).mean()) if len(labels) else 0.0,
                      predictions=predicted)


WARMUP_FRACTION = 0.1  # of all steps; BiT and timm warm up for a few percent of training


def batch_bounds(n_images: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each training batch of an epoch; the last may be short. A last batch of one image
    joins the one before: BatchNorm in train mode cannot normalise a single image (torch raises), and
    dropping it would leave that image out of every epoch."""
    starts = list(range(0, n_images, batch_size))
    if len(starts) > 1 and n_images - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n_images]))


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    return len(batch_bounds(n_images, batch_size))


def make_optimizer(params: list[nn.Parameter], spec: PhaseSpec) -> torch.optim.Optimizer:
    o = spec.optimization
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.learning_rate, momentum=0.9, nesterov=True,
                               weight_decay=o.weight_decay)
    kind = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=spec.learning_rate, eps=o.adam_eps, weight_decay=o.weight_decay)


def warmup_steps(total_steps: int) -> int:
    return max(1, round(WARMUP_FRACTION * total_steps))


def make_schedule(optimizer: torch.optim.Optimizer, spec: PhaseSpec, total_steps: int) -> LRScheduler | None:
    """Per step: linear warm-up over the first 10% of steps (step s at (s + 1) / warm-up of the rate), then
    cosine decay towards zero; None for a constant rate."""
    if spec.optimization.schedule == "constant" or total_steps <= 1:
        return None
    warmup = warmup_steps(total_steps)
    return SequentialLR(optimizer, [LinearLR(optimizer, 1 / warmup, 1.0, total_iters=max(warmup - 1, 1)),
                                    CosineAnnealingLR(optimizer, T_max=total_steps - warmup)], milestones=[warmup])


def train_phase(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                train_inputs: Inputs, train_labels: np.ndarray, val_inputs: Inputs | None,
                val_labels: np.ndarray | None, spec: PhaseSpec, train_modules: list[nn.Module], device: torch.device, *,
                state: PhaseState | None = None, optimizer_state: dict | None = None,
                on_epoch_end: Callable[[PhaseState, torch.optim.Optimizer], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False, show_progress: bool = True,
                ranks: Ranks = SINGLE) -> PhaseState:
    """The spec's optimizer over the parameters that require grad; keeps the best-val (or the last) state.
    `should_stop` must answer the same on every rank. With no `val_inputs` (the final fit trains on the
    validation images) no epoch is evaluated: its rows hold no validation numbers and the last epoch is kept.

    Under torchrun every rank draws the same permutation and takes its share of each global batch of
    `spec.batch_size`, so the steps are the single process's: DDP averages the gradients, and each rank's
    loss is its part of the global batch's mean, so the average is that mean's gradient up to summation order.
    """
    if val_inputs is None and (spec.optimization.keep_best_epoch or spec.stopping.plateau_patience):
        raise ValueError(f"{spec.name}: keeping the best epoch or stopping on a plateau needs validation images")
    state = state or PhaseState()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, spec)
    steps_per_epoch = batches_per_epoch(len(train_inputs), spec.batch_size)
    schedule = make_schedule(optimizer, spec, spec.epochs * steps_per_epoch)
    warmup_epochs = math.ceil(warmup_steps(spec.epochs * steps_per_epoch) / steps_per_epoch) if schedule else 0
    with warnings.catch_warnings():  # a resumed phase: its schedule moved on to where it stopped, before any step
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
        for _ in range(state.next_epoch * steps_per_epoch if schedule else 0):
            schedule.step()
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    weight = (torch.tensor(spec.class_weights, dtype=torch.float32, device=device)
              if spec.class_weights else None)
    parallel_forward = None  # under torchrun: DDP around the phase's forward, only when an epoch is left to train
    if ranks.is_distributed and state.next_epoch < spec.epochs:
        _check_every_rank_gets_images(len(train_inputs), spec, ranks)
        parallel_forward = data_parallel(module, forward, device)

    for epoch in range(state.next_epoch, spec.epochs if not state.is_finished else 0):
        started = time.perf_counter()
        torch.manual_seed(spec.seed * 100_003 + epoch)  # dropout masks
        set_train_mode(module, train_modules)
        order = epoch_rng(spec.seed, epoch).permutation(len(train_inputs))
        loss_sum, correct = 0.0, 0
        bar = progress_bar(batch_bounds(len(order), spec.batch_size), unit="batch", leave=False,
                           desc=f"{spec.name} {epoch + 1}/{spec.epochs}", show=show_progress)
        for start, end in bar:
            positions = order[start:end]
            target = torch.as_tensor(train_labels[positions], device=device, dtype=torch.long)
            if ranks.is_distributed:
                loss, logits, target = _rank_share_loss(parallel_forward, train_inputs, positions, target, epoch, weight,
                                                        spec, device, ranks)
            else:
                with autocast(device, spec.precision):
                    logits = forward(train_inputs.batch(positions, epoch)).float()
                loss = nn.functional.cross_entropy(logits, target, weight=weight,
                                                   label_smoothing=spec.optimization.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last_lr = optimizer.param_groups[0]["lr"]
            if schedule is not None:
                schedule.step()
            loss_sum += loss.item() / ranks.world_size * len(positions)  # a rank's loss is W x its part
            correct += int((logits.argmax(1) == target).sum())
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # a refresh drew a stale 0/N
        if ranks.is_distributed:
            loss_sum, correct = sum_over_ranks([loss_sum, correct], ranks)
            broadcast_buffers(module, ranks)
        set_train_mode(module, [])
        val = None if val_inputs is None else evaluate(forward, val_inputs, val_labels, spec.batch_size * 2, device,
                                                       spec.precision, ranks)
        row = {"phase": spec.name, "epoch": epoch + 1, "train_loss": loss_sum / len(order),
               "train_acc": correct / len(order), "val_loss": None if val is None else val.loss,
               "val_acc": None if val is None else val.accuracy,
               "seconds": time.perf_counter() - started, "precision": spec.precision, "learning_rate": last_lr}
        row["elapsed_seconds"] = sum(r["seconds"] for r in state.history) + row["seconds"]  # this phase's clock
        state.history.append(row)
        # the cap ends the last epoch
        stopped = stop_reason(state.history, spec.stopping, warmup_epochs) if epoch + 1 < spec.epochs else None
        if ranks.is_distributed:  # a budget is read on each rank's clock: rank 0's decides for all
            stopped = gather_objects(stopped, ranks)[0]
        if stopped:
            row["stopped"] = stopped
        if not spec.optimization.keep_best_epoch or val.accuracy > state.best_val_acc:
            state.best_val_acc, state.best_epoch = -1.0 if val is None else val.accuracy, epoch + 1
            state.best_state = copy.deepcopy(module.state_dict())
        state.next_epoch = epoch + 1
        if on_epoch_end is not None:
            on_epoch_end(state, optimizer)
        if should_stop() or state.is_finished:
            break
    if state.best_state is not None and (state.next_epoch >= spec.epochs or state.is_finished):
        module.load_state_dict(state.best_state)
    return state


def _rank_share_loss(parallel_forward: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs, positions: np.ndarray,
                     target: torch.Tensor, epoch: int, weight: torch.Tensor | None, spec: PhaseSpec,
                     device: torch.device, ranks: Ranks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch's mean loss, times the world size (DDP divides by it again).

    The whole global batch is read and only the share kept, because augmentation is drawn per batch: the
    share then sees exactly the pixels the single process would. Returns (loss, logits, target) of the share.
    """
    mine = torch.as_tensor(ranks.share(len(positions)), device=device)
    # mean reduction divides by the summed weights of the targets (by the count without weights)
    norm = weight[target].sum() if weight is not None else torch.tensor(float(len(positions)), device=device)
    with autocast(device, spec.precision):
        logits = parallel_forward(inputs.batch(positions, epoch)[mine]).float()
    share = nn.functional.cross_entropy(logits, target[mine], weight=weight,
                                        label_smoothing=spec.optimization.label_smoothing,
                                        reduction="sum") / norm
    return share * ranks.world_size, logits, target[mine]


def _check_every_rank_gets_images(n_images: int, spec: PhaseSpec, ranks: Ranks) -> None:
    smallest = min(end - start for start, end in batch_bounds(n_images, spec.batch_size))
    if smallest < ranks.world_size:
        raise UserError(f"{ranks.world_size} ranks share each batch, but a batch of the {spec.name} phase has "
                        f"{smallest} images ({n_images} images, --batch-size {spec.batch_size}); use fewer "
                        "processes or a batch size that leaves every rank an image")
