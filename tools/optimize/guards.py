"""Overfitting guards shown for every `chimera optimize` study (issue 15).

Two numbers that say how much of a study's best result is luck from trying many parameter
sets (docs/OPTIMIZE_GUARDS.md says the same at more length, with the references):

- **Deflated Sharpe ratio** (Bailey & López de Prado 2014): the probability that the true
  Sharpe ratio of the selected trial is above the best one N trials of pure noise would
  show, ``PSR(SR0)`` with
  ``SR0 = sqrt(Var[SR_trials]) * ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))``
  and ``PSR(SR*) = Φ((SR - SR*) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR²))``.
- **Probability of backtest overfitting** by combinatorially symmetric cross-validation
  (Bailey, Borwein, López de Prado & Zhu 2015): over every way of taking half of S time
  blocks as the in-sample half, how often the in-sample best trial ranks at or below the
  median out of sample.

Conventions (the tests hold both functions to independent scipy / plain-loop versions):

- Sharpe ratios here are **per period** (per bar), not annualised: ``mean / std`` with
  ``std`` the sample standard deviation (ddof=1), as ``tools.backtest.metrics.sharpe``
  before its ``sqrt(periods_per_year)``. ``trial_sharpes`` must be in the same units
  (divide annualised ratios by ``sqrt(periods_per_year)``).
- Skewness and kurtosis are the moment estimates ``m3 / m2^1.5`` and ``m4 / m2²``
  (``m_k`` the k-th central sample moment; kurtosis not excess, 3 for a normal), as
  scipy.stats ``skew`` / ``kurtosis(fisher=False)`` with their default ``bias=True``.
- ``Var[SR_trials]`` is the sample variance (ddof=1) of every trial's Sharpe ratio, the
  selected one included; with a single trial there is no selection and ``SR0 = 0``.
- CSCV: the oldest ``T mod S`` rows are dropped so the S blocks are equal. The in-sample
  pick is the first trial of highest in-sample Sharpe (``argmax``); its out-of-sample rank
  is 1 (worst) .. N (best), tied trials sharing their average rank (scipy ``rankdata``'s
  "average"); ``ω = rank / (N + 1)`` lies in (0, 1), ``λ = ln(ω / (1 - ω))``, and a
  combination counts as overfit when ``λ <= 0`` (decided exactly as ``2 rank <= N + 1``).
  A half in which a trial's returns are constant (a trial out of the market there) gives
  it a Sharpe of 0 for constant zeros, else +inf / -inf by the constant's sign, so such a
  trial still ranks; a trial constant over all T rows is refused.
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import structlog

from chimera_core.errors import ChimeraError

log = structlog.get_logger(__name__)

FloatArray = npt.NDArray[np.float64]

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()
_EPS = float(np.finfo(np.float64).eps)
# CSCV works on this many (combination x trial) cells at a time: each temporary stays
# ~0.5 MB (in cache, measured ~2x faster than one 20 MB pass) and memory is bounded for any N.
_CHUNK_CELLS = 1 << 16


class GuardInputError(ChimeraError, ValueError):
    """Bad input to an overfitting guard; the message names the argument and the fix.
    (Also a ValueError, like ``BacktestInputError``.)"""


class GuardResult(msgspec.Struct, frozen=True):
    """The deflated Sharpe ratio of a study's selected trial.

    ``value`` is the probability in [0, 1]; ``passed`` is ``value >= threshold`` (None when
    no threshold is given); ``detail`` holds the figures it came from (JSON-ready floats)."""

    value: float
    passed: bool | None
    detail: dict[str, Any]


class PboResult(msgspec.Struct, frozen=True):
    """The probability of backtest overfitting of a study, by CSCV.

    ``logits`` are the λ of each combination in ``itertools.combinations`` order;
    ``passed`` is ``pbo <= threshold`` (None when no threshold is given; also in
    ``detail``)."""

    pbo: float
    logits: list[float]
    n_combinations: int
    detail: dict[str, Any]
    passed: bool | None = None


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """SR0: the expected maximum Sharpe ratio of ``n_trials`` independent trials whose true
    Sharpe is 0 and whose estimated ratios have ``variance`` (False Strategy theorem).
    One trial selects nothing: 0."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise GuardInputError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if not (math.isfinite(variance) and variance >= 0):
        raise GuardInputError(f"variance must be finite and >= 0, got {variance!r}")
    if n_trials == 1:
        return 0.0
    spread = (1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / n_trials) + EULER_GAMMA * (
        _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e))
    )
    return math.sqrt(variance) * spread


