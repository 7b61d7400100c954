"""Reads of entity states from a projection view (the projection, or a batch overlaying it).

States come back as the catalog's state classes (`events.decode`, the one way a stored
value is read back), binary fields as bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from csaf_events.core.events import (
    CORRELATION,
    INBOX,
    OUTBOX,
    RELAY,
    RELAY_MARK,
    SESSION,
    CorrelationStored,
    InboxState,
    OutboxState,
    RelayReceived,
    RelayStored,
    SessionState,
    decode,
)
from projections import keys


class View(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def scan(self, prefix: bytes) -> Iterable[tuple[bytes, bytes]]: ...
    def last_key(self, prefix: bytes) -> bytes | None: ...


def session(view: View, p: int, sid: str) -> SessionState | None:
    raw = view.get(keys.session_key(p, sid))
    return None if raw is None else decode(SessionState, raw)


def sessions(view: View, p: int) -> list[SessionState]:
    return [decode(SessionState, v) for _, v in view.scan(keys.kind_prefix(p, SESSION))]


def inbox(view: View, p: int, sid: str, cmid: str) -> InboxState | None:
    raw = view.get(keys.inbox_key(p, sid, cmid))
    return None if raw is None else decode(InboxState, raw)


def outbox_seq(view: View, p: int, sid: str, smid: str) -> int | None:
    raw = view.get(keys.outbox_index_key(p, sid, smid))
    return None if raw is None else int.from_bytes(raw, "big")


def outbox_message(view: View, p: int, sid: str, smid: str) -> OutboxState | None:
    seq = outbox_seq(view, p, sid, smid)
    if seq is None:
        return None
    raw = view.get(keys.outbox_key(p, sid, seq))
    return None if raw is None else decode(OutboxState, raw)


def outbox_messages(view: View, p: int, sid: str) -> Iterator[OutboxState]:
    """The session's outbox in the order stored, each message decoded as it is reached: a
    fetch of the first few unattempted ones does not decode the backlog behind them."""
    return (decode(OutboxState, v) for _, v in view.scan(keys.session_prefix(p, OUTBOX, sid)))


def next_outbox_seq(view: View, p: int, sid: str) -> int:
    """One more than the session's greatest seq (its last outbox key, read without values)."""
    last = view.last_key(keys.session_prefix(p, OUTBOX, sid))
    return 0 if last is None else int.from_bytes(last[-8:], "big") + 1


def correlation(view: View, p: int, sid: str, smid: str) -> CorrelationStored | None:
    raw = view.get(keys.correlation_key(p, sid, smid))
    return None if raw is None else decode(CorrelationStored, raw)


def children(view: View, p: int, sid: str) -> tuple[list[InboxState], list[OutboxState], list[CorrelationStored],
                                                    list[RelayReceived]]:
    """Everything stored for a session: (inbox, outbox, correlations, relay marks) states.
    Relays the session's units wrote for others are not its own: they are delivered even
    after it is gone."""
    return (
        [decode(InboxState, v) for _, v in view.scan(keys.session_prefix(p, INBOX, sid))],
        list(outbox_messages(view, p, sid)),
        [decode(CorrelationStored, v) for _, v in view.scan(keys.session_prefix(p, CORRELATION, sid))],
        relay_marks(view, p, sid),
    )


def relays(view: View, p: int) -> list[RelayStored]:
    """The partition's relays not delivered yet, by source session and relay id."""
    return [decode(RelayStored, v) for _, v in view.scan(keys.kind_prefix(p, RELAY))]


def relay(view: View, p: int, sid: str, relay_id: str) -> RelayStored | None:
    raw = view.get(keys.relay_key(p, sid, relay_id))
    return None if raw is None else decode(RelayStored, raw)


def relay_mark(view: View, p: int, sid: str, relay_id: str) -> RelayReceived | None:
    raw = view.get(keys.relay_mark_key(p, sid, relay_id))
    return None if raw is None else decode(RelayReceived, raw)


def relay_marks(view: View, p: int, sid: str | None = None) -> list[RelayReceived]:
    """The relay marks of one session, or of the whole partition."""
    prefix = keys.kind_prefix(p, RELAY_MARK) if sid is None else keys.session_prefix(p, RELAY_MARK, sid)
    return [decode(RelayReceived, v) for _, v in view.scan(prefix)]


def orphan_session_ids(view: View, p: int) -> set[str]:
    """Ids of sessions that have inbox/outbox/correlation entries or relay marks but no
    session row."""
    owners: set[str] = set()
    for kind in (INBOX, OUTBOX, CORRELATION, RELAY_MARK):
        for k, _ in view.scan(keys.kind_prefix(p, kind)):
            owners.add(keys.session_id_of(k))
    return {sid for sid in owners if view.get(keys.session_key(p, sid)) is None}
