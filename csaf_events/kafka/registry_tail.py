"""The session registry's feed in Kafka mode: the compacted sessions topic, tailed.

Every node tails it into its in-memory `SessionRegistry`, so cluster-wide session reads
(`get_sessions_count` on every new MatsSocket session) are answered locally (DESIGN Q1).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaError, TopicPartition

from csaf_events.core.errors import DataAccessError
from csaf_events.core.registry import SessionRegistry
from csaf_events.kafka.end_offsets import EndOffsets
from csaf_events.kafka.reader import next_batch

log = logging.getLogger(__name__)

class RegistryTailer:
    """Tails the compacted sessions topic (committed records) into the session registry."""

    def __init__(self, client_config: dict[str, Any], topic: str, partitions: int, registry: SessionRegistry,
                 node_name: str) -> None:
        self._topic = topic
        self._registry = registry
        self._pos = [0] * partitions
        self._eof = [False] * partitions
        self._cond = threading.Condition()
        self._wanted: dict[int, int] = {}  # partition -> offset some caller waits for
        self._consumer = Consumer({**client_config, "group.id": f"{topic}.tail.{node_name}",
                                   "enable.auto.commit": False, "isolation.level": "read_committed",
                                   "enable.partition.eof": True,
                                   # short, unlike the other tails: `_settle_idle` asks this consumer's
                                   # broker connection for offsets, and the broker answers a connection
                                   # in order, so a long fetch wait would delay every registry read
                                   "fetch.wait.max.ms": 5})
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        # End offsets come from an admin client (the tailing consumer is busy in consume()),
        # one request for all partitions. It asks for the high watermark, not the last stable
        # offset: commit_transaction() returns before the commit markers are written, so the
        # LSO can still be short of a write that has returned; the high watermark includes it.
        self.end_offsets = EndOffsets(client_config)
        self._partitions = partitions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"csaf-registry-{node_name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = next_batch(self._consumer, 0.05)
                if not msgs:
                    self._settle_idle()
                    continue
                self._apply(msgs)
            except BaseException as e:  # noqa: BLE001 - the tail must outlive every client error
                log.warning("tailing %s: %s: %s; tailing on", self._topic, type(e).__name__, e)
                time.sleep(0.2)

    def _settle_idle(self) -> None:
        """Move the position of waited-for partitions past records that are never delivered.

        Control records and aborted transactions advance a partition's end without giving
        the consumer a message, and then no new end-of-partition event comes either: a
        waiter whose target lies beyond them would wait for the next real record. When the
        tail is idle it asks for the last stable offset (this thread owns the consumer),
        polls once more, and if that brings nothing, everything deliverable below it has
        been applied."""
        with self._cond:
            waiting = [p for p, t in self._wanted.items() if self._pos[p] < t]
        if not waiting:
            return
        stable = {p: self._consumer.get_watermark_offsets(TopicPartition(self._topic, p), 5, cached=False)[1]
                  for p in waiting}
        msgs = next_batch(self._consumer, 0.02)
        if msgs:
            self._apply(msgs)
            return
        with self._cond:
            for p, off in stable.items():
                self._pos[p] = max(self._pos[p], off)
            self._cond.notify_all()

    def _apply(self, msgs: list) -> None:
        changes: dict[str, bytes | None] = {}
        moved: dict[int, int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    moved[m.partition()] = max(moved.get(m.partition(), 0), m.offset())
                    self._eof[m.partition()] = True
                continue
            changes[orjson.loads(m.key())[1]] = m.value()
            moved[m.partition()] = max(moved.get(m.partition(), 0), m.offset() + 1)
        self._registry.apply(changes)
        with self._cond:
            for p, off in moved.items():
                self._pos[p] = max(self._pos[p], off)
            self._cond.notify_all()

    def wait_caught_up(self, timeout: float) -> None:
        """Initial load: every partition read to its end once."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(self._eof):
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise DataAccessError(f"loading the session registry from {self._topic} timed out",
                                          may_have_written=False)

    def sync(self, timeout: float) -> None:
        """Return once the registry holds every session write that returned anywhere before
        this call."""
        targets = self.end_offsets(self._topic, range(self._partitions), IsolationLevel.READ_UNCOMMITTED, timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            for p, t in targets.items():
                self._wanted[p] = max(self._wanted.get(p, 0), t)
            while any(self._pos[p] < t for p, t in targets.items()):
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise DataAccessError("the session registry did not catch up in time", may_have_written=False)

    def lag(self, timeout: float) -> tuple[int | None, str | None]:
        """Committed records of the sessions topic not in the registry yet, or None and why
        the topic's end could not be read within `timeout`."""
        try:
            ends = self.end_offsets(self._topic, range(self._partitions), IsolationLevel.READ_COMMITTED, timeout)
        except Exception as e:  # noqa: BLE001 - reported, not raised: health must answer
            return None, f"{type(e).__name__}: {e}"
        pos = list(self._pos)
        return sum(max(0, end - pos[p]) for p, end in ends.items() if end >= 0), None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
        self.end_offsets.close()
