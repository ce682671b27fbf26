""""How many images do I need?": a learning curve fitted per method, with an interval and its own check.

The inverse power law acc(k) = a − b·k^(−c) (accuracy approaching a ceiling `a` as images per class k grow)
is the usual shape of learning curves on small data (Hestness et al. 2017, Cortes et al. 1994). It is
fitted with SciPy's curve_fit on the mean over seeds; the interval on "images needed" comes from a bootstrap
over seeds (seeds resampled with replacement, the curve fitted again). Every fit is checked out of sample:
fitted without the largest k, it must predict the accuracy measured there.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

BOOTSTRAP_SAMPLES = 500
EXTRAPOLATION_TOLERANCE = 0.03  # |predicted − measured| at the largest k, accuracy points / 100
BEYOND_FACTOR = 10               # "beyond 10× what you have": farther than this the estimate is not given


def inverse_power(k: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * np.power(k, -c)


@dataclass(frozen=True)
class CurveFit:
    a: float   # the ceiling
    b: float
    c: float   # how fast the gap closes

    def accuracy_at(self, k: float) -> float:
        return float(inverse_power(np.asarray(k, dtype=float), self.a, self.b, self.c))

    def images_needed(self, target: float) -> float | None:
        """Images per class at which the curve reaches `target`; None when the ceiling is below it."""
        if target >= self.a or self.b <= 0:
            return None
        return float(((self.a - target) / self.b) ** (-1 / self.c))


def fit_curve(ks: list[float], accuracies: list[float]) -> CurveFit | None:
    """The least-squares inverse power law through (k, accuracy); None with fewer than 3 distinct k or when
    the fit does not converge."""
    k, acc = np.asarray(ks, dtype=float), np.asarray(accuracies, dtype=float)
    if len(np.unique(k)) < 3:
        return None
    try:
        # the covariance is not used (intervals come from the bootstrap over seeds); with as many k as the three
        # parameters it is undefined, and SciPy's warning about that reached the user's terminal
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, b, c), _ = curve_fit(inverse_power, k, acc, p0=(min(1.0, acc.max() + 0.05), 0.5, 0.5),
                                     bounds=([0.0, 0.0, 0.01], [1.0, 10.0, 3.0]), maxfev=20_000)
    except (RuntimeError, ValueError):
        return None
    return CurveFit(float(a), float(b), float(c))


@dataclass(frozen=True)
class ImagesNeeded:
    target: float
    estimate: float | None            # images per class; None: not reached within BEYOND_FACTOR × the largest k
    interval: tuple[float, float] | None   # 95 % bootstrap over seeds, None where it is unbounded
    largest_k: float


def images_needed(per_seed: dict[int, dict[float, float]], target: float, seed: int = 0) -> ImagesNeeded:
    """From {seed: {k: accuracy}}: the images per class the mean curve needs to reach `target`, with a bootstrap
    interval over seeds. Beyond BEYOND_FACTOR × the largest measured k it is not extrapolated."""
    ks = sorted({k for curve in per_seed.values() for k in curve})
    seeds = sorted(per_seed)
    limit = BEYOND_FACTOR * ks[-1]

    def needed(chosen: list[int]) -> float:
        means = [np.mean([per_seed[s][k] for s in chosen if k in per_seed[s]]) for k in ks]
        fit = fit_curve(ks, means)
        n = fit.images_needed(target) if fit else None
        return np.inf if n is None or n > limit else n

    estimate = needed(seeds)
    rng = np.random.default_rng(seed)
    draws = np.array([needed(list(rng.choice(seeds, size=len(seeds)))) for _ in range(BOOTSTRAP_SAMPLES)])
    low, high = np.percentile(draws, [2.5, 97.5]) if np.isfinite(draws).mean() >= 0.975 else (np.inf, np.inf)
    return ImagesNeeded(target, None if np.isinf(estimate) else float(estimate),
                        None if np.isinf(high) else (float(low), float(high)), float(ks[-1]))


@dataclass(frozen=True)
class ExtrapolationCheck:
    held_out_k: float
    predicted: float | None   # by the curve fitted without the held-out k
    measured: float

    @property
    def holds(self) -> bool:
        return self.predicted is not None and abs(self.predicted - self.measured) <= EXTRAPOLATION_TOLERANCE


def check_extrapolation(ks: list[float], accuracies: list[float]) -> ExtrapolationCheck:
    """Fit without the largest k and predict it: a curve that does not extrapolate one step is not trusted
    further."""
    order = np.argsort(ks)
    k, acc = np.asarray(ks, dtype=float)[order], np.asarray(accuracies, dtype=float)[order]
    fit = fit_curve(list(k[:-1]), list(acc[:-1]))
    return ExtrapolationCheck(float(k[-1]), None if fit is None else fit.accuracy_at(k[-1]), float(acc[-1]))
