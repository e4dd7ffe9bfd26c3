"""Strategy genome: slow learning, hard clamps, versions in SQLite, rollback."""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core.config import StrategyConfig
from chimera_governance.genome import (
    DEFAULT_GENES,
    MAX_STEP_FRACTION,
    MIN_HISTORY,
    REASON_AUTO_ROLLBACK,
    REASON_LEARN,
    Gene,
    GenomeError,
    GenomeStore,
    genes_from_strategy,
    pearson,
    step_params,
)

GENE_NAMES = [g.name for g in DEFAULT_GENES]
DEFAULTS = {g.name: float(g.default) for g in DEFAULT_GENES}
BOUNDS = {g.name: g for g in DEFAULT_GENES}
STORE_SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Trade = tuple[float, dict[str, float]]

feature_values = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
trade_st = st.tuples(
    st.floats(min_value=-100.0, max_value=100.0, allow_nan=False),
    st.fixed_dictionaries({}, optional={name: feature_values for name in GENE_NAMES}),
)
trades_st = st.lists(trade_st, max_size=90)


@contextmanager
def fresh_store(**kwargs: Any) -> Iterator[GenomeStore]:
    with tempfile.TemporaryDirectory() as d, GenomeStore(Path(d) / "genome.db", **kwargs) as s:
        yield s


def feed(store: GenomeStore, trades: Sequence[Trade], family: str = "default", t0: int = 0):
    outs = []
    for i, (pnl, features) in enumerate(trades):
        outs.append(store.on_trade_closed(family, pnl, features, t0 + 1000 * (i + 1)))
    return outs


def correlated(n: int, slope: float = 1.0, offset: float = 0.0) -> list[Trade]:
    """Trades whose pnl rises with every feature: the genome learns to raise each gene."""
    out = []
    for i in range(n):
        x = float(i % 7)
        out.append((offset + slope * (x - 3.0), dict.fromkeys(GENE_NAMES, x)))
    return out


def flat(n: int, pnl: float) -> list[Trade]:
    return [(pnl, {}) for _ in range(n)]


# ------------------------------------------------------------------ slow learning


@STORE_SETTINGS
@given(trades=st.lists(trade_st, max_size=MIN_HISTORY - 1))
def test_never_moves_before_min_history(trades: list[Trade]) -> None:
    with fresh_store() as store:
        for out in feed(store, trades):
            assert out.version == 1
            assert out.params == DEFAULTS
            assert out.learning is False
        assert len(store.history("default")) == (1 if trades else 0)


def test_learns_at_min_history_and_not_before() -> None:
    with fresh_store() as store:
        outs = feed(store, correlated(MIN_HISTORY))
        assert [o.version for o in outs[:-1]] == [1] * (MIN_HISTORY - 1)
        last = outs[-1]
        assert last.version == 2 and last.learning and last.closed_trades == MIN_HISTORY
        # Every feature correlates positively with pnl, so every gene goes up a small step.
        for name in GENE_NAMES:
            assert last.params[name] > DEFAULTS[name]
            assert last.params[name] <= DEFAULTS[name] * (1 + MAX_STEP_FRACTION)
        v2 = store.history("default")[-1]
        assert v2.reason == REASON_LEARN and v2.parent_version == 1
        assert v2.metrics["trades"] == 30 and v2.metrics["corr_band_k"] == pytest.approx(1.0)
        assert {"mean_pnl", "sharpe"} <= set(v2.metrics)


