"""Data contracts: everything that crosses a process boundary is one of these Structs.

Prices are rupees (float) once decoded; the wire carries paise. Times: exchange
timestamps are epoch milliseconds from the exchange; ``recv_ns`` and the latency stamps
are ``time.monotonic_ns()`` of the receiving process (or an injected clock in replay).
"""

from __future__ import annotations

import enum

import msgspec

SCHEMA_VERSION = 1

# Hot-path Structs are declared gc=False: they hold no reference cycles, and keeping ~5
# allocations per tick out of the cyclic GC's generation counts removes its pauses from
# the latency tail.


class Mode(enum.IntEnum):
    """SmartAPI v2 subscription modes (byte 0 of every packet)."""

    LTP = 1
    QUOTE = 2
    SNAP_QUOTE = 3
    DEPTH = 4


class ExchangeType(enum.IntEnum):
    NSE_CM = 1
    NSE_FO = 2
    BSE_CM = 3
    BSE_FO = 4
    MCX_FO = 5
    NCX_FO = 7
    CDE_FO = 13


class Level(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One price level of the book."""

    price: float
    qty: int
    orders: int


class Tick(msgspec.Struct, frozen=True, gc=False):
    """One decoded market-data packet. Fields a mode does not carry keep their defaults."""

    token: str
    exchange_type: int
    mode: int
    sequence: int
    exchange_ts_ms: int
    ltp: float
    ltq: int = 0
    avg_price: float = 0.0
    volume: int = 0  # cumulative traded volume for the day
    total_buy_qty: float = 0.0
    total_sell_qty: float = 0.0
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    prev_close: float = 0.0
    last_traded_ts_s: int = 0
    open_interest: int = 0
    oi_change_pct: float = 0.0
    upper_circuit: float = 0.0
    lower_circuit: float = 0.0
    week52_high: float = 0.0
    week52_low: float = 0.0
    bids: tuple[Level, ...] = ()  # best first (descending price)
    asks: tuple[Level, ...] = ()  # best first (ascending price)
    packet_received_ms: int = 0  # DEPTH packets only (offset 35)
    recv_ns: int = 0

    @property
    def best_bid(self) -> float:
        return self.bids[0].price if self.bids else 0.0

    @property
    def best_ask(self) -> float:
        return self.asks[0].price if self.asks else 0.0


class Bar(msgspec.Struct, frozen=True, gc=False):
    """A time bar, opened and closed by exchange time."""

    token: str
    start_ms: int
    end_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    ticks: int


class Structure(enum.Enum):
    WARMUP = "WARMUP"
    VACUUM = "VACUUM"
    TRAPPED = "TRAPPED"


class Band(enum.Enum):
    WARMUP = "WARMUP"
    BREAKOUT = "BREAKOUT"
    BREAKDOWN = "BREAKDOWN"
    NEUTRAL = "NEUTRAL"


class VolumeProfile(msgspec.Struct, frozen=True, gc=False):
    """Volume by price over the structure window of closed bars."""

    poc: float  # point of control: price bucket with the most volume
    value_area_low: float
    value_area_high: float
    total_volume: int


class PhysicsState(msgspec.Struct, frozen=True, gc=False):
    """Kernel outputs for one evaluation, with the inputs that produced them."""

    close: float  # the live close the kernels saw (last price of the forming bar)
    closed_bars: int
    energy: float
    z: float
    structure: Structure
    band: Band
    band_mean: float
    band_std: float
    volatility: float  # std of log returns over the structure window of closed bars
    atr: float
    profile: VolumeProfile | None = None


class Transition(msgspec.Struct, frozen=True, gc=False):
    """A state-machine event and what it did."""

    event: str
    from_state: str
    to_state: str
    accepted: bool
    reason: str = ""


class Side(enum.Enum):
    BUY = "BUY"
    SELL = "SELL"


class OrderIntent(msgspec.Struct, frozen=True, gc=False):
    """What the strategy wants, before governance and routing."""

    client_order_id: str
    token: str
    exchange_type: int
    side: Side
    qty: int
    ref_price: float
    bar_start_ms: int
    signal_seq: int
    exchange_ts_ms: int


class OrderStatus(enum.Enum):
    PENDING = "PENDING"  # journaled (write-ahead), broker not yet answered
    OPEN = "OPEN"  # the broker accepted it
    PARTIAL = "PARTIAL"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"


TERMINAL_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})


class OrderType(enum.Enum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOPLOSS_MARKET = "STOPLOSS_MARKET"
    STOPLOSS_LIMIT = "STOPLOSS_LIMIT"


class Purpose(enum.Enum):
    """Why an order exists; only ENTRY orders belong to a state machine's EXECUTE."""

    ENTRY = "ENTRY"
    STOP_LOSS = "STOP_LOSS"
    TAKE_PROFIT = "TAKE_PROFIT"
    SQUARE_OFF = "SQUARE_OFF"  # intraday cut-off
    FLATTEN = "FLATTEN"  # kill switch / operator
    EXIT = "EXIT"  # the strategy's exit rule (reversal, energy decay, holding time)


class OrderRequest(msgspec.Struct, frozen=True):
    """One order as sent to a broker. ``client_order_id`` is unique for ever (journal key);
    ``intent_id`` is the state machine's id it serves (a VWAP child's parent)."""

    client_order_id: str
    intent_id: str
    token: str
    exchange_type: int
    side: Side
    qty: int
    order_type: OrderType = OrderType.MARKET
    limit_price: float = 0.0  # rupees; LIMIT / STOPLOSS_LIMIT
    trigger_price: float = 0.0  # rupees; STOPLOSS_*
    purpose: Purpose = Purpose.ENTRY
    product: str = "INTRADAY"  # INTRADAY | DELIVERY (charges differ)
    symbol: str = ""  # trading symbol, e.g. SBIN-EQ (live broker needs it)
    exchange_ts_ms: int = 0  # exchange time the order was decided


class Order(msgspec.Struct):
    client_order_id: str
    token: str
    exchange_type: int
    side: Side
    qty: int
    limit_price: float | None
    status: OrderStatus
    broker_order_id: str = ""
    filled_qty: int = 0
    avg_fill_price: float = 0.0
    reason: str = ""
    intent_id: str = ""
    purpose: Purpose = Purpose.ENTRY


class Fill(msgspec.Struct, frozen=True):
    fill_id: str  # unique per broker trade; the journal ignores a second copy
    client_order_id: str
    token: str
    side: Side
    qty: int
    price: float
    charges: float
    exchange_ts_ms: int


class Position(msgspec.Struct):
    token: str
    qty: int  # signed: long > 0, short < 0
    avg_price: float
    realized_pnl: float = 0.0
    charges: float = 0.0


class ExecKind(enum.Enum):
    ACK = "ACK"  # the broker accepted the order
    PARTIAL = "PARTIAL"  # a fill that leaves quantity open
    FILLED = "FILLED"  # completely filled
    REJECTED = "REJECTED"  # refused (broker, RMS, journal duplicate, throttler)
    CANCELLED = "CANCELLED"  # cancelled (by us, on expiry, or by the exchange)


class ExecutionReport(msgspec.Struct, frozen=True, gc=False):
    """What happened to one order (telemetry topic ``exec``). The engine applies these
    between frames, exactly where they arrived; replay re-applies the recorded ones at the
    same places, so positions and state machines come out identical."""

    kind: ExecKind
    client_order_id: str
    intent_id: str
    token: str
    side: Side
    order_qty: int
    filled_qty: int  # cumulative for this order
    avg_price: float  # cumulative average fill price
    purpose: Purpose = Purpose.ENTRY
    broker_order_id: str = ""
    fill: Fill | None = None  # the new fill this report carries (PARTIAL / FILLED)
    reason: str = ""
    # True when the intent has nothing left working (every child terminal): the state
    # machine leaves EXECUTE on this report.
    final: bool = False
    exchange_ts_ms: int = 0
    at_ns: int = 0
    schema: int = SCHEMA_VERSION


class ExecutionOutput(msgspec.Struct, frozen=True, gc=False):
    """The execution layer's state for a symbol, as of this decision (rebuilt only when a
    report arrives, so it costs nothing per tick)."""

    position_qty: int  # signed
    avg_price: float
    realized_pnl: float  # net of charges
    charges: float  # paid on this symbol this session
    open_orders: int
    last_report: str  # e.g. "FILLED CH-1-2885-...", "" before any


class Reconciliation(msgspec.Struct, gc=False):
    """Start-up reconciliation against the broker (telemetry topic ``recon``). Trading is
    refused until it is done; ``positions`` seed the engine's position book (replay seeds
    from the same record)."""

    mode: str
    ok: bool
    positions: tuple[Position, ...]
    open_orders: tuple[Order, ...]
    adopted: tuple[str, ...]  # broker orders the journal did not know, kept
    cancelled: tuple[str, ...]  # orphans cancelled per config
    never_sent: tuple[str, ...]  # journaled intents the broker never saw (not resent)
    fills_recovered: int  # broker fills missing from the journal, now journaled
    mismatches: tuple[str, ...]  # what could not be made to agree (blocks trading)
    cash: float
    at_ns: int
    schema: int = SCHEMA_VERSION


class Signal(msgspec.Struct, frozen=True, gc=False):
    """The default strategy's reading of the physics: direction and why."""

    direction: int  # +1 long, -1 short, 0 none
    reason: str


# ---- governance layer outputs (each layer: update(inputs) -> one of these) -------------


class Regime(enum.Enum):
    WARMUP = "WARMUP"  # not enough bars to judge
    STABLE = "STABLE"
    TRENDING = "TRENDING"
    CHAOS = "CHAOS"


class DriftOutput(msgspec.Struct, frozen=True, gc=False):
    """Regime drift detector: what the recent returns look like, and the numbers behind it."""

    regime: Regime
    drift_score: float  # 0 (no shift from the reference window) .. 1 (complete shift)
    entropy: float  # normalised Shannon entropy of discretised recent returns, 0..1
    shift: float  # distribution-shift statistic, recent vs reference (e.g. two-sample KS D)
    trend: float  # directional strength of recent returns (|mean| / std), for TRENDING
    volatility: float  # std of recent returns
    returns: int  # returns in the recent window


class CapitalOutput(msgspec.Struct, frozen=True, gc=False):
    """Capital allocation brain: leverage inside hard caps, and the size it implies."""

    target_leverage: float  # what the brain wants, after caps and drift scaling
    regime_leverage: float  # the regime's base leverage before scaling
    max_leverage: float  # the hard cap it can never exceed
    high_volatility: bool  # the high-volatility cap applied
    drift_scale: float  # multiplier from the drift score, 0..1
    equity: float
    stop_distance: float  # ATR-based stop distance, rupees per unit
    qty: int  # position size, rounded down to lot size (0 = cannot size)
    lot_size: int
    reason: str


class Veto(msgspec.Struct, frozen=True, gc=False):
    """One risk rule that said no, with its numbers."""

    rule: str
    value: float
    limit: float
    detail: str = ""


class MetaRiskOutput(msgspec.Struct, frozen=True, gc=False):
    """Meta-risk: allowed or vetoed (every veto named), and whether to HALT."""

    allowed: bool
    halt: bool  # a kill-switch rule fired (daily loss, max drawdown): HALT for the day
    vetoes: tuple[Veto, ...]
    rolling_sharpe: float
    drawdown: float  # from the equity high-water mark, as a fraction
    daily_pnl: float  # account equity now minus at the session's open
    trades_today: int
    open_positions: int
    equity: float = 0.0  # the account's: cash + positions marked to market
    session_open_equity: float = 0.0
    high_water_mark: float = 0.0
    # "" | "daily_loss" (REDUCING until the next session opens) | "max_drawdown" (HALTED
    # until an operator resets it): the engine's trading state follows it.
    kill_switch: str = ""


class TradingState(enum.Enum):
    """The one trading state of the whole process. Protective exits (stop, target,
    square-off) work in every state; only new entries differ."""

    ACTIVE = "ACTIVE"  # entries and exits
    REDUCING = "REDUCING"  # exits only (a daily-loss halt, a journal that cannot write, ...)
    PAUSED = "PAUSED"  # an operator's pause: no entries until resumed
    HALTED = "HALTED"  # kill switch: open orders cancelled, no entries until an operator


# ---- what the engine asks of the router (typed, one definition; never on the wire) ----
class CancelIntent(msgspec.Struct, frozen=True, tag=True):
    """An intent's EXECUTE expired: cancel what still works for it."""

    intent_id: str


class CancelAll(msgspec.Struct, frozen=True, tag=True):
    """The kill switch: cancel every open order and send nothing new but exits."""

    reason: str


class CancelEntries(msgspec.Struct, frozen=True, tag=True):
    """REDUCING: cancel the entries still working; exits carry on."""

    reason: str


class Flatten(msgspec.Struct, frozen=True, tag=True):
    """Close positions at market: every one, or only ``token``."""

    reason: str
    token: str = ""


class ExitPosition(msgspec.Struct, frozen=True, tag=True):
    """The strategy's exit rule fired for ``token``'s position."""

    token: str
    reason: str


class ResumeRouting(msgspec.Struct, frozen=True, tag=True):
    """The operator lifted the kill switch."""

    reason: str


RouterCommand = CancelIntent | CancelAll | CancelEntries | Flatten | ExitPosition | ResumeRouting


class AccountSnapshot(msgspec.Struct, frozen=True, gc=False):
    """The account as risk sees it, at one instant: what the capital brain, meta-risk and
    the exposure caps read. Exposures are in rupees at the marks, working entry orders
    included (they may fill)."""

    cash: float
    equity: float  # cash + positions marked to market
    realized_pnl: float  # this session, net of charges
    unrealized_pnl: float
    charges: float
    gross_exposure: float  # sum of |qty| x mark over positions and working entries
    net_exposure: float  # sum of signed qty x mark, the same
    open_positions: int
    positions: dict[str, int]  # token → signed qty held
    working: dict[str, int]  # token → signed qty of entry orders still working
    entries: dict[str, int]  # token → entries made into the position now open
    marks: dict[str, float]  # token → the price exposures are valued at


class GenomeOutput(msgspec.Struct, frozen=True, gc=False):
    """The strategy genome in force for this instrument family."""

    family: str
    version: int
    params: dict[str, float]
    closed_trades: int
    learning: bool  # False until MIN_HISTORY closed trades


class ApprovalOutput(msgspec.Struct, frozen=True, gc=False):
    """Whether an intent needs a human, and where it stands."""

    required: bool
    status: str  # NOT_REQUIRED | PENDING | APPROVED | REJECTED | EXPIRED
    approval_id: str = ""
    reason: str = ""


class Decision(msgspec.Struct, frozen=True, gc=False):
    """One evaluation: every layer's inputs and outputs, in hot-path order.

    Governance layers are ``None`` when governance is off (or, for meta_risk and approval,
    when no signal was about to fire); execution is ``None`` when no broker is wired.
    Nothing is ever invented to fill a field.
    """

    seq: int
    token: str
    exchange_type: int
    exchange_ts_ms: int
    tick_sequence: int
    bar_start_ms: int
    physics: PhysicsState
    signal: Signal
    state: str  # state after this evaluation
    transitions: tuple[Transition, ...]
    intent: OrderIntent | None
    confidence: float
    influence: dict[str, float]
    feed_stale: bool
    recv_ns: int
    decided_ns: int
    drift: DriftOutput | None = None  # latest, refreshed at each bar close
    capital: CapitalOutput | None = None  # latest, refreshed at each bar close
    meta_risk: MetaRiskOutput | None = None  # consulted when a signal is about to fire
    genome: GenomeOutput | None = None
    approval: ApprovalOutput | None = None  # consulted when a signal is about to fire
    execution: ExecutionOutput | None = None  # None when no broker is wired
    schema: int = SCHEMA_VERSION


# ---- telemetry --------------------------------------------------------------------------
# Every telemetry message is ONE ZeroMQ frame: ASCII topic, a NUL, an 8-byte little-endian
# publisher sequence number (a gap = messages this subscriber never got), then the msgpack
# payload below. Subscribers filter on the topic prefix; the black box stores these bytes.


class TickRecord(msgspec.Struct, array_like=True, gc=False):
    """One feed frame exactly as received, with the decision it produced, in one message
    (one send per tick). Topic ``tick.<token>`` when there is a decision, ``raw`` when the
    frame was dropped (malformed, duplicate, out of order, bad price). Replay feeds
    ``frame`` back at ``recv_ns`` and compares its decision with ``decision``."""

    recv_ns: int
    frame: bytes
    decision: Decision | None
    schema: int = SCHEMA_VERSION


class FeedEvent(msgspec.Struct, array_like=True, gc=False):
    """The feed connected (epoch bumps) or disconnected (topic ``feed``)."""

    connected: bool
    epoch: int
    at_ns: int
    schema: int = SCHEMA_VERSION


class ControlEvent(msgspec.Struct, gc=False):
    """An operator command the hot path applied, with its effect (topic ``control``)."""

    command: str
    arg: str
    ok: bool
    result: str
    at_ns: int
    transitions: tuple[Transition, ...] = ()
    schema: int = SCHEMA_VERSION
    by: str = ""  # who asked (control channel's ``by``); "" for the engine's own events


class Health(msgspec.Struct, gc=False):
    """Periodic engine health (topic ``health``)."""

    at_ns: int
    engine: dict[str, int]
    feed_connected: bool
    feed_connects: int
    feed_stale: bool
    telemetry_sent: int
    telemetry_dropped: int
    halted: bool
    states: dict[str, int]
    paused: bool = False  # no new entries (operator pause); positions carry on
    reconciled: bool = True  # False: the broker reconciliation disagreed, no entries
    schema: int = SCHEMA_VERSION
    # Exits only: no new entries (journal failure, an unprotected position); exits work.
    exits_only: bool = False
    exits_only_reason: str = ""
    journal_error: str = ""  # the last journal write failure; "" when writes succeed
    disk_free_mb: float = -1.0  # free space under data_dir; -1 when not measured
    unprotected: list[str] = msgspec.field(default_factory=list)  # tokens with a dark position
    trading_state: str = "ACTIVE"  # TradingState: ACTIVE | REDUCING | PAUSED | HALTED


class GovernanceState(msgspec.Struct, frozen=True):
    """Governance's stores as the engine started (topic ``state``, right after the session
    record): SQLite images by file name (genome, meta-risk, approvals). Replay starts from
    them, so a session that began with a learned genome, a persisted halt or queued
    approvals replays as it ran; a session without one replays from empty state."""

    files: dict[str, bytes]
    schema: int = SCHEMA_VERSION


class AlertRecord(msgspec.Struct, gc=False):
    """An alert ``chimera notify`` sent or dropped (topic ``alert``), so the black box shows
    what the trader was told. The engine only republishes it (the informational ``alert``
    command); nothing in it is an engine input, and replay skips it."""

    alert_id: str  # stable per alert and channel: the outbox row
    name: str  # stable alert name (feed_dark, trading_state, ...)
    severity: str  # info | warning | critical
    text: str
    channel: str  # the channel's name, never its URL
    outcome: str  # sent | dropped
    reason: str = ""  # why dropped (quiet_hours, filtered, rate_limited), or the failure
    late: bool = False  # delivered after a delay (channel down, notify restarted)
    raised_ns: int = 0  # wall clock when notify raised it
    at_ns: int = 0  # wall clock when it was sent or dropped
    schema: int = SCHEMA_VERSION


class SessionInfo(msgspec.Struct):
    """Published once at start (topic ``session``): what produced this session."""

    session_id: str
    started_ns: int
    mode: str
    config_json: bytes  # msgspec JSON of the parsed Config: replay rebuilds it exactly
    config_sha256: str
    code_version: str
    genome_version: str = ""
    schema: int = SCHEMA_VERSION
