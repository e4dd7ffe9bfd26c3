"""Exposure caps hold on the position and the book, whatever the signals, fills, partial
fills, rejects and price moves (a hypothesis state machine over the real Account,
PositionBook and ``fit``, checked against caps recomputed independently here)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chimera_core.account import Account
from chimera_core.contracts import Fill, Side
from chimera_core.position_book import PositionBook
from chimera_governance.exposure import ExposureLimits, fit

TOKENS = ("A", "B", "C", "D")
LIMITS = ExposureLimits(
    max_position_value=150_000.0,
    max_position_qty=2_000,
    max_gross_exposure=1.5,
    max_net_exposure=0.8,
    max_open_positions=3,
    max_entries_per_position=2,
)
CASH = 300_000.0


def _independent_exposure(book: PositionBook, working: dict[str, int], marks: dict[str, float]):
    gross = net = 0.0
    for token in TOKENS:
        qty = book.get(token).qty + working.get(token, 0)
        gross += abs(qty) * marks[token]
        net += qty * marks[token]
    return gross, net


class Book(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.account = Account(CASH)
        self.book = PositionBook()
        self.marks = dict.fromkeys(TOKENS, 100.0)
        self.working: dict[str, int] = {}  # token → signed qty of the entry still working
        self.intent_ids: dict[str, str] = {}
        self.n = 0

    def snapshot(self):
        return self.account.snapshot(self.book, self.marks, self.working)

    @rule(token=st.sampled_from(TOKENS), buy=st.booleans(), qty=st.integers(1, 5_000))
    def signal(self, token: str, buy: bool, qty: int) -> None:
        if token in self.working:
            return  # one intent per symbol at a time (the state machine's EXECUTE)
        side = Side.BUY if buy else Side.SELL
        before = self.snapshot()
        price = self.marks[token]
        got, veto = fit(before, token, side, qty, price, LIMITS)
        assert 0 <= got <= qty
        assert (got == 0) == (veto is not None)
        if got == 0:
            return
        sign = 1 if buy else -1
        # Independent check of every cap, at the check price, with the entry working.
        held = self.book.get(token).qty
        after_qty = held + sign * got
        assert abs(after_qty) * price <= LIMITS.max_position_value + 1e-6
        assert abs(after_qty) <= LIMITS.max_position_qty
        working = {**self.working, token: sign * got}
        gross, net = _independent_exposure(self.book, working, self.marks)
        assert gross <= LIMITS.max_gross_exposure * before.equity + 1e-6
        assert abs(net) <= LIMITS.max_net_exposure * before.equity + 1e-6 or abs(net) < abs(
            before.net_exposure
        )
        opened = sum(1 for t in TOKENS if self.book.get(t).qty or working.get(t))
        assert opened <= LIMITS.max_open_positions
        assert held == 0 or held * sign > 0  # never against an open position
        self.working[token] = sign * got
        self.n += 1
        self.intent_ids[token] = f"I{self.n}"

    @precondition(lambda self: bool(self.working))
    @rule(data=st.data(), share=st.floats(0.05, 1.0))
    def fill(self, data: st.DataObject, share: float) -> None:
        token = data.draw(st.sampled_from(sorted(self.working)))
        signed = self.working[token]
        qty = max(1, int(abs(signed) * share))
        side = Side.BUY if signed > 0 else Side.SELL
        self.n += 1
        price = self.marks[token]
        fill = Fill(f"F{self.n}", self.intent_ids[token], token, side, qty, price, 0.0, self.n)
        self.account.on_fill(fill)
        self.book.apply(fill, None, self.intent_ids[token])
        left = abs(signed) - qty
        if left > 0:
            self.working[token] = left if signed > 0 else -left
        else:
            del self.working[token]

    @precondition(lambda self: bool(self.working))
    @rule(data=st.data())
    def reject_or_cancel(self, data: st.DataObject) -> None:
        del self.working[data.draw(st.sampled_from(sorted(self.working)))]

    @rule(token=st.sampled_from(TOKENS), move=st.floats(-0.05, 0.05))
    def mark(self, token: str, move: float) -> None:
        self.marks[token] = max(1.0, self.marks[token] * (1.0 + move))

    @rule(token=st.sampled_from(TOKENS))
    def exit(self, token: str) -> None:
        pos = self.book.get(token)
        if pos.qty == 0 or token in self.working:
            return
        self.n += 1
        side = Side.SELL if pos.qty > 0 else Side.BUY
        fill = Fill(
            f"X{self.n}", f"X{self.n}", token, side, abs(pos.qty), self.marks[token], 0.0, 0
        )
        self.account.on_fill(fill)
        self.book.apply(fill)

    @invariant()
    def account_agrees_with_an_independent_sum(self) -> None:
        snap = self.snapshot()
        held = sum(self.book.get(t).qty * self.marks[t] for t in TOKENS)
        assert snap.equity == pytest.approx(self.account.cash + held, rel=1e-9, abs=1e-6)
        assert snap.open_positions == sum(1 for t in TOKENS if self.book.get(t).qty)
        entries = {t: self.book.get(t).entries for t in TOKENS if self.book.get(t).qty}
        assert snap.entries == entries
        assert all(n <= LIMITS.max_entries_per_position for n in entries.values())


Book.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestBook = Book.TestCase


def _snapshot(positions: dict[str, int], price: float = 100.0, cash: float = 1e6):
    book = PositionBook()
    account = Account(cash)
    for i, (token, qty) in enumerate(positions.items()):
        side = Side.BUY if qty > 0 else Side.SELL
        fill = Fill(f"f{i}", f"e{i}", token, side, abs(qty), price, 0.0, 0)
        account.on_fill(fill)
        book.apply(fill, None, f"e{i}")
    return account.snapshot(book, dict.fromkeys(positions, price), {})


def test_each_cap_names_itself_with_the_numbers():
    limits = ExposureLimits(max_position_value=50_000.0, max_open_positions=2)
    # A held long of 400 at 100 = 40,000: 100 more units fit under 50,000, not 200.
    qty, veto = fit(_snapshot({"A": 400}), "A", Side.BUY, 200, 100.0, limits)
    assert (qty, veto) == (0, pytest.approx(veto)) or qty == 0
    assert veto is not None and veto.rule == "pyramiding"  # one entry per position
    limits2 = ExposureLimits(max_position_value=50_000.0, max_entries_per_position=3)
    qty, veto = fit(_snapshot({"A": 400}), "A", Side.BUY, 200, 100.0, limits2)
    assert qty == 100 and veto is None
    qty, veto = fit(_snapshot({"A": 500}), "A", Side.BUY, 10, 100.0, limits2)
    assert qty == 0 and veto.rule == "position_value" and veto.value == 50_100.0
    qty, veto = fit(_snapshot({"A": 1, "B": 1}), "C", Side.BUY, 10, 100.0, limits)
    assert qty == 0 and veto.rule == "open_positions" and (veto.value, veto.limit) == (3, 2)
    qty, veto = fit(_snapshot({"A": -5}), "A", Side.BUY, 10, 100.0, limits)
    assert qty == 0 and veto.rule == "opposite_position"


def test_gross_and_net_caps_are_multiples_of_the_accounts_equity():
    limits = ExposureLimits(
        max_position_value=1e9, max_gross_exposure=1.0, max_net_exposure=0.5, max_open_positions=9
    )
    snap = _snapshot({"A": 3_000}, cash=1_000_000.0)  # 300,000 long, equity 1,000,000
    qty, veto = fit(snap, "B", Side.BUY, 10_000, 100.0, limits)
    assert qty == 2_000 and veto is None  # net 0.5 x 1,000,000 - 300,000 = 200,000
    qty, veto = fit(snap, "B", Side.SELL, 10_000, 100.0, limits)
    assert qty == 7_000  # a short offsets net; gross 1.0 x equity - 300,000 leaves 700,000
    assert math.isclose(snap.equity, 1_000_000.0)
