"""Instrument names for the tokens the cortex shows, from the session it sees.

The engine's ``SessionInfo`` (topic ``session``, repeated for late joiners) carries the
parsed config as JSON. What it records about names:

- ``execution.angelone.symbols``: token → trading symbol, as the operator wrote it;
- ``instruments.names`` (``"NSE:RELIANCE-EQ"``) and ``feed.tokens`` (``"NSE_CM:2885"``,
  what ``chimera live`` resolved them to), but not which name became which token. That
  link is in the instrument master the engine cached under its data_dir
  (``<data_dir>/instruments/<IST date>.json``, ``chimera_core.instruments.load_master``):
  read here, never downloaded, and only for the configured names.

A token neither names is shown bare. The trading symbol wins as the router's does
(``[execution.angelone] symbols`` over the master). Reading a full master (tens of MB)
takes a moment, so it runs on its own thread; a page waits ``NAMES_WAIT_S`` at most
and shows the bare tokens until the names are in.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import orjson
import structlog

from chimera_core.config import Config, feed_symbols
from chimera_core.contracts import SessionInfo
from chimera_core.errors import ConfigError
from chimera_core.instruments import InstrumentMaster

log = structlog.get_logger(__name__)

NAMES_WAIT_S = 0.5
# The master is dated by the Indian trading day (tools/cli.py with_instruments).
MASTER_TZ = ZoneInfo("Asia/Kolkata")


def label(token: str, names: dict[str, str]) -> str:
    """``"RELIANCE-EQ · 2885"`` when the name is known, else the token."""
    name = names.get(token)
    return f"{name} · {token}" if name else token


def master_file(data_dir: Path, day: date) -> Path | None:
    """The master ``load_master`` used on ``day``: that day's cached file, else the newest
    older one (its fallback when the download failed); None when there is none."""
    cache = Path(data_dir) / "instruments"
    exact = cache / f"{day.isoformat()}.json"
    if exact.is_file():
        return exact
    older = sorted(p for p in cache.glob("????-??-??.json") if p.name < exact.name)
    return older[-1] if older else None


def _master_rows(path: Path, names: list[str]) -> list[dict[str, Any]]:
    """Only the master's rows of the configured names (exchange and trading symbol)."""
    wanted = {tuple(n.strip().upper().split(":", 1)) for n in names if ":" in n}
    rows = orjson.loads(path.read_bytes())
    if not isinstance(rows, list):
        return []
    return [
        r
        for r in rows
        if isinstance(r, dict)
        and (str(r.get("exch_seg", "")).strip().upper(), str(r.get("symbol", "")).strip().upper())
        in wanted
    ]


def instrument_names(cfg: Config, day: date, data_dir: Path | None = None) -> dict[str, str]:
    """token → trading symbol for the feed's tokens that ``cfg`` names (module docstring);
    ``data_dir`` holds the cached master (default: ``cfg.data_dir``)."""
    symbols = feed_symbols(cfg)
    tokens = {t for _, t in symbols}
    names: dict[str, str] = {}
    path = master_file(Path(data_dir or cfg.data_dir), day) if cfg.instruments.names else None
    if path is not None:
        try:
            master = InstrumentMaster(_master_rows(path, cfg.instruments.names), str(path))
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("cortex_instrument_master_unreadable", path=str(path), error=str(exc))
        else:
            on_feed = set(symbols)
            for name in cfg.instruments.names:
                try:
                    inst = master.resolve(name)
                except ConfigError:
                    continue  # not in this master: the token stays bare
                if (inst.exchange_type, inst.token) in on_feed:
                    names[inst.token] = inst.symbol
    names.update({t: s for t, s in cfg.execution.angelone.symbols.items() if t in tokens and s})
    return names


def config_names(cfg: Config, started_ns: int, data_dir: Path | None = None) -> dict[str, str]:
    """Names for the tokens of a session that started at ``started_ns`` (wall clock) with
    ``cfg``: its master is the one the engine cached under its own data_dir that day, else
    the one under ``data_dir`` (the cortex's)."""
    day = datetime.fromtimestamp(started_ns / 1e9, UTC).astimezone(MASTER_TZ).date()
    engine_dir = Path(cfg.data_dir)
    use = engine_dir if data_dir is None or master_file(engine_dir, day) else Path(data_dir)
    return instrument_names(cfg, day, use)


def session_names(session: SessionInfo, data_dir: Path | None = None) -> dict[str, str]:
    """Names for a live session's tokens from its SessionInfo; {} when its config cannot
    be read."""
    try:
        cfg = msgspec.json.decode(session.config_json, type=Config)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("cortex_session_config_unreadable", session=session.session_id, error=str(exc))
        return {}
    return config_names(cfg, session.started_ns, data_dir)


def recorded_names(session_dir: Path, data_dir: Path | None = None) -> dict[str, str]:
    """Names for a recorded session's tokens, from its black-box ``manifest.json`` (the
    recorder keeps the SessionInfo's config and start there); {} when it has none."""
    try:
        manifest = orjson.loads((Path(session_dir) / "manifest.json").read_bytes())
        cfg = msgspec.convert(manifest["config_json"], Config)
        started_ns = int(manifest["started_ns"])
    except (OSError, ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
        log.warning("cortex_recorded_config_unreadable", path=str(session_dir), error=str(exc))
        return {}
    return config_names(cfg, started_ns, data_dir)


class SessionNames:
    """The names of the session in view, resolved once per session on a thread."""

    def __init__(self, fallback_data_dir: Path) -> None:
        self._fallback = Path(fallback_data_dir)
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._names: dict[str, str] = {}
        self._done = threading.Event()

    def get(self, session: SessionInfo | None, wait_s: float = NAMES_WAIT_S) -> dict[str, str]:
        """token → name for ``session`` ({} before it is resolved, or without a session)."""
        if session is None:
            return {}
        key = (session.session_id, session.config_sha256)
        with self._lock:
            if key != self._key:
                self._key, self._names = key, {}
                self._done = threading.Event()
                threading.Thread(
                    target=self._resolve,
                    args=(key, session, self._done),
                    name="cortex-names",
                    daemon=True,
                ).start()
            done = self._done
        done.wait(wait_s)
        with self._lock:
            return self._names if self._key == key else {}

    def ready(self, session: SessionInfo | None) -> bool:
        """Whether ``session``'s names are resolved (False without a session)."""
        if session is None:
            return False
        with self._lock:
            key, done = self._key, self._done
        return key == (session.session_id, session.config_sha256) and done.is_set()

    def _resolve(self, key: tuple[str, str], session: SessionInfo, done: threading.Event) -> None:
        try:
            names = session_names(session, self._fallback)
        except Exception:  # a name is a nicety: never take the page down for it
            log.exception("cortex_names_failed", session=session.session_id)
            names = {}
        with self._lock:
            if self._key == key:
                self._names = names
        done.set()
        log.info("cortex_instrument_names", session=session.session_id, names=names)
