"""The event catalog: every mutation of the store is one of these events.

Each event is exactly one log record. The record key names the *entity* the event is
about (a session row, one inbox entry, one outbox message, one correlation), scoped by
the session id, so log compaction keeps the latest record of each entity. A state event
carries the entity's **whole new state** (absolute values), so the latest record alone
rebuilds the entity; a tombstone event has a null value and travels as its headers.
"""

from __future__ import annotations

import base64
from dataclasses import MISSING, dataclass, fields
from operator import attrgetter
from typing import ClassVar, NamedTuple

import orjson

# Entity kinds, the first element of every record key.
SESSION = "s"
INBOX = "i"
OUTBOX = "o"
CORRELATION = "c"


class Record(NamedTuple):
    """One log record as the log stores it (headers are (name, bytes) pairs)."""

    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class Meta(NamedTuple):
    """What the log knows about an event besides its content."""

    partition: int
    offset: int
    timestamp: int
    node: str


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events: every event belongs to one session."""

    session_id: str

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    ENTITY: ClassVar[str]
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("session_id",)
    TOMBSTONE: ClassVar[bool] = False
    BINARY_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def ids(self) -> tuple:
        """The values of `KEY_FIELDS`: which entity of its kind the event is about."""
        return _IDS[type(self)](self)

    def key(self, ids: tuple | None = None) -> bytes:
        """The record key: the entity kind and its ids (pass `ids` when you have them)."""
        return orjson.dumps([self.ENTITY, *(self.ids() if ids is None else ids)])


def _b64(obj: object) -> str:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    raise TypeError(f"cannot encode {type(obj).__name__}")


# --- sessions -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SessionState(Event):
    user_id: str
    node_name: str | None
    connection_id: str | None
    client_lib_and_versions: str
    app_name: str
    app_version: str
    created_timestamp: int
    liveliness_timestamp: int

    ENTITY = SESSION


@dataclass(frozen=True, slots=True)
class SessionRegistered(SessionState):
    TYPE = "SessionRegistered"


@dataclass(frozen=True, slots=True)
class SessionDeregistered(SessionState):
    TYPE = "SessionDeregistered"


@dataclass(frozen=True, slots=True)
class LivelinessNotified(SessionState):
    TYPE = "LivelinessNotified"


@dataclass(frozen=True, slots=True)
class SessionClosed(Event):
    TYPE = "SessionClosed"
    ENTITY = SESSION
    TOMBSTONE = True


@dataclass(frozen=True, slots=True)
class SessionTimedOut(Event):
    TYPE = "SessionTimedOut"
    ENTITY = SESSION
    TOMBSTONE = True


# --- inbox ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InboxState(Event):
    client_message_id: str
    stored_timestamp: int
    full_envelope: str | None
    message_binary: bytes | None

    ENTITY = INBOX
    KEY_FIELDS = ("session_id", "client_message_id")
    BINARY_FIELDS = frozenset({"message_binary"})


@dataclass(frozen=True, slots=True)
class InboxStored(InboxState):
    TYPE = "InboxStored"


@dataclass(frozen=True, slots=True)
class InboxUpdated(InboxState):
    TYPE = "InboxUpdated"


@dataclass(frozen=True, slots=True)
class InboxDeleted(Event):
    """An inbox entry removed: by the caller, or with its closed/timed-out/vanished session."""

    client_message_id: str

    TYPE = "InboxDeleted"
    ENTITY = INBOX
    KEY_FIELDS = ("session_id", "client_message_id")
    TOMBSTONE = True


# --- outbox ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OutboxState(Event):
    """An outbox message. `seq` orders a session's outbox in the order stored; it is
    fixed when the message is stored and is part of the key so a tombstone can find it."""

    seq: int
    server_message_id: str
    trace_id: str | None
    type: str
    client_message_id: str | None
    request_timestamp: int | None
    stored_timestamp: int
    attempt_timestamp: int | None
    delivery_count: int
    dead_lettered: bool
    envelope: str
    message_text: str | None
    message_binary: bytes | None

    ENTITY = OUTBOX
    KEY_FIELDS = ("session_id", "seq", "server_message_id")
    BINARY_FIELDS = frozenset({"message_binary"})


@dataclass(frozen=True, slots=True)
class OutboxStored(OutboxState):
    TYPE = "OutboxStored"


@dataclass(frozen=True, slots=True)
class DeliveryAttempted(OutboxState):
    TYPE = "DeliveryAttempted"


@dataclass(frozen=True, slots=True)
class DeliveryUnmarked(OutboxState):
    TYPE = "DeliveryUnmarked"


@dataclass(frozen=True, slots=True)
class DeadLettered(OutboxState):
    TYPE = "DeadLettered"


@dataclass(frozen=True, slots=True)
class _OutboxGone(Event):
    seq: int
    server_message_id: str

    ENTITY = OUTBOX
    KEY_FIELDS = ("session_id", "seq", "server_message_id")
    TOMBSTONE = True


@dataclass(frozen=True, slots=True)
class Completed(_OutboxGone):
    """Delivered: the message leaves the outbox."""

    TYPE = "Completed"


@dataclass(frozen=True, slots=True)
class OutboxDiscarded(_OutboxGone):
    """Removed with its closed/timed-out/vanished session, undelivered."""

    TYPE = "OutboxDiscarded"


# --- request correlations -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CorrelationStored(Event):
    server_message_id: str
    request_timestamp: int
    reply_terminator_id: str | None
    correlation_string: str | None
    correlation_binary: bytes | None

    TYPE = "CorrelationStored"
    ENTITY = CORRELATION
    KEY_FIELDS = ("session_id", "server_message_id")
    BINARY_FIELDS = frozenset({"correlation_binary"})


@dataclass(frozen=True, slots=True)
class _CorrelationGone(Event):
    server_message_id: str

    ENTITY = CORRELATION
    KEY_FIELDS = ("session_id", "server_message_id")
    TOMBSTONE = True


@dataclass(frozen=True, slots=True)
class CorrelationTaken(_CorrelationGone):
    TYPE = "CorrelationTaken"


@dataclass(frozen=True, slots=True)
class CorrelationDiscarded(_CorrelationGone):
    TYPE = "CorrelationDiscarded"


CATALOG: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        SessionRegistered, SessionDeregistered, LivelinessNotified, SessionClosed, SessionTimedOut,
        InboxStored, InboxUpdated, InboxDeleted,
        OutboxStored, DeliveryAttempted, DeliveryUnmarked, DeadLettered, Completed, OutboxDiscarded,
        CorrelationStored, CorrelationTaken, CorrelationDiscarded,
    )
}


def _session_ids(event: Event) -> tuple[str]:
    return (event.session_id,)


def _ids_getter(fields: tuple[str, ...]):
    return attrgetter(*fields) if len(fields) > 1 else _session_ids


def dataclasses_under(base: type) -> list[type]:
    """Every dataclass below `base`, abstract ones too (dataclass(slots=True) replaces each
    class it makes; the replaced ones, without __slots__, are left out)."""
    return [c for sub in base.__subclasses__() if "__slots__" in sub.__dict__ for c in (sub, *dataclasses_under(sub))]


def fast_inits(base: type) -> None:
    """`fast_init` for every dataclass below `base`."""
    for cls in dataclasses_under(base):
        fast_init(cls)


def fast_init(cls: type) -> None:
    """Give a frozen, slotted dataclass without defaults an `__init__` that stores each field
    through its slot descriptor. The generated frozen `__init__` calls `object.__setattr__`
    per field, about twice the cost, and events and commands are made on every call."""
    names = [f.name for f in fields(cls)]
    if any(f.default is not MISSING or f.default_factory is not MISSING for f in fields(cls)):
        return
    setters = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names) or "    pass\n"
    exec(f"def __init__(self, {', '.join(names)}):\n{body}", setters)  # noqa: S102 - fixed field names
    init = setters["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init


fast_inits(Event)

# Per event class, built once: the entity id getter, and the headers naming the type.
_IDS = {cls: _ids_getter(cls.KEY_FIELDS) for cls in dataclasses_under(Event)}
_TYPE_HEADERS = {cls: (("type", cls.TYPE.encode()), ("v", str(cls.VERSION).encode())) for cls in CATALOG.values()}

Headers = tuple[tuple[str, bytes], ...]


# --- encoding -------------------------------------------------------------------------

def encode_value(event: Event) -> bytes | None:
    """The entity's whole new state with its identity, so a value decodes on its own."""
    return None if event.TOMBSTONE else orjson.dumps(event, default=_b64)


