"""The paired non-inferiority decision on crafted per-seed numbers gives the known answer."""

import numpy as np
import pytest
from scipy import stats

from transferlab.reporting.data_claim import non_inferiority, smallest_k_not_worse

SCRATCH_ALL = {0: 0.70, 1: 0.72, 2: 0.69, 3: 0.71, 4: 0.70}


def test_the_smallest_supported_k_is_the_known_one():
    transfer = {
        5: {0: 0.55, 1: 0.60, 2: 0.52, 3: 0.58, 4: 0.57},    # far worse
        10: {0: 0.69, 1: 0.70, 2: 0.70, 3: 0.72, 4: 0.69},   # within a point, each seed: not worse by 2 pts
        25: {0: 0.75, 1: 0.78, 2: 0.74, 3: 0.76, 4: 0.76},
        "all": {0: 0.80, 1: 0.81, 2: 0.80, 3: 0.82, 4: 0.80},
    }
    claim = smallest_k_not_worse(transfer, SCRATCH_ALL)
    assert claim.smallest_k == 10
    differences = [transfer[10][s] - SCRATCH_ALL[s] for s in range(5)]
    expected_p = stats.ttest_1samp(differences, -0.02, alternative="greater").pvalue
    ten = next(t for t in claim.tests if t.k == 10)
    assert ten.p_value == pytest.approx(expected_p) and ten.p_value < 0.05
    assert ten.mean_difference == pytest.approx(np.mean(differences))
    assert not next(t for t in claim.tests if t.k == 5).is_supported
    assert claim.line(100).startswith("transfer with 10 images per class (10× less data) is not worse")


def test_a_claim_at_chance_with_a_wide_spread_is_not_supported():
    """The issue's tiny study: 44.4 ± 47.8 % vs 33.3 % at n = 3 must not become a claim."""
    transfer = {1: {0: 0.0, 1: 0.667, 2: 0.667}, "all": {0: 0.333, 1: 1.0, 2: 0.0}}
    claim = smallest_k_not_worse(transfer, {0: 0.333, 1: 0.333, 2: 0.333})
    assert claim.smallest_k is None
    assert "not supported at n = 3 seeds" in claim.line(10)


def test_a_lucky_small_k_below_a_failing_one_makes_no_claim():
    """Tested from all of the data down, the sequence stops at the first failure: 5 passing alone is not enough."""
    transfer = {5: {0: 0.74, 1: 0.75, 2: 0.73, 3: 0.76, 4: 0.74},     # passes on its own
                10: {0: 0.55, 1: 0.60, 2: 0.52, 3: 0.58, 4: 0.57},    # fails
                "all": {0: 0.80, 1: 0.81, 2: 0.80, 3: 0.82, 4: 0.80}}
    claim = smallest_k_not_worse(transfer, SCRATCH_ALL)
    assert next(t for t in claim.tests if t.k == 5).is_supported and claim.smallest_k == "all"


def test_one_seed_or_no_spread_is_no_test():
    assert non_inferiority({0: 0.8}, {0: 0.7}, 5).p_value is None
    assert non_inferiority({0: 0.8, 1: 0.8}, {0: 0.7, 1: 0.7}, 5).p_value is None
