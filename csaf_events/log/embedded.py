"""The embedded log: a durable, partitioned log in the node's own RocksDB.

It lives in a column family of the projection's database, so appending events and
updating the projection is a single atomic RocksDB write: after a crash (even kill -9)
either both happened or neither. One process owns every partition; this is the
single-node mode, not a cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import orjson
from rocksdict import ReadOptions

from csaf_events.errors import CsafError, DataAccessError
from csaf_events.events import Record
from csaf_events.log.port import LogEntry
from projections.rocks import Checkpoint, Projection, ProjectionBatch

if TYPE_CHECKING:
    from csaf_events.writer import Pending

LOG_CF = "log"
_GENERATION_KEY = b"\xff\xffgeneration"
_PARTITIONS_KEY = b"\xff\xffpartitions"
_MAX_OFFSET = b"\xff" * 8


def _log_key(partition: int, offset: int) -> bytes:
    return partition.to_bytes(2, "big") + offset.to_bytes(8, "big")


def encode_entry(record: Record) -> bytes:
    """headers JSON, newline, key, newline, value (JSON never holds a raw newline)."""
    head = orjson.dumps([record.value is not None, [[k, v.decode()] for k, v in record.headers]])
    return head + b"\n" + record.key + b"\n" + (record.value or b"")


def decode_entry(partition: int, offset: int, raw: bytes) -> LogEntry:
    head, key, value = raw.split(b"\n", 2)
    has_value, headers = orjson.loads(head)
    return LogEntry(partition, offset, key, value if has_value else None,
                    tuple((k, v.encode()) for k, v in headers))


class EmbeddedLog:
    def __init__(self, projection: Projection, partitions: int) -> None:
        self.partitions = partitions
        self._projection = projection
        self._db = projection.db.get_column_family(LOG_CF)
        self._cf = projection.column_family(LOG_CF)
        gen = self._db.get(_GENERATION_KEY)
        if gen is None:
            gen = uuid.uuid4().hex.encode()
            self._db.put(_GENERATION_KEY, gen)
        self._generation = gen.decode()
        stored = self._db.get(_PARTITIONS_KEY)
        if stored is None:
            self._db.put(_PARTITIONS_KEY, str(partitions).encode())
        elif int(stored) != partitions:
            raise CsafError(f"the embedded log in {projection.path} has {int(stored)} partitions, "
                            f"not the {partitions} asked for; sessions would map to other partitions")
        self._next = [self._find_end(p) for p in range(partitions)]

    def _find_end(self, partition: int) -> int:
        it = self._db.iter(ReadOptions())
        it.seek_for_prev(partition.to_bytes(2, "big") + _MAX_OFFSET)
        last = it.key() if it.valid() else b""
        del it  # a live iterator keeps the database (and its lock) open
        if last[:2] == partition.to_bytes(2, "big") and len(last) == 10:
            return int.from_bytes(last[2:], "big") + 1
        return 0

    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending] = ()) -> None:
        offset = self._next[partition]
        wb, cf = batch.write_batch, self._cf
        for r in records:
            wb.put(_log_key(partition, offset), encode_entry(r), cf)
            offset += 1
        try:
            self._projection.write(batch, {partition: Checkpoint(offset, self._generation)})
        except Exception as e:
            raise DataAccessError(f"embedded log write to partition {partition} failed: {e}") from e
        self._next[partition] = offset

    def read(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        stop = self._next[partition] if end is None else end
        prefix = partition.to_bytes(2, "big")
        it = self._db.iter(ReadOptions())
        try:
            it.seek(_log_key(partition, start))
            while it.valid():
                k = it.key()
                if k[:2] != prefix or len(k) != 10:
                    return
                offset = int.from_bytes(k[2:], "big")
                if offset >= stop:
                    return
                yield decode_entry(partition, offset, it.value())
                it.next()
        finally:
            del it

    def end_offset(self, partition: int) -> int:
        return self._next[partition]

    def generation(self, partition: int) -> str:
        return self._generation

    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        on_assigned(list(range(self.partitions)))

    def close(self) -> None:
        """Release the column family; the database itself belongs to the projection."""
        self._db.close()
        self._db = self._cf = None  # handles keep the database (and its lock) open
