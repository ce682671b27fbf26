"""The learning-curve fit recovers a known curve, gives intervals over seeds, and flags what does not extrapolate."""

import numpy as np
import pytest

from transferlab.reporting.learning_curve import (CurveFit, check_extrapolation, fit_curve, images_needed,
                                                  inverse_power)

KS = [5, 10, 25, 50, 100, 200]
TRUE = CurveFit(a=0.85, b=0.6, c=0.7)


def test_a_synthetic_curve_with_known_a_b_c_is_recovered():
    rng = np.random.default_rng(0)
    noisy = inverse_power(np.array(KS, float), TRUE.a, TRUE.b, TRUE.c) + rng.normal(0, 0.003, len(KS))
    fit = fit_curve(KS, noisy.tolist())
    assert fit.a == pytest.approx(TRUE.a, abs=0.02)
    assert fit.b == pytest.approx(TRUE.b, rel=0.2) and fit.c == pytest.approx(TRUE.c, rel=0.2)


def test_images_needed_inverts_the_curve_and_is_none_above_the_ceiling():
    assert TRUE.images_needed(TRUE.accuracy_at(40.0)) == pytest.approx(40.0)
    assert TRUE.images_needed(0.9) is None


def test_images_needed_over_seeds_has_an_interval_around_the_truth():
    rng = np.random.default_rng(1)
    per_seed = {s: {k: float(TRUE.accuracy_at(k) + rng.normal(0, 0.01)) for k in KS} for s in range(5)}
    target = TRUE.accuracy_at(60.0)
    needed = images_needed(per_seed, target)
    assert needed.estimate == pytest.approx(60.0, rel=0.2)
    low, high = needed.interval
    assert low < needed.estimate < high and high - low < 30
    noisier = {s: {k: v + np.random.default_rng(s).normal(0, 0.03) for k, v in c.items()} for s, c in per_seed.items()}
    wide = images_needed(noisier, target).interval
    assert wide is None or wide[1] - wide[0] > high - low  # more spread over seeds, a wider interval


def test_a_target_beyond_ten_times_the_data_is_not_extrapolated():
    per_seed = {s: {k: TRUE.accuracy_at(k) for k in KS} for s in range(3)}
    needed = images_needed(per_seed, TRUE.accuracy_at(5000.0))  # 25x the largest k
    assert needed.estimate is None and needed.interval is None


def test_the_out_of_sample_check_passes_a_power_law_and_flags_a_jump():
    smooth = [TRUE.accuracy_at(k) for k in KS]
    assert check_extrapolation(KS, smooth).holds
    jumped = smooth[:-1] + [smooth[-1] + 0.10]  # the largest k does not follow the curve
    check = check_extrapolation(KS, jumped)
    assert not check.holds and check.measured == pytest.approx(smooth[-1] + 0.10)
    assert check.predicted == pytest.approx(smooth[-1], abs=0.01)


def test_a_fit_through_as_many_points_as_parameters_warns_nothing(recwarn):
    """Four ks leave three for the out-of-sample fit: SciPy cannot estimate the covariance of three parameters
    from three points and warns, but the fit does not use it; the warning reached the study's terminal."""
    ks = [5.0, 10.0, 25.0]
    fit = fit_curve(ks, [TRUE.accuracy_at(k) for k in ks])
    assert fit is not None and fit.accuracy_at(25.0) == pytest.approx(TRUE.accuracy_at(25.0), abs=1e-3)
    assert [str(w.message) for w in recwarn] == []
