"""``chimera bot``: the operator's Telegram bot, a side process beside the engine.

It long-polls the Bot API (python-telegram-bot's ``Bot``) and turns commands into requests
on the engine's token-checked control channel (``ControlClient``), each logged with the
Telegram user who sent it. It never touches the hot path: it is one more control client.

Who and what is served, in the order every update is checked:

1. **Replays.** An update whose ``update_id`` is not above the highest one handled is
   ignored (``bot_update_replayed``). The high-water mark is written to
   ``data_dir/bot/state.json`` before the update is acted on, so a restart never acts on
   an update twice (at most once: a crash mid-command loses that command, it never
   repeats it).
2. **The allow-list.** Only Telegram *user* ids in ``[bot] allowed_users`` are served
   (a chat id would let anyone in a group in). Anyone else gets no answer; the refusal is
   logged as ``bot_refused`` and appended to ``data_dir/bot/refusals.jsonl`` (one JSON
   object a line: ``ts``, ``user_id``, ``username``, ``chat_id``, ``text``), which the
   notify side turns into an alert.
3. **Age.** A message older than ``[bot] stale_after_s`` (Telegram's own date) is ignored
   (``bot_update_stale``): a command typed an hour ago in a tunnel is not today's intent.
   A button press carries no date of its own; its confirmation expires instead.

Safer is one tap (``/pause``, ``/halt``, ``/reject``); what can add risk (``/resume``,
``/flatten``, ``/approve`` and the Approve button) asks for a confirmation tap by the same
user within ``confirm_timeout_s`` and, with ``[bot] otp = true``, a one-time code
(``/otp 123456``, TOTP from CHIMERA_BOT_OTP_SECRET; a code is accepted once).

New pending approvals (read through ``ApprovalsView``) are announced to every allow-listed
user with Approve / Reject buttons.

The bot token (CHIMERA_TELEGRAM_BOT_TOKEN) comes from the environment or .env only, and is
registered with the log redactor; httpx's request log (which prints the URL, token
included) is kept below INFO.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from chimera_core.commands import Command
from chimera_core.config import BOT_OTP_ENV, BOT_TOKEN_ENV, Config
from chimera_core.errors import ChimeraError, ConfigError

log = structlog.get_logger(__name__)

STATE_FILE = "state.json"
REFUSALS_FILE = "refusals.jsonl"
BOT_DIR = "bot"
# Callback data prefixes (Telegram allows 64 bytes; an approval id is 24 characters).
CB_APPROVE = "ap:"
CB_REJECT = "rj:"
CB_CONFIRM = "cf:"
CB_CANCEL = "cx:"
HELP = (
    "/status /positions /pnl /daily /approvals\n"
    "/pause /halt (one tap)\n"
    "/resume /flatten /approve ID (confirm"
    "{otp})\n"
    "/reject ID"
)
# One tap: these only make things safer.
SAFE = {"pause": Command.PAUSE, "halt": Command.HALT}
# Confirmation (and a code where configured): these can add risk.
RISKY = {"resume": Command.RESUME, "flatten": Command.FLATTEN, "approve": Command.APPROVE}
_ANNOUNCED_KEPT = 1000  # approval ids remembered as announced (the queue keeps them all)
# Wrong codes before the waiting command is dropped (6 digits, 3 valid at a time: three
# guesses succeed one time in ~110,000).
MAX_WRONG_CODES = 3
MAX_ANNOUNCED_PER_POLL = 3  # approvals sent with buttons per poll; the rest in one line


class BotError(ChimeraError):
    """The bot cannot start: no token, nobody allow-listed, no OTP secret, bad API URL."""


@dataclass(frozen=True)
class Waiting:
    """An intent or a proposal waiting for a human: its id and how it reads in a chat."""

    id: str
    text: str


@dataclass
class Confirmation:
    """A risky command waiting for its requester's tap (and code)."""

    key: str
    user_id: int
    chat_id: int
    command: Command
    arg: str
    expires: float  # wall clock
    tapped: bool = False  # confirmed; with OTP, the code is next
    wrong_codes: int = 0
    prompt: Any = None  # the approval prompt (a Message) whose button asked for it


