"""Is a partition's projection readable? A cheap structural check, run before trusting it.

It cannot prove the state equals the fold of the log (`csaf audit` does that); it finds
what a torn, truncated or foreign write leaves behind: keys outside the layout and values
that are not the entity states the fold writes.
"""

from __future__ import annotations

import orjson

from csaf_events.core.events import CORRELATION, INBOX, OUTBOX, RELAY, RELAY_MARK, SESSION
from projections import keys
from projections.rocks import Projection

_ENTITY_KINDS = {k.encode()[0] for k in (SESSION, INBOX, OUTBOX, CORRELATION, RELAY, RELAY_MARK)}
_INDEX_KIND = keys.OUTBOX_INDEX.encode()[0]
_CHECKPOINT_KIND = keys.CHECKPOINT.encode()[0]


def entry_problem(key: bytes, value: bytes) -> str | None:
    """Why this projection entry cannot have been written by the fold, or None."""
    if len(key) < 3:
        return "key too short"
    kind = key[2]
    if kind == _CHECKPOINT_KIND:
        try:
            cp = orjson.loads(value)
        except orjson.JSONDecodeError:
            return "checkpoint is not JSON"
        ok = isinstance(cp, dict) and isinstance(cp.get("next_offset"), int) and isinstance(cp.get("generation"), str)
        return None if ok else "checkpoint has the wrong shape"
    n = int.from_bytes(key[3:5], "big")
    if len(key) < 5 or len(key) < 5 + n:
        return "key shorter than its session id"
    try:
        sid = key[5:5 + n].decode()
    except UnicodeDecodeError:
        return "session id is not UTF-8"
    if kind == _INDEX_KIND:
        return None if len(value) == 8 else "outbox index entry is not an 8-byte sequence number"
    if kind not in _ENTITY_KINDS:
        return f"unknown entity kind {chr(kind)!r}"
    try:
        state = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "value is not JSON"
    if not isinstance(state, dict) or state.get("session_id") != sid:
        return "value is not a state of the session its key names"
    return None


def first_problem(projection: Projection, partition: int) -> str | None:
    """The first unreadable entry of the partition, described with its key, or None."""
    lo, _ = keys.partition_range(partition)
    for key, value in projection.scan(lo):
        problem = entry_problem(key, value)
        if problem is not None:
            return f"{problem} at key {key!r}"
    return None
