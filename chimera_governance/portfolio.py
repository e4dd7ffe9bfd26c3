"""Portfolio risk: rules on the whole book, beside meta-risk's per-entry rules.

Every rule is optional (``[governance.portfolio]``, chimera_core.config.PortfolioConfig) and
off by default. State is explicit and time is an input: bar returns are kept per closed
bar (never per tick), the statistics (covariance, correlation, clusters) are recomputed
lazily at the first intent after a bar closed, and entries are counted by exchange time,
so a replay of the same frames and reports gives the same numbers bit for bit.

Returns: for each symbol the simple return of its bar close on the previous bar close,
kept by bar end time for the last ``returns_window`` bar ends seen. A symbol without a
bar at some bar end (no ticks) has return 0 there (its price did not move). Statistics
need at least two bar ends; before that every statistic is 0 and the rules that need
them are silent.

Book: each symbol's value held and working, ``(held + working) x its last bar close`` (the
prices the returns are measured on; recomputed when a bar closes or the positions change,
not per tick), plus the candidate entry ``+/- qty x price`` at the intent's price.
Historical P&L scenarios are ``R @ w`` (one per kept bar end); the 1-day loss is scaled
by ``sqrt(h)`` with ``h`` bars in a day (``var_horizon_bars``, or the market's session
length over the bar interval); the covariance by ``h``.

=================== =============================================== ==========================
rule                value                                           limit
=================== =============================================== ==========================
stop_risk           loss of one lot at the bracket stop + charges   stop_risk x equity
order_value         value of one lot, rupees                        max_order_fraction x eq.
vol_target          1-day book volatility with one more lot, rupees vol_target x equity
cluster_exposure    cluster's gross value with one more lot         cluster_max_exposure x eq.
entries_per_session entries let through this session, all symbols   max_entries_per_session
order_rate          entries let through in the last 60 s            max_orders_per_minute
var                 1-day historical VaR of book + entry, rupees    var_limit x equity
cvar                1-day historical CVaR of book + entry, rupees   cvar_limit x equity
=================== =============================================== ==========================

Sizing rules (stop_risk, order_value, vol_target, cluster_exposure) size the entry down to
what they leave room for and veto only when no whole lot fits; the others veto. VaR at
level a: losses sorted ascending, ``VaR = L[ceil(a T) - 1]`` (numpy's ``inverted_cdf``
quantile), ``CVaR`` the mean of ``L[ceil(a T) - 1:]``. ``order_rate`` also trips REDUCING
for the rest of the session (meta-risk's ``trip``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numba
import numpy as np
import structlog

from chimera_core.config import ChargesConfig, Config, PortfolioConfig
from chimera_core.contracts import AccountSnapshot, ExchangeType, Side, Veto
from chimera_core.markets import market_of_exchange_type, merged_market

log = structlog.get_logger(__name__)

ORDER_RATE = "order_rate"
# Every rule's name, as on a veto (the table above).
RULES = (
    "stop_risk",
    "order_value",
    "vol_target",
    "cluster_exposure",
    "entries_per_session",
    ORDER_RATE,
    "var",
    "cvar",
)
MINUTE_MS = 60_000
LEVELS = (0.95, 0.99)


def var_cvar(pnl: np.ndarray, level: float) -> tuple[float, float]:
    """Historical VaR and CVaR (positive = a loss, rupees) of P&L scenarios at ``level``."""
    return var_cvar_sorted(np.sort(-pnl), level)


def var_cvar_sorted(losses: np.ndarray, level: float) -> tuple[float, float]:
    """``var_cvar`` on losses already sorted ascending."""
    n = losses.shape[0]
    if n == 0:
        return 0.0, 0.0
    k = var_order(level, n)
    return float(losses[k - 1]), float(losses[k - 1 :].sum()) / (n - k + 1)


@numba.njit(cache=True)
def _entry_var_cvar(
    pnl: np.ndarray, column: np.ndarray, value: float, k: int
) -> tuple[float, float]:
    """Historical VaR and CVaR at order statistic ``k`` (1-based, ascending losses) of the
    scenarios ``pnl + value * column`` (the book plus an entry of ``value`` rupees), in one
    pass and without sorting them all: only the ``n - k + 1`` largest losses (the tail) are
    kept, in ascending order; VaR is the smallest of them, CVaR their mean."""
    n = pnl.shape[0]
    m = n - k + 1
    tail = np.empty(m)
    filled = 0
    for i in range(n):
        v = -(pnl[i] + value * column[i])
        if filled < m:
            j = filled
            filled += 1
        elif v > tail[0]:
            j = 0
            while j + 1 < m and tail[j + 1] < v:  # drop the smallest, keep the order
                tail[j] = tail[j + 1]
                j += 1
            tail[j] = v
            continue
        else:
            continue
        while j > 0 and tail[j - 1] > v:  # insertion while filling
            tail[j] = tail[j - 1]
            j -= 1
        tail[j] = v
    total = 0.0
    for j in range(m):
        total += tail[j]
    return tail[0], total / m


def warm_up_kernels() -> None:
    """Compile (or load from cache) the per-intent kernel at start-up, never on an intent."""
    x = np.array([0.001, -0.002, 0.0005])
    _entry_var_cvar(x, x, 1.0, 2)


def var_order(level: float, n: int) -> int:
    """The 1-based order statistic of ``var_cvar_sorted`` at ``level`` over ``n`` scenarios."""
    return max(1, math.ceil(round(level * n, 9)))


def clusters(corr: np.ndarray, rho: float) -> list[int]:
    """Connected components of the graph "correlation > rho" (single linkage): a cluster
    label per column, the smallest column index in the cluster."""
    n = corr.shape[0]
    label = list(range(n))

    def root(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = label[i]
        return i

    rows, cols = np.nonzero(np.triu(corr > rho, k=1))
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        a, b = root(i), root(j)
        if a != b:
            label[max(a, b)] = min(a, b)
    return [root(i) for i in range(n)]


def cost_bound(cfg: Config) -> tuple[float, float, float]:
    """An upper bound on a round trip's charges: ``fixed + buy_rate x buy turnover +
    sell_rate x sell turnover`` (rupees, fractions of turnover), from the segment's charge
    model: ``percent`` and ``fixed`` exactly, ``schedule`` from ``[execution.charges]``
    (cash equity rates for ``execution.product``; brokerage bounded by its flat fee per
    order, GST on it included, plus paise rounding), ``none`` 0."""
    name = market_of_exchange_type(int(ExchangeType[cfg.feed.exchange_type]))
    market = merged_market(name, cfg.markets.get(name))
    if market.charges == "none":
        return 0.0, 0.0, 0.0
    if market.charges == "percent":
        pct = (market.charges_pct or 0.0) / 100.0
        return 0.0, pct, pct
    if market.charges == "fixed":
        return 2.0 * (market.charges_fixed or 0.0), 0.0, 0.0
    c: ChargesConfig = cfg.execution.charges
    delivery = cfg.execution.product == "DELIVERY"
    taxed = (c.exchange_txn + c.sebi_per_crore / 1e7) * (1.0 + c.gst)
    buy = taxed + (c.stamp_delivery_buy if delivery else c.stamp_intraday_buy)
    buy += c.stt_delivery if delivery else 0.0
    sell = taxed + (c.stt_delivery if delivery else c.stt_intraday_sell)
    # Each of a fill's six components is rounded half-up to paise: up to 3 paise a side.
    return 2.0 * c.brokerage_flat * (1.0 + c.gst) + 0.06, buy, sell


def horizon_bars(cfg: Config) -> int:
    """Bars in one trading day: ``var_horizon_bars``, or the market's session length over
    the bar interval (24 h when open == close)."""
    if cfg.governance.portfolio.var_horizon_bars > 0:
        return cfg.governance.portfolio.var_horizon_bars
    name = market_of_exchange_type(int(ExchangeType[cfg.feed.exchange_type]))
    market = merged_market(name, cfg.markets.get(name))
    o = int(market.open[:2]) * 60 + int(market.open[3:]) if market.open else 0
    c = int(market.close[:2]) * 60 + int(market.close[3:]) if market.close else 0
    minutes = (c - o) % 1440 or 1440
    return max(1, round(minutes * 60 / cfg.strategy.bar_interval_s))


class BookStats:
    """What the book rules read, recomputed per closed bar: the return matrix, covariance
    and correlation over the window, and the correlation clusters."""

    __slots__ = ("cluster", "columns", "corr", "cov", "cov_h", "members", "returns", "var_h")

    def __init__(self, returns: np.ndarray, rho: float, horizon: int = 1) -> None:
        self.returns = returns  # T x N, rows oldest first
        self.columns = np.ascontiguousarray(returns.T)  # one symbol's returns, contiguous
        n = returns.shape[1]
        if returns.shape[0] >= 2:
            self.cov = np.cov(returns, rowvar=False, ddof=1).reshape(n, n)
            sd = np.sqrt(np.diag(self.cov))
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = self.cov / np.outer(sd, sd)
            self.corr = np.where(np.isfinite(corr), corr, 0.0)
        else:
            self.cov = np.zeros((n, n))
            self.corr = np.zeros((n, n))
        self.cov_h = self.cov * horizon  # the 1-day covariance
        self.var_h: list[float] = np.diag(self.cov_h).tolist()  # per intent, as floats
        self.cluster = clusters(self.corr, rho) if rho > 0 else list(range(n))
        groups: dict[int, list[int]] = {}
        for j, c in enumerate(self.cluster):
            groups.setdefault(c, []).append(j)
        self.members = {c: np.array(m, dtype=np.intp) for c, m in groups.items()}


class HeldBook:
    """The book held and working at one set of statistics: its value per column, its
    scenario P&L, its 1-day covariance product and variance, its clusters' gross values."""

    __slots__ = ("_gross", "cw", "cw_list", "pnl", "positions", "stats", "w", "working", "wsw")

    def __init__(self, stats: BookStats, account: AccountSnapshot, w: np.ndarray) -> None:
        self.stats = stats
        self.positions = dict(account.positions)
        self.working = dict(account.working)
        self.w = w
        self.pnl = stats.returns @ w
        self.cw = stats.cov_h @ w
        self.cw_list: list[float] = self.cw.tolist()
        self.wsw = float(w @ self.cw)
        self._gross: dict[int, float] = {}

    def cluster_gross(self, label: int) -> float:
        g = self._gross.get(label)
        if g is None:
            g = self._gross[label] = float(np.abs(self.w[self.stats.members[label]]).sum())
        return g


