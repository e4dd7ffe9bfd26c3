"""chimera metrics: a real engine publishes telemetry over ZeroMQ, the exporter serves it on a
real HTTP port, and two scrapes during the session show the numbers moving."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from chimera_core.config import parse_config
from chimera_core.contracts import Health, Mode
from chimera_core.event_loop import Engine
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import TOPIC_HEALTH, TelemetryPublisher
from chimera_governance.pipeline import GovernancePipeline
from tools.metrics import MetricsExporter, check_host, main
from tools.sim.market import Market

CFG = """
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
[logging]
decisions = "none"
[governance]
approval_min_confidence = 0.0
"""


def _wait(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    m = re.search(pattern, text, re.M)
    assert m, f"{name}{labels} not in scrape"
    return float(m.group(1))


@pytest.fixture
def exporter() -> Iterator[tuple[MetricsExporter, TelemetryPublisher, int]]:
    pub = TelemetryPublisher("tcp://127.0.0.1:*", hwm=1_000_000)
    exp = MetricsExporter(pub.endpoint)
    port = exp.serve("127.0.0.1", 0)
    stop = threading.Event()
    thread = threading.Thread(target=exp.run, args=(stop,), daemon=True)
    thread.start()

    def subscribed() -> bool:
        pub.drain_subscriptions()
        return pub.subscriptions > 0

    _wait(subscribed, "exporter subscription")
    yield exp, pub, port
    stop.set()
    thread.join(timeout=5)
    exp.close()
    pub.close()


def _health(engine: Engine, pub: TelemetryPublisher, connects: int = 2) -> None:
    pub.publish(
        TOPIC_HEALTH,
        Health(
            at_ns=time.monotonic_ns(),
            engine=engine.stats.as_dict(),
            feed_connected=True,
            feed_connects=connects,
            feed_stale=False,
            telemetry_sent=pub.sent,
            telemetry_dropped=pub.dropped,
            halted=engine.halted,
            states=engine.status()["states"],
        ),
    )


def _play(engine: Engine, pub: TelemetryPublisher, frames: list[bytes]) -> None:
    for frame in frames:
        recv_ns = time.monotonic_ns()
        pub.tick(frame, recv_ns, engine.on_frame(frame, recv_ns))
    pub.tick(b"\x00garbage", time.monotonic_ns(), None)  # a frame the engine dropped


def test_scrapes_move_with_a_governed_engine_session(
    tmp_path: Path, exporter: tuple[MetricsExporter, TelemetryPublisher, int]
) -> None:
    exp, pub, port = exporter
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path)
    engine = Engine(cfg, governance=gov)
    market = Market(seed=3)
    frames = [encode(market.next_tick(Mode.QUOTE)) for _ in range(12_000)]

    _play(engine, pub, frames[:3000])
    _health(engine, pub)
    _wait(lambda: exp.ticks == 3001 and exp.health is not None, "first batch")
    first = _scrape(port)
    t1 = _value(first, "chimera_ticks_total")
    assert t1 == 3001
    assert _value(first, "chimera_dropped_frames_total") == 1
    assert _value(first, "chimera_decision_latency_seconds_count") > 0
    assert _value(first, "chimera_feed_connected") == 1
    assert _value(first, "chimera_halted") == 0
    assert _value(first, "chimera_feed_reconnects_total") == 1
    assert _value(first, "chimera_tick_rate") >= 0

    _play(engine, pub, frames[3000:])
    _health(engine, pub)
    _wait(lambda: exp.ticks == 12_002, "second batch")
    time.sleep(0.3)  # let the rate sampler take a point
    second = _scrape(port)
    assert _value(second, "chimera_ticks_total") == 12_002 > t1
    assert _value(second, "chimera_tick_rate") > 0
    decisions = _value(second, "chimera_decisions_total")
    assert decisions == engine.stats.decisions == 12_000
    assert _value(second, "chimera_decision_latency_seconds_count") == decisions
    assert (
        0
        < _value(second, "chimera_decision_latency_p50_seconds")
        <= _value(second, "chimera_decision_latency_p99_seconds")
    )
    assert _value(second, "chimera_orders_intents_total") == engine.stats.intents
    assert _value(second, "chimera_telemetry_gaps_total") == 0
    assert _value(second, "chimera_vetoes_total") == engine.stats.vetoes
    assert _value(second, "chimera_feed_gaps") == engine.stats.gaps
    states = engine.status()["states"]
    for state, n in states.items():
        assert _value(second, "chimera_states", f'{{state="{state}"}}') == n
    # governance: per-token regime (exactly one current) and leverage, confidence
    regimes = re.findall(r'^chimera_regime\{regime="(\w+)",token="(\w+)"\} 1\.0$', second, re.M)
    assert regimes, "regime labels should appear once bars close"
    assert len({tok for _, tok in regimes}) == len(regimes)
    for regime, token in regimes:
        assert regime in {"WARMUP", "STABLE", "TRENDING", "CHAOS"}
        assert re.search(rf'^chimera_leverage\{{token="{token}"\}} \S+$', second, re.M)
    assert re.search(r'^chimera_confidence\{token="\w+"\} \S+$', second, re.M)
    gov.close()


def test_non_loopback_host_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--host", "0.0.0.0", "--endpoint", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "non-loopback" in err and "--allow-remote" in err
    check_host("127.0.0.1", False)
    check_host("::1", False)
    check_host("localhost", False)
    check_host("0.0.0.0", True)
    with pytest.raises(Exception, match="non-loopback"):
        check_host("example.com", False)


def test_bad_messages_are_counted_not_fatal() -> None:
    exp = MetricsExporter()
    exp.handle(b"tick.1\x00" + b"\x01" * 8 + b"\xff\xff")
    exp.handle(b"nonsense")
    exp.handle(b"weird\x00" + b"\x01" * 8 + b"\x90")
    assert exp.decode_errors == 3 and exp.ticks == 0
    text = "\n".join(str(m) for m in exp.collect())
    assert "chimera_decode_errors" in text


def test_exits_only_journal_failure_dark_positions_and_disk_are_metrics(
    exporter: tuple[MetricsExporter, TelemetryPublisher, int],
) -> None:
    exp, pub, port = exporter
    engine = Engine(parse_config(CFG))
    for exits_only, journal_error, dark in ((False, "", []), (True, "disk full", ["2885"])):
        pub.publish(
            TOPIC_HEALTH,
            Health(
                at_ns=time.monotonic_ns(),
                engine=engine.stats.as_dict(),
                feed_connected=True,
                feed_connects=1,
                feed_stale=False,
                telemetry_sent=pub.sent,
                telemetry_dropped=pub.dropped,
                halted=False,
                states={},
                exits_only=exits_only,
                exits_only_reason="journal_write_failed: disk full" if exits_only else "",
                journal_error=journal_error,
                disk_free_mb=12.5,
                unprotected=dark,
            ),
        )
        _wait(lambda e=exits_only: exp.health is not None and exp.health.exits_only == e, "health")
        text = _scrape(port)
        assert _value(text, "chimera_exits_only") == float(exits_only)
        assert _value(text, "chimera_journal_write_failed") == float(bool(journal_error))
        assert _value(text, "chimera_positions_unprotected") == len(dark)
        assert _value(text, "chimera_disk_free_bytes") == 12.5e6
    assert 'chimera_position_unprotected{token="2885"} 1.0' in text


def test_the_trading_state_is_one_labelled_gauge(
    exporter: tuple[MetricsExporter, TelemetryPublisher, int],
) -> None:
    exp, pub, port = exporter
    engine = Engine(parse_config(CFG))
    with capture_logs():  # another test may have pointed structlog at a closed stream
        engine.control("reduce", "meta_risk:daily_loss")
    pub.publish(
        TOPIC_HEALTH,
        Health(
            at_ns=time.monotonic_ns(), engine=engine.stats.as_dict(), feed_connected=True,
            feed_connects=1, feed_stale=False, telemetry_sent=0, telemetry_dropped=0,
            halted=False, states={}, exits_only=True, trading_state=engine.trading_state.value,
        ),
    )  # fmt: skip
    _wait(lambda: exp.health is not None and exp.health.trading_state == "REDUCING", "health")
    text = _scrape(port)
    assert 'chimera_trading_state{state="REDUCING"} 1.0' in text
    assert 'chimera_trading_state{state="ACTIVE"} 0.0' in text
