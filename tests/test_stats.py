"""The verdict's statistics against brute force, closed forms and hand computations."""

from __future__ import annotations

import dataclasses
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm
from scipy.stats import t as student_t

from optsearch.search import stats as S

# Small arms with ties, negatives and a single value: n up to 8.
SMALL = [
    [0.5],
    [3.0, 1.0, 2.0],
    [0.2, 0.2, 0.9, 0.1],
    [1.0, 1.0, 1.0, 1.0, 1.0],
    [0.7, -0.3, 0.7, 0.1, 2.5, 0.1],
    [5, 3, 8, 3, 1, 8, 2],
    [0.91, 0.93, 0.93, 0.88, 0.95, 0.91, 0.90, 0.93],
]


def _best(xs, maximize):
    return max(xs) if maximize else min(xs)


# --------------------------------------------------------------------------- expected max


@pytest.mark.parametrize("values", SMALL)
@pytest.mark.parametrize("maximize", [True, False])
def test_unbiased_is_the_average_over_all_k_subsets(values, maximize):
    n = len(values)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(values, k))
        brute = sum(_best(c, maximize) for c in subsets) / len(subsets)
        assert S.expected_max_unbiased(values, k, maximize) == pytest.approx(brute, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("values", SMALL[:6] + [SMALL[6][:6]])
@pytest.mark.parametrize("maximize", [True, False])
def test_dodge_is_the_average_over_all_ordered_draws_with_replacement(values, maximize):
    n = len(values)
    for k in range(1, min(n, 4) + 1):
        draws = list(itertools.product(values, repeat=k))
        assert len(draws) == n**k
        brute = sum(_best(d, maximize) for d in draws) / len(draws)
        assert S.expected_max_dodge(values, k, maximize) == pytest.approx(brute, rel=1e-12, abs=1e-12)


def test_known_answers():
    assert S.expected_max_dodge([3, 1, 2], 2) == pytest.approx(22 / 9)  # 1/9*1 + 3/9*2 + 5/9*3
    assert S.expected_max_dodge([3, 1, 2], 2, maximize=False) == pytest.approx(14 / 9)
    assert S.expected_max_unbiased([3, 1, 2], 2) == pytest.approx(8 / 3)  # (2 + 3 + 3) / 3
    assert S.expected_max_unbiased([3, 1, 2], 2, maximize=False) == pytest.approx(4 / 3)
    assert S.expected_max_unbiased([0.5], 1) == S.expected_max_dodge([0.5], 1) == 0.5


@pytest.mark.parametrize("maximize", [True, False])
def test_k1_is_the_mean_kn_is_the_best_and_monotone(maximize):
    rng = np.random.default_rng(7)
    for values in SMALL[1:] + [rng.normal(size=40), np.round(rng.beta(8, 2, size=97) * 287) / 287]:
        values = np.asarray(values, dtype=float)
        n = values.size
        best = values.max() if maximize else values.min()
        unb = S.expected_max_curve(values, maximize, method="unbiased")
        dod = S.expected_max_curve(values, maximize, method="dodge")
        assert list(unb) == list(dod) == list(range(1, n + 1))
        assert unb[1] == pytest.approx(values.mean()) and dod[1] == pytest.approx(values.mean())
        assert unb[n] == pytest.approx(best, abs=1e-12)
        sign = 1 if maximize else -1
        for k in range(1, n):  # better-or-equal as k grows, never past the best
            assert sign * unb[k + 1] >= sign * unb[k] - 1e-12
            assert sign * dod[k + 1] >= sign * dod[k] - 1e-12
        for k in range(1, n + 1):  # draws that can repeat a trial do no better: Dodge <= unbiased
            assert sign * dod[k] <= sign * unb[k] + 1e-12
            assert sign * unb[k] <= sign * best + 1e-12


def test_curve_never_goes_beyond_the_trials_run():
    values = [0.3, 0.1, 0.4, 0.15, 0.9]
    for method in S.METHODS:
        curve = S.expected_max_curve(values, ks=[64, 1, 2, 5, 6, 4, 2], method=method)
        assert list(curve) == [1, 2, 4, 5]
        assert S.expected_max_curve(values, ks=[6, 7], method=method) == {}
        assert list(S.bootstrap_expected_max_curve(values, ks=[1, 5, 6], n_boot=20, method=method)) == [1, 5]
    assert [r["k"] for r in S.expected_max_summary(values, ks=[1, 2, 8], n_boot=50)] == [1, 2]
    with pytest.raises(ValueError, match="larger than the 5 finished"):
        S.expected_max_unbiased(values, 6)
    with pytest.raises(ValueError, match="larger than the 5 finished"):
        S.expected_max_dodge(values, 6)
    with pytest.raises(ValueError, match="larger than the 5 finished"):
        S.bootstrap_expected_max(values, 6)


def test_unbiased_is_exact_for_thousands_of_trials():
    """Against exact integer combinatorics: sum_i v_i C(i-1, k-1) / C(n, k), n = 2500."""
    rng = np.random.default_rng(0)
    n = 2500
    ints = rng.integers(0, 10_000, size=n)
    s = sorted(int(v) for v in ints)
    for k in (1, 2, 17, 600, 2499, 2500):
        exact = Fraction(sum(v * math.comb(i - 1, k - 1) for i, v in enumerate(s, start=1)), math.comb(n, k))
        assert S.expected_max_unbiased(ints, k) == pytest.approx(float(exact), rel=1e-12)
    curve = S.expected_max_curve(ints.astype(float), ks=[1, 1000, 2500])
    assert np.isfinite(list(curve.values())).all() and curve[2500] == ints.max()


def test_summary_puts_both_estimators_and_the_band_side_by_side():
    values = np.random.default_rng(3).normal(size=30)
    rows = S.expected_max_summary(values, ks=[1, 4, 30], n_boot=300, seed=5)
    for r in rows:
        assert r["unbiased"] == pytest.approx(S.expected_max_unbiased(values, r["k"]))
        assert r["dodge"] == pytest.approx(S.expected_max_dodge(values, r["k"]))
        assert (r["low"], r["high"]) == S.bootstrap_expected_max(values, r["k"], n_boot=300, seed=5)


# --------------------------------------------------------------------------- bootstrap bands


@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("method", S.METHODS)
def test_bands_contain_the_estimate(maximize, method):
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 40))
        values = [rng.normal(size=n), rng.exponential(size=n), np.round(rng.beta(8, 2, size=n) * 287) / 287][seed % 3]
        curve = S.expected_max_curve(values, maximize, method=method)
        bands = S.bootstrap_expected_max_curve(values, n_boot=400, seed=seed, maximize=maximize, method=method)
        assert list(bands) == list(curve)
        for k, est in curve.items():
            low, high = bands[k]
            assert low <= high
            assert low - 1e-12 <= est <= high + 1e-12, (seed, k, low, est, high)


