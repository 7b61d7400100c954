"""The event catalog: every mutation of the store is one of these events.

Each event is exactly one log record. The record key names the *entity* the event is
about (a session row, one inbox entry, one outbox message, one correlation), scoped by
the session id, so log compaction keeps the latest record of each entity. A state event
carries the entity's **whole new state** (absolute values), so the latest record alone
rebuilds the entity; a tombstone event has a null value and travels as its headers.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields
from operator import attrgetter, itemgetter, methodcaller
from typing import Any, ClassVar, NamedTuple, TypeVar

import orjson

# Entity kinds, the first element of every record key.
SESSION = "s"
INBOX = "i"
OUTBOX = "o"
CORRELATION = "c"
RELAY = "r"  # a write of a unit of work for another session, waiting to be delivered
RELAY_MARK = "d"  # a relay received by its target session: a second delivery is a no-op


class Record(NamedTuple):
    """One log record as the log stores it (headers are (name, bytes) pairs)."""

    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


E = TypeVar("E", bound="Event")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events: every event belongs to one session."""

    session_id: str

    TYPE: ClassVar[str]
    # The schema version, in every record's `v` header. Raise it when the value's layout
    # changes; the value of a version N > 1 then starts with `{"v":N,` (see `known_values`).
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

    def successor(self, cls: type[E], **changes: Any) -> E:
        """The `cls` event of the same entity: this state with `changes` (the whole new state
        a state event carries, made from the state read back)."""
        return cls(**{**{name: getattr(self, name) for name in _FIELDS[type(self)]}, **changes})


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


# --- relays (units of work that write for other sessions) -------------------------------

@dataclass(frozen=True, slots=True)
class RelayStored(Event):
    """A write for `target_session_id` made in a unit of work of `session_id`: committed with
    the unit in the unit's own partition, then delivered to the target's owner (the
    transactional outbox). `command` is the routed command's encoding (`csaf_events.core.codec`)."""

    relay_id: str
    target_session_id: str
    command: str
    stored_timestamp: int

    TYPE = "RelayStored"
    ENTITY = RELAY
    KEY_FIELDS = ("session_id", "relay_id")


@dataclass(frozen=True, slots=True)
class RelayDone(Event):
    """The relay reached its target (or was found there already): it leaves the source."""

    relay_id: str

    TYPE = "RelayDone"
    ENTITY = RELAY
    KEY_FIELDS = ("session_id", "relay_id")
    TOMBSTONE = True


@dataclass(frozen=True, slots=True)
class RelayReceived(Event):
    """The target session's mark that relay `relay_id` was applied, so that a delivery made
    again (the source's node died before its `RelayDone`) changes nothing."""

    relay_id: str
    received_timestamp: int

    TYPE = "RelayReceived"
    ENTITY = RELAY_MARK
    KEY_FIELDS = ("session_id", "relay_id")


@dataclass(frozen=True, slots=True)
class RelayMarkDropped(Event):
    """A relay mark removed: with its session, or by the scavenger once no delivery of it can
    still be under way."""

    relay_id: str

    TYPE = "RelayMarkDropped"
    ENTITY = RELAY_MARK
    KEY_FIELDS = ("session_id", "relay_id")
    TOMBSTONE = True


CATALOG: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        SessionRegistered, SessionDeregistered, LivelinessNotified, SessionClosed, SessionTimedOut,
        InboxStored, InboxUpdated, InboxDeleted,
        OutboxStored, DeliveryAttempted, DeliveryUnmarked, DeadLettered, Completed, OutboxDiscarded,
        CorrelationStored, CorrelationTaken, CorrelationDiscarded,
        RelayStored, RelayDone, RelayReceived, RelayMarkDropped,
    )
}


def _session_ids(event: Event) -> tuple[str]:
    return (event.session_id,)


def _ids_getter(fields: tuple[str, ...]) -> Callable[[Event], tuple[Any, ...]]:
    return attrgetter(*fields) if len(fields) > 1 else _session_ids


