"""Real local stand-ins for alert channels: a webhook receiver (aiohttp on 127.0.0.1, the
target of apprise's json:// URLs) and an SMTP server (aiosmtpd, for mailto:// URLs)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller


@dataclass
class Received:
    title: str
    body: str
    # (file name, bytes) of each attachment (mail only)
    attachments: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class WebhookReceiver:
    """An aiohttp server on 127.0.0.1:``port`` in its own thread; ``start``/``stop`` it to
    play a channel that is down for a while. ``received`` keeps every JSON body in order."""

    port: int
    path: str = "/hook"
    received: list[Received] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        self.received.append(Received(str(body.get("title", "")), str(body.get("message", ""))))
        return web.Response(text="ok")

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post(self.path, self._handle)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "webhook receiver did not start"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None


class _Mailbox:
    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain", "html")) if msg.is_multipart() else msg
        assert part is not None
        files = [
            (str(a.get_filename()), bytes(a.get_payload(decode=True) or b""))
            for a in (msg.iter_attachments() if msg.is_multipart() else ())
        ]
        self.received.append(Received(str(msg["subject"]), str(part.get_content()).strip(), files))
        return "250 OK"


class SmtpServer:
    """aiosmtpd on 127.0.0.1:``port`` (its own thread); ``received`` in arrival order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._box = _Mailbox()
        self._controller = Controller(self._box, hostname="127.0.0.1", port=port)

    @property
    def received(self) -> list[Received]:
        return self._box.received

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
