"""``chimera live``'s async driver: the feed client, the node (``chimera_core.node``), the
control server and the health loop, until stopped. The engine itself (``event_loop``)
knows none of these."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from chimera_core.commands import Command
from chimera_core.config import Config, Credentials, feed_symbols
from chimera_core.contracts import (
    AlertRecord,
    FeedEvent,
    GovernanceState,
    Health,
    Mode,
    SessionInfo,
)
from chimera_core.control import ControlServer
from chimera_core.errors import ChimeraError
from chimera_core.event_loop import DecisionLog, Engine, session_info
from chimera_core.feed.client import FeedClient
from chimera_core.governance import Governance
from chimera_core.logging import redactor
from chimera_core.node import MakeNode
from chimera_core.physics import warm_up_kernels
from chimera_core.telemetry import (
    TOPIC_ALERT,
    TOPIC_FEED,
    TOPIC_HEALTH,
    TOPIC_RECON,
    TOPIC_SESSION,
    TOPIC_STATE,
    TelemetryPublisher,
)
from chimera_core.telemetry.blackbox import MAX_RECORD

log = structlog.get_logger(__name__)


def sd_notify(state: str) -> bool:
    """Tell systemd our state when run as a Type=notify service ($NOTIFY_SOCKET set).

    The protocol is one datagram on a unix socket (sd_notify(3)); the Python bindings need
    libsystemd headers to build, so these few lines are ours. False when not under systemd.
    """
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True


async def run_live(
    cfg: Config,
    credentials: Credentials,
    make_node: MakeNode,
    stop: asyncio.Event | None = None,
    control_token: str = "",
) -> Engine:
    """Run the engine on the configured feed until ``stop`` is set (or SIGINT/SIGTERM).

    Wiring only: feed → Engine.on_frame → telemetry → router (intents, ticks), broker
    reports → Engine.on_report → telemetry, a control server for operator commands, and a
    health loop. Every piece that can be slow lives outside the tick path. ``make_node``
    builds the node (engine, governance, router) once the telemetry publisher exists.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    shutdown: list[str] = []  # the signal that asked us to stop, halted on before exit

    def on_signal(sig: signal.Signals) -> None:
        shutdown.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):
            pass
    warm_up_kernels()  # compile/load the numba cache now, never on the first tick
    telemetry = TelemetryPublisher(
        cfg.telemetry.endpoint, cfg.telemetry.hwm, batch=cfg.telemetry.batch
    )
    session = session_info(cfg)
    # The node comes from the composition root (tools/node.py build_node), the one place a
    # node is assembled for live, replay, the backtester and shadow candidates.
    node = make_node(
        sinks=[DecisionLog(cfg.logging.decisions)],
        publish=telemetry.publish,
        publish_tick=telemetry.tick,
    )
    engine, router = node.engine, node.router
    on_frame, on_control, journal_error = node.on_frame, node.on_control, node.journal_error

    def on_feed_state(connected: bool) -> None:
        engine.on_feed_state(connected)
        telemetry.publish(TOPIC_FEED, FeedEvent(connected, engine.feed_epoch, engine.clock()))

    feed = FeedClient(
        cfg.feed.url,
        credentials.headers(),
        on_frame,
        reconnect_initial_s=cfg.feed.reconnect_initial_s,
        reconnect_max_s=cfg.feed.reconnect_max_s,
        ping_interval_s=cfg.feed.ping_interval_s,
        ping_timeout_s=cfg.feed.ping_timeout_s,
        on_state=on_feed_state,
    )
    for exchange_type, tokens in _by_segment(feed_symbols(cfg)).items():
        # SmartAPI subscribes per exchange type: one list per segment, one connection.
        await feed.subscribe(int(Mode[cfg.feed.mode]), exchange_type, tokens)
    control = (
        ControlServer(cfg.control.endpoint, control_token, _with_alerts(on_control, telemetry))
        if control_token
        else None
    )
    # Start-up objects go to the permanent generation: full collections stay short.
    gc.freeze()
    log.info(
        "engine_started",
        mode=cfg.mode,
        feed=cfg.feed.url,
        tokens=cfg.feed.tokens,
        session=session.session_id,
        telemetry=telemetry.endpoint,
        control=control.endpoint if control else None,
    )
    # The recorder (not just any subscriber) must be attached before the first message, so
    # the black box files this session from its first message.
    await telemetry.wait_for_recorder(cfg.telemetry.wait_for_subscriber_s, stop)
    telemetry.publish(TOPIC_SESSION, session)  # seq 1: a recorder attached above gets it
    _publish_governance_state(node.governance, telemetry)  # seq 2: where replay starts
    if router is not None:

        def use_login_headers(headers: dict[str, str]) -> None:
            # Angel One's login issued this session's JWT and feed token: the feed uses
            # them on its next (re)connect; they expire daily and a re-login renews them.
            redactor.add(
                [headers["Authorization"].removeprefix("Bearer "), headers["x-feed-token"]]
            )
            feed.set_headers(headers)
            log.info("feed_credentials_from_broker_login")

        try:
            recon = await node.connect(use_login_headers)
        except ChimeraError as exc:
            telemetry.close()
            log.error("reconciliation_failed", error=str(exc))
            raise
        assert recon is not None
        telemetry.publish(TOPIC_RECON, recon)
        if not recon.ok:
            log.error("trading_blocked", reason="reconciliation", mismatches=list(recon.mismatches))
    node.restore_halts()
    # systemd (Type=notify): ready once the engine is up and the broker reconciled.
    trading = "trading" if engine.reconciled else "NOT trading (reconciliation mismatches)"
    sd_notify(f"READY=1\nSTATUS={trading} {cfg.mode}")
    tasks = [
        asyncio.ensure_future(
            _report_health(engine, feed, telemetry, session, cfg, stop, on_control, journal_error)
        ),
    ]
    if control is not None:
        tasks.append(asyncio.ensure_future(control.serve(stop)))
    try:
        await feed.run(stop)
    finally:
        if shutdown:
            # Stopping on a signal (systemd stop, Ctrl-C) halts trading first, recorded,
            # so nothing new is decided between now and exit.
            sd_notify("STOPPING=1")
            on_control(Command.HALT, f"shutdown_{shutdown[0].lower()}")
        stop.set()
        if router is not None:
            # Open orders are cancelled (execution.cancel_on_stop) and their answers
            # journaled and published before the telemetry socket closes.
            await router.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine.log_limiter.flush(final=True)
        telemetry.close()
        log.info(
            "engine_stopped",
            **engine.stats.as_dict(),
            feed_connects=feed.stats.connects,
            telemetry_sent=telemetry.sent,
            telemetry_dropped=telemetry.dropped,
        )
    return engine


