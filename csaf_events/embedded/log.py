"""The embedded log: a durable, partitioned log in the node's own RocksDB.

It lives in a column family of the projection's database, so appending events and
updating the projection is a single atomic RocksDB write: after a crash (even kill -9)
either both happened or neither. One process owns every partition; this is the
single-node mode, not a cluster.

Like the compacted Kafka topic it stands in for, it is compacted (`compact`): records
superseded by a later record of the same key are dropped once older than the audit
window, tombstones once older than the window plus their retention. Offsets are never
reused; reads skip the gaps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import NamedTuple

import orjson
from rocksdict import ReadOptions, WriteBatch

from csaf_events.core.errors import CsafError, DataAccessError
from csaf_events.core.events import Record, header
from csaf_events.core.pending import Pending
from csaf_events.log.entries import Chunk, LogEntry, chunked
from csaf_events.log.port import OnCommitted, OnDone
from csaf_events.log.status import LogStatus
from csaf_events.topics import TopicSpec
from projections.rocks import Checkpoint, Projection, ProjectionBatch

LOG_CF = "log"
_GENERATION_KEY = b"\xff\xffgeneration"
_PARTITIONS_KEY = b"\xff\xffpartitions"
_END_KEY = b"\xff\xffend"  # + partition: the end offset, kept when compaction removed the last records
_MAX_OFFSET = b"\xff" * 8


def _log_key(partition: int, offset: int) -> bytes:
    return partition.to_bytes(2, "big") + offset.to_bytes(8, "big")


def _end_key(partition: int) -> bytes:
    return _END_KEY + partition.to_bytes(2, "big")


class CompactionPolicy(NamedTuple):
    """When compaction may drop records: Kafka's `min.compaction.lag.ms` (the audit window)
    and `delete.retention.ms` (how long a tombstone outlives it)."""

    audit_window_ms: int
    tombstone_retention_ms: int

    @classmethod
    def of(cls, spec: TopicSpec) -> CompactionPolicy | None:
        """The events topic's policy from topics.yaml; None when it is not compacted."""
        if "compact" not in spec.cleanup_policy.split(","):
            return None
        return cls(int(spec.configs.get("min.compaction.lag.ms", 0)),
                   int(spec.configs.get("delete.retention.ms", 86_400_000)))


def _entry_head(has_value: bool, headers: tuple[tuple[str, bytes], ...]) -> bytes:
    """An entry is: headers JSON, newline, key, newline, value (JSON never holds a raw newline)."""
    return orjson.dumps([has_value, [[k, v.decode()] for k, v in headers]]) + b"\n"


def decode_entry(partition: int, offset: int, raw: bytes) -> LogEntry:
    head, key, value = raw.split(b"\n", 2)
    has_value, headers = orjson.loads(head)
    return LogEntry(partition, offset, key, value if has_value else None,
                    tuple((k, v.encode()) for k, v in headers))


