"""A study's inputs from a long-format file: one instrument per symbol, each referring to
the file, read as `chimera backtest` reads them; a rerun's list of paths (one per
instrument) loads the same instruments once."""

from __future__ import annotations

import pytest

from chimera_core.errors import ChimeraError
from tests.loopback import REPO
from tests.optimize.conftest import workload_of
from tools.backtest.universe import load_universe
from tools.optimize.inputs import load_instruments

MULTI = REPO / "data" / "samples" / "synth_4x5m.csv"


def test_a_long_format_file_gives_one_instrument_per_symbol(cfg):
    loaded = load_instruments([MULTI], "NSE_CM")
    u = load_universe([MULTI])
    assert [r.token for r, _ in loaded] == list(u.tokens) == ["SYN0", "SYN1", "SYN2", "SYN3"]
    assert [r.sha256 for r, _ in loaded] == [b.sha256 for b in u.bars]
    assert {r.path for r, _ in loaded} == {str(MULTI.resolve())}
    # A rerun names the file once per instrument (its refs): the same four, once each.
    again = load_instruments([r.path for r, _ in loaded], "NSE_CM")
    assert [r for r, _ in again] == [r for r, _ in loaded]
    w = workload_of(cfg, loaded, "ma_cross", train=3, test=2)
    assert [i.name for i in w.instruments] == ["SYN0", "SYN1", "SYN2", "SYN3"]


def test_a_symbol_in_two_files_is_refused(tmp_path):
    copy = tmp_path / "copy.csv"
    copy.write_bytes(MULTI.read_bytes())
    with pytest.raises(ChimeraError, match="instrument 'SYN0' given twice"):
        load_instruments([MULTI, copy], "NSE_CM")
