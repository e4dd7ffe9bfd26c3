"""Per-decision divergence of a candidate from the primary (the active genome, live).

Both decide on the same frame. They diverge when what the trader would see differs: the
signal (direction or its reason), the intent (none, side, quantity), the state after the
step, or the state-machine moves. The record says which fields differ and why, naming
the first cause found in hot-path order: the physics the candidate's lookbacks produced,
then the strategy's reading (its threshold), then governance, then the state machine.
"""

from __future__ import annotations

import msgspec

from chimera_core.contracts import Decision


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    """One frame on which a candidate decided otherwise than the primary."""

    candidate: str
    seq: int  # the primary's decision seq
    token: str
    exchange_ts_ms: int
    fields: tuple[str, ...]  # which of signal, intent, state, transitions differ
    reason: str
    primary_signal: int
    candidate_signal: int
    primary_intent: str  # "" or "BUY 10"
    candidate_intent: str


def _intent(d: Decision) -> str:
    return "" if d.intent is None else f"{d.intent.side.value} {d.intent.qty}"


def _moves(d: Decision) -> tuple[tuple[str, str, bool], ...]:
    return tuple((t.event, t.to_state, t.accepted) for t in d.transitions)


def compare(candidate: str, primary: Decision | None, mine: Decision | None) -> Divergence | None:
    """None when the two agree (or neither decided); otherwise what differs and why."""
    if primary is None and mine is None:
        return None
    if primary is None or mine is None:
        d = primary or mine
        assert d is not None
        return Divergence(
            candidate=candidate, seq=d.seq, token=d.token, exchange_ts_ms=d.exchange_ts_ms,
            fields=("decision",),
            reason="the primary dropped this frame" if primary is None
            else "the candidate dropped a frame the primary decided on",
            primary_signal=primary.signal.direction if primary else 0,
            candidate_signal=mine.signal.direction if mine else 0,
            primary_intent=_intent(primary) if primary else "",
            candidate_intent=_intent(mine) if mine else "",
        )  # fmt: skip
    fields = []
    if (primary.signal.direction, primary.signal.reason) != (
        mine.signal.direction,
        mine.signal.reason,
    ):
        fields.append("signal")
    if _intent(primary) != _intent(mine):
        fields.append("intent")
    if primary.state != mine.state:
        fields.append("state")
    if _moves(primary) != _moves(mine):
        fields.append("transitions")
    if not fields:
        return None
    return Divergence(
        candidate=candidate,
        seq=primary.seq,
        token=primary.token,
        exchange_ts_ms=primary.exchange_ts_ms,
        fields=tuple(fields),
        reason=_why(primary, mine),
        primary_signal=primary.signal.direction,
        candidate_signal=mine.signal.direction,
        primary_intent=_intent(primary),
        candidate_intent=_intent(mine),
    )


def _why(p: Decision, c: Decision) -> str:
    pp, cp = p.physics, c.physics
    parts = []
    if (pp.energy, pp.z, pp.structure, pp.band) != (cp.energy, cp.z, cp.structure, cp.band):
        parts.append(
            f"physics: energy {pp.energy:.4g} vs {cp.energy:.4g}, z {pp.z:.3g} vs {cp.z:.3g}, "
            f"{pp.structure.value}/{pp.band.value} vs {cp.structure.value}/{cp.band.value}"
        )
    if p.signal != c.signal:
        parts.append(
            f"signal: primary {p.signal.direction:+d} ({p.signal.reason}) vs candidate "
            f"{c.signal.direction:+d} ({c.signal.reason})"
        )
    pv = tuple(v.rule for v in p.meta_risk.vetoes) if p.meta_risk else ()
    cv = tuple(v.rule for v in c.meta_risk.vetoes) if c.meta_risk else ()
    if pv != cv:
        parts.append(f"meta-risk vetoes {list(pv)} vs {list(cv)}")
    if _intent(p) != _intent(c):
        parts.append(f"intent {_intent(p) or 'none'} vs {_intent(c) or 'none'}")
    if p.state != c.state and not parts:
        parts.append(f"state {p.state} vs {c.state} (position or cooldown differs)")
    if _moves(p) != _moves(c) and not parts:
        parts.append(f"state-machine moves {_moves_text(p)} vs {_moves_text(c)}")
    return "; ".join(parts) or "state-machine moves differ"


def _moves_text(d: Decision) -> str:
    return (
        "["
        + ", ".join(
            f"{t.event} {t.from_state}->{t.to_state}{'' if t.accepted else ' refused'}"
            + (f" ({t.reason})" if t.reason else "")
            for t in d.transitions
        )
        + "]"
    )
