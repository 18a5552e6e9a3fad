"""Statistics behind the verdict: which arm (optimizer, schedule, study) is better, and how sure.

Pure functions on plain sequences of floats (numpy; scipy only for Student's t, imported
lazily). No Optuna or MLflow here: callers pass the finished trials' values of each arm
(failed trials dropped) and the seed re-runs as ``{seed: value}`` dicts. ``maximize`` says
which way is better (accuracy: True; a loss: False).

What is here, and the rules every function keeps:

* Expected best value after k trials, per arm: the unbiased estimator for k trials drawn
  *without* replacement from the arm's trials (Tang et al., 2020) next to Dodge et al.'s
  (2019) *with* replacement; percentile-bootstrap bands. No function ever gives a value at
  a k larger than the arm's number of finished trials (a single k raises ValueError; curves
  and tables leave such k out).
* For two arms, P(best of k trials of A beats best of k of B), ties counting half: computed
  exactly on the arms' trials (no Monte-Carlo noise), with a bootstrap band.
* Seed re-runs: mean and sample std per arm; the paired difference over common seeds with
  its Student-t confidence interval.
* Resolution: one example of the evaluation set, 1 / size.
* A verdict ("A better", "B better", "tie", "not enough evidence") with the numbers behind it
  and a plain-English paragraph (``render_verdict``).

Every function validates its inputs and raises ValueError with a message naming the problem
(empty input, NaN, k < 1, k beyond the trials run, a level outside (0, 1), ...).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LABELS",
    "BeatProbability",
    "PairedDifference",
    "Verdict",
    "bootstrap_expected_max",
    "bootstrap_expected_max_curve",
    "expected_max_curve",
    "expected_max_dodge",
    "expected_max_summary",
    "expected_max_unbiased",
    "mean_std",
    "p_best_of_k_beats",
    "paired_difference",
    "pairwise_p_best_of_k",
    "render_verdict",
    "resolution",
    "verdict",
]

LABELS = ("A better", "B better", "tie", "not enough evidence")
METHODS = ("unbiased", "dodge")


# --------------------------------------------------------------------------- validation


def _values(values, name: str = "values") -> np.ndarray:
    """A finite 1-D float array with at least one element, or ValueError."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of numbers ({e})") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty: need at least one finished trial")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} missing, NaN or infinite value(s) (first at index "
                         f"{int(np.flatnonzero(bad)[0])}): drop failed trials before calling")
    return x


def _int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _k(k, n: int, what: str = "the arm") -> int:
    k = _int(k, "k", 1)
    if k > n:
        raise ValueError(f"k={k} is larger than the {n} finished trial(s) of {what}: "
                         f"no estimate is given beyond the trials actually run")
    return k


def _bool(value, name: str = "maximize") -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _level(level) -> float:
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.floating)) \
            or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a probability strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _ks(ks, n: int) -> list[int]:
    """The requested k's (default 1..n), each validated, those beyond n left out, sorted."""
    if ks is None:
        return list(range(1, n + 1))
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = [ks]
    out = sorted({_int(k, "each k", 1) for k in ks})
    return [k for k in out if k <= n]


def _oriented(x: np.ndarray, maximize: bool) -> np.ndarray:
    """Values turned so that larger is better (minimize: negated)."""
    return x if maximize else -x


# --------------------------------------------------------------------------- weights


def _dodge_weights(n: int, k: int) -> np.ndarray:
    """w_i = (i/n)^k - ((i-1)/n)^k, i = 1..n: P(the best of k draws with replacement is the
    i-th smallest). Computed as (i/n)^k * (1 - (1 - 1/i)^k) to avoid cancellation."""
    i = np.arange(1, n + 1, dtype=float)
    with np.errstate(divide="ignore"):
        return np.exp(k * np.log(i / n)) * -np.expm1(k * np.log1p(-1.0 / i))


