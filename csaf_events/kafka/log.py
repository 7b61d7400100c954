"""The Kafka log adapter: the events topic, partition ownership and transactional appends.

Ownership comes from a consumer group on the commands topic (cooperative-sticky): the
member assigned commands partition p owns events partition p.

Writes: one transactional producer per node (`transactional.id = <ns>.node.<node>`; a
restarted node fences its previous incarnation). The appends pending on all the node's
partitions are committed together in one transaction (group commit across partitions):
the events, the session rows (for the session registry topic), the replies to routed
commands, and the command offsets of every partition in the transaction, sent first with
fresh consumer group metadata (KIP-447). So a node that was rebalanced out cannot commit
(the group coordinator refuses the stale generation and the transaction aborts), and a new
owner's committed-offset fetch (require_stable) waits until any transaction the previous
owner still had open on that partition is committed or aborted, before it restores the
projection from its checkpoint plus the committed log tail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from csaf_events.codec import encode_outcome
from csaf_events.errors import DataAccessError, NotOwnerError
from csaf_events.events import SESSION, Record
from csaf_events.group_commit import GroupCommit, Signal
from csaf_events.kafka.reader import TAIL_FETCH_WAIT_MS, KafkaReader
from csaf_events.log.port import Chunk, LogEntry
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


class _Append:
    """One partition's share of a node transaction."""

    __slots__ = ("partition", "records", "batch", "routed", "offsets", "error", "done", "promoted", "waiter")

    def __init__(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
                 routed: list[Pending]) -> None:
        self.partition = partition
        self.records = records
        self.batch = batch
        self.routed = routed
        self.offsets: list[int] = []
        self.error: BaseException | None = None
        self.done = Signal()
        self.promoted = False  # woken to lead the next transaction, not finished
        self.waiter = True  # the partition writer waits for it


