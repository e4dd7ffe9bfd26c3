"""The informational ``alert`` command: the engine republishes chimera notify's alert on the
``alert`` topic and nothing else — no state change, no control event (so replay has
nothing to apply), a malformed one refused with what was expected."""

from __future__ import annotations

import time

import msgspec

from chimera_core.commands import Command
from chimera_core.config import parse_config
from chimera_core.contracts import AlertRecord
from chimera_core.event_loop import Engine
from chimera_core.live import _with_alerts
from chimera_core.node import Node
from chimera_core.telemetry import TOPIC_ALERT, TelemetryPublisher, TelemetrySubscriber


def _subscribed(pub: TelemetryPublisher) -> None:
    deadline = time.monotonic() + 5
    while pub.subscriptions < 1:
        pub.drain_subscriptions()
        assert time.monotonic() < deadline, "subscriber never attached"
        time.sleep(0.01)


def test_an_alert_is_republished_and_never_applied() -> None:
    engine = Engine(parse_config('[logging]\ndecisions = "none"'))
    pub = TelemetryPublisher("tcp://127.0.0.1:0")
    sub = TelemetrySubscriber(pub.endpoint)
    _subscribed(pub)
    node = Node(engine, publish=pub.publish)
    handle = _with_alerts(node.on_control, pub)
    before = engine.status()
    alert = AlertRecord("hook-7", "trading_state", "critical", "HALT the engine", "hook", "sent",
                        raised_ns=1, at_ns=2)  # fmt: skip
    ok, result = handle(Command.ALERT, msgspec.json.encode(alert).decode(), "notify")
    assert ok and result == {"published": "hook-7"}
    bad_ok, bad = handle(Command.ALERT, '{"name": "x"}', "notify")
    assert not bad_ok and "expected a JSON AlertRecord" in bad["error"]
    assert handle(Command.PAUSE, "", "cli:alice")[0]  # everything else reaches the engine
    got = list(sub.messages(timeout_ms=500))
    assert [t for t, _, _ in got] == [TOPIC_ALERT, b"control"]
    assert got[0][2] == alert
    assert (got[1][2].command, got[1][2].by) == ("pause", "cli:alice")  # who asked, recorded
    after = engine.status()
    assert {**before, "paused": True, "trading_state": "PAUSED"} == after
    pub.close()
    sub.close()
