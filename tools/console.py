"""A live view of the engine a person can follow on a terminal (``chimera watch``, and
``make demo`` on a TTY).

It is one more telemetry subscriber — it never runs in the hot path — and it folds the
messages with the cortex's own ``CortexState`` (so the terminal and the browser cannot
disagree about what a decision said), then draws with rich: one row per instrument by
name (RELIANCE-EQ, not 2885) with the price, energy, z, regime, state, position and
P&L, refreshed in place, and a running line of the last events (fills, vetoes,
approvals, halts, operator commands, feed drops).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cortex.names import SessionNames
from cortex.state import CortexState, Snapshot, health_alerts

log = structlog.get_logger(__name__)

EVENT_LINES = 8
REFRESH_PER_S = 4.0
T = TypeVar("T")


def _new_items(items: Sequence[T], last: T | None) -> list[T]:
    """The items appended after ``last`` (by identity) to a bounded, append-only deque."""
    out: list[T] = []
    for item in reversed(items):
        if item is last:
            break
        out.append(item)
    out.reverse()
    return out


def _num(x: float, fmt: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, fmt)


class ConsoleView:
    """Telemetry in, a rich renderable out. ``handle`` may run on another thread."""

    def __init__(
        self,
        names: Callable[[Any], dict[str, str]] | None = None,
        event_lines: int = EVENT_LINES,
    ) -> None:
        self.state = CortexState()
        self._names = names or (lambda session: {})
        # [line, times in a row]: the same event again (a veto on every signal) counts up
        self.events: deque[list[Any]] = deque(maxlen=event_lines)
        self._last: dict[str, Any] = {}

    def handle(self, message: bytes, now_ns: int | None = None) -> None:
        with self.state.lock:
            self.state.handle(message, time.monotonic_ns() if now_ns is None else now_ns)

    def _events(self, snap: Snapshot, names: dict[str, str]) -> None:
        def name(token: str) -> str:
            return names.get(token, token)

        feeds: dict[str, Iterable[Any]] = {
            "exec": snap.exec_reports,
            "veto": snap.vetoes,
            "control": snap.controls,
            "feed": snap.feed_events,
            "notable": snap.notable,
        }
        for key, items in feeds.items():
            seq = list(items)
            fresh = _new_items(seq, self._last.get(key))
            if seq:
                self._last[key] = seq[-1]
            for item in fresh:
                line = self._line(key, item, name)
                if line:
                    self._add(line)

    def _add(self, line: str) -> None:
        """Append ``line``; the same event again (a veto on every signal) only counts up."""
        if self.events and self.events[-1][0] == line:
            self.events[-1][1] += 1
        else:
            self.events.append([line, 1])

    def event_lines(self) -> list[str]:
        """The event list as drawn: ``line (×N)`` for a line repeated N times in a row."""
        return [line if n == 1 else f"{line} (×{n})" for line, n in self.events]

    @staticmethod
    def _line(key: str, item: Any, name: Callable[[str], str]) -> str:
        if key == "exec":
            if item.fill is None:
                if item.kind.value in ("REJECTED", "CANCELLED"):
                    what = f"{item.kind.value} {name(item.token)} {item.purpose.value}"
                    return f"{what} {item.side.value} {item.order_qty} {item.reason}".rstrip()
                return ""
            f = item.fill
            return (
                f"FILL {name(item.token)} {item.purpose.value} {item.side.value} "
                f"{f.qty} @ {f.price:.2f}"
            )
        if key == "veto":
            kind = "HALT" if item["halt"] else "VETO"
            return f"{kind} {name(item['token'])} {item['reasons']}"
        if key == "control":
            arg = f" {item.arg}" if item.arg else ""
            return f"{item.command.upper()}{arg} {'ok' if item.ok else 'refused'}"
        if key == "feed":
            return f"FEED {'connected' if item.connected else 'DISCONNECTED'} (epoch {item.epoch})"
        if key == "notable":
            d = item
            if d.approval is not None and d.approval.approval_id and d.approval.status == "PENDING":
                return f"APPROVAL {name(d.token)} {d.approval.approval_id} waiting"
            for t in d.transitions:
                if t.to_state == "HALT":
                    return f"HALT {name(d.token)} {t.reason}"
            if d.intent is not None:
                return f"ENTRY {name(d.token)} {d.intent.side.value} {d.intent.qty}"
        return ""

    def render(self) -> RenderableType:
        snap = self.state.snapshot()
        names = self._names(snap.session)
        self._events(snap, names)
        h = snap.health
        trading = h.trading_state if h is not None else "waiting for the engine"
        feed = "" if h is None else (" · feed up" if h.feed_connected else " · FEED DOWN")
        title = f"Chimera · {trading}{feed} · {snap.counters['ticks']:,} ticks"
        table = Table(title=title, expand=False, title_justify="left")
        for col, justify in (
            ("instrument", "left"), ("price", "right"), ("energy", "right"), ("z", "right"),
            ("regime", "left"), ("state", "left"), ("position", "right"), ("P&L", "right"),
        ):  # fmt: skip
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for token, s in snap.symbols.items():
            d = s.latest
            if d is None:
                continue
            p = d.physics
            regime = d.drift.regime.value if d.drift is not None else "–"
            qty, pnl = 0, 0.0
            ex = d.execution
            if ex is not None:
                qty = ex.position_qty
                pnl = ex.realized_pnl + (qty * (p.close - ex.avg_price) if qty else 0.0)
            style = "green" if pnl > 0 else "red" if pnl < 0 else ""
            label = names.get(token)
            table.add_row(
                f"{label} · {token}" if label else token,
                _num(p.close, ",.2f"),
                _num(p.energy, "+.3f"),
                _num(p.z, "+.2f"),
                regime,
                d.state,
                f"{qty:+d}" if qty else "0",
                Text(_num(pnl, "+,.2f"), style=style),
            )
        alerts = [Text(a, style="bold red") for a in health_alerts(h, names=names)]
        events = [Text(e) for e in self.event_lines()] or [Text("no fills, vetoes or halts yet")]
        return Group(table, *alerts, Text("recent events", style="bold"), *events)


def names_from(data_dir: Path) -> Callable[[Any], dict[str, str]]:
    """token → name for the session in view, as the cortex resolves them."""
    resolver = SessionNames(data_dir)
    return lambda session: resolver.get(session, wait_s=0.0)


def watch(
    endpoint: str,
    data_dir: Path,
    until: Callable[[], bool],
    console: Console | None = None,
) -> None:
    """Subscribe to ``endpoint`` and draw the view in place until ``until()`` is true."""
    import zmq

    view = ConsoleView(names_from(data_dir))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    try:
        with Live(
            view.render(), console=console, refresh_per_second=REFRESH_PER_S, transient=False
        ) as live:
            next_draw = 0.0
            while not until():
                if sub.poll(50):
                    while True:
                        try:
                            view.handle(sub.recv(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                now = time.monotonic()
                if now >= next_draw:
                    live.update(view.render())
                    next_draw = now + 1.0 / REFRESH_PER_S
    finally:
        sub.close()


def main(argv: list[str] | None = None) -> int:
    from chimera_core.config import default_config_path, load_config

    parser = argparse.ArgumentParser(
        prog="chimera watch",
        description="a live terminal view of a running engine (a telemetry subscriber)",
    )
    parser.add_argument("--config", default=default_config_path(), help="TOML config")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else math.inf
    try:
        watch(cfg.telemetry.endpoint, Path(cfg.data_dir), lambda: time.monotonic() >= deadline)
    except KeyboardInterrupt:
        pass
    return 0
