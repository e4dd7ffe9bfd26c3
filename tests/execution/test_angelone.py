"""The Angel One adapter against the simulator's order side on 127.0.0.1 (real SDK, real
sockets, our own order-update client), in the same process as the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest
from structlog.testing import capture_logs

from chimera_core.config import AngelOneConfig
from chimera_core.contracts import (
    ExecKind,
    ExecutionReport,
    OrderRequest,
    OrderStatus,
    OrderType,
    Purpose,
    Side,
)
from chimera_core.errors import AuthError, BrokerError, BrokerReject, RateLimited
from chimera_execution.brokers.angelone import AngelOneBroker, ordertag_for
from tests.loopback import free_port, start_order_sim
from tools.sim.orders import DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET, OrderFaults
from tools.sim.server import ExchangeSimulator

pytestmark = pytest.mark.timeout(60)

API_KEY = "sim_api_key_123"
SYMBOLS = {"3045": "SBIN-EQ", "2885": "RELIANCE-EQ", "1594": "INFY-EQ"}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
async def sim() -> AsyncIterator[ExchangeSimulator]:
    server = await start_order_sim()
    yield server
    await server.stop()


class Reports(list[ExecutionReport]):
    def kinds(self, coid: str) -> list[ExecKind]:
        return [r.kind for r in self if r.client_order_id == coid]


def _broker(
    sim: ExchangeSimulator,
    reports: Reports,
    state_dir: Path,
    *,
    totp_secret: str = DEFAULT_TOTP_SECRET,
    password: str = DEFAULT_PASSWORD,
    poll_interval_s: float = 0.2,
) -> AngelOneBroker:
    cfg = AngelOneConfig(
        rest_url=sim.rest_url,
        order_ws_url=sim.order_ws_url,
        symbols=SYMBOLS,
        request_timeout_s=5.0,
        poll_interval_s=poll_interval_s,
    )
    return AngelOneBroker(
        cfg, API_KEY, DEFAULT_CLIENT_CODE, password, totp_secret, reports.append,
        state_dir=state_dir,
    )  # fmt: skip


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def _req(coid: str, **over: Any) -> OrderRequest:
    fields: dict[str, Any] = {
        "client_order_id": coid,
        "intent_id": f"intent-{coid}",
        "token": "3045",
        "exchange_type": 1,
        "side": Side.BUY,
        "qty": 10,
    }
    fields.update(over)
    return OrderRequest(**fields)


def _assert_no_duplicate_fills(reports: Reports) -> None:
    ids = [r.fill.fill_id for r in reports if r.fill is not None]
    assert len(ids) == len(set(ids)), ids


async def _connected(sim: ExchangeSimulator, reports: Reports, tmp: Path, **kw: Any) -> Any:
    broker = _broker(sim, reports, tmp, **kw)
    await broker.connect()
    await asyncio.wait_for(broker.stream_connected.wait(), 5)
    return broker


async def test_login_then_market_order_acks_and_fills(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path, poll_interval_s=30.0)
    try:
        assert broker.name == "angelone"
        orderid = await broker.place(_req("CH-1-3045-1-1", purpose=Purpose.ENTRY))
        await _until(lambda: ExecKind.FILLED in reports.kinds("CH-1-3045-1-1"))
        assert reports.kinds("CH-1-3045-1-1") == [ExecKind.ACK, ExecKind.FILLED]
        filled = reports[-1]
        assert filled.broker_order_id == orderid and filled.intent_id == "intent-CH-1-3045-1-1"
        assert (filled.order_qty, filled.filled_qty, filled.final) == (10, 10, False)
        assert filled.fill is not None and filled.fill.qty == 10 and filled.fill.charges == 0.0
        assert filled.fill.price == pytest.approx(filled.avg_price) and filled.avg_price > 0
        assert filled.exchange_ts_ms > 0 and filled.at_ns > 0
        assert broker.polls == 0  # everything came over the socket
        fills = await broker.fills()
        assert [(f.fill_id, f.client_order_id, f.qty) for f in fills] == [
            (filled.fill.fill_id, "CH-1-3045-1-1", 10)
        ]
        (order,) = await broker.order_book()
        assert (order.status, order.client_order_id, order.filled_qty) == (
            OrderStatus.FILLED, "CH-1-3045-1-1", 10,
        )  # fmt: skip
        (position,) = await broker.positions()
        assert (position.token, position.qty) == ("3045", 10)
        assert position.avg_price == pytest.approx(filled.avg_price, abs=0.01)
        broker.on_tick(None)  # type: ignore[arg-type]  # live: a no-op
    finally:
        await broker.close()


async def test_large_market_order_partial_then_filled(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path, poll_interval_s=30.0)
    try:
        await broker.place(_req("big", qty=2000, side=Side.SELL))
        await _until(lambda: ExecKind.FILLED in reports.kinds("big"))
        assert reports.kinds("big") == [ExecKind.ACK, ExecKind.PARTIAL, ExecKind.FILLED]
        assert [r.filled_qty for r in reports[1:]] == [1000, 2000]
        fills = await broker.fills()
        assert sorted(f.fill_id for f in fills) == sorted(r.fill.fill_id for r in reports[1:])
    finally:
        await broker.close()


async def test_limit_rests_then_cancel_reports_cancelled(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path)
    try:
        await broker.place(_req("lim", order_type=OrderType.LIMIT, limit_price=1.0))
        await _until(lambda: ExecKind.ACK in reports.kinds("lim"))
        (order,) = await broker.order_book()
        assert order.status == OrderStatus.OPEN and order.limit_price == 1.0
        await broker.cancel("lim")
        await _until(lambda: ExecKind.CANCELLED in reports.kinds("lim"))
        await asyncio.sleep(0.5)  # polls run meanwhile: no second CANCELLED
        assert reports.kinds("lim") == [ExecKind.ACK, ExecKind.CANCELLED]
        await broker.cancel("lim")  # terminal: no-op
        await broker.cancel("never-sent")  # unknown: no-op
    finally:
        await broker.close()


async def test_rms_reject_becomes_rejected_report(tmp_path: Path) -> None:
    sim = await start_order_sim(order_faults=OrderFaults(reject_p=1.0))
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path)
    try:
        await broker.place(_req("rej"))
        await _until(lambda: bool(reports.kinds("rej")))
        await asyncio.sleep(0.5)
        assert reports.kinds("rej") == [ExecKind.REJECTED]
        assert reports[0].reason.startswith("RMS:Margin Exceeds")
    finally:
        await broker.close()
        await sim.stop()


async def test_refusals_and_rate_limit_are_typed(sim: ExchangeSimulator, tmp_path: Path) -> None:
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path)
    try:
        assert sim.orders is not None
        sim.orders.force_rate_limit(1)
        with pytest.raises(RateLimited, match="access rate"):
            await broker.place(_req("rl"))
        with pytest.raises(BrokerReject, match=r"execution\.angelone\.symbols"):
            await broker.place(_req("nosym", token="11536"))
        with pytest.raises(BrokerReject, match="AB1009"):
            await broker.place(_req("unknown", symbol="FOO-EQ", token="99999"))
        assert await broker.place(_req("ok"))  # the burst is over
    finally:
        await broker.close()


async def test_login_failures_are_auth_errors_without_secrets(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    other = pyotp.random_base32(32)
    with capture_logs() as logs:
        with pytest.raises(AuthError) as err:
            await _broker(sim, Reports(), tmp_path, totp_secret=other).connect()
        message = str(err.value)
        assert "CHIMERA_TOTP_SECRET" in message and "AB1050" in message
        with pytest.raises(AuthError) as err2:
            await _broker(sim, Reports(), tmp_path, password="hunter2-secret").connect()
        with pytest.raises(AuthError, match="base32") as err3:
            await _broker(sim, Reports(), tmp_path, totp_secret="not/base32!").connect()
    for text in (message, str(err2.value), str(err3.value), repr(logs)):
        for secret in (other, "hunter2-secret", "not/base32!", API_KEY):
            assert secret not in text


async def test_dropped_updates_are_recovered_by_the_poll_without_duplicates(
    tmp_path: Path,
) -> None:
    sim = await start_order_sim(order_faults=OrderFaults(update_drop_p=1.0))
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path, poll_interval_s=0.1)
    try:
        await broker.place(_req("lost", qty=2000))
        await broker.place(_req("lost-small", token="2885", qty=3))
        await _until(
            lambda: (
                ExecKind.FILLED in reports.kinds("lost")
                and ExecKind.FILLED in reports.kinds("lost-small")
            )
        )
        await broker.poll_once()  # one more look changes nothing
        await asyncio.sleep(0.3)
        assert reports.kinds("lost-small") == [ExecKind.ACK, ExecKind.FILLED]
        big = reports.kinds("lost")
        assert big[0] == ExecKind.ACK and big[-1] == ExecKind.FILLED
        assert sum(r.fill.qty for r in reports if r.fill and r.client_order_id == "lost") == 2000
        _assert_no_duplicate_fills(reports)
        book_ids = {f.fill_id for f in await broker.fills()}
        assert {r.fill.fill_id for r in reports if r.fill} == book_ids  # same ids as the book
        assert sim.orders is not None and sim.orders.updates_sent == 0
    finally:
        await broker.close()
        await sim.stop()


async def test_order_socket_drop_reconnects_and_keeps_delivering(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path, poll_interval_s=30.0)
    try:
        assert sim.orders is not None
        for n in (2, 3):
            await sim.orders.drop_order_sockets()
            await _until(lambda n=n: broker.stream_connects >= n and sim.orders.order_sockets == 1)
        await broker.place(_req("after-drop"))
        await _until(lambda: ExecKind.FILLED in reports.kinds("after-drop"))
        assert reports.kinds("after-drop") == [ExecKind.ACK, ExecKind.FILLED]
    finally:
        await broker.close()
    await _until(lambda: sim.orders.order_sockets == 0)  # close() closed our socket


def test_ordertag_is_short_and_deterministic() -> None:
    coid = "CH-1-2885-1704771900000-12-child-3"
    assert ordertag_for(coid) == ordertag_for(coid) != ordertag_for(coid + "x")
    assert len(ordertag_for(coid)) <= 20


async def test_restart_recovers_client_order_ids_from_ordertags(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    first = Reports()
    broker = await _connected(sim, first, tmp_path)
    await broker.place(_req("CH-1-3045-9-1", purpose=Purpose.STOP_LOSS, side=Side.SELL, qty=4))
    await broker.place(
        _req("CH-1-2885-9-2", token="2885", order_type=OrderType.LIMIT, limit_price=1.0)
    )
    await _until(
        lambda: (
            ExecKind.FILLED in first.kinds("CH-1-3045-9-1")
            and ExecKind.ACK in first.kinds("CH-1-2885-9-2")
        )
    )
    await broker.close()

    second = Reports()
    fresh = await _connected(sim, second, tmp_path)  # same state_dir, new instance
    try:
        book = {o.client_order_id: o for o in await fresh.order_book()}
        assert set(book) == {"CH-1-3045-9-1", "CH-1-2885-9-2"}
        sl = book["CH-1-3045-9-1"]
        assert (sl.status, sl.purpose, sl.intent_id, sl.side) == (
            OrderStatus.FILLED, Purpose.STOP_LOSS, "intent-CH-1-3045-9-1", Side.SELL,
        )  # fmt: skip
        assert book["CH-1-2885-9-2"].status == OrderStatus.OPEN
        (fill,) = await fresh.fills()
        assert fill.client_order_id == "CH-1-3045-9-1" and fill.side == Side.SELL
        assert fill.fill_id == next(r.fill.fill_id for r in first if r.fill)
        assert second == []  # adopted history is not reported again
        await fresh.cancel("CH-1-2885-9-2")  # the adopted open order is still ours
        await _until(lambda: second.kinds("CH-1-2885-9-2") == [ExecKind.CANCELLED])
        assert second[0].intent_id == "intent-CH-1-2885-9-2"
        positions = {p.token: p.qty for p in await fresh.positions()}
        assert positions == {"3045": -4}
    finally:
        await fresh.close()


async def test_unreachable_broker_is_a_broker_error_not_a_reject(tmp_path: Path) -> None:
    cfg = AngelOneConfig(rest_url=f"http://127.0.0.1:{free_port()}", request_timeout_s=2.0)
    broker = AngelOneBroker(
        cfg, API_KEY, DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET,
        Reports().append, state_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(BrokerError, match="reachable") as err:
        await broker.connect()
    assert not isinstance(err.value, (AuthError, BrokerReject))
    assert DEFAULT_PASSWORD not in str(err.value).replace(cfg.rest_url, "")


async def test_an_expired_session_logs_in_again_and_the_call_goes_through(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    """Angel One's tokens expire overnight: the refused call triggers one fresh login and is
    retried once (it was refused, so nothing was done twice)."""
    reports = Reports()
    broker = await _connected(sim, reports, tmp_path, poll_interval_s=30.0)
    try:
        old = broker.feed_headers()
        logins: list[dict[str, str] | None] = []
        broker.on_login = lambda: logins.append(broker.feed_headers())  # the feed's hook
        assert sim.orders is not None
        sim.orders.expire_sessions()
        with capture_logs() as logs:
            await broker.place(_req("CH-1-3045-9-0"))
        assert [e["event"] for e in logs].count("angelone_relogin") == 1
        await _until(lambda: ExecKind.FILLED in reports.kinds("CH-1-3045-9-0"))
        assert len(await broker.order_book()) == 1  # one order, not two
        assert logins == [broker.feed_headers()] and logins[0] != old  # new tokens to the feed
        # A second expiry within RELOGIN_EVERY_S is not retried: no login loop.
        sim.orders.expire_sessions()
        with pytest.raises(AuthError):
            await broker.place(_req("CH-1-3045-9-1"))
    finally:
        await broker.close()
