"""Time to accuracy from a crafted metrics log equals the hand-computed value."""

from types import SimpleNamespace

import pytest

from transferlab.reporting.time_to_accuracy import (model_timelines, time_to_accuracy_line, time_to_reach,
                                                    time_to_scratch_best)


def _phase(cache_seconds, *pairs):
    """What time to accuracy reads of a phase: its cache seconds and each epoch's seconds and accuracy."""
    return SimpleNamespace(cache_seconds=cache_seconds, epochs=[{"seconds": s, "val_acc": a} for s, a in pairs])


PHASES = {  # in the order compare runs them
    "frozen": _phase(20.0, (2, 0.50), (2, 0.60), (2, 0.62)),
    "finetuned": _phase(0.0, (10, 0.66), (10, 0.71), (10, 0.74)),
    "scratch": _phase(0.0, (30, 0.40), (30, 0.55), (30, 0.68), (30, 0.67)),
}


def test_the_transfer_clock_runs_through_caches_frozen_and_fine_tuning():
    lines = model_timelines(PHASES, decode_seconds=5.0)
    assert lines["frozen"] == [(27.0, 0.50), (29.0, 0.60), (31.0, 0.62)]  # 5 decode + 20 cache + 2 an epoch
    assert lines["finetuned"][-3:] == [(41.0, 0.66), (51.0, 0.71), (61.0, 0.74)]
    assert lines["scratch"] == [(35.0, 0.40), (65.0, 0.55), (95.0, 0.68), (125.0, 0.67)]


def test_time_to_scratch_best_by_hand():
    t = time_to_scratch_best(PHASES, decode_seconds=5.0, transfer="finetuned")
    # scratch's best is 0.68, first reached at 95 s; transfer first passes it at 51 s (fine-tune epoch 2)
    assert (t.target, t.transfer_seconds, t.scratch_seconds) == (0.68, 51.0, 95.0)
    assert t.speedup == pytest.approx(95 / 51)
    assert time_to_accuracy_line(t) == ("- time to accuracy: transfer passed scratch's best validation accuracy "
                                        "(68.0%) after 51 s; scratch needed 95 s to reach it (1.9× less time)")


def test_a_target_never_reached_is_said_so():
    assert time_to_reach([(1.0, 0.2), (2.0, 0.3)], 0.5) is None
    t = time_to_scratch_best(PHASES, decode_seconds=5.0, transfer="frozen")  # frozen tops out at 0.62
    assert t.transfer_seconds is None and "never reached" in time_to_accuracy_line(t)
