"""Scenarios: the live node (event mode, ``tools/backtest/event.py``) on history that was
changed, or with a fault injected, each defined by a small TOML file::

    name = "gap_down"
    kind = "gap"        # gap | volatility | depth | outage | rejects | circuit_freeze
    session = 2         # the trading day (1 = the first in the data) it starts looking on
    at = "position"     # "position": the first bar of that day or later with a position
                        # open in the unchanged run; "open": the day's first bar
    pct = -0.10
    symbol = "SYN1"     # several instruments: the one a data transform changes
                        # (default: all of them, e.g. a market-wide gap)

Data transforms (applied to the bars before the run): ``gap`` (every price from the
anchor bar on × (1 + pct)), ``volatility`` (the anchor's session's prices spread ×
``factor`` around its open, later sessions carried on from its new close), ``depth``
(volume ÷ ``divisor``: the QUOTE prints event mode replays carry no book, so traded
volume is the depth it has), ``circuit_freeze`` (the price moves ``pct`` to the band
limit at the anchor bar and stays there, no volume, for the rest of the session).
Faults (injected into the running node): ``outage`` (no print reaches the feed for
``seconds`` from the first print with a bracket held), ``rejects`` (the paper broker
refuses the next ``count`` orders from the anchor bar on). On several instruments
(``tools/stress/account.py``) a fault acts on the whole feed / broker: ``symbol`` is
refused on one.

Each run is judged: exits worked (nothing held at the end, nothing carried over a session
on an intraday product), caps held (position quantity and value within [governance]),
the worst day's loss within ``daily_loss_pct`` of its opening equity, and the journal
agrees with the fills the node published (``JournalReader.check`` clean, each fill booked
once: nothing lost, nothing duplicated)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import structlog

from chimera_core.config import Config
from chimera_core.contracts import OrderRequest, Tick
from chimera_core.strategy import StrategyFactory
from tools.backtest.event import BarSeries, EventResult, SimNode, backtest_config, run_event
from tools.stress.montecarlo import StressError, daily_returns

log = structlog.get_logger(__name__)

SHIPPED_DIR = Path(__file__).with_name("scenarios")
KINDS = ("gap", "volatility", "depth", "outage", "rejects", "circuit_freeze")
INJECTED_REASON = "stress: injected broker reject"

Session = Annotated[int, msgspec.Meta(ge=1)]


class _Scenario(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, tag_field="kind"
):
    name: str
    description: str = ""
    session: Session = 1
    at: Literal["position", "open"] = "position"
    # Several instruments: the symbol (or token) a data transform changes and whose
    # position the anchor looks for; "" = every instrument, anchored on any position.
    symbol: str = ""


class Gap(_Scenario, tag="gap", frozen=True):
    pct: Annotated[float, msgspec.Meta(gt=-0.9, lt=0.9)]


class Volatility(_Scenario, tag="volatility", frozen=True):
    factor: Annotated[float, msgspec.Meta(gt=0.0, le=20.0)] = 3.0


class Depth(_Scenario, tag="depth", frozen=True):
    divisor: Annotated[float, msgspec.Meta(ge=1.0)] = 10.0


class Outage(_Scenario, tag="outage", frozen=True):
    seconds: Annotated[float, msgspec.Meta(gt=0.0)] = 60.0


class Rejects(_Scenario, tag="rejects", frozen=True):
    count: Annotated[int, msgspec.Meta(ge=1)] = 5


class CircuitFreeze(_Scenario, tag="circuit_freeze", frozen=True):
    pct: Annotated[float, msgspec.Meta(gt=0.0, lt=0.5)] = 0.05
    direction: Literal["up", "down"] = "down"


Scenario = Gap | Volatility | Depth | Outage | Rejects | CircuitFreeze


def load_scenario(path: Path) -> Scenario:
    """One scenario TOML file, validated (an error names the file, the key and what is
    allowed)."""
    try:
        scenario: Scenario = msgspec.toml.decode(path.read_bytes(), type=Scenario)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise StressError(f"scenario {path}: no such file") from None
    except msgspec.ValidationError as exc:
        raise StressError(
            f"scenario {path}: {exc} (kind is one of {', '.join(KINDS)}; docs/STRESS.md "
            "lists each kind's keys)"
        ) from None
    except msgspec.DecodeError as exc:
        raise StressError(f"scenario {path}: not valid TOML ({exc})") from None
    if scenario.symbol and isinstance(scenario, (Outage, Rejects)):
        raise StressError(
            f"scenario {path}: symbol = {scenario.symbol!r} on a {kind_of(scenario)} "
            "scenario; a fault acts on the whole feed / broker: drop symbol"
        )
    return scenario


def kind_of(sc: Scenario) -> str:
    return str(type(sc).__struct_config__.tag)


def shipped_scenarios() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.toml"))


@dataclass(frozen=True)
class StressBars:
    """A changed copy of a bar series (what event mode reads: ``BarSeries``)."""

    ts_ms: npt.NDArray[np.int64]
    open: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    volume: npt.NDArray[np.float64]
    interval_ms: int
    tz: str


def copy_bars(bars: BarSeries) -> StressBars:
    return StressBars(
        np.array(bars.ts_ms, dtype=np.int64),
        np.array(bars.open, dtype=np.float64),
        np.array(bars.high, dtype=np.float64),
        np.array(bars.low, dtype=np.float64),
        np.array(bars.close, dtype=np.float64),
        np.array(bars.volume, dtype=np.float64),
        int(bars.interval_ms),
        str(bars.tz),
    )


def session_numbers(ts_ms: npt.NDArray[np.int64], tz: str) -> npt.NDArray[np.int64]:
    """Each bar's trading day, numbered 1, 2, ... in the market's zone."""
    import pandas as pd

    days = pd.to_datetime(ts_ms, unit="ms", utc=True).tz_convert(tz).normalize()
    _, number = np.unique(days.tz_localize(None).to_numpy(), return_inverse=True)
    return number.astype(np.int64) + 1


def anchor_bar(sc: Scenario, sessions: npt.NDArray[np.int64], held: npt.NDArray[np.bool_]) -> int:
    """The bar a scenario starts at: the first of its session (``at = "open"``) or the
    first from its session on with a position open in the unchanged run."""
    ok = sessions >= sc.session
    if sc.at == "position":
        ok &= held
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        what = "bar" if sc.at == "open" else "bar with a position open (unchanged run)"
        raise StressError(
            f"scenario {sc.name}: no {what} on trading day {sc.session} or later "
            f'(the data has {int(sessions.max())} days); lower session, or use at = "open"'
        )
    return int(hits[0])


def _rescale_after(b: StressBars, end: int, ratio: float) -> None:
    for a in (b.open, b.high, b.low, b.close):
        a[end:] *= ratio


def transform(sc: Scenario, bars: BarSeries, anchor: int, sessions: np.ndarray) -> StressBars:
    """The bars a data-transform scenario runs on (faults run on the bars unchanged)."""
    b = copy_bars(bars)
    end = int(np.flatnonzero(sessions == sessions[anchor])[-1]) + 1  # after the session
    if isinstance(sc, Gap):
        for a in (b.open, b.high, b.low, b.close):
            a[anchor:] *= 1.0 + sc.pct
    elif isinstance(sc, Volatility):
        start = int(np.flatnonzero(sessions == sessions[anchor])[0])
        base = float(b.open[start])
        old_close = float(b.close[end - 1])
        for a in (b.open, b.high, b.low, b.close):
            a[start:end] = base + sc.factor * (a[start:end] - base)
        if float(b.low[start:end].min()) <= 0.0:
            raise StressError(
                f"scenario {sc.name}: volatility × {sc.factor} drives the price to "
                f"{float(b.low[start:end].min()):.4g} (≤ 0); use a smaller factor"
            )
        _rescale_after(b, end, float(b.close[end - 1]) / old_close)
    elif isinstance(sc, Depth):
        b.volume[:] = np.floor(b.volume / sc.divisor)
    elif isinstance(sc, CircuitFreeze):
        ref = float(b.close[anchor - 1]) if anchor else float(b.open[anchor])
        limit = ref * (1.0 + sc.pct if sc.direction == "up" else 1.0 - sc.pct)
        old_close = float(b.close[end - 1])
        # The anchor bar runs to the band limit; every later bar of the session is frozen
        # there (prints at the limit, nothing traded).
        b.close[anchor] = limit
        b.high[anchor] = max(b.high[anchor], b.open[anchor], limit)
        b.low[anchor] = min(b.low[anchor], b.open[anchor], limit)
        for a in (b.open, b.high, b.low, b.close):
            a[anchor + 1 : end] = limit
        b.volume[anchor + 1 : end] = 0.0
        _rescale_after(b, end, limit / old_close)
    return b


def fault_hook(
    sc: Scenario, token: str | Sequence[str], anchor_ts_ms: int, sessions_start_ms: int
) -> Callable[[SimNode], Callable[[Tick], bool]] | None:
    """The event-mode fault a fault scenario injects (None for data transforms). With
    several tokens the outage starts at the first print with any of their brackets held
    and silences the whole feed."""
    if isinstance(sc, Outage):
        span_ms = int(sc.seconds * 1000)
        tokens = [token] if isinstance(token, str) else list(token)

        def outage(sim: SimNode) -> Callable[[Tick], bool]:
            state = {"from": -1}
            router = sim.router

            def deliver(tick: Tick) -> bool:
                t = tick.exchange_ts_ms
                if state["from"] < 0:
                    if t >= sessions_start_ms and any(map(router.bracket_levels, tokens)):
                        state["from"] = t
                        log.info("stress_outage_start", ts_ms=t, seconds=sc.seconds)
                    else:
                        return True
                return not state["from"] <= t < state["from"] + span_ms

            return deliver

        return outage
    if isinstance(sc, Rejects):

        def rejects(sim: SimNode) -> Callable[[Tick], bool]:
            broker = sim.router.broker
            left = {"n": sc.count, "armed": False}

            def refuse(_order: OrderRequest) -> str:
                if not left["armed"] or left["n"] <= 0:
                    return ""
                left["n"] -= 1
                return INJECTED_REASON

            if broker is None or not hasattr(broker, "fault"):
                raise StressError(f"scenario {sc.name}: needs the paper broker")
            broker.fault = refuse

            def deliver(tick: Tick) -> bool:
                if tick.exchange_ts_ms >= anchor_ts_ms:
                    left["armed"] = True
                return True

            return deliver

        return rejects
    return None


@dataclass(frozen=True)
class JudgeLimits:
    """What a run is judged against (from [governance] unless a test breaks one)."""

    daily_loss_pct: float
    max_position_qty: int
    max_position_value: float
    slippage_bps: float
    intraday: bool

    @classmethod
    def from_config(cls, bt: Config) -> JudgeLimits:
        g = bt.governance
        return cls(
            g.daily_loss_pct,
            g.max_position_qty,
            g.max_position_value,
            bt.execution.paper.slippage_bps,
            bt.execution.product == "INTRADAY",
        )


def judge(
    run: EventResult,
    journal: Path,
    limits: JudgeLimits,
    tz: str,
) -> dict[str, Any]:
    """The checks of one run (see the module docstring), each with its numbers."""
    from chimera_execution.journal_view import JournalReader

    problems: list[str] = []
    # Exits: nothing still held at the end; on an intraday product no trade over a night.
    held_at_end = [t for t in run.trades if t.exit_purpose == "END"]
    sessions = session_numbers(np.asarray(run.ts_ms), tz)
    overnight = [
        t
        for t in run.trades
        if limits.intraday and t.exit_bar >= 0 and sessions[t.exit_bar] != sessions[t.entry_bar]
    ]
    exits_ok = not held_at_end and not overnight
    if held_at_end:
        problems.append(f"{len(held_at_end)} position(s) still open at the end")
    if overnight:
        problems.append(f"{len(overnight)} intraday trade(s) held over a session end")
    # Caps: each instrument's running position after each fill, its quantity and value at
    # the fill; the worst over the instruments.
    worst = position_peaks(run.fills)
    worst_qty = max((q for q, _ in worst.values()), default=0)
    worst_value = max((v for _, v in worst.values()), default=0.0)
    # A fill may come in worse than the price the size was decided on by the slippage.
    value_cap = limits.max_position_value * (1.0 + 2.0 * limits.slippage_bps / 1e4) + 1e-6
    caps_ok = worst_qty <= limits.max_position_qty and worst_value <= value_cap
    if not caps_ok:
        problems.append(
            f"position reached {worst_qty} units / ₹{worst_value:,.0f}; caps "
            f"{limits.max_position_qty} units / ₹{limits.max_position_value:,.0f}"
        )
    # Daily loss on each day's opening equity.
    days, _ = daily_returns(np.asarray(run.ts_ms), run.equity, run.starting_equity, tz)
    worst_loss = max(0.0, -float(days.min()))
    loss_ok = worst_loss <= limits.daily_loss_pct + 1e-12
    if not loss_ok:
        problems.append(
            f"worst day lost {worst_loss:.3%} of its opening equity; daily_loss_pct "
            f"{limits.daily_loss_pct:.3%}"
        )
    # Journal: its own invariants, and each published fill booked exactly once.
    with JournalReader(journal) as reader:
        journal_problems = reader.check()
        booked = Counter((f.client_order_id, f.qty, round(f.price, 6)) for f in reader.fills())
        orders = reader.orders()
    published = Counter((f["client_order_id"], f["qty"], round(f["price"], 6)) for f in run.fills)
    lost = published - booked
    extra = booked - published
    if lost:
        journal_problems.append(f"{sum(lost.values())} published fill(s) not in the journal")
    if extra:
        journal_problems.append(f"{sum(extra.values())} journal fill(s) never published")
    problems.extend(journal_problems)
    rejected = sum(1 for o in orders if o.reason == INJECTED_REASON or INJECTED_REASON in o.reason)
    checks = {
        "exits_worked": exits_ok,
        "caps_held": caps_ok,
        "loss_within_daily_limit": loss_ok,
        "journal_ok": not journal_problems,
    }
    return {
        "verdict": "PASS" if all(checks.values()) else "FAIL",
        "checks": checks,
        "problems": problems,
        "worst_day_loss_pct": worst_loss,
        "max_position_qty": worst_qty,
        "max_position_value": worst_value,
        "trades": len(run.trades),
        "ticks": run.ticks,
        "fills": len(run.fills),
        "orders": len(orders),
        "injected_rejects": rejected,
        "final_equity": float(run.equity[-1]),
        "final_state": run.final_state,
        "transitions": run.transitions,
    }


def position_peaks(fills: Sequence[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """Per token: the largest position (units) after any fill, and its value at that fill."""
    net: dict[str, int] = {}
    peaks: dict[str, tuple[int, float]] = {}
    for f in fills:
        key = f["token"]
        net[key] = net.get(key, 0) + (f["qty"] if f["side"] == "BUY" else -f["qty"])
        q, v = peaks.get(key, (0, 0.0))
        peaks[key] = (max(q, abs(net[key])), max(v, abs(net[key]) * f["price"]))
    return peaks


def _run(
    cfg: Config,
    bars: BarSeries,
    token: str,
    exchange_type: int,
    work: Path,
    strategy: StrategyFactory,
    faults: Callable[[SimNode], Callable[[Tick], bool]] | None,
) -> EventResult:
    work.mkdir(parents=True, exist_ok=True)
    for old in work.rglob("*.db*"):  # a fresh journal each run
        old.unlink()
    return asyncio.run(
        run_event(cfg, bars, token, exchange_type, work, strategy=strategy, faults=faults)
    )


def run_scenarios(
    cfg: Config,
    bars: BarSeries,
    scenarios: Sequence[Scenario],
    strategy: StrategyFactory,
    work_dir: Path,
    token: str = "BT",
    exchange_type: int = 1,
    limits: JudgeLimits | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """The unchanged run, then each scenario, each judged; rows for the report."""
    from chimera_core.markets import calendar_for
    from chimera_execution.journal_view import journal_path

    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StressError(f"scenario names must be unique; repeated: {', '.join(dupes)}")
    bt = backtest_config(cfg, bars, token, exchange_type, work_dir)
    tz = calendar_for(bt.markets, exchange_type).timezone
    limits = limits or JudgeLimits.from_config(bt)
    sessions = session_numbers(np.asarray(bars.ts_ms, dtype=np.int64), tz)
    rows: list[dict[str, Any]] = []

    def one(name: str, kind: str, b: Any, faults: Any, anchor: int | None) -> EventResult:
        work = work_dir / name
        run = _run(cfg, b, token, exchange_type, work, strategy, faults)
        row = {
            "name": name,
            "kind": kind,
            "anchor_bar": anchor,
            "anchor_ts_ms": None if anchor is None else int(bars.ts_ms[anchor]),
            **judge(run, journal_path(work, "paper"), limits, tz),
        }
        rows.append(row)
        log.info("stress_scenario", name=name, verdict=row["verdict"], problems=row["problems"])
        if progress is not None:
            progress(name)
        return run

    for sc in scenarios:
        if sc.symbol and sc.symbol not in (token, getattr(bars, "symbol", token)):
            raise StressError(
                f"scenario {sc.name}: symbol = {sc.symbol!r}, but the data is one instrument "
                f"({token}); drop symbol or give the universe"
            )
    base = one("baseline", "none", bars, None, None)
    held = np.zeros(len(bars.ts_ms), dtype=bool)
    for t in base.trades:  # a position is open at the start of bars entry+1 .. exit
        if t.entry_bar >= 0 and t.exit_bar > t.entry_bar:
            held[t.entry_bar + 1 : t.exit_bar + 1] = True
    for sc in scenarios:
        anchor = anchor_bar(sc, sessions, held)
        start_ms = int(bars.ts_ms[int(np.flatnonzero(sessions >= sc.session)[0])])
        hook = fault_hook(sc, token, int(bars.ts_ms[anchor]), start_ms)
        changed = bars if hook is not None else transform(sc, bars, anchor, sessions)
        one(sc.name, kind_of(sc), changed, hook, anchor)
    return rows
