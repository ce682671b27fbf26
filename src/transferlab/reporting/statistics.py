"""Means with 95 % t-intervals over seeds, and paired t-tests between methods, without SciPy.

A handful of seeds is what a CPU affords, so the normal 1.96 would claim far too much: the t-distribution
with n − 1 degrees of freedom (12.7 for two seeds, 4.3 for three) is used throughout. Its CDF is the
regularised incomplete beta function, evaluated by the usual continued fraction (Numerical Recipes §6.4).
"""

import math
from dataclasses import dataclass

CONFIDENCE = 0.95


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| ≥ |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value (4.303 for df = 2 at 95 %), by bisection on the CDF."""
    alpha, low, high = 1 - confidence, 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_p(mid, df) > alpha else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Estimate:
    mean: float
    half_width: float | None  # of the 95 % interval; None with a single value (no spread to estimate)
    n: int

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.half_width is None else (self.mean - self.half_width, self.mean + self.half_width)


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> Estimate:
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, None, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_critical(n - 1, confidence) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class PairedTest:
    difference: Estimate    # mean of a − b over the pairs, with its 95 % interval
    p_value: float | None   # two-sided paired t-test; None below two pairs or when every pair differs equally

    @property
    def is_supported(self) -> bool:
        """A difference is claimed only when its interval excludes zero."""
        interval = self.difference.interval
        return interval is not None and (interval[0] > 0 or interval[1] < 0)


def paired_test(a: list[float], b: list[float]) -> PairedTest:
    """Paired by seed: the same seed means the same split, subset, initialisation and data order."""
    if len(a) != len(b):
        raise ValueError("paired samples differ in length")
    differences = [x - y for x, y in zip(a, b)]
    estimate = mean_interval(differences)
    if estimate.n < 2:
        return PairedTest(estimate, None)
    sd = math.sqrt(sum((d - estimate.mean) ** 2 for d in differences) / (estimate.n - 1))
    if sd < 1e-12:  # no spread to judge the difference against (often: too few test images to move a number)
        return PairedTest(Estimate(estimate.mean, None, estimate.n), None)
    t = estimate.mean / (sd / math.sqrt(estimate.n))
    return PairedTest(estimate, t_two_sided_p(t, estimate.n - 1))