# Errors of the group coordinator: this member's view of the group is stale (fenced by KIP-447).
_GROUP_MOVED = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID,
                KafkaError.REBALANCE_IN_PROGRESS}


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
        self._producer: Producer | None = None
        self._fenced: str | None = None
        self._owned: set[int] = set()
        self._command_offsets: dict[int, int] = {}  # per owned partition: next command offset to commit
        self._transactions: GroupCommit[_Append] = GroupCommit(self._commit)
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

    def _new_producer(self) -> Producer:
        producer = Producer(self._client_config(**{
            "transactional.id": f"{self._topics.namespace}.node.{self._node}",
            "transaction.timeout.ms": 15000, "linger.ms": 1, "acks": "all",
            # Back-to-back transactions meet CONCURRENT_TRANSACTIONS while the previous commit's
            # markers are written; the default 100 ms backoff would cap a node at ~10 commits/s.
            "retry.backoff.ms": 1, "retry.backoff.max.ms": 20}))
        producer.init_transactions(self._timeout)  # fences an earlier incarnation of this node
        return producer

    # ---------------------------------------------------------------- ownership --
    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._producer = self._new_producer()
        self._group = Consumer(self._client_config(**{
            "group.id": f"{self._topics.namespace}.owners",
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS}))
        self._group.subscribe([self._topics.commands.name], on_assign=self._assigned,
                              on_revoke=self._revoked, on_lost=self._revoked)
        self._thread = threading.Thread(target=self._poll_loop, name=f"csaf-owner-{self._node}", daemon=True)
        self._thread.start()

    def _assigned(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        ps = sorted(tp.partition for tp in tps)
        if ps:
            t0 = time.monotonic()
            # The committed offsets are fetched "stable": this waits until a transaction the
            # previous owner still had open on these partitions is committed or aborted, so
            # the restore below sees everything it will ever commit.
            for tp in consumer.committed(tps, timeout=self._timeout):
                self._command_offsets[tp.partition] = max(tp.offset, 0)
            settled = time.monotonic() - t0
            for p in ps:
                t1 = time.monotonic()
                n = self.restore(p)
                took = time.monotonic() - t1
                self.restore_stats[p] = (n, took)
                log.info("node %s took over partition %d: applied %d events from the log in %.3fs",
                         self._node, p, n, took)
            self._group_metadata = consumer.consumer_group_metadata()  # the new generation, before any append
            self._owned.update(ps)
            log.info("node %s owns partitions %s now (previous owners settled in %.3fs)", self._node, ps, settled)
            self._on_assigned(ps)
        self.first_assignment.set()

    def _revoked(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        ps = sorted(tp.partition for tp in tps)
        self._owned.difference_update(ps)
        self._on_revoked(ps)
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
                # (and so after every rebalance callback), and the appends use that copy.
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
        """Join the node's next transaction: the appends of all partitions pending meanwhile
        are committed together (see `GroupCommit`)."""
        if self._fenced is not None:
            raise DataAccessError(self._fenced)
        if partition not in self._owned or self._group_metadata is None:
            raise NotOwnerError(f"node {self._node!r} does not own partition {partition} (now)")
        req = _Append(partition, records, batch, [p for p in group if p.origin is not None])
        self._transactions.add(req)
        self._transactions.wait(req)
        if req.error is not None:
            raise req.error

    def _commit(self, reqs: list[_Append]) -> None:
        live = []
        for req in reqs:
            if req.partition in self._owned:
                live.append(req)
            else:
                req.error = NotOwnerError(f"node {self._node!r} no longer owns partition {req.partition}")
                req.done.set()
        if live:
            try:
                self._transact(live)
                self._apply(live)
            except BaseException as e:  # every request of the transaction shares its fate
                for req in live:
                    req.error = e
            for req in live:
                req.done.set()

    def _transact(self, reqs: list[_Append]) -> None:
        producer = self._producer
        assert producer is not None
        events_topic, sessions_topic = self._topics.events.name, self._topics.sessions.name
        commands_topic = self._topics.commands.name
        offsets = dict(self._command_offsets)
        for req in reqs:
            if req.routed:
                offsets[req.partition] = max(offsets.get(req.partition, 0), max(p.origin.offset for p in req.routed) + 1)
        try:
            producer.begin_transaction()
            for req in reqs:
                def delivered(err: KafkaError | None, msg: Any, req: _Append = req) -> None:
                    if err is None:
                        req.offsets.append(msg.offset())

                p = req.partition
                for r in req.records:
                    producer.produce(events_topic, r.value, r.key, partition=p, headers=list(r.headers),
                                     on_delivery=delivered)
                    if r.key.startswith(_SESSION_KEY_PREFIX):
                        producer.produce(sessions_topic, r.value, r.key, partition=p, headers=list(r.headers))
                for pend in req.routed:
                    producer.produce(pend.origin.reply_topic, encode_outcome(pend.result, pend.error), partition=0,
                                     headers=[("corr", pend.origin.correlation_id)])
            # The offsets go while the records are on their way; a member the group has moved
            # on from is refused here, and the transaction aborts.
            producer.send_offsets_to_transaction(
                [TopicPartition(commands_topic, p, offsets.get(p, 0)) for p in sorted({r.partition for r in reqs})],
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
            raise self._failure(e, reqs) from e
        for req in reqs:
            if req.routed:
                self._command_offsets[req.partition] = offsets[req.partition]

    def _failure(self, e: KafkaException, reqs: list[_Append]) -> BaseException:
        """Settle a failed transaction and say what the callers must be told."""
        producer = self._producer
        err = e.args[0]
        partitions = sorted({r.partition for r in reqs})
        if err.txn_requires_abort():
            try:
                producer.abort_transaction(self._timeout)
            except KafkaException:
                pass
            else:
                if err.code() in _GROUP_MOVED:  # not written: the caller may retry on the new owner
                    log.warning("node %s: the owners group moved on; transaction for partitions %s aborted",
                                self._node, partitions)
                    return NotOwnerError(f"node {self._node!r} is no longer the owner it was: {err}")
                return DataAccessError(f"partitions {partitions}: transaction aborted, nothing was written: {err}")
        if err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                          KafkaError.INVALID_PRODUCER_EPOCH):
            # The producer is dead: its transaction timed out while this node was stalled, or
            # another process opened this node's transactional id. Nothing was committed. A
            # fresh producer lets the node go on; the group generation (not the producer
            # epoch) is what keeps a node that lost partitions from committing to them.
            log.error("node %s: transactional producer fenced (%s); nothing was committed, "
                      "opening a new producer", self._node, err)
            try:
                self._producer = self._new_producer()
            except KafkaException as e2:
                self._fenced = f"node {self._node!r} cannot open a new transactional producer: {e2}"
                return DataAccessError(self._fenced)
            self._resync(partitions)
            return DataAccessError(f"partitions {partitions}: the transaction was fenced, nothing was written: {err}")
        # Outcome unknown: settle the producer, then bring the projections in line with the log.
        try:
            producer.abort_transaction(self._timeout)
        except KafkaException:
            pass
        self._resync(partitions)
        return DataAccessError(f"partitions {partitions}: commit outcome unknown: {err}")

    def _resync(self, partitions: list[int]) -> None:
        """After a transaction of unknown fate: decide nothing more before the projection
        holds whatever the log now says."""
        for p in partitions:
            try:
                self.restore(p)
            except DataAccessError:
                self._owned.discard(p)  # cannot be trusted to decide until restored on reassignment

    def _apply(self, reqs: list[_Append]) -> None:
        """Write each partition's projection batch and checkpoint, now that the events are committed."""
        for req in reqs:
            if len(req.offsets) != len(req.records):
                self.restore(req.partition)
                raise DataAccessError(f"partition {req.partition}: {len(req.records) - len(req.offsets)} events "
                                      f"were not acknowledged, outcome unknown")
            cp = {req.partition: Checkpoint(max(req.offsets) + 1, self._generation)} if req.offsets else None
            self._projection.write(req.batch, cp)

    # -------------------------------------------------------------------- reads --
    def read(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        return self.reader.read(partition, start, end)

    def read_chunks(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[Chunk]:
        return self.reader.read_chunks(partition, start, end)

    def end_offset(self, partition: int) -> int:
        return self.reader.end_offset(partition)

    def generation(self, partition: int) -> str:
        return self._generation

    def owned(self) -> list[int]:
        return sorted(self._owned)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout)
        self.reader.close()
        if self._producer is not None:
            self._producer.flush(5)
