"""Journal: write-ahead, idempotent reports, positions and cash, mode isolation,
migrations and crash atomicity — on real SQLite files."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core.contracts import (
    ExecKind,
    ExecutionReport,
    Fill,
    OrderIntent,
    OrderRequest,
    OrderStatus,
    Purpose,
    Side,
)
from chimera_core.errors import ChimeraError, DuplicateOrder
from chimera_execution.journal import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Journal,
    journal_path,
    stored_mode,
)

REPO = Path(__file__).resolve().parents[2]


def request(coid: str, side: Side = Side.BUY, qty: int = 10, token: str = "3045") -> OrderRequest:
    return OrderRequest(
        client_order_id=coid, intent_id="I-" + coid, token=token, exchange_type=1, side=side,
        qty=qty, exchange_ts_ms=1_000,
    )  # fmt: skip


def report(
    req: OrderRequest,
    kind: ExecKind,
    filled: int = 0,
    avg: float = 0.0,
    fill: Fill | None = None,
) -> ExecutionReport:
    return ExecutionReport(
        kind=kind, client_order_id=req.client_order_id, intent_id=req.intent_id,
        token=req.token, side=req.side, order_qty=req.qty, filled_qty=filled, avg_price=avg,
        broker_order_id="B-" + req.client_order_id, fill=fill, exchange_ts_ms=2_000, at_ns=5,
    )  # fmt: skip


def fill(req: OrderRequest, n: int, qty: int, price: float, charges: float = 1.25) -> Fill:
    return Fill(
        fill_id=f"B-{req.client_order_id}-{n}", client_order_id=req.client_order_id,
        token=req.token, side=req.side, qty=qty, price=price, charges=charges,
        exchange_ts_ms=2_000 + n,
    )  # fmt: skip


def test_journal_path_per_mode(tmp_path: Path) -> None:
    assert journal_path(tmp_path, "paper") == tmp_path / "paper" / "chimera.db"
    assert journal_path(tmp_path, "live") == tmp_path / "live" / "chimera.db"
    with pytest.raises(ChimeraError, match="paper"):
        journal_path(tmp_path, "backtest")


def test_write_ahead_and_duplicates(tmp_path: Path) -> None:
    req = request("c1")
    with Journal(tmp_path, "paper") as j:
        j.record_order(req)
        # Committed before returning: a second connection sees it at once.
        other = sqlite3.connect(journal_path(tmp_path, "paper"))
        assert other.execute("SELECT status FROM orders").fetchall() == [("PENDING",)]
        other.close()
        with pytest.raises(DuplicateOrder):
            j.record_order(req)
        assert len(j.orders()) == 1
        assert [o.client_order_id for o in j.open_orders()] == ["c1"]

        intent = OrderIntent("I-c1", "3045", 1, Side.BUY, 10, 100.0, 0, 1, 1_000)
        j.record_intent(intent)
        with pytest.raises(DuplicateOrder):
            j.record_intent(intent)
        assert j.intent("I-c1") == intent
        assert j.intent("nope") is None


def test_apply_report_is_idempotent_and_books_once(tmp_path: Path) -> None:
    req = request("c1", qty=10)
    f1, f2 = fill(req, 1, 4, 100.0), fill(req, 2, 6, 101.0)
    with Journal(tmp_path, "paper", starting_cash=10_000.0) as j:
        j.record_order(req)
        assert j.apply_report(report(req, ExecKind.ACK)) is True
        assert j.apply_report(report(req, ExecKind.ACK)) is False
        partial = report(req, ExecKind.PARTIAL, 4, 100.0, f1)
        assert j.apply_report(partial) is True
        assert j.apply_report(partial) is False
        done = report(req, ExecKind.FILLED, 10, 100.6, f2)
        assert j.apply_report(done) is True
        assert j.apply_report(done) is False
        # A stale PARTIAL after FILLED changes nothing.
        assert j.apply_report(partial) is False
        o = j.order("c1")
        assert o is not None
        assert (o.status, o.filled_qty, o.avg_fill_price) == (OrderStatus.FILLED, 10, 100.6)
        assert o.broker_order_id == "B-c1"
        assert [f.fill_id for f in j.fills()] == ["B-c1-1", "B-c1-2"]
        (pos,) = j.positions()
        assert (pos.qty, pos.avg_price, pos.charges) == (10, pytest.approx(100.6), 2.5)
        assert j.cash() == pytest.approx(10_000.0 - 400.0 - 606.0 - 2.5)
        assert j.open_orders() == []
        assert j.check() == []


def test_late_fill_after_cancel_is_booked_status_kept(tmp_path: Path) -> None:
    req = request("c1", qty=10)
    with Journal(tmp_path, "paper") as j:
        j.record_order(req)
        j.apply_report(report(req, ExecKind.ACK))
        j.apply_report(report(req, ExecKind.CANCELLED))
        assert j.apply_report(report(req, ExecKind.PARTIAL, 3, 99.0, fill(req, 1, 3, 99.0)))
        o = j.order("c1")
        assert o is not None
        assert (o.status, o.filled_qty) == (OrderStatus.CANCELLED, 3)
        assert j.positions()[0].qty == 3
        # An ACK after CANCELLED never reopens it.
        j.apply_report(report(req, ExecKind.ACK))
        assert j.order("c1").status is OrderStatus.CANCELLED  # type: ignore[union-attr]
        assert j.check() == []


def test_unknown_order_report_and_recovered_fill_are_booked(tmp_path: Path) -> None:
    orphan = request("orphan", side=Side.SELL, qty=5)
    with Journal(tmp_path, "paper") as j:
        assert j.apply_report(report(orphan, ExecKind.FILLED, 5, 50.0, fill(orphan, 1, 5, 50.0)))
        o = j.order("orphan")
        assert o is not None and (o.status, o.filled_qty, o.qty) == (OrderStatus.FILLED, 5, 5)
        assert j.positions()[0].qty == -5

        ghost = request("ghost", qty=7)
        f = fill(ghost, 1, 7, 10.0)
        assert j.record_fill(f, intent_id="I-ghost", purpose=Purpose.STOP_LOSS) is True
        assert j.record_fill(f) is False
        g = j.order("ghost")
        assert g is not None
        assert (g.filled_qty, g.qty, g.purpose, g.intent_id) == (7, 7, Purpose.STOP_LOSS, "I-ghost")

        known = request("known", qty=10)
        j.record_order(known)
        j.record_fill(fill(known, 1, 4, 20.0))
        k = j.order("known")
        assert k is not None and (k.status, k.filled_qty) == (OrderStatus.PARTIAL, 4)
        j.record_fill(fill(known, 2, 6, 21.0))
        k = j.order("known")
        assert k is not None and (k.status, k.filled_qty) == (OrderStatus.FILLED, 10)
        assert k.avg_fill_price == pytest.approx((4 * 20 + 6 * 21) / 10)
        assert j.check() == []


fill_steps = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.sampled_from([Side.BUY, Side.SELL]),
        st.integers(1, 60),
        st.integers(100, 100_000).map(lambda p: p / 100),
        st.integers(0, 500).map(lambda c: c / 100),
    ),
    min_size=1,
    max_size=40,
)


def reference_book(steps: list[tuple[str, Side, int, float, float]]) -> dict[str, list[float]]:
    """Average-cost book kept as (qty, cost basis of the open qty): a different shape from
    the journal's (qty, avg) arithmetic."""
    book: dict[str, list[float]] = {}
    for token, side, qty, price, _ in steps:
        q, cost, realized = book.get(token, [0, 0.0, 0.0])
        step = 1 if side is Side.BUY else -1
        for _ in range(qty):  # one share at a time: flips need no special case
            if q == 0 or (q > 0) == (step > 0):
                cost += step * price
            else:
                unit = cost / q
                realized += (price - unit) * (1 if q > 0 else -1)
                cost += step * unit  # the closed share leaves at its average cost
            q += step
        book[token] = [q, cost, realized]
    return book


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=fill_steps)
def test_positions_and_cash_match_references(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Side, int, float, float]]
) -> None:
    data = tmp_path_factory.mktemp("j")
    with Journal(data, "paper", synchronous="NORMAL", starting_cash=1e7) as j:
        for n, (token, side, qty, price, charges) in enumerate(steps):
            req = request(f"o{n}", side=side, qty=qty, token=token)
            j.record_order(req)
            f = fill(req, 1, qty, price, charges)
            assert j.apply_report(report(req, ExecKind.FILLED, qty, price, f))
        ref = reference_book(steps)
        got = {p.token: p for p in j.positions()}
        for token, (q, cost, realized) in ref.items():
            if q == 0 and abs(realized) < 1e-9:
                assert token not in got or got[token].qty == 0
                continue
            p = got[token]
            assert p.qty == q
            assert p.realized_pnl == pytest.approx(realized, rel=1e-9, abs=1e-6)
            if q:
                assert p.avg_price == pytest.approx(cost / q, rel=1e-9)
        # Accounting identity (numpy): realized - qty*avg == -Σ signed qty*price, per token.
        for token in {s[0] for s in steps}:
            rows = np.array(
                [(1 if s is Side.BUY else -1) * q * p for t, s, q, p, _ in steps if t == token]
            )
            p = got.get(token)
            lhs = 0.0 if p is None else p.realized_pnl - p.qty * p.avg_price
            assert lhs == pytest.approx(-rows.sum(), rel=1e-9, abs=1e-6)
        signed = np.array([(1 if s is Side.BUY else -1) * q * p for _, s, q, p, _ in steps])
        charges = np.array([c for *_, c in steps])
        assert j.cash() == pytest.approx(1e7 - signed.sum() - charges.sum(), rel=1e-12)
        assert j.check() == []


