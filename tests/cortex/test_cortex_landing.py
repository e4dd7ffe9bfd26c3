"""The landing page (Brain) fills in by itself: a browser that opens the cortex before the
engine publishes, or opens a cortex whose listener has not started yet, sees the neural
map of a real decision without a reload.

Real pieces on loopback: ``chimera cortex`` as a process, a real ``Engine`` turning
simulator frames into decisions, published by a real ``TelemetryPublisher`` with the
session and health the live engine repeats; Debian's chromium driven by Playwright.

The cortex runs with ``--refresh-s 60``, so the pages' periodic refresh cannot be what
brings the first decision on screen within the bound. Before this fix it was: a page open
before the first decision said "Waiting for telemetry" until its next refresh (at the
default 2 s, ~4-5 s after the decision with plotly's first load), never sooner. The neural
map is the plotly chart whose title names the decision (``TOKEN · seq N``).

The config names one instrument (``[instruments] names``), resolved the way ``chimera
live`` does it (``with_instruments``, from the master cached under data_dir): the Brain
page shows RELIANCE-EQ beside token 2885, and the bare token for the others.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from chimera_core.config import Config, load_config
from chimera_core.contracts import Health, Mode
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import TOPIC_HEALTH, TOPIC_SESSION, TelemetryPublisher
from tests.cortex.browser import ARTIFACTS, NO_BROWSER, have_browser, healthy, launch, settle
from tests.loopback import chimera, free_port
from tools.cli import with_instruments
from tools.sim.market import Market
from tools.sim.master import SAMPLE_MASTER

pytestmark = [
    pytest.mark.skipif(not have_browser(), reason=NO_BROWSER),
    pytest.mark.timeout(300),
]

REFRESH_S = 60.0
# The issue asks for "a second or two" (page_first measures ~1 s on an idle box); the
# bound leaves a 2-core box loaded by other test runs room (~6-9 s seen at load 10), and
# stays far below the refresh that filled the page before. The measured figure is printed
# and written to test-artifacts/cortex/landing-<order>.json.
MAP_WITHIN_S = 20.0
MAP_TITLE = re.compile(r"(\d+)(?: · \S+)? · seq (\d+) · confidence")


class EngineStandIn:
    """A real Engine's decisions on a real publisher, ~500 frames/s, with the session and
    health repeated every 0.5 s as ``chimera live`` does for late joiners."""

    def __init__(self, cfg: Config, wait_for_subscriber: bool) -> None:
        self.pub = TelemetryPublisher(cfg.telemetry.endpoint)
        self.engine = Engine(cfg)
        self.session = session_info(cfg)
        market = Market(seed=3)
        self.frames = [encode(market.next_tick(Mode.QUOTE)) for _ in range(20_000)]
        self.wait_for_subscriber = wait_for_subscriber
        self.first_decision_at: float | None = None  # time.monotonic() of the first publish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> EngineStandIn:
        self._thread.start()
        return self

    def _health(self) -> Health:
        e = self.engine
        return Health(
            time.monotonic_ns(), e.stats.as_dict(), True, 1, False,
            self.pub.sent, self.pub.dropped, e.halted, e.status()["states"],
        )  # fmt: skip

    def _run(self) -> None:
        pub = self.pub
        if self.wait_for_subscriber:  # the cortex's listener, dialled in before this starts
            while pub.subscriptions == 0 and not self._stop.is_set():
                pub.drain_subscriptions()
                time.sleep(0.01)
        next_beat = 0.0
        i = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + 0.5
                pub.drain_subscriptions()
                pub.publish(TOPIC_SESSION, self.session)
                pub.publish(TOPIC_HEALTH, self._health())
            frame = self.frames[i % len(self.frames)]
            i += 1
            recv_ns = time.monotonic_ns()
            decision = self.engine.on_frame(frame, recv_ns)
            pub.tick(frame, recv_ns, decision)
            if decision is not None and self.first_decision_at is None:
                self.first_decision_at = time.monotonic()
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pub.close(flush_ms=0)


def _config(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    # The instrument master as `chimera live` caches it (today's, by the Indian trading
    # day): with_instruments reads it and downloads nothing.
    today = dt.datetime.now(ZoneInfo("Asia/Kolkata")).date()
    (data_dir / "instruments").mkdir(parents=True)
    (data_dir / "instruments" / f"{today.isoformat()}.json").write_text(json.dumps(SAMPLE_MASTER))
    path = tmp_path / "chimera.toml"
    path.write_text(
        f'data_dir = "{data_dir}"\n'
        "[strategy]\nbar_interval_s = 5\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        # Nothing listens there: the cached master must do.
        f'[instruments]\nnames = ["NSE:RELIANCE-EQ"]\n'
        f'master_url = "http://127.0.0.1:{free_port()}/OpenAPIScripMaster.json"\n'
    )
    return path


def _start_cortex(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    web_port = free_port()
    cortex = chimera(
        "cortex", "--config", "chimera.toml", "--port", str(web_port),
        "--refresh-s", str(REFRESH_S), cwd=tmp_path,
    )  # fmt: skip
    return cortex, healthy(web_port)


def _map_title(page) -> re.Match[str] | None:
    for title in page.locator(".js-plotly-plot .gtitle").all_text_contents():
        m = MAP_TITLE.search(title)
        if m:
            return m
    return None


def _influence_rows(page) -> list[list[str]]:
    """The cells of the Brain page's influence table, row by row (token, name, ...)."""
    table = page.locator('[data-testid="stTable"]').first
    return [
        [c.strip() for c in row.locator("td, th").all_inner_texts()]
        for row in table.locator("tbody tr").all()
    ]


