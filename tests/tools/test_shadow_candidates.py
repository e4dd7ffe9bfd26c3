"""Shadow candidates (genome versions and TOML files, with errors that name what is wrong)
and per-decision divergence from the primary."""

from __future__ import annotations

import msgspec
import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import (
    Band,
    Decision,
    MetaRiskOutput,
    OrderIntent,
    PhysicsState,
    Side,
    Signal,
    Structure,
    Transition,
    Veto,
)
from chimera_governance.genome import GenomeStore, genes_from_strategy
from tools.shadow.candidates import (
    ACTIVE,
    CandidateError,
    candidate_config,
    resolve,
    resolve_all,
)
from tools.shadow.divergence import compare

GENES = {
    "energy_threshold": 0.4,
    "band_k": 2.5,
    "energy_lookback": 30.0,
    "z_lookback": 80.0,
    "band_lookback": 150.0,
}


def _cfg(tmp_path):
    return parse_config(f'data_dir = "{tmp_path / "data"}"\n[feed]\ntokens = ["2885"]\n')


def test_the_active_genome_is_the_configured_strategy_until_the_store_has_a_version(tmp_path):
    cfg = _cfg(tmp_path)
    active = resolve(ACTIVE, cfg)
    assert active.params == {g.name: g.default for g in genes_from_strategy(cfg.strategy)}
    (tmp_path / "data" / "paper").mkdir(parents=True)
    with GenomeStore(tmp_path / "data" / "paper" / "genome.db") as store:
        v = store.new_version("default", GENES, "operator", 1_000)
    assert resolve(ACTIVE, cfg).params == GENES
    by_version = resolve(f"default@{v.version}", cfg)
    assert by_version.name == f"default-v{v.version}" and by_version.params == GENES
    assert resolve(f"v{v.version}", cfg).params == GENES
    with pytest.raises(CandidateError, match="unknown genome version 99"):
        resolve("default@99", cfg)


def test_a_toml_candidate_runs_the_primary_config_on_its_genes_on_paper(tmp_path):
    cfg = _cfg(tmp_path)
    f = tmp_path / "wide.toml"
    f.write_text("[genome]\nenergy_threshold = 0.4\nz_lookback = 80\n")
    cands = resolve_all([str(f)], cfg)
    assert [c.name for c in cands] == [ACTIVE, "wide"]
    wide = cands[1]
    assert wide.params["energy_threshold"] == 0.4 and wide.params["z_lookback"] == 80.0
    c = candidate_config(cfg, wide, tmp_path / "shadow")
    assert c.strategy.energy_threshold == 0.4 and c.strategy.z_lookback == 80
    assert isinstance(c.strategy.z_lookback, int)
    assert c.mode == "paper" and c.execution.broker == "paper" and c.execution.enabled
    assert c.data_dir == str(tmp_path / "shadow" / "wide")
    # Everything else is the primary's.
    same = msgspec.structs.replace(
        c, strategy=cfg.strategy, data_dir=cfg.data_dir, execution=cfg.execution,
        telemetry=cfg.telemetry,
    )  # fmt: skip
    assert same == msgspec.structs.replace(cfg, execution=cfg.execution)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[genome]\nenergy_treshold = 0.4\n", "'energy_treshold' is not a gene"),
        ("[genome]\nenergy_threshold = 'high'\n", "must be a number"),
        ("[genome]\nenergy_threshold = 9.0\n", r"energy_threshold = 9.0 outside \[0.01, 2.0\]"),
        ("name = 'active'\n[genome]\nband_k = 2.0\n", "not 'active'"),
        ("colour = 1\n[genome]\nband_k = 2.0\n", r"unknown keys \['colour'\]"),
        ("name = 'x'\n", r"needs a \[genome\] table"),
        ("[genome\n", "cannot read it as TOML"),
    ],
)
def test_bad_candidates_say_what_is_wrong(tmp_path, text, error):
    f = tmp_path / "cand.toml"
    f.write_text(text)
    with pytest.raises(CandidateError, match=error):
        resolve(str(f), _cfg(tmp_path))