async def _report_health(
    engine: Engine,
    feed: FeedClient,
    telemetry: TelemetryPublisher,
    session: SessionInfo,
    cfg: Config,
    stop: asyncio.Event,
    on_control: Callable[[str, str], tuple[bool, dict[str, Any]]],
    journal_error: list[str],
) -> None:
    """Health on telemetry every interval (with the session info, for late joiners), and a
    log line every stats interval. It also watches what no tick can: positions whose feed
    went dark, and the free space under data_dir."""
    interval_s = cfg.telemetry.health_interval_s
    next_log = time.monotonic() + cfg.logging.stats_interval_s
    ex = cfg.execution
    dark_after_ns = int(ex.unprotected_after_s * 1e9)
    started_ns = engine.clock()
    unprotected: list[str] = []
    low_disk = False
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
        telemetry.drain_subscriptions()
        dark = engine.unprotected(engine.clock(), dark_after_ns, started_ns)
        if dark != unprotected:
            for token in sorted(set(dark) - set(unprotected)):
                log.error(
                    "position_unprotected",
                    token=token,
                    qty=engine.positions.get(token).qty,
                    dark_after_s=ex.unprotected_after_s,
                    action=ex.unprotected_action,
                )
                if ex.unprotected_action == "flatten":
                    on_control("flatten_token", token)
            if dark and ex.unprotected_action == "exits_only":
                on_control("reduce", "position_unprotected: " + ",".join(dark))
            elif not dark:
                log.warning("positions_protected_again", tokens=unprotected)
                on_control("reduce_clear", "position_unprotected")
            unprotected = dark
        disk_free_mb = _disk_free_mb(cfg.data_dir)
        if (0 <= disk_free_mb < cfg.min_free_disk_mb) != low_disk:
            low_disk = not low_disk
            if low_disk:
                log.warning(
                    "disk_space_low", free_mb=round(disk_free_mb, 1), min_mb=cfg.min_free_disk_mb
                )
            else:
                log.info("disk_space_ok", free_mb=round(disk_free_mb, 1))
        states = engine.status()["states"]
        silent_s = (engine.clock() - feed.stats.last_frame_ns) / 1e9 if feed.stats.frames else None
        stale = not feed.stats.connected or (
            silent_s is not None and silent_s > cfg.feed.stale_after_s
        )
        health = Health(
            at_ns=engine.clock(),
            engine=engine.stats.as_dict(),
            feed_connected=feed.stats.connected,
            feed_connects=feed.stats.connects,
            feed_stale=stale,
            telemetry_sent=telemetry.sent,
            telemetry_dropped=telemetry.dropped,
            halted=engine.halted,
            states=states,
            paused=engine.paused,
            reconciled=engine.reconciled,
            exits_only=bool(engine.exits_only),
            exits_only_reason=engine.exits_only,
            journal_error=journal_error[0] if journal_error else "",
            disk_free_mb=round(disk_free_mb, 1),
            unprotected=unprotected,
            trading_state=engine.trading_state.value,
        )
        telemetry.publish(TOPIC_SESSION, session)
        telemetry.publish(TOPIC_HEALTH, health)
        engine.log_limiter.flush()  # a flood that has stopped still gets its summary
        if stale:
            # No trading happens on it: each token re-confirms its signal after a silence.
            log.warning(
                "feed_stale",
                connected=feed.stats.connected,
                silent_s=None if silent_s is None else round(silent_s, 3),
            )
        if time.monotonic() >= next_log or stop.is_set():
            next_log = time.monotonic() + cfg.logging.stats_interval_s
            log.info(
                "engine_stats",
                **engine.stats.as_dict(),
                feed_connected=feed.stats.connected,
                feed_connects=feed.stats.connects,
                feed_stale=stale,
                telemetry_sent=telemetry.sent,
                telemetry_dropped=telemetry.dropped,
                states=states,
            )


