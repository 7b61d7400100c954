"""Public data transfer objects and `MessageType` (names fixed by the API contract)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MessageType(StrEnum):
    """MatsSocket message types; plain strings with these names are accepted too."""

    HELLO = "HELLO"
    WELCOME = "WELCOME"
    ACK = "ACK"
    NACK = "NACK"
    ACK2 = "ACK2"
    SEND = "SEND"
    REQUEST = "REQUEST"
    RESOLVE = "RESOLVE"
    REJECT = "REJECT"
    RETRY = "RETRY"
    SUB = "SUB"
    SUB_OK = "SUB_OK"
    SUB_LOST = "SUB_LOST"
    SUB_NO_AUTH = "SUB_NO_AUTH"
    UNSUB = "UNSUB"
    PUB = "PUB"
    AUTH = "AUTH"
    REAUTH = "REAUTH"
    PING = "PING"
    PONG = "PONG"


@dataclass(frozen=True, slots=True)
class CurrentNode:
    node_name: str
    connection_id: str


@dataclass(frozen=True, slots=True)
class SessionDto:
    session_id: str
    user_id: str
    node_name: str | None
    client_lib_and_versions: str
    app_name: str
    app_version: str
    created_timestamp: int
    liveliness_timestamp: int


@dataclass(frozen=True, slots=True)
class StoredInMessage:
    session_id: str
    client_message_id: str
    stored_timestamp: int
    full_envelope: str | None
    message_binary: bytes | None


@dataclass(frozen=True, slots=True)
class StoredOutMessage:
    session_id: str
    server_message_id: str
    trace_id: str | None
    type: MessageType
    client_message_id: str | None
    request_timestamp: int | None
    stored_timestamp: int
    attempt_timestamp: int | None
    delivery_count: int
    envelope: str
    message_text: str | None
    message_binary: bytes | None


@dataclass(frozen=True, slots=True)
class RequestCorrelation:
    session_id: str
    server_message_id: str
    request_timestamp: int
    reply_terminator_id: str | None
    correlation_string: str | None
    correlation_binary: bytes | None
