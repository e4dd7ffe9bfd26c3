"""Everything that closes a position: the bracket (stop loss / take profit from the ATR at
entry) that follows each fill, the stop and target watched on every tick, the intraday
square-off at the market's cut-off, the strategy's own exits, flattens, and positions
restored at start-up without a bracket (one is made from the first warm ATR, or the
position is flattened, as ``execution.restored_without_bracket`` says).

Positions are read from the one ``PositionBook`` the engine applies every fill to; nothing
here books a fill. Orders go out through the router (``send``: journal, throttler,
broker), with deterministic ids, so a replay or restart rebuilds the same ones. A halt
never abandons a position: all of this keeps working in every trading state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import structlog

from chimera_core.config import ExecutionConfig
from chimera_core.contracts import OrderRequest, Position, Purpose, Side, Tick
from chimera_core.markets import MarketCalendar
from chimera_core.position_book import PositionBook
from chimera_execution.smart_execution import Bracket, exit_request

log = structlog.get_logger(__name__)


class Exits:
    """The exits of one router. ``send`` journals and places an order, ``stop_entries``
    stops (and cancels) the entries still being worked for a token before it is exited,
    ``set_risk`` persists a bracket in the journal's risk state; ``watch`` is the router's
    set of tokens whose ticks it looks at (a token being exited is added)."""

    def __init__(
        self,
        ex: ExecutionConfig,
        positions: PositionBook,
        *,
        send: Callable[[OrderRequest], None],
        stop_entries: Callable[[str, Purpose], None],
        set_risk: Callable[[str, dict[str, Any]], None],
        watch: set[str],
        segment: Mapping[str, int],
        exchange_type: int,
        calendars: Mapping[int, MarketCalendar],
        calendar: MarketCalendar,
        tick_sizes: Mapping[str, float],
        symbols: Mapping[str, str],
    ) -> None:
        self.ex = ex
        self.positions = positions
        self._send = send
        self._stop_entries = stop_entries
        self._set_risk = set_risk
        self._watch = watch
        self._segment = segment
        self._exchange_type = exchange_type
        self._calendars = calendars
        self._calendar = calendar
        self._ticks = tick_sizes
        self._symbols = symbols
        self.brackets: dict[str, tuple[str, Bracket]] = {}  # token → (entry intent, levels)
        self.working: dict[str, str] = {}  # token → exit order working
        self._squared_off: set[str] = set()
        self._unbracketed: set[str] = set()  # restored positions still without a bracket

    # ---- fills and order ends --------------------------------------------------------
    def follow_fill(self, token: str, intent_id: str, entry_atr: float) -> None:
        """After a fill was booked: a flat position drops its bracket; an entry's fill
        (``entry_atr`` > 0: the ATR its intent left with) moves the bracket to the
        position's average entry."""
        pos = self.positions.get(token)
        if pos.qty == 0:
            if self.brackets.pop(token, None) is not None:
                self._set_risk(f"bracket:{token}", {})
            return
        if entry_atr > 0:
            side = Side.BUY if pos.qty > 0 else Side.SELL
            try:
                bracket = Bracket.from_entry(
                    side,
                    pos.avg_price,
                    entry_atr,
                    self.ex.stop_atr_multiple,
                    self.ex.take_profit_atr_multiple,
                    tick_size=self._ticks.get(token, 0.05),
                )
            except Exception as exc:  # a bracket without a distance is no bracket
                log.warning("bracket_refused", token=token, error=str(exc))
                return
            self.brackets[token] = (intent_id, bracket)
            self._set_risk(
                f"bracket:{token}",
                {"intent_id": intent_id, "side": side.value, "entry": pos.avg_price,
                 "atr": entry_atr},
            )  # fmt: skip

    def order_ended(self, token: str, coid: str) -> None:
        """An order reached a terminal state: if it was the token's exit, none is working."""
        if self.working.get(token) == coid:
            del self.working[token]

    def busy(self, token: str) -> bool:
        """A position is held or an exit is working: the token's ticks are watched."""
        return self.positions.get(token).qty != 0 or token in self.working

    # ---- ticks -----------------------------------------------------------------------
    def on_tick(self, tick: Tick, atr: float, now: int) -> None:
        """A watched token's tick: a bracket for a restored position, the square-off past
        the cut-off, or the stop / target when the price went through it."""
        token = tick.token
        pos = self.positions.get(token)
        if pos.qty == 0 or token in self.working:
            return
        if token in self._unbracketed:
            self._bracket_restored(token, pos.qty, pos.avg_price, atr, now)
        calendar = self._calendars.get(self._segment.get(token, -1), self._calendar)
        if calendar.past_square_off(now):
            if token not in self._squared_off:
                self._squared_off.add(token)
                log.warning("square_off", token=token, qty=pos.qty)
            self.exit(token, Purpose.SQUARE_OFF, f"SQ-{token}", now)
            return
        held = self.brackets.get(token)
        if held is not None:
            hit = held[1].check(tick.ltp)
            if hit is not None:
                log.info("bracket_hit", token=token, purpose=hit.value, ltp=tick.ltp)
                self.exit(token, hit, held[0], now)

    # ---- exits -----------------------------------------------------------------------
    def exit(self, token: str, purpose: Purpose, intent_id: str, now_ms: int) -> None:
        """Close ``token``'s position at market (once: not while an exit is working)."""
        pos = self.positions.get(token)
        if pos.qty == 0 or token in self.working:
            return
        self._stop_entries(token, purpose)
        request = exit_request(
            Position(token, pos.qty, pos.avg_price),
            purpose,
            intent_id,
            self._segment.get(token, self._exchange_type),
            now_ms,
            now_ms,  # the exchange time makes the id unique and the same on replay
        )
        request = msgspec.structs.replace(
            request,
            product=self.ex.product,
            symbol=self._symbols.get(token, ""),
        )
        self.working[token] = request.client_order_id
        self._watch.add(token)
        self._send(request)

    def strategy_exit(self, token: str, reason: str, now_ms: int) -> None:
        """The strategy's own exit rule asked to leave (named after the bracket's entry)."""
        held = self.brackets.get(token)
        intent_id = held[0] if held is not None else f"EX-{token}"
        log.info("strategy_exit", token=token, reason=reason)
        self.exit(token, Purpose.EXIT, intent_id, now_ms)

    def flatten(self, reason: str, only: str | None, now_of: Callable[[str], int]) -> int:
        """Close positions at market (every one, or only token ``only``); ``now_of`` gives
        a token's last exchange time, which names the order."""
        flattened = 0
        for pos in self.positions.positions():
            if pos.qty and (only is None or pos.token == only):
                self.working.pop(pos.token, None)  # the flatten supersedes a working exit
                self.exit(pos.token, Purpose.FLATTEN, f"FL-{pos.token}", now_of(pos.token))
                flattened += 1
        log.warning("flatten", reason=reason, positions=flattened)
        return flattened

    def bracket_levels(self, token: str) -> tuple[float, ...]:
        """The stop and target held for ``token``'s position (none while it is flat or an
        exit is working)."""
        held = self.brackets.get(token)
        if held is None or token in self.working or self.positions.get(token).qty == 0:
            return ()
        return (held[1].stop, held[1].target)

    # ---- restored positions ----------------------------------------------------------
    def restore(
        self, positions: list[Position], saved_of: Callable[[str], dict[str, Any] | None]
    ) -> None:
        """Start from the reconciled positions: the book is seeded with them and each open
        one gets back the bracket the journal kept for it (``saved_of(token)``), or is
        watched until one can be made."""
        self.positions.seed(positions)
        for p in positions:
            if p.qty:
                self._watch.add(p.token)
                self._restore_bracket(p, saved_of(f"bracket:{p.token}") or {})

    def _restore_bracket(self, position: Position, saved: dict[str, Any]) -> None:
        if not saved or saved.get("atr", 0) <= 0:
            # Never left bare: a bracket from the ATR at its first warm tick, or closed.
            log.warning(
                "position_without_bracket",
                token=position.token,
                qty=position.qty,
                action=self.ex.restored_without_bracket,
            )
            self._unbracketed.add(position.token)
            self._watch.add(position.token)
            return
        side = Side.BUY if position.qty > 0 else Side.SELL
        bracket = Bracket.from_entry(
            side,
            position.avg_price,
            float(saved["atr"]),
            self.ex.stop_atr_multiple,
            self.ex.take_profit_atr_multiple,
            tick_size=self._ticks.get(position.token, 0.05),
        )
        self.brackets[position.token] = (str(saved.get("intent_id", "")), bracket)

    def _bracket_restored(self, token: str, qty: int, avg: float, atr: float, now: int) -> None:
        if self.ex.restored_without_bracket == "flatten":
            self._unbracketed.discard(token)
            self.exit(token, Purpose.FLATTEN, f"FL-{token}", now)
            return
        if not (math.isfinite(atr) and atr > 0):
            return  # not warm yet: the square-off still closes it at the cut-off
        side = Side.BUY if qty > 0 else Side.SELL
        try:
            bracket = Bracket.from_entry(
                side, avg, atr, self.ex.stop_atr_multiple, self.ex.take_profit_atr_multiple,
                tick_size=self._ticks.get(token, 0.05),
            )  # fmt: skip
        except Exception as exc:  # a bracket without a distance is no bracket
            log.warning("bracket_refused", token=token, error=str(exc))
            return
        self._unbracketed.discard(token)
        intent_id = f"RB-{token}"
        self.brackets[token] = (intent_id, bracket)
        self._set_risk(
            f"bracket:{token}",
            {"intent_id": intent_id, "side": side.value, "entry": avg, "atr": atr},
        )
        log.warning("bracket_restored_from_atr", token=token, atr=atr, entry=avg)
