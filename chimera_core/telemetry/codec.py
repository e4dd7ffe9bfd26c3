"""The telemetry message codec: topics, the message header, payload types and decoders.

One telemetry message is one ZeroMQ frame and one black-box record, byte for byte:
``topic NUL seq(8, little-endian) msgpack-payload``. The topic names the payload's type
(``tick.<token>`` and ``raw`` carry a TickRecord, ``exec`` an ExecutionReport, …).

Readers that need only part of a payload decode it into a *view*: a lighter Struct with a
subset of the contract's fields (a ``msgspec.Raw`` field skips a value without copying it).
``decoder_for(topic, View)`` checks the view against the contract once, so a view cannot
drift from what the engine publishes without an error naming the field.
"""

from __future__ import annotations

import struct
import types
import typing
from typing import Any, Generic, TypeVar, overload

import msgspec

from chimera_core.contracts import (
    AlertRecord,
    ControlEvent,
    Decision,
    ExecutionReport,
    FeedEvent,
    GovernanceState,
    Health,
    Reconciliation,
    SessionInfo,
    TickRecord,
)
from chimera_core.errors import ChimeraError, ProtocolError

SEQ = struct.Struct("<Q")
SEP = b"\x00"

TOPIC_RAW = b"raw"
TOPIC_TICK = b"tick."  # a prefix: tick.<token>
TOPIC_FEED = b"feed"
TOPIC_CONTROL = b"control"
TOPIC_HEALTH = b"health"
TOPIC_SESSION = b"session"
TOPIC_EXEC = b"exec"
TOPIC_RECON = b"recon"
TOPIC_STATE = b"state"  # governance's stores at the session's start (replay starts there)
TOPIC_ALERT = b"alert"  # what chimera notify told the trader (never an engine input)

# Payload type per topic kind (``tick.*`` topics are all of kind TOPIC_TICK).
PAYLOAD_TYPES: dict[bytes, type[Any]] = {
    TOPIC_TICK: TickRecord,
    TOPIC_RAW: TickRecord,
    TOPIC_FEED: FeedEvent,
    TOPIC_CONTROL: ControlEvent,
    TOPIC_HEALTH: Health,
    TOPIC_SESSION: SessionInfo,
    TOPIC_EXEC: ExecutionReport,
    TOPIC_RECON: Reconciliation,
    TOPIC_STATE: GovernanceState,
    TOPIC_ALERT: AlertRecord,
}

T = TypeVar("T")


class ViewMismatch(ChimeraError):
    """A view Struct does not fit the contract it is meant to decode (a field the contract
    lacks, another position in an array-like record, array-like on one side only)."""


def topic_kind(topic: bytes) -> bytes:
    """TOPIC_TICK for any ``tick.<token>``, else the topic itself."""
    return TOPIC_TICK if topic.startswith(TOPIC_TICK) else topic


def payload_type(topic: bytes) -> type[Any]:
    try:
        return PAYLOAD_TYPES[topic_kind(topic)]
    except KeyError:
        raise ProtocolError(
            f"unknown telemetry topic {topic!r} (known: tick.<token>, "
            + ", ".join(t.decode() for t in PAYLOAD_TYPES if t != TOPIC_TICK)
            + ")"
        ) from None


def tick_topic(decision: Decision | None) -> bytes:
    return TOPIC_RAW if decision is None else TOPIC_TICK + decision.token.encode()


# ---- the header ----------------------------------------------------------------------


class Message(msgspec.Struct, frozen=True, gc=False):
    """One telemetry message with its header parsed and its payload not yet decoded.

    ``raw`` rebuilds the message exactly (the header is fixed-size after the topic, and a
    topic never holds NUL), so a Message keeps the payload once, not twice.
    """

    topic: bytes
    seq: int
    payload: bytes

    @property
    def raw(self) -> bytes:
        return b"".join((self.topic, SEP, SEQ.pack(self.seq), self.payload))

    @property
    def kind(self) -> bytes:
        return topic_kind(self.topic)

    @property
    def carries_frame(self) -> bool:
        """A tick record (``tick.*`` or ``raw``): a feed frame, with or without a decision."""
        return self.topic == TOPIC_RAW or self.topic.startswith(TOPIC_TICK)

    def decode(self) -> Any:
        """The payload as its topic's contract type (ProtocolError when it is not one)."""
        return decoder_for(self.topic)(self.payload)


