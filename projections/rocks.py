"""The RocksDB projection of a node: entity states by key, plus each partition's checkpoint.

The checkpoint (the next log offset to apply, and the generation of the log it came
from) is written in the same atomic write batch as the state it describes, so after a
crash the projection and its checkpoint always agree.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import NamedTuple, cast

import orjson
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    ColumnFamily,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from projections import keys


def _options(cache: Cache) -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    opt.create_missing_column_families(True)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(10, False)
    opt.set_block_based_table_factory(table)
    return opt


def _successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no such key)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else None


def _bounded(prefix: bytes) -> ReadOptions:
    """Read options ending iteration at the end of `prefix`. Keep the object alive as long
    as the iterator: the iterator reads the bound from it."""
    opts = ReadOptions()
    upper = _successor(prefix)
    if upper is not None:
        opts.set_iterate_upper_bound(upper)
    return opts


class Checkpoint(NamedTuple):
    next_offset: int
    generation: str

    def encode(self) -> bytes:
        return orjson.dumps({"next_offset": self.next_offset, "generation": self.generation})


class ProjectionBatch:
    """Pending changes to the projection: a RocksDB write batch that can also be read.

    Commands decided in one group commit see the changes of the commands before them
    through the overlay, before anything is written. A batch reads through its `parent`:
    the projection, or the batch decided before it whose append is still in flight (an
    owner decides the next commands while the previous ones commit); the writer points it
    back at the projection once that parent is written.
    """

    def __init__(self, parent: Projection | ProjectionBatch, track: bool = True) -> None:
        self.parent = parent
        self.write_batch = WriteBatch(raw_mode=True)
        self._overlay: dict[bytes, bytes | None] | None = {} if track else None
        # the overlay's keys in order: what a scan of a prefix changed is found by bisection, not
        # by a look at every key (a Kafka round decides hundreds of commands on one batch chain)
        self._order: list[bytes] = []
        self.sessions: dict[str, bytes | None] = {}

    @classmethod
    def merged(cls, parent: Projection, batches: Sequence[ProjectionBatch]) -> ProjectionBatch:
        """One batch with the changes of `batches`, later ones winning: a transaction of many
        appends becomes one RocksDB write (rocksdict holds the interpreter lock while it
        writes, and a write costs its fixed part each time). It carries what the batches'
        `put` and `delete` changed (their overlay), so only tracked batches, and not what was
        put into a `write_batch` directly (the embedded log's entries)."""
        out = cls(parent, track=False)
        for b in batches:
            out.absorb(b)
        return out

    def put(self, key: bytes, value: bytes) -> None:
        self.write_batch.put(key, value)
        overlay = self._overlay
        if overlay is not None:
            if key not in overlay:
                insort(self._order, key)
            overlay[key] = value

    def delete(self, key: bytes) -> None:
        self.write_batch.delete(key)
        overlay = self._overlay
        if overlay is not None:
            if key not in overlay:
                insort(self._order, key)
            overlay[key] = None

    def session_changed(self, session_id: str, value: bytes | None) -> None:
        self.sessions[session_id] = value

    def absorb(self, part: ProjectionBatch) -> None:
        """Take the changes of a tracked batch decided on top of this one (a part of a
        decision that succeeded as a whole)."""
        if part._overlay is None:
            raise ValueError("an untracked projection batch cannot be merged: its changes are not known")
        for k, v in part._overlay.items():
            if v is None:
                self.delete(k)
            else:
                self.put(k, v)
        self.sessions.update(part.sessions)

    def __len__(self) -> int:
        return self.write_batch.len()

    # reads through the overlay
    def get(self, key: bytes) -> bytes | None:
        if self._overlay is not None and key in self._overlay:
            return self._overlay[key]
        return self.parent.get(key)

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        rows = list(self.parent.scan(prefix))
        changed = self._changed(prefix)
        if not changed:
            return rows
        merged = dict(rows)
        for k, v in changed:
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        return sorted(merged.items())

    def scan_keys(self, prefix: bytes) -> list[bytes]:
        changed = self._changed(prefix)
        if not changed:
            return self.parent.scan_keys(prefix)
        live = set(self.parent.scan_keys(prefix))
        for k, v in changed:
            if v is None:
                live.discard(k)
            else:
                live.add(k)
        return sorted(live)

    def last_key(self, prefix: bytes) -> bytes | None:
        """The greatest key under `prefix`, read without the values."""
        if not self._changed(prefix):
            return self.parent.last_key(prefix)
        found = self.scan_keys(prefix)
        return found[-1] if found else None

    def _changed(self, prefix: bytes) -> list[tuple[bytes, bytes | None]]:
        overlay = self._overlay
        if not overlay:
            return []
        order, upper = self._order, _successor(prefix)
        start = bisect_left(order, prefix)
        end = len(order) if upper is None else bisect_left(order, upper, start)
        return [(k, overlay[k]) for k in order[start:end]]


class Projection:
    """A node's RocksDB read model; thread-safe for concurrent reads and writes.

    Its block cache (`cache_bytes`) is its own, shared by its column families and let go by
    `close`: a node's, not the process's."""

    def __init__(self, path: str | Path, *, extra_column_families: tuple[str, ...] = (),
                 sync: bool = False, cache_bytes: int = 64 << 20, secondary: str | Path | None = None) -> None:
        """`secondary`: open as a RocksDB secondary instance (its own files go there): a
        read-only view that works while the node that owns the database is running."""
        self.path = Path(path)
        if secondary is None:
            self.path.mkdir(parents=True, exist_ok=True)
        self._cache: Cache | None = Cache(cache_bytes)
        access = AccessType.read_write() if secondary is None else AccessType.secondary(str(secondary))
        self.db = Rdict(str(self.path), options=_options(self._cache), access_type=access,
                        column_families={cf: _options(self._cache) for cf in extra_column_families})
        self._write_options = WriteOptions()
        self._write_options.sync = sync
        self._unlogged = WriteOptions()
        # rocksdict's stub declares disable_wal a method; it is a property, as sync is
        self._unlogged.disable_wal = True  # type: ignore[method-assign, assignment]
        self.on_sessions_changed: Callable[[dict[str, bytes | None]], None] | None = None

    def close(self) -> None:
        self.db.close()
        self._cache = None

    def column_family(self, name: str) -> ColumnFamily:
        return self.db.get_column_family_handle(name)

    # reads
    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def scan(self, prefix: bytes) -> Generator[tuple[bytes, bytes], None, None]:
        """Entries under `prefix` in key order. The iterator is bounded to the prefix, so an
        empty range costs one seek instead of a walk over the tombstones beyond it. A
        generator: closing it releases the RocksDB iterator."""
        opts = _bounded(prefix)
        it = self.db.iter(opts)
        try:
            it.seek(prefix)
            while it.valid():
                yield it.key(), it.value()
                it.next()
        finally:
            del it  # a live iterator keeps the database (and its lock) open
            del opts

    def scan_keys(self, prefix: bytes) -> list[bytes]:
        """The keys under `prefix` in order, without reading their values."""
        opts = _bounded(prefix)  # referenced until the keys are read: the iterator uses its bound
        found = cast("list[bytes]", list(self.db.keys(from_key=prefix, read_opt=opts)))  # raw mode: bytes keys
        del opts
        return found

    def last_key(self, prefix: bytes) -> bytes | None:
        """The greatest key under `prefix`, in two seeks whatever the number of keys under it
        (an outbox with a backlog). A seek forward says whether there is one: a seek back from
        an empty prefix would walk over every tombstone before it (the iterator's lower bound
        does not stop it). Then a seek back from the prefix's end finds it."""
        opts = _bounded(prefix)  # referenced until the iterator is gone: it reads its bound
        it = self.db.iter(opts)
        try:
            it.seek(prefix)
            if not it.valid():
                return None
            it.seek_to_last()  # the last key before the bound: under the prefix, as one is there
            return cast(bytes, it.key())
        finally:
            del it
            del opts

    # writes
    def batch(self, track: bool = True) -> ProjectionBatch:
        return ProjectionBatch(self, track)

    def write(self, batch: ProjectionBatch, checkpoints: dict[int, Checkpoint] | None = None, *,
              wal: bool = True) -> None:
        """Write the batch and the partitions' checkpoints atomically, then tell the registry.

        `wal=False` (a restore: the log can give it all again) skips RocksDB's write-ahead
        log; such writes must be made durable with `flush` before a logged write follows,
        or a crash could keep the later write and lose the earlier ones."""
        for partition, cp in (checkpoints or {}).items():
            batch.write_batch.put(keys.checkpoint_key(partition), cp.encode())
        self.db.write(batch.write_batch, self._write_options if wal else self._unlogged)
        if batch.sessions and self.on_sessions_changed is not None:
            self.on_sessions_changed(batch.sessions)

    def flush(self) -> None:
        """Persist the memtables (and so every write made without the WAL) to disk."""
        self.db.flush(wait=True)

    def checkpoint(self, partition: int) -> Checkpoint | None:
        raw = self.db.get(keys.checkpoint_key(partition))
        return None if raw is None else Checkpoint(**orjson.loads(raw))

    def drop_partition(self, partition: int) -> None:
        """Forget a partition's state (and checkpoint): the log is the source of truth."""
        lo, hi = keys.partition_range(partition)
        self.db.delete_range(lo, hi)


def repair_database(path: str | Path) -> None:
    """RocksDB's repair: rebuilds the database's metadata from the files it finds; data in
    files that are themselves damaged is lost."""
    Rdict.repair(str(path), _options(Cache(64 << 20)))
