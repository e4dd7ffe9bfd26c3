"""Configuration: one TOML file parsed into msgspec Structs, validated up front.

Unknown keys and bad values are errors that name the key and what is allowed. Secrets
never live in the TOML: they come from the environment or a ``.env`` file beside it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

import msgspec
from dotenv import dotenv_values

from chimera_core.contracts import ExchangeType
from chimera_core.errors import ConfigError
from chimera_core.instruments import InstrumentsConfig
from chimera_core.markets import MarketConfig, build_calendars, calendar_for

# Every number has an upper bound: far above anything a real trader sets, low enough that
# no later arithmetic (seconds to ns, int64 arrays, sleep(), sizing) overflows or stalls.
# inf and nan are refused for every float (parse_config), before these bounds apply.
Seconds = Annotated[float, msgspec.Meta(gt=0, le=604_800)]  # up to one week
ShortSeconds = Annotated[float, msgspec.Meta(gt=0, le=3_600)]  # intervals, timeouts: an hour
Rupees = Annotated[float, msgspec.Meta(gt=0, le=1e12)]  # up to ₹1 lakh crore
Multiple = Annotated[float, msgspec.Meta(gt=0, le=100)]  # band k, ATR multiples, leverage
Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]
PositiveFraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Count = Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]  # trades, frames, per-day limits
Qty = Annotated[int, msgspec.Meta(gt=0, le=10_000_000)]  # shares / units in one order
Lookback = Annotated[int, msgspec.Meta(ge=2, le=250)]
# Angel One's SmartAPI websocket takes at most 1000 tokens per connection (error E1005).
MAX_TOKENS = 1000

FeedMode = Literal["LTP", "QUOTE", "SNAP_QUOTE"]
ExchangeName = Literal["NSE_CM", "NSE_FO", "BSE_CM", "BSE_FO", "MCX_FO", "NCX_FO", "CDE_FO"]


class FeedConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    url: str = "ws://127.0.0.1:8765/smart-stream"
    # DEPTH (20-level) carries no trades, so the engine cannot run on it alone.
    mode: FeedMode = "QUOTE"
    exchange_type: ExchangeName = "NSE_CM"
    tokens: Annotated[
        list[str],
        msgspec.Meta(max_length=MAX_TOKENS, description="Angel One's limit per connection"),
    ] = msgspec.field(default_factory=lambda: ["2885", "1594", "3045"])
    # Lot and tick sizes by token (units per lot; rupees). Filled from the instrument
    # master at start for [instruments] names; a token not listed trades in single units
    # on a 0.05 grid. Recorded with the session, so replay sizes the same way.
    lots: dict[str, Annotated[int, msgspec.Meta(ge=1, le=100_000)]] = msgspec.field(
        default_factory=dict
    )
    tick_sizes: dict[str, Annotated[float, msgspec.Meta(gt=0, le=1_000)]] = msgspec.field(
        default_factory=dict
    )
    reconnect_initial_s: ShortSeconds = 0.5
    reconnect_max_s: ShortSeconds = 30.0
    ping_interval_s: ShortSeconds = 10.0
    ping_timeout_s: ShortSeconds = 20.0
    # A token quiet for longer than this (local clock) must re-confirm before trading.
    stale_after_s: Seconds = 5.0


class StrategyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    bar_interval_s: Annotated[int, msgspec.Meta(gt=0, le=86_400)] = 60  # up to one day
    energy_lookback: Lookback = 20
    z_lookback: Lookback = 60
    band_lookback: Lookback = 140
    band_k: Multiple = 2.0
    energy_threshold: Annotated[float, msgspec.Meta(gt=0, le=1_000)] = 0.2  # percent per bar
    order_qty: Qty = 1
    # Exchange-time seconds: an intent with no execution report expires, then cools down.
    execute_timeout_s: Seconds = 30.0
    cooldown_s: Seconds = 60.0
    # Exits besides the ATR brackets: a signal in the other direction, energy (in the
    # position's direction) decayed below exit_energy_ratio x energy_threshold (the
    # genome's, so it scales with it; 0 = off), a holding time in exchange seconds (0 = no
    # limit). Each closes the whole position at market.
    exit_on_reversal: bool = True
    exit_energy_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25
    max_hold_s: Annotated[float, msgspec.Meta(ge=0, le=31_536_000)] = 0.0


class SanityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # A trade this far (percent) from the token's previous price is treated as a bad print.
    max_jump_pct: Annotated[float, msgspec.Meta(gt=0, le=1_000)] = 10.0
    # A sequence number further ahead than this of the token's last one is a bad frame,
    # not the new baseline (one flipped bit must not silence the token for good).
    max_seq_jump: Annotated[int, msgspec.Meta(gt=0, le=1_000_000_000)] = 100_000
    # An exchange time this far (seconds; at least 2 bar intervals) ahead of the feed's
    # clock (the latest accepted exchange time of any token) is a bad frame, not a new
    # bar, unless the next frame confirms the jump (then only the first is dropped). Raise
    # it for a single illiquid instrument whose trades come further apart than this.
    max_clock_ahead_s: Seconds = 60.0
    # A token that has dropped this many frames in a row as out-of-order or late takes the
    # next one as its new baseline and logs ``feed_rebaselined``.
    rebaseline_after: Count = 50


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Which decisions are logged: every one, only those that change state, or none.
    decisions: Literal["all", "transitions", "none"] = "transitions"
    stats_interval_s: ShortSeconds = 5.0


class TelemetryConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    endpoint: str = "tcp://127.0.0.1:7001"
    # Messages queued per subscriber; past it that subscriber alone loses (its seq gaps).
    hwm: Annotated[int, msgspec.Meta(gt=0, le=10_000_000)] = 100_000
    # Hand the messages of one event-loop wake-up to ZeroMQ together, after the ticks that
    # made them have decided (order and numbering unchanged); false: one send per message.
    batch: bool = True
    health_interval_s: ShortSeconds = 1.0
    # Hold the first message until the recorder (not just any subscriber) is attached, so
    # the black box files a session from its first message; it re-attaches within ~100 ms
    # of a restart. If none comes the engine starts anyway, after this long, with a
    # ``telemetry_no_recorder`` warning. 0 = never wait.
    wait_for_subscriber_s: Annotated[float, msgspec.Meta(ge=0, le=3_600)] = 5.0


class ControlConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    endpoint: str = "tcp://127.0.0.1:7002"
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 2.0


class BotConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``chimera bot``: the operator's Telegram bot. The bot token (CHIMERA_TELEGRAM_BOT_TOKEN)
    and the one-time-code secret (CHIMERA_BOT_OTP_SECRET) come from the environment or
    .env, never from here."""

    # Telegram user ids (not chat ids) served; anyone else is refused and reported.
    allowed_users: list[Annotated[int, msgspec.Meta(gt=0)]] = msgspec.field(default_factory=list)
    # resume / approve / flatten also need a TOTP code (pyotp) after the confirmation tap.
    otp: bool = False
    confirm_timeout_s: ShortSeconds = 60.0  # a confirmation (and its code) expires after this
    stale_after_s: ShortSeconds = 60.0  # updates older than this (Telegram's date) are ignored
    approvals_poll_s: ShortSeconds = 2.0  # new pending approvals are announced this often
    poll_timeout_s: Annotated[int, msgspec.Meta(ge=0, le=50)] = 20  # getUpdates long poll
    # The Bot API; http only on loopback (a local stand-in or a local Bot API server).
    api_url: str = "https://api.telegram.org/bot"


class RecorderConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    segment_mb: Annotated[int, msgspec.Meta(gt=0, le=16_384)] = 64
    fsync_interval_s: ShortSeconds = 1.0
    neural_state_interval_s: ShortSeconds = 0.25


class PortfolioConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[governance.portfolio]``: rules on the whole book (chimera_governance/portfolio.py,
    docs/RISK.md). Every rule is off at its default (0 / false): today's behaviour."""

    # Size each entry so its bracket stop (execution.stop_atr_multiple x ATR) plus the
    # round trip's charges loses at most stop_risk x equity (whole lots).
    risk_sizing: bool = False
    stop_risk: PositiveFraction = 0.01
    # One order's value (qty x price) at most this x equity; 0 = off.
    max_order_fraction: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    # Entries let through per session, all symbols (per symbol: max_trades_per_symbol); 0 = off.
    max_entries_per_session: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    # Entries in any 60 s of exchange time; one more trips REDUCING for the session; 0 = off.
    max_orders_per_minute: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    # Historical 1-day VaR / CVaR of the book + the entry, as a fraction of equity; 0 = off.
    var_limit: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    cvar_limit: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    var_confidence: Literal["95", "99"] = "99"  # percent; both are always on the record
    returns_window: Annotated[int, msgspec.Meta(ge=20, le=5_000)] = 250  # closed bars kept
    # Bars in one day for the 1-day horizon (sqrt-time scaling); 0 = the market's session.
    var_horizon_bars: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    # Symbols whose rolling correlation exceeds cluster_rho share one gross exposure cap
    # of cluster_max_exposure x equity; cluster_rho 0 = off.
    cluster_rho: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.0
    cluster_max_exposure: Multiple = 1.0
    # Ex-ante 1-day portfolio volatility (fraction of equity) kept under this by sizing
    # entries down; 0 = off.
    vol_target: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    # A session loss of this fraction of the session's opening equity rolls every genome
    # family back to its previous version at the next bar, once a session; 0 = off.
    rollback_session_loss: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class GovernanceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    enabled: bool = True
    # Rupees the capital brain sizes against until the account's equity (cash + positions
    # marked to market) is known; risk is always measured on the account's.
    equity: Rupees = 1_000_000.0
    max_leverage: Multiple = 2.0  # hard cap; no layer can exceed it
    lot_size: Annotated[int, msgspec.Meta(gt=0, le=100_000)] = 1
    risk_per_trade: PositiveFraction = 0.01  # of equity, at an ATR-based stop
    stop_atr_multiple: Multiple = 2.0
    # Of the account's equity at the session's open → REDUCING (exits only) for the session.
    daily_loss_pct: PositiveFraction = 0.02
    max_drawdown: PositiveFraction = 0.10  # from the equity high-water mark → HALT until reset
    max_trades_per_symbol: Count = 10  # per IST trading day
    max_trades_per_day: Count = 50
    max_open_positions: Annotated[int, msgspec.Meta(gt=0, le=MAX_TOKENS)] = 5
    # Caps on the position and the book (held + working + the entry), not on one order.
    max_position_value: Rupees = 200_000.0  # rupees per symbol; sizing stays under it
    max_position_qty: Qty = 1_000_000  # units per symbol
    max_gross_exposure: Multiple = 2.0  # sum of |position value| over the book, x equity
    max_net_exposure: Multiple = 1.0  # |sum of signed position values|, x equity
    # Entries into one open position: 1 = no pyramiding (exit, then enter again).
    max_entries_per_position: Annotated[int, msgspec.Meta(gt=0, le=100)] = 1
    max_spread_pct: Percent = 0.5  # percent of mid
    min_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.3
    # Intents above this value or below this confidence wait for a human (cortex / CLI).
    approval_size_limit: Rupees = 200_000.0
    approval_min_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.35
    approval_ttl_s: Seconds = 120.0
    families: dict[str, str] = msgspec.field(default_factory=dict)  # token → genome family
    portfolio: PortfolioConfig = msgspec.field(default_factory=PortfolioConfig)


Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class ChargesConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Indian equity charges (NSE cash). Rates are fractions of turnover unless named
    otherwise; the defaults, their sources and dates are in chimera_execution/charges.py."""

    brokerage_flat: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 20.0  # rupees per order
    brokerage_pct_intraday: Fraction = 0.0003  # of turnover, if lower than the flat fee
    brokerage_pct_delivery: Fraction = 0.001
    stt_intraday_sell: Fraction = 0.00025  # sell side only
    stt_delivery: Fraction = 0.001  # both sides
    exchange_txn: Fraction = 0.0000297  # NSE cash, both sides
    sebi_per_crore: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] = 10.0  # per ₹1 crore
    gst: Fraction = 0.18  # on brokerage + exchange charge + SEBI fee
    stamp_intraday_buy: Fraction = 0.00003  # buy side only
    stamp_delivery_buy: Fraction = 0.00015


class PaperConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    starting_cash: Rupees = 1_000_000.0
    # Exchange-time milliseconds before an order reaches the simulated book (tests set it
    # huge so orders rest; the bound keeps it int64-safe in nanoseconds).
    latency_ms: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] = 50
    # Extra adverse price on every fill, basis points (on top of walking the book).
    slippage_bps: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 1.0
    # RMS: margin the simulated broker blocks per rupee of exposure. An order that adds
    # exposure beyond equity / margin is rejected, as a real broker's RMS does. Intraday
    # 0.2 (5x) is the floor SEBI's peak-margin rules leave for cash equity; delivery is
    # paid in full.
    intraday_margin: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    delivery_margin: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0


class AngelOneConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    rest_url: str = "https://apiconnect.angelone.in"
    order_ws_url: str = "wss://tns.angelone.in/smart-order-update"
    # token → trading symbol (e.g. "3045" = "SBIN-EQ"); placeOrder needs both.
    symbols: dict[str, str] = msgspec.field(default_factory=dict)
    exchange: Literal["NSE", "BSE", "NFO", "BFO", "MCX", "CDS", "NCDEX"] = "NSE"
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 7.0
    # Order-book poll that recovers order updates the websocket dropped.
    poll_interval_s: ShortSeconds = 2.0


class ThrottleConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Order-call budgets (placeOrder/modify/cancel share them): Angel One's published limits."""

    per_second: Annotated[int, msgspec.Meta(gt=0, le=1_000)] = 20
    per_minute: Annotated[int, msgspec.Meta(gt=0, le=60_000)] = 500
    per_hour: Annotated[int, msgspec.Meta(gt=0, le=3_600_000)] = 1000


class SlicingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """VWAP slicing of parents at or above ``min_qty``, and the liquidity adjuster."""

    min_qty: Annotated[int, msgspec.Meta(gt=0, le=1_000_000_000)] = 1000  # smaller: one order
    window_s: Seconds = 300.0
    participation: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.10  # of observed volume
    # Child size is capped at this fraction of the displayed opposite-side depth (best 5).
    depth_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    # Wider than this (percent of mid): wait, up to max_wait_s, then cross anyway.
    max_spread_pct: Percent = 0.3
    max_wait_s: Seconds = 30.0


class ExecutionConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    enabled: bool = True
    # paper in paper mode; live mode needs angelone. angelone in paper mode is allowed only
    # against a loopback rest_url (the simulator), for testing the adapter.
    broker: Literal["paper", "angelone"] = "paper"
    product: Literal["INTRADAY", "DELIVERY"] = "INTRADAY"
    # Broker orders the journal does not know, found at start-up: cancel them or adopt them.
    orphans: Literal["cancel", "adopt"] = "cancel"
    cancel_on_stop: bool = True  # a clean stop (SIGTERM, systemd) cancels open orders
    flatten_on_halt: bool = False  # the kill switch also closes positions at market
    # The square-off of the feed's segment, local time, over [markets.<SEGMENT>]'s own
    # (NSE 15:15): positions are closed at it. "" = the market's. Entries stop at the
    # market's entry_cutoff (or at this square-off, if it comes first).
    square_off_at: Annotated[str, msgspec.Meta(pattern=r"^(|([01][0-9]|2[0-3]):[0-5][0-9])$")] = ""
    stop_atr_multiple: Multiple = 2.0  # bracket stop loss distance
    take_profit_atr_multiple: Multiple = 3.0
    # A position restored at start without its bracket: a bracket from the current ATR at
    # its first warm tick ("atr"), or closed at market ("flatten"). Never left bare.
    restored_without_bracket: Literal["atr", "flatten"] = "atr"
    journal_sync: Literal["NORMAL", "FULL"] = "FULL"  # SQLite synchronous; FULL survives power loss
    # A position whose token has been dark (no accepted frame) this long, in local seconds,
    # is flagged ``position_unprotected``: its stop and target cannot be watched.
    unprotected_after_s: Seconds = 30.0
    # ...and then either closed at market ("flatten") or the engine takes no new entries
    # until the token is healthy again ("exits_only").
    unprotected_action: Literal["flatten", "exits_only"] = "exits_only"
    # A journal write that fails (full disk, I/O error): no new entries ("exits_only"), or
    # halt and cancel every open order ("halt").
    on_journal_failure: Literal["exits_only", "halt"] = "exits_only"
    charges: ChargesConfig = msgspec.field(default_factory=ChargesConfig)
    paper: PaperConfig = msgspec.field(default_factory=PaperConfig)
    angelone: AngelOneConfig = msgspec.field(default_factory=AngelOneConfig)
    throttle: ThrottleConfig = msgspec.field(default_factory=ThrottleConfig)
    slicing: SlicingConfig = msgspec.field(default_factory=SlicingConfig)


