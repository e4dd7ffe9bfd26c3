"""Instrument names for the cortex's tokens, from the session's recorded config: resolved
the way ``chimera live`` resolves them (``with_instruments`` over the simulator's sample
master, cached under data_dir), checked against a direct scan of the master's rows."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import Config, feed_symbols, parse_config
from chimera_core.contracts import ExchangeType, Health
from chimera_core.event_loop import session_info
from chimera_core.instruments import EXCHANGES
from cortex import charts
from cortex.names import (
    SessionNames,
    instrument_names,
    label,
    master_file,
    recorded_names,
    session_names,
)
from cortex.state import LAYERS, health_alerts
from tests.cortex.test_state import decision
from tools.cli import with_instruments
from tools.sim.master import SAMPLE_MASTER

DAY = dt.date(2024, 12, 2)
# Tradable rows by "EXCHANGE:SYMBOL" (the index is not tradable, so not on a feed).
ROWS = {
    f"{r['exch_seg']}:{r['symbol']}": r for r in SAMPLE_MASTER if r["instrumenttype"] != "AMXIDX"
}


@pytest.fixture(scope="module")
def master_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "instruments").mkdir()
        (Path(d) / "instruments" / f"{DAY.isoformat()}.json").write_text(json.dumps(SAMPLE_MASTER))
        yield Path(d)


def _config(data_dir: Path, names: list[str], tokens: list[str], symbols: dict[str, str]) -> Config:
    text = (
        f'data_dir = "{data_dir}"\n[feed]\ntokens = {json.dumps(tokens)}\n'
        f"[instruments]\nnames = {json.dumps(names)}\n"
        f'master_url = "http://127.0.0.1:9/OpenAPIScripMaster.json"\n'
        "[execution.angelone]\nsymbols = {"
        + ", ".join(f'"{t}" = "{s}"' for t, s in symbols.items())
        + "}\n"
    )
    return parse_config(text)


def _expected(cfg: Config) -> dict[str, str]:
    """The reference: each configured name's row, looked up directly in the master list,
    named where its (segment, token) is on the feed; then the operator's symbols."""
    on_feed = set(feed_symbols(cfg))
    out = {}
    for name in cfg.instruments.names:
        row = ROWS[name]
        segment = EXCHANGES[row["exch_seg"]][0]
        if (int(ExchangeType[segment]), row["token"]) in on_feed:
            out[row["token"]] = row["symbol"]
    tokens = {t for _, t in on_feed}
    out.update({t: s for t, s in cfg.execution.angelone.symbols.items() if t in tokens})
    return out


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(st.sampled_from(sorted(ROWS)), unique=True, max_size=6),
    extra=st.lists(st.sampled_from(["2885", "1594", "3045", "NSE_FO:77", "999"]), unique=True),
    symbols=st.dictionaries(
        st.sampled_from(["2885", "1594", "777"]), st.sampled_from(["MINE-EQ", "OTHER"]), max_size=2
    ),
)
def test_names_are_the_configured_instruments_on_the_feed(master_dir, names, extra, symbols):
    cfg = _config(master_dir, names, extra or ["3045"], symbols)
    resolved, _ = with_instruments_on(cfg, master_dir)
    got = session_names(_session(resolved, DAY))
    assert got == _expected(resolved)
    # Every name shown is a token the engine trades.
    assert set(got) <= {t for _, t in feed_symbols(resolved)}


def with_instruments_on(cfg: Config, master_dir: Path) -> tuple[Config, object]:
    """``chimera live``'s resolution, on the master cached for DAY (its cache is dated by
    today: the sample master is copied there for the call)."""
    today = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
    cached = master_dir / "instruments" / f"{today.date().isoformat()}.json"
    if not cached.exists():
        cached.write_text(json.dumps(SAMPLE_MASTER))
    return with_instruments(cfg)


def _session(cfg: Config, day: dt.date):
    started = dt.datetime(day.year, day.month, day.day, 4, 0, tzinfo=dt.UTC)  # 09:30 IST
    return msgspec.structs.replace(session_info(cfg), started_ns=int(started.timestamp() * 1e9))


def test_a_name_on_another_segment_than_the_feed_token_is_not_used(master_dir):
    # NFO:NIFTY26DEC24FUT is token 35006 on NSE_FO; a cash token 35006 is another instrument.
    cfg = _config(master_dir, ["NFO:NIFTY26DEC24FUT"], ["35006"], {})
    assert instrument_names(cfg, DAY) == {}
    cfg = _config(master_dir, ["NFO:NIFTY26DEC24FUT"], ["NSE_FO:35006"], {})
    assert instrument_names(cfg, DAY) == {"35006": "NIFTY26DEC24FUT"}


