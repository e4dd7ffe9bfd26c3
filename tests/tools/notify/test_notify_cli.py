"""`chimera notify` refuses to start without a usable channel, naming the variable (never
the URL) and what to set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.loopback import REPO


def _notify(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_NOTIFY_URL")}
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "notify"],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_channel_is_a_clear_error(tmp_path: Path) -> None:
    out = _notify(tmp_path)
    assert out.returncode == 2
    assert "no alert channel: set CHIMERA_NOTIFY_URLS (or CHIMERA_NOTIFY_URL_<NAME>)" in out.stderr


def test_an_unknown_url_names_its_variable_not_the_url(tmp_path: Path) -> None:
    out = _notify(tmp_path, CHIMERA_NOTIFY_URL_OPS="nosuchscheme://SecretPart12345/x")
    assert out.returncode == 2
    assert "CHIMERA_NOTIFY_URL_OPS: URL #1 of channel 'ops' is not one apprise knows" in out.stderr
    assert "SecretPart12345" not in out.stderr + out.stdout


def test_a_url_in_the_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "chimera.toml").write_text('[notify.channels.ops]\nurl = "tgram://x/y"\n')
    out = _notify(tmp_path, CHIMERA_NOTIFY_URLS="json://127.0.0.1:9/hook")
    assert out.returncode == 2
    assert "unknown key 'notify.channels.<NAME>.url' (allowed keys: events, min_severity" in (
        out.stderr
    )
