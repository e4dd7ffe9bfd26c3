"""``chimera doctor`` over real files, real SQLite databases and real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from chimera_core.config import CREDENTIAL_ENV, parse_config
from chimera_core.contracts import Mode, TickRecord
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import (
    TOPIC_SESSION,
    SegmentWriter,
    encode_message,
    segments,
    tick_topic,
)
from tools.doctor import main
from tools.sim.market import Market

pytestmark = pytest.mark.timeout(30)

SECRETS = {
    "CHIMERA_API_KEY": "sekrit-api-key-123",
    "CHIMERA_JWT": "sekrit.jwt.value",
}

TOKEN = "9f2c4e6a8b1d3f5e7a9c0b2d4f6e8a1c"  # 128 bits, as `chimera live` makes them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (*CREDENTIAL_ENV.values(), "CHIMERA_CONTROL_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


# 0.0.0.0 is not loopback to the config check and needs no DNS on a machine offline.
LIVE_BROKER = (
    '[execution]\nbroker = "angelone"\n'
    f'[execution.angelone]\nrest_url = "https://0.0.0.0:{free_port()}"\n'
)


def write_config(tmp_path: Path, extra: str = "", mode: str = "paper", url: str = "") -> Path:
    url = url or "ws://127.0.0.1:8765/smart-stream"
    path = tmp_path / "chimera.toml"
    path.write_text(
        f'mode = "{mode}"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "{url}"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n' + extra,
        encoding="utf-8",
    )
    return path


def run(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> tuple[int, dict[str, tuple[str, str]]]:
    code = main(["--config", str(config), "--env-file", str(tmp_path / ".env")])
    out = capsys.readouterr().out
    rows: dict[str, tuple[str, str]] = {}
    for line in out.splitlines()[1:]:
        # the status is the first OK/WARN/FAIL word; the words before it name the check
        words = line.split()
        for i, w in enumerate(words):
            if w in ("OK", "WARN", "FAIL"):
                rows[" ".join(words[:i])] = (w, " ".join(words[i + 1 :]))
                break
    rows["_out"] = ("", out)
    return code, rows


def record_session(
    session_dir: Path, url: str = "ws://127.0.0.1:8765/smart-stream", n: int = 60
) -> int:
    """A short session as `chimera record` writes it: SessionInfo + real Engine decisions.

    Returns the last decision's exchange timestamp (ms)."""
    cfg = parse_config(f'[feed]\nurl = "{url}"\n')
    engine = Engine(cfg, clock=time.monotonic_ns)
    writer = SegmentWriter(session_dir)
    writer.write(encode_message(TOPIC_SESSION, 1, session_info(cfg)))
    market = Market(seed=5)
    recv_ns = 1_000_000_000
    last_ms = 0
    for i in range(n):
        recv_ns += 50_000
        frame = encode(market.next_tick(Mode.QUOTE))
        d = engine.on_frame(frame, recv_ns)
        if d is not None:
            last_ms = d.exchange_ts_ms
        writer.write(encode_message(tick_topic(d), i + 2, TickRecord(recv_ns, frame, d)))
    writer.close()
    return last_ms


def write_manifest(session_dir: Path, ended_s: float | None) -> None:
    ended = datetime.fromtimestamp(ended_s, UTC).isoformat() if ended_s is not None else None
    (session_dir / "manifest.json").write_bytes(
        orjson.dumps({"session_id": session_dir.name, "recorder_ended": ended})
    )


def test_healthy_paper_setup(capsys, tmp_path):
    config = write_config(tmp_path)
    data = tmp_path / "data"
    (data / "paper").mkdir(parents=True)
    with sqlite3.connect(data / "paper" / "journal.db") as conn:
        conn.execute("create table t (x)")
    session = data / "blackbox" / "20250101T000000Z-abc123"
    record_session(session)
    write_manifest(session, time.time())
    token = data / "control.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)

    code, rows = run(capsys, config, tmp_path)
    assert code == 0, rows["_out"][1]
    for name in ("config", "credentials", "control token", "data dir", "telemetry port",
                 "control port", "sqlite", "black box", "clock offset", "broker"):  # fmt: skip
        assert rows[name][0] == "OK", rows["_out"][1]
    assert rows["credentials"][1] == "not needed (simulator)"
    assert rows["broker"][1] == "simulator"
    assert "61 records" in rows["black box"][1]
    assert "simulator" in rows["clock offset"][1]