def _wait_for_map(page, since: float) -> tuple[re.Match[str], float]:
    deadline = since + MAP_WITHIN_S
    while time.monotonic() < deadline:
        m = _map_title(page)
        if m:
            return m, time.monotonic() - since
        time.sleep(0.05)
    text = page.locator('[data-testid="stApp"]').inner_text()
    raise AssertionError(
        f"no neural map of a decision {MAP_WITHIN_S} s after it was due; page text:\n{text[-2000:]}"
    )


@pytest.mark.parametrize("order", ["page_first", "engine_first"])
def test_the_landing_page_shows_the_neural_map_without_a_reload(tmp_path: Path, order: str):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cfg, instruments = with_instruments(load_config(_config(tmp_path)))
    assert [(i.token, i.symbol) for i in instruments] == [("2885", "RELIANCE-EQ")]
    engine: EngineStandIn | None = None
    cortex: subprocess.Popen[bytes] | None = None
    try:
        if order == "engine_first":
            engine = EngineStandIn(cfg, wait_for_subscriber=False).start()
            while engine.first_decision_at is None:
                time.sleep(0.05)
        cortex, base = _start_cortex(tmp_path)
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = launch(pw, profile)
            page = browser.pages[0] if browser.pages else browser.new_page()
            loads: list[str] = []
            page.on("load", lambda p: loads.append(p.url))
            page.goto(base)
            opened = time.monotonic()
            if order == "page_first":
                page.get_by_text("Waiting for telemetry").wait_for(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "landing-waiting.png"))
                engine = EngineStandIn(cfg, wait_for_subscriber=True).start()
                deadline = time.monotonic() + 30
                while engine.first_decision_at is None:
                    assert time.monotonic() < deadline, "the cortex never subscribed"
                    time.sleep(0.01)
                due = engine.first_decision_at
            else:
                due = opened  # this browser is the first: the listener starts now
            m, took_s = _wait_for_map(page, due)
            assert m.group(1) in ("2885", "1594", "3045")
            assert loads == [base], f"the page was reloaded: {loads}"
            print(f"{order}: neural map {took_s:.2f} s after it was due")
            (ARTIFACTS / f"landing-{order}.json").write_text(
                json.dumps({"order": order, "map_after_s": round(took_s, 3)})
            )
            # Names beside tokens: RELIANCE-EQ for 2885 (from [instruments] names), the
            # bare token for the two the config does not name.
            want = {"2885": "RELIANCE-EQ", "1594": "", "3045": ""}
            deadline = time.monotonic() + MAP_WITHIN_S  # the session repeats every 0.5 s
            while (names := {r[0]: r[1] for r in _influence_rows(page)}) != want:
                assert time.monotonic() < deadline, names
                time.sleep(0.1)
            text = settle(page)
            assert "RELIANCE-EQ · 2885" in text and "INFY" not in text
            assert "Waiting for telemetry" not in text
            page.screenshot(path=str(ARTIFACTS / f"landing-{order}.png"), full_page=True)
            browser.close()
    finally:
        if engine is not None:
            engine.stop()
        if cortex is not None:
            cortex.send_signal(signal.SIGINT)
            try:
                cortex.wait(timeout=20)
            except subprocess.TimeoutExpired:
                cortex.kill()