def test_bands_shrink_with_more_trials():
    rng = np.random.default_rng(11)
    for k in (1, 5, 10):
        widths = []
        for n in (20, 80, 400):
            lo, hi = S.bootstrap_expected_max(rng.normal(size=n), k, n_boot=1000, seed=1)
            widths.append(hi - lo)
        assert widths[0] > widths[1] > widths[2] > 0, (k, widths)
        # roughly 1/sqrt(n): 20x the trials, at least 2.5x narrower
        assert widths[2] < widths[0] / 2.5


def test_bands_are_reproducible_and_oriented():
    values = np.random.default_rng(2).normal(size=25)
    band = S.bootstrap_expected_max(values, 3, n_boot=500, seed=42)
    assert band == S.bootstrap_expected_max(list(values), 3, n_boot=500, seed=42)
    assert band != S.bootstrap_expected_max(values, 3, n_boot=500, seed=43)
    assert band == S.bootstrap_expected_max_curve(values, ks=[3], n_boot=500, seed=42)[3]
    # minimizing x is maximizing -x, mirrored
    lo, hi = S.bootstrap_expected_max(-values, 3, n_boot=500, seed=42, maximize=False)
    assert (lo, hi) == pytest.approx((-band[1], -band[0]))
    assert S.bootstrap_expected_max([0.7], 1) == (0.7, 0.7)


# --------------------------------------------------------------------------- best of k vs best of k