def test_empty_install_is_ok(capsys, tmp_path):
    code, rows = run(capsys, write_config(tmp_path), tmp_path)
    assert code == 0
    assert rows["sqlite"] == ("OK", "no databases yet")
    assert rows["black box"] == ("OK", "no sessions yet")


def test_bad_config_names_the_key(capsys, tmp_path):
    config = write_config(tmp_path, "[strategy]\nbar_intervl_s = 5\n")
    code, rows = run(capsys, config, tmp_path)
    assert code == 1
    assert rows["config"][0] == "FAIL"
    assert "strategy.bar_intervl_s" in rows["config"][1]


def test_live_missing_credentials_never_prints_values(capsys, tmp_path, monkeypatch):
    with socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen(1)
        port = broker.getsockname()[1]
        # 0.0.0.0 is not loopback to the config check, yet connects to this host.
        config = write_config(
            tmp_path, LIVE_BROKER, mode="live", url=f"wss://0.0.0.0:{port}/smart-stream"
        )
        for var, value in SECRETS.items():
            monkeypatch.setenv(var, value)
        (tmp_path / ".env").write_text("CHIMERA_FEED_TOKEN=sekrit-feed-token\n")
        code, rows = run(capsys, config, tmp_path)
    out = rows["_out"][1]
    assert code == 1
    assert rows["config"][0] == "WARN" and "live mode: real orders" in rows["config"][1]
    assert rows["credentials"][0] == "FAIL"
    assert "CHIMERA_CLIENT_CODE" in rows["credentials"][1]
    assert "CHIMERA_API_KEY" not in rows["credentials"][1]
    assert rows["broker"][0] == "OK"
    for secret in (*SECRETS.values(), "sekrit-feed-token"):
        assert secret not in out


def test_live_unreachable_broker_fails(capsys, tmp_path, monkeypatch):
    config = write_config(tmp_path, LIVE_BROKER, mode="live", url=f"wss://0.0.0.0:{free_port()}/x")
    for var in CREDENTIAL_ENV.values():
        monkeypatch.setenv(var, "v")
    code, rows = run(capsys, config, tmp_path)
    assert code == 1
    assert rows["credentials"][0] == "OK"
    assert rows["broker"][0] == "FAIL"


