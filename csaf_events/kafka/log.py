"""The Kafka log adapter (`EventLog`) on the events topic.

Appends go through the node's transaction lanes (`transaction`), reads through the reader
(`reader`), and which partitions this node may append to is the ownership's answer
(`ownership`): this class only puts the three behind the log port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from csaf_events.core.errors import ProducerFencedError, TransactionAbortedError
from csaf_events.core.events import Record
from csaf_events.core.group_commit import Runner
from csaf_events.core.pending import Pending
from csaf_events.core.timings import Timings
from csaf_events.kafka.ownership import Ownership
from csaf_events.kafka.reader import KafkaReader
from csaf_events.kafka.transaction import NodeTransaction
from csaf_events.log.entries import Chunk, LogEntry
from csaf_events.log.port import OnCommitted, OnDone
from csaf_events.log.status import LogStatus
from csaf_events.topics import Topics
from projections.rebuild import catch_up
from projections.rocks import Projection, ProjectionBatch

#: Seconds a transaction aborted (the owners group moved on from this member) counts as
#: fenced: a rebalance settles within seconds, a node still refused after that keeps failing anew.
GROUP_MOVED_FENCE_S = 60.0


class KafkaLog:
    def __init__(self, node_name: str, client_config: dict[str, Any], topics: Topics, projection: Projection,
                 generation: str, timeout: float, timings: Timings, reply: Callable[[str, bytes, bytes], None],
                 lanes: int = 1) -> None:
        self.partitions = topics.events.partitions
        self._timings = timings
        self._projection = projection
        self._generation = generation
        self._verified: set[int] = set()  # partitions whose projection was checked by this process
        self.reader = KafkaReader(client_config, topics.events.name, generation,
                                  f"{topics.namespace}.reader.{node_name}", timeout)
        self.topic = self.reader.topic
        self.ownership = Ownership(node_name, client_config, topics, timeout, self.restore)
        self.transactions = [NodeTransaction(node_name, client_config, topics, projection, self.ownership,
                                             generation, timeout, timings, reply, lane) for lane in range(lanes)]

    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        self.ownership.start(on_assigned, on_revoked)

    def restore(self, partition: int) -> int:
        """Bring the projection of `partition` up to the committed end of the log; returns the
        number of events applied. The first time in this process the projection is also
        checked for corruption (see `projections.rebuild.catch_up`)."""
        result = catch_up(self._projection, self.reader, partition, verify=partition not in self._verified)
        self._verified.add(partition)
        return result.events

    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending] = (), *, on_done: OnDone | None = None,
               valid: Callable[[], bool] | None = None, on_committed: OnCommitted | None = None) -> None:
        self.transaction_for(partition).append(partition, records, batch, group, on_done=on_done, valid=valid,
                                               on_committed=on_committed)

    def round_runner(self, partition: int) -> Runner:
        """The committer of the partition's lane: it runs the rounds before each transaction."""
        return self.transaction_for(partition).lead

    def transaction_for(self, partition: int) -> NodeTransaction:
        """The lane that commits `partition` (always the same one: its appends stay in order)."""
        return self.transactions[partition % len(self.transactions)]

    def status(self) -> LogStatus:
        """The partitions assigned, the last takeover of each, fenced or not, the last errors."""
        ownership = self.ownership
        failure = next((t.last_failure for t in self.transactions if t.last_failure is not None), None)
        fenced = self._timings.last_transaction_ok is False and (
            isinstance(failure, ProducerFencedError)
            or (isinstance(failure, TransactionAbortedError)
                and time.monotonic() - self._timings.last_transaction_at < GROUP_MOVED_FENCE_S))
        return LogStatus(assigned=ownership.assigned(),
                         takeovers=sorted(ownership.takeovers.values(), key=lambda t: t.partition),
                         fenced=fenced,
                         last_transaction_error=None if failure is None else f"{type(failure).__name__}: {failure}",
                         last_poll_error=ownership.last_poll_error)

    def read(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        return self.reader.read(partition, start, end)

    def read_chunks(self, partition: int, start: int = 0, end: int | None = None) -> Generator[Chunk, None, None]:
        return self.reader.read_chunks(partition, start, end)

    def end_offset(self, partition: int) -> int:
        return self.reader.end_offset(partition)

    def generation(self, partition: int) -> str:
        return self._generation

    def owned(self) -> list[int]:
        return self.ownership.owned()

    def serves(self, partition: int) -> bool:
        return self.ownership.serves(partition)

    def close(self) -> None:
        self.ownership.close()
        self.reader.close()
        for t in self.transactions:
            t.close()