def test_flip_long_to_short_by_hand(tmp_path: Path) -> None:
    with Journal(tmp_path, "paper") as j:
        buy, sell = request("b", Side.BUY, 10), request("s", Side.SELL, 15)
        for req, price in ((buy, 100.0), (sell, 110.0)):
            j.record_order(req)
            j.apply_report(
                report(req, ExecKind.FILLED, req.qty, price, fill(req, 1, req.qty, price, 0.0))
            )
        (p,) = j.positions()
        assert (p.qty, p.avg_price, p.realized_pnl) == (-5, 110.0, 100.0)


def test_risk_state_round_trips(tmp_path: Path) -> None:
    with Journal(tmp_path, "live") as j:
        assert j.get_risk("kill") is None
        j.set_risk("kill", {"halted": True, "reason": "daily loss", "at": 3})
        j.set_risk("kill", {"halted": False})
    with Journal(tmp_path, "live") as j:
        assert j.get_risk("kill") == {"halted": False}


def test_starting_cash_fixed_at_first_open(tmp_path: Path) -> None:
    with Journal(tmp_path, "paper", starting_cash=500.0) as j:
        assert j.cash() == 500.0
    with Journal(tmp_path, "paper", starting_cash=900.0) as j:
        assert j.cash() == 500.0


def test_mode_isolation(tmp_path: Path) -> None:
    with Journal(tmp_path, "live") as j:
        j.record_order(request("live-1"))
    with Journal(tmp_path, "paper") as j:
        j.record_order(request("paper-1"))
    # Each journal only sees its own file.
    with Journal(tmp_path, "paper") as j:
        assert [o.client_order_id for o in j.orders()] == ["paper-1"]
    # A live file put where the paper one lives is refused, and vice versa, untouched.
    live, paper = journal_path(tmp_path, "live"), journal_path(tmp_path, "paper")
    swapped = tmp_path / "swapped"
    shutil.copy(live, journal_path(swapped, "paper").parent.mkdir(parents=True) or
                journal_path(swapped, "paper"))  # fmt: skip
    shutil.copy(paper, journal_path(swapped, "live").parent.mkdir(parents=True) or
                journal_path(swapped, "live"))  # fmt: skip
    before = journal_path(swapped, "paper").read_bytes()
    with pytest.raises(ChimeraError, match="belongs to mode 'live'"):
        Journal(swapped, "paper")
    with pytest.raises(ChimeraError, match="belongs to mode 'paper'"):
        Journal(swapped, "live")
    assert journal_path(swapped, "paper").read_bytes() == before


