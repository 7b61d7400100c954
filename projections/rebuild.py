"""Rebuilding and checking projections from the log: the log is the source of truth.

`catch_up` is the one way a projection is brought in line with its log, on every backend:
at boot (embedded), on taking over a partition (Kafka), after an unknown commit outcome,
and by `csaf rebuild`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from csaf_events.core.events import UnknownEventError, event_class, known_types, known_value, known_values
from csaf_events.log.entries import Chunk, LogEntry, LogReader
from projections import keys
from projections.fold import Changes, fold_records
from projections.integrity import first_problem
from projections.rocks import Checkpoint, Projection

log = logging.getLogger(__name__)

RESTORE_BATCH = 50_000  # records folded in memory per RocksDB write while restoring
NO_PROJECTION = "there is no projection of it here yet"


class CatchUp(NamedTuple):
    """What bringing one partition's projection in line with the log did."""

    partition: int
    events: int  # records folded
    seconds: float
    reason: str | None  # why it was refolded from the start of the log; None: only the tail was applied


def apply_chunks(projection: Projection, partition: int, chunks: Iterable[Chunk], generation: str,
                 progress: Callable[[int], None] | None = None) -> int:
    """Fold chunks of log records into the projection; returns the count.

    Records are folded in memory first and written every `RESTORE_BATCH` records with the
    checkpoint after the last one, without RocksDB's WAL (the log has them all), and the
    projection is flushed at the end: after a crash, the projection holds a prefix of the
    writes with the checkpoint that goes with it."""
    with _PAUSED_COLLECTOR:
        return _apply_chunks(projection, partition, chunks, generation, progress)


def _apply_chunks(projection: Projection, partition: int, chunks: Iterable[Chunk], generation: str,
                  progress: Callable[[int], None] | None) -> int:
    n = pending = 0
    changes = Changes()
    next_offset = 0
    for chunk in chunks:
        fold_records(chunk.keys, chunk.values, partition, changes)
        n += len(chunk.keys)
        pending += len(chunk.keys)
        next_offset = chunk.next_offset
        if pending >= RESTORE_BATCH:
            _write(projection, partition, changes, Checkpoint(next_offset, generation))
            changes = Changes()
            if progress:
                progress(pending)
            pending = 0
    if pending:
        _write(projection, partition, changes, Checkpoint(next_offset, generation))
        if progress:
            progress(pending)
    if n:
        projection.flush()
    return n


