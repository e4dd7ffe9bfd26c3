"""The seeded random universe: reproducible, valid bars of the NSE session, and bar returns
whose realised correlation (computed here with numpy from the written file) matches the
factor model's, inside the asked range."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.errors import ChimeraError
from tools.backtest.synth import synth_universe, write_universe

IST = timedelta(hours=5, minutes=30)


def _read(path):
    t = pq.read_table(path)
    symbols = np.asarray(t.column("symbol").to_pylist())
    cols = {c: t.column(c).to_numpy() for c in ("open", "high", "low", "close", "volume")}
    ts = t.column("timestamp").cast("int64").to_numpy()
    return symbols, ts, cols


def test_the_same_seed_gives_the_same_file_and_another_seed_another(tmp_path):
    a = write_universe(synth_universe(5, 200, seed=4), tmp_path / "a.parquet")
    b = write_universe(synth_universe(5, 200, seed=4), tmp_path / "b.parquet")
    c = write_universe(synth_universe(5, 200, seed=5), tmp_path / "c.parquet")
    assert pq.read_table(a).equals(pq.read_table(b))
    assert not pq.read_table(a).equals(pq.read_table(c))


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lo=st.floats(0.0, 0.7),
    width=st.floats(0.0, 0.25),
)
def test_the_realised_correlation_matches_the_model_in_the_range(tmp_path_factory, seed, lo, width):
    hi = min(0.95, lo + width)
    n, bars = 20, 3000
    u = synth_universe(n, bars, seed=seed, rho=(lo, hi))
    path = write_universe(u, tmp_path_factory.mktemp("s") / "u.parquet")
    symbols, _ts, cols = _read(path)
    close = np.stack([cols["close"][symbols == s] for s in u.symbols])
    # Independent of the generator: log returns of the written (rounded) closes.
    r = np.diff(np.log(close), axis=1)
    realised = np.corrcoef(r)
    off = ~np.eye(n, dtype=bool)
    model = u.corr[off]
    assert np.all((model >= lo - 1e-12) & (model <= hi + 1e-12))
    # Sampling error of a correlation over T returns: (1 - rho^2) / sqrt(T); 5 of them,
    # and the rounding of prices to 0.01 (well below it at these prices and volatilities).
    tol = 5 * (1 - model**2) / math.sqrt(bars - 1) + 0.01
    assert np.all(np.abs(realised[off] - model) <= tol)


def test_the_bars_are_valid_bars_of_the_nse_session(tmp_path):
    u = synth_universe(3, 400, seed=9)
    symbols, ts, cols = _read(write_universe(u, tmp_path / "u.parquet"))
    o, h, lo, c, v = (cols[k] for k in ("open", "high", "low", "close", "volume"))
    assert np.all(h >= np.maximum(o, c)) and np.all(lo <= np.minimum(o, c)) and np.all(lo > 0)
    assert np.all(v > 0)
    for s in u.symbols:
        t = ts[symbols == s]
        assert t.size == 400 and np.all(np.diff(t) > 0)
        local = [datetime.fromtimestamp(x / 1000, UTC) + IST for x in t.tolist()]
        assert all(d.weekday() < 5 for d in local)
        minutes = {d.hour * 60 + d.minute for d in local}
        assert min(minutes) == 9 * 60 + 15 and max(minutes) == 15 * 60 + 25


def test_a_bad_range_is_refused():
    with pytest.raises(ChimeraError, match="rho range"):
        synth_universe(3, 10, rho=(0.8, 0.2))
