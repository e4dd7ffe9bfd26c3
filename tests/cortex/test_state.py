"""CortexState folds telemetry into bounded per-symbol state; the listener feeds it from a
real ZeroMQ publisher on loopback. No timed assertions (lag figures live in benchmarks/)."""

from __future__ import annotations

import sqlite3
import time

import msgspec
import pytest

from chimera_core.contracts import (
    ApprovalOutput,
    Band,
    CapitalOutput,
    ControlEvent,
    Decision,
    DriftOutput,
    ExecKind,
    ExecutionOutput,
    ExecutionReport,
    Fill,
    Health,
    MetaRiskOutput,
    OrderIntent,
    PhysicsState,
    Purpose,
    Regime,
    SessionInfo,
    Side,
    Signal,
    Structure,
    TickRecord,
    Transition,
    Veto,
)
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_HEALTH,
    TOPIC_RAW,
    TOPIC_SESSION,
    TelemetryPublisher,
    encode_message,
)
from cortex import charts, sources
from cortex.listener import TelemetryListener
from cortex.state import (
    BARS_PER_SYMBOL,
    NOTABLE_DECISIONS,
    CortexState,
    disk_free_text,
    health_alerts,
    percentiles_us,
)
from tests.loopback import free_port

BAR_MS = 10_000
T0 = 1_723_780_000_000


def decision(seq: int, token: str = "2885", price: float = 100.0, **kw: object) -> Decision:
    ts = T0 + seq * 100
    fields: dict[str, object] = dict(
        seq=seq,
        token=token,
        exchange_type=1,
        exchange_ts_ms=ts,
        tick_sequence=seq,
        bar_start_ms=ts - ts % BAR_MS,
        physics=PhysicsState(
            price, 200, 0.02, 1.2, Structure.VACUUM, Band.NEUTRAL, 99.0, 0.5, 0.001, 0.3
        ),
        signal=Signal(0, "none"),
        state="IDLE",
        transitions=(),
        intent=None,
        confidence=0.0,
        influence={"physics": 0.8, "drift": 0.2},
        feed_stale=False,
        recv_ns=1_000,
        decided_ns=3_500,
        drift=DriftOutput(Regime.STABLE, 0.1, 0.5, 0.1, 0.2, 0.001, 30),
        capital=CapitalOutput(1.0, 1.0, 2.0, False, 1.0, 1e6, 0.6, 100, 1, "ok"),
    )
    fields.update(kw)
    return Decision(**fields)  # type: ignore[arg-type]


def tick(seq: int, d: Decision | None, pub_seq: int | None = None) -> bytes:
    topic = TOPIC_RAW if d is None else b"tick." + d.token.encode()
    return encode_message(topic, pub_seq or seq, TickRecord(d.recv_ns if d else 0, b"f", d))


def test_decisions_build_bars_markers_and_bounded_history():
    st = CortexState()
    n = BARS_PER_SYMBOL * 100 + 50  # 100 ticks per bar
    for i in range(1, n + 1):
        st.handle(tick(i, decision(i, price=100 + (i % 7))), now_ns=10_000)
    s = st.snapshot().symbols["2885"]
    assert s.decisions == n
    assert len(s.bars) == BARS_PER_SYMBOL  # bounded, newest kept
    last = s.bars[-1]
    assert last.start_ms == s.latest.bar_start_ms
    assert last.high >= last.close >= last.low
    assert st.snapshot().counters["ticks"] == n
    assert st.snapshot().lag["max_s"] == pytest.approx((10_000 - 1_000) / 1e9)


def test_intents_vetoes_approvals_and_exits_are_notable_and_marked():
    st = CortexState()
    intent = OrderIntent("CH-1-2885-1-0", "2885", 1, Side.BUY, 5, 101.0, 0, 0, T0)
    veto = MetaRiskOutput(False, False, (Veto("confidence", 0.2, 0.3),), 0.0, 0.0, 0.0, 0, 0)
    approval = ApprovalOutput(True, "PENDING", "apv-0123456789abcdef0123", "value > limit")
    msgs = [
        decision(
            1,
            intent=intent,
            state="EXECUTE",
            transitions=(Transition("FIRE", "READY", "EXECUTE", True),),
        ),
        decision(2, meta_risk=veto, signal=Signal(1, "long")),
        decision(3, approval=approval, signal=Signal(-1, "short"), confidence=0.4),
        decision(4, execution=ExecutionOutput(5, 101.0, 0.0, 20.0, 0, "FILLED")),
        decision(5, execution=ExecutionOutput(0, 0.0, 12.5, 40.0, 0, "FILLED CH-x")),
        decision(6),
    ]
    for i, d in enumerate(msgs, 1):
        st.handle(tick(i, d), now_ns=5_000)
    snap = st.snapshot()
    kinds = [m.kind for m in snap.symbols["2885"].markers]
    assert kinds == ["ENTRY", "VETO", "APPROVAL", "EXIT"]
    assert [d.seq for d in snap.notable] == [1, 2, 3, 5]
    assert snap.vetoes[0]["rules"] == ["confidence"]
    seen = snap.approvals["apv-0123456789abcdef0123"]
    assert (seen.status, seen.side, seen.qty) == ("PENDING", "SELL", 100)
    assert snap.symbols["2885"].last_signal.seq == 3
    # The operator approves it: the control event updates what the page shows.
    st.handle(
        encode_message(TOPIC_CONTROL, 7, ControlEvent("approve", seen.approval_id, True, "{}", 1)),
        now_ns=5_000,
    )
    assert st.snapshot().approvals[seen.approval_id].status == "APPROVED"