def dataclasses_under(base: type[T]) -> list[type[T]]:
    """Every dataclass below `base`, abstract ones too (dataclass(slots=True) replaces each
    class it makes; the replaced ones, without __slots__, are left out)."""
    return [c for sub in base.__subclasses__() if "__slots__" in sub.__dict__ for c in (sub, *dataclasses_under(sub))]


def fast_inits(base: type[object]) -> None:
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
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses an assignment to a class's __init__


fast_inits(Event)

# Per event class, built once: the entity id getter, and the headers naming the type.
_IDS = {cls: _ids_getter(cls.KEY_FIELDS) for cls in dataclasses_under(Event)}
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in dataclasses_under(Event)}
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


def key_prefix(entity: str) -> bytes:
    """What every record key of `entity` starts with (a key is ``[entity, *ids]`` as JSON,
    `Event.key`): ``["s",`` for a session row."""
    return orjson.dumps([entity])[:-1] + b","


def header(headers: Headers | list[tuple[str, bytes]] | None, name: str) -> str | None:
    """The value of header `name` as text, None when the record has none."""
    for k, v in headers or ():
        if k == name:
            return v.decode() if v is not None else None
    return None


# --- reading records back -------------------------------------------------------------

class UnknownEventError(ValueError):
    """A record whose type or schema version this code does not know. Folding it would build
    a state this code may misread, so whatever folds the log stops at it."""


def event_class(headers: Headers | list[tuple[str, bytes]] | None) -> type[Event]:
    """The event class a record's `type` and `v` headers name; `UnknownEventError` for an
    unknown type, a missing or unreadable version, or a version newer than this code's."""
    type_name = header(headers, "type")
    cls = CATALOG.get(type_name or "")
    if cls is None:
        raise UnknownEventError(f"its event type {type_name!r} is unknown to this code")
    version = header(headers, "v")
    if version is None or not version.isdigit():
        raise UnknownEventError(f"its {type_name} record has no schema version (header v: {version!r})")
    if int(version) > cls.VERSION:
        raise UnknownEventError(f"its {type_name} schema v{version} is newer than this code's (v{cls.VERSION})")
    return cls


# The first two headers of every record this code can read, as `stamped_record` writes them.
_KNOWN_HEADS = frozenset((("type", cls.TYPE.encode()), ("v", str(v).encode()))
                         for cls in CATALOG.values() for v in range(1, cls.VERSION + 1))
_HEAD = itemgetter(slice(0, 2))


def known_types(headers: Iterable[Headers | list[tuple[str, bytes]]]) -> bool:
    """Whether every record's headers name a type and version this code reads: one set
    lookup a record, cheap enough for a restore. False: look closer with `event_class`
    (it names what is wrong; headers in another order pass there)."""
    return _KNOWN_HEADS.issuperset(map(tuple, map(_HEAD, headers)))


# How the state values this code reads start: version 1 as orjson writes an event (its
# fields in order, `session_id` first), a later version with its number first.
_VALUE_STARTS = (b'{"session_id":',
                 *(b'{"v":%d,' % v for v in range(2, max(c.VERSION for c in CATALOG.values()) + 1)))
_KNOWN_START = methodcaller("startswith", _VALUE_STARTS)


def known_value(value: bytes | None) -> bool:
    """Whether a record's value is a tombstone or a state in a layout this code reads."""
    return value is None or value.startswith(_VALUE_STARTS)


def known_values(values: Iterable[bytes | None]) -> bool:
    """`known_value` for many records, at a few bytes compared a record: the check of a
    restore that reads no headers (Kafka's). It sees a newer schema version by its value,
    not a new event type: a new type of a known entity still carries that entity's whole
    state, which folds the same."""
    return all(map(_KNOWN_START, filter(None, values)))


def decode(cls: type[E], value: bytes) -> E:
    """An entity's state read back: the `cls` (a state class) its encoded value holds."""
    return cls(**decode_state(value, cls.BINARY_FIELDS))


def decode_state(value: bytes, binary_fields: frozenset[str] = frozenset()) -> dict:
    """A state value as a dict, binary fields back to bytes."""
    state: dict = orjson.loads(value)
    for name in binary_fields:
        if state.get(name) is not None:
            state[name] = base64.b64decode(state[name])
    return state
