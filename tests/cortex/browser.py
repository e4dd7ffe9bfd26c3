"""Helpers for the cortex browser tests: Debian's chromium driven by Playwright (never its
own browser download), waiting as ``shared/reference/machine-floor.md`` says."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.loopback import REPO, wait_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "cortex"
NO_BROWSER = (
    f"NO BROWSER: {CHROMIUM} is missing — install Debian's chromium "
    "(`apt-get install -y chromium`; .ci/run does it) to run the cortex browser tests"
)


def have_browser() -> bool:
    return Path(CHROMIUM).exists()


def healthy(web_port: int) -> str:
    """The cortex's base URL once its server on ``web_port`` answers its health check."""
    wait_port(web_port, timeout=60)
    base = f"http://127.0.0.1:{web_port}/"
    deadline = time.monotonic() + 30
    while urllib.request.urlopen(base + "_stcore/health", timeout=5).status != 200:
        assert time.monotonic() < deadline, f"{base}_stcore/health never answered 200"
        time.sleep(0.2)
    return base


def launch(pw: Any, profile: str) -> Any:
    """Debian's chromium with the machine-floor flags; Playwright takes the fresh profile
    dir as user_data_dir, not as a flag."""
    return pw.chromium.launch_persistent_context(
        profile,
        executable_path=CHROMIUM,
        headless=True,
        viewport={"width": 1500, "height": 2200},
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )


def settle(page: Any, timeout_s: float = 30.0) -> str:
    """Wait as machine-floor.md says: app mounted, not Running, no skeleton, text stable."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        status = page.locator('[data-testid="stStatusWidget"]').all_inner_texts()
        busy = (
            any("Running" in s for s in status)
            or page.locator('[data-testid="stSkeleton"]').count()
        )
        text = page.locator('[data-testid="stApp"]').inner_text()
        if busy or text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            return str(text)
        time.sleep(0.1)
    return last or ""


def wait_text(page: Any, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
    """Wait until the page's text matches ``pattern`` (the fragments refresh it live)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = page.locator('[data-testid="stApp"]').inner_text()
        m = re.search(pattern, text)
        if m:
            return m
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} never appeared; page text:\n{text[-3000:]}")