def _subset_weights(n: int, k: int) -> np.ndarray:
    """w_i = C(i-1, k-1) / C(n, k), i = 1..n: P(the best of a uniformly random k-subset is
    the i-th smallest). From w_n = k/n by w_{i-1} = w_i (i-k)/(i-1): a running product of
    ratios in [0, 1], stable for n in the many thousands (no huge binomials, no lgamma
    cancellation); w_i = 0 for i < k."""
    w = np.zeros(n)
    i = np.arange(n, k, -1, dtype=float)  # n, n-1, ..., k+1
    tail = (k / n) * np.concatenate(([1.0], np.cumprod((i - k) / (i - 1))))  # w_n ... w_k
    w[k - 1:] = tail[::-1]
    return w


def _max_cdf_table(n: int, k: int, replace: bool) -> np.ndarray:
    """G[c], c = 0..n: P(best of k draws <= a value that c of the n trials do not exceed).

    With replacement (c/n)^k; without, C(c, k)/C(n, k), from G[n] = 1 by
    G[c-1] = G[c] (c-k)/c (a running product, 0 below c = k)."""
    c = np.arange(n + 1, dtype=float)
    if replace:
        return (c / n) ** k
    g = np.zeros(n + 1)
    j = np.arange(n, k, -1, dtype=float)  # n, ..., k+1
    g[k:] = np.concatenate(([1.0], np.cumprod((j - k) / j)))[::-1]
    return g


def _weights(n: int, k: int, method: str) -> np.ndarray:
    return _subset_weights(n, k) if method == "unbiased" else _dodge_weights(n, k)


# --------------------------------------------------------------------------- expected max


def expected_max_dodge(values: Sequence[float], k: int, maximize: bool = True) -> float:
    """Expected best of k trials drawn *with replacement* from the arm's n trials.

    Dodge et al., 2019, "Show Your Work: Improved Reporting of Experimental Results"
    (EMNLP), eq. 1 with the empirical CDF: with the values sorted worst to best,
    v_(1) <= ... <= v_(n) (for ``maximize=False`` "best" is the lowest),

        E[max_k] = sum_i v_(i) * [ (i/n)^k - ((i-1)/n)^k ].

    It is biased: a draw can repeat a trial, so it is below the without-replacement value
    (Tang et al., 2020). Defined here only for 1 <= k <= n: a larger k would extrapolate
    beyond the trials actually run (ValueError).
    """
    maximize = _bool(maximize)
    x = _values(values)
    k = _k(k, x.size)
    s = np.sort(_oriented(x, maximize))
    v = float(s @ _dodge_weights(x.size, k))
    return v if maximize else -v


def expected_max_unbiased(values: Sequence[float], k: int, maximize: bool = True) -> float:
    """Expected best of k trials drawn *without* replacement: the unbiased estimator.

    Tang et al., 2020, "Showing Your Work Doesn't Always Work" (ACL), sec. 3: the average of
    max over all C(n, k) k-subsets of the n trials, an unbiased estimator (a U-statistic) of
    the expected best of k independent trials. With v_(1) <= ... <= v_(n) sorted worst to
    best, the i-th is the best of a k-subset in C(i-1, k-1) of them, so

        E[max_k] = sum_{i=k}^{n} v_(i) * C(i-1, k-1) / C(n, k).

    Ties are fine (tied values are interchangeable). k = 1 gives the mean, k = n the best.
    Requires 1 <= k <= n (ValueError otherwise). Weights by a stable running product.
    """
    maximize = _bool(maximize)
    x = _values(values)
    k = _k(k, x.size)
    s = np.sort(_oriented(x, maximize))
    v = float(s @ _subset_weights(x.size, k))
    return v if maximize else -v


def expected_max_curve(values: Sequence[float], maximize: bool = True, ks: Iterable[int] | None = None,
                       method: str = "unbiased") -> dict[int, float]:
    """{k: expected best of k trials} for k in ``ks`` (default 1..n), ascending.

    ``method`` "unbiased" (Tang et al. 2020, without replacement; see
    ``expected_max_unbiased``) or "dodge" (Dodge et al. 2019, with replacement; see
    ``expected_max_dodge``). A requested k larger than the arm's n trials is left out, never
    extrapolated; k < 1 raises ValueError. Non-decreasing in k (for maximize).
    """
    maximize = _bool(maximize)
    method = _method(method)
    x = _values(values)
    n = x.size
    s = np.sort(_oriented(x, maximize))
    sign = 1.0 if maximize else -1.0
    return {k: sign * float(s @ _weights(n, k, method)) for k in _ks(ks, n)}


