"""Write the small shipped sample tick file (data/samples/sim_seed7.chtick).

QUOTE-mode frames of the seeded market for three NSE_CM tokens, exactly as the
simulator would send them. The exchange-time step is 1-5 s per tick (the live
simulator uses 20-400 ms) so 2,850 ticks span ~2.4 hours of one session: enough
closed 1-minute bars to warm the physics windows in a replay, in under 400 KB.

The receive time stored with each frame is synthetic: the exchange time plus 2 ms, in
nanoseconds (a real recording stores the receiver's monotonic clock instead), so the
file is byte-for-byte reproducible: ``python -m tools.sim.sample`` rewrites it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chimera_core.contracts import Mode
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.tickfile import TickFileWriter
from tools.sim.market import DEFAULT_TOKENS, Market

SAMPLE_PATH = Path(__file__).resolve().parents[2] / "data" / "samples" / "sim_seed7.chtick"
SAMPLE_SEED = 7
SAMPLE_TICKS = 2850
SAMPLE_TICK_INTERVAL_MS = (1000, 5000)
_RECEIVE_LAG_NS = 2_000_000


def sample_frames(
    seed: int = SAMPLE_SEED,
    ticks: int = SAMPLE_TICKS,
    tokens: tuple[str, ...] = DEFAULT_TOKENS,
    mode: int = Mode.QUOTE,
    tick_interval_ms: tuple[int, int] = SAMPLE_TICK_INTERVAL_MS,
) -> list[tuple[int, bytes]]:
    """The sample's ``(recv_ns, frame)`` records, in order."""
    market = Market(tokens, seed=seed, tick_interval_ms=tick_interval_ms)
    records = []
    for _ in range(ticks):
        tick = market.next_tick(mode)
        records.append((tick.exchange_ts_ms * 1_000_000 + _RECEIVE_LAG_NS, encode(tick)))
    return records


def write_sample(path: str | Path = SAMPLE_PATH, **kwargs: object) -> int:
    """Write (replace) the sample file; returns the number of frames written."""
    path = Path(path)
    path.unlink(missing_ok=True)  # the writer appends; a sample is always written whole
    records = sample_frames(**kwargs)  # type: ignore[arg-type]
    with TickFileWriter(path) as writer:
        for recv_ns, frame in records:
            writer.write(recv_ns, frame)
    return len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.sample", description=__doc__)
    parser.add_argument("--out", type=Path, default=SAMPLE_PATH)
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED)
    parser.add_argument("--ticks", type=int, default=SAMPLE_TICKS)
    args = parser.parse_args(argv)
    count = write_sample(args.out, seed=args.seed, ticks=args.ticks)
    print(f"wrote {count} frames to {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
