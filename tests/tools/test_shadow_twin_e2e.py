"""The paper twin end to end, as real processes on 127.0.0.1: `chimera sim` (market data and
its SmartAPI REST order side), `chimera live` with ``execution.broker = "angelone"`` against
the simulator's REST (paper mode on loopback), and `chimera shadow`.

The shadow's ``active`` candidate trades the primary's decisions on its paper broker; its
``twin.json`` must pair its orders with the primary's real ones, both sides filled, with
price differences that are what the two journals' fills say (recomputed here with plain
SQL); `chimera shadow status` shows the summary and `chimera report` the "Paper vs live"
section, recomputed from the journals.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.loopback import chimera, free_port, wait_port
from tools.sim.orders import DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET

pytestmark = pytest.mark.timeout(240)

ENV = {
    "CHIMERA_API_KEY": "sim-api-key",
    "CHIMERA_CLIENT_CODE": DEFAULT_CLIENT_CODE,
    "CHIMERA_FEED_TOKEN": "sim-feed-token",
    "CHIMERA_JWT": "sim-jwt",
    "CHIMERA_PASSWORD": DEFAULT_PASSWORD,
    "CHIMERA_TOTP_SECRET": DEFAULT_TOTP_SECRET,
}
SYMBOLS = {"2885": "RELIANCE-EQ", "1594": "INFY-EQ", "3045": "SBIN-EQ"}


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _avg_prices(db: Path) -> dict[str, tuple[int, float]]:
    """client_order_id -> (filled qty, average fill price), from the fills table alone."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT client_order_id, SUM(qty), SUM(qty * price) FROM fills GROUP BY 1"
        ).fetchall()
    finally:
        con.close()
    return {c: (q, v / q) for c, q, v in rows}


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except Exception:
        proc.kill()
        proc.wait()


