"""The fold: how one event changes the projection. Every backend and every rebuild uses it."""

from __future__ import annotations

from collections.abc import Iterable

from csaf_events.events import (
    CORRELATION, INBOX, OUTBOX, SESSION, Event, from_record,
)
from projections import keys
from projections.rocks import ProjectionBatch


def fold(event: Event, value: bytes | None, partition: int, out: ProjectionBatch) -> None:
    """Apply `event` (whose encoded state is `value`) to the projection of `partition`.

    Events carry whole entity states, so folding is put-or-delete of one entity and its
    index entries; folding the same event twice gives the same projection.
    """
    sid = event.session_id
    entity = event.ENTITY
    if entity == SESSION:
        key = keys.session_key(partition, sid)
        out.session_changed(sid, value)
    elif entity == INBOX:
        key = keys.inbox_key(partition, sid, event.client_message_id)  # type: ignore[attr-defined]
    elif entity == OUTBOX:
        key = keys.outbox_key(partition, sid, event.seq)  # type: ignore[attr-defined]
        index = keys.outbox_index_key(partition, sid, event.server_message_id)  # type: ignore[attr-defined]
        if value is None:
            out.delete(index)
        else:
            out.put(index, event.seq.to_bytes(8, "big"))  # type: ignore[attr-defined]
    elif entity == CORRELATION:
        key = keys.correlation_key(partition, sid, event.server_message_id)  # type: ignore[attr-defined]
    else:  # pragma: no cover - the catalog has no other entity
        raise ValueError(f"unknown entity {entity!r}")
    if value is None:
        out.delete(key)
    else:
        out.put(key, value)


def fold_records(records: Iterable[tuple[bytes, bytes | None, object]], partition: int, out: ProjectionBatch) -> int:
    """Fold raw log records (key, value, headers) in log order; returns how many."""
    n = 0
    for key, value, headers in records:
        fold(from_record(key, value, headers), value, partition, out)
        n += 1
    return n