def _brute_beat(a, b, k, replace):
    """Average over every pair (k-draw of A, k-draw of B) of [A's best > B's best] + [tie] / 2."""
    draws = (lambda xs: list(itertools.product(xs, repeat=k))) if replace else \
        (lambda xs: list(itertools.combinations(xs, k)))
    da, db = [max(d) for d in draws(a)], [max(d) for d in draws(b)]
    win = sum((x > y) + 0.5 * (x == y) for x in da for y in db)
    return win / (len(da) * len(db))


@pytest.mark.parametrize("replace", [False, True])
def test_beat_probability_equals_brute_force(replace):
    pairs = [([0.2, 0.5, 0.5, 0.9], [0.5, 0.1, 0.7]),
             ([1, 2, 3, 4, 5, 6], [2, 2, 4, 6, 6]),
             ([0.93, 0.91, 0.93, 0.95, 0.90], [0.93, 0.92, 0.93, 0.96, 0.89, 0.93])]
    for a, b in pairs:
        for k in range(1, min(len(a), len(b), 4) + 1):
            want = _brute_beat(a, b, k, replace)
            got = S.p_best_of_k_beats(a, b, k, n_boot=0, replace=replace)
            assert got.p == pytest.approx(want, abs=1e-12), (a, b, k)
            # lower is better: the same as maximizing the negated values
            neg = S.p_best_of_k_beats([-x for x in a], [-x for x in b], k, n_boot=0, maximize=False, replace=replace)
            assert neg.p == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_beat_probability_matches_the_closed_form_for_normals(k):
    """A ~ N(1, 1), B ~ N(0, 1): P(max_k A > max_k B) = int k phi(x-1) Phi(x-1)^(k-1) Phi(x)^k dx."""
    exact, _ = integrate.quad(lambda x: k * norm.pdf(x - 1) * norm.cdf(x - 1) ** (k - 1) * norm.cdf(x) ** k,
                              -12, 14)
    if k == 1:
        assert exact == pytest.approx(norm.cdf(1 / math.sqrt(2)), abs=1e-9)
    rng = np.random.default_rng(100 + k)
    a, b = rng.normal(1, 1, size=4000), rng.normal(0, 1, size=4000)
    got = S.p_best_of_k_beats(a, b, k, n_boot=400, seed=1)
    assert got.p == pytest.approx(exact, abs=0.03)
    assert got.low <= got.p <= got.high and got.high - got.low < 0.08
    # with replacement, from 4000 trials, k draws rarely repeat: nearly the same number
    assert S.p_best_of_k_beats(a, b, k, n_boot=0, replace=True).p == pytest.approx(got.p, abs=0.005)


def test_beat_probability_matches_a_direct_monte_carlo():
    """Draw k of A's trials and k of B's without replacement, many times, and count."""
    rng = np.random.default_rng(5)
    a = np.round(rng.normal(0.90, 0.02, size=30) * 287) / 287  # ties, as real accuracies have
    b = np.round(rng.normal(0.89, 0.02, size=25) * 287) / 287
    reps = 40_000
    for k in (1, 4, 12):
        best_a = np.take_along_axis(np.tile(a, (reps, 1)), rng.random((reps, a.size)).argsort(1)[:, :k], 1).max(1)
        best_b = np.take_along_axis(np.tile(b, (reps, 1)), rng.random((reps, b.size)).argsort(1)[:, :k], 1).max(1)
        mc = np.mean((best_a > best_b) + 0.5 * (best_a == best_b))
        se = math.sqrt(0.25 / reps)
        assert S.p_best_of_k_beats(a, b, k, n_boot=0).p == pytest.approx(mc, abs=4 * se)


def test_beat_probability_is_symmetric_and_half_for_equal_arms():
    rng = np.random.default_rng(9)
    a = np.round(rng.normal(0.9, 0.03, size=50) * 100) / 100
    b = np.round(rng.normal(0.9, 0.03, size=60) * 100) / 100
    for k in (1, 2, 7, 50):
        for replace in (False, True):
            ab = S.p_best_of_k_beats(a, b, k, n_boot=0, replace=replace).p
            ba = S.p_best_of_k_beats(b, a, k, n_boot=0, replace=replace).p
            assert ab + ba == pytest.approx(1.0, abs=1e-12)
            assert S.p_best_of_k_beats(a, a, k, n_boot=0, replace=replace).p == pytest.approx(0.5, abs=1e-12)
    # two large samples of one distribution: about a half
    x, y = rng.normal(size=3000), rng.normal(size=3000)
    for k in (1, 5):
        assert S.p_best_of_k_beats(x, y, k, n_boot=0).p == pytest.approx(0.5, abs=0.03)


