"""The search space of a study: which strategy parameters move, in what range, on what grid.

Two sources, one result (a ``Space``):

- ``space_for(strategy)``: every parameter the strategy declares (``StrategySpec.params``),
  its bounds narrowed to the genome's gene bounds where the strategy is the genome's
  (``chimera_governance.genome.DEFAULT_GENES``: what learning may move it in, so a
  candidate can be proposed as a genome version without leaving them).
- ``load_space(path, strategy)``: a TOML file (docs/OPTIMIZE.md, "Search space")::

      [params.energy_threshold]
      low = 0.05
      high = 1.0
      log = true          # sample on a log scale (TPE / random)
      grid = 5            # points for the grid sampler (floats need grid or step)
      [params.band_k]
      values = [1.5, 2.0, 2.5]
      [fixed]
      z_lookback = 60     # held, not searched

  Every key is checked (msgspec), every name against the strategy and every range
  against the strategy's bounds; errors name the key and what is allowed.

``suggest(trial, space)`` asks an Optuna trial for one parameter set; ``grid(space)`` is
the grid sampler's search space (every point a parameter can take on the grid).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from chimera_core.errors import ChimeraError
from tools.backtest.strategies import Param, StrategySpec

MAX_GRID_POINTS = 1_000_000  # a grid larger than this is a mistake, not a study
DEFAULT_GRID = 5  # points on a float range without ``grid`` or ``step``
INT_GRID_LIMIT = 50  # an int range up to this many values is gridded whole
LOG_SPAN = 100.0  # a float range with high / low >= this is searched on a log scale


class SpaceError(ChimeraError, ValueError):
    """A search space that cannot be searched; the message names the key and the fix."""


class Dimension(msgspec.Struct, frozen=True):
    """One searched parameter: a range (``low``..``high``, ints or floats, optionally a
    ``step`` or log scale) or a list of ``values``."""

    name: str
    kind: str  # "int" | "float" | "bool" | "categorical"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple[Any, ...] | None = None
    grid: int | None = None  # grid points on a float range

    def grid_points(self) -> list[Any]:
        """The values this dimension takes on the grid sampler's grid."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            lo, hi = int(self.low), int(self.high)
            if self.step is not None:
                return list(range(lo, hi + 1, int(self.step)))
            if hi - lo + 1 <= INT_GRID_LIMIT:
                return list(range(lo, hi + 1))
            n = self.grid or DEFAULT_GRID
            raw = np.geomspace(lo, hi, n) if self.log and lo > 0 else np.linspace(lo, hi, n)
            return sorted({round(float(x)) for x in raw})
        if self.step is not None:
            n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
            return [float(self.low + i * self.step) for i in range(n)]
        n = self.grid or DEFAULT_GRID
        raw = (
            np.geomspace(self.low, self.high, n)
            if self.log and self.low > 0
            else np.linspace(self.low, self.high, n)
        )
        return [float(x) for x in raw]


class Space(msgspec.Struct, frozen=True):
    """The searched dimensions and the parameters held fixed (name -> value)."""

    strategy: str
    dimensions: tuple[Dimension, ...]
    fixed: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def grid_size(self) -> int:
        size = 1
        for d in self.dimensions:
            size *= len(d.grid_points())
        return size


# ---- the TOML file ------------------------------------------------------------------------


class _ParamToml(msgspec.Struct, forbid_unknown_fields=True):
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: list[Any] | None = None
    grid: int | None = None


class _SpaceToml(msgspec.Struct, forbid_unknown_fields=True):
    strategy: str | None = None
    params: dict[str, _ParamToml] = msgspec.field(default_factory=dict)
    fixed: dict[str, Any] = msgspec.field(default_factory=dict)
    guards: dict[str, float] = msgspec.field(default_factory=dict)


_KINDS = {int: "int", float: "float", bool: "bool"}


def _gene_bounds(strategy: StrategySpec) -> dict[str, tuple[float, float]]:
    """The genome's gene bounds, for the genome's own strategy (the one it seeds)."""
    if strategy.name != "default":
        return {}
    from chimera_governance.genome import DEFAULT_GENES

    return {g.name: (g.lo, g.hi) for g in DEFAULT_GENES}


