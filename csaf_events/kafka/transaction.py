"""The node's transactions: a few transactional producers per node ("lanes"), each with a
committer thread of its own.

Partition p is committed by lane `p % lanes`, always, so a partition's appends commit in
the order they were decided while the lanes' transactions run side by side. A lane's
transactions run one after another, each with every append queued since the previous one
began, and take turns between the lane's producers (`PRODUCERS_PER_LANE`): the broker
refuses a producer's next transaction (`CONCURRENT_TRANSACTIONS`, retried by librdkafka
after a fixed 20 ms for partitions, a few ms for offsets) until it has written the commit
markers of its previous one, and a producer whose previous transaction was two turns ago
does not wait for that. A transaction still begins only after the previous one's commit
returned, so a partition's records are in the log, and its command offsets in the group's
log, in decision order (the group coordinator keeps the later-written offset commit, not
the later-completed one). `transactional.id = <ns>.node.<node>[.<lane>][.p<k>]`; a
restarted node fences its previous incarnation.

The appends of a transaction are committed together: the events, the session rows (for
the session registry topic) and the command offsets of every partition in the
transaction, sent with the group metadata of the latest poll (KIP-447). So a node that was
rebalanced out cannot commit (the group coordinator refuses the stale generation and the
transaction aborts). The answers to the routed commands go out right after the commit,
outside the transaction: a caller's reply topic then holds no transactional records, so an
open transaction of a node that died cannot hold back the replies of the others (a
`read_committed` reader stops at the oldest open transaction of its partition).

A failed transaction never leaves a projection that differs from the log: the batch of a
transaction is written to the projection only after the commit, and every partition of a
failed transaction is retaken (`Ownership.retake`): restored from the log, its routed
commands read again from the committed offset. Callers learn what happened:
`NotOwnerError` when nothing was written (the node retries the call where the partition is
served), `DataAccessError` (may have written) when the outcome is unknown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from csaf_events.core.codec import encode_outcome
from csaf_events.core.errors import DataAccessError, NotOwnerError, ProducerFencedError, TransactionAbortedError
from csaf_events.core.events import SESSION, Record, key_prefix
from csaf_events.core.group_commit import Signal
from csaf_events.core.pending import Pending
from csaf_events.core.timings import Timings
from csaf_events.kafka.ownership import Ownership, RoutedPending
from csaf_events.kafka.watchdog import Watchdog
from csaf_events.log.port import OnCommitted, OnDone
from csaf_events.topics import Topics
from projections.rocks import Checkpoint, Projection, ProjectionBatch

log = logging.getLogger(__name__)

_SESSION_KEY_PREFIX = key_prefix(SESSION)

#: Transactional producers per node unless `open_store(transaction_lanes=)` says otherwise.
#: One: on a broker short of cores each transaction's fixed cost counts (2 cores: 901
#: lifecycles/s with one lane, 756 with two); a broker with cores of its own does better
#: with two (16 cores: +20 %), four make each cycle longer again (docs/benchmarks.md).
DEFAULT_LANES = 1

#: Transactional producers a lane takes turns with (see the module docstring). Two: on this
#: project's 2-core machine a bare transaction of 12 partitions takes 7.3 ms on one producer
#: and 5.8 ms on two taking turns (its offsets call 3.0 -> 0.8 ms); a third adds nothing.
PRODUCERS_PER_LANE = 2

#: The longest a transaction waits for the group coordinator to take its command offsets
#: (at most the request timeout). It takes 4-7 ms when the coordinator answers; a call that
#: has not returned by then is stuck on a coordinator that moved (see `_send_offsets`), and
#: every second waited is a second in which the lane's partitions write nothing.
OFFSETS_BOUND_S = 5.0

#: How long the broker lets a transaction stay open before it aborts it. A node that dies
#: with a transaction open holds up the takeover of its partitions this long at most.
TRANSACTION_TIMEOUT_MS = 10_000

#: The transactional producers' settings that `kafka_config` may tune (besides them: the
#: transactional id and `acks=all`, which it may not). Back-to-back transactions meet
#: CONCURRENT_TRANSACTIONS while the previous commit's markers are written; the default
#: 100 ms backoff would cap a node at ~10 commits/s. The benchmark's floors use these too.
PRODUCER_SETTINGS: dict[str, Any] = {"transaction.timeout.ms": TRANSACTION_TIMEOUT_MS, "linger.ms": 1,
                                     "retry.backoff.ms": 1, "retry.backoff.max.ms": 20}


class Append:
    """One partition's share of a node transaction."""

    __slots__ = (
        "batch",
        "commands",
        "on_committed",
        "on_done",
        "partition",
        "queued_at",
        "records",
        "routed",
        "valid",
    )

    def __init__(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
                 group: Sequence[Pending], on_done: OnDone, valid: Callable[[], bool],
                 on_committed: OnCommitted | None = None) -> None:
        self.partition = partition
        self.records = records
        self.batch = batch
        self.routed = [p for p in group if isinstance(p, RoutedPending)]
        self.commands = len(group)
        self.on_done = on_done
        self.valid = valid
        self.on_committed = on_committed
        self.queued_at = time.perf_counter()