class BotState:
    """The highest update id handled and the approvals already announced, on disk."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self.last_update_id = 0
        self.announced: list[str] = []
        if self.path.is_file():
            try:
                raw = orjson.loads(self.path.read_bytes())
                self.last_update_id = int(raw.get("last_update_id", 0))
                self.announced = [str(a) for a in raw.get("announced", [])]
            except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
                raise BotError(
                    f"{self.path} is not the bot's state ({exc}); move it aside (updates "
                    "Telegram still holds would then be handled again)"
                ) from None

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(
            orjson.dumps(
                {
                    "last_update_id": self.last_update_id,
                    "announced": self.announced[-_ANNOUNCED_KEPT:],
                }
            )
        )
        os.replace(tmp, self.path)


class ControlSender:
    """The control channel from the bot's loop: ControlClient is synchronous, so each
    request runs in a worker thread (the client is thread-safe)."""

    def __init__(self, endpoint: str, token: str, timeout_s: float) -> None:
        from chimera_core.control import ControlClient

        self._client = ControlClient(endpoint, token, timeout_s)

    async def send(self, command: Command, arg: str = "", by: str = "") -> dict[str, Any]:
        return await asyncio.to_thread(self._client.request, command.value, arg, by=by)

    def close(self) -> None:
        self._client.close()


class OperatorBot:
    """The bot's decisions: one ``handle(update)`` per Telegram update, in order."""

    def __init__(
        self,
        cfg: Config,
        bot: Any,  # telegram.Bot
        control: ControlSender,
        *,
        otp_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.bot = bot
        self.control = control
        self.allowed = frozenset(cfg.bot.allowed_users)
        self.clock = clock
        self.directory = Path(cfg.data_dir) / BOT_DIR
        from chimera_core.sqlite_files import private_dir

        private_dir(self.directory)
        self.state = BotState(self.directory)
        self.confirmations: dict[str, Confirmation] = {}
        self._otp = None
        if cfg.bot.otp:
            import pyotp

            if not otp_secret:
                raise BotError(
                    f"[bot] otp = true but {BOT_OTP_ENV} is not set: put a base32 secret in "
                    "the environment or .env (python -c 'import pyotp; "
                    "print(pyotp.random_base32())') and add it to your authenticator app"
                )
            self._otp = pyotp.TOTP(otp_secret)
        self._used_codes: dict[str, float] = {}
        self.approvals_path = Path(cfg.data_dir) / cfg.mode / "approvals.db"

    # ---- the gate -----------------------------------------------------------------------

    async def handle(self, update: Any) -> None:
        """Check one update (replay, allow-list, age) and serve it. Never raises."""
        uid = int(update.update_id)
        if uid <= self.state.last_update_id:
            log.warning("bot_update_replayed", update_id=uid, last=self.state.last_update_id)
            return
        self.state.last_update_id = uid
        self.state.save()  # before acting: a restart never acts twice
        user = update.effective_user
        chat = update.effective_chat
        if user is None or chat is None:
            return
        text = ""
        if update.callback_query is not None:
            text = update.callback_query.data or ""
        elif update.effective_message is not None:
            text = update.effective_message.text or ""
        if int(user.id) not in self.allowed:
            self._refuse(user, chat, text)
            return
        message = update.message
        if message is not None and message.date is not None:
            age = self.clock() - message.date.timestamp()
            if age > self.cfg.bot.stale_after_s:
                log.warning("bot_update_stale", update_id=uid, user_id=user.id, age_s=round(age, 1))
                return
        try:
            if update.callback_query is not None:
                await self._on_button(update.callback_query, int(user.id), int(chat.id))
            elif message is not None and text.startswith("/"):
                await self._on_command(text, int(user.id), int(chat.id))
        except Exception as exc:
            # The bot must survive a bad update or a dead engine; the operator sees why.
            log.exception("bot_update_failed", update_id=uid, user_id=user.id)
            await self._say(int(chat.id), f"failed: {type(exc).__name__}: {exc}")

    def _refuse(self, user: Any, chat: Any, text: str) -> None:
        record = {
            "event": "bot_refused",
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())),
            "user_id": int(user.id),
            "username": str(user.username or ""),
            "chat_id": int(chat.id),
            "text": text[:64],
        }
        log.warning("bot_refused", **{k: v for k, v in record.items() if k != "event"})
        path = self.directory / REFUSALS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as f:
            f.write(orjson.dumps(record) + b"\n")

    # ---- commands -----------------------------------------------------------------------

    async def _on_command(self, text: str, user_id: int, chat_id: int) -> None:
        word, _, rest = text.strip().partition(" ")
        name = word[1:].split("@", 1)[0].lower()
        arg = rest.strip()
        if name in ("start", "help"):
            await self._say(chat_id, HELP.format(otp=" + code" if self._otp else ""))
        elif name == "status":
            await self._say(chat_id, _format_status(await self._send(Command.STATUS, "", user_id)))
        elif name == "positions":
            await self._say(chat_id, self._positions_text())
        elif name in ("pnl", "daily"):
            await self._say(chat_id, await asyncio.to_thread(self._report_text, name))
        elif name == "approvals":
            await self._list_approvals(chat_id)
        elif name in SAFE:
            reply = await self._send(SAFE[name], f"telegram:{user_id}", user_id)
            await self._say(chat_id, _format_reply(name, reply))
        elif name == "reject":
            await self._decide_reject(arg, user_id, chat_id)
        elif name in RISKY:
            if name == "approve" and not arg:
                await self._say(chat_id, "usage: /approve ID (ids: /approvals)")
                return
            command = RISKY[name]
            await self._ask(
                chat_id, user_id, command, arg if name == "approve" else f"telegram:{user_id}"
            )
        elif name == "otp":
            await self._on_code(arg, user_id, chat_id)
        else:
            await self._say(chat_id, f"unknown command /{name}\n" + HELP.format(otp=""))

    async def _send(self, command: Command, arg: str, user_id: int) -> dict[str, Any]:
        # The engine records who asked with the command and on a decided approval.
        reply = await self.control.send(command, arg, by=f"telegram:{user_id}")
        emit = log.info if command is Command.STATUS else log.warning
        emit("bot_command", command=command.value, arg=arg, user_id=user_id,
             ok=bool(reply.get("ok")), error=reply.get("error"))  # fmt: skip
        return reply

    async def _decide_reject(
        self, approval_id: str, user_id: int, chat_id: int, prompt: Any = None
    ) -> None:
        if not approval_id:
            await self._say(chat_id, "usage: /reject ID (ids: /approvals)")
            return
        reply = await self._send(Command.REJECT, approval_id, user_id)
        await self._say(chat_id, _format_reply(f"reject {approval_id}", reply))
        await self._close_prompt(prompt, reply, user_id)

    async def _close_prompt(self, prompt: Any, reply: dict[str, Any], user_id: int) -> None:
        """The approval prompt says how it was decided and loses its buttons, so a later tap
        on a stale button cannot be mistaken for a live one."""
        from telegram.error import TelegramError

        status = (reply.get("result") or {}).get("status") if reply.get("ok") else None
        if prompt is None or status is None:
            return
        try:
            await self.bot.edit_message_text(
                text=f"{prompt.text or ''}\n→ {status} by {user_id}",
                chat_id=prompt.chat_id,
                message_id=prompt.message_id,
            )
        except TelegramError as exc:
            log.warning("bot_edit_failed", message_id=prompt.message_id, error=str(exc))

    # ---- confirmations ------------------------------------------------------------------

    async def _ask(
        self, chat_id: int, user_id: int, command: Command, arg: str, prompt: Any = None
    ) -> None:
        self._expire()
        key = secrets.token_hex(8)
        expires = self.clock() + self.cfg.bot.confirm_timeout_s
        self.confirmations[key] = Confirmation(
            key, user_id, chat_id, command, arg, expires, prompt=prompt
        )
        what = f"{command.value} {arg}" if command is Command.APPROVE else command.value
        steps = "tap Confirm, then send /otp CODE" if self._otp else "tap Confirm"
        log.info("bot_confirmation_asked", command=command.value, arg=arg, user_id=user_id)
        await self._say(
            chat_id,
            f"{what}: this can add risk. {steps} within {self.cfg.bot.confirm_timeout_s:g} s.",
            buttons=[("Confirm", CB_CONFIRM + key), ("Cancel", CB_CANCEL + key)],
        )

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, c in self.confirmations.items() if c.expires < now]:
            del self.confirmations[key]

    async def _on_button(self, query: Any, user_id: int, chat_id: int) -> None:
        data = query.data or ""
        await self.bot.answer_callback_query(query.id)
        if data.startswith(CB_APPROVE):
            approval_id = data[len(CB_APPROVE) :]
            await self._ask(chat_id, user_id, Command.APPROVE, approval_id, query.message)
        elif data.startswith(CB_REJECT):
            await self._decide_reject(data[len(CB_REJECT) :], user_id, chat_id, query.message)
        elif data.startswith((CB_CONFIRM, CB_CANCEL)):
            self._expire()
            key = data[3:]
            c = self.confirmations.get(key)
            if c is None or c.user_id != user_id:
                # Expired, already used, or someone else's: nothing happens.
                await self._say(chat_id, "that confirmation has expired or is not yours; ask again")
                return
            if data.startswith(CB_CANCEL):
                del self.confirmations[key]
                await self._say(chat_id, f"{c.command.value}: cancelled")
            elif self._otp is not None:
                c.tapped = True
                await self._say(
                    chat_id, f"{c.command.value}: send /otp CODE from your authenticator"
                )
            else:
                del self.confirmations[key]
                await self._execute(c)

    async def _on_code(self, code: str, user_id: int, chat_id: int) -> None:
        self._expire()
        waiting = [c for c in self.confirmations.values() if c.user_id == user_id and c.tapped]
        if self._otp is None or not waiting:
            await self._say(chat_id, "no confirmed command is waiting for a code")
            return
        now = self.clock()
        self._used_codes = {k: t for k, t in self._used_codes.items() if t > now - 120}
        code = code.strip()
        c = waiting[-1]
        if code in self._used_codes or not self._otp.verify(code, for_time=now, valid_window=1):
            c.wrong_codes += 1
            log.warning("bot_otp_refused", user_id=user_id, reused=code in self._used_codes,
                        command=c.command.value, wrong_codes=c.wrong_codes)  # fmt: skip
            if c.wrong_codes >= MAX_WRONG_CODES:
                del self.confirmations[c.key]
                await self._say(chat_id, f"{c.command.value}: too many wrong codes; cancelled")
            else:
                await self._say(chat_id, "wrong or already used code; the command is still waiting")
            return
        self._used_codes[code] = now
        del self.confirmations[c.key]
        await self._execute(c)

    async def _execute(self, c: Confirmation) -> None:
        reply = await self._send(c.command, c.arg, c.user_id)
        label = f"{c.command.value} {c.arg}" if c.command is Command.APPROVE else c.command.value
        await self._say(c.chat_id, _format_reply(label, reply))
        await self._close_prompt(c.prompt, reply, c.user_id)

    # ---- approvals ----------------------------------------------------------------------

    def _pending(self) -> list[Waiting]:
        """What waits for a human: proposals (genome changes; rare) first, then intents."""
        from chimera_governance.approvals import PENDING, ApprovalsView, proposals

        if not self.approvals_path.is_file():
            return []
        out = [
            Waiting(str(p["proposal_id"]), _proposal_text(p))
            for p in proposals(self.approvals_path)
            if p["status"] == PENDING
        ]
        with ApprovalsView(self.approvals_path) as view:
            out += [Waiting(r.approval_id, _approval_text(r)) for r in view.pending()]
        return out

    async def _list_approvals(self, chat_id: int) -> None:
        pending = await asyncio.to_thread(self._pending)
        if not pending:
            await self._say(chat_id, "no approvals waiting")
            return
        for w in pending[:10]:
            await self._say(chat_id, w.text, buttons=_approval_buttons(w.id))
        if len(pending) > 10:
            await self._say(chat_id, f"and {len(pending) - 10} more (oldest first; /approve ID)")

    async def announce_approvals(self) -> None:
        """Send each new pending approval to every allow-listed user, once."""
        try:
            pending = await asyncio.to_thread(self._pending)
        except ChimeraError as exc:
            log.warning("bot_approvals_unreadable", path=str(self.approvals_path), error=str(exc))
            return
        known = set(self.state.announced)
        new = [r for r in pending if r.id not in known]
        # A burst of intents (a signal that fires on every tick) must not flood the chat:
        # the oldest few with buttons, then one line for the rest.
        for r in new[:MAX_ANNOUNCED_PER_POLL]:
            for user_id in sorted(self.allowed):
                # A private chat's id is its user's id.
                await self._say(user_id, r.text, buttons=_approval_buttons(r.id))
            log.info("bot_approval_announced", approval_id=r.id)
        rest = new[MAX_ANNOUNCED_PER_POLL:]
        if rest:
            for user_id in sorted(self.allowed):
                await self._say(user_id, f"and {len(rest)} more approvals waiting: /approvals")
            log.info("bot_approvals_summarised", count=len(rest))
        if new:
            self.state.announced.extend(r.id for r in new)
            self.state.save()

    # ---- read-only answers ----------------------------------------------------------------

    def _positions_text(self) -> str:
        from chimera_execution.journal_view import JournalReader, journal_path

        path = journal_path(self.cfg.data_dir, self.cfg.mode)
        if not path.is_file():
            return f"no {self.cfg.mode} journal yet"
        with JournalReader(path) as journal:
            rows = [p for p in journal.positions() if p.qty]
        if not rows:
            return "no open positions"
        return "\n".join(f"{p.token}: {p.qty:+d} @ {p.avg_price:.2f}" for p in rows)

    def _report_text(self, which: str) -> str:
        from tools.report import build_report, latest_day

        day = latest_day(self.cfg.data_dir, self.cfg.mode)
        # /pnl needs the journal only; the black box (vetoes, halts) is read for /daily.
        report = build_report(self.cfg.data_dir, self.cfg.mode, day, blackbox=which == "daily")
        if which == "daily":
            return report.short_text()
        return (
            f"{report.period}: net {report.net_pnl:,.2f} · realised {report.realized_pnl:,.2f}"
            f" · charges {report.charges:,.2f} · unrealised {report.unrealized_pnl:,.2f}"
        )

    # ---- sending ------------------------------------------------------------------------

    async def _say(
        self, chat_id: int, text: str, buttons: Iterable[tuple[str, str]] | None = None
    ) -> None:
        from telegram import InlineKeyboardButton, InlineKeyboardMarkup
        from telegram.error import TelegramError

        markup = None
        if buttons:
            markup = InlineKeyboardMarkup(
                [[InlineKeyboardButton(label, callback_data=data) for label, data in buttons]]
            )
        try:
            await self.bot.send_message(chat_id=chat_id, text=text[:4000], reply_markup=markup)
        except TelegramError as exc:
            log.warning("bot_send_failed", chat_id=chat_id, error=str(exc))

    # ---- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll updates and approvals until ``stop`` is set."""
        from telegram.error import InvalidToken, NetworkError

        announcer = asyncio.create_task(self._announce_loop(stop))
        offset = self.state.last_update_id + 1 if self.state.last_update_id else None
        backoff = 1.0
        timeout = self.cfg.bot.poll_timeout_s
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                poll = asyncio.ensure_future(
                    self.bot.get_updates(
                        offset=offset,
                        timeout=timeout,
                        allowed_updates=["message", "callback_query"],
                        read_timeout=timeout + 10,
                    )
                )
                await asyncio.wait((poll, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()
                    break
                try:
                    updates = poll.result()
                except InvalidToken:
                    raise
                except NetworkError as exc:
                    log.warning("bot_poll_failed", error=str(exc), retry_s=backoff)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                backoff = 1.0
                for update in updates:
                    offset = max(offset or 0, int(update.update_id) + 1)
                    await self.handle(update)
        finally:
            stopping.cancel()
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer

    async def _announce_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.announce_approvals()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.bot.approvals_poll_s)


# ---- text ---------------------------------------------------------------------------------


def _format_reply(what: str, reply: dict[str, Any]) -> str:
    if reply.get("ok"):
        return f"{what}: done\n" + orjson.dumps(reply.get("result", {})).decode()[:1500]
    error = reply.get("error") or (reply.get("result") or {}).get("error") or "not ok"
    return f"{what}: refused by the engine: {error}"


def _format_status(reply: dict[str, Any]) -> str:
    if not reply.get("ok"):
        return _format_reply("status", reply)
    s = reply.get("result", {})
    lines = [
        f"state {s.get('trading_state')} · halted {s.get('halted')} · paused {s.get('paused')}",
        f"realised P&L {s.get('realized_pnl')} · reconciled {s.get('reconciled')}",
    ]
    if s.get("exits_only"):
        lines.append(f"exits only: {s['exits_only']}")
    positions = s.get("positions") or {}
    lines.append("positions: " + (", ".join(f"{t} {q:+d}" for t, q in positions.items()) or "none"))
    return "\n".join(lines)


def _approval_text(r: Any) -> str:
    i = r.intent
    return (
        f"approval {r.approval_id}: {i.side.value} {i.qty} {i.token} @ {i.ref_price:.2f} "
        f"(₹{r.value:,.0f}, confidence {r.confidence:.2f}; {r.reason})"
    )


def _proposal_text(p: dict[str, Any]) -> str:
    payload = orjson.dumps(p.get("payload", {})).decode()[:300]
    return (
        f"proposal {p['proposal_id']}: {p.get('kind')} {payload} "
        f"({p.get('reason')}; by {p.get('proposed_by')})"
    )


def _approval_buttons(approval_id: str) -> list[tuple[str, str]]:
    return [("Approve", CB_APPROVE + approval_id), ("Reject", CB_REJECT + approval_id)]


# ---- the command --------------------------------------------------------------------------


def _quiet_http_logs() -> None:
    # httpx logs every request URL at INFO, and the Bot API URL holds the token.
    for name in ("httpx", "httpcore", "telegram"):
        logging.getLogger(name).setLevel(logging.WARNING)


async def _serve(cfg: Config, token: str, control: ControlSender, otp_secret: str | None) -> int:
    from telegram import Bot
    from telegram.error import InvalidToken, TelegramError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bot = Bot(token, base_url=cfg.bot.api_url)
    operator = OperatorBot(cfg, bot, control, otp_secret=otp_secret)
    try:
        await bot.initialize()  # getMe: a wrong token fails here, not at the first command
    except InvalidToken:
        raise BotError(
            f"the Bot API refused the token in {BOT_TOKEN_ENV} (ask @BotFather for the bot's token)"
        ) from None
    except TelegramError as exc:
        raise BotError(f"cannot reach the Bot API at {cfg.bot.api_url}: {exc}") from None
    log.info("bot_started", bot=bot.username, users=len(operator.allowed), mode=cfg.mode,
             otp=cfg.bot.otp)  # fmt: skip
    try:
        await operator.run(stop)
    finally:
        with contextlib.suppress(TelegramError):
            await bot.shutdown()
        log.info("bot_stopped", last_update_id=operator.state.last_update_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    from chimera_core.config import default_config_path, load_config, load_env, secret_values
    from chimera_core.control import read_token
    from chimera_core.logging import configure_logging

    parser = argparse.ArgumentParser(prog="chimera bot", description="the operator's Telegram bot")
    parser.add_argument("--config", default=default_config_path(), help="TOML config ([bot])")
    parser.add_argument("--env-file", default=".env", help="file with CHIMERA_* secrets")
    args = parser.parse_args(argv)
    env = load_env(args.env_file)
    configure_logging("INFO", secret_values(env))
    _quiet_http_logs()
    cfg = load_config(args.config)
    configure_logging(cfg.logging.level)
    _quiet_http_logs()
    token = env.get(BOT_TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"{BOT_TOKEN_ENV} is not set: put the token @BotFather gave you in the environment "
            "or .env (never in chimera.toml)"
        )
    if not cfg.bot.allowed_users:
        raise ConfigError(
            "[bot] allowed_users is empty: the bot would serve nobody. Add your Telegram user "
            "id (a number; @userinfobot tells you yours), e.g. allowed_users = [123456789]"
        )
    control_token = read_token(env, Path(cfg.data_dir))
    otp_secret = env.get(BOT_OTP_ENV, "").strip() or None
    configure_logging(cfg.logging.level, [token, control_token, *(s for s in [otp_secret] if s)])
    control = ControlSender(cfg.control.endpoint, control_token, cfg.control.timeout_s)
    try:
        return asyncio.run(_serve(cfg, token, control, otp_secret))
    finally:
        control.close()


if __name__ == "__main__":
    sys.exit(main())