class PortfolioRisk:
    """The portfolio rules of one pipeline. ``on_bar`` feeds returns; ``size`` and
    ``vetoes`` judge an entry; ``record_entry`` counts one let through."""

    def __init__(
        self,
        cfg: PortfolioConfig,
        *,
        tokens: Iterable[str],
        stop_atr_multiple: float,
        costs: tuple[float, float, float] = (0.0, 0.0, 0.0),
        horizon: int = 1,
    ) -> None:
        self.cfg = cfg
        self.stop_atr_multiple = float(stop_atr_multiple)
        self.fixed_cost, self.buy_rate, self.sell_rate = costs
        self.horizon = max(1, int(horizon))
        self.level = 0.95 if cfg.var_confidence == "95" else 0.99
        self._index: dict[str, int] = {}
        for t in tokens:
            self._index.setdefault(t, len(self._index))
        self._last_close: dict[str, float] = {}
        self._times: deque[int] = deque()
        # bar end -> its row in _ret, a ring of returns_window rows x symbols (column j is
        # the symbol _index gives j); rows reused oldest first, zeroed when reused.
        self._rows: dict[int, int] = {}
        self._ret = np.zeros((cfg.returns_window, max(8, len(self._index))))
        self._stats: BookStats | None = None
        self._held: HeldBook | None = None
        self._closes: list[float] = [0.0]
        self._day: object = None
        self._entries_today = 0
        self._recent: deque[int] = deque()  # exchange ms of entries let through
        self.needs_book = cfg.var_limit > 0 or cfg.cvar_limit > 0 or cfg.vol_target > 0
        self.needs_book = self.needs_book or cfg.cluster_rho > 0
        self.active = (
            self.needs_book
            or cfg.risk_sizing
            or cfg.max_order_fraction > 0
            or cfg.max_entries_per_session > 0
            or cfg.max_orders_per_minute > 0
        )

    # ---- per closed bar ------------------------------------------------------------------
    def on_bar(self, token: str, end_ms: int, close: float) -> None:
        """A bar of ``token`` closed at ``end_ms``: keep its return on the previous close."""
        if not self.needs_book or not (math.isfinite(close) and close > 0):
            return
        prev = self._last_close.get(token)
        self._last_close[token] = close
        if prev is None:
            return
        j = self._index.get(token)
        if j is None:
            j = self._index[token] = len(self._index)
        if j >= self._ret.shape[1]:  # more symbols than the ring has columns: widen it
            wider = np.zeros((self._ret.shape[0], 2 * (j + 1)))
            wider[:, : self._ret.shape[1]] = self._ret
            self._ret = wider
        row = self._rows.get(end_ms)
        if row is None:
            if self._times and end_ms < self._times[-1]:
                log.warning("portfolio.bar_out_of_order", token=token, end_ms=end_ms)
                return
            if len(self._times) >= self.cfg.returns_window:
                row = self._rows.pop(self._times.popleft())
                self._ret[row] = 0.0
            else:
                row = len(self._times)
            self._rows[end_ms] = row
            self._times.append(end_ms)
        self._ret[row, j] = close / prev - 1.0
        self._stats = None

    def stats(self) -> BookStats:
        """The statistics over the window (recomputed after a bar closed)."""
        st = self._stats
        if st is None:
            index, rows = self._index, self._rows
            order = np.fromiter((rows[t] for t in self._times), np.intp, len(self._times))
            r = self._ret[order, : len(index)]  # oldest bar end first (a copy)
            st = self._stats = BookStats(r, self.cfg.cluster_rho, self.horizon)
            last = self._last_close
            self._closes = [last.get(t, 0.0) for t in index] + [0.0]
        return st

    # ---- per intent ----------------------------------------------------------------------
    def held(self, account: AccountSnapshot) -> HeldBook:
        """The book held and working, valued at each symbol's last bar close, with what the
        rules read of it; recomputed only when a bar closed or the positions changed."""
        st = self.stats()
        hb = self._held
        if (
            hb is not None
            and hb.stats is st
            and hb.positions == account.positions
            and hb.working == account.working
        ):
            return hb
        n = int(st.returns.shape[1])
        closes = self._closes
        index = self._index
        w = [0.0] * (n + 1)  # column n (dropped): tokens without returns yet
        for side in (account.positions, account.working):
            for token, q in side.items():
                col = index.get(token, n)
                col = col if col < n else n
                w[col] += q * closes[col]
        hb = self._held = HeldBook(st, account, np.array(w[:n]))
        return hb

    def size(
        self,
        account: AccountSnapshot,
        token: str,
        side: Side,
        qty: int,
        price: float,
        atr: float,
        lot: int,
    ) -> tuple[int, list[Veto]]:
        """The largest whole-lot quantity, at most ``qty``, the sizing rules leave room for;
        with the veto of the rule that bound when that is 0."""
        cfg, equity = self.cfg, account.equity
        lot = max(1, lot)
        if qty <= 0 or not (math.isfinite(price) and price > 0):
            return 0, []
        if not (math.isfinite(equity) and equity > 0):
            return 0, [Veto("equity", equity, 0.0, "no positive account equity")]
        # (rule, units of room, the veto's value, limit and detail inputs): the Veto itself
        # is made only for the rule that binds, and only when nothing fits (_room_veto).
        rooms: list[tuple[str, float, float, float, object]] = []
        if cfg.risk_sizing:
            stop = atr * self.stop_atr_multiple if math.isfinite(atr) and atr > 0 else math.nan
            # Enter at price, leave at the stop: a long sells at price - stop, a short buys
            # back at price + stop.
            if side is Side.BUY:
                per_unit = stop + self.buy_rate * price + self.sell_rate * (price - stop)
            else:
                per_unit = stop + self.sell_rate * price + self.buy_rate * (price + stop)
            budget = cfg.stop_risk * equity - self.fixed_cost
            room = budget / per_unit if per_unit > 0 else 0.0
            rooms.append(
                ("stop_risk", room, lot * per_unit + self.fixed_cost, cfg.stop_risk * equity, stop)
            )
        if cfg.max_order_fraction > 0:
            cap = cfg.max_order_fraction * equity
            rooms.append(("order_value", cap / price, lot * price, cap, None))
        j = self._index.get(token)
        if j is not None and (cfg.vol_target > 0 or cfg.cluster_rho > 0):
            hb = self.held(account)
            if cfg.vol_target > 0:
                rooms.append(self._vol_room(hb, j, 1.0 if side is Side.BUY else -1.0, price,
                                            lot, equity))  # fmt: skip
            if cfg.cluster_rho > 0:
                st = hb.stats
                label = st.cluster[j]
                members = st.members[label]
                if len(members) > 1:
                    gross = hb.cluster_gross(label)
                    cluster_cap = cfg.cluster_max_exposure * equity
                    rooms.append(("cluster_exposure", (cluster_cap - gross) / price,
                                  gross + lot * price, cluster_cap, members))  # fmt: skip
        out = qty - qty % lot
        for entry in rooms:
            r = entry[1]
            if r != r:  # NaN: no room can be known (no ATR for the stop)
                out = 0
            elif r < math.inf:
                fits = int(r) if r > 0.0 else 0
                out = min(out, fits - fits % lot)
        if out > 0:
            return out, []
        binding = min(rooms, key=lambda r: -math.inf if math.isnan(r[1]) else r[1])
        return 0, [self._room_veto(*binding)]

    def _room_veto(
        self, rule: str, _room: float, value: float, limit: float, extra: object
    ) -> Veto:
        if rule == "stop_risk":
            detail = f"stop {extra:.4g}/unit at {self.stop_atr_multiple:g} ATR + charges"
        elif rule == "cluster_exposure":
            detail = f"rho>{self.cfg.cluster_rho:g}: " + self._names(extra)  # type: ignore[arg-type]
        elif rule == "vol_target":
            detail = f"1-day, {self.horizon} bars"
        else:
            detail = ""
        return Veto(rule, value, limit, detail)

    def _names(self, columns: Iterable[int]) -> str:
        cols = set(columns)
        return ",".join(t for t, i in self._index.items() if i in cols)

    def _vol_room(
        self,
        hb: HeldBook,
        j: int,
        sign: float,
        price: float,
        lot: int,
        equity: float,
    ) -> tuple[str, float, float, float, object]:
        """Units of room under the volatility target: the largest q >= 0 with
        (w + q s e_j)' S (w + q s e_j) <= (vol_target x equity)^2, S the 1-day covariance."""
        bound = self.cfg.vol_target * equity
        s = sign * price
        a = hb.stats.var_h[j] * s * s
        b = 2.0 * s * hb.cw_list[j]
        c = hb.wsw - bound * bound
        if a <= 0.0:
            room = math.inf if c <= 0 or b < 0 else 0.0  # no variance of its own
        else:
            disc = b * b - 4.0 * a * c
            room = (-b + math.sqrt(disc)) / (2.0 * a) if disc >= 0 else 0.0
        # Volatility with one more lot: sqrt(c + bound^2 + b lot + a lot^2).
        vol = math.sqrt(max(0.0, c + bound * bound + (b + a * lot) * lot))
        return ("vol_target", room, vol, bound, None)

    def book_risk(
        self,
        account: AccountSnapshot,
        token: str,
        side: Side,
        qty: int,
        price: float,
        levels: tuple[float, ...] = LEVELS,
    ) -> dict[float, tuple[float, float]]:
        """1-day historical (VaR, CVaR) in rupees of the book plus the entry, per level."""
        hb = self.held(account)
        st = hb.stats
        j = self._index.get(token)
        pnl = hb.pnl
        n = pnl.shape[0]
        scale = math.sqrt(self.horizon)
        out: dict[float, tuple[float, float]] = {}
        if n == 0:
            return dict.fromkeys(levels, (0.0, 0.0))
        if j is not None and j < st.returns.shape[1]:
            column, value = st.columns[j], float((qty if side is Side.BUY else -qty) * price)
        else:
            column, value = pnl, 0.0  # a symbol without returns yet adds no scenario P&L
        for level in levels:
            var, cvar = _entry_var_cvar(pnl, column, value, var_order(level, n))
            out[level] = (var * scale, cvar * scale)
        return out

    def vetoes(
        self,
        account: AccountSnapshot,
        token: str,
        side: Side,
        qty: int,
        price: float,
        exchange_ts_ms: int,
        day: object,
    ) -> list[Veto]:
        """The budget and book-risk rules an entry of ``qty`` breaches (evaluated before it:
        at a count limit, one more would exceed it)."""
        cfg = self.cfg
        self._roll(exchange_ts_ms, day)
        out: list[Veto] = []
        if cfg.max_entries_per_session and self._entries_today >= cfg.max_entries_per_session:
            out.append(
                Veto(
                    "entries_per_session",
                    float(self._entries_today),
                    float(cfg.max_entries_per_session),
                    "all symbols",
                )
            )
        if cfg.max_orders_per_minute and len(self._recent) >= cfg.max_orders_per_minute:
            out.append(
                Veto(
                    ORDER_RATE,
                    float(len(self._recent) + 1),
                    float(cfg.max_orders_per_minute),
                    "entries in 60 s: runaway guard, REDUCING for the session",
                )
            )
        equity = account.equity
        if qty > 0 and (cfg.var_limit > 0 or cfg.cvar_limit > 0) and equity > 0:
            # The configured level first; both levels for the record only on a veto.
            var, cvar = self.book_risk(account, token, side, qty, price, (self.level,))[self.level]
            var_over = cfg.var_limit > 0 and var > cfg.var_limit * equity
            cvar_over = cfg.cvar_limit > 0 and cvar > cfg.cvar_limit * equity
            if var_over or cvar_over:
                risk = self.book_risk(account, token, side, qty, price)
                (v95, c95), (v99, c99) = risk[0.95], risk[0.99]
                detail = (
                    f"1-day, {self.horizon} bars, {self.stats().returns.shape[0]} scenarios; "
                    f"95%: VaR {v95:.2f} CVaR {c95:.2f}; 99%: VaR {v99:.2f} CVaR {c99:.2f}"
                )
                if var_over:
                    out.append(Veto("var", var, cfg.var_limit * equity, detail))
                if cvar_over:
                    out.append(Veto("cvar", cvar, cfg.cvar_limit * equity, detail))
        return out

    def record_entry(self, exchange_ts_ms: int, day: object) -> None:
        """An entry was let through: it counts against the session's and the minute's."""
        self._roll(exchange_ts_ms, day)
        self._entries_today += 1
        self._recent.append(exchange_ts_ms)

    def _roll(self, exchange_ts_ms: int, day: object) -> None:
        if day != self._day:
            self._day = day
            self._entries_today = 0
        recent = self._recent
        while recent and recent[0] <= exchange_ts_ms - MINUTE_MS:
            recent.popleft()