# The alerts ``chimera notify`` raises, by stable name (docs/RUNBOOK.md lists what to do).
AlertName = Literal[
    "engine_started",
    "engine_stopped",
    "engine_unreachable",
    "feed_dark",
    "feed_recovered",
    "trading_state",
    "daily_loss_near",
    "daily_loss_tripped",
    "drawdown_near",
    "drawdown_tripped",
    "position_unprotected",
    "position_protected",
    "journal_write_failed",
    "disk_low",
    "broker_reject",
    "recon_mismatch",
    "approval_waiting",
    "fill",
]
Severity = Literal["info", "warning", "critical"]
# "HH:MM-HH:MM" in notify.timezone; an end before the start wraps past midnight.
_HHMM = r"([01]\d|2[0-3]):[0-5]\d"
QuietHours = Annotated[str, msgspec.Meta(pattern=f"^(|{_HHMM}-{_HHMM})$")]


class NotifyChannelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What one channel gets. Its URL comes from the environment / .env, never from here
    (CHIMERA_NOTIFY_URL_<NAME>, or CHIMERA_NOTIFY_URLS for the channel named default)."""

    events: list[AlertName | Literal["*"]] = msgspec.field(default_factory=lambda: ["*"])
    min_severity: Severity = "info"
    quiet_hours: QuietHours = ""  # e.g. "22:00-07:00": only critical alerts pass


class NotifyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # Per channel filters by name; a channel with a URL but no table gets every alert.
    channels: dict[str, NotifyChannelConfig] = msgspec.field(default_factory=dict)
    dark_feed_s: ShortSeconds = 10.0  # the feed stale this long → feed_dark
    limit_fraction: PositiveFraction = 0.8  # daily loss / drawdown at this share → *_near
    fills: bool = False  # one alert per fill (opt-in)
    rate_limit: Count = 5  # alerts of one name per rate_window_s; the rest are summarised
    rate_window_s: ShortSeconds = 60.0
    retry_initial_s: ShortSeconds = 1.0  # delivery retries back off from here ...
    retry_max_s: ShortSeconds = 60.0  # ... doubling up to here, never giving up
    late_after_s: ShortSeconds = 30.0  # delivered later than this is marked late
    engine_silent_s: ShortSeconds = 10.0  # no health this long → engine_unreachable
    approvals_poll_s: ShortSeconds = 1.0
    timezone: str = "Asia/Kolkata"  # for quiet hours
    # The day's report (chimera report) as an alert once the session has closed, this many
    # minutes after the market calendar's close; a negative number turns it off.
    daily_report_after_min: Annotated[int, msgspec.Meta(ge=-1, le=720)] = 15


class ResearchHistory(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One series the nightly research refreshes (`chimera history fetch`) before its
    studies run: the last ``days`` IST days up to yesterday, written to ``out``."""

    exchange: str = "NSE"
    token: str
    interval: str = "FIVE_MINUTE"
    days: Annotated[int, msgspec.Meta(gt=0, le=3_650)] = 365
    out: str  # .csv or .parquet a study's ``data`` names


