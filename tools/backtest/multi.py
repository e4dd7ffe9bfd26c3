"""N instruments on one account (event mode): one node, one equity, the portfolio rules
([governance.portfolio]) judging the whole book; results for the account and for each
instrument, and the same run with the portfolio rules off beside it (``--compare-portfolio``).

Per-instrument figures come from the run's fills, not from the account: an instrument's
P&L at a bar's end is its cash flow (fills and their charges) plus its position marked at
its last close, and its metrics are ``metrics.compute`` on the account's starting equity
plus that P&L (what the instrument added to the account). The instruments' P&L sum to the
account's (tests/backtest/test_multi.py checks it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from chimera_core.config import Config, PortfolioConfig
from chimera_core.contracts import ExchangeType
from chimera_governance.portfolio import RULES
from tools.backtest import metrics
from tools.backtest.data import code_version
from tools.backtest.event import EventResult, backtest_config, run_instruments
from tools.backtest.run import (
    RESULT_SCHEMA,
    _checked,
    _event_result,
    _progress,
    _settings,
    event_factory,
    trades_of,
)
from tools.backtest.universe import Universe


def configured(cfg: Config, strategy: str, params: Mapping[str, Any] | None) -> Config:
    """``cfg`` as event mode runs ``strategy`` with ``params``: the default strategy's
    genome is seeded from ``[strategy]``, so its params go there."""
    from tools.backtest.strategies import get

    if strategy != "default":
        return cfg
    checked = _checked(get(strategy), params)
    return msgspec.structs.replace(cfg, strategy=msgspec.structs.replace(cfg.strategy, **checked))


def rules_off(cfg: Config) -> Config:
    """``cfg`` with every ``[governance.portfolio]`` rule off (its defaults)."""
    gov = msgspec.structs.replace(cfg.governance, portfolio=PortfolioConfig())
    return msgspec.structs.replace(cfg, governance=gov)


def _data_meta(u: Universe) -> dict[str, Any]:
    return {
        "sha256": u.sha256,
        "sources": list(u.sources),
        "instruments": [
            {
                "token": t,
                "symbol": b.symbol,
                "source": b.source,
                "bars": len(b),
                "first_ts_ms": int(b.ts_ms[0]),
                "last_ts_ms": int(b.ts_ms[-1]),
                "sha256": b.sha256,
            }
            for t, b in u.pairs()
        ],
        "bars": int(u.ts_ms.size),
        "interval_ms": u.interval_ms,
    }


def closes_on(u: Universe) -> npt.NDArray[np.float64]:
    """Each instrument's last close at or before each bar of the joint calendar
    (instruments x bars; NaN before its first bar)."""
    out = np.full((len(u), u.ts_ms.size), np.nan)
    for i, b in enumerate(u.bars):
        at = np.searchsorted(b.ts_ms, u.ts_ms, side="right") - 1
        seen = at >= 0
        out[i, seen] = b.close[at[seen]]
    return out


def books(
    u: Universe, ev: EventResult
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(position, pnl, closes), instruments x bars at each bar's end, from the fills."""
    n = u.ts_ms.size
    index = {t: i for i, t in enumerate(u.tokens)}
    qty = np.zeros((len(u), n), dtype=np.int64)
    cash = np.zeros((len(u), n))
    for f in ev.fills:
        i = index[f["token"]]
        k = int(np.searchsorted(u.ts_ms, f["ts_ms"], side="right")) - 1
        sign = 1 if f["side"] == "BUY" else -1
        qty[i, k] += sign * f["qty"]
        cash[i, k] -= sign * f["qty"] * f["price"] + f["charges"]
    position = np.cumsum(qty, axis=1)
    closes = closes_on(u)
    value = np.where(position != 0, position * np.nan_to_num(closes), 0.0)
    return position, np.cumsum(cash, axis=1) + value, closes


