"""One writer per partition, with group commit and pipelined appends.

A MatsSocket node calls the store from many threads. Calls on one partition must be
decided one after another against the latest state (that is what makes uniqueness
checks exact), but calls on different partitions must not wait on each other, and a
burst of calls should share one append. Each call joins its partition's group commit
(`csaf_events.core.group_commit`): the leader decides everything queued (each command sees the
events of the ones before it) and hands the events to `EventLog.append`.

The leader does not wait for that append to be durable: the next group is decided at once
against a tentative state, the batch of the append still in flight (Kafka Streams keeps
uncommitted state the same way), so a Kafka transaction carries everything decided while
the previous one committed. Nobody is answered before the append their answer depends on
is durable: a group's callers are answered when its append completes, in order, and a
group that wrote nothing waits for the appends decided before it. When an append fails,
everything decided after it on its tentative state fails too (`NotOwnerError`: not
executed, retried) and the next decision starts again from the projection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from csaf_events.core.clock import now_ms
from csaf_events.core.commands import Command, Decision, decide
from csaf_events.core.errors import DataAccessError, NotOwnerError
from csaf_events.core.group_commit import GroupCommit
from csaf_events.core.pending import Pending
from csaf_events.core.timings import Timings
from csaf_events.log.port import EventLog
from projections.rocks import Projection, ProjectionBatch

log = logging.getLogger(__name__)


class _Ticket:
    """A decided group on its way: answered when its append (if any) and every append
    decided before it are durable."""

    __slots__ = ("appends", "batch", "chain", "done", "error", "group")

    def __init__(self, group: list[Pending], batch: ProjectionBatch, chain: int, appends: bool) -> None:
        self.group = group
        self.batch = batch
        self.chain = chain  # the tentative state it was decided on (see PartitionWriter._chain)
        self.appends = appends
        self.done = not appends  # its append (if it has one) completed
        self.error: BaseException | None = None


class PartitionWriter:
    def __init__(self, partition: int, projection: Projection, log: EventLog, node_name: str,
                 clock: Callable[[], int], timings: Timings | None = None, max_batch: int = 512) -> None:
        self.partition = partition
        self._projection = projection
        self._log = log
        self._node = node_name
        self._clock = clock
        self._timings = timings or Timings()
        self._lock = threading.Lock()
        runner = log.round_runner(partition)
        #: whether the log runs this partition's rounds on a thread of its own (Kafka), so that a
        #: command can be queued without a caller to lead its round (`queue_all`)
        self.rounds_run_by_log = runner is not None
        self._group_commit: GroupCommit[Pending] = GroupCommit(
            self._commit, max_batch, name=f"csaf-commit-{partition}", runner=runner)
        self._in_flight: deque[_Ticket] = deque()  # decided, not answered yet, in decision order
        self._chain = 0  # moves on when an append fails: what was decided on its state is void
        self._issued = 0  # appends handed to the log so far
        self._committed = 0  # of them, durable and so visible to others (the log says so), so far
        self._completed = 0  # appends completed so far (in order)
        self._progress = threading.Condition(self._lock)
        self.closed_reason: str | None = None

    def read(self, command: Command) -> Any:
        """Answer a read-only command from the projection.

        A read waits for the appends of this partition that are committed but not yet in
        the projection when it starts: in Kafka mode a transaction is visible to other nodes
        (in the log, or a routed writer got its reply and returned) before this node has
        applied it to its projection, and a read that starts after a write returned anywhere
        must see it. An append not committed yet was visible nowhere, so a read does not
        wait for it (it used to, for a whole transaction cycle)."""
        if self._completed < self._committed:  # (no lock to look: a later commit was visible nowhere)
            with self._lock:
                target = self._committed
                while self._completed < target and self.closed_reason is None:
                    self._progress.wait(0.5)
        return self._read(command)

    def read_at_once(self, command: Command) -> tuple[bool, Any]:
        """`read` where it would not wait (every append known committed is applied): (True,
        its result); else (False, None), for a caller that must not wait (an event loop)."""
        if self._completed < self._committed:
            return False, None
        return True, self._read(command)

    def _read(self, command: Command) -> Any:
        # a read-only command emits nothing: the projection stands in for a batch it only reads
        view = cast(ProjectionBatch, self._projection)
        return decide(command, Decision(self.partition, view, self._node, self._clock()))

    def execute(self, command: Command) -> Any:
        """Decide and commit `command`, returning its result (or raising its error)."""
        pending = Pending(command, waiter=True)
        self.submit(pending)
        self._group_commit.wait(pending)
        return pending.outcome()

    def queue_all(self, group: list[Pending]) -> None:
        """Queue `group` together, no thread waiting for it: a caller that gathers its
        commands itself, answered through each one's ``on_done`` once it is committed
        (`csaf_events.async_store`). Where the callers lead the rounds (embedded), the
        group's hand-off thread leads this one."""
        if self.closed_reason is not None:
            for p in group:
                p.error = NotOwnerError(self.closed_reason)
                self._finish(p)
            return
        now = time.perf_counter()
        for p in group:
            p.queued_at = now
        self._group_commit.add_all(group)

    def submit(self, pending: Pending) -> None:
        """Queue a command; the calling thread leads the group commit if nobody does."""
        if self.closed_reason is not None:
            pending.error = NotOwnerError(self.closed_reason)
            self._finish(pending)
            return
        pending.queued_at = time.perf_counter()
        self._group_commit.add(pending)

    def close(self, reason: str) -> None:
        """Refuse new commands (the partition moved away); queued, undecided ones fail with
        `NotOwnerError`, which tells the caller they were not executed and may be re-routed.
        Appends in flight are settled by the log (it refuses those of a closed writer)."""
        self.closed_reason = reason
        with self._lock:
            self._progress.notify_all()
        for p in self._group_commit.drain():
            p.error = NotOwnerError(reason)
            self._finish(p)

    def _commit(self, group: list[Pending]) -> None:
        start = time.perf_counter()
        queued = 0.0
        for p in group:
            queued += start - p.queued_at
        with self._lock:
            chain = self._chain
            parent = next((t.batch for t in reversed(self._in_flight) if t.chain == chain), self._projection)
        batch = ProjectionBatch(parent)
        d = Decision(self.partition, batch, self._node, self._clock())
        wall = now_ms()
        for p in group:
            late = p.late_ms(wall)
            if late is not None:
                p.error = DataAccessError(f"{type(p.command).__name__} reached the owner of partition "
                                          f"{self.partition} {late} ms after its caller gave up; "
                                          f"not executed", may_have_written=False)
                log.warning("partition %d: %s", self.partition, p.error)
                continue
            before = len(d.records)
            try:
                p.result = decide(p.command, d)
            except Exception as e:  # noqa: BLE001 - CsafError by design; anything else is a bug, kept to its caller
                p.error = e
                if len(d.records) != before:  # its events are folded into the batch: drop the group
                    broken = DataAccessError(f"internal error deciding {type(p.command).__name__}, "
                                             f"nothing was written: {e!r}", may_have_written=False)
                    for q in group:
                        q.error = broken
                    d.records.clear()
                    batch = ProjectionBatch(parent)
                    break
        self._timings.group(queued, time.perf_counter() - start, len(group))
        appends = bool(d.records) or any(p.answered_in_append for p in group)
        ticket = _Ticket(group, batch, chain, appends)
        with self._lock:
            self._in_flight.append(ticket)
            if appends:
                self._issued += 1
                ready = []
            else:
                ready = self._settled()
        if not appends:
            self._answer(ready)
            return
        self._log.append(self.partition, d.records, batch, group,
                         on_done=lambda error: self._appended(ticket, error),
                         valid=lambda: ticket.chain == self._chain and self.closed_reason is None,
                         on_committed=self._visible)

    def _visible(self) -> None:
        """The log says an append is durable, its batch not written yet (see `read`)."""
        with self._lock:
            self._committed += 1

    def _appended(self, ticket: _Ticket, error: BaseException | None) -> None:
        """The log is done with `ticket`'s append: durable and applied, or failed."""
        if error is not None and not isinstance(error, (DataAccessError, NotOwnerError)):
            error = DataAccessError(f"append to partition {self.partition} failed, outcome unknown: {error!r}")
        with self._lock:
            self._completed += 1
            ticket.done, ticket.error = True, error
            if error is not None and ticket.chain == self._chain:
                self._chain += 1  # whatever was decided on this append's state is void: appends
                after = False  # are refused by `valid`, answers without one fail here
                for t in self._in_flight:
                    after = after or t is ticket
                    if after and t.chain == ticket.chain and not t.appends and t.error is None:
                        t.error = NotOwnerError(f"partition {self.partition}: decided on a write that failed; "
                                                f"not executed")
            ready = self._settled()
            self._progress.notify_all()
        self._answer(ready)

    def _settled(self) -> list[_Ticket]:
        """Take the tickets at the head that can be answered now: done, and everything
        decided before them done. (Under the lock.)"""
        ready = []
        while self._in_flight and self._in_flight[0].done:
            ready.append(self._in_flight.popleft())
        if ready and self._in_flight and all(t.error is None for t in ready):
            self._in_flight[0].batch.parent = self._projection  # what it read through is written now
        return ready

    def _answer(self, tickets: list[_Ticket]) -> None:
        for t in tickets:
            for p in t.group:
                if t.error is not None:
                    p.error = t.error
                self._finish(p)

    @staticmethod
    def _finish(p: Pending) -> None:
        p.done.set()
        if p.on_done is not None:
            p.on_done(p)
