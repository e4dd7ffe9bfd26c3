"""Write ``pre_telreader_session.tar.xz``: a black-box session recorded by the *pre-change*
code (the real recorder process, an Engine with governance, a halt and a resume, a feed
reconnect), so tests can prove sessions recorded before the telemetry reader moved into
``chimera_core.telemetry`` still read, check and replay-verify.

Run it from a checkout of the old revision (the shipped archive came from main at 717e353,
where the format code still lived in ``tools/blackbox.py``):

    git worktree add /tmp/old 717e353 && cd /tmp/old && \
        PYTHONPATH=$PWD python /path/to/make_pre_telreader_session.py OUT.tar.xz
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from chimera_core.config import parse_config
from chimera_core.contracts import ControlEvent, FeedEvent, Health, Mode
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_FEED,
    TOPIC_HEALTH,
    TOPIC_SESSION,
    TelemetryPublisher,
)
from chimera_governance.pipeline import GovernancePipeline
from tools.sim.market import Market

TICKS = 3000
# Short bars and windows, so a small session still enters, exits and vetoes.
CONFIG = """
[feed]
tokens = ["2885", "1594", "3045"]
[strategy]
bar_interval_s = 1
energy_lookback = 10
z_lookback = 20
band_lookback = 30
energy_threshold = 0.006
cooldown_s = 30.0
execute_timeout_s = 10.0
[logging]
decisions = "none"
"""


def _wait(cond: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def main(out: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="pre-telreader-"))
    conf = root / "rec.toml"
    conf.write_text("[recorder]\nfsync_interval_s = 0.05\n", encoding="utf-8")
    pub = TelemetryPublisher("tcp://127.0.0.1:*", hwm=1_000_000)
    cmd = [
        sys.executable,
        "-m",
        "tools.record",
        "--config",
        str(conf),
        "--data-dir",
        str(root / "data"),
        "--endpoint",
        pub.endpoint,
        "--segment-bytes",
        "400000",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ}, stdout=subprocess.DEVNULL)

    def subscribed() -> bool:
        pub.drain_subscriptions()
        return pub.recorders > 0

    _wait(subscribed, "recorder")
    cfg = parse_config(CONFIG)
    engine = Engine(cfg, governance=GovernancePipeline(cfg, root / "governance"))
    info = session_info(cfg)
    pub.publish(TOPIC_SESSION, info)
    market = Market(seed=5)
    recv_ns = 1_000_000_000
    pub.publish(TOPIC_FEED, FeedEvent(True, engine.feed_epoch, recv_ns))
    for i in range(TICKS):
        recv_ns += 50_000
        if i == TICKS // 2:
            for connected in (False, True):
                engine.on_feed_state(connected)
                pub.publish(TOPIC_FEED, FeedEvent(connected, engine.feed_epoch, recv_ns))
        if i in (TICKS // 3, TICKS // 3 + 200):
            command = "halt" if i == TICKS // 3 else "resume"
            ok, result = engine.control(command, "fixture")
            pub.publish(
                TOPIC_CONTROL, ControlEvent(command, "fixture", ok, json.dumps(result), recv_ns)
            )
        frame = encode(market.next_tick(Mode.QUOTE))
        pub.tick(frame, recv_ns, engine.on_frame(frame, recv_ns))
        engine.after_publish()
        if i % 500 == 0:
            pub.publish(
                TOPIC_HEALTH,
                Health(recv_ns, engine.stats.as_dict(), True, 1, False, 0, 0, engine.halted, {}),
            )
            time.sleep(0.01)
    assert pub.dropped == 0
    session = root / "data" / "blackbox" / info.session_id
    total = pub.sent

    def all_in() -> bool:
        try:
            return json.loads((session / "manifest.json").read_bytes())["records"] == total
        except (OSError, ValueError, KeyError):
            return False

    _wait(all_in, "every record in the manifest")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    pub.close()
    with tarfile.open(out, "w:xz") as tar:
        tar.add(session, arcname=session.name)
    print(f"{out}: {total} records, session {info.session_id}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
