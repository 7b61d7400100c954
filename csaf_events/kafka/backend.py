"""Kafka mode: many nodes share one Kafka cluster; each owns some partitions.

What a node runs, in the order it starts them: the topics checked against topics.yaml,
its projection, the registry tail (`registry_tail`), the router for commands on
partitions it does not own (`routing`), and the log (`log`: the ownership of partitions
in the owners group, the node transaction, the reader). Routed commands that reach this
node as an owner are decided by the partition's writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from csaf_events.backend import Backend, RoutedCalls
from csaf_events.core.codec import decode_command, encode_outcome
from csaf_events.core.errors import CsafError, unreachable
from csaf_events.core.node import Node
from csaf_events.core.registry import SessionRegistry
from csaf_events.core.timings import Timings
from csaf_events.kafka import topics as kafka_topics
from csaf_events.kafka.channel import KafkaChannel
from csaf_events.kafka.log import KafkaLog
from csaf_events.kafka.ownership import Origin, RoutedPending
from csaf_events.kafka.registry_tail import RegistryTailer
from csaf_events.kafka.routing import KafkaRouter
from csaf_events.topics import Topics, client_id
from projections.files import open_or_set_aside, projection_dir

log = logging.getLogger(__name__)


class KafkaBackend(Backend):
    def __init__(self, node_name: str, data_dir: Path, bootstrap: str, topics: Topics,
                 clock: Callable[[], int], request_timeout: float, kafka_config: dict[str, Any],
                 transaction_lanes: int = 1) -> None:
        self._node_name = node_name
        self._path = projection_dir(data_dir, topics.namespace)
        self.topics = topics
        self._clock = clock
        self._timeout = request_timeout
        self._lanes = transaction_lanes
        self._config = {"bootstrap.servers": bootstrap, "client.id": client_id(node_name), **kafka_config}
        self.registry = SessionRegistry()
        # Routed writes are submitted in the order consumed, on one thread (not the polling
        # one: the submitting thread may lead the group commit and its transaction). Routed
        # reads have threads of their own: a read waits out an append in flight.
        self._routed = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"csaf-routed-{node_name}")
        self._routed_reads = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"csaf-routed-read-{node_name}")
        self._closers: list[Callable[[], None]] = [lambda: self._routed.shutdown(wait=True),
                                                   lambda: self._routed_reads.shutdown(wait=True)]

    kind = "kafka"

    @property
    def projection_path(self) -> Path:
        return self._path

    def registry_lag(self, timeout: float) -> tuple[int | None, str | None]:
        tailer: RegistryTailer | None = getattr(self, "tailer", None)  # set by boot
        if tailer is None:
            return None, "no registry tail"
        return tailer.lag(timeout)

    def routed_calls(self) -> RoutedCalls:
        return RoutedCalls(self.router.in_flight(), self.router.timed_out)

    def boot(self) -> None:
        try:
            self._boot()
        except BaseException as e:
            self.close()
            if isinstance(e, CsafError) or not isinstance(e, Exception):
                raise
            raise unreachable(f"node {self._node_name!r} could not boot on Kafka", e) from e

    def _boot(self) -> None:
        admin = AdminClient(self._config)
        reply = self.topics.reply_topic(self._node_name)
        states = kafka_topics.ensure(admin, [*self.topics.cluster_topics(), reply,
                                             self.topics.node_topic(self._node_name)], self._timeout)
        generation = states[self.topics.events.name].topic_id or "unknown"
        self.channel = KafkaChannel(self._config, self.topics, self._node_name, self._timeout)
        self._closers.insert(0, self.channel.close)
        self.projection = open_or_set_aside(self._path)
        self._closers.append(self.projection.close)
        self.tailer = RegistryTailer(self._config, self.topics.sessions.name, self.topics.sessions.partitions,
                                     self.registry, self._node_name)
        self._closers.insert(0, self.tailer.close)
        self.router = KafkaRouter(self._config, self.topics.commands.name, reply.name, self._node_name,
                                  self._timeout)
        self._closers.insert(0, self.router.close)
        timings = Timings()
        self.log = KafkaLog(self._node_name, self._config, self.topics, self.projection, generation, self._timeout,
                            timings, self.router.reply, self._lanes)
        self._closers.insert(0, self.log.close)
        self.node = Node(self._node_name, self.projection, self.log, self._clock, self.router, self._timeout,
                         timings)
        self._closers.insert(0, self.node.close)
        self.log.ownership.on_command = self._on_command
        self.tailer.wait_caught_up(self._timeout)
        self.node.start()
        if not self.log.ownership.wait_ready(self._timeout):
            log.warning("node %s: partitions %s not taken over within %.0fs (serving %s); calls for the others "
                        "wait for the takeover or go to other nodes", self._node_name,
                        self.log.ownership.assigned(), self._timeout, self.log.owned())

    def _on_command(self, partition: int, raw: bytes, origin: Origin) -> None:
        writer = self.node.writer(partition)
        if writer is None:  # not served now: read again from the committed offset once it is
            return
        try:
            command = decode_command(raw)
        except Exception:
            log.exception("dropping an undecodable command at %s[%d]@%d", self.topics.commands.name,
                          partition, origin.offset, extra={"node": self._node_name, "partition": partition})
            return
        if command.READ_ONLY:
            self._routed_reads.submit(self._answer_read, writer, command, origin)
            return
        self._routed.submit(writer.submit, RoutedPending(command, origin))

    def _answer_read(self, writer: Any, command: Any, origin: Origin) -> None:
        """A read needs no transaction: answer from the projection and reply at once.
        Executed twice after a takeover, it is harmless."""
        try:
            result, error = writer.read(command), None
        except Exception as e:  # noqa: BLE001 - the caller gets it
            result, error = None, e
        self.router.reply(origin.reply_topic, origin.correlation_id, encode_outcome(result, error))

    def sync_registry(self) -> None:
        self.tailer.sync(self._timeout)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("closing the Kafka backend", extra={"node": self._node_name})
