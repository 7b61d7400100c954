"""`Pending`: a command waiting for its group commit, what a partition's writer queues and
hands to `EventLog.append` as the decided group. A module of its own so that the log port
and its adapters can name it without importing the writer that imports the port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from csaf_events.core.commands import Command
from csaf_events.core.group_commit import Signal


class Pending:
    """A command waiting for its group commit."""

    __slots__ = ("command", "done", "error", "on_done", "promoted", "queued_at", "result", "waiter")

    #: Whether its group is appended even where it decides no event: a log adapter that answers
    #: a command in the append itself (Kafka: the reply to a routed command, in the transaction)
    #: says so in a class of its own.
    answered_in_append: ClassVar[bool] = False

    def __init__(self, command: Command, waiter: bool = False) -> None:
        self.command = command
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = Signal()
        self.waiter = waiter  # a thread waits for it (and so can be asked to lead)
        self.promoted = False  # woken to lead the next group, not finished
        self.queued_at = 0.0
        #: called once it is finished (after `done` is set), on the thread that finished it: for a
        #: caller that does not wait on a thread (`csaf_events.async_store`)
        self.on_done: Callable[[Pending], None] | None = None

    def late_ms(self, now_ms: int) -> int | None:
        """How long ago its caller gave up (None: it still waits): a command whose caller gave
        up is not decided. A caller here waits for the outcome; a log adapter's own class says
        otherwise (a routed command's deadline)."""
        return None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result
