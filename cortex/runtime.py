"""The cortex's long-lived pieces, one per Streamlit server process: config, the telemetry
listener thread, the control client (only with a control token), the operator logins and
the instrument names of the session in view.

The launcher passes the config path in ``CHIMERA_CORTEX_CONFIG``. Without a control token
(``CHIMERA_CONTROL_TOKEN`` or ``data_dir/control.token``) the cortex is read-only; with
one, a browser session may send commands only after the operator logs in with the
password set by ``chimera cortex --set-password`` (none set: read-only too).
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
from cortex.names import SessionNames
from cortex.operator_login import OperatorLogins, load_password_hash

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
    logins: OperatorLogins
    names: SessionNames  # token → instrument name, for the session in view

    @property
    def data_dir(self) -> Path:
        return Path(self.cfg.data_dir)

    @property
    def mode_dir(self) -> Path:
        return Path(self.cfg.data_dir) / self.cfg.mode

    def can_control(self) -> str:
        """ "" when a logged-in operator may send commands, else why not (for the page)."""
        if self.control is None:
            return "no control token. " + self.read_only_reason
        if not self.logins.configured():
            return (
                "no operator password is set: run `chimera cortex --set-password` "
                "and log in here to send commands"
            )
        return ""

    def command(self, command: str, arg: str, login_id: str | None) -> dict[str, Any]:
        """Send one operator command for a logged-in session; the reply, or
        ``{"ok": False, "error"}``. The login is checked here, not only by hiding buttons."""
        why = self.can_control()
        if why or self.control is None:
            return {"ok": False, "error": f"read-only cortex: {why}"}
        if not self.logins.valid(login_id):
            log.warning("cortex_command_refused", command=command, reason="not logged in")
            return {"ok": False, "error": "log in as the operator first"}
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
        control = ControlClient(cfg.control.endpoint, token, cfg.control.timeout_s, by="cortex")
    except ChimeraError as exc:
        reason = str(exc)
        log.warning("cortex_read_only", reason=reason)
    refresh_s = float(env.get(REFRESH_ENV, "2") or 2)
    data_dir = Path(cfg.data_dir)
    logins = OperatorLogins(lambda: load_password_hash(merged, data_dir))
    log.info(
        "cortex_started",
        telemetry=cfg.telemetry.endpoint,
        control=cfg.control.endpoint,
        read_only=control is None,
        operator_login=logins.configured(),
    )
    names = SessionNames(data_dir)
    return Runtime(cfg, config_path, listener, control, reason, refresh_s, logins, names)
