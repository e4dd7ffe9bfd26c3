"""The paper twin: the ``active`` candidate's paper orders beside the primary's real ones.

When the primary trades through a real broker, the shadow's ``active`` candidate decides
exactly what the primary decided on a paper broker: the same decision gives the same
intent and the same deterministic ``client_order_id`` on both sides. Paired order by order
(by id; failing that by token, side, purpose and their order of placement), the two say
how far the paper broker is from the real one:

- fill rate on each side (orders with any fill / orders; filled / ordered quantity);
- ``price_diff_bps``: live average fill price against paper's, positive when live was
  worse (paid more on a buy, got less on a sell);
- ``live_slippage_bps`` / ``paper_slippage_bps``: each side's average fill against the
  decision's reference price (the price the entry decision saw), positive = adverse; exits
  have no reference price of their own and are left out of it;
- ``live_latency_ms`` / ``paper_latency_ms``: the entry decision's exchange time to the
  order's first fill's exchange time;
- orders only one side has (e.g. the real broker rejected what paper filled).

The same records come from the shadow's live streams (``TwinBook``: the primary's
execution reports and the twin's) and from the two journals (``journal_orders``: what
``chimera report`` recomputes), and go through the one ``compare``.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from chimera_core.contracts import Decision, ExecutionReport, Purpose, Side
from chimera_execution.journal_view import JournalReader

TWIN_FILE = "twin.json"
TOPIC_TWIN = b"twin"  # shadow.active.twin

# intent id -> (reference price, decision's exchange time in ms)
References = dict[str, tuple[float, int]]


class OrderSide(msgspec.Struct, kw_only=True):
    """One side's view of one order."""

    client_order_id: str
    intent_id: str
    token: str
    side: str  # BUY | SELL
    purpose: str
    qty: int
    filled_qty: int = 0
    avg_price: float = 0.0
    first_fill_ms: int | None = None
    status: str = ""


class TwinOrder(msgspec.Struct, kw_only=True):
    """One paired order (either side may be missing) and its figures."""

    client_order_id: str  # the live order's (the paper one's when only paper has it)
    paper_client_order_id: str | None  # the twin's, where it has the order
    token: str
    side: str
    purpose: str
    matched_by: str  # id | sequence | live_only | paper_only
    live_filled: int | None
    paper_filled: int | None
    live_price: float | None
    paper_price: float | None
    price_diff_bps: float | None
    live_slippage_bps: float | None
    paper_slippage_bps: float | None
    live_latency_ms: int | None
    paper_latency_ms: int | None
    ts_ms: int | None  # when it happened (exchange time): the report's day window


def adverse_bps(price: float, reference: float, side: str) -> float:
    """How much worse ``price`` is than ``reference`` for ``side``, in basis points."""
    sign = 1.0 if side == Side.BUY.value else -1.0
    return sign * (price - reference) / reference * 1e4


def _bps(price: float | None, reference: float | None, side: str) -> float | None:
    return None if price is None or reference is None else adverse_bps(price, reference, side)


def pair(
    live: Sequence[OrderSide], paper: Sequence[OrderSide]
) -> list[tuple[OrderSide | None, OrderSide | None, str]]:
    """Live and paper orders paired by ``client_order_id``; the rest by (token, side,
    purpose) in placement order; what is left over is one side's only."""
    by_id = {o.client_order_id: o for o in paper}
    out: list[tuple[OrderSide | None, OrderSide | None, str]] = []
    rest_live: list[OrderSide] = []
    for o in live:
        twin = by_id.pop(o.client_order_id, None)
        if twin is None:
            rest_live.append(o)
        else:
            out.append((o, twin, "id"))
    queues: dict[tuple[str, str, str], deque[OrderSide]] = defaultdict(deque)
    for o in paper:
        if o.client_order_id in by_id:
            queues[(o.token, o.side, o.purpose)].append(o)
    for o in rest_live:
        q = queues.get((o.token, o.side, o.purpose))
        if q:
            out.append((o, q.popleft(), "sequence"))
        else:
            out.append((o, None, "live_only"))
    out.extend((None, o, "paper_only") for q in queues.values() for o in q)
    return out


def _filled_price(o: OrderSide | None) -> float | None:
    return o.avg_price if o is not None and o.filled_qty > 0 and o.avg_price > 0 else None


