"""The fold: how one event changes the projection. Every backend and every rebuild uses it.

Events carry whole entity states and their record key names the entity, so folding is
put-or-delete of one entity (plus its index entry) computed from the key alone: the value
is stored as it is, never decoded. Folding the same record twice gives the same projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import repeat
from typing import Protocol

import orjson

from csaf_events.core.events import CORRELATION, INBOX, OUTBOX, RELAY, RELAY_MARK, SESSION
from projections import keys
from projections.rocks import ProjectionBatch


class FoldTarget(Protocol):
    """What a fold writes to: a projection batch, or `Changes` in memory."""

    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def session_changed(self, session_id: str, value: bytes | None) -> None: ...


def fold_key(entity: str, ids: Sequence, value: bytes | None, partition: int, out: FoldTarget) -> None:
    """Apply one record, given its entity kind and ids (a live fold: the event knows them)."""
    _apply([(entity, ids[0], *_entity_keys(entity, ids, partition))], [value], out)


def fold_record(key: bytes, value: bytes | None, partition: int, out: FoldTarget) -> None:
    """Apply a raw log record (restore and rebuild: no event object needed)."""
    _apply([_targets(key, partition)], [value], out)


def fold_records(keys: Iterable[bytes], values: Iterable[bytes | None], partition: int, out: FoldTarget) -> None:
    """`fold_record` for many records, in order (a restore: one loop for them all)."""
    _apply(map(_targets, keys, repeat(partition)), values, out)


@lru_cache(maxsize=1 << 16)
def _targets(key: bytes, partition: int) -> tuple[str, str, bytes, bytes | None, bytes | None]:
    """What a record key folds into. Cached: an entity's records (stored, updated,
    deleted) come close together in the log, and parsing the key is most of the fold."""
    entity, *ids = orjson.loads(key)
    return (entity, ids[0], *_entity_keys(entity, ids, partition))


def _entity_keys(entity: str, ids: Sequence, partition: int) -> tuple[bytes, bytes | None, bytes | None]:
    """The projection key of the entity, and its index key and index value (outbox only)."""
    sid = ids[0]
    if entity == OUTBOX:
        key, index = keys.outbox_keys(partition, sid, ids[1], ids[2])
        return key, index, ids[1].to_bytes(8, "big")
    if entity == INBOX:
        return keys.inbox_key(partition, sid, ids[1]), None, None
    if entity == SESSION:
        return keys.session_key(partition, sid), None, None
    if entity == CORRELATION:
        return keys.correlation_key(partition, sid, ids[1]), None, None
    if entity == RELAY:
        return keys.relay_key(partition, sid, ids[1]), None, None
    if entity == RELAY_MARK:
        return keys.relay_mark_key(partition, sid, ids[1]), None, None
    raise ValueError(f"unknown entity kind {entity!r} in a log record")


def _apply(targets: Iterable[tuple[str, str, bytes, bytes | None, bytes | None]], values: Iterable[bytes | None],
           out: FoldTarget) -> None:
    """Put (or delete, for a tombstone) each record's entity and index entry."""
    put, delete = out.put, out.delete
    for (entity, sid, key, index, index_value), value in zip(targets, values, strict=True):
        if value is None:
            delete(key)
            if index is not None:
                delete(index)
        else:
            put(key, value)
            if index is not None:
                assert index_value is not None, "an index key comes with its value (_entity_keys)"
                put(index, index_value)
        if entity == SESSION:
            out.session_changed(sid, value)


class Changes:
    """A fold target in memory: the last value of every key folded (None: deleted) and of
    every session. A restore folds a run of records here before writing, so an entity
    that changed many times costs one write (an outbox message that came and went: two
    deletes instead of six writes); the audit folds whole logs here."""

    __slots__ = ("put", "sessions", "state")

    def __init__(self, state: dict[bytes, bytes] | None = None) -> None:
        self.state: dict[bytes, bytes | None] = dict(state or {})
        self.sessions: dict[str, bytes | None] = {}
        self.put = self.state.__setitem__  # the dict's own: a restore puts once or twice per record

    def delete(self, key: bytes) -> None:
        self.state[key] = None

    def session_changed(self, session_id: str, value: bytes | None) -> None:
        self.sessions[session_id] = value

    def live(self) -> dict[bytes, bytes]:
        """The entries that exist after the fold."""
        return {k: v for k, v in self.state.items() if v is not None}

    def into(self, out: ProjectionBatch) -> ProjectionBatch:
        """The changes as writes of a projection batch."""
        for k, v in self.state.items():
            if v is None:
                out.delete(k)
            else:
                out.put(k, v)
        for sid, v in self.sessions.items():
            out.session_changed(sid, v)
        return out