def test_beat_probability_band_and_seed():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.3, 1, size=40), rng.normal(0, 1, size=35)
    r1 = S.p_best_of_k_beats(a, b, 5, n_boot=800, seed=3)
    assert r1 == S.p_best_of_k_beats(list(a), list(b), 5, n_boot=800, seed=3)
    assert r1 != S.p_best_of_k_beats(a, b, 5, n_boot=800, seed=4)
    assert 0 <= r1.low <= r1.p <= r1.high <= 1 and float(r1) == r1.p
    assert (r1.k, r1.n_a, r1.n_b, r1.level, r1.replace) == (5, 40, 35, 0.95, False)
    nob = S.p_best_of_k_beats(a, b, 5, n_boot=0)
    assert nob.p == r1.p and math.isnan(nob.low) and math.isnan(nob.high)
    with pytest.raises(ValueError, match="35 finished trial.*arm B"):
        S.p_best_of_k_beats(a, b, 36)


def test_beat_probability_band_matches_the_spread_over_fresh_trials():
    """The band's width reflects how much P moves with a fresh set of trials of the same arms."""
    rng = np.random.default_rng(21)
    ps, halfwidths = [], []
    for _ in range(40):
        r = S.p_best_of_k_beats(rng.normal(0.5, 1, 200), rng.normal(0, 1, 200), 3, n_boot=300, seed=0)
        ps.append(r.p)
        halfwidths.append((r.high - r.low) / 2)
    sd_fresh = np.std(ps, ddof=1)
    sd_band = np.mean(halfwidths) / norm.ppf(0.975)
    assert sd_fresh / 1.6 < sd_band < sd_fresh * 1.6, (sd_fresh, sd_band)


def test_pairwise_probabilities():
    rng = np.random.default_rng(6)
    arms = {"sgd": rng.normal(0, 1, 10), "adamw": rng.normal(1, 1, 30), "nadamw": rng.normal(1, 1, 6)}
    out = S.pairwise_p_best_of_k(arms, ks=(1, 4, 8, 16), n_boot=100)
    assert list(out) == [("sgd", "adamw"), ("sgd", "nadamw"), ("adamw", "nadamw")]
    assert list(out[("sgd", "adamw")]) == [1, 4, 8]  # sgd has 10 trials
    assert list(out[("adamw", "nadamw")]) == [1, 4]  # nadamw has 6
    assert out[("sgd", "adamw")][4].p == S.p_best_of_k_beats(arms["sgd"], arms["adamw"], 4, n_boot=100).p
    assert out[("sgd", "adamw")][1].p < 0.5
    with pytest.raises(ValueError, match="at least two arms"):
        S.pairwise_p_best_of_k({"sgd": [1.0]})


# --------------------------------------------------------------------------- seed re-runs


def test_mean_std():
    assert S.mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                            + (4 - 7 / 3) ** 2) / 2)))
    mean, std = S.mean_std([0.93])
    assert mean == 0.93 and math.isnan(std)  # one run: the spread is unknown, not zero


def test_paired_difference_by_hand():
    a = {1: 0.92, 2: 0.95, 3: 0.91, 4: 0.94, 7: 0.99}
    b = {4: 0.90, 3: 0.90, 2: 0.93, 1: 0.91, 5: 0.50}
    d = [0.92 - 0.91, 0.95 - 0.93, 0.91 - 0.90, 0.94 - 0.90]  # seeds 1, 2, 3, 4
    mean = sum(d) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    q = student_t.ppf(0.975, 3)
    r = S.paired_difference(a, b)
    assert r.n_pairs == 4 and r.seeds == (1, 2, 3, 4) and set(r.unpaired) == {5, 7}
    assert r.mean == pytest.approx(mean) and r.std == pytest.approx(std)
    assert r.se == pytest.approx(std / 2) and r.dof == 3 and r.t_quantile == pytest.approx(3.182446305284263)
    assert r.ci == pytest.approx((mean - q * std / 2, mean + q * std / 2))
    assert r.p_value == pytest.approx(2 * student_t.sf(mean / (std / 2), 3))
    r90 = S.paired_difference(a, b, level=0.9)
    assert r90.high - r90.low < r.high - r.low
    # swapping the arms flips the sign
    rb = S.paired_difference(b, a)
    assert (rb.mean, rb.low, rb.high) == pytest.approx((-mean, -r.high, -r.low))


