"""The fold: how one event changes the projection. Every backend and every rebuild uses it.

Events carry whole entity states and their record key names the entity, so folding is
put-or-delete of one entity (plus its index entry) computed from the key alone: the value
is stored as it is, never decoded. Folding the same record twice gives the same projection.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from csaf_events.events import CORRELATION, INBOX, OUTBOX, SESSION, Event
from projections import keys
from projections.rocks import ProjectionBatch


def fold(event: Event, value: bytes | None, partition: int, out: ProjectionBatch) -> None:
    """Apply `event` (whose encoded state is `value`) to the projection of `partition`."""
    fold_key(event.ENTITY, [getattr(event, f) for f in event.KEY_FIELDS], value, partition, out)


def fold_record(key: bytes, value: bytes | None, partition: int, out: ProjectionBatch) -> None:
    """Apply a raw log record (restore and rebuild: no event object needed)."""
    parts = orjson.loads(key)
    fold_key(parts[0], parts[1:], value, partition, out)


def fold_key(entity: str, ids: Sequence, value: bytes | None, partition: int, out: ProjectionBatch) -> None:
    sid = ids[0]
    if entity == SESSION:
        key = keys.session_key(partition, sid)
        out.session_changed(sid, value)
    elif entity == INBOX:
        key = keys.inbox_key(partition, sid, ids[1])
    elif entity == OUTBOX:
        seq, smid = ids[1], ids[2]
        key = keys.outbox_key(partition, sid, seq)
        index = keys.outbox_index_key(partition, sid, smid)
        if value is None:
            out.delete(index)
        else:
            out.put(index, seq.to_bytes(8, "big"))
    elif entity == CORRELATION:
        key = keys.correlation_key(partition, sid, ids[1])
    else:
        raise ValueError(f"unknown entity kind {entity!r} in a log record")
    if value is None:
        out.delete(key)
    else:
        out.put(key, value)