# Errors of the group coordinator: this member's view of the group is stale (fenced by KIP-447).
_GROUP_MOVED = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID,
                KafkaError.REBALANCE_IN_PROGRESS}


#: The producer's own errors that say it was fenced: another process opened its transactional
#: id, or its transaction timed out while this node stalled.
_PRODUCER_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def _nothing_written(message: str, cause: BaseException) -> DataAccessError:
    """A failure before anything was written, as `ProducerFencedError` when `cause` says the
    producer was fenced."""
    fenced = isinstance(cause, KafkaException) and cause.args[0].code() in _PRODUCER_FENCED
    return (ProducerFencedError if fenced else DataAccessError)(message, may_have_written=False)


class _Left(BaseException):
    """Raised on a committer thread whose call was given up on by the watchdog: the thread
    leaves at once, touching nothing (its transaction was failed, another thread goes on)."""


class _Slot:
    """One of a lane's transactional producers (None: lost, opened again on its next turn)."""

    def __init__(self, transactional_id: str, open_producer: Callable[[str], Producer]) -> None:
        self.transactional_id = transactional_id
        self._open = open_producer
        self.producer: Producer | None = open_producer(transactional_id)

    def reopen(self) -> Producer:
        """A fresh producer for this id; its `init_transactions` fences the previous one."""
        self.producer = None
        self.producer = self._open(self.transactional_id)
        return self.producer

    def close(self, node: str) -> None:
        """Flush and let go of the producer, so that it is destroyed now (its threads and
        connections) rather than when a collector pass finds the lane."""
        producer, self.producer = self.producer, None
        try:
            if producer is not None:
                producer.flush(5)
        except BaseException:  # closing
            log.exception("node %s: flushing the transactional producer %s", node, self.transactional_id)


