"""Log records that say which node, partition and session they are about.

The library logs with `logging` (never print). A record carries ``node``, ``partition``
and ``session`` attributes: code passes them in ``extra`` where it has them, and
`ContextFilter`, installed on a handler, fills in the ones a record lacks from

- the message's own arguments: the argument after the word ``node``, ``partition(s)`` or
  ``session`` in the format string (``"node %s took over partition %d"``), as the library's
  messages are written;
- the thread that logged it: every thread of a node is named ``csaf-<role>-<node>``;
- else, when the process has one open store, that store's node (a MatsSocket node's lines).

`configure(level, json_lines)` sets up the root logger for a command-line tool: text lines
that end with ``[node=… partition=… session=…]``, or one JSON object per line
(`JsonFormatter`) for a log pipeline. A program that configures logging itself adds the
filter to its handlers::

    handler.addFilter(csaf_events.ops.logs.ContextFilter())
"""

from __future__ import annotations

import logging
import re
import sys
import time
import weakref
from typing import Any

import orjson

FIELDS = ("node", "partition", "session")

_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?([diouxXeEfFgGcrsa%])")
_WORDS = {"node": "node", "partition": "partition", "partitions": "partition", "session": "session"}
#: Thread name prefixes of a node's threads (the node name follows).
_THREADS = ("csaf-routed-read-", "csaf-routed-", "csaf-commit-", "csaf-owner-", "csaf-takeover-", "csaf-fanout-",
            "csaf-replies-", "csaf-registry-", "csaf-compact-", "csaf-store-", "csaf-channel-", "csaf-nodes-")
_POOL_SUFFIX = re.compile(r"_\d+$")
_LANE_SUFFIX = re.compile(r"-\d+$")


def _from_message(record: logging.LogRecord) -> dict[str, Any]:
    msg, args = record.msg, record.args
    if not isinstance(msg, str) or not isinstance(args, tuple) or not args or "%" not in msg:
        return {}
    found: dict[str, Any] = {}
    i = 0
    for m in _PLACEHOLDER.finditer(msg):
        if m.group(1) == "%":
            continue
        if i >= len(args):
            break
        words = msg[:m.start()].split()
        word = words[-1].strip("(:,[").lower() if words else ""
        field = _WORDS.get(word)
        if field is not None and field not in found:
            found[field] = args[i]
        i += 1
    return found


def _node_of_thread(name: str) -> str | None:
    for prefix in _THREADS:
        if name.startswith(prefix):
            node = _POOL_SUFFIX.sub("", name[len(prefix):])
            if prefix == "csaf-commit-":
                node = _LANE_SUFFIX.sub("", node)
            return node or None
    return None


_stores: weakref.WeakSet[Any] = weakref.WeakSet()


def track(store: Any) -> None:
    """Remember a booted store: when it is the only open one in the process, records that
    name no node are its node's (a MatsSocket node's lines, logged on the event loop)."""
    _stores.add(store)


def _only_node() -> str | None:
    names = {s.node_name for s in list(_stores) if not s._closed}
    return names.pop() if len(names) == 1 else None


class ContextFilter(logging.Filter):
    """Gives every record ``node``, ``partition`` and ``session`` (None where unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        missing = [f for f in FIELDS if getattr(record, f, None) is None]
        if missing:
            parsed = _from_message(record)
            for f in missing:
                value = parsed.get(f)
                if f == "node" and value is None:
                    value = _node_of_thread(record.threadName or "")
                    if value is None and record.name.startswith("csaf_events"):
                        value = _only_node()
                setattr(record, f, value)
        return True


class TextFormatter(logging.Formatter):
    """The usual text line, with the context fields that are known at its end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = " ".join(f"{f}={_plain(getattr(record, f))}" for f in FIELDS if getattr(record, f, None) is not None)
        if not ctx:
            return line
        first, nl, rest = line.partition("\n")  # a traceback stays below the line
        return f"{first} [{ctx}]{nl}{rest}"


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in sorted(value))
    return value


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, node,
    partition, session, thread, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for f in FIELDS:
            out[f] = _json_safe(getattr(record, f, None))
        out["thread"] = record.threadName
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure(level: str = "WARNING", json_lines: bool = False, stream: Any = None) -> logging.Handler:
    """Log to `stream` (default stderr) at `level`, as text or JSON lines, with the context
    fields; replaces the handler an earlier call installed (others stay). Returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(ContextFilter())
    handler._csaf_configured = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_csaf_configured", False):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
