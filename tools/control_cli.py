"""``chimera status|pause|resume|kill|flatten|approve ID|reject ID``: operator commands.

Sends one command to the running engine over the control channel and prints its reply
as JSON. Exit codes: 0 the engine did it, 1 the engine answered not-ok, 2 the command
could not be delivered (no engine, wrong token, bad config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from chimera_core.commands import Command
from chimera_core.errors import ChimeraError

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7002"
DEFAULT_TIMEOUT_S = 2.0

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
    from chimera_core.config import default_config_path  # main() imports config anyway

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
        default=default_config_path(),
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


def _send(command: str, args: argparse.Namespace) -> dict[str, object]:
    from chimera_core.config import load_config, load_env
    from chimera_core.control import ControlClient, check_token, read_token

    cfg = load_config(args.config)
    control = getattr(cfg, "control", None)
    endpoint = args.endpoint or getattr(control, "endpoint", DEFAULT_ENDPOINT)
    timeout_s = args.timeout or getattr(control, "timeout_s", DEFAULT_TIMEOUT_S)
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ChimeraError(f"cannot read --token-file {args.token_file}: {exc}") from exc
        check_token(token, f"--token-file {args.token_file}")
    else:
        token = read_token(load_env(args.env_file), Path(cfg.data_dir))
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