def test_a_candidate_named_twice_or_not_found_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    f = tmp_path / "wide.toml"
    f.write_text("[genome]\nband_k = 3.0\n")
    with pytest.raises(CandidateError, match="named twice"):
        resolve_all([str(f), str(f)], cfg)
    with pytest.raises(CandidateError, match="expected FAMILY@VERSION, vN or an existing TOML"):
        resolve("nowhere.toml", cfg)
    with pytest.raises(CandidateError, match="no genome store"):
        resolve("default@3", cfg)


# ---- divergence ------------------------------------------------------------------------


def _decision(
    direction: int = 0,
    reason: str = "energy_below_threshold",
    energy: float = 0.1,
    state: str = "IDLE",
    intent: OrderIntent | None = None,
    vetoes: tuple[Veto, ...] = (),
    transitions: tuple[Transition, ...] = (),
) -> Decision:
    physics = PhysicsState(
        close=100.0, closed_bars=200, energy=energy, z=0.5, structure=Structure.TRAPPED,
        band=Band.NEUTRAL, band_mean=100.0, band_std=1.0, volatility=0.01, atr=0.5,
    )  # fmt: skip
    meta = MetaRiskOutput(
        allowed=not vetoes, halt=False, vetoes=vetoes, rolling_sharpe=0.0, drawdown=0.0,
        daily_pnl=0.0, trades_today=0, open_positions=0,
    )  # fmt: skip
    return Decision(
        seq=7, token="2885", exchange_type=1, exchange_ts_ms=1_000, tick_sequence=7,
        bar_start_ms=0, physics=physics, signal=Signal(direction, reason), state=state,
        transitions=transitions, intent=intent, confidence=0.5, influence={},
        feed_stale=False, recv_ns=1, decided_ns=2, meta_risk=meta,
    )  # fmt: skip


def _intent(qty: int = 10) -> OrderIntent:
    return OrderIntent("CH-1", "2885", 1, Side.BUY, qty, 100.0, 0, 1, 1_000)


def test_equal_decisions_do_not_diverge_whatever_their_timing():
    a = _decision(1, "vacuum_breakout", state="READY", intent=_intent())
    b = msgspec.structs.replace(a, decided_ns=99, recv_ns=5, confidence=0.9)
    assert compare("c", a, b) is None
    assert compare("c", None, None) is None


def test_a_different_signal_and_intent_diverge_with_the_physics_and_threshold_named():
    primary = _decision(1, "vacuum_breakout", energy=0.3, state="READY", intent=_intent())
    mine = _decision(0, "energy_below_threshold", energy=0.3)
    d = compare("calm", primary, mine)
    assert d is not None
    assert d.fields == ("signal", "intent", "state")
    assert d.primary_signal == 1 and d.candidate_signal == 0
    assert d.primary_intent == "BUY 10" and d.candidate_intent == ""
    assert "vacuum_breakout" in d.reason and "energy_below_threshold" in d.reason
    assert "physics" not in d.reason  # same physics: the threshold made the difference
    other = compare("slow", primary, _decision(0, "warmup", energy=float("nan")))
    assert other is not None and other.reason.startswith("physics: energy 0.3 vs nan")


def test_a_veto_a_size_and_a_state_machine_move_are_each_a_divergence():
    vetoed = _decision(1, "vacuum_breakout", vetoes=(Veto("max_spread", 0.9, 0.5),))
    d = compare("c", _decision(1, "vacuum_breakout"), vetoed)
    assert d is None  # the same decision: a veto that changed nothing is not a divergence
    d = compare(
        "c",
        _decision(1, "vacuum_breakout", intent=_intent(10)),
        _decision(1, "vacuum_breakout", intent=_intent(20), vetoes=(Veto("max_qty", 20, 10),)),
    )
    assert d is not None and d.fields == ("intent",)
    assert "BUY 10 vs BUY 20" in d.reason and "max_qty" in d.reason
    moved = _decision(transitions=(Transition("FILLED", "EXECUTE", "COOLDOWN", True),))
    d = compare("c", _decision(), moved)
    assert d is not None and d.fields == ("transitions",)
    assert d.reason == "state-machine moves [] vs [FILLED EXECUTE->COOLDOWN]"
    d = compare("c", _decision(), None)
    assert d is not None and d.fields == ("decision",) and "candidate dropped" in d.reason
