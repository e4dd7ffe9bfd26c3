"""Order lifecycle events in any order, applied to a real journal, against a plain model."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chimera_core.contracts import (
    TERMINAL_STATUSES,
    ExecKind,
    ExecutionReport,
    Fill,
    OrderRequest,
    OrderStatus,
    Side,
)
from chimera_core.errors import DuplicateOrder
from chimera_execution.journal import Journal

# Forward order of the working statuses; terminal ones are absorbing.
FORWARD = [OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.PARTIAL]
STATUS_OF = {
    ExecKind.ACK: OrderStatus.OPEN,
    ExecKind.PARTIAL: OrderStatus.PARTIAL,
    ExecKind.FILLED: OrderStatus.FILLED,
    ExecKind.REJECTED: OrderStatus.REJECTED,
    ExecKind.CANCELLED: OrderStatus.CANCELLED,
}


def next_status(current: OrderStatus, kind: ExecKind) -> OrderStatus:
    if current in TERMINAL_STATUSES:
        return current
    wanted = STATUS_OF[kind]
    if wanted in TERMINAL_STATUSES:
        return wanted
    return wanted if FORWARD.index(wanted) > FORWARD.index(current) else current


class OrderLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="chimera-lifecycle-")
        self.journal = Journal(self.dir, "paper", synchronous="NORMAL", starting_cash=1e6)
        # The model: plain dicts, one per order.
        self.model: dict[str, dict] = {}
        self.sent: list[ExecutionReport] = []
        self.seen_filled: dict[str, int] = {}
        self.seen_terminal: dict[str, OrderStatus] = {}
        self.n = 0

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- events --------------------------------------------------------------------------

    @rule(qty=st.integers(1, 50), side=st.sampled_from(Side), token=st.sampled_from("AB"))
    def new_order(self, qty: int, side: Side, token: str) -> None:
        self.n += 1
        coid = f"c{self.n}"
        req = OrderRequest(coid, "I" + coid, token, 1, side, qty)
        self.journal.record_order(req)
        self.model[coid] = {
            "req": req, "status": OrderStatus.PENDING, "filled": 0, "broker_filled": 0,
            "broker_avg": 0.0, "fills": {}, "rejected": False,
        }  # fmt: skip

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def timeout_then_retry(self, data: st.DataObject) -> None:
        coid = data.draw(st.sampled_from(sorted(self.model)))
        before = len(self.journal.orders())
        try:
            self.journal.record_order(self.model[coid]["req"])
            raise AssertionError("a journaled client_order_id was accepted twice")
        except DuplicateOrder:
            pass
        assert len(self.journal.orders()) == before

    def _send(self, coid: str, kind: ExecKind, fill: Fill | None = None) -> None:
        m = self.model[coid]
        req = m["req"]
        rep = ExecutionReport(
            kind=kind, client_order_id=coid, intent_id=req.intent_id, token=req.token,
            side=req.side, order_qty=req.qty, filled_qty=m["broker_filled"],
            avg_price=m["broker_avg"], broker_order_id="B" + coid, fill=fill,
        )  # fmt: skip
        self._apply(rep)

    def _apply(self, rep: ExecutionReport) -> None:
        m = self.model[rep.client_order_id]
        new_fill = rep.fill is not None and rep.fill.fill_id not in m["fills"]
        changed = self.journal.apply_report(rep)
        if new_fill:
            m["fills"][rep.fill.fill_id] = rep.fill  # type: ignore[union-attr]
            assert changed
        m["status"] = next_status(m["status"], rep.kind)
        m["filled"] = max(m["filled"], rep.filled_qty, sum(f.qty for f in m["fills"].values()))
        self.sent.append(rep)

    def _pick(self, data: st.DataObject, ok) -> str | None:
        candidates = sorted(c for c, m in self.model.items() if ok(m))
        return data.draw(st.sampled_from(candidates)) if candidates else None

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        coid = self._pick(data, lambda m: not m["rejected"])
        if coid:
            self._send(coid, ExecKind.ACK)

    @rule(data=st.data(), price=st.integers(100, 10_000).map(lambda p: p / 10))
    def fill(self, data: st.DataObject, price: float) -> None:
        # The broker fills whatever it still has, whatever the journal thinks: this is also
        # the late fill after a cancel.
        coid = self._pick(data, lambda m: not m["rejected"] and m["broker_filled"] < m["req"].qty)
        if coid is None:
            return
        m = self.model[coid]
        req = m["req"]
        qty = data.draw(st.integers(1, req.qty - m["broker_filled"]))
        total = m["broker_filled"] + qty
        m["broker_avg"] = (m["broker_avg"] * m["broker_filled"] + price * qty) / total
        m["broker_filled"] = total
        f = Fill(f"B{coid}-{len(m['fills']) + 1}", coid, req.token, req.side, qty, price, 0.5, 0)
        self._send(coid, ExecKind.FILLED if total == req.qty else ExecKind.PARTIAL, f)

    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        coid = self._pick(data, lambda m: m["broker_filled"] == 0)
        if coid:
            self.model[coid]["rejected"] = True
            self._send(coid, ExecKind.REJECTED)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        coid = self._pick(data, lambda m: not m["rejected"] and m["broker_filled"] < m["req"].qty)
        if coid:
            self._send(coid, ExecKind.CANCELLED)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def duplicate_update(self, data: st.DataObject) -> None:
        rep = data.draw(st.sampled_from(self.sent))
        fills_before = len(self.journal.fills())
        self._apply(rep)
        assert len(self.journal.fills()) == fills_before  # a second copy books nothing

    # ---- invariants ----------------------------------------------------------------------

    @invariant()
    def journal_agrees_with_model(self) -> None:
        orders = {o.client_order_id: o for o in self.journal.orders()}
        assert set(orders) == set(self.model)
        for coid, m in self.model.items():
            o = orders[coid]
            assert o.filled_qty <= o.qty
            assert o.filled_qty >= self.seen_filled.get(coid, 0), "filled_qty went backwards"
            self.seen_filled[coid] = o.filled_qty
            if coid in self.seen_terminal:
                assert o.status is self.seen_terminal[coid], "a terminal status reverted"
            if o.status in TERMINAL_STATUSES:
                self.seen_terminal[coid] = o.status
            assert (o.status, o.filled_qty) == (m["status"], m["filled"]), coid

    @invariant()
    def fills_booked_once_and_positions_add_up(self) -> None:
        fills = self.journal.fills()
        ids = [f.fill_id for f in fills]
        assert len(ids) == len(set(ids))
        assert sorted(ids) == sorted(i for m in self.model.values() for i in m["fills"])
        by_token: dict[str, int] = {}
        for f in fills:
            by_token[f.token] = by_token.get(f.token, 0) + (f.qty if f.side is Side.BUY else -f.qty)
        held = {p.token: p.qty for p in self.journal.positions()}
        for token in set(by_token) | set(held):
            assert held.get(token, 0) == by_token.get(token, 0)

    @invariant()
    def journal_check_is_clean(self) -> None:
        assert self.journal.check() == []


OrderLifecycle.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestOrderLifecycle = OrderLifecycle.TestCase
