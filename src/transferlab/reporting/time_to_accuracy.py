"""How long until a model is *this* good: validation accuracy against wall-clock seconds, per model.

Each model's clock starts with the run (decoding the images, which every model needs) and counts what it
did before each epoch ended: the transfer model's clock runs through building its feature caches, the
frozen phase, then the fine-tuning that continues from it; scratch's through its own epochs.
"""

from dataclasses import dataclass

from transferlab.results import PhaseResult

Timeline = list[tuple[float, float]]  # (seconds since the run started, validation accuracy), one per epoch


def timeline(rows: list[dict], start_seconds: float) -> Timeline:
    """A phase's epochs on a clock that had run `start_seconds` when the phase's first epoch began."""
    clock, points = start_seconds, []
    for row in rows:
        clock += row["seconds"]
        points.append((clock, row["val_acc"]))
    return points


def time_to_reach(points: Timeline, target: float) -> float | None:
    """The first time the model's validation accuracy was at least `target`; None if it never was."""
    return next((seconds for seconds, acc in points if acc >= target), None)


@dataclass(frozen=True)
class TimeToAccuracy:
    target: float                  # scratch's best validation accuracy
    transfer_seconds: float | None
    scratch_seconds: float

    @property
    def speedup(self) -> float | None:
        return None if not self.transfer_seconds else self.scratch_seconds / self.transfer_seconds


def model_timelines(phases: dict[str, PhaseResult], decode_seconds: float) -> dict[str, Timeline]:
    """Transfer (frozen, then each fine-tune continuing from it) and scratch, each on its own clock."""
    lines, transfer = {}, []
    clock = decode_seconds
    for name in [n for n in phases if n not in ("scratch", "final")]:  # frozen first, then the fine-tune stages
        phase = phases[name]
        transfer += timeline(phase.epochs, clock + phase.cache_seconds)
        clock = transfer[-1][0] if transfer else clock + phase.cache_seconds
        lines[name] = list(transfer)
    if "scratch" in phases:
        lines["scratch"] = timeline(phases["scratch"].epochs, decode_seconds + phases["scratch"].cache_seconds)
    return lines


def time_to_scratch_best(phases: dict[str, PhaseResult], decode_seconds: float,
                         transfer: str) -> TimeToAccuracy | None:
    """When the transfer pipeline through `transfer` first reached scratch's best validation accuracy, and
    when scratch itself did."""
    lines = model_timelines(phases, decode_seconds)
    if "scratch" not in lines or not lines["scratch"] or transfer not in lines:
        return None
    target = max(acc for _, acc in lines["scratch"])
    return TimeToAccuracy(target, time_to_reach(lines[transfer], target), time_to_reach(lines["scratch"], target))


def time_to_accuracy_line(t: TimeToAccuracy) -> str:
    if t.transfer_seconds is None:
        return (f"- time to accuracy: transfer never reached scratch's best validation accuracy "
                f"({100 * t.target:.1f}%, after {t.scratch_seconds:.0f} s)")
    return (f"- time to accuracy: transfer passed scratch's best validation accuracy ({100 * t.target:.1f}%) "
            f"after {t.transfer_seconds:.0f} s; scratch needed {t.scratch_seconds:.0f} s to reach it "
            f"({t.speedup:.1f}× less time)")