def compare(
    live: Sequence[OrderSide], paper: Sequence[OrderSide], refs: References
) -> list[TwinOrder]:
    """Every order of either side, paired, with its figures."""
    rows = []
    for lv, pp, how in pair(live, paper):
        o = lv if lv is not None else pp
        assert o is not None  # pair() never yields (None, None)
        ref = refs.get(o.intent_id) if o.purpose == Purpose.ENTRY.value else None
        refp = ref[0] if ref is not None and ref[0] > 0 else None
        lp, pq = _filled_price(lv), _filled_price(pp)
        lat = [
            None if s is None or s.first_fill_ms is None or ref is None
            else s.first_fill_ms - ref[1]
            for s in (lv, pp)
        ]  # fmt: skip
        times = [s.first_fill_ms for s in (lv, pp) if s is not None and s.first_fill_ms]
        rows.append(
            TwinOrder(
                client_order_id=o.client_order_id,
                paper_client_order_id=None if pp is None else pp.client_order_id,
                token=o.token, side=o.side,
                purpose=o.purpose, matched_by=how,
                live_filled=None if lv is None else lv.filled_qty,
                paper_filled=None if pp is None else pp.filled_qty,
                live_price=lp, paper_price=pq,
                price_diff_bps=_bps(lp, pq, o.side),
                live_slippage_bps=_bps(lp, refp, o.side),
                paper_slippage_bps=_bps(pq, refp, o.side),
                live_latency_ms=lat[0], paper_latency_ms=lat[1],
                ts_ms=min(times) if times else (ref[1] if ref is not None else None),
            )
        )  # fmt: skip
    return rows


def distribution(values: Iterable[float | int | None]) -> dict[str, float | int | None]:
    """n, mean and the 50th/90th/99th percentiles (linear interpolation) of the known values."""
    xs = np.array([v for v in values if v is not None], dtype=np.float64)
    if not len(xs):
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(xs, [50, 90, 99])
    return {"n": len(xs), "mean": float(xs.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99)}  # fmt: skip


FIGURES = (
    "price_diff_bps",
    "live_slippage_bps",
    "paper_slippage_bps",
    "live_latency_ms",
    "paper_latency_ms",
)


def aggregate(rows: Sequence[TwinOrder]) -> dict[str, Any]:
    """The figures over ``rows``: counts, both fill rates, and each figure's distribution."""
    out: dict[str, Any] = {
        "orders": len(rows),
        "paired": sum(r.matched_by in ("id", "sequence") for r in rows),
        "paired_by_sequence": sum(r.matched_by == "sequence" for r in rows),
        "live_only": sum(r.matched_by == "live_only" for r in rows),
        "paper_only": sum(r.matched_by == "paper_only" for r in rows),
        "both_filled": sum(r.live_price is not None and r.paper_price is not None for r in rows),
    }
    for name in ("live", "paper"):
        filled = [getattr(r, f"{name}_filled") for r in rows]
        mine = [f for f in filled if f is not None]
        out[f"{name}_orders"] = len(mine)
        out[f"{name}_fill_rate"] = sum(f > 0 for f in mine) / len(mine) if mine else None
    for name in FIGURES:
        out[name] = distribution(getattr(r, name) for r in rows)
    return out


def summary(rows: Sequence[TwinOrder], **extra: Any) -> dict[str, Any]:
    """What ``twin.json`` holds: the aggregate, then every paired order."""
    return {"twin": True, **extra, **aggregate(rows), "rows": msgspec.to_builtins(list(rows))}


# ---- the shadow's live side --------------------------------------------------------------