class ResearchStudy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One study the nightly research re-runs walk-forward (`chimera optimize`), named
    ``NAME-YYYYMMDD`` for the night; its candidate is proposed when the guards pass."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    data: list[str]
    strategy: str = "default"
    space: str = ""  # search-space TOML (default: the strategy's genes within their bounds)
    sampler: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    trials: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)] = 100
    generation: Annotated[int, msgspec.Meta(gt=0, le=100_000)] = 32  # asked before told
    scheme: Literal["rolling", "anchored"] = "rolling"
    unit: Literal["bars", "days"] = "days"
    train: Annotated[int, msgspec.Meta(gt=0)] = 60
    test: Annotated[int, msgspec.Meta(gt=0)] = 20
    folds: Annotated[int, msgspec.Meta(ge=0)] = 0  # at most this many latest folds; 0 = all
    seed: int = 0
    min_deflated_sharpe: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.95
    max_pbo: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    pbo_splits: Annotated[int, msgspec.Meta(ge=2, le=64)] = 16  # CSCV blocks S, even
    family: str = "default"  # the genome family a candidate is proposed for
    propose: bool = True


class ResearchConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """`chimera research nightly` (the chimera-research.timer): refresh history, re-run
    the studies, propose candidates, all within ``budget_s`` of wall time."""

    budget_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 3_600.0
    workers: Annotated[int, msgspec.Meta(ge=0, le=1_024)] = 0  # local processes; 0 = CPUs
    ray: str = ""  # "", "local", "auto" or HOST:PORT (chimera optimize --ray)
    history: list[ResearchHistory] = msgspec.field(default_factory=list)
    studies: list[ResearchStudy] = msgspec.field(default_factory=list)


class ShadowGatesConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What a shadow candidate must show before it is queued for promotion (tools/shadow)."""

    min_days: Annotated[int, msgspec.Meta(ge=0, le=3_650)] = 10  # distinct trading days seen
    min_trades: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 30  # closed round trips
    # Out of sample, against the active genome on the same ticks: Sharpe at least this much
    # above the active's, drawdown at most this much above it (fractions of equity).
    min_sharpe_edge: Annotated[float, msgspec.Meta(ge=-100, le=100)] = 0.0
    max_drawdown_excess: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    # One-sided paired test of the candidate's per-bar returns over the active's: p below.
    significance: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.05
    max_violations: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0  # governance
    # Where a paper twin runs (the engine trades through a real broker): the median live vs
    # paper fill price difference (bps, either way) at most this; paper results are only
    # worth promoting on while paper fills like live. 0 = not judged.
    max_paper_live_bps: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 25.0


class ShadowConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``chimera shadow``: candidate genomes on the live tick telemetry, on paper."""

    # Each: "FAMILY@VERSION" (a version in the genome store), "vN" (family "default"), or
    # a TOML file of gene values (``[genome]`` table); more may be named on the command line.
    candidates: list[str] = msgspec.field(default_factory=list)
    endpoint: str = "tcp://127.0.0.1:7003"  # the candidates' own telemetry (XPUB)
    gates: ShadowGatesConfig = msgspec.field(default_factory=ShadowGatesConfig)
    check_interval_s: ShortSeconds = 5.0  # how often the gates are judged


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    mode: Literal["paper", "live"] = "paper"
    data_dir: str = "data"
    # Free space under data_dir below this many MB is a warning in doctor, health, metrics
    # and the recorder, before a full disk becomes an outage.
    min_free_disk_mb: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 500  # up to 10 TB
    feed: FeedConfig = msgspec.field(default_factory=FeedConfig)
    strategy: StrategyConfig = msgspec.field(default_factory=StrategyConfig)
    sanity: SanityConfig = msgspec.field(default_factory=SanityConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    recorder: RecorderConfig = msgspec.field(default_factory=RecorderConfig)
    bot: BotConfig = msgspec.field(default_factory=BotConfig)
    governance: GovernanceConfig = msgspec.field(default_factory=GovernanceConfig)
    execution: ExecutionConfig = msgspec.field(default_factory=ExecutionConfig)
    # Calendars by market name (presets and keys: chimera_core/markets.py).
    markets: dict[str, MarketConfig] = msgspec.field(default_factory=dict)
    # The instrument master and instruments by name (chimera_core/instruments.py).
    instruments: InstrumentsConfig = msgspec.field(default_factory=InstrumentsConfig)
    # `chimera notify`: alert filters, quiet hours, rate limits (channel URLs: .env only).
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    # Nightly research (chimera-research.timer): history, studies, candidates.
    research: ResearchConfig = msgspec.field(default_factory=ResearchConfig)
    shadow: ShadowConfig = msgspec.field(default_factory=ShadowConfig)


class Credentials(msgspec.Struct, frozen=True):
    """SmartAPI feed credentials; values are secrets and are registered for log redaction."""

    api_key: str
    client_code: str
    feed_token: str
    jwt: str

    def headers(self) -> dict[str, str]:
        auth = self.jwt if self.jwt.startswith("Bearer ") else f"Bearer {self.jwt}"
        return {
            "Authorization": auth,
            "x-api-key": self.api_key,
            "x-client-code": self.client_code,
            "x-feed-token": self.feed_token,
        }


CREDENTIAL_ENV = {
    "api_key": "CHIMERA_API_KEY",
    "client_code": "CHIMERA_CLIENT_CODE",
    "feed_token": "CHIMERA_FEED_TOKEN",
    "jwt": "CHIMERA_JWT",
}
BOT_TOKEN_ENV = "CHIMERA_TELEGRAM_BOT_TOKEN"
BOT_OTP_ENV = "CHIMERA_BOT_OTP_SECRET"
SECRET_ENV = (
    *CREDENTIAL_ENV.values(),
    "CHIMERA_PASSWORD",
    "CHIMERA_TOTP_SECRET",
    BOT_TOKEN_ENV,
    BOT_OTP_ENV,
)


def _is_optional(tp: typing.Any) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args


def _allowed(root: type, path: list[str]) -> str:
    """Describe what the field at ``path`` accepts (for error messages)."""
    tp: typing.Any = root
    for part in path:
        if typing.get_origin(tp) is dict:  # a table of tables ([markets.NAME]): its values
            tp = typing.get_args(tp)[1]
            continue
        if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
            return ""
        hints = typing.get_type_hints(tp, include_extras=True)
        if part not in hints:
            return ""
        tp = hints[part]
    while typing.get_origin(tp) is Annotated or _is_optional(tp):
        tp = typing.get_args(tp)[0]
    metas: list[msgspec.Meta] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp = args[0]
        metas += [a for a in args[1:] if isinstance(a, msgspec.Meta)]
    if typing.get_origin(tp) is Literal:
        return "allowed: " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "allowed keys: " + ", ".join(tp.__struct_fields__)
    bounds = [
        f"{op} {_num(getattr(m, attr))}"
        for m in metas
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if getattr(m, attr) is not None
    ]
    bounds += [f"at most {m.max_length} entries" for m in metas if m.max_length is not None]
    bounds += [f"({m.description})" for m in metas if m.description]
    if bounds:
        kind = "a finite number" if tp is float else "an integer" if tp is int else ""
        return "allowed: " + " ".join(x for x in (kind, " and ".join(bounds)) if x)
    if tp is float:
        return "allowed: a finite number"
    return ""


def _num(value: float) -> str:
    return f"{value:,.0f}".replace(",", "_") if float(value).is_integer() else repr(value)


def _non_finite(raw: object, path: list[str]) -> tuple[list[str], float] | None:
    """The first inf / nan in the parsed TOML, with its key path (TOML has both literals,
    and ``inf > 0`` passes every lower bound)."""
    if isinstance(raw, float) and not math.isfinite(raw):
        return path, raw
    items: typing.Iterable[tuple[str, object]] = ()
    if isinstance(raw, dict):
        items = ((str(k), v) for k, v in raw.items())
    elif isinstance(raw, list):
        items = ((str(i), v) for i, v in enumerate(raw))
    for key, value in items:
        found = _non_finite(value, [*path, key])
        if found is not None:
            return found
    return None


def _explain(exc: msgspec.ValidationError, source: str) -> ConfigError:
    text = str(exc)
    # A dict's entries show as `[...]` (markets.NAME): the key names its table.
    m = re.search(r" - at `\$((?:\.\w+|\[\d+\]|\[\.\.\.\])*)`$", text)
    raw_path = m.group(1).replace("[...]", ".<NAME>") if m else ""
    path = [p for p in re.split(r"[.\[\]]", raw_path) if p]
    what = text[: m.start()] if m else text
    key = ".".join(path) or "(top level)"
    unknown = re.match(r"Object contains unknown field `(\w+)`", what)
    if unknown:
        key = ".".join([*path, unknown.group(1)])
        hint = (
            _allowed(Config, path)
            if path
            else "allowed keys: " + ", ".join(Config.__struct_fields__)
        )
        return ConfigError(f"{source}: unknown key '{key}' ({hint})")
    hint = _allowed(Config, [p for p in path if not p.isdigit()])
    return ConfigError(f"{source}: bad value for '{key}': {what}" + (f" ({hint})" if hint else ""))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    bad = _non_finite(raw, [])
    if bad is not None:
        path, value = bad
        hint = _allowed(Config, [p for p in path if not p.isdigit()]) or "allowed: a finite number"
        if "finite" not in hint:
            hint += " (a finite number)"
        raise ConfigError(
            f"{source}: bad value for '{'.'.join(path)}': {value} is not a finite number ({hint})"
        )
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise _explain(exc, source) from None
    _check(cfg, source)
    return cfg


def _check_url(source: str, key: str, url: str, schemes: tuple[str, ...]) -> None:
    """Scheme, host and a port in 1-65535 (urllib only fails on the port when asked)."""
    parsed = urlparse(url)
    allowed = " or ".join(f"{s}://" for s in schemes)
    if parsed.scheme not in schemes:
        raise ConfigError(f"{source}: '{key}' must start with {allowed}, got {url!r}")
    if not parsed.hostname:
        raise ConfigError(f"{source}: '{key}' = {url!r} has no host ({allowed}HOST[:PORT]/...)")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{source}: '{key}' = {url!r}: the port must be 1-65535")


def _check_data_dir(cfg: Config, source: str) -> None:
    """data_dir is a directory or can become one: checked (read-only) before anything is
    created under it."""
    if not cfg.data_dir.strip():
        raise ConfigError(f"{source}: 'data_dir' is empty (allowed: a directory path)")
    p = Path(cfg.data_dir)
    while not p.exists():
        if p.parent == p:
            return
        p = p.parent
    if not p.is_dir():
        raise ConfigError(
            f"{source}: 'data_dir' = {cfg.data_dir!r}: {p} exists and is not a directory "
            "(allowed: a directory, or a path that can be created as one)"
        )


def _check_notify(notify: NotifyConfig, source: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(notify.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{source}: 'notify.timezone' = {notify.timezone!r} is not an IANA time zone "
            "(e.g. 'Asia/Kolkata', 'UTC')"
        ) from None
    for name in notify.channels:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            raise ConfigError(
                f"{source}: '[notify.channels.{name}]': a channel name is 1-32 lower-case "
                "letters, digits or _ starting with a letter (its URL is in "
                f"CHIMERA_NOTIFY_URL_{name.upper()})"
            )
    if notify.retry_max_s < notify.retry_initial_s:
        raise ConfigError(
            f"{source}: 'notify.retry_max_s' ({notify.retry_max_s}) is below "
            f"'notify.retry_initial_s' ({notify.retry_initial_s})"
        )


def feed_symbols(cfg: Config) -> list[tuple[int, str]]:
    """(exchange type, token) for every ``feed.tokens`` entry: "NSE_FO:35001" names its
    segment, a bare token is on ``feed.exchange_type``."""
    default = int(ExchangeType[cfg.feed.exchange_type])
    out = []
    for t in cfg.feed.tokens:
        segment, sep, token = t.partition(":")
        out.append((int(ExchangeType[segment]), token) if sep else (default, t))
    return out


def _check(cfg: Config, source: str) -> None:
    if not cfg.feed.tokens and not cfg.instruments.names:
        raise ConfigError(
            f"{source}: 'feed.tokens' is empty (list at least one instrument token, or name "
            "instruments in [instruments] names)"
        )
    segments = typing.get_args(ExchangeName)
    bad = [
        t
        for t in cfg.feed.tokens
        if not (
            (tok := t.partition(":")[2] if ":" in t else t).isascii()
            and tok.isalnum()
            and len(tok) <= 25
            and (":" not in t or t.partition(":")[0] in segments)
        )
    ]
    if bad:
        raise ConfigError(
            f"{source}: 'feed.tokens' has invalid tokens {bad} (1-25 ASCII digits/letters, "
            f"optionally after a segment: {', '.join(s + ':' for s in segments)})"
        )
    plain = [t for _, t in feed_symbols(cfg)]
    if len(set(plain)) != len(plain):
        raise ConfigError(f"{source}: 'feed.tokens' lists a token twice")
    _check_url(source, "feed.url", cfg.feed.url, ("ws", "wss"))
    _check_url(source, "execution.angelone.rest_url", cfg.execution.angelone.rest_url,
               ("https", "http"))  # fmt: skip
    _check_url(source, "execution.angelone.order_ws_url", cfg.execution.angelone.order_ws_url,
               ("wss", "ws"))  # fmt: skip
    _check_data_dir(cfg, source)
    _check_notify(cfg.notify, source)
    _check_url(source, "bot.api_url", cfg.bot.api_url, ("https", "http"))
    if cfg.bot.api_url.startswith("http://") and not is_loopback_url(cfg.bot.api_url):
        raise ConfigError(
            f"{source}: 'bot.api_url' = {cfg.bot.api_url!r}: plain http only on loopback "
            "(the bot token travels in the URL); use https://"
        )
    # Cross-field calendar rules (a cut-off outside the session, a square-off override
    # that does not fit it) are refused at load, not at the first tick.
    try:
        segment = int(ExchangeType[cfg.feed.exchange_type])
        calendar_for(cfg.markets, segment, cfg.execution.square_off_at)
        build_calendars(cfg.markets)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    if cfg.feed.reconnect_max_s < cfg.feed.reconnect_initial_s:
        raise ConfigError(
            f"{source}: 'feed.reconnect_max_s' ({cfg.feed.reconnect_max_s}) is below "
            f"'feed.reconnect_initial_s' ({cfg.feed.reconnect_initial_s})"
        )
    for key, endpoint in (
        ("telemetry.endpoint", cfg.telemetry.endpoint),
        ("control.endpoint", cfg.control.endpoint),
        ("shadow.endpoint", cfg.shadow.endpoint),
    ):
        m = re.fullmatch(r"tcp://([^:]+):(\d+)", endpoint)
        if m and not 1 <= int(m.group(2)) <= 65535:
            raise ConfigError(
                f"{source}: '{key}' = {endpoint!r}: the port must be 1-65535 (tcp://127.0.0.1:PORT)"
            )
        if not _is_local_endpoint(endpoint):
            raise ConfigError(
                f"{source}: '{key}' = {endpoint!r} must bind to loopback or ipc "
                "(tcp://127.0.0.1:PORT or ipc:///path); remote access goes through an SSH tunnel"
            )
    if cfg.mode == "live" and is_loopback_url(cfg.feed.url):
        raise ConfigError(
            f"{source}: mode = 'live' with 'feed.url' on loopback ({cfg.feed.url}); live trading "
            "needs the real feed (wss://smartapisocket.angelone.in/smart-stream)"
        )
    ex = cfg.execution
    if cfg.mode == "live" and ex.enabled and ex.broker != "angelone":
        raise ConfigError(
            f"{source}: mode = 'live' needs 'execution.broker' = 'angelone' "
            f"(got {ex.broker!r}; allowed: 'angelone'); paper trading uses mode = 'paper'"
        )
    if (
        cfg.mode == "paper"
        and ex.broker == "angelone"
        and not is_loopback_url(ex.angelone.rest_url)
    ):
        raise ConfigError(
            f"{source}: mode = 'paper' with 'execution.broker' = 'angelone' at "
            f"{ex.angelone.rest_url}: that would send real orders. Use broker = 'paper', or "
            "mode = 'live' on purpose (angelone in paper mode is for the loopback simulator)"
        )


DEFAULT_CONFIG = "chimera.toml"


def default_config_path() -> str | None:
    """``./chimera.toml`` when it exists (every chimera command's default), else None."""
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def load_config(path: str | Path | None) -> Config:
    """Load ``path`` (or the defaults when None). Missing file is an error naming it."""
    if path is None:
        cfg = Config()
        _check(cfg, "built-in defaults (no chimera.toml)")
        return cfg
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {p} not found (copy chimera.example.toml to {p} or pass --config)"
        )
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{p}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line}); "
            "save the file as UTF-8"
        ) from None
    return parse_config(text, str(p))


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is localhost or a loopback address."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local_endpoint(endpoint: str) -> bool:
    if endpoint.startswith("ipc://"):
        return True
    m = re.fullmatch(r"tcp://([^:]+):(\d+)", endpoint)
    if not m:
        return False
    return is_loopback_url(f"ws://{m.group(1)}:{m.group(2)}/")


