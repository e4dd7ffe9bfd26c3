"""Notify: a proposal waiting for a human (a shadow candidate that passed its gates, a
genome candidate) is told once; the day's report is told once per trading day, after the
market calendar's close, from the real journal through `chimera report`'s builder; a
stranger the Telegram bot refused is a critical alert, once. A channel that takes files
(mail) gets the report's HTML attached."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

from chimera_core.config import parse_config
from chimera_execution.journal import Journal
from chimera_governance.approvals import propose, queue_promotion
from tests.loopback import free_port
from tests.tools.notify.stand_ins import SmtpServer
from tools.notify.channels import Channel
from tools.notify.outbox import Outbox
from tools.notify.service import Notifier

IST = ZoneInfo("Asia/Kolkata")


def _ns(y: int, m: int, d: int, hh: int, mm: int) -> int:
    return int(dt.datetime(y, m, d, hh, mm, tzinfo=IST).timestamp() * 1e9)


def _notifier(tmp: Path, now: list[int]) -> tuple[Notifier, Outbox]:
    cfg = parse_config(f'data_dir = "{tmp / "data"}"\n[notify]\ndaily_report_after_min = 15\n')
    outbox = Outbox(tmp / "outbox.db")
    approvals = tmp / "data" / "paper" / "approvals.db"
    # A channel nothing delivers from here (no delivery task runs): alerts wait in its outbox.
    channel = Channel("ops", ["json://127.0.0.1:9/"], "test")
    notifier = Notifier(cfg, {"ops": channel}, outbox, None, approvals, clock=lambda: now[0])
    return notifier, outbox


def _names(outbox: Outbox) -> list[str]:
    rows = outbox._db.execute("SELECT name, text FROM alert ORDER BY seq").fetchall()
    return [r[0] for r in rows]


def test_the_days_report_is_told_once_after_the_close(tmp_path: Path) -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())  # the notifier's wake events
    Journal(tmp_path / "data", "paper", starting_cash=1e6).close()  # a paper journal, no trades
    now = [_ns(2026, 12, 2, 15, 40)]  # a Wednesday: NSE closed 15:30, +15 min not yet
    notifier, outbox = _notifier(tmp_path, now)
    notifier.on_clock()
    assert "daily_report" not in _names(outbox)
    now[0] = _ns(2026, 12, 2, 15, 46)
    notifier.on_clock()
    now[0] = _ns(2026, 12, 2, 18, 0)
    notifier._next_report_check_ns = 0  # the 30 s throttle, not the subject here
    notifier.on_clock()
    assert _names(outbox).count("daily_report") == 1
    (text,) = [r[0] for r in outbox._db.execute(
        "SELECT text FROM alert WHERE name = 'daily_report'").fetchall()]  # fmt: skip
    assert "paper report 2026-12-02" in text
    html = Path(text.rsplit("full report: ", 1)[1])
    assert html.is_file() and html.suffix == ".html"
    # A restarted notify remembers the day (the rules' memory is in the outbox file).
    outbox.close()
    again, outbox2 = _notifier(tmp_path, now)
    again.on_clock()
    assert _names(outbox2).count("daily_report") == 1
    outbox2.close()


def test_the_report_goes_by_mail_with_its_html_attached(tmp_path: Path) -> None:
    Journal(tmp_path / "data", "paper", starting_cash=1e6).close()
    smtp = SmtpServer(free_port())
    smtp.start()
    try:
        now = [_ns(2026, 12, 2, 18, 0)]
        cfg = parse_config(
            f'data_dir = "{tmp_path / "data"}"\n[notify]\ndaily_report_after_min = 15\n'
        )
        url = f"mailto://127.0.0.1:{smtp.port}?to=ops@example.com&from=chimera@example.com&format=text"
        mail = Channel("mail", [url], "test")

        async def deliver() -> None:
            outbox = Outbox(tmp_path / "outbox.db")
            notifier = Notifier(cfg, {"mail": mail}, outbox, None, tmp_path / "a.db",
                                clock=lambda: now[0])  # fmt: skip
            notifier.on_clock()
            stop = asyncio.Event()
            task = asyncio.create_task(notifier.deliver(mail, stop))
            for _ in range(200):
                if smtp.received:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await task
            outbox.close()

        asyncio.run(deliver())
    finally:
        smtp.stop()
    (got,) = smtp.received
    assert "paper report 2026-12-02" in got.body
    html = Path(got.body.rsplit("full report: ", 1)[1].split()[0])
    ((name, data),) = got.attachments
    assert name == html.name and data == html.read_bytes() and b"<html" in data.lower()


def test_a_notify_started_at_the_weekend_tells_fridays_report(tmp_path: Path) -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())
    Journal(tmp_path / "data", "paper", starting_cash=1e6).close()
    now = [_ns(2026, 12, 6, 18, 0)]  # a Sunday: Friday's session was the last one
    notifier, outbox = _notifier(tmp_path, now)
    notifier.on_clock()
    rows = outbox._db.execute("SELECT text FROM alert WHERE name = 'daily_report'").fetchall()
    assert len(rows) == 1 and "2026-12-04" in rows[0][0]
    outbox.close()


def test_proposals_waiting_are_told_once_by_kind(tmp_path: Path) -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())
    db = tmp_path / "data" / "paper" / "approvals.db"
    db.parent.mkdir(parents=True)
    pid, _ = queue_promotion(db, "calm", "default", {"band_k": 2.5}, "gates ok", 5)
    other = propose(db, "genome_change", {"family": "default", "params": {"band_k": 3.0}},
                    "wider", "assistant", 6)  # fmt: skip
    now = [_ns(2026, 12, 2, 10, 0)]
    notifier, outbox = _notifier(tmp_path, now)
    notifier.on_clock()
    now[0] += int(5e9)
    notifier.on_clock()
    rows = outbox._db.execute("SELECT name, text FROM alert ORDER BY seq").fetchall()
    told = [(n, t) for n, t in rows if n in ("shadow_candidate_passed", "proposal_waiting")]
    assert [n for n, _ in told] == ["shadow_candidate_passed", "proposal_waiting"]
    assert f"chimera approve {pid}" in told[0][1] and other in told[1][1]
    outbox.close()


def test_each_stranger_the_bot_refused_is_one_critical_alert(tmp_path: Path) -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())
    refusals = tmp_path / "data" / "bot" / "refusals.jsonl"
    refusals.parent.mkdir(parents=True)
    lines = [
        {"event": "bot_refused", "user_id": 666, "username": "mallory", "chat_id": 1,
         "text": "/halt"},
        {"event": "bot_refused", "user_id": 667, "username": "", "chat_id": 2, "text": "/resume"},
    ]  # fmt: skip
    refusals.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[1])[:20])  # mid-write
    now = [_ns(2026, 12, 2, 10, 0)]
    notifier, outbox = _notifier(tmp_path, now)
    notifier.on_clock()
    refusals.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[1]) + "\n")
    notifier.on_clock()
    notifier.on_clock()
    rows = outbox._db.execute(
        "SELECT severity, text FROM alert WHERE name = 'bot_refused' ORDER BY seq"
    ).fetchall()
    assert [r[0] for r in rows] == ["critical", "critical"]
    assert "user 666 (@mallory)" in rows[0][1] and "'/halt'" in rows[0][1]
    assert "user 667 in chat 2" in rows[1][1]
    outbox.close()
    again, outbox2 = _notifier(tmp_path, now)  # a restart tells neither again
    again.on_clock()
    assert outbox2._db.execute(
        "SELECT COUNT(*) FROM alert WHERE name = 'bot_refused'"
    ).fetchone() == (2,)
    outbox2.close()
