"""The search space: from the strategy and the genome's bounds, or a checked TOML file."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_governance.genome import DEFAULT_GENES
from tools.backtest.strategies import get
from tools.optimize.space import SpaceError, grid, load_space, space_for, suggest
from tools.optimize.study import grid_sampler


def test_the_default_strategy_is_searched_within_the_genomes_gene_bounds():
    space = space_for(get("default"))
    genes = {g.name: g for g in DEFAULT_GENES}
    assert set(space.names) == set(genes)
    for d in space.dimensions:
        assert (d.low, d.high) == (genes[d.name].lo, genes[d.name].hi), d.name
        assert d.kind == ("int" if genes[d.name].integer else "float")
    # 0.01..2.0 spans two decades: searched on a log scale; band_k 1..4 is not.
    logs = {d.name: d.log for d in space.dimensions}
    assert logs["energy_threshold"] and not logs["band_k"]


def test_a_strategy_without_genes_is_searched_within_its_parameter_bounds():
    space = space_for(get("ma_cross"))
    assert [(d.name, d.low, d.high) for d in space.dimensions] == [
        ("fast", 1, 10_000), ("slow", 2, 10_000),
    ]  # fmt: skip


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


def test_a_toml_space_narrows_ranges_lists_values_and_fixes_parameters(tmp_path):
    path = _write(
        tmp_path,
        """
strategy = "default"
[params.energy_threshold]
low = 0.02
high = 0.5
log = true
grid = 4
[params.band_k]
values = [1.5, 2.0, 2.5]
[params.energy_lookback]
low = 10
high = 30
step = 10
[fixed]
z_lookback = 60
band_lookback = 140
[guards]
max_pbo = 0.4
""",
    )
    space, guards = load_space(path, get("default"))
    assert guards == {"max_pbo": 0.4}
    assert space.fixed == {"z_lookback": 60, "band_lookback": 140}
    pts = grid(space)
    assert pts["band_k"] == [1.5, 2.0, 2.5]
    assert pts["energy_lookback"] == [10, 20, 30]
    assert pts["energy_threshold"][0] == pytest.approx(0.02)
    assert pts["energy_threshold"][-1] == pytest.approx(0.5)
    assert len(pts["energy_threshold"]) == 4
    assert space.grid_size() == 4 * 3 * 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "[params.nope]\nlow = 1\nhigh = 2\n",
            "has no parameter 'nope'; it takes: energy_lookback",
        ),
        ("[params.band_k]\nlo = 1\n", "lo"),
        ("[params.band_k]\nlow = 3\nhigh = 2\n", "low 3 and high 2 must satisfy"),
        ("[params.band_k]\nlow = -1\nhigh = 2\n", "0 <= low < high <= 100"),
        ("[params.energy_lookback]\nlow = 1.5\nhigh = 9\n", "must satisfy"),
        ("[params.energy_lookback]\nlow = 3\nhigh = 9\nstep = 1.5\n", "step must be a whole"),
        ("[params.band_k]\nlow = 1\nhigh = 3\nstep = 0.5\nlog = true\n", "log and step"),
        ("[params.band_k]\nvalues = [1, 1]\n", "values repeat"),
        ("[params.band_k]\nvalues = [1, 2]\nlow = 1\n", "either values"),
        ("[fixed]\nband_k = 500\n", "outside [0, 100]"),
        ("[fixed]\nband_k = 2\n[params.band_k]\nlow = 1\nhigh = 2\n", "both searched"),
        ('strategy = "ma_cross"\n', "the study runs 'default'"),
        ("[tables]\n", "allowed: top-level strategy"),
        ("[params.band_k\n", "not valid TOML"),
    ],
)
def test_a_bad_space_file_names_the_key_and_what_is_allowed(tmp_path, text, needle):
    with pytest.raises(SpaceError) as err:
        load_space(_write(tmp_path, text), get("default"))
    assert needle in str(err.value)


def test_a_grid_too_large_is_refused_with_what_to_do():
    space = space_for(get("ma_cross"))
    with pytest.raises(SpaceError, match="more than"):
        grid(space.__class__(strategy="ma_cross", dimensions=tuple(
            d.__class__(name=d.name, kind="int", low=1, high=10_000, step=1)
            for d in space.dimensions)))  # fmt: skip


def test_the_grid_sampler_visits_every_grid_point_once(tmp_path):
    path = _write(
        tmp_path,
        """
[params.energy_threshold]
values = [0.05, 0.1]
[params.energy_lookback]
low = 10
high = 12
[params.band_k]
low = 1.0
high = 3.0
grid = 3
""",
    )
    space, _ = load_space(path, get("default"))
    pts = grid(space)
    study = optuna.create_study(sampler=grid_sampler(pts, seed=3))
    seen = []
    for _ in range(space.grid_size()):
        t = study.ask()
        seen.append(tuple(suggest(t, space)[n] for n in space.names))
        study.tell(t, 0.0)
    want = set(itertools.product(*(pts[n] for n in space.names)))
    assert len(seen) == len(want) == 2 * 3 * 3
    assert set(seen) == want


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(["default", "ma_cross"]))
def test_every_drawn_parameter_set_is_inside_the_strategys_bounds(seed, name):
    spec = get(name)
    space = space_for(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(5):
        params = suggest(study.ask(), space)
        for p in spec.params:  # Param.check raises outside the declared bounds
            assert p.check(params[p.name]) == params[p.name]