def test_notable_decisions_are_bounded():
    st = CortexState()
    fire = (Transition("ARM", "IDLE", "READY", True),)
    for i in range(1, NOTABLE_DECISIONS + 20):
        st.handle(tick(i, decision(i, transitions=fire)), now_ns=2_000)
    notable = st.snapshot().notable
    assert len(notable) == NOTABLE_DECISIONS
    assert notable[-1].seq == NOTABLE_DECISIONS + 19


def test_sequence_gaps_restarts_and_garbage_are_counted_not_raised():
    st = CortexState()
    st.handle(tick(1, decision(1)), 0)
    st.handle(tick(5, decision(5)), 0)  # 3 missed
    st.handle(b"garbage-without-header", 0)
    st.handle(b"tick.2885\x00" + (6).to_bytes(8, "little") + b"\xff\xff", 0)
    st.handle(tick(1, decision(1)), 0)  # a new engine: sequence starts again
    c = st.snapshot().counters
    assert (c["gaps"], c["missed"], c["decode_errors"], c["publisher_restarts"]) == (1, 3, 2, 1)


def test_a_new_session_resets_per_session_state():
    st = CortexState()
    info = SessionInfo("s1", 1, "paper", b"{}", "x", "v")
    st.handle(encode_message(TOPIC_SESSION, 1, info), 0)
    st.handle(tick(2, decision(2)), 0)
    st.handle(encode_message(TOPIC_SESSION, 3, info), 0)  # repeated: nothing changes
    assert "2885" in st.snapshot().symbols
    st.handle(encode_message(TOPIC_SESSION, 4, msgspec.structs.replace(info, session_id="s2")), 0)
    snap = st.snapshot()
    assert snap.session.session_id == "s2" and not snap.symbols


def test_exec_reports_track_orders_fills_and_exit_markers():
    st = CortexState()
    st.handle(tick(1, decision(1)), 0)
    fill = Fill("f1", "CH-sl", "2885", Side.SELL, 5, 99.0, 12.0, T0 + 200)
    report = ExecutionReport(
        ExecKind.FILLED,
        "CH-sl",
        "CH-1",
        "2885",
        Side.SELL,
        5,
        5,
        99.0,
        purpose=Purpose.STOP_LOSS,
        fill=fill,
        final=True,
    )
    st.handle(encode_message(TOPIC_EXEC, 2, report), 0)
    snap = st.snapshot()
    assert snap.orders["CH-sl"].kind is ExecKind.FILLED
    assert snap.symbols["2885"].markers[-1].kind == "EXIT"


def test_percentiles_and_charts_render_from_a_snapshot():
    assert percentiles_us([]) == {}
    p = percentiles_us(list(range(1_000, 101_000, 1_000)))
    assert p["p50"] == pytest.approx(51.0) and p["max"] == 100.0
    st = CortexState()
    for i in range(1, 300):
        st.handle(tick(i, decision(i, price=100 + i % 5)), 0)
    snap = st.snapshot()
    s = snap.symbols["2885"]
    assert charts.market(s, 2.0).data
    assert len(charts.neural_map(s.latest).data) == 2
    assert charts.latency_histogram(snap.latency_buckets).data
    assert "STABLE" in charts.layer_outputs(s.latest)["drift"]


def test_listener_folds_a_real_publisher_stream():
    port = free_port()
    pub = TelemetryPublisher(f"tcp://127.0.0.1:{port}")
    listener = TelemetryListener(f"tcp://127.0.0.1:{port}").start()
    try:
        deadline = time.monotonic() + 10
        while pub.subscriptions == 0:
            pub.drain_subscriptions()
            assert time.monotonic() < deadline, "the listener never subscribed"
            time.sleep(0.01)
        for i in range(1, 2001):
            d = decision(i, token=("2885", "1594")[i % 2])
            pub.tick(b"frame", time.monotonic_ns(), d)
        pub.publish(TOPIC_HEALTH, Health(1, {}, True, 1, False, 2000, 0, False, {"IDLE": 2}))
        while listener.state.snapshot().counters["messages"] < 2001:
            assert time.monotonic() < deadline and listener.alive
            time.sleep(0.01)
        snap = listener.state.snapshot()
        assert set(snap.symbols) == {"2885", "1594"}
        assert snap.health is not None and snap.counters["missed"] == 0
        assert snap.lag["max_s"] > 0
    finally:
        listener.stop()
        pub.close()