def test_paired_difference_edge_cases():
    one = S.paired_difference({0: 0.9, 1: 0.8}, {0: 0.85})
    assert one.n_pairs == 1 and one.mean == pytest.approx(0.05)
    assert math.isnan(one.std) and one.ci == (-math.inf, math.inf) and math.isnan(one.p_value)
    same = S.paired_difference({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8})
    assert same.ci == (0.0, 0.0) and same.p_value == 1.0
    with pytest.raises(ValueError, match="no seed in common"):
        S.paired_difference({0: 0.9}, {1: 0.9})
    with pytest.raises(ValueError, match="not finite"):
        S.paired_difference({0: float("nan")}, {0: 0.9})
    with pytest.raises(ValueError, match="mapping"):
        S.paired_difference([0.9, 0.8], [0.8, 0.7])


def test_paired_interval_covers_the_true_gap_95_percent_of_the_time():
    rng = np.random.default_rng(12)
    sims, covered = 1000, 0
    for _ in range(sims):
        b = rng.normal(0.9, 0.01, size=5)
        a = b + 0.003 + rng.normal(0, 0.004, size=5)
        r = S.paired_difference(dict(enumerate(a)), dict(enumerate(b)))
        covered += r.low <= 0.003 <= r.high
    assert covered / sims == pytest.approx(0.95, abs=0.025)


def test_resolution():
    assert S.resolution(287) == pytest.approx(1 / 287)
    assert S.resolution(10_000) == 1e-4
    for bad in (0, -3, 2.5, True, "287"):
        with pytest.raises(ValueError, match="val_size"):
            S.resolution(bad)


# --------------------------------------------------------------------------- verdict


RES = 1 / 287
SEEDS = range(5)


def _arm(rng, mean, sd, n=5):
    return {s: float(v) for s, v in zip(range(n), rng.normal(mean, sd, size=n))}


def test_verdict_a_dominates():
    rng = np.random.default_rng(1)
    b = _arm(rng, 0.90, 0.01)
    a = {s: v + 0.05 + rng.normal(0, 0.002) for s, v in b.items()}
    v = S.verdict(a, b, names=("adamw", "sgd"), resolution=RES, metric="validation accuracy")
    assert (v.label, v.winner) == ("A better", "adamw")
    assert v.difference == pytest.approx(0.05, abs=0.005)
    assert v.ci[0] > RES and v.p_value < 1e-4 and v.n_pairs == 5
    assert (v.resolution, v.margin) == (RES, RES)
    # the same arms the other way round, and the same as a loss (lower is better)
    assert S.verdict(b, a, names=("sgd", "adamw"), resolution=RES).label == "B better"
    # as a loss (lower is better) the higher values lose; negated, they win
    loss = S.verdict(a, b, resolution=RES, maximize=False)
    assert (loss.label, loss.winner) == ("B better", "B")
    neg = S.verdict({s: -x for s, x in a.items()}, {s: -x for s, x in b.items()}, resolution=RES, maximize=False)
    assert (neg.label, neg.winner) == ("A better", "A") and neg.ci == pytest.approx((-v.ci[1], -v.ci[0]))
    assert "lower is better" in S.render_verdict(loss)
    text = S.render_verdict(v)
    assert text.startswith("adamw is better than sgd on validation accuracy")
    for piece in ("5 paired seeds", "95% confidence interval", f"{v.ci[0]:.4g} to {v.ci[1]:.4g}",
                  f"{v.difference:+.4g}", "p < 0.0001", "examples"):
        assert piece in text, piece
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.label = "tie"