def load_env(env_file: str | Path | None = ".env") -> dict[str, str]:
    """Environment variables, with a ``.env`` file filling in what the environment lacks."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def load_credentials(cfg: Config, env: dict[str, str]) -> Credentials:
    """Feed credentials from the environment. Loopback (simulator) feeds get placeholders.

    With ``execution.broker = "angelone"`` and its login secrets present, the feed's JWT and
    feed token may be left out: the broker login at start issues fresh ones."""
    values = {field: env.get(var, "") for field, var in CREDENTIAL_ENV.items()}
    missing = [CREDENTIAL_ENV[f] for f, v in values.items() if not v]
    if missing:
        if cfg.mode == "paper" and is_loopback_url(cfg.feed.url):
            placeholders = {f: v or f"sim-{f}" for f, v in values.items()}
            return Credentials(**placeholders)
        login = cfg.execution.enabled and cfg.execution.broker == "angelone"
        from_login = {"CHIMERA_JWT", "CHIMERA_FEED_TOKEN"}
        if login and env.get("CHIMERA_PASSWORD") and env.get("CHIMERA_TOTP_SECRET"):
            missing = [m for m in missing if m not in from_login]
            if not missing:
                return Credentials(
                    **{f: v or "issued-at-login" for f, v in values.items()}  # replaced at start
                )
        raise ConfigError(
            f"missing credentials {', '.join(missing)} for feed {cfg.feed.url}: set them in the "
            "environment or in .env (never in chimera.toml)"
        )
    return Credentials(**values)


def secret_values(env: dict[str, str]) -> list[str]:
    """The secret strings present in ``env``, for the log redactor."""
    return [env[k] for k in SECRET_ENV if env.get(k)]
