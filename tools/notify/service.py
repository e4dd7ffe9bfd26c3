"""``chimera notify``'s process: telemetry SUB → rules → rate limit → per-channel filter →
outbox → delivery (apprise, retried with backoff, in order) → the ``alert`` topic.

A side process: it only subscribes to telemetry and reads the approvals store, so the hot
path never waits on it. What it tells the trader goes back to the engine over the
token-checked control channel as the informational ``alert`` command, which the engine
only republishes, so the black box records every alert sent or dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import structlog
import zmq
import zmq.asyncio

from chimera_core.commands import Command
from chimera_core.config import Config, NotifyChannelConfig
from chimera_core.contracts import AlertRecord
from chimera_core.control import ControlClient, ControlError
from chimera_core.errors import ChimeraError
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_HEALTH,
    TOPIC_RECON,
    TOPIC_SESSION,
    TOPIC_TICK,
    decoder_for,
    split,
)
from tools.notify.channels import Channel
from tools.notify.outbox import DROPPED, PENDING, Outbox, OutboxRow
from tools.notify.policy import RateLimit, channel_verdict
from tools.notify.rules import Alert, AlertRules, Memory, Pending, TickDecisionView

log = structlog.get_logger(__name__)

# Everything but raw frames (no decision) and our own alert topic.
TOPICS = (TOPIC_SESSION, TOPIC_HEALTH, TOPIC_CONTROL, TOPIC_EXEC, TOPIC_RECON, TOPIC_TICK)
_ALL_EVENTS = NotifyChannelConfig()
SEND_TIMEOUT_S = 30.0
MEMORY_KEY = "rules"
KEEP_DAYS = 30  # delivered alerts stay in the outbox this long (the black box has them too)
CLOCK_EVERY_S = 0.2
Clock = Callable[[], int]


class Notifier:
    """The notify process's state: rules, rate limit, channels, the outbox."""

    def __init__(
        self,
        cfg: Config,
        channels: dict[str, Channel],
        outbox: Outbox,
        control: Callable[[str, str], dict[str, Any]] | None,
        approvals_db: Path | None = None,
        clock: Clock = time.time_ns,
    ) -> None:
        self.cfg = cfg
        self.n = cfg.notify
        self.tz = ZoneInfo(self.n.timezone)
        self.rules = AlertRules(cfg, self.tz)
        self.limit = RateLimit(self.n.rate_limit, self.n.rate_window_s)
        self.channels = channels
        self.outbox = outbox
        self.control = control
        self.approvals_db = approvals_db
        self._approvals: Any = None
        self.clock = clock
        self.started_ns = clock()
        self._wake = {name: asyncio.Event() for name in channels}
        self._publish_wake = asyncio.Event()
        self._next_poll_ns = 0
        self._next_prune_ns = 0
        self._next_report_check_ns = 0
        from chimera_core.contracts import ExchangeType
        from chimera_core.markets import calendar_for

        self._calendar = calendar_for(
            cfg.markets, int(ExchangeType[cfg.feed.exchange_type]), cfg.execution.square_off_at
        )
        self._decode: dict[
            bytes, tuple[Callable[[bytes], Any], Callable[[Any, int], list[Alert]]]
        ] = {
            TOPIC_SESSION: (decoder_for(TOPIC_SESSION), self.rules.on_session),
            TOPIC_HEALTH: (decoder_for(TOPIC_HEALTH), self.rules.on_health),
            TOPIC_CONTROL: (decoder_for(TOPIC_CONTROL), self.rules.on_control),
            TOPIC_EXEC: (decoder_for(TOPIC_EXEC), self.rules.on_exec),
            TOPIC_RECON: (decoder_for(TOPIC_RECON), self.rules.on_recon),
        }
        self._decode_tick = decoder_for(TOPIC_TICK, TickDecisionView)
        self.raised = 0
        saved = outbox.recall(MEMORY_KEY)
        if saved is not None:
            try:
                self.rules.restore(msgspec.json.decode(saved, type=Memory))
            except msgspec.DecodeError:
                log.warning("notify_memory_unreadable", path=str(outbox.path))
        self._saved = saved or b""

    # ---- telemetry in ------------------------------------------------------------------
    def on_message(self, message: bytes) -> None:
        topic, _, payload = split(message)
        now = self.clock()
        if topic.startswith(TOPIC_TICK):
            decision = self._decode_tick(payload).decision
            if decision is not None:
                self.raise_alerts(self.rules.on_decision(decision, now))
            return
        entry = self._decode.get(topic)
        if entry is not None:
            decode, rule = entry
            self.raise_alerts(rule(decode(payload), now))

    def remember(self) -> None:
        """Keep the rules' memory in the outbox file when it changed (no repeat after a
        restart: the same session is not announced twice, a known state not re-told)."""
        snapshot = msgspec.json.encode(self.rules.memory())
        if snapshot != self._saved:
            self.outbox.remember(MEMORY_KEY, snapshot)
            self._saved = snapshot

    def on_clock(self) -> None:
        now = self.clock()
        self.raise_alerts(self.rules.on_clock(now))
        for summary in self.limit.flush(now):
            self._route(summary)
        if self.rules.approvals_dirty or now >= self._next_poll_ns:
            self._next_poll_ns = now + int(self.n.approvals_poll_s * 1e9)
            self.raise_alerts(self.rules.on_approvals(self._pending(), now))
            self.raise_alerts(self.rules.on_proposals(self._proposals(), now))
        self._daily_report(now)
        self._bot_refusals(now)
        self.remember()
        if now >= self._next_prune_ns:
            self._next_prune_ns = now + int(3600e9)
            pruned = self.outbox.prune(now - int(KEEP_DAYS * 86400e9))
            if pruned:
                log.info("notify_outbox_pruned", alerts=pruned, older_than_days=KEEP_DAYS)

    def _proposals(self) -> list[dict[str, Any]]:
        """PENDING proposals (genome candidates, shadow promotions, an assistant's change)."""
        if self.approvals_db is None or not self.approvals_db.is_file():
            return []
        from chimera_governance.approvals import PENDING as WAITING
        from chimera_governance.approvals import proposals

        try:
            return [p for p in proposals(self.approvals_db) if p["status"] == WAITING]
        except ChimeraError as exc:
            log.warning("notify_proposals_unreadable", path=str(self.approvals_db), error=str(exc))
            return []

    def _bot_refusals(self, now_ns: int) -> None:
        """New lines of the bot's refusals file (``data_dir/bot/refusals.jsonl``): each
        refused stranger is an alert, once (the offset read is in the rules' memory)."""
        path = Path(self.cfg.data_dir) / "bot" / "refusals.jsonl"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        rules = self.rules
        if size < rules.refusals_read:
            rules.refusals_read = 0  # replaced by a new file: read it from the start
        if size == rules.refusals_read:
            return
        with path.open("rb") as f:
            f.seek(rules.refusals_read)
            data = f.read(size - rules.refusals_read)
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
        alerts: list[Alert] = []
        for line in complete.splitlines():
            try:
                record = msgspec.json.decode(line)
            except msgspec.DecodeError:
                log.warning("notify_refusal_unreadable", path=str(path))
                continue
            if isinstance(record, dict):
                alerts += rules.on_refusal(record, now_ns)
        rules.refusals_read += len(complete)
        self.raise_alerts(alerts)
        self.remember()

    def _daily_report(self, now_ns: int) -> None:
        """Once a trading day, ``daily_report_after_min`` after the market calendar's close
        (wall clock: a real session), the day's `chimera report` as an alert."""
        after = self.n.daily_report_after_min
        if after < 0 or now_ns < self._next_report_check_ns:
            return
        self._next_report_check_ns = now_ns + int(30e9)
        now_ms = now_ns // 1_000_000
        session = self._calendar.session(now_ms - after * 60_000)
        if session is None or now_ms < session.close_ms + after * 60_000:
            return  # no session today yet, or not closed long enough
        if session.day in self.rules.reported_days:
            return
        from tools.report import build_report, write_report

        day = dt.date(session.day // 10_000, session.day // 100 % 100, session.day % 100)
        try:
            report = build_report(self.cfg.data_dir, self.cfg.mode, day)
            paths = write_report(report, self.cfg.data_dir)
        except (ChimeraError, OSError) as exc:
            log.warning("notify_daily_report_failed", day=session.day, error=str(exc))
            return
        self.raise_alerts(
            self.rules.on_report(session.day, report.short_text(), str(paths["html"]), now_ns)
        )

    def _pending(self) -> list[Pending]:
        """PENDING approvals through the store's read-only view; [] while it cannot be read
        (no file yet, the engine mid-write): the next poll tries again."""
        if self.approvals_db is None or not self.approvals_db.is_file():
            return []
        from chimera_governance.approvals import ApprovalsView

        try:
            if self._approvals is None:
                self._approvals = ApprovalsView(self.approvals_db)
            records = self._approvals.pending()
        except ChimeraError as exc:
            log.warning("notify_approvals_unreadable", path=str(self.approvals_db), error=str(exc))
            if self._approvals is not None:
                self._approvals.close()
            self._approvals = None
            return []
        return [
            Pending(
                r.approval_id,
                r.intent.side.value,
                r.intent.qty,
                r.intent.token,
                r.intent.ref_price,
                r.value,
                r.reason,
                r.created_ms,
            )
            for r in records
        ]

    # ---- alerts to channels -----------------------------------------------------------
    def raise_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            for out in self.limit.admit(alert):
                self._route(out)
        if alerts:
            self.remember()  # before the next message, so a crash cannot repeat these

    def _route(self, alert: Alert) -> None:
        self.raised += 1
        log.info("alert_raised", alert=alert.name, severity=alert.severity, text=alert.text)
        now = self.clock()
        for name in self.channels:
            ok, why = channel_verdict(self.n.channels.get(name, _ALL_EVENTS), alert, self.tz)
            self.outbox.add(name, alert, PENDING if ok else DROPPED, why, now)
            if ok:
                self._wake[name].set()
            else:
                log.info("alert_dropped", alert=alert.name, channel=name, reason=why)
                self._publish_wake.set()

    async def deliver(self, channel: Channel, stop: asyncio.Event) -> None:
        """Send the channel's alerts one at a time, oldest first; a failure is retried
        (doubling the wait up to retry_max_s) and holds back everything after it."""
        wake = self._wake[channel.name]
        while not stop.is_set():
            row = self.outbox.head(channel.name)
            now = self.clock()
            if row is None or row.next_try_ns > now:
                wake.clear()
                wait_s = 1.0 if row is None else min(1.0, (row.next_try_ns - now) / 1e9)
                await _wait(wake, stop, wait_s)
                continue
            late = (
                row.attempts > 0
                or row.raised_ns < self.started_ns
                or (now - row.raised_ns > self.n.late_after_s * 1e9)
            )
            title, body = self._render(row, late, now)
            error = ""
            try:
                ok = await asyncio.wait_for(
                    channel.send(title, body, row.severity, row.attach), SEND_TIMEOUT_S
                )
            except Exception as exc:  # any sender failure is a retry, never a crash
                ok, error = False, type(exc).__name__
            if ok:
                self.outbox.sent(row.seq, self.clock(), late)
                log.info("alert_sent", alert=row.name, channel=channel.name, id=row.alert_id,
                         late=late)  # fmt: skip
                self._publish_wake.set()
                continue
            delay = min(self.n.retry_initial_s * 2**row.attempts, self.n.retry_max_s)
            self.outbox.failed(row.seq, error or "delivery failed", now + int(delay * 1e9))
            log.warning("alert_delivery_failed", alert=row.name, channel=channel.name,
                        id=row.alert_id, attempt=row.attempts + 1, retry_in_s=delay,
                        error=error or "delivery failed")  # fmt: skip

    def _render(self, row: OutboxRow, late: bool, now: int) -> tuple[str, str]:
        title = f"[{row.severity.upper()}] chimera {row.name}"
        body = row.text
        if late:
            when = dt.datetime.fromtimestamp(row.raised_ns / 1e9, self.tz).strftime("%H:%M:%S %Z")
            body = f"LATE (raised {when}, {(now - row.raised_ns) / 1e9:.0f} s ago): {body}"
        return title, body

    # ---- back onto telemetry ----------------------------------------------------------
    async def publish_back(self, stop: asyncio.Event) -> None:
        """Every sent or dropped alert, in order, to the engine's ``alert`` topic; held
        (in the outbox) while the engine does not answer."""
        backoff = 0.0
        while not stop.is_set():
            rows = self.outbox.unpublished() if self.control is not None else []
            if not rows:
                self._publish_wake.clear()
                await _wait(self._publish_wake, stop, 1.0)
                continue
            for row in rows:
                record = AlertRecord(
                    alert_id=row.alert_id,
                    name=row.name,
                    severity=row.severity,
                    text=row.text,
                    channel=row.channel,
                    outcome="sent" if row.status != DROPPED else "dropped",
                    reason=row.reason if row.status == DROPPED else "",
                    late=row.late,
                    raised_ns=row.raised_ns,
                    at_ns=row.done_ns or 0,
                )
                arg = msgspec.json.encode(record).decode()
                assert self.control is not None
                try:
                    reply = await asyncio.to_thread(self.control, Command.ALERT, arg)
                except ControlError as exc:
                    reply = {"ok": False, "error": str(exc)}
                if not reply.get("ok"):
                    backoff = min(max(backoff * 2, 0.5), 10.0)
                    log.warning("alert_publish_failed", id=row.alert_id, retry_in_s=backoff,
                                error=str(reply.get("error", reply.get("result"))))  # fmt: skip
                    await _wait(asyncio.Event(), stop, backoff)
                    break
                backoff = 0.0
                self.outbox.published(row.seq)

    def close(self) -> None:
        if self._approvals is not None:
            self._approvals.close()


async def _wait(event: asyncio.Event, stop: asyncio.Event, timeout_s: float) -> None:
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def run_notify(notifier: Notifier, endpoint: str, stop: asyncio.Event) -> None:
    """Subscribe to ``endpoint`` and run the notifier until ``stop``."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    sock.setsockopt(zmq.LINGER, 0)
    for t in TOPICS:
        sock.setsockopt(zmq.SUBSCRIBE, t)
    sock.connect(endpoint)
    waiter = zmq.asyncio.Socket.shadow(sock.underlying)
    tasks = [asyncio.ensure_future(notifier.deliver(ch, stop)) for ch in notifier.channels.values()]
    tasks.append(asyncio.ensure_future(notifier.publish_back(stop)))
    log.info("notify_started", telemetry=endpoint,
             channels={n: c.display for n, c in notifier.channels.items()})  # fmt: skip
    next_clock = 0.0
    try:
        while not stop.is_set():
            if await waiter.poll(int(CLOCK_EVERY_S * 1000)):
                for _ in range(10_000):  # drain what is queued, then look at the clock
                    try:
                        message = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        notifier.on_message(message)
                    except ChimeraError as exc:  # a bad message is skipped, never fatal
                        log.warning("notify_message_skipped", error=str(exc))
            if time.monotonic() >= next_clock:
                next_clock = time.monotonic() + CLOCK_EVERY_S
                notifier.on_clock()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        waiter.close(linger=0)
        sock.close(linger=0)
        notifier.close()
        log.info("notify_stopped", raised=notifier.raised)


def control_sender(
    endpoint: str, token: Callable[[], str], timeout_s: float
) -> Callable[[str, str], dict[str, Any]]:
    """Requests over the control channel; the token is read on first use (the engine may
    create it after notify starts)."""
    client: list[ControlClient] = []

    def send(command: str, arg: str) -> dict[str, Any]:
        if not client:
            try:
                client.append(ControlClient(endpoint, token(), timeout_s, by="notify"))
            except ChimeraError as exc:
                return {"ok": False, "error": f"no control token yet: {exc}"}
        return client[0].request(command, arg)

    return send