def test_the_master_of_the_session_day_or_an_older_one_never_a_newer_one(tmp_path):
    cache = tmp_path / "instruments"
    cache.mkdir()
    assert master_file(tmp_path, DAY) is None
    (cache / "2024-12-05.json").write_text("[]")
    assert master_file(tmp_path, DAY) is None  # newer than the session: not what it used
    (cache / "2024-11-29.json").write_text(json.dumps(SAMPLE_MASTER))
    assert master_file(tmp_path, DAY) == cache / "2024-11-29.json"
    cfg = _config(tmp_path, ["NSE:RELIANCE-EQ"], ["2885"], {})
    assert instrument_names(cfg, DAY) == {"2885": "RELIANCE-EQ"}
    (cache / f"{DAY.isoformat()}.json").write_text(json.dumps(SAMPLE_MASTER[1:]))
    assert master_file(tmp_path, DAY) == cache / f"{DAY.isoformat()}.json"
    assert instrument_names(cfg, DAY) == {}  # that day's master lacks it: the token stays bare


def test_without_a_master_only_the_operators_symbols_name_tokens(tmp_path):
    cfg = _config(tmp_path, ["NSE:RELIANCE-EQ"], ["2885", "1594"], {"1594": "INFY-EQ"})
    assert instrument_names(cfg, DAY) == {"1594": "INFY-EQ"}
    (tmp_path / "instruments").mkdir()
    (tmp_path / "instruments" / f"{DAY.isoformat()}.json").write_text("not json")
    assert instrument_names(cfg, DAY) == {"1594": "INFY-EQ"}  # unreadable: logged, skipped


def test_an_unreadable_session_config_names_nothing(master_dir):
    cfg = _config(master_dir, ["NSE:RELIANCE-EQ"], ["2885"], {})
    bad = msgspec.structs.replace(_session(cfg, DAY), config_json=b'{"feed": 3}')
    assert session_names(bad) == {}
    assert session_names(_session(cfg, DAY)) == {"2885": "RELIANCE-EQ"}


def test_the_cortex_data_dir_is_the_fallback_for_the_master(master_dir, tmp_path):
    # The engine's data_dir (relative to its own cwd, say) has no master; the cortex's has.
    cfg = _config(tmp_path / "elsewhere", ["NSE:RELIANCE-EQ"], ["2885"], {})
    assert session_names(_session(cfg, DAY)) == {}
    assert session_names(_session(cfg, DAY), master_dir) == {"2885": "RELIANCE-EQ"}


def test_session_names_resolve_once_per_session_on_a_thread(master_dir):
    names = SessionNames(master_dir)
    assert names.get(None) == {} and not names.ready(None)
    first = _session(_config(master_dir, ["NSE:RELIANCE-EQ"], ["2885"], {}), DAY)
    assert names.get(first, wait_s=10.0) == {"2885": "RELIANCE-EQ"}
    assert names.ready(first)
    second = _session(_config(master_dir, [], ["2885", "1594"], {"1594": "INFY-EQ"}), DAY)
    assert not names.ready(second)
    assert names.get(second, wait_s=10.0) == {"1594": "INFY-EQ"}
    assert names.ready(second) and not names.ready(first)


def test_labels_charts_and_alerts_carry_the_name():
    names = {"2885": "RELIANCE-EQ"}
    assert label("2885", names) == "RELIANCE-EQ · 2885"
    assert label("1594", names) == "1594"
    d = decision(7, token="2885")
    titled = charts.neural_map(d, "RELIANCE-EQ").layout.title.text
    assert titled.startswith("2885 · RELIANCE-EQ · seq 7")
    assert charts.neural_map(d).layout.title.text.startswith("2885 · seq 7")
    waiting = charts.neural_map_waiting()
    assert len(waiting.data[1].y) == len(LAYERS) and "seq" not in waiting.layout.title.text
    h = Health(1, {}, True, 1, False, 0, 0, False, {}, unprotected=["2885", "1594"])
    assert health_alerts(h, 0.0, names) == [
        "UNPROTECTED POSITIONS (feed dark, stop and target not watched): RELIANCE-EQ · 2885, 1594"
    ]


def test_a_recorded_session_names_its_tokens_from_the_black_box_manifest(master_dir, tmp_path):
    from chimera_core.telemetry import TOPIC_SESSION, encode_message
    from tools.record import Recorder

    cfg = _config(master_dir, ["NSE:RELIANCE-EQ"], ["2885", "1594"], {})
    rec = Recorder(tmp_path, 1 << 20, 1.0, 1.0, now=0.0)
    rec.on_message(encode_message(TOPIC_SESSION, 1, _session(cfg, DAY)), 0.0)
    rec.close_session(complete=True, reason="test")
    assert rec.session_dir is not None
    assert recorded_names(rec.session_dir) == {"2885": "RELIANCE-EQ"}
    assert recorded_names(tmp_path / "no-such-session") == {}
    (rec.session_dir / "manifest.json").write_text('{"config_json": "not a config"}')
    assert recorded_names(rec.session_dir) == {}