def run_universe(
    cfg: Config,
    u: Universe,
    strategy: str = "default",
    params: Mapping[str, float] | None = None,
    exchange_type: int = int(ExchangeType.NSE_CM),
    quiet: bool = True,
    long_only: bool = False,
    portfolio_rules: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, series) of one event-mode run of the universe on one account; with
    ``portfolio_rules`` False the ``[governance.portfolio]`` rules are all off."""
    from tools.backtest.strategies import get

    checked = _checked(get(strategy), params)
    cfg = configured(cfg, strategy, params)
    if not portfolio_rules:
        cfg = rules_off(cfg)
    bt = backtest_config(cfg, u.bars[0], list(u.tokens), exchange_type, Path("."))
    factory = event_factory(strategy, params, long_only)
    advance, done = _progress(int(u.ts_ms.size), quiet, f"event mode · {len(u)} instruments")
    try:
        ev = asyncio.run(
            run_instruments(cfg, u.pairs(), exchange_type, progress=advance, strategy=factory)
        )
    finally:
        done()
    start = ev.starting_equity
    position, pnl, closes = books(u, ev)
    gross = np.abs(position * np.nan_to_num(closes)).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        gross_x = np.where(ev.equity > 0, gross / ev.equity, np.nan)
    result: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "mode": "event",
        "strategy": strategy,
        "params": checked,
        "long_only": long_only,
        "portfolio_rules": portfolio_rules,
        "data": _data_meta(u),
        "code_version": code_version(),
        "settings": _settings(bt),
    }
    result.update(_event_result(ev))
    port = bt.governance.portfolio
    result["vetoes"] = ev.vetoes
    result["portfolio_vetoes"] = {r: ev.vetoes[r] for r in RULES if r in ev.vetoes}
    result["exposure"] = {
        "max_gross": float(np.nanmax(gross_x)) if gross_x.size else 0.0,
        "mean_gross": float(np.nanmean(gross_x)) if gross_x.size else 0.0,
        "cluster_cap": port.cluster_max_exposure if port.cluster_rho > 0 else None,
        "gross_cap": bt.governance.max_gross_exposure,
    }
    result["metrics"] = msgspec.to_builtins(
        # exposure: the fraction of bars the account ends holding anything
        metrics.compute(ev.equity, trades=trades_of(ev.trades), ts_ms=ev.ts_ms,
                        initial_equity=start, position=(position != 0).any(axis=0).astype(np.int64))
    )  # fmt: skip
    per: dict[str, Any] = {}
    for i, token in enumerate(u.tokens):
        rows = [t for t in ev.trades if t.token == token]
        figures = metrics.compute(
            start + pnl[i], trades=trades_of(rows), ts_ms=ev.ts_ms, initial_equity=start,
            position=position[i],
        )  # fmt: skip
        per[token] = {
            "symbol": u.bars[i].symbol,
            "pnl": float(pnl[i, -1]),
            "charges": float(sum(t.charges for t in rows)),
            "trades": len(rows),
            "metrics": msgspec.to_builtins(figures),
        }
    result["instruments"] = per
    series = {"ts_ms": ev.ts_ms, "equity": ev.equity, "gross": gross_x, "pnl": pnl}
    return result, series


def compare_portfolio(
    cfg: Config,
    u: Universe,
    strategy: str = "default",
    params: Mapping[str, float] | None = None,
    exchange_type: int = int(ExchangeType.NSE_CM),
    quiet: bool = True,
    long_only: bool = False,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The universe with the portfolio rules as configured and with them off: one result
    holding both (``with_rules``, ``without_rules``) and their series by the same names."""
    on, s_on = run_universe(cfg, u, strategy, params, exchange_type, quiet, long_only, True)
    off, s_off = run_universe(cfg, u, strategy, params, exchange_type, quiet, long_only, False)
    result = {
        "schema": RESULT_SCHEMA,
        "mode": "event-compare-portfolio",
        "strategy": strategy,
        "data": on["data"],
        "code_version": on["code_version"],
        "settings": on["settings"],
        "with_rules": on,
        "without_rules": off,
    }
    return result, {"with_rules": s_on, "without_rules": s_off}
