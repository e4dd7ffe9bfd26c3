"""A hypothesis state machine over bars (marks), signals and fills: whatever the order,
no entry the portfolio rules let through ever breaks one of their limits, each checked
by an independent numpy computation on the same window."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chimera_core.config import PortfolioConfig
from chimera_core.contracts import Side
from chimera_governance.portfolio import PortfolioRisk
from tests.governance.test_portfolio import account

TOKENS = ["A", "B", "C", "D"]
CFG = PortfolioConfig(
    risk_sizing=True,
    stop_risk=0.01,
    max_order_fraction=0.2,
    max_entries_per_session=12,
    max_orders_per_minute=3,
    var_limit=0.02,
    cvar_limit=0.03,
    var_confidence="95",
    returns_window=30,
    cluster_rho=0.6,
    cluster_max_exposure=0.4,
    vol_target=0.03,
)
HORIZON = 25
COSTS = (47.26, 0.0001, 0.0003)


class Book(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.risk = PortfolioRisk(
            CFG, tokens=TOKENS, stop_atr_multiple=2.0, costs=COSTS, horizon=HORIZON
        )
        self.marks = {t: 100.0 + 10 * i for i, t in enumerate(TOKENS)}
        self.closes: list[dict[str, float]] = []
        self.pos: dict[str, int] = {}
        self.ts = 1_764_000_000_000
        self.day = 0
        self.entries: deque[int] = deque()
        self.today = 0
        for t in TOKENS:
            self.risk.on_bar(t, self.ts, self.marks[t])

    @rule(
        moves=st.lists(st.floats(-0.03, 0.03), min_size=4, max_size=4),
        common=st.floats(-0.02, 0.02),
    )
    def bar(self, moves, common):
        self.ts += 60_000
        for t, m in zip(TOKENS, moves, strict=True):
            self.marks[t] *= 1.0 + m + common
            self.risk.on_bar(t, self.ts, self.marks[t])
        self.closes.append(dict(self.marks))

    @rule(seconds=st.integers(1, 90))
    def wait(self, seconds):
        self.ts += seconds * 1000

    @rule()
    def next_session(self):
        self.day += 1
        self.today = 0

    @rule(token=st.sampled_from(TOKENS))
    def exit(self, token):
        self.pos.pop(token, None)

    @rule(
        token=st.sampled_from(TOKENS),
        buy=st.booleans(),
        lots=st.integers(1, 4_000),
        atr=st.floats(0.05, 5.0),
        lot=st.sampled_from([1, 5, 25]),
    )
    def signal(self, token, buy, lots, atr, lot):
        wanted = lots * lot  # the capital brain sizes in whole lots
        side = Side.BUY if buy else Side.SELL
        held = self.pos.get(token, 0)
        if held and (held > 0) != buy:
            return  # exposure.fit refuses an opposite entry before the portfolio sees it
        acct = account(self.pos, self.marks)
        price = self.marks[token]
        qty, vetoes = self.risk.size(acct, token, side, wanted, price, atr, lot)
        if qty <= 0:
            assert vetoes  # refused with its rule
            return
        assert qty % lot == 0 and qty <= wanted
        vetoes = self.risk.vetoes(acct, token, side, qty, price, self.ts, self.day)
        if vetoes:
            return
        self._check(acct, token, side, qty, price, atr)
        self.risk.record_entry(self.ts, self.day)
        self.entries.append(self.ts)
        self.today += 1
        self.pos[token] = held + (qty if buy else -qty)  # filled at the price

    def _check(self, acct, token, side, qty, price, atr):
        eq = acct.equity
        s = 1 if side is Side.BUY else -1
        stop = 2.0 * atr
        exit_price = price - s * stop
        buy_px, sell_px = (price, exit_price) if s > 0 else (exit_price, price)
        loss = qty * stop + COSTS[0] + qty * (COSTS[1] * buy_px + COSTS[2] * sell_px)
        assert loss <= CFG.stop_risk * eq * (1 + 1e-12)
        assert qty * price <= CFG.max_order_fraction * eq
        while self.entries and self.entries[0] <= self.ts - 60_000:
            self.entries.popleft()
        assert len(self.entries) + 1 <= CFG.max_orders_per_minute
        assert self.today + 1 <= CFG.max_entries_per_session
        # Book risk from the closes alone.
        rows = [{t: 100.0 + 10 * i for i, t in enumerate(TOKENS)}, *self.closes]
        if len(rows) < 3:
            return
        px = np.array([[r[t] for t in TOKENS] for r in rows])
        rets = (px[1:] / px[:-1] - 1.0)[-CFG.returns_window :]
        w = np.array([self.pos.get(t, 0) * self.marks[t] for t in TOKENS])
        j = TOKENS.index(token)
        w[j] += s * qty * price
        losses = -(rets @ w) * math.sqrt(HORIZON)
        var = np.quantile(losses, 0.95, method="inverted_cdf")
        k = math.ceil(round(0.95 * len(losses), 9))
        cvar = np.sort(losses)[k - 1 :].mean()
        assert var <= CFG.var_limit * eq * (1 + 1e-9)
        assert cvar <= CFG.cvar_limit * eq * (1 + 1e-9)
        cov = np.cov(rets.T) * HORIZON
        assert math.sqrt(max(0.0, w @ cov @ w)) <= CFG.vol_target * eq * (1 + 1e-9)
        corr = np.nan_to_num(np.corrcoef(rets.T))
        members = _component(corr > CFG.cluster_rho, j)
        if len(members) > 1:
            gross = sum(abs(w[i]) for i in members)
            assert gross <= CFG.cluster_max_exposure * eq * (1 + 1e-9)

    @invariant()
    def entries_within_budgets(self):
        assert self.today <= CFG.max_entries_per_session


def _component(adj: np.ndarray, start: int) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        i = todo.pop()
        for k in np.nonzero(adj[i])[0].tolist():
            if k != i and k not in seen:
                seen.add(k)
                todo.append(k)
    return seen


Book.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
TestBook = Book.TestCase
