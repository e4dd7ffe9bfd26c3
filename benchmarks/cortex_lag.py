"""Can the cortex keep up? A publisher process sends tick records (full decisions, every
governance layer filled in) at a fixed rate through a real ``TelemetryPublisher``; this
process runs the cortex's ``TelemetryListener`` thread exactly as the Streamlit server does
and, like an open browser tab, takes a snapshot (what every page render does) every
``--render-s`` seconds.

Lag = ``time.monotonic_ns()`` when the cortex folded a message minus the ``recv_ns`` the
publisher stamped on it (CLOCK_MONOTONIC is one clock for every process on a Linux box).

    .venv/bin/python -m benchmarks.cortex_lag --rate 20000 --seconds 20 \
        --json benchmarks/results/cortex_lag.json

``--engine`` instead runs ``chimera sim --rate RATE`` and ``chimera live`` (governance on)
and measures the same listener on the engine's real telemetry; the rate is then whatever
the simulator and the engine reach on this machine (reported as ``folded / seconds``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import signal
import sys
import time
from typing import Any

import orjson


def _decision(seq: int, token: str, price: float, recv_ns: int) -> Any:
    from chimera_core.contracts import (
        Band,
        CapitalOutput,
        Decision,
        DriftOutput,
        GenomeOutput,
        PhysicsState,
        Regime,
        Signal,
        Structure,
        VolumeProfile,
    )

    ts = 1_723_780_000_000 + seq * 5
    return Decision(
        seq=seq,
        token=token,
        exchange_type=1,
        exchange_ts_ms=ts,
        tick_sequence=seq,
        bar_start_ms=ts - ts % 10_000,
        physics=PhysicsState(
            price,
            300,
            0.02,
            1.1,
            Structure.VACUUM,
            Band.NEUTRAL,
            price - 1,
            0.8,
            0.0002,
            0.4,
            VolumeProfile(price, price - 2, price + 2, 40_000),
        ),
        signal=Signal(1, "long"),
        state="IDLE",
        transitions=(),
        intent=None,
        confidence=0.55,
        influence={"physics": 0.8, "drift": 0.2, "capital": 0.0},
        feed_stale=False,
        recv_ns=recv_ns,
        decided_ns=recv_ns + 1_500,
        drift=DriftOutput(Regime.TRENDING, 0.2, 0.5, 0.2, 0.4, 0.0002, 30),
        capital=CapitalOutput(1.2, 1.5, 2.0, False, 0.8, 1e6, 0.6, 900, 1, "TRENDING 1.5x"),
        genome=GenomeOutput("default", 0, {"energy_threshold": 0.01, "band_k": 2.0}, 0, False),
    )


def publish(endpoint: str, rate: int, seconds: float, ready: Any, done: Any) -> None:
    """Send ``rate`` tick records per second for ``seconds``, paced per millisecond."""
    import msgspec

    from chimera_core.telemetry import TelemetryPublisher

    pub = TelemetryPublisher(endpoint)
    deadline = time.monotonic() + 10
    while pub.subscriptions == 0 and time.monotonic() < deadline:
        pub.drain_subscriptions()
        time.sleep(0.01)
    ready.set()
    tokens = ("2885", "1594", "3045")
    template = _decision(0, "2885", 1000.0, 0)
    frame = b"\x03" + bytes(378)  # a SNAP_QUOTE-sized frame
    replace = msgspec.structs.replace
    per_ms = rate / 1000.0
    start = time.monotonic_ns()
    end = start + int(seconds * 1e9)
    sent = 0
    while True:
        now = time.monotonic_ns()
        if now >= end:
            break
        due = int((now - start) / 1e6 * per_ms)
        while sent < due:
            sent += 1
            recv_ns = time.monotonic_ns()
            d = replace(
                template,
                seq=sent,
                token=tokens[sent % 3],
                recv_ns=recv_ns,
                decided_ns=recv_ns + 1_500,
                exchange_ts_ms=template.exchange_ts_ms + sent * 5,
            )
            pub.tick(frame, recv_ns, d)
        time.sleep(0.0005)
    done.put(
        {"sent": pub.sent, "dropped": pub.dropped, "seconds": (time.monotonic_ns() - start) / 1e9}
    )
    time.sleep(0.5)
    pub.close()


def run(rate: int, seconds: float, render_s: float, engine: bool = False) -> dict[str, Any]:
    from cortex.listener import TelemetryListener
    from tests.loopback import free_port

    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    listener = TelemetryListener(endpoint).start()
    procs: list[Any] = []
    if engine:
        procs = _start_engine(port, rate)
        # The engine waits for a subscriber; folding starts with its first tick.
        deadline = time.monotonic() + 60
        while listener.state.snapshot().counters["ticks"] == 0:
            if time.monotonic() > deadline:
                raise SystemExit("no ticks from the engine within 60 s")
            time.sleep(0.1)
    else:
        ctx = mp.get_context("spawn")
        ready, done = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=publish, args=(endpoint, rate, seconds, ready, done))
        proc.start()
        if not ready.wait(30):
            raise SystemExit("the publisher never saw the cortex subscribe")
    started = listener.state.snapshot().counters["ticks"]
    renders = 0
    render_ms: list[float] = []
    t_end = time.monotonic() + seconds + 2
    while time.monotonic() < t_end:
        time.sleep(render_s)
        t0 = time.perf_counter()
        listener.state.snapshot()  # what every page render does, under the same lock
        render_ms.append((time.perf_counter() - t0) * 1e3)
        renders += 1
    if engine:
        folded_in_window = listener.state.snapshot().counters["ticks"] - started
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(20)
        h = listener.state.snapshot().health
        pub = {
            "sent": h.telemetry_sent if h else 0,
            "dropped": h.telemetry_dropped if h else 0,
            "seconds": seconds + 2,
            "folded_in_window": folded_in_window,
        }
    else:
        pub = done.get(timeout=30)
        proc.join(10)
    listener.stop()
    st = listener.state
    lags = sorted(lag for _, lag in st.lag_ns)  # one sample per folded batch
    counters = st.snapshot().counters

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, round(p / 100 * (len(lags) - 1)))] / 1e6 if lags else 0.0

    return {
        "benchmark": "cortex_lag",
        "source": "chimera sim + chimera live" if engine else "TelemetryPublisher process",
        "rate_target": rate,
        "seconds": seconds,
        "published": pub["sent"],
        "publisher_dropped": pub["dropped"],
        "publish_rate": round(pub.get("folded_in_window", pub["sent"]) / pub["seconds"]),
        "folded": counters["ticks"],
        "subscriber_missed": counters["missed"],
        "decode_errors": counters["decode_errors"],
        "lag_ms": {
            "p50": pct(50),
            "p99": pct(99),
            "p99.9": pct(99.9),
            "max_batch_end": lags[-1] / 1e6 if lags else 0.0,
            "max_any_message": st.max_lag_ns / 1e6,
        },
        "lag_samples": len(lags),
        "renders": renders,
        "snapshot_ms_max": round(max(render_ms), 2) if render_ms else 0.0,
        "keeps_up_within_1s": st.max_lag_ns < 1e9 and counters["missed"] == 0,
        "machine": {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _start_engine(tel_port: int, rate: int) -> list[Any]:
    import subprocess
    import tempfile
    from pathlib import Path

    from tests.loopback import REPO, free_port, wait_port

    tmp = Path(tempfile.mkdtemp(prefix="cortex-lag-"))
    sim_port, ctl_port = free_port(), free_port()
    (tmp / "chimera.toml").write_text(
        f'data_dir = "{tmp / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 10\nenergy_threshold = 0.01\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nwait_for_subscriber_s = 15.0\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
    )

    def chimera(*args: str) -> subprocess.Popen[bytes]:
        # Output to /dev/null: nobody reads it, and a full pipe would stall the process.
        return subprocess.Popen(
            [sys.executable, "-m", "tools.cli", *args],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    sim = chimera("sim", "--port", str(sim_port), "--rate", str(rate))
    wait_port(sim_port)
    live = chimera("live", "--config", "chimera.toml")
    return [live, sim]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.cortex_lag", description=__doc__)
    p.add_argument("--rate", type=int, default=20_000, help="tick records per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--render-s", type=float, default=1.0, help="seconds between snapshots")
    p.add_argument("--engine", action="store_true", help="real simulator + engine")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = run(args.rate, args.seconds, args.render_s, args.engine)
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if result["keeps_up_within_1s"] else 1


if __name__ == "__main__":
    sys.exit(main())
