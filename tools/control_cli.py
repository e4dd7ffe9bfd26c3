"""``chimera status|pause|resume|kill|flatten|approve ID|reject ID``: operator commands.

Sends one command to the running engine over the control channel and prints its reply
as JSON. Exit codes: 0 the engine did it, 1 the engine answered not-ok, 2 the command
could not be delivered (no engine, wrong token, bad config).

A kill switch must start fast and must not depend on the rest of the config being valid:
this reads only ``data_dir`` and ``[control]`` from the TOML (``tomllib``), the token from
the environment, ``.env`` or ``data_dir/control.token``, and imports nothing of the engine
but the control client (``chimera bench control`` measures the start-up).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from chimera_core.commands import Command
from chimera_core.errors import ChimeraError

# The defaults of chimera_core.config's Config (a test holds the two together).
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7002"
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_DATA_DIR = "data"
DEFAULT_CONFIG = "chimera.toml"
TOKEN_ENV = "CHIMERA_CONTROL_TOKEN"

# CLI name -> (wire command, help, takes an ID).
# Every wire command is chimera_core.control.Command (a test holds the two together).
CLI_COMMANDS: dict[str, tuple[str, str, bool]] = {
    "status": (Command.STATUS, "show the engine's state", False),
    "pause": (Command.PAUSE, "stop opening new positions", False),
    "resume": (Command.RESUME, "resume after pause", False),
    "kill": (Command.HALT, "kill switch: halt the engine (cancel all, persisted)", False),
    "flatten": (Command.FLATTEN, "close all open positions", False),
    "approve": (Command.APPROVE, "approve a pending intent", True),
    "reject": (Command.REJECT, "reject a pending intent", True),
    "rollback": (
        Command.ROLLBACK,
        "put a genome family's previous version (or FAMILY:VERSION) back in force at the next "
        "bar, recorded and replayable",
        True,
    ),
    "reset-halt": (
        Command.RESET_HALT,
        "clear meta-risk's max_drawdown halt (drawdown is measured from here); then resume",
        True,
    ),
}


def build_parser(command: str) -> argparse.ArgumentParser:
    _, what, takes_id = CLI_COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"chimera {command}", description=what)
    if takes_id:
        parser.add_argument(
            "id",
            help="the approval ID (from `chimera status` or the cortex); for reset-halt, "
            "the rule (max_drawdown); for rollback, FAMILY or FAMILY:VERSION",
        )
    else:
        parser.add_argument(
            "--reason",
            default="",
            help="why, recorded with the command (a kill whose reason starts with 'shutdown' "
            "is not kept across restarts: systemd's ExecStop uses that)",
        )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None,
        help="TOML config for [control] endpoint and data_dir (default: ./chimera.toml if present)",
    )
    parser.add_argument("--env-file", default=".env", help="file with CHIMERA_* variables")
    parser.add_argument("--endpoint", help="control endpoint (overrides [control] endpoint)")
    parser.add_argument(
        "--token-file", help="file holding the control token (overrides env and data_dir)"
    )
    parser.add_argument("--timeout", type=float, help="seconds to wait for the engine's reply")
    return parser


def _who() -> str:
    """``cli:<login name>``: the engine records who sent a command and who decided."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:128]
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli"


def control_settings(path: str | None) -> tuple[str, float, str]:
    """``[control] endpoint``, ``[control] timeout_s`` and ``data_dir`` from the TOML at
    ``path`` (the defaults when None), as ``load_config`` reads them; ChimeraError names
    the file and the key. Nothing else in the file is read or checked."""
    import tomllib

    from chimera_core.errors import ConfigError

    if path is None:
        return DEFAULT_ENDPOINT, DEFAULT_TIMEOUT_S, DEFAULT_DATA_DIR
    try:
        with open(path, "rb") as f:
            doc: dict[str, Any] = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found (copy chimera.example.toml to {path} or pass --config)"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from None
    control = doc.get("control", {})
    if not isinstance(control, dict):
        raise ConfigError(f"{path}: 'control' must be a table ([control])")
    endpoint = control.get("endpoint", DEFAULT_ENDPOINT)
    timeout_s = control.get("timeout_s", DEFAULT_TIMEOUT_S)
    data_dir = doc.get("data_dir", DEFAULT_DATA_DIR)
    if not isinstance(endpoint, str):
        raise ConfigError(f"{path}: 'control.endpoint' must be a string, got {endpoint!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise ConfigError(f"{path}: 'control.timeout_s' must be a number, got {timeout_s!r}")
    if not 0 < timeout_s <= 600:
        raise ConfigError(f"{path}: 'control.timeout_s' = {timeout_s}: allowed 0 < x <= 600")
    if not isinstance(data_dir, str) or not data_dir.strip():
        raise ConfigError(f"{path}: 'data_dir' must be a non-empty string, got {data_dir!r}")
    return endpoint, float(timeout_s), data_dir


def _env(env_file: str | None) -> dict[str, str]:
    """The environment, with ``env_file`` filling in the control token if it has one (the
    .env parser is imported only then)."""
    env = dict(os.environ)
    if env.get(TOKEN_ENV) or env_file is None or not Path(env_file).is_file():
        return env
    try:
        if TOKEN_ENV.encode() not in Path(env_file).read_bytes():
            return env
    except OSError:
        return env
    from chimera_core.config import load_env

    return load_env(env_file)


def _send(command: str, args: argparse.Namespace) -> dict[str, object]:
    from chimera_core.control import ControlClient, check_endpoint, check_token, read_token

    endpoint, timeout_s, data_dir = control_settings(args.config)
    try:
        endpoint = check_endpoint(args.endpoint or endpoint)
    except ValueError as exc:
        raise ChimeraError(str(exc)) from None
    timeout_s = args.timeout or timeout_s
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ChimeraError(f"cannot read --token-file {args.token_file}: {exc}") from exc
        check_token(token, f"--token-file {args.token_file}")
    else:
        token = read_token(_env(args.env_file), Path(data_dir))
    with ControlClient(endpoint, token, timeout_s, by=_who()) as client:
        arg = getattr(args, "id", "") or getattr(args, "reason", "") or ""
        return client.request(CLI_COMMANDS[command][0], arg)


def main(command: str, argv: list[str]) -> int:
    if command not in CLI_COMMANDS:
        print(
            f"chimera: unknown control command {command!r} (allowed: {', '.join(CLI_COMMANDS)})",
            file=sys.stderr,
        )
        return 2
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        reply = _send(command, args)
    except ChimeraError as exc:
        print(f"chimera {command}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()
    if reply.get("ok") is True:
        return 0
    print(
        f"chimera {command}: the engine answered: {reply.get('error', 'not ok')}", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else 2)