def test_sources_read_only_and_tolerate_absent_files(tmp_path):
    assert sources.approvals(tmp_path) == []
    assert sources.genome_versions(tmp_path) == []
    assert sources.journal(tmp_path, "fills") == []
    assert sources.sessions(tmp_path) == []
    assert sources.neural_state(tmp_path) is None
    from chimera_governance.approvals import ApprovalQueue

    intent = OrderIntent("CH-1-2885-1-0", "2885", 1, Side.BUY, 5, 101.0, 0, 0, T0)
    with ApprovalQueue(tmp_path / "approvals.db", size_limit_value=1.0) as q:
        out = q.check(intent, 0.9, T0)
    rows = sources.approvals(tmp_path)
    assert rows[0]["approval_id"] == out.approval_id and rows[0]["status"] == "PENDING"
    assert (rows[0]["token"], rows[0]["side"], rows[0]["qty"]) == ("2885", "BUY", 5)
    con = sqlite3.connect(tmp_path / "chimera.db")
    con.execute("CREATE TABLE other (x)")
    con.close()
    assert sources.journal(tmp_path, "fills") == []  # table absent: empty, not an error
    with pytest.raises(ValueError):
        sources.journal(tmp_path, "sqlite_master")


def test_the_cortex_never_imports_the_hot_path():
    import subprocess
    import sys

    code = (
        "import sys, cortex.state, cortex.listener, cortex.sources, cortex.charts, "
        "cortex.runtime, cortex.launcher; "
        "bad = [m for m in sys.modules if m.startswith(('chimera_core.event_loop', "
        "'chimera_execution', 'chimera_core.feed', 'chimera_core.physics')) "
        # The journal's read-only view is the one execution module the cortex may load:
        # it imports only chimera_core (anything it pulled in from the hot path shows here).
        "and m not in ('chimera_execution', 'chimera_execution.journal_view')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _health(**kw: object) -> Health:
    return Health(1, {}, True, 1, False, 0, 0, False, {}, **kw)  # type: ignore[arg-type]


def test_a_healthy_engine_raises_no_alert() -> None:
    assert health_alerts(None) == [] and disk_free_text(None) == ""
    assert health_alerts(_health(), min_free_disk_mb=500) == []
    assert disk_free_text(_health()) == ""  # -1: not measured
    assert health_alerts(_health(disk_free_mb=800.0), 500) == []
    assert disk_free_text(_health(disk_free_mb=800.4)) == "disk free 800 MB"
    assert disk_free_text(_health(disk_free_mb=51_200.0)) == "disk free 50.0 GB"


def test_exits_only_journal_failure_unprotected_and_low_disk_are_alerts() -> None:
    h = _health(
        exits_only=True,
        exits_only_reason="journal write failed",
        journal_error="database or disk is full",
        disk_free_mb=42.0,
        unprotected=["2885", "1594"],
    )
    alerts = health_alerts(h, min_free_disk_mb=500)
    assert alerts == [
        "EXITS ONLY: journal write failed",
        "JOURNAL WRITE FAILED: database or disk is full",
        "UNPROTECTED POSITIONS (feed dark, stop and target not watched): 2885, 1594",
        "DISK LOW: disk free 42 MB (warning below 500 MB)",
    ]
    assert health_alerts(_health(exits_only=True)) == ["EXITS ONLY: no reason given"]


def test_new_health_fields_arrive_through_the_listener() -> None:
    port = free_port()
    pub = TelemetryPublisher(f"tcp://127.0.0.1:{port}")
    listener = TelemetryListener(f"tcp://127.0.0.1:{port}").start()
    try:
        deadline = time.monotonic() + 10
        h = _health(exits_only=True, exits_only_reason="unprotected 2885", unprotected=["2885"])
        while listener.state.snapshot().health is None:
            assert time.monotonic() < deadline and listener.alive
            pub.publish(TOPIC_HEALTH, h)
            time.sleep(0.05)
        got = listener.state.snapshot().health
        assert health_alerts(got)[0] == "EXITS ONLY: unprotected 2885"
        assert got is not None and got.unprotected == ["2885"]
    finally:
        listener.stop()
        pub.close()