def test_port_in_use_warns(capsys, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        config = write_config(tmp_path)
        text = config.read_text().replace(
            'endpoint = "tcp://127.0.0.1:', f'endpoint = "tcp://127.0.0.1:{port}" #', 1
        )
        config.write_text(text)
        code, rows = run(capsys, config, tmp_path)
    assert code == 0
    assert rows["telemetry port"] == (
        "WARN",
        f"tcp://127.0.0.1:{port} in use (is chimera live running?)",
    )
    assert rows["control port"][0] == "OK"


def test_group_readable_token_warns(capsys, tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "data").mkdir()
    token = tmp_path / "data" / "control.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    code, rows = run(capsys, config, tmp_path)
    assert code == 0
    assert rows["control token"][0] == "WARN"
    assert TOKEN not in rows["control token"][1]


def test_a_weak_token_fails_without_showing_it(capsys, tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "control.token").write_text("tok\n")
    code, rows = run(capsys, config, tmp_path)
    assert code == 1
    assert rows["control token"][0] == "FAIL" and "32" in rows["control token"][1]
    assert "tok\n" not in rows["control token"][1]


def test_corrupt_sqlite_fails(capsys, tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "data" / "paper").mkdir(parents=True)
    (tmp_path / "data" / "paper" / "x.db").write_bytes(os.urandom(64) * 100)
    code, rows = run(capsys, config, tmp_path)
    assert code == 1
    assert rows["sqlite"][0] == "FAIL" and "x.db" in rows["sqlite"][1]


def test_blackbox_flipped_byte_fails(capsys, tmp_path):
    config = write_config(tmp_path)
    session = tmp_path / "data" / "blackbox" / "s1"
    record_session(session)
    seg = segments(session)[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # inside the last record's body: its CRC no longer matches
    seg.write_bytes(bytes(data))
    code, rows = run(capsys, config, tmp_path)
    assert code == 1
    assert rows["black box"][0] == "FAIL" and "crc" in rows["black box"][1].lower()


def test_blackbox_torn_tail_warns(capsys, tmp_path):
    config = write_config(tmp_path)
    session = tmp_path / "data" / "blackbox" / "s1"
    record_session(session)
    seg = segments(session)[-1]
    seg.write_bytes(seg.read_bytes()[:-5])
    code, rows = run(capsys, config, tmp_path)
    assert code == 0
    assert rows["black box"][0] == "WARN" and "torn tail" in rows["black box"][1]
    assert "60 records" in rows["black box"][1]


@pytest.mark.parametrize(("late_s", "status"), [(1.0, "OK"), (60.0, "WARN")])
def test_clock_offset_of_a_real_feed_session(capsys, tmp_path, late_s, status):
    config = write_config(tmp_path)
    session = tmp_path / "data" / "blackbox" / "s1"
    last_ms = record_session(session, url="wss://smartapisocket.angelone.in/smart-stream")
    write_manifest(session, last_ms / 1000 + late_s)
    code, rows = run(capsys, config, tmp_path)
    assert code == 0
    assert rows["clock offset"][0] == status
    assert f"{-late_s:+.1f} s" in rows["clock offset"][1]


def test_newest_session_is_checked(capsys, tmp_path):
    config = write_config(tmp_path)
    old = tmp_path / "data" / "blackbox" / "old"
    record_session(old)
    seg = segments(old)[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # corrupt, but old
    seg.write_bytes(bytes(data))
    os.utime(seg, (time.time() - 3600, time.time() - 3600))
    record_session(tmp_path / "data" / "blackbox" / "new")
    code, rows = run(capsys, config, tmp_path)
    assert code == 0
    assert rows["black box"][0] == "OK" and rows["black box"][1].startswith("new:")


def test_journal_invariants_are_checked(capsys, tmp_path):
    from chimera_core.contracts import ExecKind, ExecutionReport, Fill, OrderRequest, Side
    from chimera_execution.journal import Journal

    config = write_config(tmp_path)
    with Journal(tmp_path / "data", "paper", starting_cash=100_000.0) as journal:
        journal.record_order(OrderRequest("c1", "c1", "3045", 1, Side.BUY, 10))
        fill = Fill("f1", "c1", "3045", Side.BUY, 10, 800.0, 1.5, 1_000)
        journal.apply_report(
            ExecutionReport(ExecKind.FILLED, "c1", "c1", "3045", Side.BUY, 10, 10, 800.0, fill=fill)
        )
    code, rows = run(capsys, config, tmp_path)
    assert code == 0 and rows["journal"][0] == "OK", rows["_out"][1]
    assert "1 orders, 1 fills, 0 open" in rows["journal"][1]
    db = tmp_path / "data" / "paper" / "chimera.db"
    with sqlite3.connect(db) as conn:  # a position that is not the sum of its fills
        conn.execute("UPDATE positions SET qty = qty + 1")
    code, rows = run(capsys, config, tmp_path)
    assert code == 1 and rows["journal"][0] == "FAIL", rows["_out"][1]


def test_low_disk_warning_follows_min_free_disk_mb(capsys, tmp_path):
    config = write_config(tmp_path, "")
    text = config.read_text()
    config.write_text("min_free_disk_mb = 10000000\n" + text)  # 10 TB: more than this disk
    code, rows = run(capsys, config, tmp_path)
    assert code == 0, rows["_out"][1]
    assert rows["data dir"][0] == "WARN" and "min_free_disk_mb" in rows["data dir"][1]
    config.write_text("min_free_disk_mb = 0\n" + text)
    code, rows = run(capsys, config, tmp_path)
    assert rows["data dir"][0] == "OK", rows["_out"][1]


def test_blackbox_cut_to_half_fails_as_damage_not_a_torn_tail(capsys, tmp_path):
    """The manifest says how many records were written: half of them gone is a loss."""
    config = write_config(tmp_path)
    session = tmp_path / "data" / "blackbox" / "s1"
    record_session(session, n=60)
    (session / "manifest.json").write_bytes(  # a clean stop's manifest: 61 records written
        orjson.dumps({"session_id": "s1", "complete": True, "records": 61, "last_seq": 61})
    )
    seg = segments(session)[-1]
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    code, rows = run(capsys, config, tmp_path)
    assert code == 1
    assert rows["black box"][0] == "FAIL" and "lost" in rows["black box"][1]
