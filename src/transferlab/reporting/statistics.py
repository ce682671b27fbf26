"""Means with 95 % t-intervals over seeds, and paired t-tests between methods (SciPy's Student t).

A handful of seeds is what a CPU affords, so the normal 1.96 would claim far too much: the t-distribution
with n − 1 degrees of freedom (12.7 for two seeds, 4.3 for three) is used throughout.
"""

from dataclasses import dataclass
from statistics import fmean, stdev  # the standard library's, exact: SciPy's warns on near-equal values

from scipy import stats

CONFIDENCE = 0.95


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| ≥ |t|) for Student's t with `df` degrees of freedom."""
    return float(2 * stats.t.sf(abs(t), df))


def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value (4.303 for df = 2 at 95 %)."""
    return float(stats.t.ppf((1 + confidence) / 2, df))


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
    mean = fmean(values)
    if n == 1:
        return Estimate(mean, None, 1)
    return Estimate(mean, t_critical(n - 1, confidence) * stdev(values) / n ** 0.5, n)


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
    # Equal differences (often: too few test images to move a number) leave no spread to judge the
    # difference against; SciPy would answer NaN or a spurious 0 from rounding noise.
    if stdev(differences) < 1e-12:
        return PairedTest(Estimate(estimate.mean, None, estimate.n), None)
    return PairedTest(estimate, float(stats.ttest_rel(a, b).pvalue))
