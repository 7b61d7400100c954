"""The node transaction: one transactional producer per node, and its group commit.

`transactional.id = <ns>.node.<node>`; a restarted node fences its previous incarnation.
The appends pending on all the partitions this node serves are committed together in one
transaction: the events, the session rows (for the session registry topic), the replies
to routed commands, and the command offsets of every partition in the transaction, sent
with the group metadata of the latest poll (KIP-447). So a node that was rebalanced out
cannot commit (the group coordinator refuses the stale generation and the transaction
aborts).

A failed transaction never leaves a projection that differs from the log: the batch of a
transaction is written to the projection only after the commit, and every partition of a
failed transaction is retaken (`Ownership.retake`): restored from the log, its routed
commands read again from the committed offset. Callers learn what happened:
`NotOwnerError` when nothing was written (the node retries the call where the partition is
served), `DataAccessError` (may have written) when the outcome is unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from csaf_events.codec import encode_outcome
from csaf_events.errors import DataAccessError, NotOwnerError
from csaf_events.events import SESSION, Record
from csaf_events.group_commit import GroupCommit, Signal
from csaf_events.kafka.ownership import Ownership
from csaf_events.topics import Topics
from projections.rocks import Checkpoint, Projection, ProjectionBatch

if TYPE_CHECKING:
    from csaf_events.writer import Pending

log = logging.getLogger(__name__)

_SESSION_KEY_PREFIX = b'["' + SESSION.encode() + b'",'

#: How long the broker lets a transaction stay open before it aborts it. A node that dies
#: with a transaction open holds up the takeover of its partitions this long at most.
TRANSACTION_TIMEOUT_MS = 10_000


class Append:
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


class NodeTransaction:
    def __init__(self, node_name: str, client_config: dict[str, Any], topics: Topics, projection: Projection,
                 ownership: Ownership, generation: str, timeout: float) -> None:
        self._node = node_name
        self._config = client_config
        self._topics = topics
        self._projection = projection
        self._ownership = ownership
        self._generation = generation
        self._timeout = timeout
        self._producer: Producer | None = self._new_producer()
        self._commits: GroupCommit[Append] = GroupCommit(self._commit)
        self.last_error: str | None = None

    def _new_producer(self) -> Producer:
        producer = Producer({
            **self._config, "transactional.id": f"{self._topics.namespace}.node.{self._node}",
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS, "linger.ms": 1, "acks": "all",
            # Back-to-back transactions meet CONCURRENT_TRANSACTIONS while the previous commit's
            # markers are written; the default 100 ms backoff would cap a node at ~10 commits/s.
            "retry.backoff.ms": 1, "retry.backoff.max.ms": 20})
        producer.init_transactions(self._timeout)  # fences an earlier incarnation of this node
        return producer

    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending] = ()) -> None:
        """Join the node's next transaction: the appends of all partitions pending meanwhile
        are committed together (see `GroupCommit`)."""
        if not self._ownership.serves(partition) or self._ownership.group_metadata is None:
            raise NotOwnerError(f"node {self._node!r} does not serve partition {partition} (now)")
        req = Append(partition, records, batch, [p for p in group if p.origin is not None])
        self._commits.add(req)
        self._commits.wait(req)
        if req.error is not None:
            raise req.error

    def _commit(self, reqs: list[Append]) -> None:
        live = []
        for req in reqs:
            if self._ownership.serves(req.partition):
                live.append(req)
            else:
                req.error = NotOwnerError(f"node {self._node!r} no longer serves partition {req.partition}")
                req.done.set()
        if live and self._producer is None:  # lost to a fencing: open a new one, or fail this round
            try:
                self._producer = self._new_producer()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                err = DataAccessError(f"node {self._node!r} cannot open a transactional producer, nothing was "
                                      f"written: {type(e).__name__}: {e}", may_have_written=False)
                self.last_error = str(err)
                for req in live:
                    req.error = err
                    req.done.set()
                return
        if live:
            try:
                self._transact(live)
                self._apply(live)
            except BaseException as e:  # every request of the transaction shares its fate
                self.last_error = f"{type(e).__name__}: {e}"
                partitions = sorted({r.partition for r in live})
                self._ownership.retake(partitions, f"transaction failed: {e}")
                for req in live:
                    req.error = e
            for req in live:
                req.done.set()

    def _transact(self, reqs: list[Append]) -> None:
        producer = self._producer
        assert producer is not None
        events_topic, sessions_topic = self._topics.events.name, self._topics.sessions.name
        commands_topic = self._topics.commands.name
        offsets = {p: self._ownership.command_offsets.get(p, 0) for p in {r.partition for r in reqs}}
        for req in reqs:
            if req.routed:
                offsets[req.partition] = max(offsets[req.partition], max(p.origin.offset for p in req.routed) + 1)
        try:
            producer.begin_transaction()
        except KafkaException as e:  # a producer left in a bad state: replaced before the next round
            self._producer = None
            raise DataAccessError(f"node {self._node!r} could not begin a transaction, nothing was written: {e}",
                                  may_have_written=False) from e
        try:
            for req in reqs:
                def delivered(err: KafkaError | None, msg: Any, req: Append = req) -> None:
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
                [TopicPartition(commands_topic, p, o) for p, o in sorted(offsets.items())],
                self._ownership.group_metadata, self._timeout)
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
        for p, o in offsets.items():
            if self._ownership.serves(p):
                self._ownership.command_offsets[p] = o

    def _failure(self, e: KafkaException, reqs: list[Append]) -> BaseException:
        """Settle a failed transaction and say what the callers must be told."""
        producer = self._producer
        assert producer is not None
        err = e.args[0]
        partitions = sorted({r.partition for r in reqs})
        if err.txn_requires_abort():
            try:
                producer.abort_transaction(self._timeout)
            except KafkaException:
                pass
            else:
                if err.code() in _GROUP_MOVED:
                    log.warning("node %s: the owners group moved on; transaction for partitions %s aborted",
                                self._node, partitions)
                return NotOwnerError(f"partitions {partitions}: transaction aborted, nothing was written: {err}")
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
            except KafkaException as e2:  # the next transaction tries again
                self._producer = None
                return DataAccessError(f"node {self._node!r} cannot open a new transactional producer, nothing "
                                       f"was written: {e2}", may_have_written=False)
            # Not retried for the caller: another incarnation of this node may be running.
            return DataAccessError(f"partitions {partitions}: the transaction was fenced, nothing was written: "
                                   f"{err}", may_have_written=False)
        # Outcome unknown: settle the producer; the partitions are retaken, so the projections
        # come back in line with whatever the log now says.
        try:
            producer.abort_transaction(self._timeout)
        except KafkaException:
            pass
        return DataAccessError(f"partitions {partitions}: commit outcome unknown: {err}")

    def _apply(self, reqs: list[Append]) -> None:
        """Write each partition's projection batch and checkpoint, now that the events are committed."""
        for req in reqs:
            if len(req.offsets) != len(req.records):
                raise DataAccessError(f"partition {req.partition}: {len(req.records) - len(req.offsets)} events "
                                      f"were not acknowledged, outcome unknown")
            cp = {req.partition: Checkpoint(max(req.offsets) + 1, self._generation)} if req.offsets else None
            self._projection.write(req.batch, cp)

    def close(self) -> None:
        try:
            if self._producer is not None:
                self._producer.flush(5)
        except BaseException:  # noqa: BLE001 - closing
            log.exception("node %s: flushing the transactional producer", self._node)
