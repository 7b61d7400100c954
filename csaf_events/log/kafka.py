"""The Kafka log adapter: the events topic, partition ownership and transactional appends.

Ownership comes from a consumer group on the commands topic (cooperative-sticky): the
member assigned commands partition p owns events partition p. On assignment the node
first opens partition p's transactional producer (`transactional.id = <ns>.owner.<p>`),
whose `init_transactions()` fences any previous owner and settles its open transaction;
only then it restores p's projection from its checkpoint plus the committed log tail.
Every append is one transaction holding the events, the session rows (for the session
registry topic), the replies to routed commands and the consumed command offsets
(with the group metadata, so a node that was rebalanced out cannot commit them).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from csaf_events.codec import encode_outcome
from csaf_events.errors import DataAccessError, NotOwnerError
from csaf_events.events import SESSION, Record
from csaf_events.log.kafka_reader import KafkaReader, next_batch, read_partition  # noqa: F401 - re-exported
from csaf_events.log.port import LogEntry
from csaf_events.topics import Topics
from projections.rebuild import catch_up
from projections.rocks import Checkpoint, Projection, ProjectionBatch

if TYPE_CHECKING:
    from csaf_events.writer import Pending

log = logging.getLogger(__name__)

_SESSION_KEY_PREFIX = b'["' + SESSION.encode() + b'",'


class Origin(NamedTuple):
    """Where a routed command came from: the owner's reply goes there, in the transaction."""

    reply_topic: str
    correlation_id: bytes
    offset: int