class EmbeddedLog:

    def __init__(self, projection: Projection, partitions: int | None) -> None:
        """`partitions` None: as many as the log has (for tools that open an existing log)."""
        self._projection = projection
        self.topic = f"the embedded log in {projection.path}"
        self._db = projection.db.get_column_family(LOG_CF)
        self._cf = projection.column_family(LOG_CF)
        gen = self._db.get(_GENERATION_KEY)
        stored = self._db.get(_PARTITIONS_KEY)
        if partitions is None:
            if stored is None or gen is None:
                raise CsafError(f"there is no embedded log in {projection.path}")
            partitions = int(stored)
        if gen is None:
            gen = uuid.uuid4().hex.encode()
            self._db.put(_GENERATION_KEY, gen)
        self._generation = gen.decode()
        if stored is None:
            self._db.put(_PARTITIONS_KEY, str(partitions).encode())
        elif int(stored) != partitions:
            raise CsafError(f"the embedded log in {projection.path} has {int(stored)} partitions, "
                            f"not the {partitions} asked for; sessions would map to other partitions")
        self.partitions = partitions
        self._next = [self._find_end(p) for p in range(partitions)]
        # Encoded entry heads by headers: the events of a millisecond share their headers.
        # Appends of different partitions may share it: a lost race costs one more encoding.
        self._heads: dict[tuple[bool, tuple[tuple[str, bytes], ...]], bytes] = {}

    def _find_end(self, partition: int) -> int:
        it = self._db.iter(ReadOptions())
        it.seek_for_prev(partition.to_bytes(2, "big") + _MAX_OFFSET)
        last = it.key() if it.valid() else b""
        del it  # a live iterator keeps the database (and its lock) open
        after_last = 0
        if last[:2] == partition.to_bytes(2, "big") and len(last) == 10:
            after_last = int.from_bytes(last[2:], "big") + 1
        marker = self._db.get(_end_key(partition))
        return max(after_last, 0 if marker is None else int.from_bytes(marker, "big"))

    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending] = (), *, on_done: OnDone | None = None,
               valid: Callable[[], bool] | None = None, on_committed: OnCommitted | None = None) -> None:
        """Written before it returns (one RocksDB write: log and projection together), so
        `valid` has nothing to refuse (nothing is ever decided on an append in flight) and
        `on_committed` is never called (nothing is durable before its batch is written)."""
        try:
            self._write(partition, records, batch)
        except Exception as e:  # the caller (or on_done) gets it
            if on_done is None:
                raise
            on_done(e)
            return
        if on_done is not None:
            on_done(None)

    def _write(self, partition: int, records: Sequence[Record], batch: ProjectionBatch) -> None:
        offset = self._next[partition]
        wb, cf = batch.write_batch, self._cf
        heads = self._heads
        if len(heads) > 256:
            heads.clear()
        for r in records:
            has_value = r.value is not None
            head = heads.get((has_value, r.headers))
            if head is None:
                head = heads[has_value, r.headers] = _entry_head(has_value, r.headers)
            wb.put(_log_key(partition, offset), head + r.key + b"\n" + (r.value or b""), cf)
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

    def read_chunks(self, partition: int, start: int = 0, end: int | None = None) -> Generator[Chunk, None, None]:
        return chunked(self.read(partition, start, end))

    def end_offset(self, partition: int) -> int:
        return self._next[partition]

    def generation(self, partition: int) -> str:
        return self._generation

    def compact(self, now_ms: int, audit_window_ms: int, tombstone_retention_ms: int) -> int:
        """Drop what Kafka's log cleaner would; returns how many records were dropped.

        A record goes when a later record of the same key exists and it is older than the
        audit window; a tombstone that is the last record of its key goes when older than
        the window plus `tombstone_retention_ms`. The fold of what is left equals the fold
        of the whole log, because a key's last record alone gives its entity's state."""
        superseded_before = now_ms - audit_window_ms
        tombstones_before = superseded_before - tombstone_retention_ms
        return sum(self._compact_partition(p, superseded_before, tombstones_before) for p in range(self.partitions))

    def _compact_partition(self, partition: int, superseded_before: int, tombstones_before: int) -> int:
        end = self._next[partition]  # records appended meanwhile are left for the next run
        last = {e.key: e.offset for e in self.read(partition, 0, end)}
        wb, dropped = WriteBatch(raw_mode=True), 0
        log_time = 0  # the largest timestamp so far: a clock that stepped back cannot make a record look older
        kept: set[bytes] = set()  # keys with a record kept by this pass
        for e in self.read(partition, 0, end):
            log_time = max(log_time, int(header(e.headers, "ts") or 0))
            if last[e.key] != e.offset:
                drop = log_time < superseded_before
            else:  # a tombstone goes only with everything before it, or the entity would come back
                drop = e.value is None and log_time < tombstones_before and e.key not in kept
            if drop:
                wb.delete(_log_key(partition, e.offset), self._cf)
                dropped += 1
            else:
                kept.add(e.key)
        if dropped:
            wb.put(_end_key(partition), end.to_bytes(8, "big"), self._cf)  # offsets are never reused
            self._projection.db.write(wb)
        return dropped

    def round_runner(self, partition: int) -> None:
        """None: an append is written before it returns, so the callers lead their own rounds."""
        return None

    def owned(self) -> list[int]:
        return list(range(self.partitions))

    def serves(self, partition: int) -> bool:
        return 0 <= partition < self.partitions

    def status(self) -> LogStatus:
        """Every partition, always: one node owns them all, no takeovers, no transactions to fence."""
        return LogStatus(assigned=self.owned(), takeovers=[], fenced=False)

    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        on_assigned(list(range(self.partitions)))

    def close(self) -> None:
        """Release the column family; the database itself belongs to the projection."""
        self._db.close()
        del self._db, self._cf  # handles keep the database (and its lock) open
