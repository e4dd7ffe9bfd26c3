"""`chimera status|pause|kill|approve ...` against a live ControlServer on its own uvloop thread."""

from __future__ import annotations

import asyncio
import getpass
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from chimera_core.commands import INFORMATIONAL, Command
from chimera_core.control import COMMANDS, ControlServer, resolve_token
from tools.control_cli import CLI_COMMANDS, main

pytestmark = pytest.mark.timeout(60)


class FakeEngine:
    """Stands in for the engine's control handler."""

    def __init__(self) -> None:
        self.state = "ACTIVE"
        self.calls: list[tuple[str, str]] = []
        self.by: list[str] = []

    def handle(self, command: str, arg: str, by: str = "") -> tuple[bool, dict[str, Any]]:
        self.calls.append((command, arg))
        self.by.append(by)
        if command == "halt":
            self.state = "HALTED"
        elif command == "resume" and self.state == "HALTED":
            return False, {"state": self.state, "reason": "halted: restart to trade again"}
        return True, {"state": self.state, "arg": arg}


class LiveServer:
    """A ControlServer served on a uvloop event loop in a background thread, like the engine."""

    def __init__(self, token: str) -> None:
        self.engine = FakeEngine()
        self.token = token
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            self.server = ControlServer("tcp://127.0.0.1:0", self.token, self.engine.handle)
            self.endpoint = self.server.endpoint
            self._ready.set()
            await self.server.serve(self.stop)

        uvloop.run(serve())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self._thread.join(5)
        assert not self._thread.is_alive()


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[Any]]:
    # The server shares this process; keep its log lines out of the CLI's stdout.
    with capture_logs() as captured:
        yield captured


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHIMERA_CONTROL_TOKEN", raising=False)
    (tmp_path / "chimera.toml").write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return tmp_path


@pytest.fixture
def live(workdir: Path) -> Iterator[LiveServer]:
    server = LiveServer(resolve_token({}, workdir / "data"))
    yield server
    server.close()


def _cli(command: str, *argv: str, endpoint: str) -> int:
    return main(command, [*argv, "--endpoint", endpoint, "--env-file", "missing.env"])


