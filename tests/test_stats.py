"""advprune.stats against values computed by hand (or from closed forms)."""

import math

import numpy as np
import pytest

from advprune.stats import Model, accuracy_interval, bootstrap, from_bits, mcnemar_exact, paired_bootstrap, t_interval, wilson


def test_wilson_interval_matches_the_closed_form():
    # 7 of 10, z = 1.959964: centre (0.7 + z²/20) / (1 + z²/10) = 0.6446, half-width 0.2477.
    assert wilson(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    # None right: the interval still has width (the normal approximation would give [0, 0]).
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # 251 of 359 (the digits test split): centre 0.697056, half-width 0.047237, about ±4.7 points.
    lo, hi = wilson(251, 359)
    assert (lo, hi) == pytest.approx((0.64982, 0.74429), abs=1e-5)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_t_interval_over_seeds():
    # mean 0.72, sd 0.02, se 0.011547, t(0.975, 2) = 4.3027 -> ±0.049683
    assert t_interval([0.70, 0.74, 0.72]) == pytest.approx((0.72, 0.670317, 0.769683), abs=1e-6)
    mean, lo, hi = t_interval([0.5])
    assert mean == 0.5 and math.isnan(lo) and math.isnan(hi)


def test_accuracy_interval_is_t_over_seeds_or_wilson_for_one_seed():
    several = accuracy_interval([0.70, 0.74, 0.72], [100, 100, 100])
    assert (several.basis, several.mean) == ("t", pytest.approx(0.72)) and several.lo == pytest.approx(0.670317, abs=1e-6)
    # Two seeds: t(0.975, 1) = 12.706, so 0.80 and 0.84 give 0.82 ± 0.254, clipped to at most 1.
    assert accuracy_interval([0.80, 0.84], [100, 100]).hi == 1.0
    assert accuracy_interval([0.80, 0.84], [100, 100]).lo == pytest.approx(0.82 - 12.7062 * 0.02, abs=1e-4)
    one = accuracy_interval([0.7], [10])
    assert one.basis == "wilson" and (one.lo, one.hi) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    # A float accuracy (0.7 * 10 = 6.999...) counts 7 points.
    assert accuracy_interval([0.699999988079071], [10]).lo == pytest.approx(0.3968, abs=1e-4)
    # Not computed (NaN) is left out, never read as 0.
    assert accuracy_interval([float("nan"), 0.7], [10, 10]).basis == "wilson"
    assert accuracy_interval([float("nan")], [10]).basis == "none"


def test_exact_mcnemar_counts_discordant_pairs():
    a = from_bits("1111111111" + "00" + "1111")
    b = from_bits("1100000000" + "11" + "1111")
    result = mcnemar_exact(a, b)
    # 8 points only A gets right, 2 only B: p = 2 * P(Binomial(10, 1/2) <= 2) = 2 * 56 / 1024.
    assert (result.only_a, result.only_b) == (8, 2)
    assert result.p_value == pytest.approx(112 / 1024)
    assert mcnemar_exact(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="same points"):
        mcnemar_exact(a, a[:-1])
    with pytest.raises(ValueError, match="0 and 1"):
        from_bits("10x1")


def test_paired_bootstrap_of_the_difference():
    a, b = from_bits("1110"), from_bits("1000")
    est = paired_bootstrap(a, b)
    assert est.value == 0.5 and est.paired and 0 <= est.lo <= 0.5 <= est.hi <= 1
    same = paired_bootstrap(a, a)
    assert (same.value, same.lo, same.hi) == (0, 0, 0)
    # Deterministic: the same inputs give the same interval.
    assert paired_bootstrap(a, b) == est


def test_bootstrap_pairs_models_on_shared_points_and_is_wider_without():
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.7
    b = a.copy()
    b[np.flatnonzero(a)[:9]] = False  # B loses 9 points A keeps: a 3-point difference, every change one way
    diff = lambda acc: acc["a"][:, 0] - acc["b"][:, 0]  # noqa: E731
    paired = bootstrap({"a": Model([a.mean()], [300], [a]), "b": Model([b.mean()], [300], [b])}, diff)
    unpaired = bootstrap({"a": Model([a.mean()], [300], [None]), "b": Model([b.mean()], [300], [None])}, diff)
    assert paired.paired and not unpaired.paired
    assert paired.value == unpaired.value == pytest.approx(0.03)
    # Paired: every resample keeps A >= B, so the interval excludes 0; independent binomials cannot tell.
    assert 0 < paired.lo < 0.03 < paired.hi < 0.06
    assert unpaired.lo < 0 < unpaired.hi
    # Several seeds: the seeds are resampled too (the interval is not the single-seed one).
    two = bootstrap({"a": Model([0.7, 0.5], [300, 300], [None, None]), "b": Model([0.6, 0.6], [300, 300], [None, None])},
                    lambda acc: (acc["a"] - acc["b"]).mean(axis=1))
    assert two.value == pytest.approx(0.0) and two.lo < -0.05 and two.hi > 0.05
