"""Argument checks, done before anything is written, with errors naming the argument."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, overload

from csaf_events.core.dtos import MessageType

#: The rule for a node name and a namespace (they become parts of topic names, consumer
#: groups and transactional ids): `open_store` and the CLI check it.
NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


@dataclass(frozen=True)
class Limits:
    """Size limits; a message part over its limit is refused, never truncated."""

    max_message_bytes: int = 1 << 20  # per message part (envelope, text, binary, ...)
    max_id_length: int = 256  # session, user, message and connection ids, names
    max_ids_per_call: int = 10_000


_MAX_INT64 = (1 << 63) - 1


def _type_error(name: str, expected: str, value: object) -> TypeError:
    return TypeError(f"{name} must be {expected}, got {type(value).__name__}")


def ident(name: str, value: object, limits: Limits, *, prefix_of: int = 0) -> str:
    """A non-empty id of printable text; with `prefix_of`, the start (maybe empty) of an id
    that many characters longer."""
    if not isinstance(value, str):
        raise _type_error(name, "a str", value)
    if not value and not prefix_of:
        raise ValueError(f"{name} must not be empty")
    limit = limits.max_id_length - prefix_of
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters, over the limit of {limit}")
    if not value.isprintable():
        raise ValueError(f"{name} must be printable text, got {value!r}")
    return value


def optional_ident(name: str, value: object, limits: Limits) -> str | None:
    return None if value is None else ident(name, value, limits)


@overload
def text(name: str, value: object, limits: Limits, *, optional: Literal[False] = False,
         limit: int | None = None) -> str: ...
@overload
def text(name: str, value: object, limits: Limits, *, optional: bool, limit: int | None = None) -> str | None: ...
def text(name: str, value: object, limits: Limits, *, optional: bool = False, limit: int | None = None) -> str | None:
    """Free text (names, versions, envelopes, payloads) within a size limit."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _type_error(name, "a str" + (" or None" if optional else ""), value)
    cap = limits.max_message_bytes if limit is None else limit
    if len(value) > cap:
        raise ValueError(f"{name} is larger than the limit of {cap} bytes")
    if value.isascii():  # one byte a character: no need to encode it to know its size
        return value
    try:
        size = len(value.encode())
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text (it cannot be encoded as UTF-8: {e.reason} "
                         f"at position {e.start})") from None
    if size > cap:
        raise ValueError(f"{name} is larger than the limit of {cap} bytes")
    return value


def binary(name: str, value: object, limits: Limits) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise _type_error(name, "bytes or None", value)
    if len(value) > limits.max_message_bytes:
        raise ValueError(f"{name} is {len(value)} bytes, over the limit of {limits.max_message_bytes}")
    return value


@overload
def timestamp(name: str, value: object, *, optional: Literal[False] = False) -> int: ...
@overload
def timestamp(name: str, value: object, *, optional: bool) -> int | None: ...
def timestamp(name: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an int (milliseconds since the epoch)", value)
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    if value > _MAX_INT64:
        raise ValueError(f"{name} must fit in 64 bits (at most {_MAX_INT64}), got {value}")
    return value


def count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an int", value)
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return min(value, _MAX_INT64)  # "more than there can be" means all of them


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _type_error(name, "a bool", value)
    return value


def ids(name: str, values: object, limits: Limits) -> tuple[str, ...]:
    """A collection of ids (a bare string is refused: it is almost always a bug)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise _type_error(name, "a list or other collection of str", values)
    out = tuple(values)
    if len(out) > limits.max_ids_per_call:
        raise ValueError(f"{name} has {len(out)} ids, over the limit of {limits.max_ids_per_call} per call")
    for i, v in enumerate(out):
        ident(f"{name}[{i}]", v, limits)
    return out


def message_type(value: object) -> MessageType:
    if isinstance(value, MessageType):
        return value
    if not isinstance(value, str):
        raise _type_error("type", "a MessageType or its name", value)
    try:
        return MessageType(value)
    except ValueError:
        raise ValueError(f"type {value!r} is not a MessageType; one of {', '.join(MessageType)}") from None