def probabilistic_sharpe(
    sr: float, sr_benchmark: float, n_obs: int, skew: float, kurtosis: float
) -> float:
    """PSR: the probability that the true per-period Sharpe ratio exceeds ``sr_benchmark``,
    given ``sr`` estimated from ``n_obs`` returns of this skewness and (non-excess)
    kurtosis (Bailey & López de Prado 2012)."""
    if n_obs < 2:
        raise GuardInputError(f"n_obs must be >= 2 returns, got {n_obs}")
    spread2 = 1 - skew * sr + (kurtosis - 1) / 4 * sr * sr
    if not spread2 > 0:
        # Only a two-valued series at one particular Sharpe gets here (kurt >= 1 + skew²).
        raise GuardInputError(
            f"the Sharpe ratio's variance 1 - skew*SR + (kurt-1)/4*SR² is {spread2!r} "
            f"(SR={sr!r}, skew={skew!r}, kurtosis={kurtosis!r}): the returns are too "
            "degenerate (two values) for a probabilistic Sharpe ratio"
        )
    z = (sr - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(spread2)
    return _NORMAL.cdf(z)


def deflated_sharpe(
    returns: FloatArray,
    trial_sharpes: FloatArray,
    *,
    periods_per_year: float,
    threshold: float | None = None,
) -> GuardResult:
    """Deflated Sharpe ratio of ``returns`` (the selected trial's per-period returns, T of
    them) for the ``trial_sharpes`` of every trial tried (per-period Sharpe ratios, the
    selected one included). ``periods_per_year`` only annualises the figures in
    ``detail``; ``threshold`` (a probability, e.g. 0.95) sets ``passed``."""
    r = _finite_1d(returns, "returns")
    trials = _finite_1d(trial_sharpes, "trial_sharpes")
    if r.size < 2:
        raise GuardInputError(f"returns needs at least 2 values for a Sharpe ratio, got {r.size}")
    if trials.size < 1:
        raise GuardInputError("trial_sharpes is empty: pass the Sharpe ratio of every trial tried")
    ppy = _positive(periods_per_year, "periods_per_year")
    _check_probability(threshold, "threshold")

    n_obs = int(r.size)
    mean = float(r.mean())
    dev = r - mean
    m2 = float(np.mean(dev * dev))
    std = math.sqrt(m2 * n_obs / (n_obs - 1))
    # A constant series has no Sharpe ratio; rounding can leave it a std of a few ulps.
    if np.ptp(r) == 0 or std <= 8 * _EPS * abs(mean):
        raise GuardInputError(
            f"returns have zero variance (all {r[0]!r}): a Sharpe ratio is undefined; "
            "a trial that never trades has nothing to deflate"
        )
    sr = mean / std
    skew = float(np.mean(dev**3)) / m2**1.5
    kurt = float(np.mean(dev**4)) / (m2 * m2)
    n_trials = int(trials.size)
    variance = float(trials.var(ddof=1)) if n_trials > 1 else 0.0
    sr0 = expected_max_sharpe(n_trials, variance)
    value = probabilistic_sharpe(sr, sr0, n_obs, skew, kurt)
    passed = None if threshold is None else value >= threshold
    root = math.sqrt(ppy)
    detail: dict[str, Any] = {
        "sr": sr,
        "sr_annualised": sr * root,
        "sr0": sr0,
        "sr0_annualised": sr0 * root,
        "psr_zero": probabilistic_sharpe(sr, 0.0, n_obs, skew, kurt),
        "n_trials": n_trials,
        "T": n_obs,
        "skew": skew,
        "kurtosis": kurt,
        "trial_sharpe_variance": variance,
        "periods_per_year": ppy,
        "threshold": threshold,
    }
    log.info(
        "deflated_sharpe",
        dsr=value,
        sr_annualised=sr * root,
        sr0_annualised=sr0 * root,
        n_trials=n_trials,
        T=n_obs,
        passed=passed,
    )
    return GuardResult(value=value, passed=passed, detail=detail)


def pbo_cscv(perf: FloatArray, *, n_splits: int = 16, threshold: float | None = None) -> PboResult:
    """Probability of backtest overfitting of ``perf``, a T x N matrix of per-period
    returns (rows in time order, one column per trial), by CSCV over ``n_splits`` (S, even)
    blocks: all C(S, S/2) in-sample / out-of-sample halves. ``threshold`` (the highest PBO
    accepted, e.g. 0.5) sets ``passed``."""
    m = np.asarray(perf, dtype=np.float64)
    if m.ndim != 2:
        raise GuardInputError(
            f"perf must be a 2-D T x N matrix (rows = periods, columns = trials), "
            f"got shape {m.shape}"
        )
    n_rows, n_trials = m.shape
    if n_trials < 2:
        raise GuardInputError(
            f"perf has {n_trials} trial column(s): PBO needs at least 2 trials to select from"
        )
    if isinstance(n_splits, bool) or not isinstance(n_splits, int | np.integer):
        raise GuardInputError(f"n_splits must be an even integer >= 2, got {n_splits!r}")
    s = int(n_splits)
    if s < 2 or s % 2:
        raise GuardInputError(
            f"n_splits must be an even integer >= 2 (the halves are S/2 blocks each), got {s}"
        )
    block = n_rows // s
    if block < 1 or block * s // 2 < 2:
        raise GuardInputError(
            f"perf has {n_rows} rows, too few for n_splits={s} blocks: need at least "
            f"{max(s, 4)} rows (each half >= 2 rows); use fewer splits or more history"
        )
    _check_probability(threshold, "threshold")
    bad = ~np.isfinite(m)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise GuardInputError(
            f"perf has {int(bad.sum())} NaN/inf value(s), first at row {row}, trial {col} "
            f"({m[row, col]!r}): returns must be finite"
        )
    flat = np.flatnonzero(np.ptp(m, axis=0) == 0)
    if flat.size:
        raise GuardInputError(
            f"perf trial column(s) {flat[:10].tolist()} have zero variance over all "
            f"{n_rows} rows (a Sharpe ratio is undefined): drop them, e.g. trials that never trade"
        )

    dropped = n_rows - block * s
    raw = m[dropped:].reshape(s, block, n_trials)
    # Centre each trial before summing squares, so the variance from sums loses nothing.
    centre = m[dropped:].mean(axis=0)
    blocks = raw - centre
    s1 = blocks.sum(axis=1)
    s2 = (blocks * blocks).sum(axis=1)
    if not (np.isfinite(s1).all() and np.isfinite(s2).all()):
        raise GuardInputError("perf values are too large: their squares overflow a float")
    sums = np.hstack([s1, s2])  # one product per half for both sums
    # A trial out of the market for a whole half has constant (zero) returns there; sums
    # would give it a Sharpe of rounding noise, so such halves are found exactly, from the
    # blocks' min and max, for the trials with any constant block.
    block_min = raw.min(axis=1)
    block_max = raw.max(axis=1)
    maybe_flat = np.flatnonzero((block_min == block_max).any(axis=0))
    block_min = block_min[:, maybe_flat]
    block_max = block_max[:, maybe_flat]

    combos = np.array(list(itertools.combinations(range(s), s // 2)), dtype=np.intp)
    n_comb = len(combos)
    train = np.zeros((n_comb, s))
    train[np.arange(n_comb)[:, None], combos] = 1.0
    complements = np.argsort(train, axis=1, kind="stable")[:, : s // 2]  # the 0s, in order
    half = block * (s // 2)

    twice_rank = np.empty(n_comb, dtype=np.int64)
    is_sel = np.empty(n_comb)
    oos_sel = np.empty(n_comb)
    step = max(1, _CHUNK_CELLS // n_trials)
    for lo in range(0, n_comb, step):
        ind = train[lo : lo + step]
        sums_in = ind @ sums
        sums_out = (1 - ind) @ sums
        sr_in = _half_sharpe(sums_in[:, :n_trials], sums_in[:, n_trials:], half, centre)
        sr_out = _half_sharpe(sums_out[:, :n_trials], sums_out[:, n_trials:], half, centre)
        if maybe_flat.size:
            for sr, picked in (
                (sr_in, combos[lo : lo + step]),
                (sr_out, complements[lo : lo + step]),
            ):
                low = block_min[picked].min(axis=1)
                flat = low == block_max[picked].max(axis=1)
                sub = sr[:, maybe_flat]
                sub[flat] = np.where(low[flat] == 0, 0.0, np.copysign(np.inf, low[flat]))
                sr[:, maybe_flat] = sub
        rows = np.arange(len(ind))
        pick = np.argmax(sr_in, axis=1)
        chosen = sr_out[rows, pick][:, None]
        below = (sr_out < chosen).sum(axis=1)
        ties = (sr_out == chosen).sum(axis=1)  # the pick itself included
        # average rank = below + (ties + 1) / 2, kept doubled to stay an integer
        twice_rank[lo : lo + step] = 2 * below + ties + 1
        is_sel[lo : lo + step] = sr_in[rows, pick]
        oos_sel[lo : lo + step] = chosen[:, 0]

    omega = twice_rank / (2.0 * (n_trials + 1))
    logits = np.log(omega / (1 - omega))
    pbo = float(np.mean(twice_rank <= n_trials + 1))
    passed = None if threshold is None else pbo <= threshold
    finite_is = is_sel[np.isfinite(is_sel)]
    finite_oos = oos_sel[np.isfinite(oos_sel)]
    detail: dict[str, Any] = {
        "n_trials": int(n_trials),
        "n_splits": s,
        "T": int(n_rows),
        "rows_used": int(block * s),
        "rows_dropped": int(dropped),
        "block_rows": int(block),
        "logit_mean": float(logits.mean()),
        "logit_median": float(np.median(logits)),
        # How the in-sample pick fares out of sample (per-period Sharpe ratios).
        "is_sharpe_selected_mean": float(finite_is.mean()) if finite_is.size else None,
        "oos_sharpe_selected_mean": float(finite_oos.mean()) if finite_oos.size else None,
        "prob_oos_loss": float(np.mean(oos_sel < 0)),
        "threshold": threshold,
        "passed": passed,
    }
    log.info(
        "pbo_cscv",
        pbo=pbo,
        n_trials=int(n_trials),
        n_splits=s,
        n_combinations=n_comb,
        rows_dropped=int(dropped),
        passed=passed,
    )
    return PboResult(
        pbo=pbo, logits=logits.tolist(), n_combinations=n_comb, detail=detail, passed=passed
    )


def _half_sharpe(s1: FloatArray, s2: FloatArray, n: int, centre: FloatArray) -> FloatArray:
    """Per-period Sharpe (ddof=1) of each (combination, trial) from the sums of its centred
    returns and of their squares over ``n`` rows; a constant half: ±inf by the mean's sign,
    or 0 for a zero mean."""
    mean = s1 / n
    std = s2 - s1 * mean
    np.maximum(std, 0.0, out=std)
    std /= n - 1
    np.sqrt(std, out=std)
    mean += centre
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = mean / std  # x / 0 is ±inf already; only 0 / 0 needs fixing
    flat = std == 0
    if flat.any():
        out[flat & (mean == 0)] = 0.0
    return out


def _finite_1d(values: FloatArray, name: str) -> FloatArray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise GuardInputError(f"{name} must be a 1-D array, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise GuardInputError(
            f"{name} has {bad.size} NaN/inf value(s), first at index {int(bad[0])} "
            f"({a[bad[0]]!r}): values must be finite"
        )
    return a


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise GuardInputError(f"{name} must be a number > 0, got {value!r}")
    if not math.isfinite(value):
        raise GuardInputError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_probability(value: float | None, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise GuardInputError(f"{name} must be a probability in [0, 1] or None, got {value!r}")
