"""t-intervals and paired tests against recorded reference numbers (SciPy's stats.t.ppf, stats.ttest_rel; t tables)."""

from types import SimpleNamespace

import pytest

from transferlab.reporting.statistics import mean_interval, paired_test, t_critical, t_two_sided_p


@pytest.mark.parametrize("df, expected", [(1, 12.706204736174694), (2, 4.302652729749462),
                                          (4, 2.7764451051977934), (9, 2.262157162798205)])
def test_t_critical_values(df, expected):
    assert t_critical(df) == pytest.approx(expected, rel=1e-9)


def test_two_sided_p_value():
    assert t_two_sided_p(2.0, 5) == pytest.approx(0.10193947882985835, rel=1e-9)


def test_mean_interval_of_known_numbers():
    e = mean_interval([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and e.n == 3 and e.half_width == pytest.approx(4.302652729749462 / 3 ** 0.5)
    assert mean_interval([0.7]).half_width is None and mean_interval([0.7]).interval is None


def test_paired_test_matches_scipy_and_claims_only_what_the_interval_supports():
    test = paired_test([0.8, 0.82, 0.79, 0.85], [0.7, 0.75, 0.74, 0.72])
    assert test.difference.mean == pytest.approx(0.0875) and test.p_value == pytest.approx(0.015392438073302287)
    assert test.is_supported
    noisy = paired_test([0.8, 0.6, 0.9], [0.7, 0.75, 0.74])
    assert not noisy.is_supported and noisy.p_value > 0.05
    assert not paired_test([0.9], [0.1]).is_supported  # one seed: no interval, no claim
    same = paired_test([0.8, 0.9], [0.7, 0.8])  # equal differences: no spread to test against, no claim
    assert same.p_value is None and not same.is_supported


def test_the_headline_claims_nothing_when_every_seed_gives_the_same_accuracy():
    from transferlab.reporting.study_report import headline_lines
    same = lambda acc: {s: SimpleNamespace(test_acc=acc, stopped=None, recent_val_gain=None)  # noqa: E731
                        for s in range(3)}  # zero spread, 3 seeds; no record of how scratch ended (older results)
    groups = [("5", 5.0, {"finetuned": same(0.9), "frozen": same(0.4), "scratch": same(0.3)}),
              ("all", 100.0, {"finetuned": same(0.95), "frozen": same(0.8), "scratch": same(0.5)})]
    lines = headline_lines(groups)
    assert not any("**" in line for line in lines)
    # identical differences over the seeds leave nothing to test: the 40-point gaps are not claimed
    assert "not supported at n = 3 seeds at any k" in lines[0] and "not supported" in lines[2]


def test_the_report_says_how_many_images_each_method_needs_for_the_target():
    """acc(k) = 0.9 − 0.5·k^−0.5 reaches 80 % at k = 25; a method trained at 3 ks has no curve to say it."""
    from transferlab.reporting.study_report import target_lines
    ks = (4.0, 9.0, 16.0, 36.0, 64.0, 100.0)
    curve = lambda k, s: SimpleNamespace(test_acc=0.9 - 0.5 * k ** -0.5 + 0.002 * (s - 1))  # noqa: E731
    groups = [(str(int(k)), k, {"finetuned": {s: curve(k, s) for s in range(3)}} |
               ({"scratch": {s: SimpleNamespace(test_acc=0.3) for s in range(3)}} if k in (4.0, 36.0, 100.0) else {}))
              for k in ks]
    lines = target_lines(groups, 0.8)
    finetuned = next(line for line in lines if line.startswith("- fine-tuned"))
    assert "images needed to match the target (80.0 %): about 25 images per class" in finetuned
    scratch = next(line for line in lines if line.startswith("- scratch"))
    assert "no learning curve" in scratch
    assert target_lines(groups, None) == []
