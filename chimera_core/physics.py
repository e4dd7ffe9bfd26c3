"""Econophysics kernels: energy, displacement z, gaussian band, volatility, ATR, volume profile.

Every kernel is a Numba ``njit`` function over arrays and scalars that returns numbers.
The batch functions (``energy_series`` …) and the live per-tick path (``evaluate_live``)
call the same window kernels (``energy_at``, ``zscore_at``, ``band_at``), so a backtest
and the live engine compute bit-for-bit the same values from the same closes.

Window kernels take ``end``, the index of the newest value, and read
``close[end - n + 1 : end + 1]`` (z reads the n values before ``end``). Means and
variances are computed two-pass on values shifted by the window's first close: a flat
window then gives exactly zero spread (never rounding noise that would read as a huge
z), and large prices lose less precision to cancellation.

Kernels use ``error_model="numpy"``: a division by zero gives inf/NaN instead of raising,
so nothing in the tick path can throw from inside a kernel.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Slots of the ``out`` array filled by ``evaluate_live`` (per tick).
LIVE_ENERGY = 0
LIVE_Z = 1
LIVE_BAND_MEAN = 2
LIVE_BAND_STD = 3
LIVE_BAND = 4  # +1 BREAKOUT, -1 BREAKDOWN, 0 NEUTRAL, NaN warming up
LIVE_SIZE = 5

# Slots of the ``out`` array filled by ``evaluate_bar_close`` (once per closed bar).
CLOSED_VOLATILITY = 0
CLOSED_ATR = 1
CLOSED_POC = 2
CLOSED_VALUE_AREA_LOW = 3
CLOSED_VALUE_AREA_HIGH = 4
CLOSED_VOLUME = 5  # total volume in the profile window; 0 means no profile
CLOSED_SIZE = 6

BAND_BREAKOUT = 1
BAND_BREAKDOWN = -1
BAND_NEUTRAL = 0


# ---------------------------------------------------------------------------------------
# Window kernels: one value for the window ending at ``end``.
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def energy_at(close: FloatArray, end: int, n: int) -> float:
    """Least-squares slope of ``close[end-n+1 : end+1]`` over x = 0..n-1, / mean, x 100."""
    start = end - n + 1
    origin: float = close[start]
    total = 0.0
    for i in range(n):
        total += close[start + i] - origin
    mean_shift = total / n
    x_mean = (n - 1) / 2.0
    sxy = 0.0
    for i in range(n):
        sxy += (i - x_mean) * ((close[start + i] - origin) - mean_shift)
    # Sum of (x - x_mean)^2 for x = 0..n-1, exact in integers.
    sxx = n * (n * n - 1) / 12.0
    return (sxy / sxx) / (origin + mean_shift) * 100.0


@numba.njit(cache=True, error_model="numpy")
def zscore_at(close: FloatArray, end: int, n: int) -> float:
    """(close[end] - mean of the n previous closes) / their sample std (ddof=1).

    A flat window (std == 0) has no scale to measure displacement against: z = 0.0,
    which reads as TRAPPED, so a frozen or illiquid quote can never look like a VACUUM.
    """
    start = end - n
    origin: float = close[start]
    total = 0.0
    for i in range(start, end):
        total += close[i] - origin
    mean_shift = total / n
    squares = 0.0
    for i in range(start, end):
        dev = (close[i] - origin) - mean_shift
        squares += dev * dev
    std = math.sqrt(squares / (n - 1))
    if std == 0.0:
        return 0.0
    displacement: float = (close[end] - origin) - mean_shift
    return displacement / std


@numba.njit(cache=True, error_model="numpy")
def band_at(close: FloatArray, end: int, n: int, k: float) -> tuple[float, float, int]:
    """Gaussian band over the n closes ending at ``end`` (current included).

    Returns (mean, sample std, code) with code +1 above mean + k*std, -1 below
    mean - k*std, else 0.
    """
    start = end - n + 1
    origin: float = close[start]
    total = 0.0
    for i in range(start, end + 1):
        total += close[i] - origin
    mean_shift = total / n
    squares = 0.0
    for i in range(start, end + 1):
        dev = (close[i] - origin) - mean_shift
        squares += dev * dev
    std = math.sqrt(squares / (n - 1))
    # Compare the shifted displacement so a flat window is exactly NEUTRAL.
    displacement = (close[end] - origin) - mean_shift
    code = BAND_NEUTRAL
    if displacement > k * std:
        code = BAND_BREAKOUT
    elif displacement < -k * std:
        code = BAND_BREAKDOWN
    return origin + mean_shift, std, code


@numba.njit(cache=True, error_model="numpy")
def volatility_at(close: FloatArray, end: int, n: int) -> float:
    """Sample std (ddof=1) of the n-1 log returns inside ``close[end-n+1 : end+1]``."""
    start = end - n + 1
    m = n - 1
    total = 0.0
    for i in range(start + 1, end + 1):
        total += math.log(close[i] / close[i - 1])
    mean = total / m
    squares = 0.0
    for i in range(start + 1, end + 1):
        dev = math.log(close[i] / close[i - 1]) - mean
        squares += dev * dev
    return math.sqrt(squares / (m - 1))


@numba.njit(cache=True, error_model="numpy")
def atr_at(high: FloatArray, low: FloatArray, close: FloatArray, end: int, n: int) -> float:
    """Simple mean of the true range of the n bars ending at ``end`` (needs n + 1 bars)."""
    total = 0.0
    for i in range(end - n + 1, end + 1):
        prev_close = close[i - 1]
        true_range = max(high[i] - low[i], abs(high[i] - prev_close), abs(low[i] - prev_close))
        total += true_range
    return total / n


MAX_PROFILE_BUCKETS = 100_000


@numba.njit(cache=True, error_model="numpy")
def volume_profile_at(
    close: FloatArray, volume: FloatArray, end: int, n: int, bucket: float, value_area: float
) -> tuple[float, float, float, float]:
    """Volume by price bucket of the n bars ending at ``end``.

    A bar's whole volume goes to the bucket of its close; buckets are centred on
    multiples of ``bucket`` (index = floor(close / bucket + 0.5)). Returns
    (poc, value_area_low, value_area_high, total_volume), prices as bucket centres.
    POC ties go to the lower price. The value area starts at the POC bucket and adds
    the neighbouring bucket (empty ones included, so it stays contiguous) on the side
    with more volume — the lower side on a tie — until it holds >= ``value_area`` of the
    volume. Total volume 0 returns NaN prices.
    """
    start = end - n + 1
    total = 0.0
    lowest = 0
    highest = -1
    for i in range(start, end + 1):
        if volume[i] > 0.0:
            idx = math.floor(close[i] / bucket + 0.5)
            if highest < lowest:
                lowest = idx
                highest = idx
            else:
                lowest = min(lowest, idx)
                highest = max(highest, idx)
            total += volume[i]
    if total <= 0.0 or highest - lowest >= MAX_PROFILE_BUCKETS:
        # No volume, or closes so far apart (a corrupt print) that the buckets would not
        # fit in memory: no profile rather than an allocation the size of the price range.
        return math.nan, math.nan, math.nan, 0.0
    by_bucket = np.zeros(highest - lowest + 1)
    for i in range(start, end + 1):
        if volume[i] > 0.0:
            by_bucket[math.floor(close[i] / bucket + 0.5) - lowest] += volume[i]
    poc = 0
    for b in range(1, by_bucket.size):
        if by_bucket[b] > by_bucket[poc]:  # strict: ties keep the lower price
            poc = b
    low = poc
    high = poc
    held = by_bucket[poc]
    # Ratio, not held >= value_area * total: 0.55 * 100 rounds to 55.00000000000001,
    # which would refuse a value area holding exactly 55 of 100.
    while held / total < value_area:
        below = by_bucket[low - 1] if low > 0 else -1.0
        above = by_bucket[high + 1] if high < by_bucket.size - 1 else -1.0
        if above > below:
            high += 1
            held += above
        else:
            low -= 1
            held += below
    return (
        (lowest + poc) * bucket,
        (lowest + low) * bucket,
        (lowest + high) * bucket,
        total,
    )


# ---------------------------------------------------------------------------------------
# Live path: one call per tick, one call per closed bar, over BarRing storage.
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def evaluate_live(
    close_buf: FloatArray,
    count: int,
    live_close: float,
    energy_n: int,
    z_n: int,
    band_n: int,
    k: float,
    out: FloatArray,
) -> None:
    """Evaluate the forming bar's price as the provisional newest close.

    ``close_buf`` is a BarRing close array (length 2 * capacity) holding ``count``
    closed bars. The live price is written into the next slot, both copies, without
    advancing ``count``; when the bar closes, BarRing.push overwrites that slot. Fills
    ``out[LIVE_*]``, NaN while a window is not full.
    """
    capacity = close_buf.shape[0] // 2
    slot = count % capacity
    close_buf[slot] = live_close
    close_buf[slot + capacity] = live_close
    end = slot + capacity
    closes = count + 1  # closed bars plus the live price
    if closes >= energy_n:
        out[LIVE_ENERGY] = energy_at(close_buf, end, energy_n)
    else:
        out[LIVE_ENERGY] = math.nan
    if count >= z_n:
        out[LIVE_Z] = zscore_at(close_buf, end, z_n)
    else:
        out[LIVE_Z] = math.nan
    if closes >= band_n:
        mean, std, code = band_at(close_buf, end, band_n, k)
        out[LIVE_BAND_MEAN] = mean
        out[LIVE_BAND_STD] = std
        out[LIVE_BAND] = code
    else:
        out[LIVE_BAND_MEAN] = math.nan
        out[LIVE_BAND_STD] = math.nan
        out[LIVE_BAND] = math.nan


@numba.njit(cache=True, error_model="numpy")
def evaluate_bar_close(
    close_buf: FloatArray,
    high_buf: FloatArray,
    low_buf: FloatArray,
    volume_buf: FloatArray,
    count: int,
    window_n: int,
    atr_n: int,
    bucket: float,
    value_area: float,
    out: FloatArray,
) -> None:
    """Closed-bar statistics, run once when a bar closes (``count`` includes it).

    Volatility and the volume profile use the last min(count, window_n) closed bars;
    ATR needs atr_n + 1. Fills ``out[CLOSED_*]``, NaN while not enough bars.
    """
    capacity = close_buf.shape[0] // 2
    end = (count - 1) % capacity + capacity
    window = min(count, window_n)
    if window >= 3:
        out[CLOSED_VOLATILITY] = volatility_at(close_buf, end, window)
    else:
        out[CLOSED_VOLATILITY] = math.nan
    if count >= atr_n + 1:
        out[CLOSED_ATR] = atr_at(high_buf, low_buf, close_buf, end, atr_n)
    else:
        out[CLOSED_ATR] = math.nan
    poc, value_low, value_high, total = volume_profile_at(
        close_buf, volume_buf, end, window, bucket, value_area
    )
    out[CLOSED_POC] = poc
    out[CLOSED_VALUE_AREA_LOW] = value_low
    out[CLOSED_VALUE_AREA_HIGH] = value_high
    out[CLOSED_VOLUME] = total


# ---------------------------------------------------------------------------------------
# Batch loops (njit) and their validating Python wrappers.
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def _energy_loop(close: FloatArray, n: int) -> FloatArray:
    out = np.full(close.size, np.nan)
    for end in range(n - 1, close.size):
        out[end] = energy_at(close, end, n)
    return out


@numba.njit(cache=True, error_model="numpy")
def _zscore_loop(close: FloatArray, n: int) -> FloatArray:
    out = np.full(close.size, np.nan)
    for end in range(n, close.size):
        out[end] = zscore_at(close, end, n)
    return out


@numba.njit(cache=True, error_model="numpy")
def _band_loop(
    close: FloatArray, n: int, k: float
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int8]]:
    mean = np.full(close.size, np.nan)
    std = np.full(close.size, np.nan)
    code = np.zeros(close.size, dtype=np.int8)
    for end in range(n - 1, close.size):
        m, s, c = band_at(close, end, n, k)
        mean[end] = m
        std[end] = s
        code[end] = c
    return mean, std, code


@numba.njit(cache=True, error_model="numpy")
def _volatility_loop(close: FloatArray, n: int) -> FloatArray:
    out = np.full(close.size, np.nan)
    for end in range(2, close.size):
        out[end] = volatility_at(close, end, min(end + 1, n))
    return out


@numba.njit(cache=True, error_model="numpy")
def _atr_loop(high: FloatArray, low: FloatArray, close: FloatArray, n: int) -> FloatArray:
    out = np.full(close.size, np.nan)
    for end in range(n, close.size):
        out[end] = atr_at(high, low, close, end, n)
    return out


def _checked_prices(name: str, values: object) -> FloatArray:
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype != np.float64:
        got = (
            f"{values.dtype} array of shape {values.shape}"
            if isinstance(values, np.ndarray)
            else type(values).__name__
        )
        raise ValueError(
            f"{name} must be a 1-D float64 numpy array, got {got}; "
            f"convert with np.asarray({name}, dtype=np.float64).ravel()"
        )
    return np.ascontiguousarray(values)


def _checked_lookback(name: str, lookback: object, minimum: int = 2) -> int:
    if isinstance(lookback, bool) or not isinstance(lookback, int | np.integer):
        raise ValueError(f"{name} must be an int >= {minimum}, got {lookback!r}")
    if lookback < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {lookback}")
    return int(lookback)


def _checked_k(k: object) -> float:
    if isinstance(k, bool) or not isinstance(k, int | float | np.floating | np.integer):
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    if not (0.0 <= float(k) < math.inf):
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    return float(k)


def energy_series(close: FloatArray, lookback: int = 20) -> FloatArray:
    """Energy at every index; NaN until ``lookback`` closes exist."""
    prices = _checked_prices("close", close)
    result: FloatArray = _energy_loop(prices, _checked_lookback("lookback", lookback))
    return result


def zscore_series(close: FloatArray, lookback: int = 60) -> FloatArray:
    """Displacement z at every index; NaN until ``lookback`` previous closes exist."""
    prices = _checked_prices("close", close)
    result: FloatArray = _zscore_loop(prices, _checked_lookback("lookback", lookback))
    return result


def gaussian_bands(
    close: FloatArray, lookback: int = 140, k: float = 2.0
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int8]]:
    """(mean, std, code) of the gaussian band at every index; NaN / 0 while warming up."""
    prices = _checked_prices("close", close)
    result: tuple[FloatArray, FloatArray, npt.NDArray[np.int8]] = _band_loop(
        prices, _checked_lookback("lookback", lookback), _checked_k(k)
    )
    return result


def gaussian_series(close: FloatArray, lookback: int = 140, k: float = 2.0) -> npt.NDArray[np.int8]:
    """Band code at every index: +1 BREAKOUT, -1 BREAKDOWN, 0 NEUTRAL (and warm-up)."""
    return gaussian_bands(close, lookback, k)[2]


def volatility_series(close: FloatArray, lookback: int = 60) -> FloatArray:
    """Std of log returns over the last min(i + 1, lookback) closes; NaN before 3 closes."""
    prices = _checked_prices("close", close)
    result: FloatArray = _volatility_loop(prices, _checked_lookback("lookback", lookback, 3))
    return result


def atr_series(
    high: FloatArray, low: FloatArray, close: FloatArray, lookback: int = 14
) -> FloatArray:
    """Simple-mean ATR at every index; NaN until ``lookback`` + 1 bars exist."""
    highs = _checked_prices("high", high)
    lows = _checked_prices("low", low)
    closes = _checked_prices("close", close)
    if not highs.size == lows.size == closes.size:
        raise ValueError(
            f"high, low and close must have the same length, got {highs.size}, "
            f"{lows.size}, {closes.size}"
        )
    result: FloatArray = _atr_loop(highs, lows, closes, _checked_lookback("lookback", lookback, 1))
    return result


def volume_profile(
    close: FloatArray, volume: FloatArray, bucket: float = 0.5, value_area: float = 0.70
) -> tuple[float, float, float, float]:
    """Volume profile of whole arrays: (poc, value_area_low, value_area_high, total_volume)."""
    closes = _checked_prices("close", close)
    volumes = _checked_prices("volume", volume)
    if closes.size != volumes.size or closes.size == 0:
        raise ValueError(
            f"close and volume must be non-empty and the same length, got {closes.size} "
            f"and {volumes.size}"
        )
    if not (0.0 < bucket < math.inf):
        raise ValueError(f"bucket must be a positive price width, got {bucket!r}")
    if not (0.0 < value_area <= 1.0):
        raise ValueError(f"value_area must be in (0, 1], got {value_area!r}")
    poc, low, high, total = volume_profile_at(
        closes, volumes, closes.size - 1, closes.size, float(bucket), float(value_area)
    )
    return float(poc), float(low), float(high), float(total)


def warm_up_kernels() -> None:
    """Call every kernel once on tiny inputs so Numba compiles (or loads its on-disk cache)
    at start-up, never on the first live tick."""
    closes = np.linspace(100.0, 101.0, 8)
    energy_series(closes, 3)
    zscore_series(closes, 3)
    gaussian_bands(closes, 3, 2.0)
    volatility_series(closes, 4)
    atr_series(closes + 0.5, closes - 0.5, closes, 2)
    volume_profile(closes, np.ones(8), 0.5, 0.7)
    ring = np.zeros(16)
    evaluate_live(ring, 0, 100.0, 3, 3, 3, 2.0, np.empty(LIVE_SIZE))
    ring[:] = 100.0
    evaluate_bar_close(ring, ring, ring, ring, 4, 3, 2, 0.5, 0.7, np.empty(CLOSED_SIZE))
