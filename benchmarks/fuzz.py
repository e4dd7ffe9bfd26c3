"""``chimera bench fuzz``: a million mutated frames through the whole node, nothing escapes.

The node is the one ``chimera live`` runs, in process: engine, governance (fresh state),
order router, paper broker and journal (a throwaway file), wired frame by frame by
``chimera_core.node.Node`` as for live (the exchange matches first, then decision → router
intents and ticks → engine actions → reports back into the engine). The frames are a
seeded SNAP_QUOTE market in which a share of the frames is mutated before it arrives:

- ``bitflip``: 1-8 random bytes flipped anywhere in the packet;
- ``truncate`` / ``extend``: the packet cut short or padded with junk;
- ``field``: one header field (sequence, exchange time, LTP) set to an extreme
  (0, -1, INT64_MAX, INT64_MIN, +2^32, +10^6, +1 day, +1 year, a random int64);
- ``duplicate`` / ``stale``: an earlier frame sent again.

Reported: frames, escaped exceptions (any exception out of the node's per-frame step), and
tokens left dark: after the fuzzed stream, a clean continuation of the market is fed and
every token must decide again within it. Targets: 0 escaped, 0 dark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from chimera_core.config import parse_config
from chimera_core.contracts import Mode
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.logging import configure_logging
from chimera_core.physics import warm_up_kernels
from tools.node import build_node, build_parts
from tools.sim.market import Market

INT64_MAX = (1 << 63) - 1
DAY_MS = 86_400_000
# SmartAPI v2 header offsets (the protocol reference): sequence, exchange time, LTP.
FIELDS = {"sequence": 27, "exchange_ts_ms": 35, "ltp": 43}
CONFIG = """
data_dir = "{data}"
[feed]
mode = "SNAP_QUOTE"
tokens = ["2885", "1594", "3045"]
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
cooldown_s = 30.0
execute_timeout_s = 10.0
[governance]
min_confidence = 0.0
approval_min_confidence = 0.0
[execution]
journal_sync = "NORMAL"
[execution.paper]
latency_ms = 0
[logging]
decisions = "none"
level = "ERROR"
"""


def _mutate(rng: random.Random, frame: bytes, history: list[bytes]) -> tuple[str, bytes]:
    kind = rng.choice(("bitflip", "bitflip", "truncate", "extend", "field", "field", "replay"))
    if kind == "bitflip":
        b = bytearray(frame)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "truncate":
        return kind, frame[: rng.randrange(len(frame))]
    if kind == "extend":
        return kind, frame + rng.randbytes(rng.randint(1, 64))
    if kind == "field":
        name, offset = rng.choice(list(FIELDS.items()))
        (value,) = struct.unpack_from("<q", frame, offset)
        new = rng.choice(
            (
                0, -1, INT64_MAX, -INT64_MAX - 1, value + (1 << 32), value + 10**6,
                value + DAY_MS, value + 365 * DAY_MS, rng.randint(-INT64_MAX - 1, INT64_MAX),
            )
        )  # fmt: skip
        new = max(-INT64_MAX - 1, min(INT64_MAX, new))
        b = bytearray(frame)
        struct.pack_into("<q", b, offset, new)
        return f"field:{name}", bytes(b)
    return kind, history[rng.randrange(len(history))] if history else frame


async def run(frames: int, mutate_p: float, seed: int, clean_tail: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="chimera-fuzz-"))
    cfg = parse_config(CONFIG.format(data=data))
    parts = build_parts(cfg, {}, state_dir=data / "paper" / "governance")
    node = build_node(cfg, parts)  # the composition root, as chimera live builds it
    engine, router = node.engine, parts.router
    assert router is not None  # execution is on in CONFIG
    await node.connect()
    market = Market(seed=seed)
    rng = random.Random(seed)
    escaped: list[str] = []
    kinds: dict[str, int] = {}
    history: list[bytes] = []
    step = node.on_frame

    started = time.perf_counter()
    for i in range(frames):
        frame = encode(market.next_tick(Mode.SNAP_QUOTE))
        if len(history) < 4096:
            history.append(frame)
        elif i % 97 == 0:
            history[rng.randrange(4096)] = frame
        if rng.random() < mutate_p:
            kind, frame = _mutate(rng, frame, history)
            kinds[kind] = kinds.get(kind, 0) + 1
        try:
            step(frame, i * 50_000)
        except Exception:  # the whole point: count what escapes, keep going
            if len(escaped) < 10:
                escaped.append(traceback.format_exc(limit=6))
            else:
                escaped.append("")
        if i % 256 == 0:
            await asyncio.sleep(0)  # the router's broker calls run, as on the event loop
    fuzz_s = time.perf_counter() - started
    decided_late: dict[str, int] = {t: 0 for t in engine.symbols}
    for j in range(clean_tail):
        d = step(encode(market.next_tick(Mode.SNAP_QUOTE)), (frames + j) * 50_000)
        if d is not None:
            decided_late[d.token] += 1
        if j % 256 == 0:
            await asyncio.sleep(0)
    await router.stop(timeout_s=2.0)
    stats = engine.stats.as_dict()
    return {
        "frames": frames,
        "mutated": sum(kinds.values()),
        "mutations": dict(sorted(kinds.items())),
        "escaped_exceptions": len(escaped),
        "escaped_first": [e for e in escaped if e][:3],
        "tokens_left_dark": sorted(t for t, n in decided_late.items() if n == 0),
        "clean_tail_frames": clean_tail,
        "clean_tail_decisions": decided_late,
        "frames_per_s": round(frames / fuzz_s),
        "engine": {k: stats[k] for k in sorted(stats) if stats[k]},
        "orders": router.stats,
        "journal_check": router.journal.check(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chimera bench fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["fuzz"])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--mutate", type=float, default=0.2, help="share of frames mutated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--clean-tail", type=int, default=3000)
    parser.add_argument("--json", default="benchmarks/results/fuzz.json")
    args = parser.parse_args(argv)
    configure_logging("ERROR")
    warm_up_kernels()
    out = asyncio.run(run(args.frames, args.mutate, args.seed, args.clean_tail))
    result = {
        "command": "chimera bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "targets": {"escaped_exceptions": 0, "tokens_left_dark": []},
        **out,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, Path(args.json).with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("frames", "mutated", "escaped_exceptions",
                                             "tokens_left_dark", "frames_per_s")}))  # fmt: skip
    ok = result["escaped_exceptions"] == 0 and not result["tokens_left_dark"]
    return 0 if ok else 1


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine = result["engine"]
    names = [k for k in engine if k not in ("frames", "decisions")]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names, [engine[k] for k in names])
    ax.set_xscale("log")
    ax.set_title(
        f"{result['frames']:,} frames, {result['mutated']:,} mutated: "
        f"{result['escaped_exceptions']} escaped, {len(result['tokens_left_dark'])} tokens dark"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
