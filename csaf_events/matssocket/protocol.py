"""The MatsSocket wire protocol: envelopes, message types, close codes, debug flags.

Every WebSocket text frame is a JSON array of envelopes; an envelope is a JSON object
whose ``t`` names its `MessageType`. The short field names are the protocol's own:
``cmid`` client message id (the JS client sends a JSON number), ``smid`` server message
id, ``tid`` trace id, ``eid`` endpoint or topic id, ``sid`` session id, ``msg`` the
payload, ``auth`` an authorization value, ``rd`` requested debug flags, ``desc`` a
description, ``ids`` several message ids, ``x`` a ping correlation.
"""

from __future__ import annotations

import secrets
import string
from enum import IntEnum, IntFlag
from typing import Any

import orjson

from csaf_events.core.dtos import MessageType

SUBPROTOCOL = "matssocket"

Envelope = dict[str, Any]

MAX_ID_LENGTH = 256  # the store's limit on ids
MAX_IDS = 1000       # ids in one ACK/NACK/ACK2 envelope

CLIENT_TYPES = frozenset({
    MessageType.HELLO, MessageType.SEND, MessageType.REQUEST, MessageType.RESOLVE, MessageType.REJECT,
    MessageType.ACK, MessageType.NACK, MessageType.ACK2, MessageType.SUB, MessageType.UNSUB,
    MessageType.AUTH, MessageType.PING, MessageType.PONG,
})
"""The types a client may send; any other `t` is a protocol error."""


class CloseCode(IntEnum):
    """WebSocket close codes with their MatsSocket meaning."""

    GOING_AWAY = 1001            # from the client: as CLOSE_SESSION
    VIOLATED_POLICY = 1008       # authentication failed or the client broke a policy: session closed
    MESSAGE_TOO_BIG = 1009       # the WebSocket library's answer to an oversize frame
    UNEXPECTED_CONDITION = 1011  # server error: session closed
    SERVICE_RESTART = 1012       # this node stops: reconnect (to another node)
    CLOSE_SESSION = 4000         # the session is over (either side)
    SESSION_LOST = 4001          # reconnect to a session that is gone
    RECONNECT = 4002             # reconnect, reissue everything outstanding
    DISCONNECT = 4003            # a newer socket took this session over: do nothing
    MATS_SOCKET_PROTOCOL_ERROR = 4004  # the client broke the protocol: session closed


SESSION_ENDING_CLIENT_CODES = frozenset({
    CloseCode.GOING_AWAY, CloseCode.VIOLATED_POLICY, CloseCode.UNEXPECTED_CONDITION, CloseCode.CLOSE_SESSION,
    CloseCode.SESSION_LOST, CloseCode.MATS_SOCKET_PROTOCOL_ERROR,
})
"""A client closing its socket with one of these ends the session (inbox, outbox and all);
any other close keeps the session for a reconnect."""


class DebugOption(IntFlag):
    """The debug fields a client may ask for (``rd``) and an authenticator may allow."""

    TIMESTAMPS = 1
    NODES = 2
    CUSTOM_A = 64
    CUSTOM_B = 128


class ProtocolError(Exception):
    """The client broke the protocol: the socket closes with `code` and the session ends."""

    def __init__(self, reason: str, code: CloseCode = CloseCode.MATS_SOCKET_PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def parse_frame(text: str | bytes) -> list[Envelope]:
    """The envelopes of one text frame, each with a known client `t`; a `ProtocolError` otherwise."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"Could not parse message into MatsSocket envelope(s): {e}") from None
    if not isinstance(value, list):
        raise ProtocolError("A MatsSocket frame must be a JSON array of envelopes")
    for envelope in value:
        if not isinstance(envelope, dict):
            raise ProtocolError("Every MatsSocket envelope must be a JSON object")
        if envelope.get("t") not in CLIENT_TYPES:
            raise ProtocolError(f"Received unknown message type {str(envelope.get('t'))[:40]!r}")
    return value


def encode(envelopes: list[Envelope]) -> str:
    """One frame of envelopes (fields that are None are left out)."""
    return orjson.dumps([{k: v for k, v in e.items() if v is not None} for e in envelopes]).decode()


def message_id(envelope: Envelope, field: str) -> str:
    """A client- or server-side message id as the store keys it: a JSON string or integer,
    as text. A missing or other value is a `ProtocolError`."""
    return _id_text(envelope.get(field), field, envelope)


def _id_text(value: Any, field: str, envelope: Envelope) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ProtocolError(f"Missing or invalid '{field}' on {envelope.get('t')}")
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ID_LENGTH or not text.isprintable():
        raise ProtocolError(f"'{field}' on {envelope.get('t')} is not printable text of at most {MAX_ID_LENGTH}"
                            " characters")
    return text


def message_ids(envelope: Envelope, single: str) -> list[str]:
    """The ids an ACK/NACK/ACK2 names: its `single` field or its ``ids`` list, not both."""
    has_single, has_ids = envelope.get(single) is not None, envelope.get("ids") is not None
    if has_single == has_ids:
        raise ProtocolError(f"Received {envelope.get('t')} with {'both' if has_single else 'neither'} "
                            f"'{single}' and 'ids' - exactly one must be set")
    if has_single:
        return [message_id(envelope, single)]
    ids = envelope["ids"]
    if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS:
        raise ProtocolError(f"Received {envelope.get('t')} with an empty, invalid or oversize 'ids'")
    return [_id_text(i, "id", envelope) for i in ids]


_ALPHABET = string.ascii_letters + string.digits


#: Random bytes to letters and digits, each equally likely: bytes past the last whole round of
#: the alphabet (248 and up) are dropped, not folded onto the first letters.
_TO_ALPHABET = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) for b in range(256))
_DROPPED = bytes(range(256 // len(_ALPHABET) * len(_ALPHABET), 256))


def random_id(length: int = 16) -> str:
    """A random id of letters and digits (server message ids, connection ids): one system
    call and one C-level translation, where a choice per character cost a call each."""
    out = b""
    while len(out) < length:  # 3 % of the bytes are dropped: one round nearly always
        out += secrets.token_bytes(length + 8).translate(_TO_ALPHABET, _DROPPED)
    return out[:length].decode()
