"""The terminal view (tools/console.py) and the log format switch: what a person at a
terminal reads instead of 50 JSON lines a second. The view is fed real telemetry
messages (the publisher's own encoding); the demo test runs `make demo` on a real
pseudo-terminal with every process it starts."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from chimera_core.contracts import (
    ControlEvent,
    DriftOutput,
    ExecKind,
    ExecutionOutput,
    ExecutionReport,
    Fill,
    Health,
    MetaRiskOutput,
    Purpose,
    Regime,
    Side,
    TickRecord,
    Veto,
)
from chimera_core.logging import configure_logging, set_log_format
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_HEALTH,
    encode_message,
    tick_topic,
)
from tests.cortex.test_state import decision
from tests.loopback import REPO, free_port
from tests.tools.test_demo_twice import _demo_config
from tools.console import ConsoleView

NAMES = {"2885": "RELIANCE-EQ", "1594": "INFY-EQ"}
ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]")


def _tick(d: object) -> bytes:
    return encode_message(tick_topic(d), d.seq, TickRecord(d.recv_ns, b"", d))  # type: ignore[attr-defined]


def _text(view: ConsoleView, width: int = 200) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(view.render())
    return console.export_text()


def _fill(seq: int, token: str, qty: int, price: float, side: Side = Side.BUY) -> bytes:
    coid = f"CH-{seq}-{token}"
    report = ExecutionReport(
        ExecKind.FILLED, coid, coid, token, side, qty, qty, price, Purpose.ENTRY,
        fill=Fill(f"F{seq}", coid, token, side, qty, price, 1.0, 1_723_780_000_000),
    )  # fmt: skip
    return encode_message(TOPIC_EXEC, seq, report)


def test_a_row_per_instrument_by_name_with_position_and_pnl() -> None:
    view = ConsoleView(lambda session: NAMES)
    ex = ExecutionOutput(
        position_qty=5, avg_price=100.0, realized_pnl=-3.5, charges=1.0, open_orders=0,
        last_report="",
    )  # fmt: skip
    drift = DriftOutput(Regime.TRENDING, 0.1, 0.5, 0.1, 0.9, 0.01, 50)
    view.handle(_tick(decision(1, "2885", 104.25, state="READY", execution=ex, drift=drift)))
    view.handle(_tick(decision(2, "3045", 55.5)))
    text = _text(view)
    row = next(line for line in text.splitlines() if "RELIANCE-EQ · 2885" in line)
    # P&L = realized + 5 × (104.25 − 100) = −3.5 + 21.25
    for cell in ("104.25", "READY", "TRENDING", "+5", "+17.75"):
        assert cell in row, (cell, row)
    bare = next(line for line in text.splitlines() if "3045" in line)
    assert "·" not in bare and "55.50" in bare  # no name known: the token alone
    assert "INFY" not in text  # a name with no decision draws no row


def test_fills_vetoes_and_commands_show_once_each_in_the_event_line() -> None:
    view = ConsoleView(lambda session: NAMES)
    veto = MetaRiskOutput(
        allowed=False, halt=False, vetoes=(Veto("daily_loss", -5000.0, -4000.0, "net"),),
        rolling_sharpe=0.0, drawdown=0.0, daily_pnl=-5000.0, trades_today=3, open_positions=1,
    )  # fmt: skip
    view.handle(_fill(1, "2885", 5, 100.5))
    view.handle(_tick(decision(2, "2885", 100.0, meta_risk=veto)))
    view.handle(encode_message(TOPIC_CONTROL, 3, ControlEvent("pause", "", True, "paused", 1)))
    first = _text(view)
    assert "FILL RELIANCE-EQ · 2885" not in first  # events name the instrument alone
    assert "FILL RELIANCE-EQ ENTRY BUY 5 @ 100.50" in first
    assert "VETO RELIANCE-EQ daily_loss" in first
    assert "PAUSE ok" in first
    again = _text(view)  # a redraw adds nothing
    assert again.count("FILL RELIANCE-EQ") == 1 and again.count("PAUSE ok") == 1
    for seq in (4, 5, 6):  # the same veto on every signal counts up on one line
        view.handle(_tick(decision(seq, "2885", 100.0, meta_risk=veto)))
    text = _text(view)
    assert text.count("VETO RELIANCE-EQ daily_loss") == 2
    assert text.splitlines()[-1].rstrip().endswith("(×3)")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 999), min_size=1, max_size=60, unique=True), st.integers(1, 7))
def test_the_event_line_keeps_the_latest_events_whatever_the_redraw_rhythm(
    qtys: list[int], every: int
) -> None:
    """Distinct events (identical ones count up on one line), drawn every ``every``
    messages: each is shown in order, none twice, the newest last."""
    view = ConsoleView(lambda session: NAMES, event_lines=1000)
    for i, qty in enumerate(qtys, start=1):
        view.handle(_fill(i, "2885", qty, 100.0))
        if i % every == 0:
            view.render()
    view.render()
    shown = [int(e.split()[4]) for e in view.event_lines()]
    assert shown == qtys[-len(shown) :]
    # The cortex's bounded history (EVENTS) is the most a burst between two redraws can
    # lose; with a redraw at least every 7 messages nothing is lost.
    assert shown == qtys


def test_health_alerts_and_the_trading_state_head_the_view() -> None:
    view = ConsoleView(lambda session: NAMES)
    health = Health(
        1, {}, False, 1, True, 0, 0, True, {}, trading_state="HALTED", unprotected=["2885"]
    )
    view.handle(encode_message(TOPIC_HEALTH, 1, health))
    text = _text(view)
    assert "HALTED" in text and "FEED DOWN" in text
    assert "UNPROTECTED POSITIONS" in text and "RELIANCE-EQ · 2885" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def _restore_logging():
    yield
    set_log_format(None)
    os.environ.pop("CHIMERA_LOG_FORMAT", None)
    configure_logging("INFO")


def test_logs_are_json_off_a_terminal_and_readable_on_one(_restore_logging, monkeypatch) -> None:
    monkeypatch.delenv("CHIMERA_LOG_FORMAT", raising=False)
    set_log_format(None)
    pipe = io.StringIO()
    configure_logging("INFO", ["s3cr3t-value-long"], stream=pipe)
    structlog.get_logger("t").info("order_sent", token="2885", note="s3cr3t-value-long")
    line = orjson.loads(pipe.getvalue())
    assert line["event"] == "order_sent" and line["note"] == "***"
    tty = _Terminal()
    configure_logging("INFO", stream=tty)
    structlog.get_logger("t").info("order_sent", token="2885", note="s3cr3t-value-long")
    out = tty.getvalue()
    assert "order_sent" in out and "token" in out and "s3cr3t" not in out
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(out)
    monkeypatch.setenv("CHIMERA_LOG_FORMAT", "json")  # what the demo gives its processes
    tty = _Terminal()
    configure_logging("INFO", stream=tty)
    structlog.get_logger("t").info("order_sent", token="2885")
    assert orjson.loads(tty.getvalue())["token"] == "2885"
    set_log_format("console")  # the command line wins over the environment
    pipe = io.StringIO()
    configure_logging("INFO", stream=pipe)
    structlog.get_logger("t").info("order_sent", token="2885")
    assert not pipe.getvalue().startswith("{")


def test_a_bad_log_format_is_refused_by_name() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "--log-format", "xml", "doctor"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'xml'" in proc.stderr and "json" in proc.stderr and "console" in proc.stderr


@pytest.mark.timeout(180)
def test_make_demo_on_a_terminal_draws_the_live_view_and_logs_json_to_files(tmp_path) -> None:
    config = _demo_config(tmp_path)
    master, slave = pty.openpty()
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "DEMO_SECONDS": "25",
        "DEMO_CORTEX_PORT": str(free_port()), "COLUMNS": "160", "LINES": "40", "TERM": "xterm",
    }  # fmt: skip
    env.pop("DEMO_VIEW", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.demo", "--config", str(config)],
        cwd=tmp_path, env=env, stdin=slave, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: every process has exited
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0
    text = ANSI.sub(b"", bytes(screen)).decode(errors="replace")
    assert "RELIANCE-EQ · 2885" in text and "SBIN-EQ · 3045" in text, text[-3000:]
    assert "energy" in text and "recent events" in text
    assert not [line for line in text.splitlines() if line.lstrip().startswith('{"')], (
        "JSON log lines reached the terminal"
    )
    logs = Path(tmp_path / "data" / "logs")
    events = [orjson.loads(line) for line in (logs / "demo-live.log").read_bytes().splitlines()]
    assert any(e.get("event") == "engine_stopped" for e in events)
