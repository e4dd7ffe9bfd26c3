"""Channels: apprise URLs from the environment (or .env), never from the TOML.

``CHIMERA_NOTIFY_URLS`` (space or comma separated) is the channel named ``default``;
``CHIMERA_NOTIFY_URL_<NAME>`` is the channel ``<name>`` ([notify.channels.<name>] filters
it). A URL carries its channel's secret (a bot token, a password, a webhook path), so every
URL and its secret parts are given to the log redactor before anything logs, and a channel
is only ever named by its name or apprise's privacy form of its URL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise
import structlog

from chimera_core.config import is_loopback_url
from chimera_core.errors import ConfigError
from chimera_core.logging import MIN_SCRUBBED_LEN, redactor

log = structlog.get_logger(__name__)

URLS_ENV = "CHIMERA_NOTIFY_URLS"
URL_ENV_PREFIX = "CHIMERA_NOTIFY_URL_"
DEFAULT_CHANNEL = "default"
_NOTIFY_TYPE = {
    "info": apprise.NotifyType.INFO,
    "warning": apprise.NotifyType.WARNING,
    "critical": apprise.NotifyType.FAILURE,
}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def channel_urls(env: Mapping[str, str]) -> dict[str, list[str]]:
    """{channel name: its URLs} from ``env``; ConfigError names the variable (never the URL)."""
    out: dict[str, list[str]] = {}
    if env.get(URLS_ENV, "").strip():
        out[DEFAULT_CHANNEL] = [u for u in re.split(r"[\s,]+", env[URLS_ENV]) if u]
    for key, value in sorted(env.items()):
        if not key.startswith(URL_ENV_PREFIX) or not value.strip():
            continue
        name = key.removeprefix(URL_ENV_PREFIX).lower()
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{key}: a channel name is 1-32 letters, digits or _ starting with a letter "
                f"(e.g. {URL_ENV_PREFIX}OPS)"
            )
        out.setdefault(name, []).extend(u for u in re.split(r"[\s,]+", value) if u)
    return out


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that may be secret: the URL itself, user and password, a host
    that is not a host name (a Telegram bot token), path segments and query values."""
    found = [url]
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return found
    userinfo, _, host = netloc.rpartition("@")
    if userinfo:
        found.append(userinfo)
        found.extend(unquote(x) for x in userinfo.split(":", 1))
    # A host that is no host name (no dot): a token in the host's place, as Telegram's
    # BOT_ID:SECRET is; the whole of it and each side of a colon.
    if host and "." not in host and not host.startswith(("localhost", "[")):
        found.append(unquote(host))
        found.extend(unquote(x) for x in host.split(":"))
    found.extend(unquote(seg) for seg in parts.path.split("/") if seg)
    found.extend(v for _, v in parse_qsl(parts.query) if v)
    return [s for s in found if len(s) >= MIN_SCRUBBED_LEN]


class Channel:
    """One named channel: an apprise object holding its URLs."""

    def __init__(self, name: str, urls: list[str], source: str) -> None:
        self.name = name
        self._apprise = apprise.Apprise()
        for i, url in enumerate(urls):
            redactor.add(url_secrets(url))
            if not self._apprise.add(url):
                raise ConfigError(
                    f"{source}: URL #{i + 1} of channel {name!r} is not one apprise knows "
                    "(see https://github.com/caronc/apprise/wiki for the URL forms)"
                )
        for server in self._apprise:
            # apprise spaces sends to one service 5.5 s apart, politeness towards public
            # APIs; a relay or webhook on this machine needs none (nor do the tests).
            if is_loopback_url(f"http://{getattr(server, 'host', '') or ''}/"):
                server.request_rate_per_sec = 0
        # What logs may show: apprise's privacy form (secrets elided), scrubbed again.
        self.display = ", ".join(str(s.url(privacy=True)) for s in self._apprise)  # type: ignore[no-untyped-call]

    async def send(self, title: str, body: str, severity: str = "info", attach: str = "") -> bool:
        """True when every URL of the channel took it. ``attach``: a file sent with it
        where the service takes attachments (email, Telegram, Slack, Discord, ...); the
        others get the text alone (which names the file), as does a file that is gone."""
        kind = _NOTIFY_TYPE.get(severity, apprise.NotifyType.INFO)
        files = apprise.AppriseAttachment(attach) if attach and Path(attach).is_file() else None
        return bool(
            await self._apprise.async_notify(body=body, title=title, notify_type=kind, attach=files)
        )


def load_channels(env: Mapping[str, str]) -> dict[str, Channel]:
    # apprise logs through the standard library, unredacted: keep it quiet, we log the
    # outcome ourselves.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
    urls = channel_urls(env)
    for values in urls.values():  # every secret known before the first object logs
        for url in values:
            redactor.add(url_secrets(url))
    return {
        name: Channel(
            name,
            values,
            URLS_ENV if name == DEFAULT_CHANNEL else URL_ENV_PREFIX + name.upper(),
        )
        for name, values in urls.items()
    }
