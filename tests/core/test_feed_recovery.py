"""One bad frame must never silence a token: sequence and bar state recover (issue 11 §1-2).

Each test feeds the engine a clean seeded stream with one poisoned frame in it and compares
what it decides afterwards with the same stream without the poison.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from chimera_core.config import parse_config
from chimera_core.contracts import Decision, Mode, Tick
from chimera_core.errors import ProtocolError
from chimera_core.event_loop import Engine
from chimera_core.feed.smartapi_v2 import encode
from chimera_governance.pipeline import GovernancePipeline
from tools.sim.market import Market

FAST = """
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
cooldown_s = 30.0
execute_timeout_s = 10.0
[logging]
decisions = "none"
"""
INT64_MAX = (1 << 63) - 1
DAY_MS = 86_400_000
NS_PER_TICK = 50_000


def _ticks(n: int, seed: int = 3) -> list[Tick]:
    market = Market(seed=seed)
    return [market.next_tick(Mode.QUOTE) for _ in range(n)]


def _run(
    engine: Engine, frames: list[bytes], recv: list[int] | None = None
) -> list[Decision | None]:
    if recv is None:
        recv = [1_000_000_000 + i * NS_PER_TICK for i in range(len(frames))]
    return [engine.on_frame(f, r) for f, r in zip(frames, recv, strict=True)]


def _engine(cfg_text: str = FAST) -> Engine:
    now = [0]
    return Engine(parse_config(cfg_text), clock=lambda: now[0])


POISONS = {
    "sequence+1e6": lambda t: msgspec.structs.replace(t, sequence=t.sequence + 10**6),
    "sequence+2^32": lambda t: msgspec.structs.replace(t, sequence=t.sequence + (1 << 32)),
    "sequence=INT64_MAX": lambda t: msgspec.structs.replace(t, sequence=INT64_MAX),
    "time+1day": lambda t: msgspec.structs.replace(t, exchange_ts_ms=t.exchange_ts_ms + DAY_MS),
    "time+1year": lambda t: msgspec.structs.replace(
        t, exchange_ts_ms=t.exchange_ts_ms + 365 * DAY_MS
    ),
    "time=INT64_MAX": lambda t: msgspec.structs.replace(t, exchange_ts_ms=INT64_MAX),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_one_poisoned_frame_changes_no_later_decision(poison):
    ticks = _ticks(6000)
    at = 3000
    victim = ticks[at]
    bad = encode(POISONS[poison](victim))
    clean = [encode(t) for t in ticks]
    # The poisoned copy arrives just before the real frame with the same fields.
    dirty = [*clean[:at], bad, *clean[at:]]
    recv = [1_000_000_000 + i * NS_PER_TICK for i in range(len(clean))]
    engine = _engine()
    with_poison = _run(engine, dirty, [*recv[:at], recv[at], *recv[at:]])
    without = _run(_engine(), clean, recv)
    assert with_poison[at] is None  # the poison itself is dropped...
    after_poison = [d for d in with_poison[at + 1 :] if d is not None]
    after_clean = [d for d in without[at:] if d is not None]
    # ...and every later frame decides exactly as if it had never come.
    assert msgspec.msgpack.encode(after_poison) == msgspec.msgpack.encode(after_clean)
    assert sum(d.token == victim.token for d in after_poison) > 500
    assert engine.stats.seq_jumps + engine.stats.bad_time == 1


def test_a_token_whose_first_sequence_was_poisoned_rebaselines():
    """The bad frame is the token's first: its number becomes the baseline, later frames
    are refused as out of order, and after ``rebaseline_after`` of them in a row the token
    takes a new baseline, logs it, and decides again."""
    ticks = [t for t in _ticks(9000) if t.token == "2885"]
    first = POISONS["sequence=INT64_MAX"](ticks[0])
    frames = [encode(first)] + [encode(t) for t in ticks[1:]]
    engine = _engine(FAST + "[sanity]\nrebaseline_after = 20\n")
    with capture_logs() as logs:
        out = _run(engine, frames)
    refused = [d is None for d in out[1:]]
    assert refused[:20] == [True] * 20  # refused while the bad baseline stands
    assert not any(refused[21:])  # then every frame decides again
    assert engine.stats.rebaselines == 1
    rebaselined = [e for e in logs if e["event"] == "feed_rebaselined"]
    assert [(e["token"], e["log_level"]) for e in rebaselined] == [("2885", "warning")]


@pytest.mark.parametrize("poison", ["time+1year", "time+1day"])
def test_a_first_frame_from_the_future_is_undone_by_the_second(poison):
    """The very first frame (of the token and the feed) carries a time far ahead: nothing
    can refuse it yet, but the bar it opened is dropped as soon as the stream goes on from
    before it, and no later frame is lost."""
    ticks = [t for t in _ticks(9000) if t.token == "2885"]
    frames = [encode(POISONS[poison](ticks[0]))] + [encode(t) for t in ticks[1:]]
    engine = _engine()
    out = _run(engine, frames)
    assert all(d is not None for d in out)
    assert engine.stats.time_outliers == 1 and engine.stats.late == 0
    assert engine.feed_clock.rebaselines == 1  # the feed clock healed too
    first_bar = out[1].bar_start_ms
    assert first_bar == ticks[1].exchange_ts_ms - ticks[1].exchange_ts_ms % 5000


def test_a_reconnect_resets_the_sequence_baseline():
    """A new connection may number from 1 again: its frames are not out of order."""
    ticks = _ticks(2000)
    engine = _engine()
    _run(engine, [encode(t) for t in ticks[:1000]])
    engine.on_feed_state(True)  # the feed reconnected
    renumbered = [
        encode(msgspec.structs.replace(t, sequence=i + 1)) for i, t in enumerate(ticks[1000:])
    ]
    out = _run(engine, renumbered)
    assert engine.stats.out_of_order == 0
    assert sum(d is not None for d in out) == len(renumbered)


def test_a_real_jump_to_the_next_session_is_taken_after_one_frame():
    """The next trading day's open is far ahead of the clock, but the stream confirms it:
    only its first frame is dropped, not a whole day's worth."""
    ticks = _ticks(2000)
    engine = _engine()
    _run(engine, [encode(t) for t in ticks[:1000]])
    next_day = [
        encode(msgspec.structs.replace(t, exchange_ts_ms=t.exchange_ts_ms + 3 * DAY_MS))
        for t in ticks[1000:]
    ]
    out = _run(engine, next_day)
    assert out[0] is None and all(d is not None for d in out[1:])
    assert engine.stats.bad_time == 1