def _bootstrap_sorted(x: np.ndarray, n_boot: int, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)


def _band(stats: np.ndarray, level: float, maximize: bool) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return (float(lo), float(hi)) if maximize else (float(-hi), float(-lo))


def bootstrap_expected_max(values: Sequence[float], k: int, n_boot: int = 1000, seed: int | None = 0,
                           level: float = 0.95, maximize: bool = True,
                           method: str = "unbiased") -> tuple[float, float]:
    """(low, high): percentile-bootstrap band of the expected best of k trials.

    Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile
    interval); applied to expected validation performance as in Dodge et al. (2019) and
    Tang et al. (2020). The arm's n trials are resampled n at a time with replacement
    ``n_boot`` times, the estimator (``method``, at this k) is recomputed on each resample,
    and the (1-level)/2 and (1+level)/2 quantiles are returned. It shows how much the curve
    would move with another set of n trials; it is not a guarantee (resamples repeat trials,
    which pulls the larger-k values down a little). Same ``seed`` -> same band. n = 1 gives
    a band of width 0. Requires 1 <= k <= n.
    """
    maximize = _bool(maximize)
    method = _method(method)
    level = _level(level)
    n_boot = _int(n_boot, "n_boot", 1)
    x = _values(values)
    k = _k(k, x.size)
    boot = _bootstrap_sorted(_oriented(x, maximize), n_boot, seed)
    return _band(boot @ _weights(x.size, k, method), level, maximize)


def bootstrap_expected_max_curve(values: Sequence[float], ks: Iterable[int] | None = None, n_boot: int = 1000,
                                 seed: int | None = 0, level: float = 0.95, maximize: bool = True,
                                 method: str = "unbiased") -> dict[int, tuple[float, float]]:
    """{k: (low, high)}: ``bootstrap_expected_max`` at each k of ``ks`` (default 1..n) from
    one set of resamples (so the band at each k equals the single-k call with the same
    seed). k beyond the arm's n trials is left out. Cost: n_boot * n per k."""
    maximize = _bool(maximize)
    method = _method(method)
    level = _level(level)
    n_boot = _int(n_boot, "n_boot", 1)
    x = _values(values)
    boot = _bootstrap_sorted(_oriented(x, maximize), n_boot, seed)
    return {k: _band(boot @ _weights(x.size, k, method), level, maximize) for k in _ks(ks, x.size)}


def expected_max_summary(values: Sequence[float], ks: Iterable[int] | None = None, maximize: bool = True,
                         n_boot: int = 1000, seed: int | None = 0, level: float = 0.95) -> list[dict]:
    """One row per k (k <= n only): {"k", "unbiased", "dodge", "low", "high"}.

    The unbiased (Tang et al. 2020) and with-replacement (Dodge et al. 2019) estimates side by
    side, and the percentile-bootstrap band of the unbiased one at ``level``."""
    curve = expected_max_curve(values, maximize, ks, "unbiased")
    dodge = expected_max_curve(values, maximize, list(curve), "dodge")
    bands = bootstrap_expected_max_curve(values, list(curve), n_boot, seed, level, maximize, "unbiased")
    return [{"k": k, "unbiased": curve[k], "dodge": dodge[k], "low": bands[k][0], "high": bands[k][1]}
            for k in curve]


# --------------------------------------------------------------------------- best of k vs best of k


@dataclass(frozen=True)
class BeatProbability:
    """P(best of k trials of A beats best of k of B), ties counting half, with its band.

    ``p`` is exact on the arms' trials; ``low``/``high`` the percentile-bootstrap band at
    ``level`` (NaN when n_boot = 0). ``float(result)`` is ``p``."""

    p: float
    low: float
    high: float
    k: int
    level: float
    n_a: int
    n_b: int
    replace: bool
    n_boot: int

    def __float__(self) -> float:
        return self.p


