"""``chimera cortex``: start the Streamlit server for ``cortex/app.py`` in its own process.

Binds 127.0.0.1 unless ``--allow-remote`` (the cortex shows positions and can HALT the
engine); headless, no usage statistics. The app finds its config in
``CHIMERA_CORTEX_CONFIG``. ``chimera cortex --set-password`` stores the operator's
password (scrypt hash, data_dir/cortex.password, mode 0600): without one the cortex is
read-only, with one a browser session commands only after the operator logs in.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path

from chimera_core.config import default_config_path, load_config
from chimera_core.errors import ChimeraError

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "127.0.0.1"


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chimera cortex", description="the Streamlit cortex")
    p.add_argument(
        "--config",
        default=default_config_path(),
        help="TOML config (default: ./chimera.toml if present)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default 8501)")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="bind address (default 127.0.0.1)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --address")
    p.add_argument("--env-file", default=".env", help="file with CHIMERA_* variables")
    p.add_argument("--refresh-s", type=float, default=2.0, help="seconds between live page updates")
    p.add_argument(
        "--set-password",
        action="store_true",
        help="set the operator password the browser asks before any command (prompted; "
        "read from stdin when it is not a terminal), then exit",
    )
    return p


def set_password(args: argparse.Namespace) -> int:
    """Prompt for (or read from stdin) the operator password and store its hash."""
    import getpass

    from cortex.operator_login import hash_password, write_password_hash

    try:
        cfg = load_config(args.config)
        if sys.stdin.isatty():
            password = getpass.getpass("operator password: ")
            if getpass.getpass("again: ") != password:
                print("chimera cortex: the two passwords differ; nothing changed", file=sys.stderr)
                return 2
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        path = write_password_hash(Path(cfg.data_dir), hash_password(password))
    except ChimeraError as exc:
        print(f"chimera cortex: {exc}", file=sys.stderr)
        return 2
    print(
        f"chimera cortex: operator password set ({path}, mode 0600); a running cortex uses "
        "it from the next login",
        file=sys.stderr,
    )
    return 0


def command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        args.address,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.runOnSave",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
        "--theme.base",
        "light",
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.set_password:
        return set_password(args)
    if not is_loopback(args.address) and not args.allow_remote:
        print(
            f"chimera cortex: refusing to bind {args.address}: the cortex can HALT the engine "
            "and shows positions; use 127.0.0.1 or pass --allow-remote",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = load_config(args.config)  # fail here with the key's name, not inside Streamlit
        from chimera_core.config import load_env
        from cortex.operator_login import load_password_hash

        # A malformed password hash: say so now, not at the operator's first login.
        load_password_hash(load_env(args.env_file), Path(cfg.data_dir))
    except ChimeraError as exc:
        print(f"chimera cortex: {exc}", file=sys.stderr)
        return 2
    env = {
        **os.environ,
        "CHIMERA_CORTEX_CONFIG": str(Path(args.config).resolve()) if args.config else "",
        "CHIMERA_CORTEX_ENV_FILE": args.env_file,
        "CHIMERA_CORTEX_REFRESH_S": str(args.refresh_s),
    }
    repo = str(APP.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    print(f"cortex: http://{args.address}:{args.port}/", file=sys.stderr, flush=True)
    proc = subprocess.Popen(command(args), env=env)

    # Ctrl-C, systemd and the demo stop us with SIGINT/SIGTERM: pass it on and wait for
    # Streamlit to exit. Installed explicitly: a shell's background job ignores SIGINT.
    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code


if __name__ == "__main__":
    sys.exit(main())
