"""O(1)-per-bar rolling versions of the econophysics kernels, for the fast backtest.

``chimera_core.physics`` recomputes each window at every bar (O(window) per bar, ~2.7M
bars/s for the default strategy's three windows). These loops keep running sums instead
and give the same values as ``physics.*_series`` (and scipy / numpy) within 1e-9
(relative and absolute), so a sweep over a million bars costs milliseconds.

How the sums stay within 1e-9:

- Sums are kept on values shifted by an *anchor* (a close of the window at the last exact
  recompute), as ``physics`` shifts by the window's first close, so large prices lose
  little to cancellation.
- Every update also adds to a running bound on the sums' rounding error (a few ulps of
  the terms it touched). When that bound exceeds ``TOLERANCE`` (1e-11) of the quantity
  the kernel returns — a spread collapsing after a wild bar left the window, a window
  gone flat, a long drift away from the anchor — or every ``REANCHOR`` bars, the window is
  recomputed exactly, two-pass, the way ``physics`` computes it, and the bound restarts
  at zero. On real prices that is rare; on adversarial series it degrades to O(window)
  per bar, never to a wrong value.
- A window whose values are all equal is recomputed exactly too (its spread is exactly
  zero, never rounding noise), so a flat window gives z = 0, a NEUTRAL band and zero
  volatility, as the live kernels do.

The loops are plain ``njit`` functions over arrays (``*_loop(…, out)``) so other kernels
can call them; the checked wrappers (``rolling_energy`` …) mirror ``physics.*_series``:
same arguments, same NaN warm-up, same output dtypes.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from chimera_core import physics
from chimera_core.errors import ChimeraError

FloatArray = npt.NDArray[np.float64]
Int8Array = npt.NDArray[np.int8]

EPS = float(np.finfo(np.float64).eps)
# Relative error bound (of the value returned) above which a window is recomputed exactly.
TOLERANCE = 1e-11
# Exact recompute at least this often, so the anchor follows the price.
REANCHOR = 1024
# A band code whose displacement is this close (relative to the std) to the band's edge is
# taken from physics.band_at itself, so rounding can never flip it.
CODE_GUARD = 1e-9


class BacktestInputError(ChimeraError, ValueError):
    """Bad input to a backtest kernel or driver; the message names the argument and the fix.
    (Also a ValueError, like the ``physics`` wrappers' errors it stands beside.)"""


# Each kernel is a *step*: ``value, state = X_step(arrays, end, n, state)`` gives the
# window ending at ``end`` from the state of the window ending at ``end - 1``. A fresh
# state (``X_state()``) forces an exact recompute, so the first call may be at any end.
# States are tuples, so an inlined step keeps its sums in registers.

# ---------------------------------------------------------------------------------------
# energy: least-squares slope of the last n closes / their mean x 100
# ---------------------------------------------------------------------------------------

EnergyState = tuple[float, float, float, float, float, int]


@numba.njit(cache=True, inline="always")
def energy_state() -> EnergyState:
    """(anchor, s1, s2, s1 error bound, s2 error bound, bars since the exact recompute)."""
    return 0.0, 0.0, 0.0, 0.0, 0.0, REANCHOR


@numba.njit(cache=True, error_model="numpy", inline="always")
def energy_step(
    close: FloatArray, end: int, n: int, state: EnergyState
) -> tuple[float, EnergyState]:
    """Energy of ``close[end-n+1 : end+1]`` (end >= n - 1).

    s1 = sum of d_k, s2 = sum of k * d_k over the window (k = 0..n-1, d = close - anchor);
    sxy = s2 - (n-1)/2 * s1; sliding one bar: s2' = s2 - (s1 - d_old) + (n-1) d_new.
    """
    anchor, s1, s2, err1, err2, since = state
    start = end - n + 1
    sxx = n * (n * n - 1) / 12.0
    x_mean = (n - 1) / 2.0
    if since < REANCHOR:
        old = close[start - 1] - anchor
        new = close[end] - anchor
        s2 = s2 - (s1 - old) + (n - 1) * new
        s1 = s1 - old + new
        # s2 carries s1's error into every later step: its bound adds it each time.
        err2 += err1 + 4.0 * EPS * (abs(s2) + abs(s1) + abs(old) + n * abs(new))
        err1 += 3.0 * EPS * (abs(s1) + abs(old) + abs(new))
        # One division per bar: the bound is compared as value x |mean| x sxx.
        scale = 100.0 / (sxx * (anchor + s1 / n))
        value = (s2 - x_mean * s1) * scale
        bound = (err2 + x_mean * err1 + EPS * abs(s2)) * abs(scale)
        if bound <= TOLERANCE * max(1.0, abs(value)):
            return value, (anchor, s1, s2, err1, err2, since + 1)
    # Exact, two-pass, as physics.energy_at; the sums and their bounds restart here.
    anchor = close[start]
    s1 = 0.0
    s2 = 0.0
    for k in range(n):
        d = close[start + k] - anchor
        s1 += d
        s2 += k * d
    mean_shift = s1 / n
    sxy = 0.0
    for k in range(n):
        sxy += (k - x_mean) * ((close[start + k] - anchor) - mean_shift)
    value = (sxy / sxx) / (anchor + mean_shift) * 100.0
    return value, (anchor, s1, s2, 0.0, 0.0, 1)


@numba.njit(cache=True, error_model="numpy")
def energy_loop(close: FloatArray, n: int, out: FloatArray) -> None:
    """``out[end]`` = energy for every end >= n - 1 (the rest untouched)."""
    state = energy_state()
    for end in range(n - 1, close.size):
        out[end], state = energy_step(close, end, n, state)


# ---------------------------------------------------------------------------------------
# mean / sample variance of a sliding window: z (previous n closes) and the band (last n)
# ---------------------------------------------------------------------------------------

MomentsState = tuple[float, float, float, float, float, int]


@numba.njit(cache=True, inline="always")
def moments_state() -> MomentsState:
    """(anchor, s1, sq, s1 error bound, sq error bound, bars since the exact recompute)."""
    return 0.0, 0.0, 0.0, 0.0, 0.0, REANCHOR


@numba.njit(cache=True, error_model="numpy", inline="always")
def moments_step(
    close: FloatArray, last: int, n: int, state: MomentsState
) -> tuple[float, float, float, MomentsState]:
    """(variance ddof=1, anchor, mean - anchor) of ``close[last-n+1 : last+1]``; a value
    x's displacement from the mean is ``(x - anchor) - (mean - anchor)``.

    An exact recompute follows ``physics``: the anchor is the window's first close and
    the variance two-pass, so a flat window has a variance and displacement of exactly 0.
    The running sums are trusted only while their error bound is within TOLERANCE of the
    spread (m2 == 0 passes only with a zero bound: every value equal to the anchor) and
    the mean's within TOLERANCE of the spread's square root.
    """
    anchor, s1, sq, err1, errq, since = state
    start = last - n + 1
    if since < REANCHOR:
        old = close[start - 1] - anchor
        new = close[last] - anchor
        s1 = s1 - old + new
        sq = sq - old * old + new * new
        err1 += 3.0 * EPS * (abs(s1) + abs(old) + abs(new))
        errq += 4.0 * EPS * (abs(sq) + old * old + new * new)
        inv_n = 1.0 / n  # constant: hoisted out of an inlined loop
        shift = s1 * inv_n
        m2 = sq - s1 * shift
        bound = errq + 2.0 * abs(shift) * err1 + EPS * abs(sq)
        if m2 >= 0.0 and bound <= TOLERANCE * m2:
            var = m2 * (1.0 / (n - 1))
            e1 = err1 * inv_n
            if e1 * e1 <= TOLERANCE * TOLERANCE * var:
                return var, anchor, shift, (anchor, s1, sq, err1, errq, since + 1)
    anchor = close[start]
    s1 = 0.0
    for i in range(start, last + 1):
        s1 += close[i] - anchor
    shift = s1 / n
    squares = 0.0
    sq = 0.0
    for i in range(start, last + 1):
        d = close[i] - anchor
        dev = d - shift
        squares += dev * dev
        sq += d * d
    return squares / (n - 1), anchor, shift, (anchor, s1, sq, 0.0, 0.0, 1)


@numba.njit(cache=True, error_model="numpy")
def zscore_loop(close: FloatArray, n: int, out: FloatArray) -> None:
    """``out[end]`` = (close[end] - mean of close[end-n : end]) / their std (ddof=1), for
    end >= n; 0.0 for a flat window, as ``physics.zscore_at``."""
    state = moments_state()
    for end in range(n, close.size):
        var, anchor, shift, state = moments_step(close, end - 1, n, state)
        std = math.sqrt(var)
        out[end] = 0.0 if std == 0.0 else ((close[end] - anchor) - shift) / std


@numba.njit(cache=True, error_model="numpy")
def band_loop(
    close: FloatArray, n: int, k: float, mean: FloatArray, std: FloatArray, code: Int8Array
) -> None:
    """Gaussian band over the n closes ending at ``end`` (current included), end >= n - 1:
    mean, sample std, and +1 above mean + k std, -1 below mean - k std, else 0."""
    state = moments_state()
    for end in range(n - 1, close.size):
        var, anchor, shift, state = moments_step(close, end, n, state)
        s = math.sqrt(var)
        displacement = (close[end] - anchor) - shift
        mean[end] = anchor + shift
        std[end] = s
        limit = k * s
        if s > 0.0 and abs(abs(displacement) - limit) <= CODE_GUARD * max(s, limit):
            # Within rounding of the band's edge (k = 0 and a close on the mean is common
            # on a tick grid): the live kernel decides.
            _, _, code[end] = physics.band_at(close, end, n, k)
        elif displacement > limit:
            code[end] = 1
        elif displacement < -limit:
            code[end] = -1
        else:
            code[end] = 0


# ---------------------------------------------------------------------------------------
# volatility: sample std of the log returns in the last min(end + 1, n) closes
# ---------------------------------------------------------------------------------------

VolatilityState = tuple[float, float, float, float, int]


@numba.njit(cache=True, inline="always")
def volatility_state() -> VolatilityState:
    """(sum r, sum r^2, their error bounds, bars since the exact recompute)."""
    return 0.0, 0.0, 0.0, 0.0, REANCHOR


@numba.njit(cache=True, error_model="numpy", inline="always")
def volatility_step(
    close: FloatArray, end: int, n: int, state: VolatilityState
) -> tuple[float, VolatilityState]:
    """Std (ddof=1) of the log returns inside ``close[end-w+1 : end+1]``, w = min(end+1, n)
    (NaN under 3 closes); call it for consecutive ends from 1 (the window grows to n)."""
    s1, sq, err1, errq, since = state
    w = min(end + 1, n)
    m = w - 1  # returns in the window
    if since < REANCHOR:
        new = math.log(close[end] / close[end - 1])
        s1 += new
        sq += new * new
        if end + 1 > n:  # the window slid: its oldest return leaves
            old = math.log(close[end - w + 1] / close[end - w])
            s1 -= old
            sq -= old * old
            err1 += 3.0 * EPS * (abs(s1) + abs(old) + abs(new))
            errq += 4.0 * EPS * (abs(sq) + old * old + new * new)
        else:
            err1 += 2.0 * EPS * (abs(s1) + abs(new))
            errq += 3.0 * EPS * (abs(sq) + new * new)
        if m < 2:
            return math.nan, (s1, sq, err1, errq, since + 1)
        m2 = sq - s1 * s1 / m
        bound = errq + 2.0 * abs(s1) / m * err1 + EPS * abs(sq)
        if m2 >= 0.0 and bound <= TOLERANCE * m2:
            return math.sqrt(m2 / (m - 1)), (s1, sq, err1, errq, since + 1)
    # Exact, two-pass, as physics.volatility_at; the running sums restart from here.
    start = end - w + 1
    s1 = 0.0
    sq = 0.0
    for i in range(start + 1, end + 1):
        r = math.log(close[i] / close[i - 1])
        s1 += r
        sq += r * r
    value = math.nan
    if m >= 2:
        mean = s1 / m
        squares = 0.0
        for i in range(start + 1, end + 1):
            dev = math.log(close[i] / close[i - 1]) - mean
            squares += dev * dev
        value = math.sqrt(squares / (m - 1))
    return value, (s1, sq, 0.0, 0.0, 1)


@numba.njit(cache=True, error_model="numpy")
def volatility_loop(close: FloatArray, n: int, out: FloatArray) -> None:
    """``out[end]`` = volatility for every end >= 2 (``physics.volatility_series``)."""
    state = volatility_state()
    for end in range(1, close.size):
        value, state = volatility_step(close, end, n, state)
        if end >= 2:
            out[end] = value


# ---------------------------------------------------------------------------------------
# ATR: simple mean of the true range of the last n bars (needs n + 1 bars)
# ---------------------------------------------------------------------------------------

SumState = tuple[float, float, float, int]


@numba.njit(cache=True, inline="always")
def sum_state() -> SumState:
    """(anchor, sum, its error bound, bars since the exact recompute)."""
    return 0.0, 0.0, 0.0, REANCHOR


@numba.njit(cache=True, error_model="numpy", inline="always")
def _true_range(high: FloatArray, low: FloatArray, close: FloatArray, i: int) -> float:
    prev = close[i - 1]
    return float(max(high[i] - low[i], abs(high[i] - prev), abs(low[i] - prev)))


@numba.njit(cache=True, error_model="numpy", inline="always")
def atr_step(
    high: FloatArray, low: FloatArray, close: FloatArray, end: int, n: int, state: SumState
) -> tuple[float, SumState]:
    """Mean true range of bars end-n+1 .. end (end >= n)."""
    _, total, err, since = state
    if since < REANCHOR:
        old = _true_range(high, low, close, end - n)
        new = _true_range(high, low, close, end)
        total = total - old + new
        err += 3.0 * EPS * (abs(total) + old + new)
        if total >= 0.0 and err <= TOLERANCE * total:
            return total / n, (0.0, total, err, since + 1)
    total = 0.0
    for i in range(end - n + 1, end + 1):
        total += _true_range(high, low, close, i)
    return total / n, (0.0, total, 0.0, 1)


@numba.njit(cache=True, error_model="numpy")
def atr_loop(high: FloatArray, low: FloatArray, close: FloatArray, n: int, out: FloatArray) -> None:
    """``out[end]`` = ATR for every end >= n (``physics.atr_series``)."""
    state = sum_state()
    for end in range(n, close.size):
        out[end], state = atr_step(high, low, close, end, n, state)


# ---------------------------------------------------------------------------------------
# Simple moving average (the moving-average crossover's kernel)
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy", inline="always")
def sma_step(close: FloatArray, end: int, n: int, state: SumState) -> tuple[float, SumState]:
    """Mean of ``close[end-n+1 : end+1]`` (end >= n - 1)."""
    anchor, s1, err, since = state
    start = end - n + 1
    if since < REANCHOR:
        old = close[start - 1] - anchor
        new = close[end] - anchor
        s1 = s1 - old + new
        err += 3.0 * EPS * (abs(s1) + abs(old) + abs(new))
        mean = anchor + s1 / n
        if err / n <= TOLERANCE * abs(mean):
            return mean, (anchor, s1, err, since + 1)
    anchor = close[start]
    s1 = 0.0
    for i in range(start, end + 1):
        s1 += close[i] - anchor
    return anchor + s1 / n, (anchor, s1, 0.0, 1)


@numba.njit(cache=True, error_model="numpy")
def sma_loop(close: FloatArray, n: int, out: FloatArray) -> None:
    """``out[end]`` = the n-bar simple moving average for every end >= n - 1."""
    state = sum_state()
    for end in range(n - 1, close.size):
        out[end], state = sma_step(close, end, n, state)


# ---------------------------------------------------------------------------------------
# Checked wrappers: the physics.*_series signatures and warm-up, O(1) per bar.
# ---------------------------------------------------------------------------------------


def checked_prices(name: str, values: object) -> FloatArray:
    """A 1-D float64 array of finite values > 0, contiguous (a copy only when needed)."""
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype != np.float64:
        got = (
            f"{values.dtype} array of shape {values.shape}"
            if isinstance(values, np.ndarray)
            else type(values).__name__
        )
        raise BacktestInputError(
            f"{name} must be a 1-D float64 numpy array, got {got}; "
            f"convert with np.asarray({name}, dtype=np.float64).ravel()"
        )
    bad = ~(np.isfinite(values) & (values > 0.0))
    if bad.any():
        row = int(np.argmax(bad))
        raise BacktestInputError(
            f"{name}[{row}] = {values[row]!r}: prices must be finite and > 0; drop or fill "
            "that bar before backtesting"
        )
    return np.ascontiguousarray(values)


def checked_lookback(name: str, lookback: object, minimum: int = 2) -> int:
    if isinstance(lookback, bool) or not isinstance(lookback, int | np.integer):
        raise BacktestInputError(f"{name} must be an int >= {minimum}, got {lookback!r}")
    if lookback < minimum:
        raise BacktestInputError(f"{name} must be >= {minimum}, got {lookback}")
    return int(lookback)


def rolling_energy(close: FloatArray, lookback: int = 20) -> FloatArray:
    """Energy at every index (``physics.energy_series``); NaN until ``lookback`` closes."""
    prices = checked_prices("close", close)
    out = np.full(prices.size, np.nan)
    energy_loop(prices, checked_lookback("lookback", lookback), out)
    return out


def rolling_zscore(close: FloatArray, lookback: int = 60) -> FloatArray:
    """Displacement z at every index (``physics.zscore_series``); NaN until ``lookback``
    previous closes."""
    prices = checked_prices("close", close)
    out = np.full(prices.size, np.nan)
    zscore_loop(prices, checked_lookback("lookback", lookback), out)
    return out


def rolling_band(
    close: FloatArray, lookback: int = 140, k: float = 2.0
) -> tuple[FloatArray, FloatArray, Int8Array]:
    """(mean, std, code) of the gaussian band (``physics.gaussian_bands``)."""
    prices = checked_prices("close", close)
    if isinstance(k, bool) or not isinstance(k, int | float) or not 0.0 <= float(k) < math.inf:
        raise BacktestInputError(f"k must be a finite number >= 0, got {k!r}")
    mean = np.full(prices.size, np.nan)
    std = np.full(prices.size, np.nan)
    code = np.zeros(prices.size, dtype=np.int8)
    band_loop(prices, checked_lookback("lookback", lookback), float(k), mean, std, code)
    return mean, std, code


def rolling_volatility(close: FloatArray, lookback: int = 60) -> FloatArray:
    """Std of log returns over the last min(i + 1, lookback) closes
    (``physics.volatility_series``); NaN before 3 closes."""
    prices = checked_prices("close", close)
    out = np.full(prices.size, np.nan)
    volatility_loop(prices, checked_lookback("lookback", lookback, 3), out)
    return out


def rolling_atr(
    high: FloatArray, low: FloatArray, close: FloatArray, lookback: int = 14
) -> FloatArray:
    """Simple-mean ATR at every index (``physics.atr_series``); NaN until ``lookback`` + 1
    bars."""
    highs = checked_prices("high", high)
    lows = checked_prices("low", low)
    closes = checked_prices("close", close)
    if not highs.size == lows.size == closes.size:
        raise BacktestInputError(
            f"high, low and close must have the same length, got {highs.size}, "
            f"{lows.size}, {closes.size}"
        )
    out = np.full(closes.size, np.nan)
    atr_loop(highs, lows, closes, checked_lookback("lookback", lookback, 1), out)
    return out


def rolling_sma(close: FloatArray, lookback: int) -> FloatArray:
    """Simple moving average at every index; NaN until ``lookback`` closes."""
    prices = checked_prices("close", close)
    out = np.full(prices.size, np.nan)
    sma_loop(prices, checked_lookback("lookback", lookback, 1), out)
    return out
