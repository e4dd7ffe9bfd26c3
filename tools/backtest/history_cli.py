"""``chimera history``: fetch Angel One candles into the cache, list what is cached.

    chimera history fetch --exchange NSE --token 3045 --interval FIVE_MINUTE \\
        --from 2024-01-01 --to 2024-06-30 [--out sbin.parquet]
    chimera history ls

Credentials and the REST root are those of the live adapter: CHIMERA_API_KEY,
CHIMERA_CLIENT_CODE, CHIMERA_PASSWORD, CHIMERA_TOTP_SECRET from the environment or
``--env-file``, and ``[execution.angelone] rest_url`` from the config (``--rest-url``
overrides it, e.g. a ``chimera sim`` on 127.0.0.1). Exit codes: 0 done, 2 error, 3 stopped
at ``--max-requests`` (run again to continue).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from chimera_core.errors import ChimeraError

EXIT_INCOMPLETE = 3


def build_parser() -> argparse.ArgumentParser:
    from chimera_core.config import default_config_path
    from tools.backtest.history import INTERVALS

    p = argparse.ArgumentParser(
        prog="chimera history", description="Angel One candle history (cached, resumable)"
    )
    sub = p.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="fetch a range into the cache (only what is missing)")
    fetch.add_argument("--exchange", default="NSE", help="NSE, BSE, NFO, BFO, MCX, CDS, NCDEX")
    fetch.add_argument("--token", required=True, help="symbol token, e.g. 3045 (SBIN-EQ)")
    fetch.add_argument("--interval", required=True, type=str.upper, choices=list(INTERVALS))
    fetch.add_argument("--from", dest="first", required=True, help="first IST day, YYYY-MM-DD")
    fetch.add_argument("--to", dest="last", required=True, help="last IST day, YYYY-MM-DD")
    fetch.add_argument("--symbol", help="name for the result (default EXCHANGE:TOKEN)")
    fetch.add_argument("--out", type=Path, help="also write the bars to this .csv or .parquet")
    fetch.add_argument(
        "--max-requests", type=int, help="stop after this many chunk requests (exit 3)"
    )
    fetch.add_argument(
        "--strict-gaps", action="store_true", help="bars missing inside a session are an error"
    )
    fetch.add_argument("--rest-url", help="SmartAPI root (default: the config's rest_url)")
    for q in (fetch, sub.add_parser("ls", help="list the cached series")):
        q.add_argument("--config", default=default_config_path(), help="TOML config")
        q.add_argument("--env-file", default=".env", help="file with CHIMERA_* secrets")
        q.add_argument("--data-dir", type=Path, help="default: the config's data_dir")
    return p


def _fetch(args: argparse.Namespace, data_dir: Path) -> int:
    import msgspec

    from chimera_core.config import load_config, load_env, secret_values
    from chimera_core.logging import configure_logging
    from tools.backtest.data import Bars, write_bars
    from tools.backtest.history import (
        AngelOneCandles,
        HistoryFetcher,
        HistoryNotCached,
        load_cached,
    )

    cfg = load_config(args.config).execution.angelone
    if args.rest_url:
        cfg = msgspec.structs.replace(cfg, rest_url=args.rest_url)
    allow_gaps = not args.strict_gaps

    async def run() -> tuple[Bars, str]:
        try:
            bars = load_cached(
                data_dir,
                args.exchange,
                args.token,
                args.interval,
                args.first,
                args.last,
                symbol=args.symbol,
                allow_gaps=allow_gaps,
                complete_only=True,
            )
            return bars, "all chunks from the cache, no request"
        except HistoryNotCached:
            pass
        env = load_env(args.env_file)
        configure_logging("INFO", secret_values(env))
        source = await AngelOneCandles.login(cfg, env, data_dir)
        fetcher = HistoryFetcher(source, data_dir)
        try:
            bars = await fetcher.fetch(
                args.exchange,
                args.token,
                args.interval,
                args.first,
                args.last,
                symbol=args.symbol,
                max_requests=args.max_requests,
                allow_gaps=allow_gaps,
            )
        finally:
            s = fetcher.stats
            print(
                f"requests {s.requests}, chunks fetched {s.fetched}, from cache {s.cached}, "
                f"retries {s.retries}",
                file=sys.stderr,
            )
        return bars, f"{fetcher.stats.fetched} chunk(s) fetched, {fetcher.stats.cached} cached"

    bars, how = asyncio.run(run())
    first = _day(int(bars.ts_ms[0]))
    last = _day(int(bars.ts_ms[-1]))
    print(
        f"{bars.symbol} {args.interval}: {len(bars)} bars {first} .. {last} ({how}); "
        f"gaps inside sessions {len(bars.gaps)}; sha256 {bars.sha256}"
    )
    if args.out:
        print(f"wrote {write_bars(bars, args.out)}")
    return 0


def _day(ts_ms: int) -> str:
    from datetime import datetime

    from tools.backtest.history import IST

    return datetime.fromtimestamp(ts_ms / 1000, IST).strftime("%Y-%m-%d %H:%M")


def _ls(data_dir: Path) -> int:
    root = data_dir / "history"
    manifests = sorted(root.glob("*/*/*/manifest.json"))
    if not manifests:
        print(f"no cached history under {root}")
        return 0
    for path in manifests:
        try:
            m = json.loads(path.read_text())
            chunks = m["chunks"]
        except (OSError, ValueError, KeyError) as exc:
            print(f"{path.parent}: unreadable manifest ({exc})")
            continue
        names = sorted(chunks)
        rows = sum(int(c.get("rows", 0)) for c in chunks.values())
        partial = sum(1 for c in chunks.values() if not c.get("complete"))
        span = f"{names[0][:10]} .. {names[-1][-10:]}" if names else "-"
        print(
            f"{m.get('exchange')}:{m.get('symboltoken')} {m.get('interval')}: {len(names)} "
            f"chunk(s), {rows} candles, {span}" + (f", {partial} still forming" if partial else "")
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chimera_core.config import load_config
    from tools.backtest.history import HistoryIncomplete

    try:
        data_dir = args.data_dir or Path(load_config(args.config).data_dir)
        if args.action == "ls":
            return _ls(data_dir)
        return _fetch(args, data_dir)
    except HistoryIncomplete as exc:
        print(f"chimera history: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except ChimeraError as exc:
        print(f"chimera history: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from chimera_core.logging import configure_logging

    configure_logging("INFO")
    raise SystemExit(main())