class TwinBook:
    """The primary's execution reports and the twin's, order by order, as they arrive."""

    def __init__(self) -> None:
        self.live: dict[str, OrderSide] = {}
        self.paper: dict[str, OrderSide] = {}
        self.refs: References = {}
        self.changes = 0  # bumped by every input: the figures are recomputed only then

    def on_decision(self, d: Decision | None) -> None:
        if d is not None and d.intent is not None:
            i = d.intent
            self.refs[i.client_order_id] = (i.ref_price, i.exchange_ts_ms)
            self.changes += 1

    def on_live(self, report: ExecutionReport) -> None:
        _apply(self.live, report)
        self.changes += 1

    def on_paper(self, report: ExecutionReport) -> None:
        _apply(self.paper, report)
        self.changes += 1

    def seed(self, live_db: Path, paper_db: Path) -> None:
        """What the two journals already hold (orders before this shadow started, or
        before the primary restarted): the figures go on across restarts."""
        live, live_refs = journal_orders(live_db) if live_db.is_file() else ([], {})
        paper, paper_refs = journal_orders(paper_db) if paper_db.is_file() else ([], {})
        refs = {**paper_refs, **live_refs}
        for o in live:
            self.live.setdefault(o.client_order_id, o)
        for o in twin_orders(live, paper, refs):
            self.paper.setdefault(o.client_order_id, o)
        for intent_id, ref in refs.items():
            self.refs.setdefault(intent_id, ref)
        self.changes += 1

    def rows(self) -> list[TwinOrder]:
        return compare(list(self.live.values()), list(self.paper.values()), self.refs)


def twin_orders(live: list[OrderSide], paper: list[OrderSide], refs: References) -> list[OrderSide]:
    """The twin's journal orders that had a real counterpart to compare with: the twin's
    journal may be older than the real one (the shadow ran while the primary was on the
    paper broker), and those orders, decided before the real journal's first, are left
    out (the shadow's figures and the report both use this)."""
    known = [t for o in live if (t := _when(o, refs)) is not None]
    if not known:
        return []
    since = min(known)
    return [o for o in paper if (t := _when(o, refs)) is not None and t >= since]


def _when(o: OrderSide, refs: References) -> int | None:
    """When the order was decided: its intent's decision (the same on both sides; an exit
    is dated by the entry it closes), else its first fill."""
    ref = refs.get(o.intent_id)
    return ref[1] if ref is not None else o.first_fill_ms


def _apply(book: dict[str, OrderSide], r: ExecutionReport) -> None:
    o = book.get(r.client_order_id)
    if o is None:
        o = book[r.client_order_id] = OrderSide(
            client_order_id=r.client_order_id, intent_id=r.intent_id, token=r.token,
            side=r.side.value, purpose=r.purpose.value, qty=r.order_qty,
        )  # fmt: skip
    if r.filled_qty >= o.filled_qty and r.filled_qty > 0:
        o.filled_qty, o.avg_price = r.filled_qty, r.avg_price
    if r.fill is not None and (o.first_fill_ms is None or r.fill.exchange_ts_ms < o.first_fill_ms):
        o.first_fill_ms = r.fill.exchange_ts_ms
    o.status = r.kind.value


# ---- the journals' side (the report) -----------------------------------------------------


def journal_orders(path: Path) -> tuple[list[OrderSide], References]:
    """Every order of the journal at ``path`` in placement order, and its intents' reference
    prices (read-only)."""
    with JournalReader(path) as j:
        orders = j.orders()
        first: dict[str, int] = {}
        for f in j.fills():
            t = first.get(f.client_order_id)
            if t is None or f.exchange_ts_ms < t:
                first[f.client_order_id] = f.exchange_ts_ms
        refs: References = {}
        for o in orders:
            if o.intent_id and o.intent_id not in refs:
                i = j.intent(o.intent_id)
                if i is not None:
                    refs[o.intent_id] = (i.ref_price, i.exchange_ts_ms)
    sides = [
        OrderSide(
            client_order_id=o.client_order_id, intent_id=o.intent_id, token=o.token,
            side=o.side.value, purpose=o.purpose.value, qty=o.qty, filled_qty=o.filled_qty,
            avg_price=o.avg_fill_price, first_fill_ms=first.get(o.client_order_id),
            status=o.status.value,
        )
        for o in orders
    ]  # fmt: skip
    return sides, refs


def compare_journals(
    live_db: Path, paper_db: Path, start_ms: int | None = None, end_ms: int | None = None
) -> list[TwinOrder]:
    """The two journals paired over their whole history, then the orders of
    [start_ms, end_ms) (exchange time of their first fill, or of their decision)."""
    live, live_refs = journal_orders(live_db)
    paper, paper_refs = journal_orders(paper_db)
    refs = {**paper_refs, **live_refs}
    rows = compare(live, twin_orders(live, paper, refs), refs)
    if start_ms is None or end_ms is None:
        return rows
    return [r for r in rows if r.ts_ms is not None and start_ms <= r.ts_ms < end_ms]
