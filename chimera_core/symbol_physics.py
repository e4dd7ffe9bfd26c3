"""One symbol's live physics: bars from trades, a ring of closed bars, kernels per tick.

Per tick: volume delta -> bar builder -> (on a bar close: push into the ring and refresh
the closed-bar statistics: volatility, ATR, volume profile) -> one ``evaluate_live``
call with the forming bar's last price -> a ``PhysicsState``. No allocation besides the
returned Structs.
"""

from __future__ import annotations

import math

import numpy as np

from chimera_core import physics
from chimera_core.bars import BarBuilder, VolumeDelta
from chimera_core.contracts import Band, Bar, PhysicsState, Structure, VolumeProfile
from chimera_core.ring import BarRing

# |z| at or above this reads as VACUUM (price displaced out of its recent range).
VACUUM_Z = 1.0

_WARMUP_STRUCTURE = Structure.WARMUP
_VACUUM = Structure.VACUUM
_TRAPPED = Structure.TRAPPED
# Indexed by the kernel's band code: 0 NEUTRAL, 1 BREAKOUT, -1 (last) BREAKDOWN.
_BAND_BY_CODE = (Band.NEUTRAL, Band.BREAKOUT, Band.BREAKDOWN)
_WARMUP_BAND = Band.WARMUP


def _positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


MAX_LOOKBACK = 250  # the config's and the genome's upper bound for a window