def split(message: bytes) -> tuple[bytes, int, bytes]:
    """(topic, publisher seq, payload) of one telemetry message (ProtocolError without a
    header). The only parser of the header."""
    cut = message.find(SEP)
    if cut <= 0 or len(message) < cut + 1 + SEQ.size:
        raise ProtocolError(
            f"telemetry message of {len(message)} bytes has no topic/sequence header"
        )
    (seq,) = SEQ.unpack_from(message, cut + 1)
    return message[:cut], seq, message[cut + 1 + SEQ.size :]


def parse(message: bytes) -> Message:
    """The Message of one raw telemetry message (ProtocolError without a header)."""
    return Message(*split(message))


_encoder = msgspec.msgpack.Encoder()


def encode_message(topic: bytes, seq: int, obj: Any) -> bytes:
    """One telemetry message exactly as the publisher sends it (and the black box stores)."""
    return b"".join((topic, SEP, SEQ.pack(seq), _encoder.encode(obj)))


# ---- payload decoders ------------------------------------------------------------------


class PayloadDecoder(Generic[T]):
    """Decodes one topic kind's payloads as ``type`` (its contract, or a view of it).

    Calling it raises ProtocolError, naming the topic, on a payload that is not one.
    """

    __slots__ = ("_decode", "kind", "type")

    def __init__(self, kind: bytes, type_: type[T]) -> None:
        self.kind = kind
        self.type = type_
        self._decode = msgspec.msgpack.Decoder(type_).decode

    def __call__(self, payload: bytes | memoryview) -> T:
        try:
            return self._decode(payload)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise ProtocolError(
                f"bad {self.kind.decode(errors='replace')} payload ({self.type.__name__}): {exc}"
            ) from exc


_decoders: dict[tuple[bytes, type[Any] | None], PayloadDecoder[Any]] = {}


@overload
def decoder_for(topic: bytes) -> PayloadDecoder[Any]: ...
@overload
def decoder_for(topic: bytes, view: type[T]) -> PayloadDecoder[T]: ...
def decoder_for(topic: bytes, view: type[Any] | None = None) -> PayloadDecoder[Any]:
    """The (cached) decoder of ``topic``'s payloads, as its contract type or as ``view``.

    A view is checked against the contract here, once (ViewMismatch names the field): every
    field must exist in the contract under the same name, in the same position when the
    contract is array-like; nested Struct fields are checked the same way.
    """
    kind = topic_kind(topic)
    dec = _decoders.get((kind, view))
    if dec is None:
        contract = payload_type(topic)
        if view is not None and view is not contract:
            check_view(contract, view)
        dec = _decoders[(kind, view)] = PayloadDecoder(kind, view or contract)
    return dec


def decode_payload(topic: bytes, payload: bytes | memoryview) -> Any:
    """``payload`` as ``topic``'s contract type; ProtocolError on an unknown topic or a bad
    payload."""
    return decoder_for(topic)(payload)


def _struct_of(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct in ``X``, ``X | None`` or ``Optional[X]``; None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(found) == 1:
            return _struct_of(found[0])
    return None


def check_view(contract: type[Any], view: type[Any], where: str = "") -> None:
    """Raise ViewMismatch unless ``view`` decodes ``contract``'s encoding field for field."""
    where = where or contract.__name__
    if not (issubclass(view, msgspec.Struct) and issubclass(contract, msgspec.Struct)):
        raise ViewMismatch(f"{where}: a view must be a msgspec Struct, got {view!r}")
    array_like = contract.__struct_config__.array_like
    if view.__struct_config__.array_like != array_like:
        raise ViewMismatch(
            f"{where}: {view.__name__} must {'' if array_like else 'not '}be array_like, as "
            f"{contract.__name__} is{'' if array_like else ' not'}"
        )
    theirs = msgspec.structs.fields(contract)
    by_name = {f.encode_name: f for f in theirs}
    for i, mine in enumerate(msgspec.structs.fields(view)):
        other = by_name.get(mine.encode_name)
        if other is None:
            raise ViewMismatch(
                f"{where}: {view.__name__}.{mine.name} is not a field of {contract.__name__} "
                f"(fields: {', '.join(by_name)})"
            )
        if array_like and theirs[i].encode_name != mine.encode_name:
            raise ViewMismatch(
                f"{where}: {view.__name__}.{mine.name} is at position {i}, where "
                f"{contract.__name__} has {theirs[i].encode_name!r} (an array-like view "
                "keeps the contract's leading fields in order)"
            )
        inner_view, inner = _struct_of(mine.type), _struct_of(other.type)
        if inner_view is not None and inner is not None and inner_view is not inner:
            check_view(inner, inner_view, f"{where}.{other.encode_name}")
