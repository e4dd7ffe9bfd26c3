"""The simulator's order side: SmartConnect's REST routes and the order-update websocket.

One aiohttp app on 127.0.0.1 (``OrderGateway``) serves the routes the smartapi-python
``SmartConnect`` calls (shared/reference/smartapi-v2-protocol.md §10) and, on the same
port, ``/smart-order-update`` (§9). Orders match against the simulator's own ``Market``
(the object that produces the ticks), so a fill price is a price the feed has shown.

Matching model (simple on purpose):
- MARKET: fills at the token's last traded price ``fill_delay_s`` after acceptance; an
  order of at least ``partial_qty`` units fills in two halves, ``fill_delay_s`` apart.
- LIMIT: rests until the last price crosses the limit (buy: ltp <= limit, sell: ltp >=
  limit), then fills completely at the better of limit and ltp.
- STOPLOSS_MARKET / STOPLOSS_LIMIT: "trigger pending" until the ltp reaches the trigger
  (buy: ltp >= trigger, sell: ltp <= trigger), then behave as MARKET / LIMIT.
- cancel works on orders that are not complete/rejected/cancelled.

Update flow per order (``order-status`` codes): AB09 "open pending" after acceptance,
AB10 "trigger pending" for stop orders, AB01 "open" (also after a partial fill, with
filledshares > 0), AB05 "complete", AB02 "cancelled", AB03 "rejected". AB05 and AB09 are
verified from a live capture; the others follow SmartAPI's published code list and are
our assumption. An RMS reject (``reject_p``) answers placeOrder with success and then
pushes only the "rejected" update, as the real system does.

Choices where the real API is undocumented (assumptions, kept in one place):
- error codes: AG8001 invalid token, AG8003 token missing, AG8004 invalid API key (401);
  AB1000 bad client code/password, AB1050 invalid TOTP, AB1008 invalid variety, AB1009
  unknown symbol/token, AB1012 invalid product type, AB1013 order not found, AB4008
  ordertag longer than 20 characters, AB2000 other bad parameters;
- only the order calls (place/modify/cancel) are rate limited (20/s, 500/min, 1000/h per
  client code, counted over sliding windows; a refused call does not use budget); the
  read routes are not, so tests and pollers can read freely;
- the order book shows the latest fill's ``fillid``/``filltime``; the trade book has one
  row per fill (``fillsize`` a string, ``fillprice`` a float, ``filltime`` HH:MM:SS);
- positions are strings like the real getPosition (``netqty``, ``buyavgprice``...);
- exchange time in orders is the market's simulated clock (IST), never wall clock;
- the websocket answers RFC PING with PONG payload ``b"\\x00"`` and text ``"ping"`` with
  ``"pong"``; it pushes the account's events to every open order socket of the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyotp
import structlog
from aiohttp import WSMsgType, web

from chimera_core.contracts import Mode
from tools.sim.candles import install_candle_route
from tools.sim.market import IST, Market
from tools.sim.master import MASTER_PATH, SAMPLE_MASTER

log = structlog.get_logger(__name__)

ORDER_WS_PATH = "/smart-order-update"
RATE_LIMIT_TEXT = "Access denied because of exceeding access rate"
# (window seconds, calls allowed) per client code for placeOrder/modifyOrder/cancelOrder.
ORDER_RATE_LIMITS: tuple[tuple[float, int], ...] = ((1.0, 20), (60.0, 500), (3600.0, 1000))
MAX_ORDERTAG_LEN = 20

DEFAULT_CLIENT_CODE = "S1234567"
DEFAULT_PASSWORD = "1234"
DEFAULT_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # a well-known demo secret; sim only

_AUTH = "/rest/auth/angelbroking"
_SECURE = "/rest/secure/angelbroking"
_ORDER = f"{_SECURE}/order/v1"

STATUS_CODES = {
    "open": "AB01",
    "cancelled": "AB02",
    "rejected": "AB03",
    "complete": "AB05",
    "open pending": "AB09",
    "trigger pending": "AB10",
}
_TERMINAL = frozenset({"complete", "cancelled", "rejected"})
_VARIETIES = frozenset({"NORMAL", "STOPLOSS", "AMO", "ROBO"})
_ORDER_TYPES = frozenset({"MARKET", "LIMIT", "STOPLOSS_LIMIT", "STOPLOSS_MARKET"})
_PRODUCTS = frozenset({"DELIVERY", "CARRYFORWARD", "MARGIN", "INTRADAY", "BO"})
_SIDES = frozenset({"BUY", "SELL"})
_EXCHANGES = frozenset({"NSE", "BSE", "NFO", "BFO", "MCX", "CDS", "NCDEX"})
_RMS_TEXT = (
    "RMS:Margin Exceeds,Required:{req:.2f}, Available:0.00 for entity account "
    "across exchange across segment across product"
)


@dataclass(frozen=True)
class OrderFaults:
    """Order-side fault injection; everything is off by default.

    reject_p: per accepted placeOrder, an RMS-style reject (success response, then a
        "rejected" update and order-book row).
    update_drop_p: per order update, do not send it (the order book keeps the truth).
    rate_limit_burst: the next N order calls (place/modify/cancel) get the 403 text.
    """

    reject_p: float = 0.0
    update_drop_p: float = 0.0
    rate_limit_burst: int = 0

    def __post_init__(self) -> None:
        for name in ("reject_p", "update_drop_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"OrderFaults.{name} must be a probability in [0, 1], got {p}")
        if self.rate_limit_burst < 0:
            raise ValueError(
                f"OrderFaults.rate_limit_burst must be >= 0, got {self.rate_limit_burst}"
            )


@dataclass
class _SimFill:
    fillid: str
    qty: int
    price: float
    exch_ms: int


@dataclass
class _SimOrder:
    orderid: str
    uniqueorderid: str
    params: dict[str, Any]
    token: str
    side: str
    order_type: str
    qty: int
    price: float
    trigger: float
    status: str = "open pending"
    text: str = ""
    fills: list[_SimFill] = field(default_factory=list)
    exch_ms: int = 0
    triggered: bool = False
    next_fill_at: float = 0.0  # loop time of the next MARKET fill step

    @property
    def filled(self) -> int:
        return sum(f.qty for f in self.fills)

    @property
    def avg_price(self) -> float:
        filled = self.filled
        if not filled:
            return 0.0
        return round(sum(f.qty * f.price for f in self.fills) / filled, 4)


class _ApiError(Exception):
    def __init__(self, errorcode: str, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.errorcode = errorcode
        self.message = message
        self.http_status = http_status


def _ist(ms: int, fmt: str = "%d-%b-%Y %H:%M:%S") -> str:
    return datetime.fromtimestamp(ms / 1000, IST).strftime(fmt) if ms else ""


def _ok(data: Any, message: str = "SUCCESS") -> web.Response:
    return web.json_response({"status": True, "message": message, "errorcode": "", "data": data})


def _fail(errorcode: str, message: str, http_status: int = 200) -> web.Response:
    body = {"status": False, "message": message, "errorcode": errorcode, "data": None}
    return web.json_response(body, status=http_status)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OrderGateway:
    """SmartConnect REST + order-update websocket against a ``Market``, on one port."""

    def __init__(
        self,
        market: Market | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_code: str = DEFAULT_CLIENT_CODE,
        password: str = DEFAULT_PASSWORD,
        totp_secret: str = DEFAULT_TOTP_SECRET,
        api_key: str = "",
        symbols: Mapping[str, str] | None = None,
        fill_delay_s: float = 0.05,
        partial_qty: int = 1000,
        match_interval_s: float = 0.01,
        faults: OrderFaults | None = None,
        seed: int = 7,
    ) -> None:
        if fill_delay_s < 0 or match_interval_s <= 0:
            raise ValueError("fill_delay_s must be >= 0 and match_interval_s > 0")
        self.market = market
        self.host = host
        self._port = port
        self.client_code = client_code
        self._password = password
        try:
            self._totp = pyotp.TOTP(totp_secret)
        except ValueError as exc:  # binascii.Error is a ValueError
            raise ValueError(
                f"the sim's TOTP secret must be base32 of at least 112 bits "
                f"(32 base32 characters): {exc}"
            ) from None
        self._api_key = api_key  # "" accepts any non-empty key
        self.symbols = dict(symbols or {})
        self.fill_delay_s = fill_delay_s
        self.partial_qty = partial_qty
        self.match_interval_s = match_interval_s
        self.faults = faults or OrderFaults()
        self._rng = random.Random(seed * 7_368_787 + 11)
        self._forced_403 = self.faults.rate_limit_burst
        self._order_calls: deque[float] = deque()
        self._jwts: set[str] = set()
        self._refresh: set[str] = set()
        self._feed_token = ""
        self.orders: dict[str, _SimOrder] = {}
        self._by_unique: dict[str, _SimOrder] = {}
        self._seq = 0
        self._fill_seq = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self.updates_sent = 0
        self.updates_dropped = 0
        self._runner: web.AppRunner | None = None
        self._matcher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The listening port (the OS's choice once started with 0)."""
        return self._port

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self._port}{ORDER_WS_PATH}"

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        post, get = app.router.add_post, app.router.add_get
        post(f"{_AUTH}/user/v1/loginByPassword", self._login)
        post(f"{_AUTH}/jwt/v1/generateTokens", self._generate_tokens)
        get(f"{_SECURE}/user/v1/getProfile", self._secure(self._profile))
        post(f"{_SECURE}/user/v1/logout", self._secure(self._logout))
        post(f"{_ORDER}/placeOrder", self._secure(self._order_call(self._place)))
        post(f"{_ORDER}/modifyOrder", self._secure(self._order_call(self._modify)))
        post(f"{_ORDER}/cancelOrder", self._secure(self._order_call(self._cancel)))
        get(f"{_ORDER}/getOrderBook", self._secure(self._order_book))
        get(f"{_ORDER}/getTradeBook", self._secure(self._trade_book))
        get(f"{_ORDER}/getPosition", self._secure(self._positions))
        post(f"{_ORDER}/getLtpData", self._secure(self._ltp))
        get(f"{_ORDER}/details/{{uniqueorderid}}", self._secure(self._details))
        get(ORDER_WS_PATH, self._order_socket)
        # The public instrument master (no auth, as the real one): tools/sim/master.py.
        get(MASTER_PATH, self._instrument_master)
        self.candles = install_candle_route(app, self.market, self._secure)  # getCandleData
        return app

    async def _instrument_master(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(SAMPLE_MASTER)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._matcher = asyncio.create_task(self._run_matcher(), name="sim-order-matcher")
        log.info(
            "sim_orders_listening",
            rest_url=self.rest_url,
            ws_url=self.ws_url,
            client_code=self.client_code,
            reject_p=self.faults.reject_p,
            update_drop_p=self.faults.update_drop_p,
        )

    async def stop(self) -> None:
        if self._matcher is not None:
            self._matcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._matcher
            self._matcher = None
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("sim_orders_stopped", orders=len(self.orders), updates_sent=self.updates_sent)

    # -- test hooks ----------------------------------------------------------------------
    def force_rate_limit(self, calls: int) -> None:
        """Answer the next ``calls`` order calls with the 403 rate-limit text."""
        self._forced_403 = calls

    async def drop_order_sockets(self) -> None:
        """Close every order-update socket (clients should reconnect)."""
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"simulated drop")

    @property
    def order_sockets(self) -> int:
        return len(self._sockets)

    # -- middleware and auth ---------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _ApiError as exc:
            log.info(
                "sim_orders_request_refused",
                path=request.path,
                errorcode=exc.errorcode,
                reason=exc.message,
            )
            return _fail(exc.errorcode, exc.message, exc.http_status)

    def _check_auth(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise _ApiError("AG8003", "Token missing", 401)
        if auth[7:].strip() not in self._jwts:
            raise _ApiError("AG8001", "Invalid Token", 401)
        key = request.headers.get("X-PrivateKey") or request.headers.get("x-api-key") or ""
        if not key or (self._api_key and key != self._api_key):
            raise _ApiError("AG8004", "Invalid API Key", 401)

    def _secure(self, handler: _Handler) -> _Handler:
        async def secured(request: web.Request) -> web.StreamResponse:
            self._check_auth(request)
            return await handler(request)

        return secured

    def _order_call(self, handler: _Handler) -> _Handler:
        async def limited(request: web.Request) -> web.StreamResponse:
            if not self._admit_order_call():
                log.warning("sim_orders_rate_limited", path=request.path)
                # Plain text, not JSON: exactly what the real gateway sends.
                return web.Response(status=403, text=RATE_LIMIT_TEXT)
            return await handler(request)

        return limited

    def _admit_order_call(self) -> bool:
        if self._forced_403 > 0:
            self._forced_403 -= 1
            return False
        now = time.monotonic()
        calls = self._order_calls
        longest = ORDER_RATE_LIMITS[-1][0]
        while calls and now - calls[0] >= longest:
            calls.popleft()
        for window, limit in ORDER_RATE_LIMITS:
            if sum(1 for t in calls if now - t < window) >= limit:
                return False
        calls.append(now)
        return True

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise _ApiError("AB2000", "request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise _ApiError("AB2000", "request body must be a JSON object")
        return body

    # -- session routes --------------------------------------------------------------------
    async def _login(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if body.get("clientcode") != self.client_code or body.get("password") != self._password:
            raise _ApiError("AB1000", "Invalid clientcode or password")
        # valid_window=1 accepts the previous/next 30 s step, like most TOTP servers.
        if not self._totp.verify(str(body.get("totp", "")), valid_window=1):
            raise _ApiError("AB1050", "Invalid totp")
        return _ok(self._issue_tokens())

    def expire_sessions(self) -> None:
        """Every issued JWT stops working, as Angel One's do overnight (tests)."""
        self._jwts.clear()
        log.info("sim_orders_sessions_expired")

    def _issue_tokens(self) -> dict[str, str]:
        jwt, refresh = f"sim.{secrets.token_urlsafe(24)}", secrets.token_urlsafe(24)
        self._feed_token = secrets.token_urlsafe(16)
        self._jwts.add(jwt)
        self._refresh.add(refresh)
        log.info("sim_orders_login", client_code=self.client_code)
        return {"jwtToken": jwt, "refreshToken": refresh, "feedToken": self._feed_token}

    async def _generate_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if body.get("refreshToken") not in self._refresh:
            raise _ApiError("AB8050", "Invalid Refresh Token")
        return _ok(self._issue_tokens())

    async def _profile(self, request: web.Request) -> web.StreamResponse:
        return _ok(
            {
                "clientcode": self.client_code,
                "name": "SIM USER",
                "email": "",
                "mobileno": "",
                "exchanges": sorted(_EXCHANGES),
                "products": sorted(_PRODUCTS),
                "lastlogintime": "",
                "broker": "",
            }
        )

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self._jwts.discard(request.headers["Authorization"][7:].strip())
        return _ok(None)

    # -- order routes ----------------------------------------------------------------------
    def _price_of(self, token: str) -> float:
        assert self.market is not None
        return self.market.snapshot(token, Mode.LTP).ltp

    def _knows(self, token: str) -> bool:
        return self.market is not None and token in self.market.tokens

    def _now_ms(self) -> int:
        return self.market.now_ms if self.market is not None else 0

    async def _place(self, request: web.Request) -> web.StreamResponse:
        p = await self._body(request)
        variety = str(p.get("variety", ""))
        if variety not in _VARIETIES:
            raise _ApiError("AB1008", f"Invalid Variety {variety!r}")
        order_type = str(p.get("ordertype", ""))
        side = str(p.get("transactiontype", ""))
        product = str(p.get("producttype", ""))
        if order_type not in _ORDER_TYPES:
            raise _ApiError("AB2000", f"Invalid ordertype {order_type!r}")
        if side not in _SIDES:
            raise _ApiError("AB2000", f"Invalid transactiontype {side!r}")
        if product not in _PRODUCTS:
            raise _ApiError("AB1012", f"Invalid Product Type {product!r}")
        if str(p.get("exchange", "")) not in _EXCHANGES:
            raise _ApiError("AB2000", f"Invalid exchange {p.get('exchange')!r}")
        token = str(p.get("symboltoken", ""))
        if not self._knows(token):
            raise _ApiError("AB1009", f"Symbol Not Found: symboltoken {token!r}")
        if (variety == "STOPLOSS") != order_type.startswith("STOPLOSS"):
            raise _ApiError("AB1008", "STOPLOSS_* ordertypes need variety STOPLOSS and back")
        try:
            qty = int(str(p.get("quantity", "")))
            price = float(p.get("price") or 0)
            trigger = float(p.get("triggerprice") or 0)
        except ValueError:
            raise _ApiError("AB2000", "quantity, price and triggerprice must be numbers") from None
        if qty <= 0:
            raise _ApiError("AB2000", f"Invalid quantity {qty}")
        if order_type in ("LIMIT", "STOPLOSS_LIMIT") and price <= 0:
            raise _ApiError("AB2000", f"{order_type} needs price > 0")
        if order_type.startswith("STOPLOSS") and trigger <= 0:
            raise _ApiError("AB2000", f"{order_type} needs triggerprice > 0")
        tag = str(p.get("ordertag") or "")
        if len(tag) > MAX_ORDERTAG_LEN:
            raise _ApiError("AB4008", "ordertag length should be less than 20 characters")

        self._seq += 1
        day = self.market.session_date if self.market is not None else None
        prefix = day.strftime("%y%m%d") if day is not None else "000000"
        order = _SimOrder(
            orderid=f"{prefix}{self._seq:09d}",
            uniqueorderid=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            params={**p, "ordertag": tag},
            token=token,
            side=side,
            order_type=order_type,
            qty=qty,
            price=price,
            trigger=trigger,
            exch_ms=self._now_ms(),
        )
        self.orders[order.orderid] = order
        self._by_unique[order.uniqueorderid] = order
        log.info(
            "sim_order_placed",
            orderid=order.orderid,
            ordertag=tag,
            token=token,
            side=side,
            ordertype=order_type,
            qty=qty,
        )
        if self.faults.reject_p and self._rng.random() < self.faults.reject_p:
            order.status = "rejected"
            order.text = _RMS_TEXT.format(req=qty * self._price_of(token))
            log.info("sim_order_rejected", orderid=order.orderid, reason="rms fault")
        elif order_type.startswith("STOPLOSS"):
            order.status = "trigger pending"
        else:
            order.next_fill_at = asyncio.get_running_loop().time() + self.fill_delay_s
        # The update goes out after the response, as the real push lags the REST answer.
        asyncio.get_running_loop().call_soon(self._push, order)
        data = {
            "script": p.get("tradingsymbol", ""),
            "orderid": order.orderid,
            "uniqueorderid": order.uniqueorderid,
        }
        return _ok(data)

    def _find(self, orderid: Any) -> _SimOrder:
        order = self.orders.get(str(orderid or ""))
        if order is None:
            raise _ApiError("AB1013", f"Order not found: {orderid!r}")
        return order

    async def _modify(self, request: web.Request) -> web.StreamResponse:
        p = await self._body(request)
        order = self._find(p.get("orderid"))
        if order.status in _TERMINAL:
            raise _ApiError("AB2000", f"order {order.orderid} is {order.status}; cannot modify")
        try:
            if p.get("quantity") is not None:
                qty = int(str(p["quantity"]))
                if qty < order.filled or qty <= 0:
                    raise _ApiError("AB2000", f"quantity {qty} is below the filled quantity")
                order.qty = qty
            if p.get("price") is not None:
                order.price = float(p["price"])
            if p.get("triggerprice") is not None:
                order.trigger = float(p["triggerprice"])
        except ValueError:
            raise _ApiError("AB2000", "quantity, price and triggerprice must be numbers") from None
        if p.get("ordertype") in _ORDER_TYPES:
            order.order_type = str(p["ordertype"])
        order.exch_ms = self._now_ms()
        self._push(order)
        return _ok({"orderid": order.orderid, "uniqueorderid": order.uniqueorderid})

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        p = await self._body(request)
        order = self._find(p.get("orderid"))
        if order.status in _TERMINAL:
            raise _ApiError("AB2000", f"order {order.orderid} is {order.status}; cannot cancel")
        order.status = "cancelled"
        order.exch_ms = self._now_ms()
        log.info("sim_order_cancelled", orderid=order.orderid, filled=order.filled)
        asyncio.get_running_loop().call_soon(self._push, order)
        return _ok({"orderid": order.orderid, "uniqueorderid": order.uniqueorderid})

    async def _order_book(self, request: web.Request) -> web.StreamResponse:
        # The real API answers data=null for an empty book.
        return _ok([self._view(o) for o in self.orders.values()] or None)

    async def _trade_book(self, request: web.Request) -> web.StreamResponse:
        rows = []
        for o in self.orders.values():
            for f in o.fills:
                rows.append(
                    {
                        "exchange": o.params.get("exchange", ""),
                        "producttype": o.params.get("producttype", ""),
                        "tradingsymbol": o.params.get("tradingsymbol", ""),
                        "instrumenttype": "",
                        "symbolgroup": "EQ",
                        "strikeprice": -1.0,
                        "optiontype": "",
                        "expirydate": "",
                        "marketlot": "1",
                        "precision": "2",
                        "multiplier": "-1",
                        "tradevalue": round(f.qty * f.price, 2),
                        "transactiontype": o.side,
                        "fillprice": f.price,
                        "fillsize": str(f.qty),
                        "orderid": o.orderid,
                        "fillid": f.fillid,
                        "filltime": _ist(f.exch_ms, "%H:%M:%S"),
                    }
                )
        return _ok(rows or None)

    async def _positions(self, request: web.Request) -> web.StreamResponse:
        book: dict[tuple[str, str], dict[str, float]] = {}
        symbols: dict[str, str] = {}
        for o in self.orders.values():
            if not o.fills:
                continue
            key = (o.token, str(o.params.get("producttype", "")))
            symbols[o.token] = str(o.params.get("tradingsymbol", ""))
            acc = book.setdefault(key, {"bq": 0, "ba": 0.0, "sq": 0, "sa": 0.0})
            for f in o.fills:
                if o.side == "BUY":
                    acc["bq"] += f.qty
                    acc["ba"] += f.qty * f.price
                else:
                    acc["sq"] += f.qty
                    acc["sa"] += f.qty * f.price
        rows = []
        for (token, product), a in book.items():
            bq, sq = int(a["bq"]), int(a["sq"])
            bavg = a["ba"] / bq if bq else 0.0
            savg = a["sa"] / sq if sq else 0.0
            closed = min(bq, sq)
            realised = (savg - bavg) * closed
            net = bq - sq
            ltp = self._price_of(token)
            net_avg = bavg if net > 0 else savg if net < 0 else 0.0
            rows.append(
                {
                    "exchange": "NSE",
                    "symboltoken": token,
                    "producttype": product,
                    "tradingsymbol": symbols[token],
                    "symbolname": symbols[token].split("-")[0],
                    "instrumenttype": "",
                    "lotsize": "1",
                    "buyqty": str(bq),
                    "sellqty": str(sq),
                    "buyamount": f"{a['ba']:.2f}",
                    "sellamount": f"{a['sa']:.2f}",
                    "buyavgprice": f"{bavg:.2f}",
                    "sellavgprice": f"{savg:.2f}",
                    "avgnetprice": f"{net_avg:.2f}",
                    "netvalue": f"{a['sa'] - a['ba']:.2f}",
                    "netqty": str(net),
                    "netprice": f"{net_avg:.2f}",
                    "realised": f"{realised:.2f}",
                    "unrealised": f"{(ltp - net_avg) * net:.2f}",
                    "ltp": f"{ltp:.2f}",
                    "cfbuyqty": "0",
                    "cfsellqty": "0",
                }
            )
        return _ok(rows or None)

    async def _ltp(self, request: web.Request) -> web.StreamResponse:
        p = await self._body(request)
        token = str(p.get("symboltoken", ""))
        if not self._knows(token):
            raise _ApiError("AB1009", f"Symbol Not Found: symboltoken {token!r}")
        assert self.market is not None
        tick = self.market.snapshot(token, Mode.QUOTE)
        return _ok(
            {
                "exchange": p.get("exchange", "NSE"),
                "tradingsymbol": p.get("tradingsymbol", ""),
                "symboltoken": token,
                "open": tick.open,
                "high": tick.high,
                "low": tick.low,
                "close": tick.prev_close,
                "ltp": tick.ltp,
            }
        )

    async def _details(self, request: web.Request) -> web.StreamResponse:
        order = self._by_unique.get(request.match_info["uniqueorderid"])
        if order is None:
            raise _ApiError("AB1013", "Order not found")
        return _ok(self._view(order))

    # -- order views and updates -------------------------------------------------------------
    def _view(self, o: _SimOrder) -> dict[str, Any]:
        p = o.params
        filled = o.filled
        last = o.fills[-1] if o.fills else None
        when = _ist(o.exch_ms)
        return {
            "variety": p.get("variety", "NORMAL"),
            "ordertype": o.order_type,
            "ordertag": p.get("ordertag", ""),
            "producttype": p.get("producttype", ""),
            "price": o.price,
            "triggerprice": o.trigger,
            "quantity": str(o.qty),
            "disclosedquantity": str(p.get("disclosedquantity") or "0"),
            "duration": p.get("duration", "DAY"),
            "squareoff": 0.0,
            "stoploss": 0.0,
            "trailingstoploss": 0.0,
            "tradingsymbol": p.get("tradingsymbol", ""),
            "transactiontype": o.side,
            "exchange": p.get("exchange", "NSE"),
            "symboltoken": o.token,
            "instrumenttype": "",
            "strikeprice": -1.0,
            "optiontype": "",
            "expirydate": "",
            "lotsize": "1",
            "cancelsize": str(o.qty - filled) if o.status == "cancelled" else "0",
            "averageprice": o.avg_price,
            "filledshares": str(filled),
            "unfilledshares": str(o.qty - filled),
            "orderid": o.orderid,
            "text": o.text,
            "status": o.status,
            "orderstatus": o.status,
            "updatetime": when,
            "exchtime": when,
            "exchorderupdatetime": when,
            "fillid": last.fillid if last else "",
            "filltime": _ist(last.exch_ms, "%H:%M:%S") if last else "",
            "parentorderid": "",
            "uniqueorderid": o.uniqueorderid,
            "exchangeorderid": f"1100000{o.orderid[-9:]}" if o.status != "rejected" else "",
        }

    def _push(self, order: _SimOrder) -> None:
        """Send one order event to every order socket (or drop it, per the fault)."""
        if self.faults.update_drop_p and self._rng.random() < self.faults.update_drop_p:
            self.updates_dropped += 1
            log.info("sim_order_update_dropped", orderid=order.orderid, status=order.status)
            return
        message = json.dumps(
            {
                "user-id": self.client_code,
                "status-code": "200",
                "order-status": STATUS_CODES.get(order.status, "AB00"),
                "error-message": "",
                "orderData": self._view(order),
            }
        )
        for ws in list(self._sockets):
            if not ws.closed:
                asyncio.get_running_loop().create_task(self._send(ws, message))
        self.updates_sent += 1

    @staticmethod
    async def _send(ws: web.WebSocketResponse, message: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(message)

    # -- matching ------------------------------------------------------------------------------
    async def _run_matcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.match_interval_s)
            now = loop.time()
            for order in list(self.orders.values()):
                if order.status not in _TERMINAL:
                    self._match(order, now)

    def _fill(self, order: _SimOrder, qty: int, price: float) -> None:
        self._fill_seq += 1
        order.exch_ms = self._now_ms()
        order.fills.append(_SimFill(f"{self._fill_seq:08d}", qty, round(price, 2), order.exch_ms))
        order.status = "complete" if order.filled >= order.qty else "open"
        log.info(
            "sim_order_fill",
            orderid=order.orderid,
            qty=qty,
            price=price,
            filled=order.filled,
            status=order.status,
        )
        self._push(order)

    def _match(self, order: _SimOrder, now: float) -> None:
        ltp = self._price_of(order.token)
        buy = order.side == "BUY"
        if order.order_type.startswith("STOPLOSS") and not order.triggered:
            if not (ltp >= order.trigger if buy else ltp <= order.trigger):
                return
            order.triggered = True
            order.status = "open"
            order.next_fill_at = now + self.fill_delay_s
            self._push(order)
            return
        if order.order_type in ("MARKET", "STOPLOSS_MARKET"):
            if now < order.next_fill_at:
                return
            if order.status == "open pending":
                order.status = "open"  # the exchange accepted it; AB01 precedes the fills
                self._push(order)
            remaining = order.qty - order.filled
            if self.partial_qty and order.qty >= self.partial_qty and not order.fills:
                self._fill(order, max(1, order.qty // 2), ltp)
                order.next_fill_at = now + self.fill_delay_s
            else:
                self._fill(order, remaining, ltp)
            return
        # LIMIT / triggered STOPLOSS_LIMIT
        if order.status == "open pending":
            order.status = "open"
            self._push(order)
        if buy and ltp <= order.price:
            self._fill(order, order.qty - order.filled, min(ltp, order.price))
        elif not buy and ltp >= order.price:
            self._fill(order, order.qty - order.filled, max(ltp, order.price))

    # -- the order-update websocket --------------------------------------------------------------
    async def _order_socket(self, request: web.Request) -> web.StreamResponse:
        try:
            self._check_auth(request)
        except _ApiError as exc:
            log.warning("sim_order_socket_unauthorized", errorcode=exc.errorcode)
            return web.Response(status=401, text="Unauthorized\n")
        # autoping off: PING must get PONG b"\x00" (what the real server appears to send).
        ws = web.WebSocketResponse(autoping=False, heartbeat=None)
        await ws.prepare(request)
        self._sockets.add(ws)
        log.info("sim_order_socket_connected", sockets=len(self._sockets))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    await ws.pong(b"\x00")
                elif msg.type == WSMsgType.TEXT and msg.data == "ping":
                    await ws.send_str("pong")
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            self._sockets.discard(ws)
            log.info("sim_order_socket_disconnected", sockets=len(self._sockets))
        return ws
