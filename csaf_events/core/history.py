"""A session's history, read back from the log (the source of truth).

Every record of a session is in the session's partition, so one partition is read and
the records whose key names the session are kept. What the log still holds is what
compaction left: every event inside the audit window (`min.compaction.lag.ms`), and before
it the latest record of each entity (its state then, or its tombstone until
`delete.retention.ms` has passed).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from csaf_events.core.events import CATALOG, decode_state, header
from csaf_events.log.entries import LogEntry


class HistoryEntry(NamedTuple):
    offset: int
    timestamp: int  # ms since the epoch, when the event was written
    node: str  # the node that wrote it
    type: str  # the event type, e.g. "OutboxStored"
    entity_key: tuple  # the record key: (kind, session_id, entity ids...)
    state: dict | None  # the entity's whole state after the event; None for a tombstone


def session_history(entries: Iterable[LogEntry], session_id: str) -> list[HistoryEntry]:
    """The events of `session_id` among `entries` (its partition of the log), in log order."""
    needle = orjson.dumps(session_id)  # cheap filter before decoding keys
    out = []
    for e in entries:
        if needle not in e.key:
            continue
        key = orjson.loads(e.key)
        if len(key) < 2 or key[1] != session_id:
            continue
        type_name = header(e.headers, "type") or "?"
        cls = CATALOG.get(type_name)
        state = None if e.value is None else decode_state(e.value, cls.BINARY_FIELDS if cls else frozenset())
        out.append(HistoryEntry(e.offset, int(header(e.headers, "ts") or 0), header(e.headers, "node") or "",
                                type_name, tuple(key), state))
    return out


def _jsonable(obj: Any) -> str:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode("ascii")
    raise TypeError(f"cannot encode {type(obj).__name__}")


def to_json(history: list[HistoryEntry]) -> bytes:
    """JSON array of entries (binary fields base64)."""
    return orjson.dumps([e._asdict() for e in history], default=_jsonable, option=orjson.OPT_INDENT_2)


def format_text(history: list[HistoryEntry]) -> str:
    """One line per event: offset, UTC time, node, type, entity, state."""
    lines = []
    for e in history:
        when = datetime.fromtimestamp(e.timestamp / 1000, UTC).isoformat(timespec="milliseconds")
        entity = "/".join(str(k) for k in (e.entity_key[:1] + e.entity_key[2:]))
        state = "(tombstone)" if e.state is None else orjson.dumps(e.state, default=_jsonable).decode()
        lines.append(f"{e.offset:>8}  {when}  {e.node:<12}  {e.type:<20}  {entity:<24}  {state}")
    return "\n".join(lines)
