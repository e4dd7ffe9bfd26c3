"""The cortex's operator login: scrypt hashes on disk, the `--set-password` CLI, lockout,
and the runtime refusing commands for a browser session that has not logged in (against
a real ControlServer on loopback)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.control import ControlServer
from chimera_core.errors import ConfigError
from cortex.operator_login import (
    FAILURE_WINDOW_S,
    MAX_FAILURES,
    PASSWORD_HASH_ENV,
    OperatorLogins,
    hash_password,
    load_password_hash,
    verify_password,
    write_password_hash,
)
from cortex.runtime import build_runtime
from tests.loopback import REPO, free_port

pytestmark = pytest.mark.timeout(120)
PASSWORD = "correct horse battery"
TOKEN = "operator-login-test-token-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hash_is_salted_and_verifies_only_the_right_password() -> None:
    a, b = hash_password(PASSWORD), hash_password(PASSWORD)
    assert a != b and PASSWORD not in a  # a fresh salt each time
    assert a.startswith("scrypt$16384$8$1$")
    assert verify_password(PASSWORD, a) and verify_password(PASSWORD, b)
    assert not verify_password(PASSWORD + " ", a)
    assert not verify_password("", a)


@settings(max_examples=8, deadline=None)
@given(password=st.text(min_size=10, max_size=40), other=st.text(max_size=40))
def test_any_password_verifies_against_its_own_hash_only(password: str, other: str) -> None:
    stored = hash_password(password, salt=b"0123456789abcdef")
    assert verify_password(password, stored)
    assert verify_password(other, stored) is (other == password)


def test_a_short_password_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 10"):
        hash_password("1234")


@pytest.mark.parametrize(
    "stored",
    [
        "plain-text-password",
        "bcrypt$16384$8$1$00112233445566778899aabbccddeeff$" + "00" * 32,
        "scrypt$16384$8$1$zz$" + "00" * 32,
        "scrypt$1073741824$8$1$00112233445566778899aabbccddeeff$" + "00" * 32,
        "scrypt$16384$8$1$00$" + "00" * 32,
    ],
)
def test_a_malformed_hash_is_a_config_error_naming_its_source(tmp_path: Path, stored: str) -> None:
    with pytest.raises(ConfigError, match=PASSWORD_HASH_ENV):
        load_password_hash({PASSWORD_HASH_ENV: stored}, tmp_path)
    (tmp_path / "cortex.password").write_text(stored + "\n")
    with pytest.raises(ConfigError, match=r"cortex\.password"):
        load_password_hash({}, tmp_path)


def test_hash_file_is_private_and_env_wins(tmp_path: Path) -> None:
    assert load_password_hash({}, tmp_path) is None
    stored = hash_password(PASSWORD)
    path = write_password_hash(tmp_path / "data", stored)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_password_hash({}, tmp_path / "data") == (stored, str(path))
    other = hash_password("another long passphrase")
    assert load_password_hash({PASSWORD_HASH_ENV: other}, tmp_path / "data") == (
        other,
        f"${PASSWORD_HASH_ENV}",
    )
    # Replacing it leaves no temporary file behind.
    write_password_hash(tmp_path / "data", other)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cortex.password"]


def test_wrong_passwords_lock_logins_for_a_window(tmp_path: Path) -> None:
    clock = Clock()
    write_password_hash(tmp_path, hash_password(PASSWORD))
    logins = OperatorLogins(lambda: load_password_hash({}, tmp_path), clock=clock, ttl_s=3600)
    for _ in range(MAX_FAILURES):
        assert logins.login("wrong password!") == (None, "wrong password")
    # Even the right password waits out the window: guessing is slow.
    login_id, why = logins.login(PASSWORD)
    assert login_id is None and "too many wrong passwords" in why
    clock.now += FAILURE_WINDOW_S
    login_id, why = logins.login(PASSWORD)
    assert login_id is not None and why == ""
    assert logins.valid(login_id) and not logins.valid("forged") and not logins.valid(None)
    clock.now += 3600
    assert not logins.valid(login_id)  # expired: ask again
    login_id, _ = logins.login(PASSWORD)
    logins.logout(login_id)
    assert not logins.valid(login_id)


def test_a_new_password_takes_effect_without_a_restart(tmp_path: Path) -> None:
    logins = OperatorLogins(lambda: load_password_hash({}, tmp_path))
    assert not logins.configured()
    assert "chimera cortex --set-password" in logins.login(PASSWORD)[1]
    write_password_hash(tmp_path, hash_password(PASSWORD))
    assert logins.configured() and logins.login(PASSWORD)[0] is not None
    write_password_hash(tmp_path, hash_password("the second passphrase"))
    assert logins.login(PASSWORD) == (None, "wrong password")


def _cortex_cli(*args: str, cwd: Path, stdin: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "cortex", *args],
        cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


def test_set_password_cli_stores_a_private_hash(tmp_path: Path) -> None:
    (tmp_path / "chimera.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')
    done = _cortex_cli("--set-password", cwd=tmp_path, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "data" / "cortex.password"
    assert str(path) in done.stderr and "0600" in done.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert PASSWORD not in text and PASSWORD not in done.stderr + done.stdout
    assert verify_password(PASSWORD, text)
    short = _cortex_cli("--set-password", cwd=tmp_path, stdin="1234\n")
    assert short.returncode == 2 and "at least 10" in short.stderr
    assert verify_password(PASSWORD, path.read_text())  # unchanged


def test_cortex_refuses_to_start_with_a_malformed_hash(tmp_path: Path) -> None:
    (tmp_path / "chimera.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')
    done = _cortex_cli(
        "--port", str(free_port()), cwd=tmp_path, stdin="",
        env={PASSWORD_HASH_ENV: "hunter2"},
    )  # fmt: skip
    assert done.returncode == 2
    assert PASSWORD_HASH_ENV in done.stderr and "--set-password" in done.stderr


class Engine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def handle(self, command: str, arg: str, by: str = "") -> tuple[bool, dict[str, Any]]:
        self.calls.append((command, arg))
        return True, {"state": "HALTED" if command == "halt" else "ACTIVE"}


class ServerThread:
    def __init__(self, endpoint: str, engine: Engine) -> None:
        self.server = ControlServer(endpoint, TOKEN, engine.handle)
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(self.server.serve(self.stop)),
            daemon=True,
        )
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)


def test_the_runtime_sends_commands_only_for_a_logged_in_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_HASH_ENV, raising=False)
    monkeypatch.delenv("CHIMERA_CONTROL_TOKEN", raising=False)
    ctl = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "chimera.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        f'[control]\nendpoint = "{ctl}"\n'
    )
    engine = Engine()
    server = ServerThread(ctl, engine)
    env = {
        "CHIMERA_CORTEX_CONFIG": str(config),
        "CHIMERA_CORTEX_ENV_FILE": str(tmp_path / "none.env"),
        "CHIMERA_CONTROL_TOKEN": TOKEN,
    }
    rt = build_runtime(env)
    try:
        # A token but no operator password: read-only.
        assert "--set-password" in rt.can_control()
        assert rt.command("halt", "cortex", None)["ok"] is False
        write_password_hash(tmp_path / "data", hash_password(PASSWORD))
        assert rt.can_control() == ""
        # Not logged in, or a made-up login id: refused before the engine sees anything.
        for login_id in (None, "", "forged-login-id"):
            reply = rt.command("halt", "cortex", login_id)
            assert reply == {"ok": False, "error": "log in as the operator first"}
        assert rt.logins.login("not the password") == (None, "wrong password")
        assert engine.calls == []
        login_id, _ = rt.logins.login(PASSWORD)
        reply = rt.command("halt", "cortex", login_id)
        assert reply["ok"] is True and engine.calls == [("halt", "cortex")]
        rt.logins.logout(login_id)
        assert rt.command("pause", "cortex", login_id)["ok"] is False
        assert engine.calls == [("halt", "cortex")]
    finally:
        rt.listener.stop()
        if rt.control is not None:
            rt.control.close()
        server.close()
