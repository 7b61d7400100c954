"""The log port: what command handling and projections need from a log.

Two adapters implement it: `EmbeddedLog` (a durable RocksDB log in this process, owning
every partition) and `KafkaLog` (a compacted Kafka topic, partitions owned through a
consumer group). Command handling is written once against this port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from csaf_events.events import Record
from projections.rocks import ProjectionBatch

if TYPE_CHECKING:
    from csaf_events.writer import Pending


class LogEntry(NamedTuple):
    """A record read back from the log, with its position."""

    partition: int
    offset: int
    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class Chunk(NamedTuple):
    """Consecutive records of one partition with what folding them needs (no headers)."""

    next_offset: int  # the offset after the last record
    keys: list[bytes]
    values: list[bytes | None]


def chunked(entries: Iterator[LogEntry], size: int = 5_000) -> Iterator[Chunk]:
    """`read_chunks` for a log whose `read` is cheap already."""
    keys: list[bytes] = []
    values: list[bytes | None] = []
    last = -1
    for e in entries:
        keys.append(e.key)
        values.append(e.value)
        last = e.offset
        if len(keys) == size:
            yield Chunk(last + 1, keys, values)
            keys, values = [], []
    if keys:
        yield Chunk(last + 1, keys, values)


class EventLog(Protocol):
    partitions: int

    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending]) -> None:
        """Durably append `records` to `partition` and write `batch` (their fold) to the projection.

        Only the partition's owner calls this, one call at a time per partition. `group`
        is the decided commands; routed ones (with an `origin`) get their replies sent
        atomically with the records. On return all is durable; on `DataAccessError` the
        outcome of the append is unknown.
        """

    def read(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        """Records of `partition` from offset `start` up to (excluding) `end`, or the current end."""

    def read_chunks(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[Chunk]:
        """The same records without headers, a list at a time: the restore's way to read,
        paying per record only for what the fold uses."""

    def end_offset(self, partition: int) -> int:
        """The offset the next appended record of `partition` will get (committed records only)."""

    def generation(self, partition: int) -> str:
        """Identifies this incarnation of the log, so a projection of a re-created log is detected."""

    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        """Callbacks for partitions this node starts / stops owning."""

    def close(self) -> None: ...