def _dimension_from_param(p: Param, genes: Mapping[str, tuple[float, float]]) -> Dimension:
    kind = _KINDS[p.kind]
    if kind == "bool":
        return Dimension(name=p.name, kind="categorical", values=(False, True))
    lo, hi = genes.get(p.name, (p.low, p.high))
    lo, hi = max(lo, p.low), min(hi, p.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise SpaceError(
            f"parameter {p.name!r} of strategy has no finite bounds ([{lo:g}, {hi:g}]): "
            "give low and high in a space TOML file (--space)"
        )
    if kind == "int":
        return Dimension(name=p.name, kind="int", low=float(math.ceil(lo)), high=float(hi // 1))
    # A positive range over two decades or more is searched on a log scale (an energy
    # threshold of 0.01..2: uniform draws would almost never try the low end).
    log = lo > 0 and hi / lo >= LOG_SPAN
    return Dimension(name=p.name, kind="float", low=float(lo), high=float(hi), log=log)


def space_for(strategy: StrategySpec) -> Space:
    """Every declared parameter of ``strategy``, within its bounds (and the genome's)."""
    genes = _gene_bounds(strategy)
    dims = tuple(_dimension_from_param(p, genes) for p in strategy.params)
    return Space(strategy=strategy.name, dimensions=dims)


def parse_space_toml(text: str, source: str) -> _SpaceToml:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{source}: not valid TOML: {exc}") from None
    try:
        return msgspec.convert(raw, _SpaceToml)
    except msgspec.ValidationError as exc:
        raise SpaceError(
            f"{source}: {exc}; allowed: top-level strategy, [params.NAME] (low, high, step, "
            "log, values, grid), [fixed] NAME = value, [guards] min_deflated_sharpe / max_pbo"
        ) from None


def load_space(path: str | Path, strategy: StrategySpec) -> tuple[Space, dict[str, float]]:
    """(space, guard thresholds) from a TOML file; every key checked against ``strategy``."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpaceError(f"--space {source}: cannot read it ({exc.strerror})") from None
    doc = parse_space_toml(text, source)
    return space_from_toml(doc, strategy, source), dict(doc.guards)


def space_from_toml(doc: _SpaceToml, strategy: StrategySpec, source: str) -> Space:
    if doc.strategy is not None and doc.strategy != strategy.name:
        raise SpaceError(
            f"{source}: strategy = {doc.strategy!r} but the study runs {strategy.name!r}; "
            "drop the key or pass --strategy to match"
        )
    known = {p.name: p for p in strategy.params}
    allowed = ", ".join(known)
    for where, names in (("params", doc.params), ("fixed", doc.fixed)):
        for name in names:
            if name not in known:
                raise SpaceError(
                    f"{source}: [{where}.{name}]: strategy {strategy.name!r} has no parameter "
                    f"{name!r}; it takes: {allowed}"
                )
    both = sorted(set(doc.params) & set(doc.fixed))
    if both:
        raise SpaceError(f"{source}: {', '.join(both)} both searched ([params]) and [fixed]")
    fixed: dict[str, Any] = {}
    for name, value in doc.fixed.items():
        try:
            fixed[name] = known[name].check(value)
        except ChimeraError as exc:
            raise SpaceError(f"{source}: [fixed] {exc}") from None
    genes = _gene_bounds(strategy)
    dims: list[Dimension] = []
    searched = doc.params if doc.params else {n: _ParamToml() for n in known if n not in fixed}
    for name, spec in searched.items():
        dims.append(_dimension(known[name], spec, genes, f"{source}: [params.{name}]"))
    if not dims:
        raise SpaceError(f"{source}: nothing to search: every parameter is [fixed]")
    return Space(strategy=strategy.name, dimensions=tuple(dims), fixed=fixed)


def _dimension(
    p: Param, spec: _ParamToml, genes: Mapping[str, tuple[float, float]], where: str
) -> Dimension:
    kind = _KINDS[p.kind]
    base = _dimension_from_param(p, genes) if kind != "bool" or spec.values is None else None
    if spec.values is not None:
        if spec.low is not None or spec.high is not None or spec.step is not None or spec.log:
            raise SpaceError(f"{where}: give either values = [...] or low/high/step/log, not both")
        if not spec.values:
            raise SpaceError(f"{where}: values must list at least one value")
        checked: list[Any] = []
        for v in spec.values:
            try:
                checked.append(p.check(v))
            except ChimeraError as exc:
                raise SpaceError(f"{where}: values: {exc}") from None
        if len(set(checked)) != len(checked):
            raise SpaceError(f"{where}: values repeat: {spec.values}")
        return Dimension(name=p.name, kind="categorical", values=tuple(checked))
    if kind == "bool":
        return Dimension(name=p.name, kind="categorical", values=(False, True))
    assert base is not None
    lo = base.low if spec.low is None else spec.low
    hi = base.high if spec.high is None else spec.high
    assert lo is not None and hi is not None
    if not (p.low <= lo < hi <= p.high):
        raise SpaceError(
            f"{where}: low {lo:g} and high {hi:g} must satisfy "
            f"{p.low:g} <= low < high <= {p.high:g} (the strategy's bounds)"
        )
    if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
        raise SpaceError(f"{where}: {p.name} is an int: low and high must be whole numbers")
    if spec.step is not None:
        if not (spec.step > 0 and spec.step <= hi - lo):
            raise SpaceError(f"{where}: step must be > 0 and <= high - low, got {spec.step}")
        if kind == "int" and not float(spec.step).is_integer():
            raise SpaceError(f"{where}: {p.name} is an int: step must be a whole number")
        if spec.log:
            raise SpaceError(f"{where}: log and step cannot both be set (Optuna refuses it)")
    if spec.log and lo <= 0:
        raise SpaceError(f"{where}: log needs low > 0, got {lo:g}")
    if spec.grid is not None and not (2 <= spec.grid <= 10_000):
        raise SpaceError(f"{where}: grid must be a number of points in 2..10000, got {spec.grid}")
    return Dimension(
        name=p.name, kind=kind, low=float(lo), high=float(hi), step=spec.step, log=spec.log,
        grid=spec.grid,
    )  # fmt: skip


# ---- Optuna ------------------------------------------------------------------------------


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """One parameter set from an Optuna trial (``trial.suggest_*`` for each dimension), with
    the fixed parameters added."""
    out: dict[str, Any] = {}
    for d in space.dimensions:
        if d.kind == "categorical":
            assert d.values is not None
            out[d.name] = trial.suggest_categorical(d.name, list(d.values))
        elif d.kind == "int":
            assert d.low is not None and d.high is not None
            step = int(d.step) if d.step is not None else 1
            out[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), step=step, log=d.log)
        else:
            assert d.low is not None and d.high is not None
            out[d.name] = trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)
    return {**out, **space.fixed}


def distributions(space: Space) -> dict[str, Any]:
    """The Optuna distributions of ``space`` (what ``study.ask`` samples all at once)."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for d in space.dimensions:
        if d.kind == "categorical":
            assert d.values is not None
            out[d.name] = od.CategoricalDistribution(list(d.values))
        elif d.kind == "int":
            assert d.low is not None and d.high is not None
            step = int(d.step) if d.step is not None else 1
            out[d.name] = od.IntDistribution(int(d.low), int(d.high), step=step, log=d.log)
        else:
            assert d.low is not None and d.high is not None
            out[d.name] = od.FloatDistribution(d.low, d.high, step=d.step, log=d.log)
    return out


def grid(space: Space) -> dict[str, Sequence[Any]]:
    """The grid sampler's search space; refuses a grid of more than MAX_GRID_POINTS."""
    size = space.grid_size()
    if size > MAX_GRID_POINTS:
        raise SpaceError(
            f"the grid has {size:,} points (more than {MAX_GRID_POINTS:,}): give fewer grid "
            "points or a larger step in the space file, or use --sampler tpe|random"
        )
    return {d.name: d.grid_points() for d in space.dimensions}
