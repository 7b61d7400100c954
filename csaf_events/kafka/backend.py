"""Kafka mode: many nodes share one Kafka cluster; each owns some partitions.

What a node runs: the owners-group consumer and per-partition transactional producers
(`KafkaLog`), a router for commands on partitions it does not own (`KafkaRouter`), and a
tailer that keeps the in-memory session registry equal to the sessions topic, so
cluster-wide session reads are answered locally.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from csaf_events.codec import decode_command, encode_outcome
from csaf_events.errors import DataAccessError
from csaf_events.kafka import topics as kafka_topics
from csaf_events.kafka.log import KafkaLog, Origin
from csaf_events.kafka.reader import end_offsets, next_batch
from csaf_events.node import Node
from projections.files import open_or_set_aside, projection_dir
from csaf_events.registry import SessionRegistry
from csaf_events.kafka.routing import KafkaRouter
from csaf_events.backend import Backend
from csaf_events.topics import Topics
from csaf_events.writer import Pending

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
        self._admin = AdminClient(client_config)
        self._partitions = partitions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"csaf-registry-{node_name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msgs = next_batch(self._consumer, 0.05)
            if not msgs:
                self._settle_idle()
                continue
            self._apply(msgs)

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
                    raise DataAccessError(f"loading the session registry from {self._topic} timed out")

    def sync(self, timeout: float) -> None:
        """Return once the registry holds every session write that returned anywhere before
        this call."""
        targets = end_offsets(self._admin, self._topic, range(self._partitions), IsolationLevel.READ_UNCOMMITTED,
                              timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            for p, t in targets.items():
                self._wanted[p] = max(self._wanted.get(p, 0), t)
            while any(self._pos[p] < t for p, t in targets.items()):
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise DataAccessError("the session registry did not catch up in time")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class KafkaBackend(Backend):
    def __init__(self, node_name: str, data_dir: Path, bootstrap: str, topics: Topics,
                 clock: Callable[[], int], request_timeout: float, kafka_config: dict[str, Any]) -> None:
        self._node_name = node_name
        self._path = projection_dir(data_dir, topics.namespace)
        self._bootstrap = bootstrap
        self.topics = topics
        self._clock = clock
        self._timeout = request_timeout
        self._config = {"bootstrap.servers": bootstrap, **kafka_config}
        self.registry = SessionRegistry()
        self._routed = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"csaf-routed-{node_name}")
        self._closers: list[Callable[[], None]] = [lambda: self._routed.shutdown(wait=True)]

    def boot(self) -> None:
        try:
            self._boot()
        except BaseException:
            self.close()
            raise

    def _boot(self) -> None:
        admin = AdminClient(self._config)
        reply = self.topics.reply_topic(self._node_name)
        states = kafka_topics.ensure(admin, [*self.topics.cluster_topics(), reply], self._timeout)
        generation = states[self.topics.events.name].topic_id or "unknown"
        self.projection = open_or_set_aside(self._path)
        self._closers.append(self.projection.close)
        self.tailer = RegistryTailer(self._config, self.topics.sessions.name, self.topics.sessions.partitions,
                                     self.registry, self._node_name)
        self._closers.insert(0, self.tailer.close)
        self.router = KafkaRouter(self._config, self.topics.commands.name, reply.name, self._node_name)
        self._closers.insert(0, self.router.close)
        self.log = KafkaLog(self._node_name, self._bootstrap, self.topics, self.projection, generation,
                            {k: v for k, v in self._config.items() if k != "bootstrap.servers"}, self._timeout)
        self._closers.insert(0, self.log.close)
        self.node = Node(self._node_name, self.projection, self.log, self._clock, self.router, self._timeout)
        self._closers.insert(0, self.node.close)
        self.log.on_command = self._on_command
        self.tailer.wait_caught_up(self._timeout)
        self.node.start()
        if not self.log.first_assignment.wait(self._timeout):
            log.warning("node %s: no partition assignment within %.0fs; routing everything to other nodes",
                        self._node_name, self._timeout)

    def _on_command(self, partition: int, raw: bytes, origin: Origin) -> None:
        writer = self.node.writer(partition)
        if writer is None:  # moved away: the new owner reads it again from the committed offset
            return
        try:
            command = decode_command(raw)
        except Exception:
            log.exception("dropping an undecodable command at %s[%d]@%d", self.topics.commands.name,
                          partition, origin.offset)
            return
        if command.READ_ONLY:
            # A read needs no transaction: answer from the projection (which waits out an
            # append in flight) and reply at once. Executed twice after a crash, it is harmless.
            try:
                result, error = writer.read(command), None
            except Exception as e:  # noqa: BLE001 - the caller gets it
                result, error = None, e
            self.router.reply(origin.reply_topic, origin.correlation_id, encode_outcome(result, error))
            return
        # Not on this (polling) thread: the submitting thread may lead the group commit and
        # its transaction. One thread keeps the commands of the node in the order consumed.
        self._routed.submit(writer.submit, Pending(command, origin))

    def sync_registry(self) -> None:
        self.tailer.sync(self._timeout)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("closing the Kafka backend")