def test_the_paper_twin_is_compared_with_the_real_fills(tmp_path):
    sim_port, rest_port, tel_port, shadow_port = (free_port() for _ in range(4))
    symbols = "{ " + ", ".join(f'"{t}" = "{s}"' for t, s in SYMBOLS.items()) + " }"
    (tmp_path / "chimera.toml").write_text(
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nhealth_interval_s = 0.5\n'
        "wait_for_subscriber_s = 60\n"
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        "[governance]\napproval_size_limit = 1e9\napproval_min_confidence = 0.0\n"
        '[execution]\nbroker = "angelone"\n'
        "[execution.angelone]\n"
        f'rest_url = "http://127.0.0.1:{rest_port}"\n'
        f'order_ws_url = "ws://127.0.0.1:{rest_port}/smart-order-update"\n'
        f"poll_interval_s = 0.5\nsymbols = {symbols}\n"
        f'[shadow]\nendpoint = "tcp://127.0.0.1:{shadow_port}"\ncheck_interval_s = 0.5\n'
    )
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    sim = chimera(
        "sim", "--port", str(sim_port), "--rest-port", str(rest_port), "--rate", "500",
        "--seed", "4", cwd=tmp_path,
    )  # fmt: skip
    shadow = live = None
    twin_path = tmp_path / "data" / "shadow" / "active" / "twin.json"
    try:
        wait_port(sim_port)
        wait_port(rest_port)
        shadow = chimera("shadow", "run", cwd=tmp_path)
        deadline = time.monotonic() + 60
        while b"shadow_subscribed" not in shadow.output()[1]:
            assert shadow.poll() is None, shadow.output()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the shadow never subscribed"
            time.sleep(0.1)
        live = chimera("live", cwd=tmp_path)
        deadline = time.monotonic() + 150
        while True:
            twin = _json(twin_path)
            if twin and twin["both_filled"] >= 3:
                break
            for p in (shadow, live):
                assert p.poll() is None, p.output()[1].decode()[-3000:]
            assert time.monotonic() < deadline, f"the twin never paired 3 filled orders: {twin}"
            time.sleep(0.5)
        status = chimera("shadow", "status", cwd=tmp_path)
        assert status.wait(timeout=60) == 0, status.output()
        text = status.output()[0].decode()
        assert "paper twin vs angelone (paper)" in text and "price_diff_bps p50" in text, text
    finally:
        if live is not None:
            _stop(live)  # the engine first: the shadow gets its last reports
        if shadow is not None:
            _stop(shadow)
        _stop(sim)
    assert live.returncode == 0, live.output()[1].decode()[-3000:]

    twin = _json(twin_path)
    assert twin is not None and twin["twin"] is True and twin["broker"] == "angelone"
    status = _json(tmp_path / "data" / "shadow" / "active" / "status.json")
    assert status["twin"] is True and status["twin_off"] == ""
    live_db = tmp_path / "data" / "paper" / "chimera.db"
    paper_db = tmp_path / "data" / "shadow" / "active" / "paper" / "chimera.db"
    live_px, paper_px = _avg_prices(live_db), _avg_prices(paper_db)
    both = [r for r in twin["rows"] if r["live_price"] is not None and r["paper_price"] is not None]
    assert len(both) >= 3 and twin["both_filled"] == len(both)
    # The same decision, the same entry id; an exit's id may carry when it was decided (a
    # take-profit armed at the fill), so those pair by sequence where fills differed.
    assert all(r["matched_by"] == "id" for r in both if r["purpose"] == "ENTRY"), both
    assert all(r["matched_by"] in ("id", "sequence") for r in both)
    for r in both:
        lq, lp = live_px[r["client_order_id"]]
        pq, pp = paper_px[r["paper_client_order_id"]]
        assert (r["live_filled"], r["paper_filled"]) == (lq, pq)
        sign = 1 if r["side"] == "BUY" else -1
        assert r["price_diff_bps"] == pytest.approx(sign * (lp - pp) / pp * 1e4, abs=1e-6)
    diffs = sorted(r["price_diff_bps"] for r in twin["rows"] if r["price_diff_bps"] is not None)
    assert twin["price_diff_bps"]["n"] == len(diffs)
    assert min(diffs) <= twin["price_diff_bps"]["p50"] <= max(diffs)
    # Every real order is in a row (the engine stopped first; the shadow drained its reports).
    con = sqlite3.connect(f"file:{live_db}?mode=ro", uri=True)
    real = {c for (c,) in con.execute("SELECT client_order_id FROM orders")}
    con.close()
    assert real <= {r["client_order_id"] for r in twin["rows"] if r["live_filled"] is not None}

    # The daily report has the section, recomputed from the two journals.
    con = sqlite3.connect(f"file:{live_db}?mode=ro", uri=True)
    (last_ms,) = con.execute("SELECT MAX(exchange_ts_ms) FROM fills").fetchone()
    con.close()
    import datetime as dt
    from zoneinfo import ZoneInfo

    day = dt.datetime.fromtimestamp(last_ms / 1000, ZoneInfo("Asia/Kolkata")).date().isoformat()
    report = chimera("report", "--date", day, cwd=tmp_path, env={"COLUMNS": "200"})
    assert report.wait(timeout=120) == 0, report.output()
    out = report.output()[0].decode()
    assert "Paper vs live" in out, out
    saved = json.loads((tmp_path / "data" / "reports" / f"report-paper-{day}.json").read_text())
    section = saved["paper_vs_live"]
    assert section is not None and section["both_filled"] >= 3
    by_id = {r["client_order_id"]: r for r in twin["rows"]}
    for r in section["rows"]:
        if r["price_diff_bps"] is not None and r["client_order_id"] in by_id:
            assert r["price_diff_bps"] == pytest.approx(
                by_id[r["client_order_id"]]["price_diff_bps"]
            )
    html = (tmp_path / "data" / "reports" / f"report-paper-{day}.html").read_text()
    assert "Paper vs live" in html