def test_v1_database_is_migrated(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "paper")
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    MIGRATIONS[0](db)  # exactly what version 1 of the code created
    db.execute("PRAGMA user_version=1")
    db.execute("INSERT INTO meta VALUES ('mode', 'paper')")
    db.execute(
        "INSERT INTO orders VALUES ('old', 'I', '3045', 1, 'BUY', 5, 'MARKET', NULL, NULL, "
        "'ENTRY', 'OPEN', 'B1', 0, 0.0, '', 1)"
    )
    db.commit()
    db.close()
    with Journal(tmp_path, "paper") as j:
        o = j.order("old")
        assert o is not None and (o.status, o.qty) == (OrderStatus.OPEN, 5)
        j.record_order(OrderRequest("new", "I", "3045", 1, Side.SELL, 2, product="DELIVERY"))
        assert j.check() == []
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT client_order_id, product FROM orders ORDER BY rowid").fetchall() == [
        ("old", "INTRADAY"),
        ("new", "DELIVERY"),
    ]
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path, "paper").close()
    db = sqlite3.connect(journal_path(tmp_path, "paper"))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ChimeraError, match="newer"):
        Journal(tmp_path, "paper")


def test_check_catches_tampering(tmp_path: Path) -> None:
    req = request("c1")
    with Journal(tmp_path, "paper") as j:
        j.record_order(req)
        j.apply_report(report(req, ExecKind.FILLED, 10, 10.0, fill(req, 1, 10, 10.0)))
        assert j.check() == []
    db = sqlite3.connect(journal_path(tmp_path, "paper"))
    db.execute("UPDATE positions SET qty = 9")
    db.execute("DELETE FROM cash_ledger WHERE kind = 'CHARGES'")
    db.execute("UPDATE orders SET filled_qty = 11")
    db.commit()
    db.close()
    with Journal(tmp_path, "paper") as j:
        problems = j.check()
    assert any("qty 9" in p for p in problems)
    assert any("cash ledger" in p for p in problems)
    assert any("filled_qty 11" in p for p in problems)


