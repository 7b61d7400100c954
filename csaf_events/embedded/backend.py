"""Embedded mode: one node, every partition, a durable local log. No broker needed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from csaf_events.backend import Backend, RoutedCalls
from csaf_events.channel import InProcessChannel
from csaf_events.core.events import SESSION
from csaf_events.core.node import Node
from csaf_events.core.registry import SessionRegistry
from csaf_events.embedded.log import LOG_CF, CompactionPolicy, EmbeddedLog
from projections import keys
from projections.files import open_or_repair, open_projection, projection_dir
from projections.rebuild import catch_up

__all__ = ["EmbeddedBackend", "open_projection"]

log = logging.getLogger(__name__)

COMPACTION_INTERVAL = 15 * 60.0  # seconds between compactions of the embedded log


class EmbeddedBackend(Backend):
    def __init__(self, node_name: str, data_dir: Path, partitions: int, clock: Callable[[], int],
                 sync: bool, compaction: CompactionPolicy | None = None,
                 compaction_interval: float = COMPACTION_INTERVAL) -> None:
        self._node_name = node_name
        self._path = projection_dir(data_dir, None)
        self._partitions = partitions
        self._clock = clock
        self._sync = sync
        self.calls_wait = sync  # an append is one RocksDB write, fsynced only with `sync`
        self._compaction = compaction
        self._compaction_interval = compaction_interval
        self._stop = threading.Event()
        self._compactor: threading.Thread | None = None
        self.registry = SessionRegistry()

    kind = "embedded"

    @property
    def projection_path(self) -> Path:
        return self._path

    def registry_lag(self, timeout: float) -> tuple[int | None, str | None]:
        return 0, None  # the registry is updated in the same write as the projection

    def routed_calls(self) -> RoutedCalls:
        return RoutedCalls(0, 0)  # one node serves every partition

    def sync_registry(self) -> None:
        """Nothing to wait for: the registry is updated in the same write as the projection."""

    def boot(self) -> None:
        self.projection = open_or_repair(self._path, extra_column_families=(LOG_CF,), sync=self._sync)
        try:
            self.log = EmbeddedLog(self.projection, self._partitions)
            # The projection shares the database with the log, but it can still be damaged on its
            # own (keys deleted, a wrong checkpoint, a repair that lost files): check, and refold.
            rebuilt = [r for r in (catch_up(self.projection, self.log, p) for p in range(self._partitions))
                       if r.reason is not None]
        except BaseException:
            self.projection.close()
            raise
        if rebuilt:
            log.warning("node %s: rebuilt the projection of %d partition(s) from the embedded log: %d events "
                        "in %.3fs", self._node_name, len(rebuilt), sum(r.events for r in rebuilt),
                        sum(r.seconds for r in rebuilt))
        for p in range(self._partitions):
            rows = self.projection.scan(keys.kind_prefix(p, SESSION))
            self.registry.apply({keys.session_id_of(k): v for k, v in rows})
        self.projection.on_sessions_changed = self.registry.apply
        self.node = Node(self._node_name, self.projection, self.log, self._clock)
        self.node.start()
        self.channel = InProcessChannel(self._node_name)  # one node: it reaches only itself
        if self._compaction is not None:
            self._compactor = threading.Thread(target=self._compact_periodically, daemon=True,
                                               name=f"csaf-compact-{self._node_name}")
            self._compactor.start()

    def compact(self) -> int:
        """Compact the embedded log now, as topics.yaml says the events topic is compacted."""
        if self._compaction is None:
            return 0
        dropped = self.log.compact(self._clock(), *self._compaction)
        if dropped:
            log.info("node %s: compaction dropped %d superseded records from the embedded log",
                     self._node_name, dropped)
        return dropped

    def _compact_periodically(self) -> None:
        while not self._stop.wait(self._compaction_interval):
            try:
                self.compact()
            except Exception:
                log.exception("compacting the embedded log failed; trying again in %.0fs",
                              self._compaction_interval, extra={"node": self._node_name})

    def close(self) -> None:
        self._stop.set()
        if self._compactor is not None:
            self._compactor.join()
        if hasattr(self, "channel"):
            self.channel.close()
        if hasattr(self, "node"):
            self.node.close()
            self.log.close()
            self.projection.close()
