"""The cortex's long-lived pieces, one per Streamlit server process: config, the telemetry
listener thread and (only with a control token) the control client.

The launcher passes the config path in ``CHIMERA_CORTEX_CONFIG``. Without a control token
(``CHIMERA_CONTROL_TOKEN`` or ``data_dir/control.token``) the cortex is read-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from chimera_core.config import Config, load_config, load_env
from chimera_core.control import ControlClient, ControlError, read_token
from chimera_core.errors import ChimeraError
from cortex.listener import TelemetryListener

log = structlog.get_logger(__name__)

CONFIG_ENV = "CHIMERA_CORTEX_CONFIG"
ENV_FILE_ENV = "CHIMERA_CORTEX_ENV_FILE"
REFRESH_ENV = "CHIMERA_CORTEX_REFRESH_S"


@dataclass
class Runtime:
    cfg: Config
    config_path: str | None
    listener: TelemetryListener
    control: ControlClient | None
    read_only_reason: str
    refresh_s: float

    @property
    def data_dir(self) -> Path:
        return Path(self.cfg.data_dir)

    @property
    def mode_dir(self) -> Path:
        return Path(self.cfg.data_dir) / self.cfg.mode

    def command(self, command: str, arg: str = "") -> dict[str, Any]:
        """Send one operator command; the reply, or ``{"ok": False, "error"}``."""
        if self.control is None:
            return {"ok": False, "error": f"read-only cortex: {self.read_only_reason}"}
        try:
            reply = self.control.request(command, arg)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        if command != "status":
            log.warning("cortex_command", command=command, arg=arg, ok=reply.get("ok"))
        return reply


def build_runtime(environ: dict[str, str] | None = None) -> Runtime:
    env = dict(os.environ if environ is None else environ)
    config_path = env.get(CONFIG_ENV) or None
    cfg = load_config(config_path)
    listener = TelemetryListener(cfg.telemetry.endpoint).start()
    merged = {**load_env(env.get(ENV_FILE_ENV, ".env")), **env}
    control: ControlClient | None = None
    reason = ""
    try:
        token = read_token(merged, Path(cfg.data_dir))
        control = ControlClient(cfg.control.endpoint, token, cfg.control.timeout_s)
    except ChimeraError as exc:
        reason = str(exc)
        log.warning("cortex_read_only", reason=reason)
    refresh_s = float(env.get(REFRESH_ENV, "2") or 2)
    log.info(
        "cortex_started",
        telemetry=cfg.telemetry.endpoint,
        control=cfg.control.endpoint,
        read_only=control is None,
    )
    return Runtime(cfg, config_path, listener, control, reason, refresh_s)
