"""Journal under failure: a full disk, a damaged file, read-only readers and file modes —
on real SQLite files (SQLITE_FULL comes from a real ``PRAGMA max_page_count`` limit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chimera_core.contracts import ExecKind, ExecutionReport, Fill, OrderRequest, Side
from chimera_core.errors import JournalWriteError
from chimera_execution.journal import Journal, journal_path


def request(coid: str, qty: int = 10) -> OrderRequest:
    return OrderRequest(coid, "I-" + coid, "3045", 1, Side.BUY, qty, exchange_ts_ms=1_000)


def filled(req: OrderRequest, n: int) -> ExecutionReport:
    f = Fill(f"F-{req.client_order_id}-{n}", req.client_order_id, req.token, req.side,
             1, 100.0 + n, 0.5, 2_000 + n)  # fmt: skip
    return ExecutionReport(
        ExecKind.PARTIAL, req.client_order_id, req.intent_id, req.token, req.side, req.qty,
        n, 100.0, broker_order_id="B1", fill=f, exchange_ts_ms=2_000, at_ns=n,
    )  # fmt: skip


def make_full(journal: Journal) -> None:
    """The file may not grow by another page: the next page it needs is SQLITE_FULL."""
    (pages,) = journal._db.execute("PRAGMA page_count").fetchone()
    journal._db.execute(f"PRAGMA max_page_count={pages}")


def test_full_disk_is_a_typed_error_and_rolls_back(tmp_path: Path) -> None:
    with Journal(tmp_path, "paper", starting_cash=1e6) as j:
        big = request("c-big", qty=100_000)
        j.record_order(big)
        make_full(j)
        written = 0
        with pytest.raises(JournalWriteError) as err:
            for n in range(1, 100_000):  # each fill adds a fill, a position and cash rows
                j.apply_report(filled(big, n))
                written = n
        assert written > 0, "the first write after the limit should still fit its pages"
        e = err.value
        assert e.path == str(journal_path(tmp_path, "paper"))
        assert isinstance(e.cause, sqlite3.OperationalError) and "full" in str(e.cause)
        assert "full" in str(e) and str(e.path) in str(e)
        # All or nothing: every earlier report is there whole, the failed one not at all.
        assert j.check() == []
        assert [f.fill_id for f in j.fills()] == [f"F-c-big-{n}" for n in range(1, written + 1)]
        order = j.order("c-big")
        assert order is not None and order.filled_qty == written
        (pos,) = j.positions()
        assert pos.qty == written
        # The connection is not left inside a half transaction: once space is back, the
        # very same journal writes again.
        assert not j._db.in_transaction
        j._db.execute("PRAGMA max_page_count=1073741823")
        j.apply_report(filled(big, written + 1))
        assert j.check() == []
    with Journal(tmp_path, "paper") as again:
        assert again.check() == []
        assert len(again.fills()) == written + 1


def test_every_write_path_raises_the_typed_error(tmp_path: Path) -> None:
    from chimera_core.contracts import OrderIntent

    with Journal(tmp_path, "paper") as j:
        make_full(j)
        writes = [
            lambda i: j.record_order(request(f"o{i}")),
            lambda i: j.record_intent(
                OrderIntent(f"i{i}", "3045", 1, Side.BUY, 1, 100.0, 0, i, 1_000)
            ),
            lambda i: j.set_risk(f"k{i}", {"v": "x" * 500}),
            lambda i: j.record_fill(Fill(f"rf{i}", f"rc{i}", "3045", Side.BUY, 1, 10.0, 0.0, i)),
        ]
        for write in writes:
            with pytest.raises(JournalWriteError):
                for i in range(100_000):
                    write(i)
            assert not j._db.in_transaction
        assert j.check() == []


# ---- a damaged file ----------------------------------------------------------------------
def _journal_with_rows(data_dir: Path, n: int = 400) -> Path:
    with Journal(data_dir, "paper", starting_cash=1e6) as j:
        for i in range(n):
            j.record_order(request(f"c{i:04d}"))
    path = journal_path(data_dir, "paper")
    assert path.stat().st_size > 8 * 4096  # enough pages to damage one in the middle
    return path


def _garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 64)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _middle_page_overwritten(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = b"\xa5" * page
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_garbage, _truncated, _middle_page_overwritten])
def test_a_damaged_journal_is_refused_naming_the_file(tmp_path: Path, damage) -> None:
    from chimera_core.errors import JournalCorrupt

    path = journal_path(tmp_path, "paper")
    if damage is not _garbage:
        _journal_with_rows(tmp_path)
    damage(path)
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt) as err:
        Journal(tmp_path, "paper").close()
    assert err.value.path == str(path)
    message = str(err.value)
    assert str(path) in message and "damaged" in message
    assert "RUNBOOK" in message and ".recover" in message  # what to do about it
    assert path.read_bytes() == before  # refusing wrote nothing into the damaged file


def test_chimera_live_on_a_damaged_journal_prints_one_clean_message(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    path = _journal_with_rows(data)
    _truncated(path)
    config = tmp_path / "chimera.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        '[feed]\nurl = "ws://127.0.0.1:9/smart-stream"\n'  # never reached
        "[governance]\nenabled = false\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "live", "--config", str(config),
         "--env-file", str(tmp_path / ".env")],
        cwd=repo, env={**env, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"chimera live: journal: {path}" in proc.stderr, proc.stderr
    assert "RUNBOOK" in proc.stderr