WRITER = textwrap.dedent(
    """
    import sys
    from chimera_core.contracts import ExecKind, ExecutionReport, Fill, OrderRequest, Side
    from chimera_execution.journal import Journal

    j = Journal(sys.argv[1], "paper", starting_cash=1e6)
    run = sys.argv[2]
    n = 0
    while True:
        n += 1
        coid = f"{run}-{n}"
        side = Side.BUY if n % 3 else Side.SELL
        req = OrderRequest(coid, "I", "T" + str(n % 2), 1, side, 10)
        j.record_order(req)
        def rep(kind, filled, fill):
            return ExecutionReport(kind, coid, "I", req.token, side, 10, filled, 100.0 + n % 7,
                                   broker_order_id="B" + coid, fill=fill)
        j.apply_report(rep(ExecKind.ACK, 0, None))
        f1 = Fill(coid + "-1", coid, req.token, side, 4, 100.0 + n % 7, 0.37, n)
        f2 = Fill(coid + "-2", coid, req.token, side, 6, 100.0 + n % 7, 0.41, n)
        j.apply_report(rep(ExecKind.PARTIAL, 4, f1))
        j.apply_report(rep(ExecKind.FILLED, 10, f2))
        j.apply_report(rep(ExecKind.FILLED, 10, f2))
        print(n, flush=True)
    """
)


def test_sigkill_leaves_all_or_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for run in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), f"r{run}"],
            stdout=subprocess.PIPE, env=env, cwd=REPO, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        for _ in range(rng.randint(1, 15)):  # a random number of whole cycles, then mid-way
            assert proc.stdout.readline(), "writer died before being killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        with Journal(tmp_path, "paper") as j:
            assert j.check() == []
            by_order: dict[str, list[int]] = {}
            for f in j.fills():
                by_order.setdefault(f.client_order_id, []).append(f.qty)
            for o in j.orders():
                booked = sum(by_order.get(o.client_order_id, []))
                assert booked <= o.filled_qty <= o.qty
                if o.status is OrderStatus.FILLED:
                    assert booked == 10


def test_a_relative_data_dir_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data_dir = "data" (the default) is relative to where chimera runs."""
    monkeypatch.chdir(tmp_path)
    with Journal("data", "paper") as journal:
        assert journal.check() == []
    assert stored_mode(Path("data") / "paper" / "chimera.db") == "paper"
