"""``chimera doctor``: a preflight check of one Chimera install.

Checks the config, credentials (names only: a secret's value is never printed), the data
directory, the telemetry/control ports, the SQLite journals, the last black-box session
and its clock offset, and (live) whether the broker's feed host answers. Prints one row per
check (``check  status  detail``); exits 1 if any row is FAIL, else 0.

Doctor only looks: every store is opened read-only (SQLite ``mode=ro``, as a snapshot when
no writer has it open, so not even a ``-wal`` / ``-shm`` appears) and nothing under
data_dir is created, changed or removed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sqlite3
import stat
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

import orjson
import structlog

from chimera_core.config import (
    CREDENTIAL_ENV,
    Config,
    default_config_path,
    is_loopback_url,
    load_config,
    load_env,
)
from chimera_core.contracts import SessionInfo, TickRecord
from chimera_core.control import TOKEN_ENV, TOKEN_FILE, ControlError, check_token
from chimera_core.errors import ChimeraError, ProtocolError, StoreError
from chimera_core.logging import configure_logging
from chimera_core.store import open_readonly
from chimera_core.telemetry import (
    TOPIC_SESSION,
    TOPIC_TICK,
    Message,
    ReadReport,
    check_session,
    read_session,
    segments,
)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
GIB = 1 << 30
MIB = 1 << 20
FAIL_FREE_BYTES = 100 * MIB
MAX_CLOCK_OFFSET_S = 5.0
CONNECT_TIMEOUT_S = 3.0
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Row:
    check: str
    status: str
    detail: str


def _safe_url(url: str) -> str:
    """scheme://host:port of ``url``: no path, query or user info (nothing secret)."""
    p = urlparse(url)
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{p.hostname or ''}{port}"


# ---- checks --------------------------------------------------------------------------
def check_config(path: str | None) -> tuple[Config | None, list[Row]]:
    try:
        cfg = load_config(path)
    except ChimeraError as exc:
        return None, [Row("config", FAIL, str(exc))]
    source = path or "built-in defaults (no chimera.toml)"
    feed = _safe_url(cfg.feed.url)
    if cfg.mode == "live":
        return cfg, [Row("config", WARN, f"{source}: live mode: real orders (feed {feed})")]
    return cfg, [Row("config", OK, f"{source}: paper mode (feed {feed})")]


def check_credentials(cfg: Config, env: dict[str, str]) -> list[Row]:
    rows: list[Row] = []
    if cfg.mode == "paper" and is_loopback_url(cfg.feed.url):
        rows.append(Row("credentials", OK, "not needed (simulator)"))
    else:
        names = list(CREDENTIAL_ENV.values())
        missing = [n for n in names if not env.get(n)]
        if missing:
            rows.append(
                Row(
                    "credentials",
                    FAIL,
                    f"missing {', '.join(missing)} (set them in the environment or .env)",
                )
            )
        else:
            rows.append(Row("credentials", OK, ", ".join(f"{n} set" for n in names)))
    rows.append(check_control_token(cfg, env))
    return rows


def check_control_token(cfg: Config, env: dict[str, str]) -> Row:
    if env.get(TOKEN_ENV):
        try:
            check_token(env[TOKEN_ENV], TOKEN_ENV)
        except ControlError as exc:
            return Row("control token", FAIL, str(exc))
        return Row("control token", OK, f"{TOKEN_ENV} set")
    path = Path(cfg.data_dir) / TOKEN_FILE
    if not path.is_file():
        return Row("control token", OK, f"missing ({path} is created by `chimera live`)")
    try:
        check_token(path.read_text(encoding="utf-8").strip(), str(path))
    except (ControlError, OSError, UnicodeDecodeError) as exc:
        return Row("control token", FAIL, str(exc))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Row(
            "control token",
            WARN,
            f"{path} set but mode {mode:04o} is group/world readable (chmod 600 {path})",
        )
    return Row("control token", OK, f"{path} set (mode {mode:04o})")


