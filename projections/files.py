"""Where a node keeps its RocksDB, and opening it, also when it is damaged.

What to do with a database RocksDB refuses to open depends on where the log is. In Kafka
mode the log is the topic: the broken directory is moved aside (kept for inspection) and
the projection is rebuilt from the log. In embedded mode the log is inside that same
database, so the only way forward is RocksDB's repair; if that fails too, the operator
must decide (restore a backup), and the error says so.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from csaf_events.core.errors import CsafError
from projections.rocks import Projection, repair_database

log = logging.getLogger(__name__)


def projection_dir(data_dir: str | Path, namespace: str | None) -> Path:
    """The node's database directory: `embedded`, or `kafka-<namespace>` in Kafka mode."""
    return Path(data_dir) / ("embedded" if namespace is None else f"kafka-{namespace}")


class DatabaseLocked(CsafError):
    """Another process (or store) has the database open."""


def _is_lock_error(e: Exception) -> bool:
    text = str(e)
    return "/LOCK" in text or "lock file" in text.lower() or "lock hold by" in text


def open_projection(path: Path, *, extra_column_families: tuple[str, ...] = (), sync: bool = False) -> Projection:
    try:
        return Projection(path, extra_column_families=extra_column_families, sync=sync)
    except Exception as e:
        if _is_lock_error(e):
            raise DatabaseLocked(f"data directory {path} is in use by another process (or store); "
                                 f"each node needs its own data_dir") from e
        raise CsafError(f"cannot open the projection database in {path}: {e}") from e


def set_aside(path: Path) -> Path:
    """Rename a damaged database directory with a timestamp suffix; returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    path.rename(target)
    return target


def open_or_set_aside(path: Path, *, sync: bool = False) -> Projection:
    """Open a projection whose log lives elsewhere (Kafka); if RocksDB cannot open it, move
    it aside and start an empty one, which the caller rebuilds from the log."""
    try:
        return open_projection(path, sync=sync)
    except DatabaseLocked:
        raise
    except CsafError as e:
        moved = set_aside(path)
        log.warning("the projection in %s cannot be opened (%s); moved it to %s and rebuilding it from the log",
                    path, e.__cause__ or e, moved)
        return open_projection(path, sync=sync)


def open_or_repair(path: Path, *, extra_column_families: tuple[str, ...] = (), sync: bool = False) -> Projection:
    """Open a database that also holds the log (embedded); if RocksDB cannot open it, try
    RocksDB's repair, and raise `CsafError` saying what to do when that fails too."""
    try:
        return open_projection(path, extra_column_families=extra_column_families, sync=sync)
    except DatabaseLocked:
        raise
    except CsafError as e:
        first = e.__cause__ or e
    log.warning("the embedded store in %s cannot be opened (%s); trying RocksDB repair", path, first)
    t0 = time.monotonic()
    try:
        repair_database(path)
        projection = open_projection(path, extra_column_families=extra_column_families, sync=sync)
    except Exception as e:
        raise CsafError(
            f"the embedded store in {path} is corrupt ({first}) and RocksDB could not repair it ({e}). "
            f"Its log is in the same database, so there is nothing to rebuild it from: restore {path} "
            f"from a backup, or move it aside to start with an empty store") from e
    log.warning("repaired the embedded store in %s in %.3fs; records in damaged files may be lost, "
                "the projection is checked against the log next", path, time.monotonic() - t0)
    return projection


@contextlib.contextmanager
def open_read_view(path: Path, *, extra_column_families: tuple[str, ...] = ()) -> Iterator[Projection]:
    """A read-only view of a node's database, usable while the node runs (RocksDB secondary)."""
    if not (path / "CURRENT").exists():
        raise CsafError(f"no database in {path}")
    with tempfile.TemporaryDirectory(prefix="csaf-view-") as scratch:
        try:
            projection = Projection(path, extra_column_families=extra_column_families, secondary=scratch)
        except Exception as e:
            raise CsafError(f"cannot open the database in {path} for reading: {e}") from e
        try:
            yield projection
        finally:
            projection.close()