_FIELDS = st.sampled_from(["sequence", "exchange_ts_ms", "ltp", "ltq", "volume", "token"])
_EXTREMES = st.one_of(
    st.sampled_from([0, -1, 1, INT64_MAX, -INT64_MAX - 1, (1 << 32), (1 << 62)]),
    st.integers(-(1 << 63), (1 << 63) - 1),
)


def _mutate(tick: Tick, field: str, value: int) -> Tick | None:
    if field == "ltp":
        return msgspec.structs.replace(tick, ltp=float(value) / 100.0)
    if field == "token":
        return msgspec.structs.replace(tick, token=str(abs(value) % 10**6))
    return msgspec.structs.replace(tick, **{field: value})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1999), _FIELDS, _EXTREMES), min_size=1, max_size=30))
def test_on_frame_never_raises_with_governance_on(tmp_path_factory, mutations):
    """Whole-engine inputs with governance on: extreme field values anywhere in the stream
    never raise out of on_frame, and every token still decides at the end."""
    ticks = _ticks(2200, seed=17)
    frames = [encode(t) for t in ticks]
    for pos, field, value in mutations:
        try:
            frames.insert(pos, encode(_mutate(ticks[pos], field, value)))
        except ProtocolError:
            continue  # not encodable as a SmartAPI packet: it cannot arrive
    cfg = parse_config(FAST)
    engine = Engine(cfg, governance=GovernancePipeline(cfg, tmp_path_factory.mktemp("gov")))
    out = _run(engine, frames)  # raises if anything escapes
    tail = out[-150:]
    decided = {d.token for d in tail if d is not None}
    assert decided == set(cfg.feed.tokens)