def test_verdict_same_distribution_is_not_enough_evidence():
    rng = np.random.default_rng(2)
    labels = []
    for _ in range(400):
        labels.append(S.verdict(_arm(rng, 0.9, 0.01), _arm(rng, 0.9, 0.01), resolution=RES).label)
    share = {label: labels.count(label) / len(labels) for label in S.LABELS}
    assert share["not enough evidence"] >= 0.9
    assert share["A better"] + share["B better"] <= 0.08  # the test's 5% false alarms, at most
    v = S.verdict(*({s: 0.9 + 0.01 * x for s, x in zip(SEEDS, rng.normal(size=5))} for _ in range(2)),
                  names=("adamw", "sgd"), resolution=RES)
    assert v.label == "not enough evidence" and v.winner is None
    assert v.ci[0] < 0 < v.ci[1]
    assert "not enough evidence to tell adamw and sgd apart" in S.render_verdict(v)
    assert "includes zero" in S.render_verdict(v)


def test_verdict_tie_below_the_resolution():
    """Accuracies on 287 examples: the arms agree on 4 seeds and differ by one example on one."""
    b = {s: c / 287 for s, c in zip(SEEDS, (260, 262, 259, 261, 263))}
    a = {**b, 4: 264 / 287}
    v = S.verdict(a, b, names=("adamw", "sgd"), resolution=RES)
    assert v.label == "tie" and v.winner is None
    assert abs(v.difference) < RES and -RES <= v.ci[0] and v.ci[1] <= RES
    assert "tie" in S.render_verdict(v) and "one example" in S.render_verdict(v)
    # identical results tie even without a resolution
    same = S.verdict(b, b)
    assert same.label == "tie" and "the same value on every paired seed" in S.render_verdict(same)
    # the same small gap on a metric with no resolution and noisy seeds: not a tie
    assert S.verdict(a, b).label == "not enough evidence"


def test_verdict_margin_and_thresholds():
    b = {s: 0.90 + 0.01 * s for s in SEEDS}
    exactly_one = {s: v + RES for s, v in b.items()}  # one example better on every seed
    assert S.verdict(exactly_one, b, resolution=RES).label == "A better"
    # a real but tiny gap (0.001 on each seed, noise 0.0002) under one example, tightly known: a tie
    rng = np.random.default_rng(3)
    tiny = {s: v + 0.001 + rng.normal(0, 0.0002) for s, v in b.items()}
    v = S.verdict(tiny, b, resolution=RES)
    assert v.ci[0] > 0 and v.label == "tie"
    # without a resolution the same gap is "A better": the CI excludes 0 and any gap counts
    assert S.verdict(tiny, b).label == "A better"
    # a practical margin of our own: 0.06 is more than the 0.05 gap -> not a winner
    dom = {s: v + 0.05 for s, v in b.items()}
    assert S.verdict(dom, b, resolution=RES, min_effect=0.06).label == "tie"
    assert S.verdict(dom, b, resolution=RES, min_effect=0.04).label == "A better"
    # a gap that is real, under the margin, but the CI reaches beyond it: cannot tell
    spread = 0.0016 * np.array([-2, -1, 0, 1, 2]) / math.sqrt(2.5)  # sample std exactly 0.0016
    wide = {s: v + 0.0025 + spread[s] for s, v in b.items()}  # CI 0.0025 -/+ 0.0020
    w = S.verdict(wide, b, resolution=RES)
    assert w.ci[0] > 0 and w.ci[1] > RES and w.label == "not enough evidence"
    assert "smaller than the margin" in w.reason


def test_verdict_pairs_by_seed():
    """Only common seeds count, paired by id, whatever the order: a shuffled B is no longer dominated."""
    b = {s: 0.90 + 0.01 * s for s in range(6)}
    a = {s: b[s] + 0.005 for s in range(5)} | {9: 0.2}  # seed 9 has no partner; B's seed 5 neither
    v = S.verdict(a, b, resolution=RES)
    assert v.label == "A better" and v.n_pairs == 5 and v.difference == pytest.approx(0.005)
    assert v.a_mean == pytest.approx(0.925) and v.b_mean == pytest.approx(0.92)
    shuffled = dict(zip(range(5), [b[s] for s in (4, 0, 3, 1, 2)]))
    assert S.verdict(a, shuffled, resolution=RES).label == "not enough evidence"


