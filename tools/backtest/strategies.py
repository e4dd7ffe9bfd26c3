"""Strategies by name, for ``chimera backtest --strategy NAME|module:attr`` and the optimizer.

Each entry says how to run the strategy in fast mode (``fast``: the Python wrapper over its
njit kernel, ``kernel``: the njit function a sweep can call directly) and which parameters
it takes (names, types, bounds, defaults: what a search space is built from). ``event`` is
the event-mode side: ``(checked params, long_only) -> StrategyFactory`` (chimera_core.strategy)
for the live node; the built-in strategies' come from ``tools/backtest/run.py``.

A strategy of your own is a ``StrategySpec`` in any importable module, named as
``module:attr`` (``mypkg.strats:breakout``), or added here with ``register``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tools.backtest import fast
from tools.backtest.fast import FastResult, FastSettings
from tools.backtest.rolling import BacktestInputError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its type, inclusive bounds and default (genome / [strategy] names)."""

    name: str
    kind: type  # int, float or bool
    default: int | float | bool
    low: float = -math.inf
    high: float = math.inf
    doc: str = ""

    def check(self, value: object) -> int | float | bool:
        """``value`` as this parameter's type, or BacktestInputError naming it and the bounds."""
        if self.kind is bool:
            if not isinstance(value, bool | np.bool_):
                raise BacktestInputError(
                    f"parameter {self.name!r} must be true or false, got {value!r}"
                )
            return bool(value)
        ok_types: tuple[type, ...] = (
            (int, np.integer) if self.kind is int else (int, float, np.integer, np.floating)
        )
        if isinstance(value, bool) or not isinstance(value, ok_types):
            raise BacktestInputError(
                f"parameter {self.name!r} must be {'an int' if self.kind is int else 'a number'} "
                f"in [{self.low:g}, {self.high:g}], got {value!r}"
            )
        v: int | float = int(value) if self.kind is int else float(value)  # type: ignore[arg-type,call-overload]
        if not (math.isfinite(v) and self.low <= v <= self.high):
            raise BacktestInputError(
                f"parameter {self.name!r} = {value!r} is outside [{self.low:g}, {self.high:g}]"
            )
        return v


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """A strategy the backtester can run: its fast-mode functions and its parameters."""

    name: str
    fast: Callable[..., FastResult]
    kernel: Callable[..., Any]
    params: tuple[Param, ...]
    doc: str = ""
    # Event mode's side: (checked params, long_only) -> a chimera_core.strategy
    # StrategyFactory the live node runs. None: the built-in ones come from
    # tools/backtest/run.py; a strategy of your own without it runs in fast mode only.
    event: Callable[[Mapping[str, Any], bool], Any] | None = None
    # Extra rules across parameters (e.g. fast < slow); raise BacktestInputError.
    constraint: Callable[[Mapping[str, Any]], None] | None = field(default=None, repr=False)

    @property
    def defaults(self) -> dict[str, int | float | bool]:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: Mapping[str, object] | None = None) -> dict[str, Any]:
        """Every parameter, checked, defaults filled in; unknown names are refused."""
        given = dict(params or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise BacktestInputError(
                f"strategy {self.name!r} has no parameter {', '.join(map(repr, unknown))} "
                f"(it takes: {', '.join(known)})"
            )
        out = {name: p.check(given.get(name, p.default)) for name, p in known.items()}
        if self.constraint is not None:
            self.constraint(out)
        return out

    def run_fast(
        self,
        open_: FloatArray,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray | None = None,
        *,
        settings: FastSettings | None = None,
        params: Mapping[str, object] | None = None,
        **inputs: Any,
    ) -> FastResult:
        """One fast-mode run with ``params`` (checked) and the wrapper's other keywords
        (``ts_ms``, ``entries_allowed``, ``square_off``)."""
        return self.fast(
            open_,
            high,
            low,
            close,
            volume,
            settings=settings,
            **self.check_params(params),
            **inputs,
        )


def _fast_below_slow(p: Mapping[str, Any]) -> None:
    if p["fast"] >= p["slow"]:
        raise BacktestInputError(
            f"ma_cross: fast ({p['fast']}) must be shorter than slow ({p['slow']})"
        )


DEFAULT = StrategySpec(
    name="default",
    fast=fast.default_strategy,
    kernel=fast.default_strategy_kernel,
    params=(
        # Bounds as [strategy] in chimera_core/config.py (Lookback 2..250, Multiple, threshold).
        Param("energy_lookback", int, 20, 2, 250, "closes in the energy slope"),
        Param("z_lookback", int, 60, 2, 250, "previous closes z measures against"),
        Param("band_lookback", int, 140, 2, 250, "closes in the gaussian band"),
        Param("band_k", float, 2.0, 0.0, 100.0, "band half-width in standard deviations"),
        Param("energy_threshold", float, 0.2, 1e-9, 1_000.0, "|energy| to enter, percent/bar"),
    ),
    doc="Trade energy out of a vacuum unless the gaussian band disagrees (DefaultStrategy).",
)

MA_CROSS = StrategySpec(
    name="ma_cross",
    fast=fast.ma_cross,
    kernel=fast.ma_cross_kernel,
    params=(
        Param("fast", int, 10, 1, 10_000, "bars in the fast simple moving average"),
        Param("slow", int, 30, 2, 10_000, "bars in the slow simple moving average"),
    ),
    doc="Enter long when the fast SMA crosses above the slow one, short (unless long_only) "
    "when it crosses below; exit on the cross back (MovingAverageCross).",
    constraint=_fast_below_slow,
)

REGISTRY: dict[str, StrategySpec] = {}


def register(spec: StrategySpec, *, replace: bool = False) -> StrategySpec:
    """Add ``spec`` under its name (``replace=True`` to swap an entry, e.g. to fill in
    ``event``: ``register(dataclasses.replace(get("default"), event=Cls), replace=True)``)."""
    if not isinstance(spec, StrategySpec):
        raise BacktestInputError(f"register takes a StrategySpec, got {type(spec).__name__}")
    if spec.name in REGISTRY and not replace:
        raise BacktestInputError(
            f"a strategy named {spec.name!r} is registered already; pass replace=True"
        )
    REGISTRY[spec.name] = spec
    return spec


register(DEFAULT)
register(MA_CROSS)


def get(name: str) -> StrategySpec:
    """A strategy by registered name or ``module:attr`` (an attribute that is a
    StrategySpec)."""
    if not isinstance(name, str) or not name:
        raise BacktestInputError(f"strategy must be a name or module:attr, got {name!r}")
    if ":" not in name:
        spec = REGISTRY.get(name)
        if spec is None:
            raise BacktestInputError(
                f"unknown strategy {name!r}: registered are {', '.join(sorted(REGISTRY))}; "
                "or name one of your own as module:attr"
            )
        return spec
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BacktestInputError(
            f"strategy {name!r}: cannot import {module_name!r}: {exc}"
        ) from None
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BacktestInputError(f"strategy {name!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not isinstance(target, StrategySpec):
        raise BacktestInputError(
            f"strategy {name!r} is a {type(target).__name__}, not a "
            "tools.backtest.strategies.StrategySpec"
        )
    return target
