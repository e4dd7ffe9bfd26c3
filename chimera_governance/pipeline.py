"""The governance hierarchy the engine consults: drift ▸ capital ▸ meta-risk ▸ genome ▸
approvals. Implements chimera_core.governance.Governance; each layer stays its own object
with ``update(inputs) -> Output`` and this class only passes outputs down."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog

from chimera_core.commands import Command
from chimera_core.config import Config, feed_symbols
from chimera_core.contracts import (
    AccountSnapshot,
    Bar,
    CapitalOutput,
    DriftOutput,
    ExchangeType,
    GenomeOutput,
    OrderIntent,
    PhysicsState,
    Side,
    Veto,
)
from chimera_core.errors import ChimeraError
from chimera_core.governance import GateVerdict
from chimera_core.markets import calendar_for
from chimera_core.sqlite_files import private_dir
from chimera_core.store import image_of
from chimera_governance import genome as gen
from chimera_governance.approvals import (
    APPROVED,
    DECIDED_BY_HUMAN,
    NOT_REQUIRED,
    REJECTED,
    ApprovalQueue,
)
from chimera_governance.capital_brain import CapitalBrain
from chimera_governance.drift_detector import DriftDetector
from chimera_governance.drift_detector import warm_up_kernels as drift_warm_up
from chimera_governance.exposure import ExposureLimits, fit
from chimera_governance.genome import (
    GenomeError,
    GenomeStore,
    GenomeVersion,
    genes_from_strategy,
)
from chimera_governance.meta_risk import MetaRisk, MetaRiskLimits, trading_day
from chimera_governance.portfolio import (
    ORDER_RATE,
    PortfolioRisk,
    cost_bound,
    horizon_bars,
)
from chimera_governance.portfolio import warm_up_kernels as portfolio_warm_up

log = structlog.get_logger(__name__)

_PHYSICS_ONLY = {"physics": 1.0}
# Governance's stores under its state dir: what a session's start records for replay.
STATE_FILES = ("genome.db", "meta_risk.db", "approvals.db")


class GovernancePipeline:
    """All governance state for one mode (paper or live), persisted under ``state_dir``."""

    def __init__(self, cfg: Config, state_dir: Path, lots: Mapping[str, int] | None = None) -> None:
        g = cfg.governance
        self.state_dir = state_dir
        private_dir(state_dir)  # 0700: positions, halts and approvals live here
        # The account's equity as last seen (cash + marks): what the capital brain sizes
        # against. The configured figure only stands in until the first observation.
        self.equity = g.equity
        self.last_ts_ms = 0  # the latest bar close seen (exchange time): stamps a promotion
        self.lot_size = g.lot_size
        # Lot sizes by token (the instrument master's, for F&O); the configured one else.
        self.lots = {**cfg.feed.lots, **(lots or {})}
        self.exposure = ExposureLimits(
            max_position_value=g.max_position_value,
            max_position_qty=g.max_position_qty,
            max_gross_exposure=g.max_gross_exposure,
            max_net_exposure=g.max_net_exposure,
            max_open_positions=g.max_open_positions,
            max_entries_per_position=g.max_entries_per_position,
        )
        self.brain = CapitalBrain(
            max_leverage=g.max_leverage,
            risk_per_trade=g.risk_per_trade,
            stop_atr_multiple=g.stop_atr_multiple,
            lot_size=g.lot_size,
        )
        # The segment's market calendar: trading days turn at its session open.
        self.calendar = calendar_for(
            cfg.markets, int(ExchangeType[cfg.feed.exchange_type]), cfg.execution.square_off_at
        )
        self.meta_risk = MetaRisk(
            state_dir / "meta_risk.db",
            MetaRiskLimits(
                daily_loss_pct=g.daily_loss_pct,
                max_drawdown=g.max_drawdown,
                max_trades_per_symbol=g.max_trades_per_symbol,
                max_trades_per_day=g.max_trades_per_day,
                max_open_positions=g.max_open_positions,
                max_position_value=g.max_position_value,
                max_spread_pct=g.max_spread_pct,
                min_confidence=g.min_confidence,
            ),
            calendar=self.calendar,
        )
        self.approvals = ApprovalQueue(
            state_dir / "approvals.db",
            size_limit_value=g.approval_size_limit,
            min_confidence=g.approval_min_confidence,
            ttl_s=g.approval_ttl_s,
        )
        self.genomes = GenomeStore(
            state_dir / "genome.db",
            genes=genes_from_strategy(cfg.strategy),
            token_families=g.families,
        )
        tokens = [t for _, t in feed_symbols(cfg)]
        self._drift: dict[str, DriftDetector] = {t: DriftDetector() for t in tokens}
        self._drift_out: dict[str, DriftOutput] = {}
        self._capital_out: dict[str, CapitalOutput] = {}
        # Read once: the genome changes on closed trades (the execution layer will refresh
        # it there) or by a CLI rollback, which takes effect at the next engine start. No
        # polling on the tick path, and replay sees the same genome the session started with.
        self._genome_out: dict[str, GenomeOutput] = {
            t: self.genomes.current(self.genomes.family_for(t)) for t in tokens
        }
        # Rules on the whole book ([governance.portfolio]; all off by default).
        self.portfolio = PortfolioRisk(
            g.portfolio,
            tokens=tokens,
            stop_atr_multiple=cfg.execution.stop_atr_multiple,  # the bracket's, not sizing's
            costs=cost_bound(cfg),
            horizon=horizon_bars(cfg),
        )
        self.rollback_session_loss = g.portfolio.rollback_session_loss
        self._rollback_pending = False
        drift_warm_up()
        portfolio_warm_up()
        self._fired: dict[tuple[str, object], int] = {}  # (token, IST day) → intents let through

    def reload_genomes(self) -> None:
        """Read the version in force for every family again (after a promotion or rollback
        written by another process); the engine takes it at each symbol's next bar."""
        for t in self._genome_out:
            self._genome_out[t] = self.genomes.current(self.genomes.family_for(t))

    # ---- per bar ---------------------------------------------------------------------
    def on_bar(self, token: str, bar: Bar, physics: PhysicsState, equity: float) -> None:
        self.last_ts_ms = max(self.last_ts_ms, bar.end_ms)
        if math.isfinite(equity) and equity > 0:
            self.equity = equity
        if self._rollback_pending:
            self._rollback_pending = False
            self._roll_back_genomes(bar.end_ms)
        self.portfolio.on_bar(token, bar.end_ms, bar.close)
        detector = self._drift.get(token)
        if detector is None:
            return
        drift = detector.update(bar.close)
        self._drift_out[token] = drift
        self._capital_out[token] = self.brain.update(
            drift.regime, drift.drift_score, drift.volatility, physics.atr, bar.close,
            self.equity, self.lots.get(token, self.lot_size),
        )  # fmt: skip

    def _roll_back_genomes(self, exchange_ts_ms: int) -> None:
        """A bad session: every family in use goes back to its previous version (a family
        still at its first version has none and stays)."""
        for family in sorted({self.genomes.family_for(t) for t in self._genome_out}):
            try:
                v = self.genomes.rollback(
                    family, reason="session_loss_rollback", exchange_ts_ms=exchange_ts_ms
                )
            except GenomeError as exc:
                log.warning("genome.session_rollback_skipped", family=family, error=str(exc))
                continue
            log.warning(
                "genome.session_rollback",
                family=family,
                version=v.version,
                restored_from=v.restored_from,
                exchange_ts_ms=exchange_ts_ms,
            )
        self.reload_genomes()

    def layers(
        self, token: str
    ) -> tuple[DriftOutput | None, CapitalOutput | None, GenomeOutput | None]:
        return self._drift_out.get(token), self._capital_out.get(token), self._genome_out.get(token)

    def weigh(self, token: str, confidence: float) -> tuple[float, dict[str, float]]:
        """Confidence after the layers, and how much each layer shaped it.

        The strategy's confidence is discounted by distribution drift (× (1 − drift_score))
        and by how far the volatility and hard caps cut leverage below what regime and drift
        alone would give (× target / (regime leverage × drift scale)). Influence: each
        layer's share of the total discount, with physics holding what is left; weights
        sum to 1. Before the first closed bar: physics only.
        """
        drift = self._drift_out.get(token)
        capital = self._capital_out.get(token)
        if drift is None or capital is None or confidence <= 0.0:
            return confidence, _PHYSICS_ONLY
        drift_factor = max(0.0, 1.0 - drift.drift_score)
        # Leverage the regime and drift alone would give; the rest is the volatility and
        # hard caps (drift is not counted twice).
        expected = capital.regime_leverage * capital.drift_scale
        capital_factor = min(1.0, capital.target_leverage / expected) if expected > 0 else 1.0
        adjusted = confidence * drift_factor * capital_factor
        cut_drift = 1.0 - drift_factor
        cut_capital = 1.0 - capital_factor
        total = 1.0 + cut_drift + cut_capital
        return adjusted, {
            "physics": 1.0 / total,
            "drift": cut_drift / total,
            "capital": cut_capital / total,
        }

    # ---- per intent ------------------------------------------------------------------
    def gate(
        self,
        intent: OrderIntent,
        physics: PhysicsState,
        confidence: float,
        spread_pct: float,
        feed_stale: bool,
        account: AccountSnapshot,
    ) -> GateVerdict:
        token, ts, price = intent.token, intent.exchange_ts_ms, intent.ref_price
        if math.isfinite(account.equity) and account.equity > 0:
            self.equity = account.equity
        capital = self._capital_out.get(token)
        wanted = capital.qty if capital is not None else 0
        lot = self.lots.get(token, self.lot_size)
        portfolio = self.portfolio
        extra: list[Veto] = []
        if portfolio.active and wanted > 0:
            # Sized down inside the portfolio's sizing rules (risk at the stop, one order's
            # value, the volatility target, the correlation cluster's cap) first.
            wanted, extra = portfolio.size(
                account, token, intent.side, wanted, price, physics.atr, lot
            )
        # The capital brain sizes inside every exposure cap instead of sizing into a veto.
        qty, cap_veto = fit(account, token, intent.side, wanted, price, self.exposure, lot)
        held = account.positions.get(token, 0) + account.working.get(token, 0)
        day = trading_day(ts, self.calendar)
        if portfolio.active:
            extra += portfolio.vetoes(account, token, intent.side, qty, price, ts, day)
            for v in extra:
                if v.rule == ORDER_RATE:  # a runaway strategy: REDUCING for the session
                    self.meta_risk.trip(ORDER_RATE, v.value, v.limit, ts)
        meta = self.meta_risk.update(
            token=token,
            exchange_ts_ms=ts,
            confidence=confidence,
            spread_pct=spread_pct,
            feed_stale=feed_stale,
            open_positions=account.open_positions,
            position_value=abs(held + (qty if intent.side is Side.BUY else -qty)) * price,
            trades_today_symbol=self._fired.get((token, day), 0),
            equity=account.equity,
        )
        if cap_veto is not None and wanted > 0:
            extra.append(cap_veto)
        if extra:
            named = {v.rule for v in meta.vetoes}  # a tripped order_rate is there already
            more = tuple(v for v in extra if v.rule not in named)
            meta = msgspec.structs.replace(meta, allowed=False, vetoes=(*meta.vetoes, *more))
        rules = ",".join(v.rule for v in meta.vetoes)
        if meta.halt:
            return GateVerdict(False, qty, f"veto:{rules}", f"meta_risk:{rules}", meta, None)
        if not meta.allowed:
            return GateVerdict(False, qty, f"veto:{rules}", "", meta, None)
        if qty <= 0:
            why = capital.reason if capital is not None else "no closed bar yet"
            return GateVerdict(False, 0, f"capital:{why}", "", meta, None)
        sized = OrderIntent(
            intent.client_order_id, token, intent.exchange_type, intent.side, qty, price,
            intent.bar_start_ms, intent.signal_seq, ts,
        )  # fmt: skip
        self.approvals.expire(ts)
        approval = self.approvals.check(sized, confidence, ts)
        if approval.status not in (NOT_REQUIRED, APPROVED):
            reason = f"approval_{approval.status.lower()}:{approval.approval_id}"
            return GateVerdict(False, qty, reason, "", meta, approval)
        self._fired[(token, day)] = self._fired.get((token, day), 0) + 1
        if portfolio.active:
            portfolio.record_entry(ts, day)
        return GateVerdict(True, qty, "", "", meta, approval)

    def observe(self, equity: float, exchange_ts_ms: int) -> str:
        """The account's equity (per closed bar, after a closed trade): meta-risk's kill
        switches judge it. Returns the kill switch in force ("" | daily_loss |
        max_drawdown)."""
        if math.isfinite(equity) and equity > 0:
            self.equity = equity
        self.last_ts_ms = max(self.last_ts_ms, exchange_ts_ms)
        self.meta_risk.observe(equity, exchange_ts_ms)
        if self.rollback_session_loss > 0 and self.meta_risk.rollback_due(
            self.rollback_session_loss, exchange_ts_ms
        ):
            self._rollback_pending = True  # at the next bar, in bar order (replayable)
        return self.meta_risk.kill_switch

    @property
    def kill_switch(self) -> str:
        return self.meta_risk.kill_switch

    # ---- closed trades -----------------------------------------------------------------
    def on_trade_closed(
        self, token: str, pnl: float, exchange_ts_ms: int, features: dict[str, float]
    ) -> None:
        """Meta-risk counts it (daily loss, drawdown, Sharpe); the genome of the token's
        family records it and may learn, which takes effect on the next decision."""
        self.meta_risk.on_trade_closed(pnl, exchange_ts_ms)
        family = self.genomes.family_for(token)
        genome = self.genomes.on_trade_closed(family, pnl, features, exchange_ts_ms)
        for t in self._genome_out:
            if self.genomes.family_for(t) == family:
                self._genome_out[t] = genome

    # ---- operator commands -----------------------------------------------------------
    def control(self, command: str, arg: str, by: str = "") -> tuple[bool, dict[str, Any]] | None:
        by = by or "operator"  # a client that did not say who asked
        if command == "reset_halt":
            try:
                was = self.meta_risk.reset_halt(arg)
            except ChimeraError as exc:
                return False, {"error": str(exc)}
            return True, {"reset": arg, "was_halted": was, "then": "chimera resume"}
        if command == Command.ROLLBACK:
            return self._rollback(arg, by)
        if command not in ("approve", "reject"):
            return None
        if arg.startswith(DECIDED_BY_HUMAN):
            return self._decide_proposal(arg, approve=command == "approve", by=by)
        try:
            if command == "approve":
                rec = self.approvals.approve(arg, by=by)
            else:
                rec = self.approvals.reject(arg, by=by)
        except ChimeraError as exc:
            return False, {"error": str(exc)}
        log.warning("approval_decided", approval_id=arg, status=rec.status, by=by)
        return True, {"approval_id": arg, "status": rec.status}

    def _decide_proposal(
        self, proposal_id: str, approve: bool, by: str
    ) -> tuple[bool, dict[str, Any]]:
        """Carry out (or turn down) a proposal a human decided: a genome candidate's
        promotion or a parameter change becomes the version in force, taken by each
        symbol of its family at its next bar. The genome is written before the proposal
        is marked, so a crash between them leaves a proposal that can be decided again."""
        ts = self.last_ts_ms
        try:
            prop = self.approvals.proposal(proposal_id)
            family = str(prop.payload.get("family", ""))
            done: dict[str, Any] = {"proposal_id": proposal_id, "kind": prop.kind}
            if prop.kind == "genome_promote":
                version = int(prop.payload["version"])
                cand = self.genomes.version(family, version)
                ts = max(ts, cand.created_exchange_ts_ms)
                if approve and cand.status == gen.CANDIDATE:
                    new = self.genomes.promote(family, version, by, ts)
                    done |= {"family": family, "version": new.version, "params": new.params}
                elif not approve and cand.status == gen.CANDIDATE:
                    self.genomes.reject(family, version)
                elif cand.status != (gen.PROMOTED if approve else gen.REJECTED):
                    # decided before (a crash between the two writes) or gone: say which
                    return False, {"error": f"{family!r} v{version} is {cand.status}"}
            elif prop.kind in ("genome_change", "promotion") and approve:
                # An assistant's change or a shadow candidate's genes (genes left out stay).
                params = {k: float(v) for k, v in dict(prop.payload["params"]).items()}
                why = f"{prop.kind}:{prop.payload.get('candidate') or proposal_id}"
                new = self.activate_genome(family, params, why)
                done |= {"family": family, "version": new.version, "params": new.params}
            status = APPROVED if approve else REJECTED
            self.approvals.decide_proposal(proposal_id, status, by, ts)
        except (ChimeraError, KeyError, TypeError, ValueError) as exc:
            return False, {"error": f"proposal {proposal_id}: {exc}"}
        self.reload_genomes()
        log.warning("proposal_decided", status=status, by=by, **done)
        return True, {**done, "status": status}

    def _rollback(self, arg: str, by: str) -> tuple[bool, dict[str, Any]]:
        """An operator's rollback: ``FAMILY`` (to the parent of the version in force) or
        ``FAMILY:VERSION``, written as a new version and taken at each symbol's next bar;
        the result (version and params) is what replay and the shadow's ``active`` follow."""
        family, _, to = arg.partition(":")
        family = family or gen.DEFAULT_FAMILY
        try:
            to_version = int(to) if to else None
            v = self.genomes.rollback(
                family, to_version, reason=f"operator_rollback:{by}",
                exchange_ts_ms=self.last_ts_ms or None,
            )  # fmt: skip
        except (ChimeraError, ValueError) as exc:
            return False, {"error": f"rollback {arg!r}: {exc} (arg: FAMILY or FAMILY:VERSION)"}
        self.reload_genomes()
        log.warning("genome.operator_rollback", family=family, version=v.version,
                    restored_from=v.restored_from, by=by)  # fmt: skip
        return True, {"family": family, "version": v.version, "restored_from": v.restored_from,
                      "params": v.params}  # fmt: skip

    def activate_genome(
        self, family: str, params: dict[str, float], reason: str, version: int | None = None
    ) -> GenomeVersion:
        """Put ``params`` in force for ``family`` as a new version (genes left out keep
        their values; numbered ``version`` when given: replay and a shadow's ``active``
        follow a recorded promotion with the number the engine gave it), stamped with the
        latest bar close; the engine takes it at each symbol's next bar."""
        full = {**self.genomes.current(family).params, **params}
        made = self.genomes.new_version(family, full, reason, self.last_ts_ms, version=version)
        self.reload_genomes()
        return made

    def pending_approvals(self) -> list[dict[str, Any]]:
        intents: list[dict[str, Any]] = [
            {
                "approval_id": r.approval_id,
                "client_order_id": r.intent.client_order_id,
                "reason": r.reason,
            }
            for r in self.approvals.pending()
        ]
        return intents + [
            {"approval_id": p.proposal_id, "kind": p.kind, "payload": p.payload,
             "reason": p.reason, "proposed_by": p.proposed_by}
            for p in self.approvals.pending_proposals()
        ]  # fmt: skip

    @property
    def halted(self) -> bool:
        return self.meta_risk.halted

    def snapshot(self) -> dict[str, bytes]:
        return {
            name: image_of(self.state_dir / name)
            for name in STATE_FILES
            if (self.state_dir / name).is_file()
        }

    def close(self) -> None:
        self.meta_risk.close()
        self.approvals.close()
        self.genomes.close()