def test_verdict_single_seed_is_not_enough_evidence():
    v = S.verdict({0: 0.99}, {0: 0.50}, resolution=RES)
    assert v.label == "not enough evidence" and v.n_pairs == 1 and math.isnan(v.a_std)
    assert "single paired seed" in S.render_verdict(v)


def test_verdict_reports_the_search_probability():
    rng = np.random.default_rng(8)
    b = _arm(rng, 0.90, 0.01)
    a = {s: v + 0.05 for s, v in b.items()}
    good, bad = rng.normal(0.9, 0.02, size=40), rng.normal(0.8, 0.02, size=40)
    v = S.verdict(a, b, names=("adamw", "sgd"), resolution=RES, a_trials=good, b_trials=bad, k=4, n_boot=300)
    assert v.label == "A better" and v.k == 4
    assert v.probability == pytest.approx(S.p_best_of_k_beats(good, bad, 4, n_boot=0).p)
    assert v.probability > 0.99 and v.probability_band[0] <= v.probability <= v.probability_band[1]
    text = S.render_verdict(v)
    assert "the best of 4 trials of adamw beats the best of 4 of sgd with probability 1.00" in text
    assert "other way" not in text
    # the search says the opposite of the re-runs: the label stands, the paragraph says so
    w = S.verdict(a, b, names=("adamw", "sgd"), resolution=RES, a_trials=bad, b_trials=good, k=4, n_boot=300)
    assert w.label == "A better" and w.probability < 0.01
    assert "points the other way" in S.render_verdict(w)
    with pytest.raises(ValueError, match="go together"):
        S.verdict(a, b, a_trials=good, k=4)
    with pytest.raises(ValueError, match="larger than the 40 finished"):
        S.verdict(a, b, a_trials=good, b_trials=bad, k=41)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("call, message", [
    (lambda: S.expected_max_unbiased([], 1), "empty"),
    (lambda: S.expected_max_dodge([], 1), "empty"),
    (lambda: S.expected_max_unbiased([1.0, 2.0], 0), "k must be >= 1"),
    (lambda: S.expected_max_dodge([1.0, 2.0], -1), "k must be >= 1"),
    (lambda: S.expected_max_unbiased([1.0, 2.0], 3), "larger than the 2 finished"),
    (lambda: S.expected_max_unbiased([1.0, 2.0], 1.5), "k must be an integer"),
    (lambda: S.expected_max_unbiased([1.0, float("nan")], 1), "NaN"),
    (lambda: S.expected_max_unbiased([1.0, None], 1), "missing"),
    (lambda: S.expected_max_unbiased(["a"], 1), "numbers"),
    (lambda: S.expected_max_unbiased([[1.0, 2.0]], 1), "flat"),
    (lambda: S.expected_max_unbiased([1.0], 1, maximize="yes"), "maximize"),
    (lambda: S.expected_max_curve([1.0], ks=[0, 1]), "each k must be >= 1"),
    (lambda: S.expected_max_curve([1.0], method="tang"), "method"),
    (lambda: S.bootstrap_expected_max([1.0, 2.0], 1, level=95), "level"),
    (lambda: S.bootstrap_expected_max([1.0, 2.0], 1, n_boot=0), "n_boot"),
    (lambda: S.mean_std([]), "empty"),
    (lambda: S.p_best_of_k_beats([], [1.0], 1), "a is empty"),
    (lambda: S.p_best_of_k_beats([1.0], [1.0], 0), "k must be >= 1"),
    (lambda: S.verdict({0: 1.0}, {0: 1.0}, resolution=-0.1), "resolution"),
    (lambda: S.verdict({0: 1.0}, {0: 1.0}, resolution="1/287"), "resolution"),
    (lambda: S.verdict({0: 1.0}, {0: 1.0}, names=("x", "x")), "different names"),
    (lambda: S.verdict({0: 1.0}, {0: 1.0}, min_effect=float("inf")), "min_effect"),
])
def test_inputs_are_validated(call, message):
    with pytest.raises(ValueError, match=message):
        call()