def to_record(event: Event, node: str, timestamp: int) -> Record:
    """The record for an event: key = entity, value = whole state, headers = type and metadata."""
    return stamped_record(event, stamp(node, timestamp))


def stamp(node: str, timestamp: int) -> Headers:
    """The headers after the type: who wrote the event and when (shared by a decision's events)."""
    return ("node", node.encode()), ("ts", str(timestamp).encode())


def stamped_record(event: Event, stamp: Headers, ids: tuple | None = None) -> Record:
    """`to_record` with the `stamp` headers encoded once for many events (and the event's
    `ids`, when the caller has them already)."""
    return Record(event.key(ids), encode_value(event), _TYPE_HEADERS[type(event)] + stamp)


def header(headers: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode() if v is not None else None
    return None


class UnknownEventError(ValueError):
    """A record whose type or schema version this code does not know."""


def from_record(key: bytes, value: bytes | None, headers) -> Event:
    """Decode one record back into its event (inverse of `to_record`)."""
    type_name = header(headers, "type")
    cls = CATALOG.get(type_name or "")
    if cls is None:
        raise UnknownEventError(f"unknown event type {type_name!r} for key {key!r}")
    version = int(header(headers, "v") or "1")
    if version > cls.VERSION:
        raise UnknownEventError(f"{type_name} schema v{version} is newer than this code (v{cls.VERSION})")
    if value is None:
        return cls(**dict(zip(cls.KEY_FIELDS, orjson.loads(key)[1:])))
    return cls(**decode_state(value, cls.BINARY_FIELDS))


def decode_state(value: bytes, binary_fields: frozenset[str] = frozenset()) -> dict:
    """A state value as a dict, binary fields back to bytes."""
    state = orjson.loads(value)
    for name in binary_fields:
        if state.get(name) is not None:
            state[name] = base64.b64decode(state[name])
    return state


def meta_from_headers(headers, partition: int, offset: int) -> Meta:
    return Meta(partition, offset, int(header(headers, "ts") or 0), header(headers, "node") or "")
