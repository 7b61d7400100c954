"""Rebuilding and checking projections from the log: the log is the source of truth."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from projections import keys
from projections.fold import fold_record
from projections.rocks import Checkpoint, Projection

RESTORE_BATCH = 5_000  # records per RocksDB write while restoring (never one write per record)


def apply_entries(projection: Projection, partition: int, entries: Iterable, generation: str,
                  progress: Callable[[int], None] | None = None) -> int:
    """Fold log entries (with .offset/.key/.value/.headers) into the projection in batches,
    each batch written together with the checkpoint after its last entry. Returns the count."""
    n = 0
    batch = projection.batch(track=False)
    last = None
    for e in entries:
        fold_record(e.key, e.value, partition, batch)
        last = e.offset
        n += 1
        if n % RESTORE_BATCH == 0:
            projection.write(batch, {partition: Checkpoint(last + 1, generation)})
            batch = projection.batch(track=False)
            if progress:
                progress(RESTORE_BATCH)
    if last is not None:
        projection.write(batch, {partition: Checkpoint(last + 1, generation)})
        if progress:
            progress(n % RESTORE_BATCH)
    return n


def snapshot(projection: Projection, partition: int) -> dict[bytes, bytes]:
    """The partition's whole state (checkpoint excluded), for comparisons."""
    lo, _ = keys.partition_range(partition)
    cp = keys.checkpoint_key(partition)
    return {k: v for k, v in projection.scan(lo) if k != cp}


def diff(expected: dict[bytes, bytes], actual: dict[bytes, bytes]) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    out = []
    for k in sorted(expected.keys() | actual.keys()):
        a, b = expected.get(k), actual.get(k)
        if a != b:
            what = "missing" if b is None else "unexpected" if a is None else "differs"
            out.append(f"{what}: {k!r} expected={a!r} actual={b!r}")
    return out
