"""Byte layout of projection keys.

Keys start with the partition (2 bytes) so a partition's whole state is one key range
(dropped in one call when ownership moves), then the entity kind, then the session id
length-prefixed so no id character can collide with the layout.
"""

from __future__ import annotations

from csaf_events.core.events import CORRELATION, INBOX, OUTBOX, RELAY, RELAY_MARK, SESSION

OUTBOX_INDEX = "m"  # server_message_id -> seq
CHECKPOINT = "~"  # sorts after every entity kind


_KIND_BYTES = {kind: kind.encode() for kind in (SESSION, INBOX, OUTBOX, OUTBOX_INDEX, CORRELATION, RELAY, RELAY_MARK,
                                                 CHECKPOINT)}


def _p(partition: int) -> bytes:
    return partition.to_bytes(2, "big")


def _sid(session_id: str) -> bytes:
    b = session_id.encode()
    return len(b).to_bytes(2, "big") + b


def partition_range(partition: int) -> tuple[bytes, bytes]:
    return _p(partition), _p(partition + 1)


def kind_prefix(partition: int, kind: str) -> bytes:
    return _p(partition) + kind.encode()


def session_prefix(partition: int, kind: str, session_id: str) -> bytes:
    b = session_id.encode()
    return partition.to_bytes(2, "big") + _KIND_BYTES[kind] + len(b).to_bytes(2, "big") + b


def session_key(partition: int, session_id: str) -> bytes:
    return session_prefix(partition, SESSION, session_id)


def inbox_key(partition: int, session_id: str, client_message_id: str) -> bytes:
    return session_prefix(partition, INBOX, session_id) + client_message_id.encode()


def outbox_key(partition: int, session_id: str, seq: int) -> bytes:
    return session_prefix(partition, OUTBOX, session_id) + seq.to_bytes(8, "big")


def outbox_index_key(partition: int, session_id: str, server_message_id: str) -> bytes:
    return session_prefix(partition, OUTBOX_INDEX, session_id) + server_message_id.encode()


def outbox_keys(partition: int, session_id: str, seq: int, server_message_id: str) -> tuple[bytes, bytes]:
    """`outbox_key` and `outbox_index_key` of one message, the session part encoded once."""
    b = session_id.encode()
    p, sid = partition.to_bytes(2, "big"), len(b).to_bytes(2, "big") + b
    return (p + _KIND_BYTES[OUTBOX] + sid + seq.to_bytes(8, "big"),
            p + _KIND_BYTES[OUTBOX_INDEX] + sid + server_message_id.encode())


def correlation_key(partition: int, session_id: str, server_message_id: str) -> bytes:
    return session_prefix(partition, CORRELATION, session_id) + server_message_id.encode()


def relay_key(partition: int, session_id: str, relay_id: str) -> bytes:
    return session_prefix(partition, RELAY, session_id) + relay_id.encode()


def relay_mark_key(partition: int, session_id: str, relay_id: str) -> bytes:
    return session_prefix(partition, RELAY_MARK, session_id) + relay_id.encode()


def checkpoint_key(partition: int) -> bytes:
    return kind_prefix(partition, CHECKPOINT)


def session_id_of(key: bytes) -> str:
    """The session id inside any entity key."""
    n = int.from_bytes(key[3:5], "big")
    return key[5 : 5 + n].decode()


_KIND_NAMES = {SESSION: "session", INBOX: "inbox entry", OUTBOX: "outbox message",
               OUTBOX_INDEX: "outbox index entry", CORRELATION: "correlation", RELAY: "relay",
               RELAY_MARK: "relay mark", CHECKPOINT: "checkpoint"}


def describe(key: bytes) -> str:
    """A projection key for people: partition, entity kind, session id and entity id."""
    head = f"partition {int.from_bytes(key[:2], 'big')}"
    if len(key) < 3:
        return f"{head} {key!r}"
    kind = chr(key[2])
    name = _KIND_NAMES.get(kind, f"kind {kind!r}")
    if len(key) < 5:
        return f"{head} {name}"
    n = int.from_bytes(key[3:5], "big")
    sid, rest = key[5:5 + n].decode(errors="replace"), key[5 + n:]
    if kind == OUTBOX and len(rest) == 8:
        ident = f" seq {int.from_bytes(rest, 'big')}"
    else:
        ident = f" {rest.decode(errors='replace')!r}" if rest else ""
    return f"{head} {name}{ident} of session {sid!r}"
