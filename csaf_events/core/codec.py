"""Commands, results and errors as bytes, so a non-owner can send a command to the owner
and get its outcome back (Kafka mode). Exact round trip, bytes included."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import orjson

from csaf_events.core import commands, dtos, errors

_COMMANDS = {c.__name__: c for c in commands.HANDLERS}
_DTOS = {c.__name__: c for c in (dtos.CurrentNode, dtos.SessionDto, dtos.StoredInMessage,
                                  dtos.StoredOutMessage, dtos.RequestCorrelation)}
_ERRORS = {c.__name__: c for c in (errors.CsafError, errors.DataAccessError, errors.WrongUserError,
                                    errors.MessageIdAlreadyExistsError, errors.NotOwnerError,
                                    errors.ConflictError, errors.UnitOfWorkError)}
#: Errors that travel as the class they derive from (what every node of a cluster decodes).
_WIRE_NAMES: dict[type, str] = {errors.ProducerFencedError: "DataAccessError",
                                errors.TransactionAbortedError: "NotOwnerError"}


def _plain(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$b": base64.b64encode(obj).decode("ascii")}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"$t": type(obj).__name__, **{f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    return obj


def _typed(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_typed(x) for x in obj)
    if isinstance(obj, dict):
        if "$b" in obj:
            return base64.b64decode(obj["$b"])
        fields = {k: _typed(v) for k, v in obj.items() if k != "$t"}
        name = obj.get("$t")
        if name in _DTOS:
            if name == "StoredOutMessage":
                fields["type"] = dtos.MessageType(fields["type"])
            return _DTOS[name](**fields)
        if name in _COMMANDS:
            return _COMMANDS[name](**fields)
        raise ValueError(f"cannot decode object of type {name!r}")
    return obj


def encode_command(command: commands.Command) -> bytes:
    return orjson.dumps(_plain(command))


def decode_command(raw: bytes) -> commands.Command:
    cmd = _typed(orjson.loads(raw))
    if not isinstance(cmd, commands.Command):
        raise ValueError("not a command")
    return cmd


def encode_outcome(result: Any, error: BaseException | None) -> bytes:
    if error is not None:
        name = _WIRE_NAMES.get(type(error), type(error).__name__)
        if name not in _ERRORS:
            name = "DataAccessError"
        return orjson.dumps({"error": name, "message": str(error),
                             "may_have_written": getattr(error, "may_have_written", True)})
    return orjson.dumps({"result": _plain(result)})


def decode_outcome(raw: bytes) -> Any:
    """The result, or raises the owner's error."""
    out = orjson.loads(raw)
    if "error" in out:
        if out["error"] == "DataAccessError":
            raise errors.DataAccessError(out["message"], may_have_written=out.get("may_have_written", True))
        raise _ERRORS[out["error"]](out["message"])
    result = _typed(out["result"])
    return list(result) if isinstance(result, tuple) else result