def test_status_prints_the_reply_as_json(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Token found through ./chimera.toml's data_dir, as an operator would run it.
    assert _cli("status", endpoint=live.endpoint) == 0
    reply = orjson.loads(capsys.readouterr().out)
    assert reply["ok"] is True and reply["command"] == "status"
    assert reply["result"]["state"] == "ACTIVE"


def test_kill_sends_halt_and_approve_passes_the_id(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("approve", "INT-42", endpoint=live.endpoint) == 0
    assert _cli("reject", "INT-43", endpoint=live.endpoint) == 0
    assert _cli("pause", endpoint=live.endpoint) == 0
    assert _cli("flatten", endpoint=live.endpoint) == 0
    assert _cli("kill", endpoint=live.endpoint) == 0
    assert _cli("kill", "--reason", "shutdown_systemd", endpoint=live.endpoint) == 0
    assert live.engine.state == "HALTED"
    assert live.engine.calls == [
        ("approve", "INT-42"),
        ("reject", "INT-43"),
        ("pause", ""),
        ("flatten", ""),
        ("halt", ""),
        ("halt", "shutdown_systemd"),
    ]
    # Every command says who sent it: this login, signed with the rest of the request.
    assert live.engine.by == [f"cli:{getpass.getuser()}"] * 6
    capsys.readouterr()
    # The engine answers not-ok: exit 1, reply still printed, reason on stderr.
    assert _cli("resume", endpoint=live.endpoint) == 1
    out, err = capsys.readouterr()
    assert orjson.loads(out)["ok"] is False and "halted" in out
    assert "chimera resume" in err


def test_wrong_token_is_refused_with_a_clear_message(
    live: LiveServer, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = workdir / "wrong.token"
    wrong.write_text("not-the-engine-token-0123456789abcdef\n")
    code = _cli("kill", "--token-file", str(wrong), endpoint=live.endpoint)
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert "refused the control token" in err and "CHIMERA_CONTROL_TOKEN" in err
    assert "not-the-engine-token" not in err
    assert live.engine.state == "ACTIVE" and live.server.refused == 1


def test_env_token_is_used(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHIMERA_CONTROL_TOKEN", "env-token-that-the-engine-does-not-have")
    assert _cli("status", endpoint=live.endpoint) == 2
    assert "refused" in capsys.readouterr().err


def test_no_engine_exits_2_with_the_hint(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resolve_token({}, workdir / "data")
    started = time.monotonic()
    code = _cli("status", "--timeout", "0.2", endpoint="tcp://127.0.0.1:1")
    assert code == 2 and time.monotonic() - started < 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "no reply from the engine at tcp://127.0.0.1:1" in err
    assert "is `chimera live` running?" in err


def test_missing_token_says_how_to_get_one(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("status", endpoint="tcp://127.0.0.1:1") == 2
    err = capsys.readouterr().err
    assert "no control token" in err and "control.token" in err


def test_usage_errors(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main("approve", []) == 2  # the ID is required
    assert "id" in capsys.readouterr().err
    assert main("explode", []) == 2
    assert "allowed: status" in capsys.readouterr().err
    assert main("status", ["--config", str(workdir / "nope.toml")]) == 2
    assert "nope.toml not found" in capsys.readouterr().err


def test_a_short_token_file_is_refused_before_sending(
    live: LiveServer, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = workdir / "short.token"
    short.write_text("1234\n")
    assert _cli("kill", "--token-file", str(short), endpoint=live.endpoint) == 2
    err = capsys.readouterr().err
    assert "--token-file" in err and "at least 32" in err and "token_hex(16)" in err
    assert live.engine.calls == [] and live.server.refused == 0


@pytest.mark.parametrize("token", ["x", "short-token-1234"])
def test_cli_with_a_short_env_token_exits_2_and_says_how_to_make_one(
    live: LiveServer, workdir: Path, token: str
) -> None:
    """A real `chimera kill` process: refused locally, before anything reaches the engine."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "kill", "--endpoint", live.endpoint],
        cwd=workdir, capture_output=True, text=True, timeout=30,
        env={**os.environ, "CHIMERA_CONTROL_TOKEN": token, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "$CHIMERA_CONTROL_TOKEN" in done.stderr and "at least 32" in done.stderr
    assert "secrets.token_hex(16)" in done.stderr
    assert live.engine.calls == [] and live.engine.state == "ACTIVE"


def test_cli_commands_work_in_a_real_process(live: LiveServer, workdir: Path) -> None:
    """`chimera kill` and `status` as subprocesses, signing with the data_dir token."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    for command, state in (("kill", "HALTED"), ("status", "HALTED")):
        done = subprocess.run(
            [sys.executable, "-m", "tools.cli", command, "--endpoint", live.endpoint],
            cwd=workdir, capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["result"]["state"] == state
    assert live.server.served == 2 and live.server.refused == 0


@pytest.mark.parametrize("cli_name", sorted(CLI_COMMANDS))
def test_every_cli_command_reaches_the_engine_by_its_one_name(
    live: LiveServer, cli_name: str
) -> None:
    """The CLI's wire names, the control server's allow-list and the engine's handler
    are one list (chimera_core.control.Command): `chimera reset-halt` used to be refused
    by the server as an unknown command, so a max_drawdown halt could not be cleared."""
    wire, _, takes_id = CLI_COMMANDS[cli_name]
    assert wire in set(Command)
    argv = ["max_drawdown"] if takes_id else []
    code = _cli(cli_name, *argv, endpoint=live.endpoint)
    assert live.engine.calls and live.engine.calls[-1][0] == wire
    assert code in (0, 1)  # answered by the engine (1: it said not-ok), never refused


def test_the_server_serves_exactly_the_commands_named_once() -> None:
    assert set(COMMANDS) == {c.value for c in Command}
    # Every operator command has its CLI name; the informational ones (chimera notify's
    # alert, republished and never applied) are no operator's to type.
    assert {wire for wire, _, _ in CLI_COMMANDS.values()} == set(Command) - INFORMATIONAL


KILL_IMPORTS = """
import sys
from tools.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in (
    "structlog", "msgspec", "numpy", "numba", "dotenv", "websockets")
    or m in ("chimera_core.config", "chimera_core.event_loop", "chimera_core.markets"))
print("IMPORTED", heavy, file=sys.stderr)
sys.exit(code)
"""


def test_kill_reads_only_what_it_needs_and_imports_no_engine(
    live: LiveServer, workdir: Path
) -> None:
    """A kill switch that a bad key elsewhere in the config cannot stop, and that starts
    without importing the engine, its config schema or a logging library."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    (workdir / "chimera.toml").write_text(
        f'data_dir = "{workdir / "data"}"\n[strategy]\nnot_a_key = 1\n'
        f'[control]\nendpoint = "{live.endpoint}"\ntimeout_s = 5\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", KILL_IMPORTS, "kill", "--reason", "operator_test"],
        cwd=workdir, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert live.engine.calls == [("halt", "operator_test")]
    assert "IMPORTED []" in done.stderr, done.stderr


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    port=st.one_of(st.none(), st.integers(1024, 65535)),
    timeout_s=st.one_of(st.none(), st.floats(0.001, 600), st.integers(1, 600)),
    data_dir=st.one_of(st.none(), st.sampled_from(["data", "var/chimera", "/srv/chimera data"])),
)
def test_control_settings_read_what_load_config_reads(
    tmp_path: Path, port: int | None, timeout_s: float | None, data_dir: str | None
) -> None:
    from chimera_core.config import load_config
    from tools.control_cli import control_settings

    lines = [] if data_dir is None else [f'data_dir = "{data_dir}"']
    control = [] if port is None else [f'endpoint = "tcp://127.0.0.1:{port}"']
    control += [] if timeout_s is None else [f"timeout_s = {timeout_s!r}"]
    text = "\n".join(lines + (["[control]", *control] if control else [])) + "\n"
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert control_settings(str(path)) == (
        cfg.control.endpoint,
        cfg.control.timeout_s,
        cfg.data_dir,
    )
    defaults = load_config(None)
    assert control_settings(None) == (
        defaults.control.endpoint,
        defaults.control.timeout_s,
        defaults.data_dir,
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[control\n", "cannot read the config"),
        ('control = "x"\n', "'control' must be a table"),
        ("[control]\nendpoint = 7002\n", "'control.endpoint' must be a string"),
        ("[control]\ntimeout_s = 0\n", "allowed 0 < x <= 600"),
        ('[control]\ntimeout_s = "2"\n', "'control.timeout_s' must be a number"),
        ('data_dir = ""\n', "'data_dir' must be a non-empty string"),
    ],
)
def test_a_bad_control_setting_is_named(tmp_path: Path, text: str, why: str) -> None:
    from chimera_core.errors import ConfigError
    from tools.control_cli import control_settings

    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why) as info:
        control_settings(str(path))
    assert str(path) in str(info.value)
