"""Embedded mode: one node, every partition, a durable local log. No broker needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from csaf_events.errors import CsafError
from csaf_events.log.embedded import LOG_CF, EmbeddedLog
from csaf_events.node import Node
from csaf_events.registry import SessionRegistry
from csaf_events.store import Backend
from projections import queries
from projections.rocks import Projection


def open_projection(path: Path, *, extra_column_families: tuple[str, ...] = (), sync: bool = False) -> Projection:
    try:
        return Projection(path, extra_column_families=extra_column_families, sync=sync)
    except Exception as e:
        if "lock" in str(e).lower():
            raise CsafError(f"data directory {path} is in use by another process (or store); "
                            f"each node needs its own data_dir") from e
        raise CsafError(f"cannot open the projection database in {path}: {e}") from e


class EmbeddedBackend(Backend):
    def __init__(self, node_name: str, data_dir: Path, partitions: int, clock: Callable[[], int],
                 sync: bool) -> None:
        self._node_name = node_name
        self._path = Path(data_dir) / "embedded"
        self._partitions = partitions
        self._clock = clock
        self._sync = sync
        self.registry = SessionRegistry()

    def boot(self) -> None:
        self.projection = open_projection(self._path, extra_column_families=(LOG_CF,), sync=self._sync)
        try:
            self.log = EmbeddedLog(self.projection, self._partitions)
        except BaseException:
            self.projection.close()
            raise
        for p in range(self._partitions):
            self.registry.apply({s["session_id"]: raw for s, raw in queries.sessions_raw(self.projection, p)})
        self.projection.on_sessions_changed = self.registry.apply
        self.node = Node(self._node_name, self.projection, self.log, self._clock)
        self.node.start()

    def close(self) -> None:
        if hasattr(self, "node"):
            self.node.close()
            self.log.close()
            self.projection.close()