def check_data_dir(cfg: Config) -> list[Row]:
    data_dir = Path(cfg.data_dir)
    target = data_dir
    while not target.exists():
        if target.parent == target:
            return [Row("data dir", FAIL, f"{data_dir}: no existing parent directory")]
        target = target.parent
    if not target.is_dir():
        return [Row("data dir", FAIL, f"{target} exists and is not a directory")]
    note = "" if target == data_dir else f" (does not exist yet; {target} allows creating it)"
    # Asked, not tried: doctor creates nothing (a probe file would be a write).
    if os.statvfs(target).f_flag & os.ST_RDONLY:
        return [Row("data dir", FAIL, f"{target} is on a read-only filesystem")]
    if not os.access(target, os.W_OK | os.X_OK):
        return [Row("data dir", FAIL, f"{target} is not writable by this user")]
    free = shutil.disk_usage(target).free
    free_text = f"{free / GIB:.1f} GiB free"
    if free < FAIL_FREE_BYTES:
        return [Row("data dir", FAIL, f"{data_dir}: only {free / MIB:.0f} MiB free{note}")]
    if free < cfg.min_free_disk_mb * MIB:
        return [
            Row(
                "data dir",
                WARN,
                f"{data_dir}: low disk, {free_text} (min_free_disk_mb = {cfg.min_free_disk_mb})"
                f"{note}",
            )
        ]
    return [Row("data dir", OK, f"{data_dir} writable, {free_text}{note}")]


def _port_row(name: str, endpoint: str) -> Row:
    m = re.fullmatch(r"tcp://([^:]+):(\d+)", endpoint)
    if not m:
        return Row(name, OK, f"{endpoint} (not a TCP port)")
    host, port = m.group(1), int(m.group(2))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As ZeroMQ binds: SO_REUSEADDR, so a port in TIME_WAIT does not read as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
    except OSError as exc:
        if exc.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            return Row(name, WARN, f"{endpoint} in use (is chimera live running?)")
        return Row(name, FAIL, f"{endpoint} cannot bind: {exc.strerror or exc}")
    finally:
        sock.close()
    return Row(name, OK, f"{endpoint} free")


def check_ports(cfg: Config) -> list[Row]:
    return [
        _port_row("telemetry port", cfg.telemetry.endpoint),
        _port_row("control port", cfg.control.endpoint),
    ]


def check_sqlite(cfg: Config) -> list[Row]:
    data_dir = Path(cfg.data_dir)
    dbs = sorted(
        p
        for sub in ("paper", "live")
        if (data_dir / sub).is_dir()
        for p in (data_dir / sub).rglob("*.db")
    )
    if not dbs:
        return [Row("sqlite", OK, "no databases yet")]
    bad: list[str] = []
    busy: list[str] = []
    for db in dbs:
        try:
            # Read-only, and a snapshot: no -wal / -shm is created beside an idle store.
            with open_readonly(db, snapshot=True, timeout_s=2.0) as view:
                result = view.integrity_check()
                unchanged = view.unchanged()
        except StoreError as exc:  # names the file and what to do
            bad.append(str(exc))
            continue
        except (sqlite3.Error, ChimeraError, OSError) as exc:
            bad.append(f"{db}: {exc}")
            continue
        if result != ["ok"] and not unchanged:
            busy.append(str(db))  # a writer started meanwhile: the snapshot proves nothing
        elif result != ["ok"]:
            bad.append(f"{db}: {'; '.join(str(r) for r in result[:3])}")
    if bad:
        return [Row("sqlite", FAIL, " | ".join(bad))]
    if busy:
        return [Row("sqlite", WARN, f"changed while checked, run doctor again: {', '.join(busy)}")]
    return [Row("sqlite", OK, f"{len(dbs)} database(s) pass integrity_check")]


def _last_session(cfg: Config) -> Path | None:
    root = Path(cfg.data_dir) / "blackbox"
    if not root.is_dir():
        return None
    sessions = [d for d in root.iterdir() if d.is_dir() and segments(d)]
    if not sessions:
        return None
    return max(sessions, key=lambda d: (max(s.stat().st_mtime for s in segments(d)), d.name))


