"""The paper twin's pairing and figures (tools/shadow/twin.py) against plain-Python
references (hypothesis): every order is in exactly one row, ids pair first and the rest by
(token, side, purpose) in placement order; prices, slippage and latency per row from the
two sides' numbers by hand; the percentiles from ``statistics.quantiles``. The same orders
written to two real journals come out of ``compare_journals`` as out of the live streams
(``TwinBook``, fed execution reports with partial fills)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.contracts import (
    ExecKind,
    ExecutionReport,
    Fill,
    OrderIntent,
    OrderRequest,
    Purpose,
    Side,
)
from chimera_core.errors import ChimeraError
from chimera_execution.journal import Journal
from tools.shadow.twin import (
    OrderSide,
    TwinBook,
    aggregate,
    compare,
    compare_journals,
    distribution,
    pair,
)

KEYS = [(t, s, p) for t in ("2885", "1594") for s in ("BUY", "SELL") for p in ("ENTRY", "EXIT")]

_order = st.fixed_dictionaries(
    {
        "key": st.sampled_from(KEYS),
        "where": st.sampled_from(("both", "both", "live", "paper")),
        "same_id": st.booleans(),
        "qty": st.integers(1, 50),
        "live_fill": st.floats(0.0, 1.0),
        "paper_fill": st.floats(0.0, 1.0),
        "live_price": st.floats(90.0, 110.0),
        "paper_price": st.floats(90.0, 110.0),
        "ref": st.floats(90.0, 110.0),
        "live_ms": st.integers(0, 5_000),
        "paper_ms": st.integers(0, 5_000),
    }
)


def _sides(spec: list[dict]) -> tuple[list[OrderSide], list[OrderSide], dict]:
    live, paper, refs = [], [], {}
    for i, o in enumerate(spec):
        token, side, purpose = o["key"]
        intent = f"CH-1-{token}-{i}"
        refs[intent] = (o["ref"], 1_000_000)
        for name, book in (("live", live), ("paper", paper)):
            if o["where"] not in ("both", name):
                continue
            filled = int(o["qty"] * o[f"{name}_fill"])
            coid = f"{intent}-x" if name == "paper" and not o["same_id"] else intent
            book.append(
                OrderSide(
                    client_order_id=coid, intent_id=intent, token=token, side=side,
                    purpose=purpose, qty=o["qty"], filled_qty=filled,
                    avg_price=o[f"{name}_price"] if filled else 0.0,
                    first_fill_ms=1_000_000 + o[f"{name}_ms"] if filled else None,
                )
            )  # fmt: skip
    return live, paper, refs


def _key(o: OrderSide) -> tuple[str, str, str]:
    return (o.token, o.side, o.purpose)


@settings(max_examples=200, deadline=None)
@given(st.lists(_order, max_size=30))
def test_every_order_is_in_exactly_one_row_ids_first_then_sequence(spec):
    live, paper, _ = _sides(spec)
    rows = pair(live, paper)
    seen_live = [id(a) for a, _, _ in rows if a is not None]
    seen_paper = [id(b) for _, b, _ in rows if b is not None]
    assert sorted(seen_live) == sorted(id(o) for o in live)
    assert sorted(seen_paper) == sorted(id(o) for o in paper)
    for a, b, how in rows:
        assert (a is None) == (how == "paper_only") and (b is None) == (how == "live_only")
        if how == "id":
            assert a.client_order_id == b.client_order_id
        if how == "sequence":
            assert a.client_order_id != b.client_order_id
            assert (a.token, a.side, a.purpose) == (b.token, b.side, b.purpose)
    # Per key, the orders ids could not pair are paired as far as both sides have them,
    # the k-th live one with the k-th paper one.
    ids = {o.client_order_id for o in live} & {o.client_order_id for o in paper}
    for key in KEYS:
        lv = [
            o for o in live if (o.token, o.side, o.purpose) == key and o.client_order_id not in ids
        ]
        pp = [
            o for o in paper if (o.token, o.side, o.purpose) == key and o.client_order_id not in ids
        ]
        got = [
            (a, b)
            for a, b, how in rows
            if how == "sequence" and (a.token, a.side, a.purpose) == key
        ]
        want = [(id(a), id(b)) for a, b in zip(lv, pp, strict=False)]
        assert [(id(a), id(b)) for a, b in got] == want
        lonely = sum(
            1 for a, b, how in rows
            if how in ("live_only", "paper_only") and _key(a or b) == key
        )  # fmt: skip
        assert lonely == abs(len(lv) - len(pp))


@settings(max_examples=200, deadline=None)
@given(st.lists(_order, max_size=30))
def test_each_rows_figures_and_the_aggregate_by_hand(spec):
    live, paper, refs = _sides(spec)
    rows = compare(live, paper, refs)
    for r, (a, b, _) in zip(rows, pair(live, paper), strict=True):
        sign = 1.0 if r.side == "BUY" else -1.0
        lp = a.avg_price if a is not None and a.filled_qty else None
        pp = b.avg_price if b is not None and b.filled_qty else None
        assert r.live_price == lp and r.paper_price == pp
        assert r.paper_client_order_id == (None if b is None else b.client_order_id)
        if lp is not None and pp is not None:
            assert r.price_diff_bps == pytest.approx(sign * (lp - pp) / pp * 10_000)
        else:
            assert r.price_diff_bps is None
        o = a or b
        ref, decided = refs[o.intent_id]
        for side, price, got, lat in (
            (a, lp, r.live_slippage_bps, r.live_latency_ms),
            (b, pp, r.paper_slippage_bps, r.paper_latency_ms),
        ):
            if o.purpose != "ENTRY" or price is None:
                assert got is None
            else:
                assert got == pytest.approx(sign * (price - ref) / ref * 10_000)
            if o.purpose != "ENTRY" or side is None or side.first_fill_ms is None:
                assert lat is None
            else:
                assert lat == side.first_fill_ms - decided
    agg = aggregate(rows)
    assert agg["orders"] == len(rows)
    assert agg["paired"] + agg["live_only"] + agg["paper_only"] == len(rows)
    assert agg["live_orders"] == len(live) and agg["paper_orders"] == len(paper)
    for name, book in (("live", live), ("paper", paper)):
        want = sum(o.filled_qty > 0 for o in book) / len(book) if book else None
        assert agg[f"{name}_fill_rate"] == want
    diffs = [r.price_diff_bps for r in rows if r.price_diff_bps is not None]
    d = agg["price_diff_bps"]
    assert d["n"] == len(diffs)
    if len(diffs) >= 2:
        q = statistics.quantiles(diffs, n=100, method="inclusive")
        assert d["p50"] == pytest.approx(q[49]) and d["p90"] == pytest.approx(q[89])
        assert d["p99"] == pytest.approx(q[98]) and d["mean"] == pytest.approx(
            statistics.fmean(diffs)
        )


def test_no_values_is_no_distribution_not_zeros():
    assert distribution([None, None]) == {"n": 0, "mean": None, "p50": None, "p90": None,
                                          "p99": None}  # fmt: skip
    assert aggregate([])["live_fill_rate"] is None


def _report(coid, kind, filled, avg, fill=None, purpose=Purpose.ENTRY, qty=10):
    return ExecutionReport(
        kind=kind, client_order_id=coid, intent_id=coid.split("-X")[0], token="2885",
        side=Side.BUY if purpose is Purpose.ENTRY else Side.SELL, order_qty=qty,
        filled_qty=filled, avg_price=avg, purpose=purpose, fill=fill,
        exchange_ts_ms=fill.exchange_ts_ms if fill else 0,
    )  # fmt: skip


def _fill(coid, n, qty, price, ms, side=Side.BUY):
    return Fill(f"{coid}-{n}", coid, "2885", side, qty, price, 0.5, ms)


def _write(data: Path, reports: list[ExecutionReport], intent: OrderIntent) -> None:
    with Journal(data, "paper", starting_cash=1_000_000.0) as j:
        j.record_intent(intent)
        for coid, purpose, side in (
            (intent.client_order_id, Purpose.ENTRY, Side.BUY),
            (f"{intent.client_order_id}-X0", Purpose.EXIT, Side.SELL),
        ):
            j.record_order(OrderRequest(
                client_order_id=coid, intent_id=intent.client_order_id, token="2885",
                exchange_type=1, side=side, qty=10, purpose=purpose,
                exchange_ts_ms=intent.exchange_ts_ms,
            ))  # fmt: skip
        for r in reports:
            j.apply_report(r)


def test_journals_and_live_streams_give_the_same_rows_partial_fills_included(tmp_path):
    coid = "CH-1-2885-60000-1"
    intent = OrderIntent(coid, "2885", 1, Side.BUY, 10, 100.0, 60_000, 1, 61_000)
    exit_id = f"{coid}-X0"
    live = [
        _report(coid, ExecKind.ACK, 0, 0.0),
        _report(coid, ExecKind.PARTIAL, 4, 100.2, _fill(coid, 1, 4, 100.2, 61_050)),
        _report(coid, ExecKind.FILLED, 10, 100.26, _fill(coid, 2, 6, 100.3, 61_200)),
        _report(exit_id, ExecKind.REJECTED, 0, 0.0, purpose=Purpose.EXIT),
    ]
    paper = [
        _report(coid, ExecKind.PARTIAL, 6, 100.1, _fill(coid, 1, 6, 100.1, 61_010)),
        _report(exit_id, ExecKind.FILLED, 10, 101.0,
                _fill(exit_id, 1, 10, 101.0, 70_000, Side.SELL), purpose=Purpose.EXIT),
    ]  # fmt: skip
    _write(tmp_path / "live", live, intent)
    _write(tmp_path / "twin", paper, intent)
    book = TwinBook()
    book.on_decision(None)
    book.refs[coid] = (100.0, 61_000)
    for r in live:
        book.on_live(r)
    for r in paper:
        book.on_paper(r)
    streamed = book.rows()
    journaled = compare_journals(
        tmp_path / "live" / "paper" / "chimera.db", tmp_path / "twin" / "paper" / "chimera.db"
    )
    assert [r.matched_by for r in streamed] == ["id", "id"]
    assert streamed == journaled
    entry, exit_ = streamed
    assert (entry.live_filled, entry.paper_filled) == (10, 6)
    assert entry.price_diff_bps == pytest.approx((100.26 - 100.1) / 100.1 * 1e4)
    assert entry.live_slippage_bps == pytest.approx(26.0)
    assert (entry.live_latency_ms, entry.paper_latency_ms) == (50, 10)
    assert (exit_.live_filled, exit_.live_price, exit_.paper_price) == (0, None, 101.0)
    assert exit_.live_slippage_bps is None and exit_.paper_latency_ms is None
    agg = aggregate(streamed)
    assert agg["live_fill_rate"] == 0.5 and agg["paper_fill_rate"] == 1.0
    # The day window: orders whose first fill (or decision) is in it.
    assert compare_journals(
        tmp_path / "live" / "paper" / "chimera.db", tmp_path / "twin" / "paper" / "chimera.db",
        65_000, 80_000,
    ) == [exit_]  # fmt: skip


def test_the_report_has_a_paper_vs_live_section_only_where_a_twin_ran(tmp_path):
    import datetime as dt

    import orjson

    from tools.report import build_report

    coid = "CH-1-2885-60000-1"
    intent = OrderIntent(coid, "2885", 1, Side.BUY, 10, 100.0, 60_000, 1, 61_000)
    filled = [_report(coid, ExecKind.FILLED, 10, 100.2, _fill(coid, 1, 10, 100.2, 61_050))]
    twin = [_report(coid, ExecKind.FILLED, 10, 100.1, _fill(coid, 1, 10, 100.1, 61_010))]
    _write(tmp_path, filled, intent)  # the primary's journal: data_dir/paper
    _write(tmp_path / "shadow" / "active", twin, intent)
    day = dt.date(1970, 1, 1)
    assert build_report(tmp_path, "paper", day).paper_vs_live is None  # no twin.json: none ran
    marker = tmp_path / "shadow" / "active" / "twin.json"
    marker.write_bytes(orjson.dumps({"twin": True, "mode": "live", "broker": "angelone"}))
    assert build_report(tmp_path, "paper", day).paper_vs_live is None  # it ran against live
    marker.write_bytes(orjson.dumps({"twin": True, "mode": "paper", "broker": "angelone"}))
    section = build_report(tmp_path, "paper", day).paper_vs_live
    assert section is not None and section["paired"] == 1 and section["broker"] == "angelone"
    assert section["price_diff_bps"]["p50"] == pytest.approx((100.2 - 100.1) / 100.1 * 1e4)
    assert build_report(tmp_path, "paper", dt.date(1970, 1, 2)).paper_vs_live is None
    marker.write_text("{not json")
    with pytest.raises(ChimeraError, match=r"twin\.json is unreadable"):
        build_report(tmp_path, "paper", day)


def test_seeding_from_the_journals_skips_twin_orders_older_than_the_real_journal(tmp_path):
    old = OrderIntent("CH-1-2885-0-1", "2885", 1, Side.BUY, 10, 99.0, 0, 1, 1_000)
    new = OrderIntent("CH-1-2885-60000-1", "2885", 1, Side.BUY, 10, 100.0, 60_000, 1, 61_000)
    coid = new.client_order_id
    # The twin fills first (paper latency is shorter than the real broker's).
    _write(tmp_path / "twin", [_report(coid, ExecKind.FILLED, 10, 100.1,
                                       _fill(coid, 1, 10, 100.1, 61_010))], new)  # fmt: skip
    _write(tmp_path / "twin", [], old)  # from when the primary was on the paper broker
    _write(tmp_path / "live", [_report(coid, ExecKind.FILLED, 10, 100.2,
                                       _fill(coid, 1, 10, 100.2, 68_000))], new)  # fmt: skip
    book = TwinBook()
    book.seed(
        tmp_path / "live" / "paper" / "chimera.db", tmp_path / "twin" / "paper" / "chimera.db"
    )
    rows = book.rows()
    assert {r.client_order_id for r in rows} == {coid, f"{coid}-X0"}
    assert [r.matched_by for r in rows] == ["id", "id"]
    assert rows[0].price_diff_bps == pytest.approx((100.2 - 100.1) / 100.1 * 1e4)
    # Nothing real yet: nothing of the twin's is seeded either.
    empty = TwinBook()
    empty.seed(tmp_path / "nowhere.db", tmp_path / "twin" / "paper" / "chimera.db")
    assert empty.rows() == []
