"""Angel One SmartAPI broker: the only module that knows Angel One's REST and order socket.

REST goes through smartapi-python's ``SmartConnect`` (blocking, so every call runs in
``asyncio.to_thread``); order events come from our own ``websockets`` client on
``cfg.order_ws_url`` (the SDK's ``SmartWebSocketOrderUpdate`` hard-codes its URL and gives
up after two reconnects), backed by an order-book poll every ``cfg.poll_interval_s`` while
orders are open, which recovers events the socket dropped.

Choices, and why:
- SDK import side effects (reference §10): importing ``SmartApi`` calls
  https://api.ipify.org with no timeout, and every ``SmartConnect()`` creates
  ``./logs/<date>/app.log`` in the current directory. We import and construct it under a
  lock with ``requests.get`` swapped for one that fails at once (the SDK's ``finally``
  overwrites the looked-up IP with a constant anyway, so nothing is lost) and with the
  working directory switched to ``state_dir`` (default: ``$TMPDIR/chimera-angelone``; the
  live wiring should pass ``<data_dir>/angelone``), so it never hangs offline and never
  writes into a read-only cwd under systemd. The swap and chdir are process-wide for a few
  milliseconds, once per process / per connect.
- The SDK's logzero logger is disabled: on any error it logs the request headers
  (X-PrivateKey) and parameters (password, TOTP). Our own structlog events replace it.
- ordertag = ``"CH" + sha256(client_order_id)[:14]`` (16 chars; Angel refuses tags over
  20). The tag → (client_order_id, intent_id, purpose) map is appended to
  ``state_dir/ordertags.jsonl`` before each placeOrder, so a restarted adapter maps the
  order book's tags back. Orders whose tag we do not know (placed by hand) are reported in
  ``order_book()`` with ``client_order_id=""`` and never produce reports.
- ACK is sent the first time the order is seen live (open / open pending / trigger
  pending, or already filled); an RMS reject after a successful placeOrder yields only a
  REJECTED report.
- fill_id: ``"{orderid}-{fillid}"`` when the broker gives a fillid (trade numbers repeat
  across days; the order id carries the date), else ``"{orderid}-q{cumulative qty}"``.
  When the poll finds more filled quantity than we reported, it reads the trade book and
  reports each missing trade, so the ids match ``fills()``. Fill charges are 0.0: the
  live broker's charges come from the contract note.
- Reports are built on the event loop only, so the socket and the poll never race;
  a fill is reported only when the cumulative filled quantity grows, so a late or repeated
  event never produces a second report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyotp
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from chimera_core.config import AngelOneConfig
from chimera_core.contracts import (
    ExecKind,
    ExecutionReport,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Purpose,
    Side,
    Tick,
)
from chimera_core.errors import AuthError, BrokerError, BrokerReject, RateLimited
from chimera_core.sqlite_files import private_dir
from chimera_execution.brokers.base import ReportSink

log = structlog.get_logger(__name__)

RATE_LIMIT_TEXT = "exceeding access rate"
_AUTH_CODES = frozenset({"AG8001", "AG8002", "AG8003", "AG8004", "AB8050", "AB8051", "AB1010"})
_IST = timezone(timedelta(hours=5, minutes=30), "IST")
_EXCHANGE_TYPES = {"NSE": 1, "NFO": 2, "BSE": 3, "BFO": 4, "MCX": 5, "NCDEX": 7, "CDS": 13}
_LIVE = frozenset({"open", "open pending", "trigger pending", "modified", "modify pending"})
_PING_EVERY_S = 10.0  # what the SDK does
_SILENT_AFTER_S = 35.0  # no frame or pong for this long: the socket is dead, reconnect
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.25, 30.0
_SDK_LOCK = threading.Lock()
_sdk_modules: tuple[Any, Any] | None = None


def ordertag_for(client_order_id: str) -> str:
    """The ordertag sent with an order: deterministic, 16 chars (Angel allows <= 20)."""
    return "CH" + hashlib.sha256(client_order_id.encode()).hexdigest()[:14]


def _load_sdk(workdir: Path) -> tuple[Any, Any]:
    """Import SmartApi without its network call and with ./logs under ``workdir``."""
    global _sdk_modules
    with _SDK_LOCK:
        if _sdk_modules is not None:
            return _sdk_modules
        import logzero
        import requests

        # The SDK logs headers and parameters (API key, password, TOTP) on errors.
        logzero.logger.disabled = True

        def _no_lookup(*_args: object, **_kwargs: object) -> Any:
            raise requests.ConnectionError("chimera: SmartApi public-IP lookup skipped")

        real_get = requests.get
        requests.get = _no_lookup  # type: ignore[assignment]
        cwd = os.getcwd()
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)
        try:
            import SmartApi.smartConnect as smart_connect  # noqa: N813
            import SmartApi.smartExceptions as smart_exceptions  # noqa: N813
        finally:
            os.chdir(cwd)
            requests.get = real_get  # type: ignore[assignment]
        smart_connect.get = real_get  # the module kept a reference to our stub
        _sdk_modules = (smart_connect, smart_exceptions)
        return _sdk_modules


def new_smartconnect(api_key: str, root: str, timeout: float, workdir: Path) -> Any:
    """A ``SmartConnect`` built without side effects outside ``workdir``."""
    smart_connect, _ = _load_sdk(workdir)
    with _SDK_LOCK:
        cwd = os.getcwd()
        # The SDK was maybe imported for another adapter: this one's directory may be new.
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(workdir)  # SmartConnect() creates ./logs/<date>/app.log
        try:
            with warnings.catch_warnings():
                # It sets deprecated ssl.OP_NO_TLS* flags on a context it never uses.
                warnings.simplefilter("ignore", DeprecationWarning)
                return smart_connect.SmartConnect(api_key=api_key, root=root, timeout=timeout)
        finally:
            os.chdir(cwd)


RELOGIN_EVERY_S = 30.0


class _OrderSocket(ClientConnection):
    """Notes every pong, even unsolicited ones: Angel answers PING with payload b"\\x00",
    which websockets would otherwise discard as not matching its ping."""

    last_rx: float = 0.0

    def acknowledge_pings(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        super().acknowledge_pings(data)


@dataclass
class _Tracked:
    """What we know about one of our orders; reports are diffs against it."""

    orderid: str
    client_order_id: str
    intent_id: str
    purpose: Purpose
    token: str
    side: Side
    qty: int
    variety: str = "NORMAL"
    filled: int = 0
    avg_price: float = 0.0
    acked: bool = False
    terminal: bool = False
    fill_ids: set[str] = field(default_factory=set)


def _parse_ist(text: str) -> int:
    try:
        return (
            int(datetime.strptime(text, "%d-%b-%Y %H:%M:%S").replace(tzinfo=_IST).timestamp())
            * 1000
        )
    except (TypeError, ValueError):
        return 0


def _int(value: Any) -> int:
    try:
        return int(float(value or 0))
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _rows(response: Any) -> list[dict[str, Any]]:
    data = response.get("data") if isinstance(response, dict) else None
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


class AngelOneBroker:
    """Live broker over Angel One SmartAPI (REST via SmartConnect + the order socket)."""

    name = "angelone"

    def __init__(
        self,
        cfg: AngelOneConfig,
        api_key: str,
        client_code: str,
        password: str,
        totp_secret: str,
        on_report: ReportSink,
        clock: Callable[[], int] = time.monotonic_ns,
        *,
        state_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self._api_key = api_key
        self.client_code = client_code
        self._password = password
        self._totp_secret = totp_secret
        self._on_report = on_report
        self._clock = clock
        self.state_dir = (
            Path(state_dir)
            if state_dir is not None
            else Path(tempfile.gettempdir()) / "chimera-angelone"
        )
        self._tag_file = self.state_dir / "ordertags.jsonl"
        self._tags: dict[str, dict[str, str]] = {}  # ordertag -> our ids
        self._orders: dict[str, _Tracked] = {}  # broker orderid -> state
        self._by_client_id: dict[str, _Tracked] = {}
        self._api: Any = None
        self._exc: Any = None
        self._feed_token = ""
        self._jwt = ""
        self._relogin_at = -RELOGIN_EVERY_S
        self.on_login: Callable[[], None] | None = None  # called after every login
        self._closing = asyncio.Event()
        self._poll_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: ClientConnection | None = None
        self.stream_connected = asyncio.Event()
        self.stream_connects = 0
        self.polls = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        """Log in (TOTP), recover our open orders, start the order stream and the poll."""
        await asyncio.to_thread(self._load_tags)
        self._api = new_smartconnect(
            self._api_key, self.cfg.rest_url, self.cfg.request_timeout_s, self.state_dir
        )
        _, self._exc = _load_sdk(self.state_dir)
        await self._login()
        with contextlib.suppress(BrokerError):
            await self.order_book()  # adopts our open orders after a restart
        self._closing.clear()
        self._tasks = [
            asyncio.create_task(self._run_order_stream(), name="angelone-order-stream"),
            asyncio.create_task(self._run_poll(), name="angelone-order-poll"),
        ]

    async def _login(self) -> None:
        """generateSession with a fresh TOTP; the session's JWT and feed token replace any
        earlier ones (the order stream reconnects with them)."""
        try:
            totp = pyotp.TOTP(self._totp_secret).now()
        except Exception:  # binascii.Error / ValueError; never echo the secret
            raise AuthError(
                "the Angel One TOTP secret is not valid base32: set CHIMERA_TOTP_SECRET to the "
                "secret shown when TOTP was enabled for the account"
            ) from None
        try:
            session = await asyncio.to_thread(
                self._api.generateSession, self.client_code, self._password, totp
            )
        except Exception as exc:
            raise self._map_exception(exc, "login") from None
        if not isinstance(session, dict) or not session.get("status"):
            message = session.get("message", "") if isinstance(session, dict) else ""
            code = session.get("errorcode", "") if isinstance(session, dict) else ""
            raise AuthError(
                f"Angel One refused the login ({code} {message}) at {self.cfg.rest_url}: "
                "check CHIMERA_CLIENT_CODE, CHIMERA_PASSWORD and CHIMERA_TOTP_SECRET "
                "(and the machine's clock, which TOTP depends on)"
            )
        self._jwt = str(self._api.access_token or "")
        self._feed_token = str(self._api.getfeedToken() or "")
        log.info("angelone_logged_in", rest_url=self.cfg.rest_url)
        if self.on_login is not None:
            self.on_login()  # e.g. the market-data feed takes the new tokens

    async def _relogin(self, after: str) -> bool:
        """The session expired (Angel's tokens last a day): log in again, at most once per
        RELOGIN_EVERY_S, so a wrong password cannot turn into a login loop."""
        now = time.monotonic()
        if now - self._relogin_at < RELOGIN_EVERY_S:
            return False
        self._relogin_at = now
        log.warning("angelone_relogin", after=after)
        try:
            await self._login()
        except BrokerError as exc:
            log.error("angelone_relogin_failed", error=str(exc))
            return False
        return True

    async def close(self) -> None:
        """Stop the stream and the poll; open orders stay as they are."""
        self._closing.set()
        self._poll_now.set()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        log.info("angelone_closed")

    # -- error mapping -----------------------------------------------------------------------
    def _map_exception(self, exc: BaseException, what: str) -> BrokerError:
        text = str(exc)
        exc_mod = self._exc
        if RATE_LIMIT_TEXT in text.lower():
            return RateLimited(
                f"Angel One refused {what}: access rate exceeded (20/s, 500/min, 1000/h for "
                "order calls); wait and retry, and keep execution.throttle under the limits"
            )
        if exc_mod is not None and isinstance(exc, exc_mod.TokenException):
            return AuthError(f"Angel One session rejected during {what}: {text}; log in again")
        if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
            return BrokerError(
                f"Angel One {what} timed out after {self.cfg.request_timeout_s} s; the outcome "
                "is unknown: reconcile with the order book before retrying"
            )
        return BrokerError(
            f"Angel One {what} failed ({type(exc).__name__}: {text[:200]}); the outcome is "
            f"unknown: check {self.cfg.rest_url} is reachable and reconcile before retrying"
        )

    def _check(self, response: Any, what: str) -> dict[str, Any]:
        if not isinstance(response, dict):
            raise BrokerReject(f"Angel One {what}: no response body (expected JSON with status)")
        if response.get("status") is True or response.get("status") == "true":
            return response
        code = str(response.get("errorcode") or "")
        message = str(response.get("message") or "")
        if code in _AUTH_CODES:
            raise AuthError(f"Angel One {what}: {message} ({code}); log in again")
        raise BrokerReject(f"Angel One refused {what}: {message} ({code})")

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        if self._api is None:
            raise BrokerError(f"Angel One {what} before connect(): call connect() first")
        for attempt in (0, 1):
            try:
                response = await asyncio.to_thread(fn, *args)
                return self._check(response, what)
            except AuthError:
                # Refused for the session, not for the call: nothing was done, so one retry
                # after a fresh login is safe (placeOrder included).
                if attempt == 0 and await self._relogin(what):
                    continue
                raise
            except (BrokerError, BrokerReject):
                raise
            except Exception as exc:
                err = self._map_exception(exc, what)
                if isinstance(err, AuthError) and attempt == 0 and await self._relogin(what):
                    continue
                raise err from None
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- orders ------------------------------------------------------------------------------
    async def place(self, order: OrderRequest) -> str:
        """Send one order; returns Angel's orderid. ACK/fills/rejects follow as reports."""
        symbol = order.symbol or self.cfg.symbols.get(order.token, "")
        if not symbol:
            raise BrokerReject(
                f"no trading symbol for token {order.token}: add it to "
                f'execution.angelone.symbols (e.g. {order.token} = "SBIN-EQ")'
            )
        if order.qty <= 0:
            raise BrokerReject(f"order quantity must be > 0, got {order.qty}")
        stop = order.order_type in (OrderType.STOPLOSS_LIMIT, OrderType.STOPLOSS_MARKET)
        priced = order.order_type in (OrderType.LIMIT, OrderType.STOPLOSS_LIMIT)
        tag = ordertag_for(order.client_order_id)
        params = {
            "variety": "STOPLOSS" if stop else "NORMAL",
            "tradingsymbol": symbol,
            "symboltoken": order.token,
            "transactiontype": order.side.value,
            "exchange": self.cfg.exchange,
            "ordertype": order.order_type.value,
            "producttype": order.product,
            "duration": "DAY",
            "price": f"{order.limit_price:.2f}" if priced else "0",
            "triggerprice": f"{order.trigger_price:.2f}" if stop else "0",
            "squareoff": "0",
            "stoploss": "0",
            "quantity": str(order.qty),
            "ordertag": tag,
        }
        meta = {
            "tag": tag,
            "client_order_id": order.client_order_id,
            "intent_id": order.intent_id,
            "purpose": order.purpose.value,
            "token": order.token,
            "side": order.side.value,
            "qty": str(order.qty),
        }
        self._tags[tag] = meta  # before sending: an update may beat the REST answer

        def send() -> Any:
            self._append_tag(meta)  # write-ahead, so a restart can map the tag back
            return self._api.placeOrderFullResponse(dict(params))  # the SDK mutates it

        response = await self._call("placeOrder", send)
        orderid = str((response.get("data") or {}).get("orderid") or "")
        if not orderid:
            raise BrokerError(
                f"Angel One placeOrder answered success without an orderid: {response}"
            )
        tracked = self._orders.get(orderid) or self._track(orderid, meta)
        tracked.variety = params["variety"]
        log.info(
            "angelone_order_placed",
            client_order_id=order.client_order_id,
            orderid=orderid,
            ordertag=tag,
            ordertype=order.order_type.value,
            qty=order.qty,
        )
        return orderid

    async def cancel(self, client_order_id: str) -> None:
        """Cancel an open order; unknown or already terminal orders are a no-op."""
        tracked = self._by_client_id.get(client_order_id)
        if tracked is None or tracked.terminal:
            return
        try:
            await self._call("cancelOrder", self._api.cancelOrder, tracked.orderid, tracked.variety)
        except BrokerReject:
            await self.poll_once()  # it may have completed meanwhile: then nothing to do
            if tracked.terminal:
                return
            raise
        log.info("angelone_cancel_sent", client_order_id=client_order_id, orderid=tracked.orderid)

    async def order_book(self) -> list[Order]:
        """Today's orders (ours mapped back through the ordertag; others with id "")."""
        rows = _rows(await self._call("getOrderBook", self._api.orderBook))
        out: list[Order] = []
        gaps = False
        for row in rows:
            gaps |= self._observe(row, adopt_baseline=True, defer_gaps=True)
            out.append(self._to_order(row))
        if gaps:
            self._poll_now.set()  # the poll reads the trade book and reports those fills
        return out

    async def fills(self) -> list[Fill]:
        """Today's trades from the trade book, with our client_order_id from the order book."""
        book = {
            r.get("orderid"): r
            for r in _rows(await self._call("getOrderBook", self._api.orderBook))
        }
        trades = _rows(await self._call("getTradeBook", self._api.tradeBook))
        return [self._to_fill(t, book.get(t.get("orderid"), {})) for t in trades]

    async def positions(self) -> list[Position]:
        out = []
        for row in _rows(await self._call("getPosition", self._api.position)):
            qty = _int(row.get("netqty"))
            avg_key = "buyavgprice" if qty > 0 else "sellavgprice"
            out.append(
                Position(
                    token=str(row.get("symboltoken", "")),
                    qty=qty,
                    avg_price=_float(row.get(avg_key)) if qty else 0.0,
                    realized_pnl=_float(row.get("realised")),
                )
            )
        return out

    def on_tick(self, tick: Tick) -> None:
        """Live fills come from the broker, not from ticks."""

    # -- mapping -----------------------------------------------------------------------------
    def _meta_for(self, row: dict[str, Any]) -> dict[str, str] | None:
        return self._tags.get(str(row.get("ordertag") or ""))

    def _to_order(self, row: dict[str, Any]) -> Order:
        meta = self._meta_for(row) or {}
        status = str(row.get("status") or row.get("orderstatus") or "").lower()
        filled = _int(row.get("filledshares"))
        order_type = str(row.get("ordertype", ""))
        return Order(
            client_order_id=meta.get("client_order_id", ""),
            token=str(row.get("symboltoken", "")),
            exchange_type=_EXCHANGE_TYPES.get(str(row.get("exchange", "")), 0),
            side=Side(str(row.get("transactiontype", "BUY")).upper()),
            qty=_int(row.get("quantity")),
            limit_price=_float(row.get("price"))
            if order_type in ("LIMIT", "STOPLOSS_LIMIT")
            else None,
            status=self._status(status, filled),
            broker_order_id=str(row.get("orderid", "")),
            filled_qty=filled,
            avg_fill_price=_float(row.get("averageprice")),
            reason=str(row.get("text") or ""),
            intent_id=meta.get("intent_id", ""),
            purpose=Purpose(meta.get("purpose", Purpose.ENTRY.value)),
        )

    @staticmethod
    def _status(status: str, filled: int) -> OrderStatus:
        if status == "complete":
            return OrderStatus.FILLED
        if status == "rejected":
            return OrderStatus.REJECTED
        if status == "cancelled":
            return OrderStatus.CANCELLED
        return OrderStatus.PARTIAL if filled else OrderStatus.OPEN

    def _to_fill(self, trade: dict[str, Any], row: dict[str, Any]) -> Fill:
        meta = self._meta_for(row) or {}
        orderid = str(trade.get("orderid", ""))
        day_ms = _parse_ist(str(row.get("exchtime") or row.get("updatetime") or ""))
        ts = 0
        if day_ms:
            day = datetime.fromtimestamp(day_ms / 1000, _IST).strftime("%d-%b-%Y")
            ts = _parse_ist(f"{day} {trade.get('filltime', '')}") or day_ms
        return Fill(
            fill_id=f"{orderid}-{trade.get('fillid')}",
            client_order_id=meta.get("client_order_id", ""),
            token=str(row.get("symboltoken", "")),
            side=Side(str(trade.get("transactiontype", "BUY")).upper()),
            qty=_int(trade.get("fillsize")),
            price=_float(trade.get("fillprice")),
            charges=0.0,
            exchange_ts_ms=ts,
        )

    # -- tag map -----------------------------------------------------------------------------
    def _load_tags(self) -> None:
        try:
            lines = self._tag_file.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                meta = json.loads(line)
                self._tags[meta["tag"]] = meta

    def _append_tag(self, meta: dict[str, str]) -> None:
        private_dir(self.state_dir)
        with self._tag_file.open("a") as f:
            f.write(json.dumps(meta) + "\n")

    def _track(self, orderid: str, meta: dict[str, str]) -> _Tracked:
        tracked = _Tracked(
            orderid=orderid,
            client_order_id=meta["client_order_id"],
            intent_id=meta.get("intent_id", ""),
            purpose=Purpose(meta.get("purpose", Purpose.ENTRY.value)),
            token=meta.get("token", ""),
            side=Side(meta.get("side", "BUY")),
            qty=_int(meta.get("qty")),
        )
        self._orders[orderid] = tracked
        self._by_client_id[tracked.client_order_id] = tracked
        return tracked

    # -- reports -----------------------------------------------------------------------------
    def _report(
        self,
        t: _Tracked,
        kind: ExecKind,
        exch_ms: int,
        fill: Fill | None = None,
        reason: str = "",
    ) -> None:
        report = ExecutionReport(
            kind=kind,
            client_order_id=t.client_order_id,
            intent_id=t.intent_id,
            token=t.token,
            side=t.side,
            order_qty=t.qty,
            filled_qty=t.filled,
            avg_price=t.avg_price,
            purpose=t.purpose,
            broker_order_id=t.orderid,
            fill=fill,
            reason=reason,
            final=False,
            exchange_ts_ms=exch_ms,
            at_ns=self._clock(),
        )
        log.info(
            "angelone_report",
            kind=kind.value,
            client_order_id=t.client_order_id,
            orderid=t.orderid,
            filled=t.filled,
        )
        self._on_report(report)

    def _add_fill(self, t: _Tracked, qty: int, price: float, fill_id: str, exch_ms: int) -> None:
        if fill_id in t.fill_ids or qty <= 0:
            return
        t.fill_ids.add(fill_id)
        total = t.avg_price * t.filled + price * qty
        t.filled += qty
        t.avg_price = round(total / t.filled, 4)
        if not t.acked:
            t.acked = True
            self._report(t, ExecKind.ACK, exch_ms)
        kind = ExecKind.FILLED if t.filled >= t.qty else ExecKind.PARTIAL
        fill = Fill(
            fill_id=fill_id,
            client_order_id=t.client_order_id,
            token=t.token,
            side=t.side,
            qty=qty,
            price=round(price, 4),
            charges=0.0,
            exchange_ts_ms=exch_ms,
        )
        self._report(t, kind, exch_ms, fill)

    def _observe(
        self,
        row: dict[str, Any],
        *,
        adopt_baseline: bool = False,
        defer_gaps: bool = False,
        trades: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Apply one order snapshot (socket event or order-book row) and report what is new.

        adopt_baseline: an order of ours we did not track (restart) takes the row as its
            state without reports; the journal's reconciliation covers its history.
        defer_gaps: return True instead of reporting when the row shows more filled
            quantity than we reported, so the poll can read the trade book first.
        trades: the trade book, to report each missing trade with its own fill id.
        """
        orderid = str(row.get("orderid") or "")
        status = str(row.get("status") or row.get("orderstatus") or "").lower()
        filled = _int(row.get("filledshares"))
        avg = _float(row.get("averageprice"))
        tracked = self._orders.get(orderid)
        if tracked is None:
            meta = self._meta_for(row)
            if meta is None or not orderid:
                return False  # not ours
            tracked = self._track(orderid, meta)
            tracked.variety = str(row.get("variety") or "NORMAL")
            if adopt_baseline:
                tracked.filled, tracked.avg_price, tracked.acked = filled, avg, True
                tracked.terminal = status in ("complete", "rejected", "cancelled")
                log.info("angelone_order_adopted", orderid=orderid, status=status)
                return False
        if tracked.terminal:
            return False
        exch_ms = _parse_ist(str(row.get("exchorderupdatetime") or row.get("exchtime") or ""))
        if status == "rejected":
            tracked.terminal = True
            self._report(tracked, ExecKind.REJECTED, exch_ms, reason=str(row.get("text") or status))
            return False
        if not tracked.acked and (status in _LIVE or filled > 0 or status == "complete"):
            tracked.acked = True
            self._report(tracked, ExecKind.ACK, exch_ms)
        if filled > tracked.filled:
            if trades is not None:
                self._fills_from_trades(tracked, trades, exch_ms)
            elif defer_gaps:
                return True
            if filled > tracked.filled:
                qty = filled - tracked.filled
                price = (avg * filled - tracked.avg_price * tracked.filled) / qty if avg else 0.0
                fillid = str(row.get("fillid") or "")
                fill_id = f"{orderid}-{fillid}" if fillid else f"{orderid}-q{filled}"
                if fill_id in tracked.fill_ids:
                    fill_id = f"{orderid}-q{filled}"
                self._add_fill(tracked, qty, price, fill_id, exch_ms)
        if status == "cancelled":
            tracked.terminal = True
            self._report(tracked, ExecKind.CANCELLED, exch_ms, reason=str(row.get("text") or ""))
        elif status == "complete" and tracked.filled >= tracked.qty:
            tracked.terminal = True
        return False

    def _fills_from_trades(
        self, tracked: _Tracked, trades: list[dict[str, Any]], exch_ms: int
    ) -> None:
        mine = [t for t in trades if str(t.get("orderid")) == tracked.orderid]
        mine.sort(key=lambda t: (str(t.get("filltime", "")), str(t.get("fillid", ""))))
        cum = 0
        for trade in mine:
            qty = _int(trade.get("fillsize"))
            cum += qty
            fill_id = f"{tracked.orderid}-{trade.get('fillid')}"
            if cum > tracked.filled and fill_id not in tracked.fill_ids:
                self._add_fill(
                    tracked, cum - tracked.filled, _float(trade.get("fillprice")), fill_id, exch_ms
                )

    # -- the order-book poll -------------------------------------------------------------------
    async def _run_poll(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.poll_interval_s):
                    await self._poll_now.wait()
            self._poll_now.clear()
            if self._closing.is_set():
                return
            if not any(not t.terminal for t in self._orders.values()):
                continue
            try:
                await self.poll_once()
            except BrokerError as exc:
                log.warning("angelone_poll_failed", error=str(exc))

    async def poll_once(self) -> None:
        """Read the order book once and report whatever the socket has not delivered."""
        self.polls += 1
        rows = _rows(await self._call("getOrderBook", self._api.orderBook))
        gaps = [r for r in rows if self._observe(r, defer_gaps=True)]
        if not gaps:
            return
        # Some filled quantity we never saw: the trade book says which trades it was.
        trades = _rows(await self._call("getTradeBook", self._api.tradeBook))
        for row in gaps:
            self._observe(row, trades=trades)
        log.info("angelone_poll_recovered", orders=len(gaps))

    def feed_headers(self) -> dict[str, str] | None:
        """The logged-in session's four SmartAPI headers, which the market-data feed takes
        too (its JWT and feed token are this login's); None before a login."""
        if not self._jwt or not self._feed_token:
            return None
        return {
            "Authorization": f"Bearer {self._jwt}",
            "x-api-key": self._api_key,
            "x-client-code": self.client_code,
            "x-feed-token": self._feed_token,
        }

    # -- the order-update socket ---------------------------------------------------------------
    async def _run_order_stream(self) -> None:
        backoff = _BACKOFF_MIN_S
        rng = random.Random()
        while not self._closing.is_set():
            headers = self.feed_headers() or {}
            try:
                async with connect(
                    self.cfg.order_ws_url,
                    additional_headers=headers,
                    create_connection=_OrderSocket,
                    ping_interval=None,  # our own liveness: Angel's pong never matches a ping
                    open_timeout=self.cfg.request_timeout_s,
                    compression=None,
                ) as ws:
                    assert isinstance(ws, _OrderSocket)
                    self._ws = ws
                    self.stream_connects += 1
                    self.stream_connected.set()
                    backoff = _BACKOFF_MIN_S
                    log.info("angelone_order_stream_connected", connects=self.stream_connects)
                    if self.stream_connects > 1:
                        self._poll_now.set()  # events during the gap: the book has them
                    await self._read_stream(ws)
            except InvalidStatus as exc:
                log.warning(
                    "angelone_order_stream_refused",
                    status=exc.response.status_code,
                    fix="session expired or wrong API key / client code: reconnect the broker",
                )
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                log.warning("angelone_order_stream_lost", error=f"{type(exc).__name__}: {exc}")
            finally:
                self._ws = None
                self.stream_connected.clear()
            if self._closing.is_set():
                return
            delay = backoff * rng.uniform(0.5, 1.0)  # jitter
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()

    async def _read_stream(self, ws: _OrderSocket) -> None:
        ws.last_rx = ws.loop.time()

        async def keepalive() -> None:
            while True:
                await asyncio.sleep(_PING_EVERY_S)
                if ws.loop.time() - ws.last_rx > _SILENT_AFTER_S:
                    log.warning("angelone_order_stream_silent", after_s=_SILENT_AFTER_S)
                    ws.transport.abort()
                    return
                with contextlib.suppress(ConnectionClosed):
                    await ws.ping()  # returns a waiter we do not await: Angel's pong is b"\0"

        pinger = asyncio.create_task(keepalive())
        try:
            async for message in ws:
                ws.last_rx = ws.loop.time()
                if isinstance(message, bytes):
                    continue
                self._on_stream_text(message)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    def _on_stream_text(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            if text != "pong":
                log.info("angelone_order_stream_text", text=text[:200])
            return
        data = event.get("orderData") if isinstance(event, dict) else None
        if not isinstance(data, dict):
            log.info("angelone_order_stream_event", status=str(event)[:200])
            return
        try:
            self._observe(data)
        except Exception:  # a bad event must not kill the stream; the poll has the truth
            log.exception("angelone_order_event_failed", orderid=data.get("orderid"))