def test_a_ready_symbol_survives_an_exchange_time_past_year_9999(tmp_path):
    """The trading-day arithmetic (meta-risk's gate) is reached only by sane times: a READY
    symbol's next frame at year 10000 is refused at hygiene, and the stream goes on."""
    cfg = parse_config(FAST)
    engine = Engine(cfg, governance=GovernancePipeline(cfg, tmp_path))
    ticks = _ticks(30_000)
    frames = [encode(t) for t in ticks]
    year_10000_ms = 253_402_300_800_000
    for i, frame in enumerate(frames):
        d = engine.on_frame(frame, 1_000_000_000 + i * NS_PER_TICK)
        if d is not None and d.state == "READY":
            poisoned = msgspec.structs.replace(ticks[i + 1], exchange_ts_ms=year_10000_ms)
            assert engine.on_frame(encode(poisoned), 0) is None
            break
    else:
        pytest.fail("no symbol reached READY: the scenario did not happen")
    assert engine.stats.bad_time == 1
    rest = [engine.on_frame(f, 2_000_000_000 + j) for j, f in enumerate(frames[i + 1 : i + 200])]
    assert all(d is not None for d in rest)


@pytest.mark.parametrize("poison", ["sequence+2^32", "time+1year"])
async def test_an_open_position_still_hits_its_stop_after_a_poisoned_frame(tmp_path, poison):
    """Engine → router → paper broker → journal, wired as ``chimera live`` wires them (in
    process, on exchange time): a long position, one poisoned frame, then the price falls
    through the stop. The stop loss must fire and fill."""
    from chimera_core.contracts import ExecKind, Purpose, Side
    from tests.execution.test_router import T0, TOKEN, intent, snap

    cfg = parse_config(
        f'data_dir = "{tmp_path}"\n[feed]\ntokens = ["{TOKEN}"]\nmode = "SNAP_QUOTE"\n'
        '[execution.paper]\nlatency_ms = 0\nslippage_bps = 0.0\n[logging]\ndecisions = "none"\n'
    )
    from tests.core.test_strategy_exits import PaperNode

    node = PaperNode(cfg)
    await node.start()
    engine, router, reports, frame = node.engine, node.router, node.reports, node.frame

    ts = T0
    for i in range(30):
        await frame(snap(ts + i * 1000))
    router.submit(intent(ts + 30_000, 10, side=Side.BUY), atr=1.0)  # stop 2 ATR below
    for i in range(31, 40):
        await frame(snap(ts + i * 1000))
    assert engine.positions.get(TOKEN).qty == 10
    await frame(POISONS[poison](snap(ts + 40_000)))
    for i, ltp in enumerate([99.5, 99.0, 98.5, 97.9, 97.5, 97.0]):
        await frame(snap(ts + 41_000 + i * 1000, ltp=ltp))
    stops = [r for r in reports if r.purpose is Purpose.STOP_LOSS and r.kind is ExecKind.FILLED]
    assert stops, [r.kind.value + " " + r.purpose.value for r in reports]
    assert engine.positions.get(TOKEN).qty == 0
    await router.stop()


def test_a_malformed_flood_logs_a_bounded_number_of_lines():
    """100k malformed frames: every one is counted, a handful are logged, and the summary
    line says how many were not."""
    engine = _engine()
    with capture_logs() as logs:
        for i in range(100_000):
            engine.on_frame(b"\x01" + bytes([i % 251]) * 10, i)
        engine.log_limiter.flush(final=True)
    assert engine.stats.malformed == 100_000
    shown = [e for e in logs if e["event"] == "frame_malformed"]
    summaries = [e for e in logs if e["event"] == "frame_malformed_suppressed"]
    assert 1 <= len(shown) <= 10
    assert len(shown) + sum(e["suppressed"] for e in summaries) == 100_000


@pytest.mark.parametrize("field,delta", [("sequence", 5_000), ("exchange_ts_ms", 30_000)])
def test_a_corrupt_field_inside_the_plausible_range_costs_no_later_frame(field, delta):
    """A bit flip small enough to look plausible (a 5,000 sequence gap, 30 s ahead) is
    taken, but it does not become the baseline: the very next frame undoes it, and no later
    frame of the token is dropped."""
    ticks = _ticks(6000)
    at = next(i for i in range(3000, 6000) if ticks[i].token == "2885")
    victim = ticks[at]
    corrupt = msgspec.structs.replace(victim, **{field: getattr(victim, field) + delta})
    clean = [encode(t) for t in ticks]
    dirty = [*clean[:at], encode(corrupt), *clean[at + 1 :]]
    engine = _engine()
    out = _run(engine, dirty)
    assert all(d is not None for d in out[at:])
    assert engine.stats.out_of_order + engine.stats.late + engine.stats.rebaselines == 0
    if field == "sequence":  # the tick itself was real: nothing else changes
        without = _run(_engine(), clean)
        assert msgspec.msgpack.encode(out[at + 1 :]) == msgspec.msgpack.encode(without[at + 1 :])