class NodeTransaction:
    """A lane's transactions, run one after another by a committer thread of their own, each
    with every append queued since the previous one began, on the lane's producers in turn."""

    def __init__(self, node_name: str, client_config: dict[str, Any], topics: Topics, projection: Projection,
                 ownership: Ownership, generation: str, timeout: float, timings: Timings,
                 reply: Callable[[str, bytes, bytes], None], lane: int = 0,
                 producers: int | None = None) -> None:
        self._node = node_name
        base = f"{topics.namespace}.node.{node_name}" + (f".{lane}" if lane else "")
        self._config = client_config
        self._topics = topics
        self._projection = projection
        self._ownership = ownership
        self._generation = generation
        self._timeout = timeout
        self._timings = timings
        self._reply = reply  # (reply topic, correlation id, outcome): a routed command's answer
        self._slots = [_Slot(base + (f".p{k}" if k else ""), self._new_producer)
                       for k in range(PRODUCERS_PER_LANE if producers is None else producers)]
        self._turn = 0  # the slot of the next transaction
        self._delivered_at: dict[int, int] = {}  # partition -> offset of its last record in this transaction
        self._queue: list[Append] = []
        self._rounds: list[Callable[[], None]] = []  # partitions' group-commit rounds to lead (`lead`)
        self._queued = threading.Condition()
        self._closed = False
        self.last_failure: BaseException | None = None  # what the last failed transaction's callers got
        self._thread_name = f"csaf-commit-{node_name}-{lane}"
        self._watchdog = Watchdog(f"csaf-watch-{node_name}-{lane}", self._stuck)
        self._committer = self._start_committer()

    def _start_committer(self) -> threading.Thread:
        # A daemon: a committer stuck in a call for good must not hold up the process's exit.
        t = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        t.start()
        return t

    @property
    def transactional_ids(self) -> list[str]:
        return [slot.transactional_id for slot in self._slots]

    def _new_producer(self, transactional_id: str) -> Producer:
        producer = Producer({
            **PRODUCER_SETTINGS,
            **self._config,  # the operator's kafka_config may tune the above, not what follows
            "transactional.id": transactional_id, "acks": "all"})
        producer.init_transactions(self._timeout)  # fences an earlier incarnation of this node
        return producer

    def _send_offsets(self, slot: _Slot, reqs: list[Append], offsets: list[TopicPartition]) -> None:
        """`send_offsets_to_transaction`, bounded. librdkafka does not bound it itself: when
        the group coordinator's broker dies, the call can block for good, past its timeout
        and past the broker's return (librdkafka issues 5456 and 5511; seen here as
        partitions without a write for minutes after a broker restart). A call that has not
        returned in time is given up on by the watchdog (`_stuck`), and this thread leaves
        if it ever returns."""
        producer = slot.producer
        assert producer is not None
        watch = self._watchdog.watch(self._offsets_bound, (slot, reqs))
        try:
            producer.send_offsets_to_transaction(offsets, self._ownership.group_metadata, self._offsets_bound)
        except BaseException:
            if self._watchdog.done(watch):
                raise _Left() from None
            raise
        if self._watchdog.done(watch):
            raise _Left()

    @property
    def _offsets_bound(self) -> float:
        return min(self._timeout, OFFSETS_BOUND_S)

    def _stuck(self, context: tuple[_Slot, list[Append]]) -> None:
        """The offsets call of a transaction did not return in time (on the watchdog's thread).
        Its producer is left to the blocked call and never used again: the transaction is
        never committed (the slot's next producer fences it and aborts it), so nothing of it
        was written. Its callers are told so, and a new committer thread takes the lane on."""
        slot, reqs = context
        slot.producer = None
        self._ownership.refresh_group_metadata()
        bound = self._offsets_bound
        log.error("node %s: sending the command offsets to the group coordinator did not return in %.1fs; "
                  "the transaction is left uncommitted with its producer, a new producer takes over",
                  self._node, bound)
        self._fail(reqs, DataAccessError(
            f"partitions {sorted({r.partition for r in reqs})}: the group coordinator did not take the command "
            f"offsets within {bound:.1f}s; nothing was written", may_have_written=False))
        if not self._closed:
            self._committer = self._start_committer()

    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending] = (), *, on_done: OnDone | None = None,
               valid: Callable[[], bool] | None = None, on_committed: OnCommitted | None = None) -> None:
        """Join the node's next transaction (see `EventLog.append`)."""
        done = None
        if on_done is None:  # a caller that waits for the outcome
            done, outcome = Signal(), []

            def on_done(error: BaseException | None) -> None:
                outcome.append(error)
                done.set()
        req = Append(partition, records, batch, group, on_done, valid or (lambda: True), on_committed)
        with self._queued:
            if self._closed:
                refused = NotOwnerError(f"node {self._node!r} is closing; nothing was written")
            else:
                refused = None
                self._queue.append(req)
                self._queued.notify()
        if refused is not None:
            on_done(refused)
        if done is not None:
            done.wait()
            if outcome[0] is not None:
                raise outcome[0]

    def lead(self, next_round: Callable[[], None]) -> None:
        """Run a partition's group-commit round on the committer, before its next transaction.

        The round decides what its partition has queued and appends it here, so it joins that
        transaction. A round scheduled while the committer runs the others waits for the
        transaction after: each partition has its turn once per transaction, so a busy one
        cannot hold the commit back. Once the lane is closing a round runs at once, here: its
        appends are refused and its callers told so."""
        with self._queued:
            if not self._closed:
                self._rounds.append(next_round)
                self._queued.notify()
                return
        next_round()

    def _run(self) -> None:
        while True:
            with self._queued:
                while not self._queue and not self._rounds and not self._closed:
                    self._queued.wait()
                rounds, self._rounds = self._rounds, []
            for next_round in rounds:  # after a close too: their appends are refused, their callers told
                try:
                    next_round()
                except BaseException:  # a bug in one round must not stop the lane
                    log.exception("node %s: a group-commit round failed", self._node)
            with self._queued:
                reqs, self._queue = self._queue, []
                if not reqs and not self._rounds and self._closed:
                    return
            if not reqs:
                continue
            try:
                self._commit(reqs)
            except _Left:
                return
            except BaseException:  # the committer must outlive a bug in one round
                log.exception("node %s: committing a transaction failed", self._node)

    def _commit(self, reqs: list[Append]) -> None:
        live = []
        for req in reqs:
            if self._ownership.serves(req.partition) and req.valid() and self._ownership.group_metadata is not None:
                live.append(req)
            else:
                req.on_done(NotOwnerError(f"node {self._node!r} no longer serves partition {req.partition} as it "
                                          f"did when this was decided; nothing was written"))
        if not live:
            return
        error: BaseException | None = None
        slot = self._slots[self._turn]
        self._turn = (self._turn + 1) % len(self._slots)
        if slot.producer is None:  # lost to a fencing: open a new one, or fail this round
            try:
                slot.reopen()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                error = _nothing_written(f"node {self._node!r} cannot open a transactional producer, nothing was "
                                         f"written: {type(e).__name__}: {e}", e)
        if error is None:
            try:
                self._transact(slot, live)
            except _Left:
                raise
            except BaseException as e:  # noqa: BLE001 - every request of the transaction shares its fate
                error = e
        if error is not None:
            self._fail(live, error)
            return
        self._count(live, True)
        for req in live:  # visible to others from now on (the log, the replies below)
            if req.on_committed is not None:
                req.on_committed()
        self._answer_routed(live)
        self._apply(live)

    def _count(self, reqs: list[Append], committed: bool) -> None:
        self._timings.transaction(sum(r.commands for r in reqs), sum(len(r.records) for r in reqs),
                                  len({r.partition for r in reqs}), committed)

    def _fail(self, reqs: list[Append], error: BaseException) -> None:
        """A transaction failed: its partitions are retaken and its callers get `error`."""
        self._count(reqs, False)
        self.last_failure = error
        self._ownership.retake(sorted({r.partition for r in reqs}), f"transaction failed: {error}")
        for req in reqs:
            req.on_done(error)

    def _transact(self, slot: _Slot, reqs: list[Append]) -> None:
        producer = slot.producer
        assert producer is not None
        events_topic, sessions_topic = self._topics.events.name, self._topics.sessions.name
        commands_topic = self._topics.commands.name
        offsets = {p: self._ownership.command_offset(p) for p in {r.partition for r in reqs}}
        for req in reqs:
            if req.routed:
                offsets[req.partition] = max(offsets[req.partition], max(p.origin.offset for p in req.routed) + 1)
        began = time.perf_counter()
        self._delivered_at.clear()
        commands = sum(r.commands for r in reqs)
        self._timings.add_total("txn_wait", sum((began - r.queued_at) * r.commands for r in reqs), commands)
        try:
            producer.begin_transaction()
        except KafkaException as e:  # a producer left in a bad state: replaced before its next round
            slot.producer = None
            raise _nothing_written(f"node {self._node!r} could not begin a transaction, nothing was written: {e}",
                                   e) from e
        try:
            # Only the last record of each partition reports its delivery: it gives the
            # partition's checkpoint, and with an idempotent producer the records of a
            # partition are delivered in order (any failure fails the commit). A report per
            # record, or per append, cost a Python callback each, under the interpreter lock.
            last = {req.partition: req.records[-1] for req in reqs if req.records}
            for req in reqs:
                p = req.partition
                final = last.get(p)
                for r in req.records:
                    producer.produce(events_topic, r.value, r.key, partition=p, headers=list(r.headers),
                                     on_delivery=self._delivered(p) if r is final else None)
                    if r.key.startswith(_SESSION_KEY_PREFIX):
                        producer.produce(sessions_topic, r.value, r.key, partition=p, headers=list(r.headers))
            produced = time.perf_counter()
            # The offsets go while the records are on their way; a member the group has moved
            # on from is refused here, and the transaction aborts.
            self._send_offsets(slot, reqs, [TopicPartition(commands_topic, p, o) for p, o in sorted(offsets.items())])
            offsets_sent = time.perf_counter()
            producer.flush(self._timeout)
            flushed = time.perf_counter()
            for attempt in range(3):
                try:
                    producer.commit_transaction(self._timeout)
                    break
                except KafkaException as e:  # a retriable commit error may simply be retried
                    if not e.args[0].retriable() or attempt == 2:
                        raise
        except KafkaException as e:
            raise self._failure(slot, e, reqs) from e
        except Exception as e:  # not the client's error: settle the producer all the same
            try:
                producer.abort_transaction(self._timeout)
            except KafkaException:
                slot.producer = None
            raise DataAccessError(f"partitions {sorted({r.partition for r in reqs})}: transaction failed, outcome "
                                  f"unknown: {e!r}") from e
        committed = time.perf_counter()
        for phase, seconds in (("produce", produced - began), ("send_offsets", offsets_sent - produced),
                               ("flush", flushed - offsets_sent), ("commit", committed - flushed)):
            self._timings.add(phase, seconds, commands)
        self._ownership.commands_committed(offsets)

    def _failure(self, slot: _Slot, e: KafkaException, reqs: list[Append]) -> BaseException:
        """Settle a failed transaction and say what the callers must be told."""
        producer = slot.producer
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
                    self._ownership.refresh_group_metadata()
                    log.warning("node %s: the owners group moved on; transaction for partitions %s aborted",
                                self._node, partitions)
                return TransactionAbortedError(f"partitions {partitions}: transaction aborted, nothing was "
                                               f"written: {err}")
        if err.fatal() or err.code() in _PRODUCER_FENCED:
            # The producer is dead: its transaction timed out while this node was stalled, or
            # another process opened this node's transactional id. Nothing was committed. A
            # fresh producer lets the node go on; the group generation (not the producer
            # epoch) is what keeps a node that lost partitions from committing to them.
            log.error("node %s: transactional producer fenced (%s); nothing was committed, "
                      "opening a new producer", self._node, err)
            try:
                slot.reopen()
            except KafkaException as e2:  # its next transaction tries again
                return _nothing_written(f"node {self._node!r} cannot open a new transactional producer, nothing "
                                        f"was written: {e2}", e2)
            # Not retried for the caller: another incarnation of this node may be running.
            return ProducerFencedError(f"partitions {partitions}: the transaction was fenced, nothing was written: "
                                       f"{err}")
        # Outcome unknown: settle the producer; the partitions are retaken, so the projections
        # come back in line with whatever the log now says.
        try:
            producer.abort_transaction(self._timeout)
        except KafkaException:
            pass
        return DataAccessError(f"partitions {partitions}: commit outcome unknown: {err}")

    def _answer_routed(self, reqs: list[Append]) -> None:
        """Send the answers of the routed commands of a committed transaction. A node that
        dies before they are sent leaves its callers without an answer: they time out with
        `DataAccessError(may_have_written=True)`, which is the truth."""
        for req in reqs:
            for pend in req.routed:
                try:
                    self._reply(pend.origin.reply_topic, pend.origin.correlation_id,
                                encode_outcome(pend.result, pend.error))
                except Exception:  # committed; the caller's timeout tells it so
                    log.exception("node %s: answering a routed command of partition %d failed", self._node,
                                  req.partition)

    def _delivered(self, partition: int) -> Callable[[KafkaError | None, Any], None]:
        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is None:
                self._delivered_at[partition] = msg.offset()
        return delivered

    def _apply(self, reqs: list[Append]) -> None:
        """Write the transaction's projection batches and the checkpoints of its partitions,
        now that the events are committed, in one RocksDB write, and tell each append's
        writer (in order)."""
        t0 = time.perf_counter()
        try:
            written = {r.partition for r in reqs if r.records}
            missing = sorted(written - self._delivered_at.keys())
            if missing:
                raise DataAccessError(f"partitions {missing}: the commit returned but the events were not "
                                      f"acknowledged, outcome unknown")
            checkpoints = {p: Checkpoint(self._delivered_at[p] + 1, self._generation) for p in written}
            batch = reqs[0].batch if len(reqs) == 1 else ProjectionBatch.merged(self._projection,
                                                                                [r.batch for r in reqs])
            self._projection.write(batch, checkpoints or None)
        except BaseException as e:  # noqa: BLE001 - committed, but this node's view is in doubt
            error = e if isinstance(e, DataAccessError) else DataAccessError(
                f"partitions {sorted({r.partition for r in reqs})}: committed, but applying it here failed: {e!r}")
            self._ownership.retake(sorted({r.partition for r in reqs}), str(error))
            for r in reqs:
                r.on_done(error)
            return
        self._timings.add("apply", time.perf_counter() - t0, sum(r.commands for r in reqs))
        for req in reqs:
            req.on_done(None)

    def close(self) -> None:
        with self._queued:
            self._closed = True
            self._queued.notify()
        self._committer.join(self._timeout)
        self._watchdog.close()
        for slot in self._slots:
            slot.close(self._node)
