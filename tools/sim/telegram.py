"""A local stand-in for the part of the Telegram Bot API ``chimera bot`` uses: getMe,
getUpdates (long poll, offsets), sendMessage, answerCallbackQuery, editMessageText,
deleteWebhook. An aiohttp server on 127.0.0.1 in a thread of its own, so a test can drive
a real ``chimera bot`` process: it queues updates (a user's message, a button press, a
replay of an update already delivered) and reads what the bot sent."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

BOT_USER = {
    "id": 700000001,
    "is_bot": True,
    "first_name": "Chimera",
    "username": "chimera_test_bot",
}
_INT_FIELDS = ("offset", "limit", "timeout", "chat_id", "message_id")
_JSON_FIELDS = ("reply_markup", "allowed_updates")


class TelegramStandIn:
    def __init__(self, token: str) -> None:
        self.token = token
        self.sent: list[dict[str, Any]] = []  # sendMessage / editMessageText calls
        self.answered: list[str] = []  # callback query ids answered
        self.calls: list[str] = []  # method names, in order
        self.unauthorized = 0
        self._updates: list[dict[str, Any]] = []
        self._replays: list[dict[str, Any]] = []
        self._next_update = 1000
        self._next_message = 1
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> TelegramStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    # ---- what a test does -----------------------------------------------------------------

    def _user(self, user_id: int) -> dict[str, Any]:
        return {
            "id": user_id,
            "is_bot": False,
            "first_name": f"u{user_id}",
            "username": f"u{user_id}",
        }

    def push_message(self, user_id: int, text: str, *, age_s: float = 0.0) -> dict[str, Any]:
        """A user's text message in their private chat with the bot (``age_s`` old)."""
        with self._lock:
            mid = self._next_message
            self._next_message += 1
        message: dict[str, Any] = {
            "message_id": mid,
            "date": int(time.time() - age_s),
            "chat": {"id": user_id, "type": "private", "first_name": f"u{user_id}"},
            "from": self._user(user_id),
            "text": text,
        }
        if text.startswith("/"):
            word = text.split(" ", 1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(word)}]
        return self._push({"message": message})

    def push_button(self, user_id: int, data: str, message: dict[str, Any]) -> dict[str, Any]:
        """A tap on an inline button of ``message`` (one the bot sent)."""
        query = {
            "id": f"cbq-{self._next_update}",
            "from": self._user(user_id),
            "chat_instance": f"ci-{user_id}",
            "data": data,
            "message": message,
        }
        return self._push({"callback_query": query})

    def replay(self, update: dict[str, Any]) -> None:
        """Deliver ``update`` again on the next getUpdates, whatever its offset."""
        with self._lock:
            self._replays.append(update)
        self._loop.call_soon_threadsafe(self._wake_up)

    def _push(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            update = {"update_id": self._next_update, **body}
            self._next_update += 1
            self._updates.append(update)
        self._loop.call_soon_threadsafe(self._wake_up)
        return update

    def _wake_up(self) -> None:
        assert self._wake is not None
        self._wake.set()

    def messages_to(self, chat_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.sent if m.get("chat", {}).get("id") == chat_id]

    def wait_for(
        self, chat_id: int, predicate: Callable[[dict[str, Any]], bool], after: int = 0,
        timeout: float = 30.0,
    ) -> dict[str, Any]:  # fmt: skip
        """The first message to ``chat_id`` (its index >= ``after``) ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages_to(chat_id)[after:]:
                if predicate(m):
                    return m
            if time.monotonic() > deadline:
                texts = [m.get("text") for m in self.messages_to(chat_id)][-10:]
                raise AssertionError(
                    f"no matching message to {chat_id} in {timeout} s; the last: {texts}"
                )
            time.sleep(0.05)

    # ---- the Bot API ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls.append(method)
        if request.match_info["token"] != self.token:
            self.unauthorized += 1
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        params = await self._params(request)
        if method == "getMe":
            return _ok(BOT_USER)
        if method == "deleteWebhook":
            return _ok(True)
        if method == "getUpdates":
            return _ok(await self._get_updates(params))
        if method == "sendMessage":
            return _ok(self._record(params, new=True))
        if method == "editMessageText":
            return _ok(self._record(params, new=False))
        if method == "answerCallbackQuery":
            self.answered.append(str(params.get("callback_query_id")))
            return _ok(True)
        return web.json_response(
            {"ok": False, "error_code": 404, "description": f"Not Found: method {method}"},
            status=404,
        )

    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            raw: dict[str, Any] = await request.json()
        else:
            raw = dict(await request.post())
        out: dict[str, Any] = {}
        for k, v in raw.items():
            if k in _INT_FIELDS and isinstance(v, str):
                try:
                    out[k] = int(v)
                except ValueError:
                    out[k] = v
            elif k in _JSON_FIELDS and isinstance(v, str):
                out[k] = json.loads(v)
            else:
                out[k] = v
        return out

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        assert self._wake is not None
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 2.0)
        while True:
            with self._lock:
                replays, self._replays = self._replays, []
                fresh = [u for u in self._updates if u["update_id"] >= offset]
            if replays or fresh:
                return replays + fresh
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return []

    def _record(self, params: dict[str, Any], new: bool) -> dict[str, Any]:
        with self._lock:
            mid = self._next_message if new else int(params.get("message_id") or 0)
            if new:
                self._next_message += 1
            message: dict[str, Any] = {
                "message_id": mid,
                "date": int(time.time()),
                "chat": {"id": int(params["chat_id"]), "type": "private"},
                "from": BOT_USER,
                "text": str(params.get("text", "")),
            }
            if params.get("reply_markup"):
                message["reply_markup"] = params["reply_markup"]
            self.sent.append(message)
        return message


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def buttons(message: dict[str, Any]) -> list[str]:
    """The callback data of a message's inline buttons."""
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return [b.get("callback_data", "") for row in rows for b in row]
