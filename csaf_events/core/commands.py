"""Commands: each API call that touches one partition, and how its owner decides it.

A command is a frozen dataclass (so a non-owner can send it to the owner as data). Its
handler reads the partition's projection through a `Decision`, checks the rules (user,
id uniqueness, session existence) and only then emits events; a handler that raises has
emitted nothing. The same handlers run on every backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from csaf_events.core import events as ev
from csaf_events.core.dtos import CurrentNode, MessageType, RequestCorrelation, StoredInMessage, StoredOutMessage
from csaf_events.core.errors import ConflictError, MessageIdAlreadyExistsError, UnitOfWorkError, WrongUserError
from projections import queries
from projections.fold import fold_key
from projections.rocks import ProjectionBatch

log = logging.getLogger(__name__)

#: How long a relay mark outlives its delivery. Deliveries of a relay are made while it is
#: pending, each within its caller's deadline (seconds), so one a day later is none.
RELAY_MARK_RETENTION_MS = 24 * 3600 * 1000


class Decision:
    """The state one group commit decides against, and the events it emits."""

    __slots__ = ("_stamp", "node_name", "now", "partition", "records", "view")

    def __init__(self, partition: int, batch: ProjectionBatch, node_name: str, now: int) -> None:
        self.partition = partition
        self.view = batch
        self.node_name = node_name
        self.now = now
        self.records: list[ev.Record] = []
        self._stamp: ev.Headers | None = None  # built at the first emit: most decisions of reads emit nothing

    def emit(self, event: ev.Event) -> None:
        """Record the event and fold it at once, so later commands of the batch see it."""
        if self._stamp is None:
            self._stamp = ev.stamp(self.node_name, self.now)
        ids = event.ids()
        record = ev.stamped_record(event, self._stamp, ids)
        self.records.append(record)
        fold_key(event.ENTITY, ids, record.value, self.partition, self.view)

    def nested(self, now: int | None = None) -> Decision:
        """A decision on a batch of its own over this one's view: its events join this
        decision only when `absorb`ed, so a failed part leaves nothing behind."""
        return Decision(self.partition, ProjectionBatch(self.view), self.node_name, self.now if now is None else now)

    def absorb(self, part: Decision) -> None:
        """Take a `nested` decision's events (and its changes to the view) as this one's."""
        self.records.extend(part.records)
        self.view.absorb(part.view)


@dataclass(frozen=True, slots=True)
class Command:
    """Base: every command names the partition it must be decided on by its session."""

    session_id: str
    READ_ONLY = False


# ---------------------------------------------------------------- session commands ----

@dataclass(frozen=True, slots=True)
class Register(Command):
    user_id: str
    node_name: str
    connection_id: str
    client_lib_and_versions: str
    app_name: str
    app_version: str


@dataclass(frozen=True, slots=True)
class Deregister(Command):
    node_name: str
    connection_id: str


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class StoreInbox(Command):
    client_message_id: str


@dataclass(frozen=True, slots=True)
class UpdateInbox(Command):
    client_message_id: str
    message_json: str | None
    message_binary: bytes | None


@dataclass(frozen=True, slots=True)
class DeleteInbox(Command):
    client_message_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoreOutbox(Command):
    server_message_id: str
    client_message_id: str | None
    trace_id: str | None
    type: str
    request_timestamp: int | None
    envelope: str
    message_text: str | None
    message_binary: bytes | None


@dataclass(frozen=True, slots=True)
class Attempted(Command):
    server_message_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unmark(Command):
    pass


@dataclass(frozen=True, slots=True)
class Complete(Command):
    server_message_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeadLetter(Command):
    server_message_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoreCorrelation(Command):
    server_message_id: str
    request_timestamp: int
    reply_terminator_id: str | None
    correlation_string: str | None
    correlation_binary: bytes | None


@dataclass(frozen=True, slots=True)
class TakeCorrelation(Command):
    server_message_id: str


# ------------------------------------------------------------ partition commands ----
# These name a partition, not a session: `session_id` is unused ("").

@dataclass(frozen=True, slots=True)
class NotifyLiveliness(Command):
    partition: int
    session_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TimeoutSessions(Command):
    partition: int
    not_live_since: int


@dataclass(frozen=True, slots=True)
class Scavenge(Command):
    partition: int


# ------------------------------------------------------------------ units of work ----

@dataclass(frozen=True, slots=True)
class Unit(Command):
    """A unit of work of one session: its `steps` decided together, in order, at `now` (the
    unit's start), and committed in one append with its `relays`, or nothing at all.

    `expected` holds what each step returned when the unit made it (`fingerprint`); a step
    that returns something else now fails the unit with `ConflictError`: the unit's caller
    acted on an answer that no longer holds. `relays` are (relay id, target session id,
    encoded command): writes for other sessions, delivered after the commit."""

    now: int
    steps: tuple[Command, ...]
    expected: tuple[str, ...]
    relays: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class UnitPreview(Command):
    """What the last of `steps` returns after the ones before it (which must still return
    what they did, `expected`), decided on the current state and written nowhere: each call
    of a unit of work, answered at once. Returns [result, fingerprint]."""

    now: int
    steps: tuple[Command, ...]
    expected: tuple[str, ...]
    READ_ONLY = True


@dataclass(frozen=True, slots=True)
class RelayDeliver(Command):
    """Apply a relay to its target session once: the relay's mark in the target's partition
    makes a second delivery a no-op. Returns whether it was applied now."""

    relay_id: str
    now: int  # its unit's time, which its writes carry
    command: Command


@dataclass(frozen=True, slots=True)
class RelayDone(Command):
    """The relay reached its target: it leaves its source session's partition."""

    relay_id: str


@dataclass(frozen=True, slots=True)
class PendingRelays(Command):
    """The relays of a partition not delivered yet: (source session, relay id, target session,
    encoded command, stored timestamp)."""

    partition: int
    READ_ONLY = True


# ----------------------------------------------------------------------- queries ----

@dataclass(frozen=True, slots=True)
class GetCurrentNode(Command):
    READ_ONLY = True


@dataclass(frozen=True, slots=True)
class SessionExists(Command):
    READ_ONLY = True


@dataclass(frozen=True, slots=True)
class GetInbox(Command):
    client_message_id: str
    READ_ONLY = True


@dataclass(frozen=True, slots=True)
class GetOutbox(Command):
    max_number_of_messages: int
    READ_ONLY = True


ev.fast_inits(Command)


# ---------------------------------------------------------------------- handlers ----

Handler = Callable[[Any, Decision], Any]
HANDLERS: dict[type[Command], Handler] = {}


def handles(cls: type[Command]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[cls] = fn
        return fn
    return register


def decide(cmd: Command, d: Decision) -> Any:
    """Decide one command: returns its result or raises a `CsafError` having emitted nothing."""
    return HANDLERS[type(cmd)](cmd, d)


def _drop_session(d: Decision, sid: str, gone: type[ev.Event] | None) -> None:
    """Tombstone the session row and every entity stored for it (compaction-safe delete)."""
    inbox, outbox, corrs, marks = queries.children(d.view, d.partition, sid)
    for i in inbox:
        d.emit(ev.InboxDeleted(sid, i.client_message_id))
    for m in outbox:
        d.emit(ev.OutboxDiscarded(sid, m.seq, m.server_message_id))
    for c in corrs:
        d.emit(ev.CorrelationDiscarded(sid, c.server_message_id))
    for mark in marks:
        d.emit(ev.RelayMarkDropped(sid, mark.relay_id))
    if gone is not None:
        d.emit(gone(sid))


@handles(Register)
def _register(c: Register, d: Decision) -> int:
    s = queries.session(d.view, d.partition, c.session_id)
    if s is not None and s.user_id != c.user_id:
        raise WrongUserError(
            f"session {c.session_id!r} belongs to another user than {c.user_id!r}; not re-registered")
    created = d.now if s is None else s.created_timestamp
    d.emit(ev.SessionRegistered(
        c.session_id, c.user_id, c.node_name, c.connection_id, c.client_lib_and_versions,
        c.app_name, c.app_version, created, d.now))
    return created


@handles(Deregister)
def _deregister(c: Deregister, d: Decision) -> None:
    s = queries.session(d.view, d.partition, c.session_id)
    if s is not None and s.node_name == c.node_name and s.connection_id == c.connection_id:
        d.emit(s.successor(ev.SessionDeregistered, node_name=None, connection_id=None))


@handles(Close)
def _close(c: Close, d: Decision) -> None:
    exists = queries.session(d.view, d.partition, c.session_id) is not None
    _drop_session(d, c.session_id, ev.SessionClosed if exists else None)


@handles(StoreInbox)
def _store_inbox(c: StoreInbox, d: Decision) -> None:
    if queries.inbox(d.view, d.partition, c.session_id, c.client_message_id) is not None:
        raise MessageIdAlreadyExistsError(
            f"client message id {c.client_message_id!r} is already in the inbox of session {c.session_id!r}")
    d.emit(ev.InboxStored(c.session_id, c.client_message_id, d.now, None, None))


@handles(UpdateInbox)
def _update_inbox(c: UpdateInbox, d: Decision) -> None:
    i = queries.inbox(d.view, d.partition, c.session_id, c.client_message_id)
    if i is not None:
        d.emit(ev.InboxUpdated(c.session_id, c.client_message_id, i.stored_timestamp,
                               c.message_json, c.message_binary))


@handles(DeleteInbox)
def _delete_inbox(c: DeleteInbox, d: Decision) -> None:
    for cmid in dict.fromkeys(c.client_message_ids):
        if queries.inbox(d.view, d.partition, c.session_id, cmid) is not None:
            d.emit(ev.InboxDeleted(c.session_id, cmid))


@handles(StoreOutbox)
def _store_outbox(c: StoreOutbox, d: Decision) -> CurrentNode | None:
    s = queries.session(d.view, d.partition, c.session_id)
    if s is None:
        return None
    if queries.outbox_seq(d.view, d.partition, c.session_id, c.server_message_id) is not None:
        raise MessageIdAlreadyExistsError(
            f"server message id {c.server_message_id!r} is already in the outbox of session {c.session_id!r}")
    seq = queries.next_outbox_seq(d.view, d.partition, c.session_id)
    d.emit(ev.OutboxStored(**{f: getattr(c, f) for f in _STORED_FIELDS}, type=str(c.type), seq=seq,
                           stored_timestamp=d.now, attempt_timestamp=None, delivery_count=0, dead_lettered=False))
    return _current_node(s)


def _current_node(s: ev.SessionState | None) -> CurrentNode | None:
    if s is None or s.node_name is None or s.connection_id is None:  # both set or both cleared
        return None
    return CurrentNode(s.node_name, s.connection_id)


def _each_outbox(c: Command, d: Decision, ids: tuple[str, ...]) -> Iterator[ev.OutboxState]:
    for smid in dict.fromkeys(ids):
        m = queries.outbox_message(d.view, d.partition, c.session_id, smid)
        if m is not None:
            yield m


@handles(Attempted)
def _attempted(c: Attempted, d: Decision) -> None:
    for m in _each_outbox(c, d, c.server_message_ids):
        d.emit(m.successor(ev.DeliveryAttempted, attempt_timestamp=d.now, delivery_count=m.delivery_count + 1))


@handles(Unmark)
def _unmark(c: Unmark, d: Decision) -> None:
    for m in queries.outbox_messages(d.view, d.partition, c.session_id):
        if m.attempt_timestamp is not None and not m.dead_lettered:
            d.emit(m.successor(ev.DeliveryUnmarked, attempt_timestamp=None))


@handles(Complete)
def _complete(c: Complete, d: Decision) -> None:
    for smid in dict.fromkeys(c.server_message_ids):  # the index alone: the tombstone needs no state
        seq = queries.outbox_seq(d.view, d.partition, c.session_id, smid)
        if seq is not None:
            d.emit(ev.Completed(c.session_id, seq, smid))


@handles(DeadLetter)
def _dead_letter(c: DeadLetter, d: Decision) -> None:
    for m in _each_outbox(c, d, c.server_message_ids):
        if not m.dead_lettered:
            d.emit(m.successor(ev.DeadLettered, dead_lettered=True))


@handles(StoreCorrelation)
def _store_correlation(c: StoreCorrelation, d: Decision) -> None:
    if queries.correlation(d.view, d.partition, c.session_id, c.server_message_id) is not None:
        raise MessageIdAlreadyExistsError(
            f"a request correlation for server message id {c.server_message_id!r} is already stored "
            f"for session {c.session_id!r}")
    d.emit(ev.CorrelationStored(c.session_id, c.server_message_id, c.request_timestamp,
                                c.reply_terminator_id, c.correlation_string, c.correlation_binary))


@handles(TakeCorrelation)
def _take_correlation(c: TakeCorrelation, d: Decision) -> RequestCorrelation | None:
    r = queries.correlation(d.view, d.partition, c.session_id, c.server_message_id)
    if r is None:
        return None
    d.emit(ev.CorrelationTaken(c.session_id, c.server_message_id))
    return RequestCorrelation(r.session_id, r.server_message_id, r.request_timestamp, r.reply_terminator_id,
                              r.correlation_string, r.correlation_binary)


@handles(NotifyLiveliness)
def _notify(c: NotifyLiveliness, d: Decision) -> None:
    for sid in dict.fromkeys(c.session_ids):
        s = queries.session(d.view, d.partition, sid)
        if s is not None:
            d.emit(s.successor(ev.LivelinessNotified, liveliness_timestamp=d.now))


@handles(TimeoutSessions)
def _timeout(c: TimeoutSessions, d: Decision) -> list[str]:
    timed_out = [s.session_id for s in queries.sessions(d.view, d.partition)
                 if s.liveliness_timestamp < c.not_live_since]
    for sid in timed_out:
        _drop_session(d, sid, ev.SessionTimedOut)
    return timed_out


@handles(Scavenge)
def _scavenge(c: Scavenge, d: Decision) -> int:
    before = len(d.records)
    for sid in sorted(queries.orphan_session_ids(d.view, d.partition)):
        _drop_session(d, sid, None)
    for mark in queries.relay_marks(d.view, d.partition):
        if mark.received_timestamp < d.now - RELAY_MARK_RETENTION_MS:
            d.emit(ev.RelayMarkDropped(mark.session_id, mark.relay_id))
    return len(d.records) - before


#: What a unit of work may do for its own session.
UNIT_STEPS = frozenset({Register, Deregister, Close, StoreInbox, UpdateInbox, DeleteInbox, StoreOutbox, Attempted,
                        Unmark, Complete, DeadLetter, StoreCorrelation, TakeCorrelation, GetCurrentNode,
                        SessionExists, GetInbox, GetOutbox})
#: Writes whose handler returns None whatever the state and never fails on it: a unit
#: records them without asking the owner (their result cannot change by the commit).
BLIND_WRITES = frozenset({Deregister, Close, UpdateInbox, DeleteInbox, Attempted, Unmark, Complete, DeadLetter})
#: What it may write for another session (as a relay): writes that a second copy, told
#: apart by their server message id and the relay's mark, cannot double.
RELAYED = frozenset({StoreOutbox, StoreCorrelation})


def fingerprint(result: Any) -> str:
    """A result as comparable text: the same state gives the same text on every node."""
    return repr(result)


def _steps(c: Unit | UnitPreview, d: Decision) -> tuple[Decision, list[Any]]:
    """Decide a unit's steps on a nested decision at the unit's time, each against the ones
    before it; `ConflictError` when one returns other than expected."""
    unit = d.nested(c.now)
    results = []
    for i, step in enumerate(c.steps):
        if type(step) not in UNIT_STEPS or step.session_id != c.session_id:
            raise UnitOfWorkError(f"a unit of work of session {c.session_id!r} cannot hold "
                                  f"{type(step).__name__} for session {step.session_id!r}")
        result = decide(step, unit)
        if i < len(c.expected) and fingerprint(result) != c.expected[i]:
            raise ConflictError(f"unit of work of session {c.session_id!r}: {type(step).__name__} (call {i + 1}) "
                                f"now returns {fingerprint(result)[:200]}, not {c.expected[i][:200]}; "
                                f"another writer changed the session; nothing was written")
        results.append(result)
    return unit, results


@handles(Unit)
def _unit(c: Unit, d: Decision) -> None:
    unit, _ = _steps(c, d)
    for relay_id, target, command in c.relays:
        unit.emit(ev.RelayStored(c.session_id, relay_id, target, command, c.now))
    d.absorb(unit)


@handles(UnitPreview)
def _unit_preview(c: UnitPreview, d: Decision) -> list[Any]:
    _, results = _steps(c, d)
    return [results[-1], fingerprint(results[-1])]


@handles(RelayDeliver)
def _relay_deliver(c: RelayDeliver, d: Decision) -> bool:
    if type(c.command) not in RELAYED or c.command.session_id != c.session_id:
        raise UnitOfWorkError(f"relay {c.relay_id!r}: {type(c.command).__name__} cannot be relayed to "
                              f"session {c.session_id!r}")
    if queries.relay_mark(d.view, d.partition, c.session_id, c.relay_id) is not None:
        return False
    part = d.nested(c.now)
    try:
        decide(c.command, part)
    except MessageIdAlreadyExistsError:  # another message holds its id: it cannot be stored, and never will
        log.warning("relay %s to session %s dropped: its server message id is taken", c.relay_id, c.session_id)
        part = d.nested(c.now)
    if part.records:  # it applied nothing (no such session): a later copy applying it is the first
        part.emit(ev.RelayReceived(c.session_id, c.relay_id, d.now))
    d.absorb(part)
    return True


@handles(RelayDone)
def _relay_done(c: RelayDone, d: Decision) -> None:
    if queries.relay(d.view, d.partition, c.session_id, c.relay_id) is not None:
        d.emit(ev.RelayDone(c.session_id, c.relay_id))


@handles(PendingRelays)
def _pending_relays(c: PendingRelays, d: Decision) -> list[tuple[str, str, str, str, int]]:
    return [(r.session_id, r.relay_id, r.target_session_id, r.command, r.stored_timestamp)
            for r in queries.relays(d.view, c.partition)]


# Queries: no events; decided against the same view so an owner answers for non-owners.

@handles(GetCurrentNode)
def _get_current_node(c: GetCurrentNode, d: Decision) -> CurrentNode | None:
    return _current_node(queries.session(d.view, d.partition, c.session_id))


@handles(SessionExists)
def _session_exists(c: SessionExists, d: Decision) -> bool:
    return queries.session(d.view, d.partition, c.session_id) is not None


@handles(GetInbox)
def _get_inbox(c: GetInbox, d: Decision) -> StoredInMessage | None:
    i = queries.inbox(d.view, d.partition, c.session_id, c.client_message_id)
    if i is None:
        return None
    return StoredInMessage(c.session_id, c.client_message_id, i.stored_timestamp, i.full_envelope,
                           i.message_binary)


@handles(GetOutbox)
def _get_outbox(c: GetOutbox, d: Decision) -> list[StoredOutMessage]:
    out: list[StoredOutMessage] = []
    if c.max_number_of_messages <= 0:
        return out
    for m in queries.outbox_messages(d.view, d.partition, c.session_id):
        if m.attempt_timestamp is None and not m.dead_lettered:
            out.append(_stored_out(m))
            if len(out) >= c.max_number_of_messages:
                break
    return out


def _stored_out(m: ev.OutboxState) -> StoredOutMessage:
    values = list(_out_values(m))
    values[_OUT_TYPE] = MessageType(values[_OUT_TYPE])
    return StoredOutMessage(*values)


# The outbox message's fields are declared once per role (the event `OutboxState`, the command
# `StoreOutbox`, the DTO `StoredOutMessage`, each by name) and copied from one to the other by
# name, here; tests/test_contract.py checks that the command's and the DTO's are the event's.
_STORED_FIELDS = tuple(f.name for f in fields(StoreOutbox) if f.name != "type")
_out_values = attrgetter(*(f.name for f in fields(StoredOutMessage)))
_OUT_TYPE = [f.name for f in fields(StoredOutMessage)].index("type")