class _CollectorPause:
    """Python's cyclic garbage collector paused while folding: a restore allocates millions
    of short-lived objects and makes no cycles, and the collector's passes over them cost
    10-25 % of a restore. Concurrent restores share one pause; the collector runs again
    when the last one ends (if it ran before the first began)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._was_enabled:
                gc.enable()


_PAUSED_COLLECTOR = _CollectorPause()


def _write(projection: Projection, partition: int, changes: Changes, checkpoint: Checkpoint) -> None:
    projection.write(changes.into(projection.batch(track=False)), {partition: checkpoint}, wal=False)


def rebuild_reason(projection: Projection, partition: int, end: int, generation: str,
                   verify: bool = True) -> str | None:
    """Why the projection of `partition` cannot be caught up from its checkpoint, or None."""
    try:
        cp = projection.checkpoint(partition)
    except Exception as e:  # noqa: BLE001 - a torn or foreign value: nothing in this partition can be trusted
        return f"its checkpoint is unreadable (corrupt: {e})"
    if cp is None:
        if has_state(projection, partition):
            return "it has state but no checkpoint"
        return NO_PROJECTION if end > 0 else None
    if cp.generation != generation:
        return (f"it was built from an earlier generation of the log ({cp.generation}; the log is now "
                f"{generation}): the log was deleted and re-created")
    if cp.next_offset > end:
        return f"it is ahead of the log (checkpoint at offset {cp.next_offset}, the log ends at {end})"
    problem = first_problem(projection, partition) if verify else None
    return None if problem is None else f"it is corrupt ({problem})"


def catch_up(projection: Projection, log_reader: LogReader, partition: int, *, verify: bool = True,
             force: str | None = None, progress: Callable[[int], None] | None = None) -> CatchUp:
    """Bring the projection of `partition` up to the end of the log.

    Applies only the records after its checkpoint when it can be trusted; drops it and folds
    the whole log when it is missing, corrupt (`verify` scans it), ahead of the log, from
    another generation of the log, or when `force` gives a reason. Logs why and how long."""
    t0 = time.monotonic()
    end = log_reader.end_offset(partition)
    generation = log_reader.generation(partition)
    reason = force or rebuild_reason(projection, partition, end, generation, verify)
    if reason is not None:
        level = logging.INFO if force or reason == NO_PROJECTION else logging.WARNING
        log.log(level, "partition %d: rebuilding the projection from the log because %s", partition, reason)
        projection.drop_partition(partition)
        start = 0
    else:
        cp = projection.checkpoint(partition)
        start = 0 if cp is None else cp.next_offset
    n = 0
    if start < end:
        n = apply_chunks(projection, partition, checked_chunks(log_reader, partition, start, end), generation, progress)
        # the last records may be compaction gaps or transaction markers: the checkpoint is the end
        projection.write(projection.batch(track=False), {partition: Checkpoint(end, generation)})
    took = time.monotonic() - t0
    if reason is not None:
        log.log(level, "partition %d: projection rebuilt from the log (%s): %d events in %.3fs (%.0f events/s)",
                partition, reason, n, took, n / took if took > 0 else 0.0)
    return CatchUp(partition, n, took, reason)


def checked_chunks(log_reader: LogReader, partition: int, start: int, end: int) -> Iterator[Chunk]:
    """The records from `start` to `end`, a chunk at a time, each checked to be of a type and
    schema version this code reads; at the first that is not, `UnknownEventError` naming
    topic, partition and offset, before anything of its chunk is folded. Chunks that come
    without headers (Kafka's: librdkafka builds them per message, which would slow a restore
    by a fifth) are checked by their values alone (`known_values`)."""
    while start < end:
        chunks = log_reader.read_chunks(partition, start, end)
        try:
            for chunk in chunks:
                if not known_values(chunk.values) or (chunk.headers is not None and not known_types(chunk.headers)):
                    break
                start = chunk.next_offset
                yield chunk
            else:
                return
        finally:
            chunks.close()
        for entry in log_reader.read(partition, start, chunk.next_offset):  # which record, and what is wrong
            check_entry(log_reader.topic, entry)
        start = chunk.next_offset
        yield chunk  # readable: only its headers were in another order than this code writes them


def check_entry(topic: str, entry: LogEntry) -> None:
    """`UnknownEventError` naming where `entry` is in the log, unless this code reads its
    type and schema version."""
    try:
        event_class(entry.headers)
        if not known_value(entry.value):
            assert entry.value is not None, "a tombstone is always known"
            raise UnknownEventError(f"its value starts {entry.value[:16]!r}, a layout this code does not read "
                                    f"(a newer schema version)")
    except UnknownEventError as e:
        raise UnknownEventError(
            f"{topic} partition {entry.partition} offset {entry.offset}: {e}; this code cannot fold it and "
            f"stops there (run a version of csaf-events that knows it)") from None


def has_state(projection: Projection, partition: int) -> bool:
    lo, _ = keys.partition_range(partition)
    rows = projection.scan(lo)
    try:
        return next(rows, None) is not None
    finally:
        rows.close()  # releases the RocksDB iterator now


def snapshot(projection: Projection, partition: int) -> dict[bytes, bytes]:
    """The partition's whole state (checkpoint excluded), for comparisons."""
    lo, _ = keys.partition_range(partition)
    cp = keys.checkpoint_key(partition)
    return {k: v for k, v in projection.scan(lo) if k != cp}


def _short(value: bytes | None, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def diff(expected: dict[bytes, bytes], actual: dict[bytes, bytes]) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    out = []
    for k in sorted(expected.keys() | actual.keys()):
        a, b = expected.get(k), actual.get(k)
        if a != b:
            what = "missing" if b is None else "unexpected" if a is None else "differs"
            out.append(f"{what}: {keys.describe(k)}: expected={_short(a)} actual={_short(b)}")
    return out
