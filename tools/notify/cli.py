"""``chimera notify``: run the alert process beside ``chimera live`` (systemd:
chimera-notify.service). Channel URLs come from the environment or .env only."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import structlog

from chimera_core.config import default_config_path, load_config, load_env, secret_values
from chimera_core.control import TOKEN_ENV, read_token
from chimera_core.errors import ConfigError
from chimera_core.logging import configure_logging

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera notify",
        description="alerts from the engine's telemetry to apprise channels "
        "(CHIMERA_NOTIFY_URLS / CHIMERA_NOTIFY_URL_<NAME> in the environment or .env)",
    )
    p.add_argument("--config", default=default_config_path(), help="TOML config")
    p.add_argument("--env-file", default=".env", help="file with CHIMERA_* secrets")
    p.add_argument("--outbox", type=Path, help="outbox file (default data_dir/notify/outbox.db)")
    return p


def main(argv: list[str]) -> int:
    from tools.notify.channels import URL_ENV_PREFIX, URLS_ENV, load_channels
    from tools.notify.outbox import Outbox
    from tools.notify.service import Notifier, control_sender, run_notify

    args = build_parser().parse_args(argv)
    env = load_env(args.env_file)
    configure_logging("INFO", [*secret_values(env), env.get(TOKEN_ENV, "")])
    cfg = load_config(args.config)
    channels = load_channels(env)  # registers every URL's secrets with the redactor first
    configure_logging(cfg.logging.level)
    if not channels:
        raise ConfigError(
            f"no alert channel: set {URLS_ENV} (or {URL_ENV_PREFIX}<NAME>) to apprise URLs in "
            "the environment or .env, e.g. tgram://BOT_TOKEN/CHAT_ID or json://host/path"
        )
    unknown = sorted(set(cfg.notify.channels) - set(channels))
    if unknown:
        log.warning("notify_channel_without_url", channels=unknown,
                    fix=[URL_ENV_PREFIX + n.upper() for n in unknown])  # fmt: skip
    data_dir = Path(cfg.data_dir)
    outbox = Outbox(args.outbox or data_dir / "notify" / "outbox.db")
    control = control_sender(
        cfg.control.endpoint, lambda: read_token(env, data_dir), cfg.control.timeout_s
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        notifier = Notifier(
            cfg, channels, outbox, control, approvals_db=data_dir / cfg.mode / "approvals.db"
        )
        await run_notify(notifier, cfg.telemetry.endpoint, stop)

    try:
        asyncio.run(run())
    finally:
        outbox.close()
    return 0