def check_blackbox(cfg: Config) -> list[Row]:
    session = _last_session(cfg)
    if session is None:
        return [Row("black box", OK, "no sessions yet"), Row("clock offset", OK, "no sessions yet")]
    report = ReadReport()
    info: SessionInfo | None = None
    last_tick: Message | None = None
    try:
        for message in read_session(session, report):
            topic = message.topic
            if topic.startswith(TOPIC_TICK):
                last_tick = message
            elif topic == TOPIC_SESSION and info is None:
                try:
                    info = message.decode()
                except ProtocolError:
                    pass
    except (OSError, ProtocolError) as exc:
        return [
            Row("black box", FAIL, f"{session.name}: {exc}"),
            Row("clock offset", WARN, "not checked (unreadable session)"),
        ]
    name = session.name
    verdict = check_session(session)  # against the manifest: damage and lost records
    if not verdict.ok:
        row = Row("black box", FAIL, f"{name}: " + "; ".join(verdict.errors[:2]))
    elif report.crc_errors:
        where = ", ".join(report.crc_errors[:3])
        row = Row("black box", FAIL, f"{name}: {len(report.crc_errors)} CRC error(s) at {where}")
    elif report.torn:
        row = Row(
            "black box",
            WARN,
            f"{name}: {report.records} records, torn tail at {', '.join(report.torn)} "
            "(what a crash leaves; earlier records are fine)",
        )
    else:
        row = Row("black box", OK, f"{name}: {report.records} records")
    return [row, _clock_row(session, info, last_tick)]


def _session_feed_url(session: Path, info: SessionInfo | None) -> str | None:
    config: Any = None
    if info is not None:
        try:
            config = orjson.loads(info.config_json)
        except orjson.JSONDecodeError:
            config = None
    if config is None:
        manifest = _manifest(session)
        config = manifest.get("config_json")
    if isinstance(config, dict) and isinstance(config.get("feed"), dict):
        url = config["feed"].get("url")
        return url if isinstance(url, str) else None
    return None


