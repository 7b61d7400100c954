"""One writer per partition, with group commit.

A MatsSocket node calls the store from many threads. Calls on one partition must be
decided one after another against the latest state (that is what makes uniqueness
checks exact), but calls on different partitions must not wait on each other, and a
burst of calls should share one append. Each call joins its partition's group commit
(`csaf_events.group_commit`): the leader decides everything queued (each command sees the
events of the ones before it), appends the events in one `EventLog.append`, and hands
every caller its result.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from csaf_events.clock import now_ms
from csaf_events.commands import Command, Decision, decide
from csaf_events.group_commit import GroupCommit, Signal
from csaf_events.errors import DataAccessError, NotOwnerError
from csaf_events.log.port import EventLog
from projections.rocks import Projection, ProjectionBatch

log = logging.getLogger(__name__)


class Pending:
    """A command waiting for its group commit."""

    __slots__ = ("command", "origin", "deadline_ms", "result", "error", "done", "waiter", "promoted")

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

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class PartitionWriter:
    def __init__(self, partition: int, projection: Projection, log: EventLog, node_name: str,
                 clock: Callable[[], int], max_batch: int = 512) -> None:
        self.partition = partition
        self._projection = projection
        self._log = log
        self._node = node_name
        self._clock = clock
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._group_commit: GroupCommit[Pending] = GroupCommit(self._commit, max_batch)
        self._appending = False
        self._appends = 0  # appends finished so far
        self._appended = threading.Condition(self._lock)
        self.closed_reason: str | None = None

    def read(self, command: Command) -> Any:
        """Answer a read-only command from the projection.

        A read waits while an append of this partition is in flight: in Kafka mode the
        transaction can be visible to other nodes (a routed writer got its reply and
        returned) before this node has applied it to its projection, and a read that starts
        after a write returned anywhere must see it."""
        if self._appending:  # (no lock to look: an append that starts later was visible nowhere)
            with self._lock:  # wait for that append only: the next one may start at once
                started = self._appends
                while self._appending and self._appends == started:
                    self._appended.wait()
        return decide(command, Decision(self.partition, self._projection, self._node, self._clock()))

    def execute(self, command: Command) -> Any:
        """Decide and commit `command`, returning its result (or raising its error)."""
        pending = Pending(command, waiter=True)
        self.submit(pending)
        self._group_commit.wait(pending)
        return pending.outcome()

    def submit(self, pending: Pending) -> None:
        """Queue a command; the calling thread leads the group commit if nobody does."""
        if self.closed_reason is not None:
            pending.error = NotOwnerError(self.closed_reason)
            self._finish(pending)
            return
        self._group_commit.add(pending)

    def close(self, reason: str) -> None:
        """Refuse new commands (the partition moved away); queued, undecided ones fail with
        `NotOwnerError`, which tells the caller they were not executed and may be re-routed."""
        self.closed_reason = reason
        for p in self._group_commit.drain():
            p.error = NotOwnerError(reason)
            self._finish(p)

    def _commit(self, group: list[Pending]) -> None:
        batch = self._projection.batch()
        d = Decision(self.partition, batch, self._node, self._clock())
        wall = now_ms()
        for p in group:
            if p.deadline_ms is not None and p.deadline_ms <= wall:
                p.error = DataAccessError(f"{type(p.command).__name__} reached the owner of partition "
                                          f"{self.partition} {wall - p.deadline_ms} ms after its caller gave up; "
                                          f"not executed", may_have_written=False)
                log.warning("partition %d: %s", self.partition, p.error)
                continue
            before = len(d.records)
            try:
                p.result = decide(p.command, d)
            except Exception as e:  # CsafError by design; anything else is a bug, kept to its caller
                p.error = e
                if len(d.records) != before:  # its events are folded into the batch: drop the group
                    broken = DataAccessError(f"internal error deciding {type(p.command).__name__}, "
                                             f"nothing was written: {e!r}")
                    for q in group:
                        q.error = broken
                    d.records.clear()
                    break
        if d.records or any(p.origin is not None for p in group):
            self._append(d, batch, group)
        for p in group:
            self._finish(p)

    def _append(self, d: Decision, batch: ProjectionBatch, group: list[Pending]) -> None:
        self._appending = True  # before the append can be visible anywhere
        try:
            self._log.append(self.partition, d.records, batch, group)
        except BaseException as e:
            err = e if isinstance(e, (DataAccessError, NotOwnerError)) else DataAccessError(
                f"append to partition {self.partition} failed, outcome unknown: {e}")
            for p in group:
                p.error = err
        finally:
            with self._lock:
                self._appending = False
                self._appends += 1
                self._appended.notify_all()

    @staticmethod
    def _finish(p: Pending) -> None:
        p.done.set()