def _beat(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """sum_j P(A's best = u_j) * [P(B's best < u_j) + P(B's best = u_j)/2] along the last axis,
    from the CDFs of both bests on the common grid u_1 < ... < u_m."""
    pad = np.zeros(ga.shape[:-1] + (1,))
    ga_prev = np.concatenate([pad, ga[..., :-1]], axis=-1)
    gb_prev = np.concatenate([pad, gb[..., :-1]], axis=-1)
    return np.sum((ga - ga_prev) * 0.5 * (gb_prev + gb), axis=-1)


_BOOT_CELLS = 1 << 21  # about 2M grid cells per block of resamples (tens of MB)


def _boot_counts(pos: np.ndarray, m: int, n_boot: int, rng) -> np.ndarray:
    """Per resample (rows), how many of the n resampled trials fall on each grid value."""
    n = pos.size
    flat = pos[rng.integers(0, n, size=(n_boot, n))] + m * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * m).reshape(n_boot, m)


def p_best_of_k_beats(a: Sequence[float], b: Sequence[float], k: int, n_boot: int = 2000, seed: int | None = 0,
                      maximize: bool = True, level: float = 0.95, replace: bool = False) -> BeatProbability:
    """P(the best of k random trials of A beats the best of k random trials of B).

    Ties count half, so P(A beats B) + P(B beats A) = 1. The k trials of each arm are drawn
    from its finished trials, without replacement by default (the two-sample U-statistic:
    the average over all k-subsets of A and of B, an unbiased estimate of the probability
    for independent new trials, consistent with Tang et al. 2020) or with replacement
    (``replace=True``, the empirical-distribution view of Dodge et al. 2019).

    Computed exactly, not by simulation: on the common grid of values u_1 < ... < u_m
    (turned so larger is better), the best of k of an arm with n trials, c(u) of them <= u,
    has CDF G(u) = C(c(u), k)/C(n, k) (with replacement (c(u)/n)^k), and

        P = sum_j [G_A(u_j) - G_A(u_{j-1})] * [G_B(u_{j-1}) + G_B(u_j)] / 2.

    A Monte-Carlo of k draws from each arm converges to this number. The band: both arms
    are resampled with replacement ``n_boot`` times (generator seeded with ``seed``) and P
    recomputed; the percentile band at ``level`` says how much P depends on which trials
    happened to run (Efron & Tibshirani 1993, ch. 13). Requires 1 <= k <= min(n_A, n_B).
    """
    maximize = _bool(maximize)
    replace = _bool(replace, "replace")
    level = _level(level)
    n_boot = _int(n_boot, "n_boot", 0)
    xa = _oriented(_values(a, "a"), maximize)
    xb = _oriented(_values(b, "b"), maximize)
    k = _k(k, xa.size, "arm A")
    k = _k(k, xb.size, "arm B")
    grid = np.unique(np.concatenate([xa, xb]))
    m = grid.size
    pa, pb = np.searchsorted(grid, xa), np.searchsorted(grid, xb)
    ta, tb = _max_cdf_table(xa.size, k, replace), _max_cdf_table(xb.size, k, replace)
    p = float(_beat(ta[np.cumsum(np.bincount(pa, minlength=m))], tb[np.cumsum(np.bincount(pb, minlength=m))]))
    low = high = math.nan
    if n_boot:
        rng = np.random.default_rng(seed)
        rows = max(1, _BOOT_CELLS // max(m, xa.size, xb.size))  # resamples per block: bounded memory
        boot = []
        for start in range(0, n_boot, rows):
            r = min(rows, n_boot - start)
            ca = np.cumsum(_boot_counts(pa, m, r, rng), axis=1)
            cb = np.cumsum(_boot_counts(pb, m, r, rng), axis=1)
            boot.append(_beat(ta[ca], tb[cb]))
        low, high = _band(np.concatenate(boot), level, True)
    return BeatProbability(p=min(1.0, max(0.0, p)), low=low, high=high, k=k, level=level, n_a=xa.size,
                           n_b=xb.size, replace=replace, n_boot=n_boot)


def pairwise_p_best_of_k(arms: Mapping[str, Sequence[float]], ks: Iterable[int] = (1, 2, 4, 8, 16),
                         n_boot: int = 2000, seed: int | None = 0, maximize: bool = True, level: float = 0.95,
                         replace: bool = False) -> dict[tuple[str, str], dict[int, BeatProbability]]:
    """For each pair of arms (A before B in the mapping's order), {k: P(best of k of A beats
    best of k of B)} via ``p_best_of_k_beats``, at each k of ``ks`` not beyond either arm's
    trials (others left out). P(B beats A) = 1 - P(A beats B)."""
    if not isinstance(arms, Mapping) or len(arms) < 2:
        raise ValueError("need at least two arms, as a mapping of arm name -> trial values")
    ks = list(ks)
    names = list(arms)
    sizes = {name: _values(arms[name], f"arm {name!r}").size for name in names}
    out: dict[tuple[str, str], dict[int, BeatProbability]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[(a, b)] = {k: p_best_of_k_beats(arms[a], arms[b], k, n_boot, seed, maximize, level, replace)
                           for k in _ks(ks, min(sizes[a], sizes[b]))}
    return out


# --------------------------------------------------------------------------- seed re-runs


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of one arm's seed re-runs.

    std = sqrt( sum_i (x_i - mean)^2 / (n - 1) ) (Bessel's correction, ddof=1). With a
    single value the spread is unknown: std is NaN, deliberately not 0, so one run is never
    mistaken for a noiseless one.
    """
    x = _values(values)
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else math.nan)


@dataclass(frozen=True)
class PairedDifference:
    """The mean of (A - B) over common seeds, with its Student-t confidence interval."""

    mean: float          # mean over pairs of a[seed] - b[seed]
    std: float           # sample std of the differences (ddof=1); NaN for one pair
    se: float            # std / sqrt(n_pairs)
    low: float           # CI at ``level``: mean -/+ t_{(1+level)/2, n-1} * se; -/+inf for one pair
    high: float
    level: float
    n_pairs: int
    dof: int             # n_pairs - 1
    t_quantile: float
    p_value: float       # two-sided paired t-test of mean == 0; NaN for one pair
    seeds: tuple         # the paired seeds, in order
    unpaired: tuple      # seeds present in only one arm, left out

    @property
    def ci(self) -> tuple[float, float]:
        return (self.low, self.high)


def _by_seed(values: Mapping, name: str) -> dict:
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} must be a mapping seed -> value, got {type(values).__name__}")
    out = {}
    for seed, v in values.items():
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{seed!r}] = {v!r} is not a number") from None
        if not math.isfinite(fv):
            raise ValueError(f"{name}[{seed!r}] = {v!r} is not finite: drop failed runs before calling")
        out[seed] = fv
    return out


def paired_difference(a_by_seed: Mapping[Hashable, float], b_by_seed: Mapping[Hashable, float],
                      level: float = 0.95) -> PairedDifference:
    """Paired difference of two arms' seed re-runs, paired by seed id.

    Only seeds present in both mappings are used (``seeds``; the others are listed in
    ``unpaired``). With d_s = a[s] - b[s] over the n pairs (Student 1908; e.g. Wasserman,
    "All of Statistics", sec. 10.4 on paired comparisons):

        mean = (1/n) sum_s d_s,  std = sqrt( sum_s (d_s - mean)^2 / (n-1) ),  se = std / sqrt(n),
        CI = mean -/+ t_{(1+level)/2, n-1} * se,  p = 2 * P(T_{n-1} > |mean| / se).

    Assumes the differences are roughly normal and independent across seeds; with n = 1 the
    spread is unknown (std, p NaN, CI (-inf, inf)). When all differences are equal (std 0)
    the CI is the point itself and p is 0 (or 1 if the differences are all 0). No common
    seed: ValueError.
    """
    level = _level(level)
    a, b = _by_seed(a_by_seed, "a_by_seed"), _by_seed(b_by_seed, "b_by_seed")
    common = [s for s in a if s in b]
    if not common:
        raise ValueError(f"no seed in common between the arms (A: {sorted(map(repr, a))}, "
                         f"B: {sorted(map(repr, b))}): re-run both arms with the same seed list")
    try:
        common = sorted(common)
    except TypeError:
        pass  # mixed seed types: keep A's order
    unpaired = tuple(s for s in list(a) + list(b) if s not in a or s not in b)
    d = np.array([a[s] - b[s] for s in common])
    n = d.size
    mean = float(d.mean())
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, -math.inf, math.inf, level, 1, 0, math.nan, math.nan,
                                tuple(common), unpaired)
    from scipy.stats import t as student_t

    std = float(d.std(ddof=1))
    se = std / math.sqrt(n)
    q = float(student_t.ppf(0.5 + level / 2.0, n - 1))
    if se > 0:
        p = float(2.0 * student_t.sf(abs(mean) / se, n - 1))
    else:
        p = 1.0 if mean == 0 else 0.0
    return PairedDifference(mean, std, se, mean - q * se, mean + q * se, level, n, n - 1, q, p,
                            tuple(common), unpaired)


def resolution(val_size: int) -> float:
    """The metric's granularity: one example of an evaluation set of ``val_size`` examples,
    1 / val_size (accuracy moves in steps of this; a smaller gap cannot be measured)."""
    return 1.0 / _int(val_size, "val_size", 1)


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Verdict:
    """Which arm is better, and the numbers behind it. See ``verdict`` for the rules."""

    label: str                     # one of LABELS: "A better", "B better", "tie", "not enough evidence"
    winner: str | None             # the better arm's name; None for a tie or not enough evidence
    a_name: str
    b_name: str
    metric: str
    maximize: bool
    difference: float              # mean over paired seeds of A - B, in the metric's units
    ci: tuple[float, float]        # confidence interval of ``difference`` at ``level``
    level: float
    p_value: float                 # paired t-test, two-sided
    n_pairs: int
    resolution: float              # one example of the evaluation set (0: not given)
    margin: float                  # the smallest gap that counts: max(resolution, min_effect)
    a_mean: float                  # mean and sample std over the paired seeds
    a_std: float
    b_mean: float
    b_std: float
    reason: str                    # the rule that decided, in words
    probability: float | None = None                     # P(best of k of A beats best of k of B)
    probability_band: tuple[float, float] | None = None  # its bootstrap band at ``level``
    k: int | None = None


def _close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15)


def verdict(a_by_seed: Mapping[Hashable, float], b_by_seed: Mapping[Hashable, float], *,
            names: tuple[str, str] = ("A", "B"), maximize: bool = True, resolution: float | None = None,
            min_effect: float = 0.0, level: float = 0.95, metric: str = "validation value",
            a_trials: Sequence[float] | None = None, b_trials: Sequence[float] | None = None,
            k: int | None = None, n_boot: int = 2000, seed: int | None = 0) -> Verdict:
    """Decide between two arms from their seed re-runs (same seed list; paired by seed).

    Let g be the mean paired gap in A's favour (A - B; B - A when lower is better), [lo, hi]
    its ``level`` Student-t confidence interval in the same orientation (``paired_difference``),
    and the margin m = max(resolution, min_effect): the smallest gap that counts, by default
    one example of the evaluation set (``resolution(val_size)``; 0 when not given). Rules, in
    order:

    1. "A better" when lo > 0 (the CI excludes 0: the gap is larger than the seed noise) AND
       g >= m (the gap is at least one evaluation example).
    2. "B better" the mirror: hi < 0 AND -g >= m.
    3. "tie" when the whole CI lies within [-m, m]: whatever the true gap is, it is below
       what the metric resolves (or below ``min_effect``). With m = 0 only identical
       results tie.
    4. "not enough evidence" otherwise: the CI includes 0 and reaches beyond the margin
       (more seeds would narrow it), or a gap that is real but under the margin while the
       CI still reaches beyond it, or a single pair (no estimate of the noise).

    So "tie" claims the arms are equal within the margin; "not enough evidence" says the data
    cannot tell. How sure: the CI level and the paired t-test p-value go into the result and
    the paragraph (``render_verdict``).

    When the arms' search trials are given (``a_trials``, ``b_trials`` and ``k``), the result
    also carries P(best of k trials of A beats best of k of B) with its bootstrap band
    (``p_best_of_k_beats``, seeded with ``seed``). It does not change the label: it answers a
    different question (which search finds better values at a budget of k trials) than the
    re-runs (is the chosen setting better); the paragraph says when the two disagree.
    """
    maximize = _bool(maximize)
    level = _level(level)
    if not (isinstance(names, (tuple, list)) and len(names) == 2 and all(isinstance(s, str) for s in names)):
        raise ValueError(f"names must be two strings (A's and B's), got {names!r}")
    if names[0] == names[1]:
        raise ValueError(f"the two arms need different names, got {names!r}")
    try:
        res = 0.0 if resolution is None else float(resolution)
    except (TypeError, ValueError):
        res = math.nan
    if not (math.isfinite(res) and res >= 0):
        raise ValueError(f"resolution must be a finite number >= 0 (e.g. resolution(val_size)), got {resolution!r}")
    if isinstance(min_effect, (bool, np.bool_)) or not isinstance(min_effect, numbers.Real) \
            or not (math.isfinite(min_effect) and min_effect >= 0):
        raise ValueError(f"min_effect must be a finite number >= 0, got {min_effect!r}")
    margin = max(res, float(min_effect))

    pd = paired_difference(a_by_seed, b_by_seed, level)
    a = _by_seed(a_by_seed, "a_by_seed")
    b = _by_seed(b_by_seed, "b_by_seed")
    a_mean, a_std = mean_std([a[s] for s in pd.seeds])
    b_mean, b_std = mean_std([b[s] for s in pd.seeds])

    sign = 1.0 if maximize else -1.0
    g = sign * pd.mean
    lo, hi = sorted((sign * pd.low, sign * pd.high))
    name_a, name_b = names
    if lo > 0 and (g > margin or _close(g, margin)):
        label, winner = "A better", name_a
        reason = f"the {level:.0%} CI excludes 0 and the mean gap is at least the margin"
    elif hi < 0 and (-g > margin or _close(-g, margin)):
        label, winner = "B better", name_b
        reason = f"the {level:.0%} CI excludes 0 and the mean gap is at least the margin"
    elif (lo > -margin or _close(lo, -margin)) and (hi < margin or _close(hi, margin)):
        label, winner = "tie", None
        reason = f"the whole {level:.0%} CI lies within the margin"
    else:
        label, winner = "not enough evidence", None
        if pd.n_pairs < 2:
            reason = "a single paired seed gives no estimate of the noise"
        elif lo <= 0 <= hi:
            reason = f"the {level:.0%} CI includes 0 and reaches beyond the margin"
        else:
            reason = "the gap is real but smaller than the margin, and the CI reaches beyond the margin"

    probability = band = None
    if a_trials is not None or b_trials is not None or k is not None:
        if a_trials is None or b_trials is None or k is None:
            raise ValueError("a_trials, b_trials and k go together: give all three or none")
        bp = p_best_of_k_beats(a_trials, b_trials, k, n_boot=n_boot, seed=seed, maximize=maximize, level=level)
        probability, band = bp.p, (bp.low, bp.high)

    return Verdict(label=label, winner=winner, a_name=name_a, b_name=name_b, metric=metric, maximize=maximize,
                   difference=pd.mean, ci=(pd.low, pd.high), level=level, p_value=pd.p_value, n_pairs=pd.n_pairs,
                   resolution=res, margin=margin, a_mean=a_mean, a_std=a_std, b_mean=b_mean, b_std=b_std,
                   reason=reason, probability=probability, probability_band=band, k=k)


def _f(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _ms(mean: float, std: float) -> str:
    return f"{_f(mean)}" + ("" if math.isnan(std) else f" ± {_f(std)}")


def _examples(gap: float, res: float) -> str:
    return f" ({abs(gap) / res:.1f} examples at {_f(res)} per example)" if res > 0 else ""


def _p(p: float) -> str:
    if math.isnan(p):
        return "no t-test with one pair"
    return "paired t-test p < 0.0001" if p < 1e-4 else f"paired t-test p = {p:.2g}"


def render_verdict(v: Verdict) -> str:
    """One plain-English paragraph: the verdict, the numbers behind it, and how sure it is."""
    A, B = v.a_name, v.b_name
    lvl = f"{v.level:.0%}"
    direction = "higher is better" if v.maximize else "lower is better"
    ci = f"{_f(v.ci[0])} to {_f(v.ci[1])}" if math.isfinite(v.ci[0]) else "unbounded"
    seeds = f"{v.n_pairs} paired seed{'s' if v.n_pairs != 1 else ''}"
    arms = f"{A} {_ms(v.a_mean, v.a_std)}, {B} {_ms(v.b_mean, v.b_std)} (mean ± std)"
    diff = f"{A} − {B} = {v.difference:+.4g}{_examples(v.difference, v.resolution)}"
    margin = (f"one example ({_f(v.resolution)})" if v.margin == v.resolution and v.resolution > 0
              else f"{_f(v.margin)}")
    if v.label in ("A better", "B better"):
        loser = B if v.winner == A else A
        counts = f", and it is at least {margin}, the smallest gap that counts" if v.margin > 0 else ""
        text = (f"{v.winner} is better than {loser} on {v.metric} ({direction}). Over {seeds}: {arms}; "
                f"{diff}. The {lvl} confidence interval of the gap is {ci} ({_p(v.p_value)}): it excludes "
                f"zero, so at {lvl} confidence the gap is too large to be seed-to-seed noise{counts}.")
    elif v.label == "tie":
        if v.margin > 0:
            why = (f"The whole {lvl} confidence interval of the gap, {ci} ({_p(v.p_value)}), lies within "
                   f"±{margin}, the smallest gap that counts: at {lvl} confidence any real difference is "
                   f"smaller than that.")
        else:
            why = "The two arms gave the same value on every paired seed."
        text = f"{A} and {B} tie on {v.metric} ({direction}). Over {seeds}: {arms}; {diff}. {why}"
    else:
        beyond = f" and reaches beyond ±{margin}, the smallest gap that counts" if v.margin > 0 else ""
        if v.n_pairs < 2:
            why = ("With a single paired seed there is no estimate of the seed-to-seed noise; re-run both "
                   "arms with more seeds.")
        elif v.ci[0] <= 0 <= v.ci[1]:
            why = (f"The {lvl} confidence interval of the gap, {ci} ({_p(v.p_value)}), includes zero{beyond}: "
                   f"either arm could be better; more seeds would narrow it.")
        else:
            why = (f"The {lvl} confidence interval of the gap, {ci} ({_p(v.p_value)}), excludes zero, but the "
                   f"mean gap is below {margin}, the smallest gap that counts, while the interval reaches beyond "
                   f"it; more seeds would tell a tie from a real difference.")
        text = (f"There is not enough evidence to tell {A} and {B} apart on {v.metric} ({direction}). "
                f"Over {seeds}: {arms}; {diff}. {why}")
    if v.probability is not None:
        lo, hi = v.probability_band
        band = "" if math.isnan(lo) else f" ({lvl} bootstrap band {lo:.2f} to {hi:.2f})"
        text += (f" In the search, the best of {v.k} trials of {A} beats the best of {v.k} of {B} with "
                 f"probability {v.probability:.2f}{band}.")
        if v.winner is not None and not math.isnan(lo):
            against = hi < 0.5 if v.winner == A else lo > 0.5
            if against:
                text += (f" That points the other way: {v.winner}'s chosen setting wins its re-runs, but its "
                         f"search does not find better values at a budget of {v.k} trials.")
    return text
