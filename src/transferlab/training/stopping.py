"""When a phase's validation accuracy has stopped improving: the rule the scratch baseline stops on, and the
gain a phase was still making when something else (its epoch cap, its budget) stopped it.

Validation accuracy on a few hundred images moves by a point from epoch to epoch on noise alone, so the rule
reads a moving average of the last SMOOTHING epochs, and a gain counts only when it is at least `min_gain`.
"""

import numpy as np

SMOOTHING = 3    # epochs in the moving average
GAIN_WINDOW = 5    # the epochs over which a phase's last gain is reported; the default recipe's patience
MIN_GAIN = 0.005   # half a point of smoothed accuracy: less is no longer learning (the default's min gain)


def smoothed(val_accs: list[float]) -> np.ndarray:
    """The moving average of the last SMOOTHING epochs (fewer at the start)."""
    values = np.asarray(val_accs, dtype=float)
    return np.array([values[max(0, i - SMOOTHING + 1):i + 1].mean() for i in range(len(values))])


def epochs_without_gain(val_accs: list[float], min_gain: float) -> int:
    """Epochs since the smoothed curve last rose by at least `min_gain` above where it stood at the gain before
    (so a slow creep adds up and counts once it reaches `min_gain`)."""
    curve, level, last_gain = smoothed(val_accs), -np.inf, 0
    for i, value in enumerate(curve):
        if value >= level + min_gain:
            level, last_gain = value, i
    return len(curve) - 1 - last_gain


def recent_gain(val_accs: list[float], window: int) -> float | None:
    """How much the smoothed curve rose over its last `window` epochs (None with too few epochs)."""
    curve = smoothed(val_accs)
    return None if len(curve) <= window or window < 1 else float(curve[-1] - curve[-1 - window])