class SymbolPhysics:
    """Owns one symbol's BarBuilder, BarRing and VolumeDelta and runs the kernels.

    Lookbacks count bars: energy over ``energy_n`` closes (live one included), z against
    the ``z_n`` previous closed bars, the band over ``band_n`` closes (live included),
    ATR over ``atr_n`` closed bars. Volatility and the volume profile use the z window of
    closed bars. ``profile_bucket`` defaults to 0.5 rupee: ten NSE ticks of 0.05, coarse
    enough that a minute-bar window piles volume into a few price levels. ``capacity``
    must exceed the largest lookback + 1.
    """

    __slots__ = (
        "_atr",
        "_atr_n",
        "_band_n",
        "_bars",
        "_closed_out",
        "_energy_n",
        "_k",
        "_live_out",
        "_profile",
        "_profile_bucket",
        "_ring",
        "_value_area",
        "_volatility",
        "_volume",
        "_warm_count",
        "_z_n",
        "token",
    )

    def __init__(
        self,
        token: str,
        interval_ms: int = 60_000,
        energy_n: int = 20,
        z_n: int = 60,
        band_n: int = 140,
        k: float = 2.0,
        atr_n: int = 14,
        profile_bucket: float = 0.5,
        capacity: int = 256,
        value_area: float = 0.70,
    ) -> None:
        self.token = token
        self._energy_n = _positive_int("energy_n", energy_n, 2)
        self._z_n = _positive_int("z_n", z_n, 2)
        self._band_n = _positive_int("band_n", band_n, 2)
        self._atr_n = _positive_int("atr_n", atr_n, 1)
        if not (0.0 <= k < math.inf):
            raise ValueError(f"k must be a finite number >= 0, got {k!r}")
        if not (0.0 < profile_bucket < math.inf):
            raise ValueError(
                f"profile_bucket must be a positive price width, got {profile_bucket!r}"
            )
        if not (0.0 < value_area <= 1.0):
            raise ValueError(f"value_area must be in (0, 1], got {value_area!r}")
        # Kernels are compiled for int64/float64 arguments: keep the Python types fixed
        # so a call never triggers a fresh compilation.
        self._k = float(k)
        self._profile_bucket = float(profile_bucket)
        self._value_area = float(value_area)
        self._bars = BarBuilder(token, interval_ms)
        longest = max(energy_n, z_n, band_n, atr_n)
        if isinstance(capacity, int) and capacity <= longest + 1:
            raise ValueError(
                f"capacity {capacity} is too small for a lookback of {longest}: it must "
                f"exceed lookback + 1 (use at least {longest + 2})"
            )
        # Room for any window the genome may choose later (its genes stop at 250 bars).
        self._ring = BarRing(capacity, max_lookback=max(longest, min(capacity - 2, MAX_LOOKBACK)))
        self._volume = VolumeDelta()
        self._live_out = np.full(physics.LIVE_SIZE, np.nan)
        self._closed_out = np.full(physics.CLOSED_SIZE, np.nan)
        self._volatility = math.nan
        self._atr = math.nan
        self._profile: VolumeProfile | None = None
        # Closed bars after which the next live evaluation has all three windows full.
        self._warm_count = max(energy_n - 1, z_n, band_n - 1)

    @property
    def bar_start_ms(self) -> int | None:
        """Exchange-time start of the forming bar; None before the first trade."""
        start = self._bars.start_ms
        return start if start >= 0 else None

    @property
    def warm(self) -> bool:
        """True once energy, z and the band windows are all full."""
        return self._ring.count >= self._warm_count

    @property
    def closed_bars(self) -> int:
        return self._ring.count

    @property
    def late_ticks(self) -> int:
        return self._bars.late_ticks

    @property
    def ring(self) -> BarRing:
        """The closed bars (read them; pushing is this object's job)."""
        return self._ring

    @property
    def profile(self) -> VolumeProfile | None:
        return self._profile

    @property
    def energy_n(self) -> int:
        return self._energy_n

    @property
    def z_n(self) -> int:
        return self._z_n

    @property
    def band_n(self) -> int:
        return self._band_n

    @property
    def k(self) -> float:
        return self._k

    def set_params(self, energy_n: int, z_n: int, band_n: int, k: float) -> None:
        """New windows and band width (a genome version taking effect at a bar boundary).
        The closed bars are kept: the next evaluation reads the new windows over them."""
        windows = {"energy_n": energy_n, "z_n": z_n, "band_n": band_n}
        for name, n in windows.items():
            _positive_int(name, n, 2)
            if n > self._ring.capacity - 2:
                raise ValueError(f"{name} {n} exceeds the ring's {self._ring.capacity - 2} bars")
        if not (0.0 <= k < math.inf):
            raise ValueError(f"k must be a finite number >= 0, got {k!r}")
        self._energy_n, self._z_n, self._band_n, self._k = (
            int(energy_n),
            int(z_n),
            int(band_n),
            float(k),
        )
        self._warm_count = max(energy_n - 1, z_n, band_n - 1)
        if self._ring.count:
            self._refresh_closed_statistics()  # volatility over the new z window

    @property
    def last_price(self) -> float:
        """The last accepted trade price (NaN before the first): the symbol's mark."""
        return self._bars.close

    @property
    def forming_ticks(self) -> int:
        """Trades in the forming bar so far (0 before the first)."""
        return self._bars.ticks

    def discard_forming_bar(self) -> None:
        """Forget the forming bar, for a token whose bar clock was set by a bad frame."""
        self._bars.discard_forming()

    def on_trade(
        self, exchange_ts_ms: int, price: float, cum_volume: int, ltq: int
    ) -> tuple[PhysicsState, Bar | None]:
        """Feed one trade; return the physics for this tick and the bar it closed, if any.

        A late tick (earlier bucket than the forming bar) is counted and ignored; the
        state returned is the forming bar's unchanged one.
        """
        if not 0.0 < price < math.inf:
            raise ValueError(
                f"price must be positive and finite, got {price!r} for token {self.token}; "
                "the feed must drop such ticks before physics"
            )
        bars = self._bars
        # Late ticks touch nothing, not even the cumulative-volume baseline
        # (inlined BarBuilder.accepts: this runs on every tick).
        delta = self._volume.update(cum_volume, ltq) if exchange_ts_ms >= bars.start_ms else 0
        closed = bars.on_trade(exchange_ts_ms, price, delta)
        ring = self._ring
        if closed is not None:
            ring.push(closed)
            self._refresh_closed_statistics()
        live = bars.close
        out = self._live_out
        physics.evaluate_live(
            ring.close, ring.count, live, self._energy_n, self._z_n, self._band_n, self._k, out
        )
        energy, z, band_mean, band_std, band_code = out.tolist()
        if z != z:
            structure = _WARMUP_STRUCTURE
        elif abs(z) >= VACUUM_Z:
            structure = _VACUUM
        else:
            structure = _TRAPPED
        band = _WARMUP_BAND if band_code != band_code else _BAND_BY_CODE[int(band_code)]
        # Positional: PhysicsState field order (keywords cost ~0.1 µs per tick).
        state = PhysicsState(
            live, ring.count, energy, z, structure, band, band_mean, band_std,
            self._volatility, self._atr, self._profile,
        )  # fmt: skip
        return state, closed

    def _refresh_closed_statistics(self) -> None:
        ring = self._ring
        out = self._closed_out
        physics.evaluate_bar_close(
            ring.close,
            ring.high,
            ring.low,
            ring.volume,
            ring.count,
            self._z_n,
            self._atr_n,
            self._profile_bucket,
            self._value_area,
            out,
        )
        volatility, atr, poc, value_low, value_high, total = out.tolist()
        self._volatility = volatility
        self._atr = atr
        self._profile = (
            VolumeProfile(
                poc=poc,
                value_area_low=value_low,
                value_area_high=value_high,
                total_volume=int(total),
            )
            if total > 0.0
            else None
        )
