""""Transfer saves data", decided by a test over seeds rather than by comparing means.

For each k (images per class), transfer at k is paired by seed with scratch on all of the data, and a
one-sided paired t-test (scipy.stats.ttest_1samp on the differences) asks whether transfer is not worse than
scratch by more than `margin` (non-inferiority). The claim is the smallest k where that holds at level ALPHA
with every larger k holding too (a fixed sequence from all of the data down), or "not supported" at this n.
"""

from dataclasses import dataclass

import numpy as np
from scipy import stats

MARGIN = 0.02   # "not worse": within 2 accuracy points of scratch on all the data
ALPHA = 0.05


@dataclass(frozen=True)
class NonInferiority:
    k: int | str                   # images per class ('all' for the whole pool)
    n_seeds: int
    mean_difference: float         # transfer at k − scratch on all, over the paired seeds
    p_value: float | None          # None: fewer than 2 seeds, or no spread to test

    @property
    def is_supported(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def non_inferiority(transfer: dict[int, float], scratch: dict[int, float], k: int | str,
                    margin: float = MARGIN) -> NonInferiority:
    """H0: transfer is worse than scratch by `margin` or more; paired by seed."""
    seeds = sorted(set(transfer) & set(scratch))
    differences = np.array([transfer[s] - scratch[s] for s in seeds])
    if len(seeds) < 2 or np.ptp(differences) == 0:
        return NonInferiority(k, len(seeds), float(differences.mean()) if len(seeds) else float("nan"), None)
    test = stats.ttest_1samp(differences, -margin, alternative="greater")
    return NonInferiority(k, len(seeds), float(differences.mean()), float(test.pvalue))


@dataclass(frozen=True)
class DataClaim:
    smallest_k: int | str | None   # None: not supported at this n
    tests: tuple[NonInferiority, ...]
    margin: float

    def line(self, pool_per_class: float, subject: str = "transfer") -> str:
        n = max((t.n_seeds for t in self.tests), default=0)
        if self.smallest_k is None:
            return (f"{subject} not worse than scratch on all the data (margin {100 * self.margin:.0f} pts, one-sided "
                    f"paired t-test, p < {ALPHA}): not supported at n = {n} seeds at any k")
        test = next(t for t in self.tests if t.k == self.smallest_k)
        k = self.smallest_k
        times = "" if k == "all" else f" ({pool_per_class / float(k):.0f}× less data)"
        amount = k if k == "all" else f"{float(k):g}"
        return (f"{subject} with {amount} images per class{times} is not worse than scratch on all the data "
                f"by more than {100 * self.margin:.0f} pts: mean difference {100 * test.mean_difference:+.1f} pts, "
                f"p = {test.p_value:.3f}, n = {test.n_seeds} seeds (one-sided paired t-test)")


def smallest_k_not_worse(transfer_by_k: dict[int | str, dict[int, float]], scratch_all: dict[int, float],
                         margin: float = MARGIN) -> DataClaim:
    """The smallest k at which transfer is supported as not worse, tested in a fixed sequence from all of the
    data downwards and stopping at the first k that fails: scanning every k and taking the smallest that
    passes would let one lucky small k make the claim (the sequence keeps the error rate at ALPHA)."""
    order = sorted(transfer_by_k, key=lambda k: (k == "all", 0 if k == "all" else k))
    tests = tuple(non_inferiority(transfer_by_k[k], scratch_all, k, margin) for k in order)
    smallest = None
    for test in reversed(tests):
        if not test.is_supported:
            break
        smallest = test.k
    return DataClaim(smallest, tests, margin)