class KafkaLog:
    def __init__(self, node_name: str, bootstrap: str, topics: Topics, projection: Projection,
                 generation: str, kafka_config: dict[str, Any], request_timeout: float) -> None:
        self.partitions = topics.events.partitions
        self._node = node_name
        self._bootstrap = bootstrap
        self._topics = topics
        self._projection = projection
        self._generation = generation
        self._config = kafka_config
        self._timeout = request_timeout
        self._producers: dict[int, Producer] = {}
        self.reader = KafkaReader(self._client_config(), topics.events.name, generation,
                                  f"{topics.namespace}.reader.{node_name}", request_timeout)
        self._verified: set[int] = set()  # partitions whose projection was checked by this process
        self._on_assigned: Callable[[list[int]], None] = lambda ps: None
        self._on_revoked: Callable[[list[int]], None] = lambda ps: None
        self.on_command: Callable[[int, bytes, Origin], None] = lambda p, raw, origin: None
        self.first_assignment = threading.Event()
        self.restore_stats: dict[int, tuple[int, float]] = {}  # partition -> (events, seconds)
        self._stop = threading.Event()
        self._group: Consumer | None = None
        self._group_metadata: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ clients --
    def _client_config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self._bootstrap, "client.id": f"csaf-{self._node}", **self._config, **extra}

    def _new_owner_producer(self, partition: int) -> Producer:
        p = Producer(self._client_config(**{
            "transactional.id": f"{self._topics.namespace}.owner.{partition}",
            "transaction.timeout.ms": 15000, "linger.ms": 1, "acks": "all"}))
        p.init_transactions(self._timeout)  # fences the previous owner of this partition
        return p

    # ---------------------------------------------------------------- ownership --
    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._group = Consumer(self._client_config(**{
            "group.id": f"{self._topics.namespace}.owners",
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 5}))
        self._group.subscribe([self._topics.commands.name], on_assign=self._assigned,
                              on_revoke=self._revoked, on_lost=self._revoked)
        self._thread = threading.Thread(target=self._poll_loop, name=f"csaf-owner-{self._node}", daemon=True)
        self._thread.start()

    def _assigned(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        ps = sorted(tp.partition for tp in tps)
        if ps:
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=min(8, len(ps))) as pool:  # fencing is a broker round trip each
                producers = dict(zip(ps, pool.map(self._new_owner_producer, ps)))
            fenced = time.monotonic() - t0
            for p in ps:
                t1 = time.monotonic()
                n = self.restore(p)
                self._producers[p] = producers[p]
                took = time.monotonic() - t1
                self.restore_stats[p] = (n, took)
                log.info("node %s took over partition %d: fenced the previous owner, applied %d events "
                         "from the log in %.3fs", self._node, p, n, took)
            log.info("node %s owns partitions %s now (fencing took %.3fs)", self._node, ps, fenced)
            self._on_assigned(ps)
        self.first_assignment.set()

    def _revoked(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        ps = sorted(tp.partition for tp in tps)
        self._on_revoked(ps)
        for p in ps:
            self._producers.pop(p, None)
        if ps:
            log.info("node %s gave up partitions %s", self._node, ps)

    def _poll_loop(self) -> None:
        assert self._group is not None
        commands = self._topics.commands.name
        while not self._stop.is_set():
            try:
                msg = self._group.poll(0.05)
                # Only this thread may touch the group consumer: the client serializes calls
                # on a handle and a polling thread starves every other caller. So the group
                # metadata for transactional offset commits is read here, after every poll
                # (and so after every rebalance callback), and the writers use that copy.
                self._group_metadata = self._group.consumer_group_metadata()
            except Exception:  # keep owning; librdkafka reconnects by itself
                log.exception("polling the owners group failed")
                time.sleep(0.5)
                continue
            if msg is None or msg.error() is not None:
                if msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("owners group: %s", msg.error())
                continue
            if msg.topic() == commands:
                h = dict(msg.headers() or ())
                origin = Origin(h.get("reply_to", b"").decode(), h.get("corr", b""), msg.offset())
                try:
                    self.on_command(msg.partition(), msg.value(), origin)
                except Exception:
                    log.exception("handling a routed command failed")
        self._group.close()  # leaves the group: the others take over at once

    def restore(self, partition: int) -> int:
        """Bring the projection of `partition` up to the committed end of the log; returns the
        number of events applied. The first time in this process the projection is also
        checked for corruption (see `projections.rebuild.catch_up`)."""
        result = catch_up(self._projection, self.reader, partition, verify=partition not in self._verified)
        self._verified.add(partition)
        return result.events

    # ------------------------------------------------------------------- writes --
    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending] = ()) -> None:
        producer = self._producers.get(partition)
        if producer is None:
            raise NotOwnerError(f"node {self._node!r} no longer owns partition {partition}")
        events_topic, sessions_topic = self._topics.events.name, self._topics.sessions.name
        offsets: list[int] = []

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is None and msg.topic() == events_topic:
                offsets.append(msg.offset())

        routed = [p for p in group if p.origin is not None]
        try:
            producer.begin_transaction()
            for r in records:
                producer.produce(events_topic, r.value, r.key, partition=partition, headers=list(r.headers),
                                 on_delivery=delivered)
                if r.key.startswith(_SESSION_KEY_PREFIX):
                    producer.produce(sessions_topic, r.value, r.key, partition=partition, headers=list(r.headers))
            for p in routed:
                producer.produce(p.origin.reply_topic, encode_outcome(p.result, p.error), partition=0,
                                 headers=[("corr", p.origin.correlation_id)])
            if routed:
                next_command = max(p.origin.offset for p in routed) + 1
                producer.send_offsets_to_transaction(
                    [TopicPartition(self._topics.commands.name, partition, next_command)],
                    self._group_metadata, self._timeout)
            producer.flush(self._timeout)
            for attempt in range(3):
                try:
                    producer.commit_transaction(self._timeout)
                    break
                except KafkaException as e:  # a retriable commit error may simply be retried
                    if not e.args[0].retriable() or attempt == 2:
                        raise
        except KafkaException as e:
            self._fail(partition, producer, e)
        if len(offsets) != len(records):
            raise DataAccessError(f"partition {partition}: {len(records) - len(offsets)} events were not "
                                  f"acknowledged, outcome unknown")
        self._projection.write(batch, {partition: Checkpoint(max(offsets, default=-1) + 1, self._generation)}
                               if offsets else None)

    def _fail(self, partition: int, producer: Producer, e: KafkaException) -> None:
        err = e.args[0]
        if err.txn_requires_abort():
            try:
                producer.abort_transaction(self._timeout)
                raise DataAccessError(f"partition {partition}: transaction aborted, nothing was written: {err}") from e
            except KafkaException:
                pass
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                          KafkaError.INVALID_PRODUCER_EPOCH):
            # Another node owns this partition now: this node must never write to it again.
            self._producers.pop(partition, None)
            log.warning("node %s was fenced from partition %d (a newer owner exists); the transaction "
                        "was not committed", self._node, partition)
            raise NotOwnerError(f"node {self._node!r} was fenced from partition {partition}: {err}") from e
        # Outcome unknown: bring the projection back in line with the log before the next append.
        try:
            self.restore(partition)
        except DataAccessError:
            self._producers.pop(partition, None)
        raise DataAccessError(f"partition {partition}: commit outcome unknown: {err}") from e

    # -------------------------------------------------------------------- reads --
    def read(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        return self.reader.read(partition, start, end)

    def end_offset(self, partition: int) -> int:
        return self.reader.end_offset(partition)

    def generation(self, partition: int) -> str:
        return self._generation

    def owned(self) -> list[int]:
        return sorted(self._producers)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout)
        self.reader.close()
        self._producers.clear()