def test_updates_at_most_once_every_k_trades() -> None:
    with fresh_store() as store:
        feed(store, correlated(140, offset=1.0))  # a winning child: never rolled back
        created = [v.created_exchange_ts_ms // 1000 for v in store.history("default")]
        # trade counts at which versions were created: 31, then slots 51, 71, ... (probation)
        assert created[1] == MIN_HISTORY
        assert all(b - a >= 10 for a, b in itertools.pairwise(created[1:]))
        assert all((c - MIN_HISTORY) % 10 == 0 for c in created[1:])


@STORE_SETTINGS
@given(trades=trades_st)
def test_store_versions_respect_clamps(trades: list[Trade]) -> None:
    with fresh_store() as store:
        feed(store, trades)
        versions = {v.version: v for v in store.history("default")}
        for v in versions.values():
            for g in DEFAULT_GENES:
                value = v.params[g.name]
                assert g.lo <= value <= g.hi
                if g.integer:
                    assert value == int(value)
            if v.reason == REASON_LEARN:
                parent = versions[v.parent_version]
                for name, value in v.params.items():
                    old = parent.params[name]
                    assert abs(value - old) <= MAX_STEP_FRACTION * abs(old) * (1 + 1e-12)


@settings(max_examples=300, deadline=None)
@given(
    params=st.fixed_dictionaries(
        {
            g.name: (
                st.integers(int(g.lo), int(g.hi)).map(float)
                if g.integer
                else st.floats(g.lo, g.hi, allow_nan=False)
            )
            for g in DEFAULT_GENES
        }
    ),
    direction=st.fixed_dictionaries(
        {name: st.floats(-1.0, 1.0, allow_nan=False) for name in GENE_NAMES}
    ),
    lr=st.sampled_from([0.01, 0.1, 1.0, 100.0]),
)
def test_step_never_moves_more_than_20pct_and_stays_in_bounds(
    params: dict[str, float], direction: dict[str, float], lr: float
) -> None:
    new = step_params(params, DEFAULT_GENES, direction, lr)
    for g in DEFAULT_GENES:
        old, value = params[g.name], new[g.name]
        assert abs(value - old) <= MAX_STEP_FRACTION * abs(old) * (1 + 1e-12)
        assert g.lo <= value <= g.hi
        if g.integer:
            assert value == int(value)
        if direction[g.name] == 0:
            assert value == old


def test_huge_learning_rate_is_clamped_to_20pct() -> None:
    new = step_params(DEFAULTS, DEFAULT_GENES, dict.fromkeys(GENE_NAMES, 1.0), 100.0)
    assert new["energy_threshold"] == pytest.approx(0.24)
    assert new["band_k"] == pytest.approx(2.4)
    assert new["energy_lookback"] == 24.0
    down = step_params(DEFAULTS, DEFAULT_GENES, dict.fromkeys(GENE_NAMES, -1.0), 100.0)
    assert down["band_lookback"] == 112.0
    assert down["band_k"] == pytest.approx(1.6)


def test_pearson_edges() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert pearson([1], [1]) == 0.0


# ------------------------------------------------------------------ rollback


def _store_with_learned_version(store: GenomeStore) -> None:
    feed(store, correlated(MIN_HISTORY))
    assert store.current("default").version == 2


@STORE_SETTINGS
@given(trades=trades_st)
def test_rollback_restores_parent_params_exactly(trades: list[Trade]) -> None:
    with fresh_store() as store:
        feed(store, correlated(MIN_HISTORY) + trades)
        before = store.current_version("default")
        parent = store.version("default", before.parent_version)  # type: ignore[arg-type]
        n_before = len(store.history("default"))
        new = store.rollback("default", reason="test")
        assert new.params == parent.params  # exact, not approximate
        assert new.version == before.version + 1
        assert new.parent_version == before.version
        assert new.restored_from == parent.version
        assert new.reason == "test"
        assert store.current("default").params == parent.params
        # history is never deleted
        history = store.history("default")
        assert len(history) == n_before + 1
        assert [v.version for v in history] == list(range(1, len(history) + 1))


def test_rollback_to_explicit_version_and_errors() -> None:
    with fresh_store() as store:
        with pytest.raises(GenomeError, match="unknown genome family"):
            store.rollback("default")
        feed(store, flat(3, 1.0))
        with pytest.raises(GenomeError, match="no parent"):
            store.rollback("default")
        feed(store, correlated(MIN_HISTORY - 3), t0=3000)
        new = store.rollback("default", to_version=1, exchange_ts_ms=123)
        assert new.params == DEFAULTS and new.restored_from == 1
        assert new.created_exchange_ts_ms == 123
        with pytest.raises(GenomeError, match="unknown genome version 99"):
            store.rollback("default", to_version=99)
        # the default time is the family's latest known exchange time
        again = store.rollback("default", to_version=2)
        assert again.created_exchange_ts_ms == 1000 * MIN_HISTORY
        assert again.params == store.version("default", 2).params


def test_auto_rollback_fires_on_underperforming_child() -> None:
    with fresh_store() as store:
        _store_with_learned_version(store)
        parent_last20 = store.trade_pnls("default", 1)[-20:]
        outs = feed(store, flat(20, -5.0), t0=10**6)
        assert [o.version for o in outs[:-1]] == [2] * 19
        assert outs[-1].version == 3 and outs[-1].params == DEFAULTS
        v3 = store.current_version("default")
        assert v3.reason == REASON_AUTO_ROLLBACK
        assert v3.parent_version == 2 and v3.restored_from == 1
        assert v3.metrics["trades"] == 20 and v3.metrics["mean_pnl"] == -5.0
        assert v3.metrics["parent_mean_pnl"] == pytest.approx(sum(parent_last20) / 20)
        assert v3.metrics["parent_trades"] == 20


def test_no_auto_rollback_on_better_child() -> None:
    with fresh_store() as store:
        _store_with_learned_version(store)
        feed(store, flat(20, 5.0), t0=10**6)
        history = store.history("default")
        assert REASON_AUTO_ROLLBACK not in [v.reason for v in history]
        # v2 passed probation at trade 51; that slot learns again from v2 (no rollback)
        cur = store.current_version("default")
        assert cur.version == 3 and cur.reason == REASON_LEARN and cur.parent_version == 2


def test_flat_features_do_not_move_the_genome() -> None:
    with fresh_store() as store:
        feed(store, flat(80, 1.0))
        assert [v.version for v in store.history("default")] == [1]
        assert store.current("default").learning


def test_no_update_during_probation() -> None:
    with fresh_store() as store:
        _store_with_learned_version(store)
        feed(store, correlated(19, offset=10.0), t0=10**6)  # trade 41 is a slot, but v2 is new
        assert store.current("default").version == 2
        feed(store, correlated(1, offset=10.0), t0=2 * 10**6)  # trade 51: judged, passes, learns
        cur = store.current_version("default")
        assert cur.version == 3 and cur.reason == REASON_LEARN and cur.parent_version == 2


# ------------------------------------------------------------------ persistence, determinism


@STORE_SETTINGS
@given(trades=trades_st, split=st.integers(0, 90))
def test_persistence_across_reopen(trades: list[Trade], split: int) -> None:
    trades = correlated(MIN_HISTORY) + trades
    with tempfile.TemporaryDirectory() as d:
        with GenomeStore(Path(d) / "whole.db") as whole:
            feed(whole, trades)
            expected = whole.history("default")
            expected_out = whole.current("default")
        split = min(split, len(trades))
        path = Path(d) / "split.db"
        with GenomeStore(path) as first:
            feed(first, trades[:split])
        with GenomeStore(path) as second:
            feed(second, trades[split:], t0=1000 * split)
        with GenomeStore(path) as reopened:
            assert reopened.history("default") == expected
            assert reopened.current("default") == expected_out
        with GenomeStore(Path(d) / "whole.db") as reopened_whole:
            assert reopened_whole.history("default") == expected


@STORE_SETTINGS
@given(trades=trades_st)
def test_deterministic(trades: list[Trade]) -> None:
    trades = correlated(MIN_HISTORY) + trades
    with fresh_store() as a, fresh_store() as b:
        outs_a, outs_b = feed(a, trades), feed(b, trades)
        assert outs_a == outs_b
        assert a.history("default") == b.history("default")


def test_db_is_wal_and_sees_other_writers() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "genome.db"
        with GenomeStore(path) as engine, GenomeStore(path) as cli:
            feed(engine, correlated(MIN_HISTORY))
            assert engine.current("default").version == 2  # cached now
            cli.rollback("default", reason="operator")
            assert engine.current("default").version == 3
            assert engine.current("default").params == DEFAULTS
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


# ------------------------------------------------------------------ families, inputs


def test_families_are_independent_and_tokens_map() -> None:
    with fresh_store(token_families={"2885": "energy", "1594": "banks"}) as store:
        assert store.family_for("2885") == "energy"
        assert store.family_for("9999") == "default"
        feed(store, correlated(MIN_HISTORY), family="energy")
        feed(store, flat(5, 1.0), family="banks")
        assert store.current("energy").version == 2
        assert store.current("banks").version == 1 and store.current("banks").closed_trades == 5
        assert store.families() == ["banks", "energy"]


def test_unknown_family_reads() -> None:
    with fresh_store() as store:
        out = store.current("nope")  # defaults, not yet persisted
        assert out.version == 0 and out.params == DEFAULTS and not out.learning
        assert store.history("nope") == []
        with pytest.raises(GenomeError, match="unknown genome family"):
            store.current_version("nope")


def test_bad_inputs() -> None:
    with fresh_store() as store:
        with pytest.raises(GenomeError, match="finite"):
            store.on_trade_closed("default", float("nan"), {}, 1)
        # a NaN feature is ignored, not stored
        store.on_trade_closed("default", 1.0, {"band_k": float("nan")}, 1)
        assert store.current("default").closed_trades == 1
    with pytest.raises(GenomeError, match="lo < hi"):
        Gene("x", 1.0, 2.0, 1.0)
    with pytest.raises(GenomeError, match="outside"):
        Gene("x", 5.0, 1.0, 2.0)


def test_genes_from_strategy() -> None:
    genes = genes_from_strategy(StrategyConfig(band_k=3.0, energy_lookback=250))
    by_name = {g.name: g for g in genes}
    assert by_name["band_k"].default == 3.0
    assert by_name["energy_lookback"].default == 100.0  # clamped to the gene's bounds
    assert {g.name: g.default for g in genes_from_strategy(StrategyConfig())} == DEFAULTS


@STORE_SETTINGS
@given(child=st.lists(st.floats(-50.0, 50.0, allow_nan=False), min_size=20, max_size=20))
def test_auto_rollback_iff_child_mean_below_parent(child: list[float]) -> None:
    with fresh_store() as store:
        _store_with_learned_version(store)
        parent_mean = sum(store.trade_pnls("default", 1)[-20:]) / 20
        feed(store, [(p, {}) for p in child], t0=10**6)
        reasons = [v.reason for v in store.history("default")]
        fired = REASON_AUTO_ROLLBACK in reasons
        child_mean = sum(child) / 20
        if abs(child_mean - parent_mean) > 1e-9:  # away from float ties
            assert fired == (child_mean < parent_mean)
        if fired:
            assert store.current("default").params == DEFAULTS
