"""A node: the partitions it owns (each with its writer) and the way to reach the others.

Both backends use it. The log adapter tells the node which partitions it owns (after
restoring their projections); commands for an owned partition run through that
partition's writer, reads run on the local projection, and everything else goes to the
owner through the router (Kafka mode only: the embedded node owns every partition).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from csaf_events.core.commands import Command
from csaf_events.core.errors import CsafError, DataAccessError, NotOwnerError
from csaf_events.core.pending import Pending
from csaf_events.core.timings import Timings
from csaf_events.core.writer import PartitionWriter
from csaf_events.log.port import EventLog
from projections.rocks import Projection

log = logging.getLogger(__name__)


def unexpected(command: Command, partition: int, error: BaseException) -> DataAccessError:
    """What a caller gets for an error that is no `CsafError` (a client library's, or a bug)."""
    return DataAccessError(f"{type(command).__name__} on partition {partition} failed, outcome unknown: "
                           f"{type(error).__name__}: {error}", may_have_written=not command.READ_ONLY)


class Router(Protocol):
    def send(self, partition: int, command: Command, timeout: float) -> Any:
        """Have the owner of `partition` decide `command`; its result, or its error raised."""


class Node:
    def __init__(self, node_name: str, projection: Projection, event_log: EventLog,
                 clock: Callable[[], int], router: Router | None = None,
                 request_timeout: float = 30.0, timings: Timings | None = None) -> None:
        self.node_name = node_name
        self.projection = projection
        self.log = event_log
        self.router = router
        self.request_timeout = request_timeout
        self.clock = clock  # the time decisions are stamped with
        self.timings = timings or Timings()
        # The writers of the partitions the log serves, made and closed on its callbacks: which
        # partitions are served is the log's to say (`owned`, `serves`), not this dict's.
        self._writers: dict[int, PartitionWriter] = {}
        self._lock = threading.Lock()
        self._fanout = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"csaf-fanout-{node_name}")

    def start(self) -> None:
        self.log.set_ownership_listener(self.assigned, self.revoked)

    def assigned(self, partitions: list[int]) -> None:
        with self._lock:
            for p in partitions:
                self._writers[p] = PartitionWriter(p, self.projection, self.log, self.node_name, self.clock,
                                                self.timings)

    def revoked(self, partitions: list[int]) -> None:
        with self._lock:
            gone = [self._writers.pop(p) for p in partitions if p in self._writers]
        for w in gone:
            w.close(f"partition {w.partition} moved away from node {self.node_name!r}")

    def owned(self) -> list[int]:
        """The partitions decided here now: the log's ownership is the one holder of that."""
        return self.log.owned()

    def serves(self, partition: int) -> bool:
        """Whether `partition` is decided here now (the log says)."""
        return self.log.serves(partition)

    def writer(self, partition: int) -> PartitionWriter | None:
        return self._writers.get(partition)

    def queue_group(self, partition: int, group: list[Pending]) -> bool:
        """Queue writes for `partition` together where this node decides it and its log runs
        the rounds on a thread of its own (Kafka), no thread waiting for them: each is
        answered through its ``on_done`` once committed (`PartitionWriter.queue_all`).
        False, and nothing queued, elsewhere: `execute` then."""
        w = self._writers.get(partition)
        if w is None or not w.rounds_run_by_log:
            return False
        w.queue_all(group)
        return True

    def read_at_once(self, partition: int, command: Command) -> tuple[bool, Any]:
        """A read-only command answered here without waiting, where this node decides the
        partition and has applied every commit it knows of (`PartitionWriter.read_at_once`):
        (True, its result); else (False, None): `execute` then."""
        w = self._writers.get(partition)
        if w is None:
            return False, None
        return w.read_at_once(command)

    def execute(self, partition: int, command: Command) -> Any:
        """Decide `command` on the owner of `partition`, wherever it is."""
        deadline = time.monotonic() + self.request_timeout
        while True:
            w = self._writers.get(partition)
            try:
                if w is not None:
                    return w.read(command) if command.READ_ONLY else w.execute(command)
                if self.router is None:
                    raise NotOwnerError(f"node {self.node_name!r} owns no partition {partition}")
                t0 = time.perf_counter()
                result = self.router.send(partition, command, max(0.1, deadline - time.monotonic()))
                self.timings.add("routed_call", time.perf_counter() - t0)
                return result
            except NotOwnerError as e:  # not executed: ownership moved, try again where it is now
                if time.monotonic() >= deadline:
                    raise DataAccessError(f"no owner for partition {partition} answered within "
                                          f"{self.request_timeout:.0f}s: {e}", may_have_written=False) from e
                time.sleep(0.05)
            except CsafError:
                raise
            except Exception as e:  # a client library's error: the caller gets a CsafError
                raise unexpected(command, partition, e) from e

    def execute_all(self, calls: list[tuple[int, Command]]) -> list[Any]:
        """Decide commands on several partitions at once (cluster-wide calls); results in order."""
        if len(calls) <= 1:
            return [self.execute(p, c) for p, c in calls]
        futures = [self._fanout.submit(self.execute, p, c) for p, c in calls]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.revoked(list(self._writers))
        self._fanout.shutdown(wait=True)
