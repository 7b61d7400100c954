"""The log port: what command handling needs from a log (reading it back, the plain types
in `csaf_events.log.entries`, is what the projections need).

Two adapters implement it: `EmbeddedLog` (a durable RocksDB log in this process, owning
every partition) and `KafkaLog` (a compacted Kafka topic, partitions owned through a
consumer group). Command handling is written once against this port.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from csaf_events.events import Record
from csaf_events.log.entries import Chunk, LogEntry, LogReader
from projections.rocks import ProjectionBatch

if TYPE_CHECKING:
    from csaf_events.writer import Pending

__all__ = ["Chunk", "EventLog", "LogEntry", "LogReader"]  # the adapters take the plain types from here too


class EventLog(LogReader, Protocol):
    """A log a node appends to: a reader that also takes appends and says what it owns."""

    partitions: int

    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending]) -> None:
        """Durably append `records` to `partition` and write `batch` (their fold) to the projection.

        Only the partition's owner calls this, one call at a time per partition. `group`
        is the decided commands; routed ones (with an `origin`) get their replies sent
        atomically with the records. On return all is durable; on `DataAccessError` the
        outcome of the append is unknown.
        """

    def owned(self) -> list[int]:
        """The partitions this node decides now (appends are accepted for them)."""

    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        """Callbacks for partitions this node starts / stops owning."""

    def close(self) -> None: ...
