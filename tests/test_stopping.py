"""When a phase stops before its cap: a plateau of smoothed validation accuracy, a budget, honestly recorded."""

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.data.row_store import RowView
from transferlab.reporting.tables import scratch_ending
from transferlab.results import PhaseResult
from transferlab.training.inputs import CachedInputs
from transferlab.training.loop import PhaseSpec, PhaseState, stop_reason, train_phase
from transferlab.training.recipes import PRESETS, Optimization, Stopping, resolve_recipe
from transferlab.training.stopping import epochs_without_gain, recent_gain, smoothed

CPU = torch.device("cpu")


def test_smoothing_is_the_mean_of_the_last_three_epochs():
    assert smoothed([0.3, 0.6, 0.9, 0.0]).tolist() == pytest.approx([0.3, 0.45, 0.6, 0.5])


@pytest.mark.parametrize("curve, expected", [
    ([0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], 3),        # smoothed rises until epoch 5, then flat for 3
    ([0.5, 0.6, 0.7, 0.8, 0.9], 0),                       # still rising
    ([0.70, 0.702, 0.704, 0.706, 0.708, 0.710], 1),        # a creep of 0.2 pts an epoch adds up: counted at epoch 5
    ([0.9, 0.5, 0.5, 0.5], 3),                            # never above its first epoch
])
def test_epochs_without_gain_on_crafted_curves(curve, expected):
    assert epochs_without_gain(curve, min_gain=0.005) == expected


def test_recent_gain_is_the_smoothed_rise_over_the_window():
    # the scratch curve: 68.4 -> 69.2 -> 68.6 -> 69.8 -> 69.6 -> 71.0 over the last six epochs
    curve = [0.684, 0.692, 0.686, 0.698, 0.696, 0.710]
    assert recent_gain(curve, 3) == pytest.approx((0.698 + 0.696 + 0.710) / 3 - (0.684 + 0.692 + 0.686) / 3)
    assert recent_gain(curve, 6) is None


def _rows(val_accs, seconds=1.0):
    return [{"val_acc": v, "elapsed_seconds": seconds * (i + 1)} for i, v in enumerate(val_accs)]


def test_stop_reason_plateau_budget_or_none():
    flat = [0.5] * 4
    assert stop_reason(_rows(flat), Stopping(plateau_patience=3, plateau_min_gain=0.005)) == "plateau"
    assert stop_reason(_rows(flat), Stopping(plateau_patience=4, plateau_min_gain=0.005)) is None
    assert stop_reason(_rows([0.1, 0.2], 10.0), Stopping(budget_seconds=20.0)) == "budget"
    assert stop_reason(_rows([0.1, 0.2], 10.0), Stopping(budget_seconds=25.0)) is None
    assert stop_reason(_rows(flat), Stopping()) is None  # the seeds' recipes: every epoch runs


def test_the_warm_up_epochs_do_not_count_towards_the_patience():
    flat = [0.22] * 8
    plateau = Stopping(plateau_patience=3, plateau_min_gain=0.005)
    assert stop_reason(_rows(flat), plateau, warmup_epochs=6) is None  # 2 epochs after the warm-up
    assert stop_reason(_rows(flat + [0.22]), plateau, warmup_epochs=6) == "plateau"
    assert stop_reason(_rows(flat), plateau, warmup_epochs=0) == "plateau"


def _tiny_phase(stopping: Stopping, lr: float, epochs: int = 10, state: PhaseState | None = None,
                schedule: str = "constant"):
    torch.manual_seed(0)
    module = nn.Linear(8, 3)
    rows = RowView(np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32), np.arange(24))
    labels = np.arange(24) % 3
    inputs = CachedInputs([rows], CPU)
    spec = PhaseSpec("scratch", epochs, lr, 8, 0, optimization=Optimization(schedule=schedule), stopping=stopping)
    return train_phase(module, module, inputs, labels, inputs, labels, spec, [module], CPU, state=state,
                       show_progress=False)


def test_a_tiny_phase_that_cannot_learn_stops_on_the_plateau_before_its_cap():
    state = _tiny_phase(Stopping(plateau_patience=2, plateau_min_gain=0.005), lr=1e-12)
    assert len(state.history) == 3 < 10 and state.stop_reason == "plateau"
    assert [r.get("stopped") for r in state.history] == [None, None, "plateau"]
    assert [r["elapsed_seconds"] for r in state.history] == pytest.approx(
        np.cumsum([r["seconds"] for r in state.history]).tolist())
    again = _tiny_phase(Stopping(plateau_patience=2, plateau_min_gain=0.005), lr=1e-12, state=state)
    assert len(again.history) == 3  # a resumed phase that had stopped trains no further


def test_a_phase_that_cannot_learn_stops_only_after_its_warm_up_and_patience():
    """40 epochs of 3 steps warm up over the first 12 steps (10 %): 4 epochs, then 2 of patience."""
    state = _tiny_phase(Stopping(plateau_patience=2, plateau_min_gain=0.005), lr=1e-12, epochs=40,
                        schedule="warmup-cosine")
    assert len(state.history) == 6 and state.stop_reason == "plateau"


def test_the_budget_stop_is_reported_as_such():
    state = _tiny_phase(Stopping(budget_seconds=1e-9), lr=1e-2)  # any epoch takes longer
    assert len(state.history) == 1 and state.stop_reason == "budget"


def test_a_phase_without_a_rule_runs_every_epoch():
    state = _tiny_phase(Stopping(), lr=1e-12, epochs=4)
    assert len(state.history) == 4 and state.stop_reason is None


def test_stopping_is_a_recipe_part_with_its_own_flags():
    recipe = resolve_recipe("default", {"plateau_patience": 7, "budget_seconds": 600.0})
    assert recipe.scratch_stopping == Stopping(7, PRESETS["default"].scratch_stopping.plateau_min_gain, 600.0)
    assert recipe.to_dict()["plateau_patience"] == 7 and PRESETS["seeds"].scratch_stopping == Stopping()


def _scratch(stopped: str, gain: float | None, epochs: int = 20) -> PhaseResult:
    return PhaseResult(epochs=[{}] * epochs, best_epoch=epochs, train_acc=0.7, val_acc=0.7, balanced_val_acc=0.7,
                       val_acc_over_last_epoch=0.0, gap=0.0, seconds=1.0, cache_seconds=0.0, train_seconds=1.0,
                       learning_rate=1e-3, trainable_parameters=1, total_parameters=1, steps=1, precision="fp32",
                       precision_probe=None, stopped=stopped, recent_val_gain=gain)


def test_the_verdict_says_in_the_same_line_when_scratch_was_cut_while_improving():
    assert scratch_ending(_scratch("epochs", 0.021)) == (
        "; scratch was cut by its epoch cap while still improving (+2.1 pts of smoothed validation accuracy over "
        "its last 5 epochs), so this gap overstates what transfer adds")
    assert "time budget while still improving" in scratch_ending(_scratch("budget", 0.01))
    assert scratch_ending(_scratch("epochs", 0.001)).startswith("; scratch had stopped improving when its epoch cap")
    assert scratch_ending(_scratch("plateau", 0.0, epochs=12)) == "; scratch stopped on a validation plateau (epoch 12)"