def _publish_governance_state(governance: Governance | None, telemetry: TelemetryPublisher) -> None:
    """Governance's stores as this session starts, for replay to start from (a session
    whose images would not fit one black-box record replays from empty state, and says so
    in the log)."""
    if governance is None:
        return
    files = governance.snapshot()
    size = sum(len(v) for v in files.values())
    if size > MAX_RECORD - (1 << 16):
        log.warning("governance_state_not_recorded", bytes=size, limit=MAX_RECORD,
                    note="replay of this session starts from empty governance state")  # fmt: skip
        return
    telemetry.publish(TOPIC_STATE, GovernanceState(files))
    log.info("governance_state_recorded", files=sorted(files), bytes=size)


_decode_alert = msgspec.json.Decoder(AlertRecord).decode
MAX_ALERT_TEXT = 4000


def _with_alerts(
    on_control: Callable[[str, str, str], tuple[bool, dict[str, Any]]],
    telemetry: TelemetryPublisher,
) -> Callable[[str, str, str], tuple[bool, dict[str, Any]]]:
    """The control handler, with ``alert`` answered here: the alert (JSON AlertRecord in
    ``arg``) is republished on the ``alert`` topic and never reaches the engine, its state
    or the control topic, so it adds no risk and replay has nothing to apply."""

    def handle(command: str, arg: str, by: str) -> tuple[bool, dict[str, Any]]:
        if command != Command.ALERT:
            return on_control(command, arg, by)
        try:
            alert = _decode_alert(arg)
        except msgspec.DecodeError as exc:
            return False, {"error": f"alert: expected a JSON AlertRecord in arg ({exc})"}
        if len(alert.text) > MAX_ALERT_TEXT:
            alert.text = alert.text[:MAX_ALERT_TEXT]
        telemetry.publish(TOPIC_ALERT, alert)
        return True, {"published": alert.alert_id}

    return handle


def _by_segment(symbols: list[tuple[int, str]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for exchange_type, token in symbols:
        out.setdefault(exchange_type, []).append(token)
    return out


def _disk_free_mb(path: str) -> float:
    """Free space for an unprivileged writer under ``path`` in MB; -1 if it cannot be read."""
    try:
        return shutil.disk_usage(path).free / 1e6
    except OSError:
        return -1.0
