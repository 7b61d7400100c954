"""`Pending`: a command waiting for its group commit, what a partition's writer queues and
hands to `EventLog.append` as the decided group. A module of its own so that the log port
and its adapters can name it without importing the writer that imports the port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from csaf_events.core.commands import Command
from csaf_events.core.group_commit import Signal


class Pending:
    """A command waiting for its group commit."""

    __slots__ = ("command", "deadline_ms", "done", "error", "on_done", "origin", "promoted", "queued_at", "result",
                 "waiter")

    def __init__(self, command: Command, origin: Any = None, waiter: bool = False,
                 deadline_ms: int | None = None) -> None:
        self.command = command
        self.origin = origin  # where a routed command came from (the log adapter replies there)
        self.deadline_ms = deadline_ms  # wall clock: its caller gives up then, so it is not decided after
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = Signal()
        self.waiter = waiter  # a thread waits for it (and so can be asked to lead)
        self.promoted = False  # woken to lead the next group, not finished
        self.queued_at = 0.0
        #: called once it is finished (after `done` is set), on the thread that finished it: for a
        #: caller that does not wait on a thread (`csaf_events.async_store`)
        self.on_done: Callable[[Pending], None] | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result