def _manifest(session: Path) -> dict[str, Any]:
    try:
        data = orjson.loads((session / MANIFEST).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _clock_row(session: Path, info: SessionInfo | None, last_tick: Message | None) -> Row:
    if last_tick is None:
        return Row("clock offset", OK, "no ticks in the last session")
    try:
        record: TickRecord = last_tick.decode()
    except ProtocolError as exc:
        return Row("clock offset", WARN, f"last tick does not decode: {exc}")
    if record.decision is None:
        return Row("clock offset", OK, "last tick carries no decision")
    exchange_s = record.decision.exchange_ts_ms / 1000.0
    ended = _manifest(session).get("recorder_ended")
    end_s: float | None = None
    source = "recorder end"
    if isinstance(ended, str):
        try:
            end_s = datetime.fromisoformat(ended).timestamp()
        except ValueError:
            end_s = None
    if end_s is None:  # still recording, or the recorder crashed: its last write
        end_s = max(s.stat().st_mtime for s in segments(session))
        source = "last segment write (no recorder end in the manifest)"
    offset = exchange_s - end_s
    detail = f"last exchange time {offset:+.1f} s vs {source}"
    url = _session_feed_url(session, info)
    if url is not None and is_loopback_url(url):
        return Row("clock offset", OK, f"{detail} (simulator session: simulated dates, expected)")
    if abs(offset) > MAX_CLOCK_OFFSET_S:
        return Row(
            "clock offset",
            WARN,
            f"{detail} (over {MAX_CLOCK_OFFSET_S:.0f} s: check NTP, or the session ended "
            "long after the last tick)",
        )
    return Row("clock offset", OK, detail)


def check_broker(cfg: Config) -> list[Row]:
    """The market-data host and, with the angelone broker, the order API host answer."""
    targets = [("broker", cfg.feed.url)]
    if cfg.execution.enabled and cfg.execution.broker == "angelone":
        targets.append(("broker orders", cfg.execution.angelone.rest_url))
    rows = []
    for name, url in targets:
        if is_loopback_url(url):
            rows.append(Row(name, OK, "simulator"))
            continue
        p = urlparse(url)
        host, port = p.hostname or "", p.port or 443
        started = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            rows.append(Row(name, FAIL, f"{host}:{port} unreachable: {exc.strerror or exc}"))
            continue
        ms = (time.monotonic() - started) * 1000
        rows.append(Row(name, OK, f"{host}:{port} reachable ({ms:.0f} ms)"))
    return rows


def check_journal(cfg: Config) -> list[Row]:
    """The execution journal's own invariants: positions are the sum of fills, the cash
    ledger balances, no order over-filled."""
    from chimera_execution.journal_view import SCHEMA_VERSION, JournalReader, journal_path

    path = journal_path(cfg.data_dir, cfg.mode)
    if not path.is_file():
        return [Row("journal", OK, f"no journal yet ({path})")]
    try:
        # Read-only: doctor never migrates, stamps or fixes the starting cash of a journal.
        with JournalReader(path, snapshot=True) as journal:
            version, mode = journal.schema_version, journal.mode
            problems = journal.check()
            orders, fills = len(journal.orders()), len(journal.fills())
            open_orders = len(journal.open_orders())
            unchanged = journal.unchanged()
    except (ChimeraError, sqlite3.Error) as exc:
        return [Row("journal", FAIL, f"{path}: {exc}")]
    if version == 0:
        size = path.stat().st_size
        return [
            Row(
                "journal",
                WARN,
                f"{path} has no schema ({size} bytes): `chimera live` initializes it, "
                "with the starting cash from the config",
            )
        ]
    if mode is not None and mode != cfg.mode:
        return [Row("journal", FAIL, f"{path} belongs to mode {mode!r}, config is {cfg.mode!r}")]
    if problems and not unchanged:
        return [Row("journal", WARN, f"{path} changed while checked; run doctor again")]
    if problems:
        return [Row("journal", FAIL, f"{path}: " + " | ".join(problems[:3]))]
    migrate = (
        f"; schema {version}, `chimera live` migrates it to {SCHEMA_VERSION}"
        if version < SCHEMA_VERSION
        else ""
    )
    return [
        Row(
            "journal",
            OK,
            f"{orders} orders, {fills} fills, {open_orders} open; consistent{migrate}",
        )
    ]


# ---- output --------------------------------------------------------------------------
def render(rows: list[Row], out: TextIO) -> None:
    w1 = max(len("check"), *(len(r.check) for r in rows))
    w2 = max(len("status"), *(len(r.status) for r in rows))
    out.write(f"{'check':<{w1}}  {'status':<{w2}}  detail\n")
    for r in rows:
        out.write(f"{r.check:<{w1}}  {r.status:<{w2}}  {r.detail}\n")


def run_checks(config: str | None, env_file: str | None) -> list[Row]:
    cfg, rows = check_config(config)
    if cfg is None:
        return rows  # nothing else can be checked without a config
    env = load_env(env_file)
    rows += check_credentials(cfg, env)
    rows += check_data_dir(cfg)
    rows += check_ports(cfg)
    rows += check_sqlite(cfg)
    rows += check_blackbox(cfg)
    rows += check_journal(cfg)
    rows += check_broker(cfg)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera doctor", description="check config, credentials, data, ports, black box"
    )
    p.add_argument(
        "--config",
        default=default_config_path(),
        help="TOML config (default: ./chimera.toml if present)",
    )
    p.add_argument("--env-file", default=".env", help="file with CHIMERA_* secrets (default .env)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    saved = structlog.get_config()
    configure_logging("ERROR")  # the table reports torn tails; no log lines on top
    try:
        rows = run_checks(args.config, args.env_file)
    finally:
        structlog.configure(**saved)
    render(rows, sys.stdout)
    failed = [r.check for r in rows if r.status == FAIL]
    if failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
