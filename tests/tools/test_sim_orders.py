"""The simulator's order side, driven by the real smartapi-python SmartConnect on 127.0.0.1.

SmartConnect is built through the adapter's side-effect-free loader (no network call on
import, ./logs under tmp_path); its blocking calls run in threads so the simulator keeps
serving on this test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chimera_execution.brokers.angelone import new_smartconnect
from tests.loopback import start_order_sim
from tools.sim.orders import (
    DEFAULT_CLIENT_CODE,
    DEFAULT_PASSWORD,
    DEFAULT_TOTP_SECRET,
    RATE_LIMIT_TEXT,
    OrderFaults,
)
from tools.sim.server import ExchangeSimulator, build_parser

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests honours proxy variables; loopback must go direct.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
async def sim() -> AsyncIterator[ExchangeSimulator]:
    server = await start_order_sim()
    yield server
    await server.stop()


async def _login(sim: ExchangeSimulator, tmp: Path) -> Any:
    api = new_smartconnect("sim_api_key", sim.rest_url, 5.0, tmp)
    session = await asyncio.to_thread(
        api.generateSession,
        DEFAULT_CLIENT_CODE,
        DEFAULT_PASSWORD,
        pyotp.TOTP(DEFAULT_TOTP_SECRET).now(),
    )
    assert session["status"] is True, session
    return api


def _order(token: str = "3045", **over: Any) -> dict[str, Any]:
    params = {
        "variety": "NORMAL",
        "tradingsymbol": "SBIN-EQ",
        "symboltoken": token,
        "transactiontype": "BUY",
        "exchange": "NSE",
        "ordertype": "MARKET",
        "producttype": "INTRADAY",
        "duration": "DAY",
        "price": "0",
        "quantity": "5",
        "ordertag": "tag-1",
    }
    params.update(over)
    return params


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def _book(api: Any) -> list[dict[str, Any]]:
    return (await asyncio.to_thread(api.orderBook))["data"] or []


async def test_sdk_login_place_book_cancel_trades_positions(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    assert sim.rest_port not in (0, sim.port)
    api = await _login(sim, tmp_path)
    assert api.getfeedToken()
    assert (tmp_path / "logs").is_dir()  # the SDK's side effect stayed in tmp_path
    profile = await asyncio.to_thread(api.getProfile, api.refresh_token)
    assert profile["data"]["clientcode"] == DEFAULT_CLIENT_CODE

    orderid = await asyncio.to_thread(api.placeOrder, _order())
    assert isinstance(orderid, str) and orderid
    full = await asyncio.to_thread(
        api.placeOrderFullResponse,
        _order(ordertype="LIMIT", price="1.00", ordertag="tag-2"),
    )
    assert full["status"] is True and full["data"]["uniqueorderid"]
    limit_id = full["data"]["orderid"]

    async def filled() -> dict[str, Any]:
        for _ in range(200):
            rows = {r["orderid"]: r for r in await _book(api)}
            if rows[orderid]["status"] == "complete":
                return rows
            await asyncio.sleep(0.02)
        raise AssertionError("market order never completed")

    rows = await filled()
    market = rows[orderid]
    assert market["ordertag"] == "tag-1"
    assert market["filledshares"] == "5" and market["unfilledshares"] == "0"
    assert isinstance(market["averageprice"], float) and market["averageprice"] > 0
    assert rows[limit_id]["status"] == "open"  # ₹1 is far below the market: it rests

    cancel = await asyncio.to_thread(api.cancelOrder, limit_id, "NORMAL")
    assert cancel["status"] is True
    rows = {r["orderid"]: r for r in await _book(api)}
    assert rows[limit_id]["status"] == "cancelled"
    again = await asyncio.to_thread(api.cancelOrder, limit_id, "NORMAL")
    assert again["status"] is False and again["errorcode"].startswith("AB")

    trades = (await asyncio.to_thread(api.tradeBook))["data"]
    assert [(t["orderid"], t["fillsize"]) for t in trades] == [(orderid, "5")]
    assert trades[0]["fillprice"] == market["averageprice"]
    positions = (await asyncio.to_thread(api.position))["data"]
    assert [(p["symboltoken"], p["netqty"]) for p in positions] == [("3045", "5")]

    details = await asyncio.to_thread(
        api.make_authenticated_get_request,
        f"{sim.rest_url}/rest/secure/angelbroking/order/v1/details/{full['data']['uniqueorderid']}",
        api.access_token,
    )
    assert details["data"]["orderid"] == limit_id
    ltp = await asyncio.to_thread(api.ltpData, "NSE", "SBIN-EQ", "3045")
    assert ltp["data"]["ltp"] > 0


async def test_bad_params_and_unknown_token_are_status_false(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    api = await _login(sim, tmp_path)
    for params, code in (
        (_order(token="99999"), "AB1009"),
        (_order(variety="WEIRD"), "AB1008"),
        (_order(quantity="0"), "AB2000"),
        (_order(ordertag="x" * 21), "AB4008"),
    ):
        assert await asyncio.to_thread(api.placeOrder, dict(params)) is None  # SDK: None
        full = await asyncio.to_thread(api.placeOrderFullResponse, dict(params))
        assert full["status"] is False and full["errorcode"] == code, full


async def test_login_checks_totp_and_secure_routes_need_auth(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    api = new_smartconnect("k", sim.rest_url, 5.0, tmp_path)
    wrong = "000000" if pyotp.TOTP(DEFAULT_TOTP_SECRET).now() != "000000" else "111111"
    bad = await asyncio.to_thread(api.generateSession, DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, wrong)
    assert bad["status"] is False and bad["errorcode"] == "AB1050"
    bad = await asyncio.to_thread(
        api.generateSession, DEFAULT_CLIENT_CODE, "nope", pyotp.TOTP(DEFAULT_TOTP_SECRET).now()
    )
    assert bad["status"] is False and bad["errorcode"] == "AB1000"
    async with aiohttp.ClientSession() as http:
        url = f"{sim.rest_url}/rest/secure/angelbroking/order/v1/getOrderBook"
        async with http.get(url, headers={"X-PrivateKey": "k"}) as r:
            assert r.status == 401
            body = await r.json()
        assert body == {"status": False, "message": "Token missing", "errorcode": "AG8003",
                        "data": None}  # fmt: skip
        async with http.get(url, headers={"Authorization": "Bearer forged"}) as r:
            assert r.status == 401 and (await r.json())["errorcode"] == "AG8001"
    with pytest.raises(InvalidStatus) as err:
        async with connect(sim.order_ws_url, additional_headers={"x-api-key": "k"}):
            pass
    assert err.value.response.status_code == 401


async def test_order_calls_over_20_per_second_get_the_plain_403(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    api = await _login(sim, tmp_path)
    async with aiohttp.ClientSession() as http:
        url = f"{sim.rest_url}/rest/secure/angelbroking/order/v1/placeOrder"
        headers = {"Authorization": f"Bearer {api.access_token}", "X-PrivateKey": "k"}
        statuses, texts = [], []
        for _ in range(25):  # well inside one second
            async with http.post(url, json=_order(token="99999"), headers=headers) as r:
                statuses.append(r.status)
                texts.append(await r.text())
    assert statuses[:20] == [200] * 20  # refusals for bad params still count as calls
    assert statuses[20:] == [403] * 5
    assert texts[-1] == RATE_LIMIT_TEXT
    # Through the SDK the 403 text becomes a DataException naming it.
    with pytest.raises(Exception, match="exceeding access rate"):
        await asyncio.to_thread(api.placeOrder, _order())
    await asyncio.sleep(1.05)  # the 1 s window slides
    assert await asyncio.to_thread(api.placeOrder, _order())


async def _updates(sim: ExchangeSimulator, api: Any, out: list[dict[str, Any]]) -> Any:
    headers = {
        "Authorization": f"Bearer {api.access_token}",
        "x-api-key": "k",
        "x-client-code": DEFAULT_CLIENT_CODE,
        "x-feed-token": api.getfeedToken(),
    }
    ws = await connect(sim.order_ws_url, additional_headers=headers, ping_interval=None)

    async def read() -> None:
        async for message in ws:
            out.append(json.loads(message))

    return ws, asyncio.create_task(read())


async def test_order_update_socket_pushes_events_in_the_live_shape(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    api = await _login(sim, tmp_path)
    events: list[dict[str, Any]] = []
    ws, reader = await _updates(sim, api, events)
    try:
        pong = await ws.ping(b"\x00")  # the server answers any PING with b"\x00"
        await asyncio.wait_for(pong, 2)
        orderid = await asyncio.to_thread(api.placeOrder, _order(quantity="2000"))
        await _until(lambda: any(e["order-status"] == "AB05" for e in events))
        codes = [e["order-status"] for e in events]
        assert codes == ["AB09", "AB01", "AB01", "AB05"]  # open pending, open, partial, done
        done = events[-1]
        assert done["user-id"] == DEFAULT_CLIENT_CODE and done["status-code"] == "200"
        data = done["orderData"]
        assert data["orderid"] == orderid and data["ordertag"] == "tag-1"
        assert data["status"] == "complete" and data["filledshares"] == "2000"
        assert data["unfilledshares"] == "0" and data["fillid"] and data["filltime"]
        assert events[2]["orderData"]["filledshares"] == "1000"  # the partial
        for key in ("uniqueorderid", "averageprice", "text", "exchorderupdatetime", "quantity"):
            assert key in data
        assert isinstance(data["quantity"], str) and isinstance(data["price"], float)
    finally:
        await ws.close()
        await reader


async def test_reject_fault_answers_success_then_pushes_rejected(tmp_path: Path) -> None:
    sim = await start_order_sim(order_faults=OrderFaults(reject_p=1.0))
    try:
        api = await _login(sim, tmp_path)
        events: list[dict[str, Any]] = []
        ws, reader = await _updates(sim, api, events)
        orderid = await asyncio.to_thread(api.placeOrder, _order())
        assert orderid  # accepted by REST...
        await _until(lambda: bool(events))
        assert events[0]["order-status"] == "AB03"  # ...then rejected by "RMS"
        assert events[0]["orderData"]["status"] == "rejected"
        assert events[0]["orderData"]["text"].startswith("RMS:")
        rows = await _book(api)
        assert rows[0]["status"] == "rejected"
        await ws.close()
        await reader
    finally:
        await sim.stop()


async def test_drop_fault_sends_nothing_but_the_book_has_the_truth(tmp_path: Path) -> None:
    sim = await start_order_sim(order_faults=OrderFaults(update_drop_p=1.0))
    try:
        api = await _login(sim, tmp_path)
        events: list[dict[str, Any]] = []
        ws, reader = await _updates(sim, api, events)
        orderid = await asyncio.to_thread(api.placeOrder, _order())
        await _until(lambda: sim.orders is not None and sim.orders.updates_dropped >= 3)
        await asyncio.sleep(0.1)
        assert events == []
        rows = await _book(api)
        assert rows[0]["orderid"] == orderid and rows[0]["status"] == "complete"
        await ws.close()
        await reader
    finally:
        await sim.stop()


async def test_rate_limit_burst_flag_forces_403s(tmp_path: Path) -> None:
    sim = await start_order_sim(order_faults=OrderFaults(rate_limit_burst=2))
    try:
        api = await _login(sim, tmp_path)
        for _ in range(2):
            with pytest.raises(Exception, match="exceeding access rate"):
                await asyncio.to_thread(api.placeOrder, _order())
        assert await asyncio.to_thread(api.placeOrder, _order())
    finally:
        await sim.stop()


def test_cli_flags() -> None:
    args = build_parser().parse_args(
        ["--port", "9000", "--rest-port", "0", "--order-reject-rate", "0.5",
         "--order-update-drop-rate", "0.25", "--rate-limit-burst", "3", "--totp-secret", "ABC"]
    )  # fmt: skip
    assert (args.rest_port, args.order_reject_rate, args.order_update_drop_rate) == (0, 0.5, 0.25)
    assert (args.rate_limit_burst, args.totp_secret) == (3, "ABC")
    assert build_parser().parse_args([]).rest_port is None  # = --port + 1 at start
