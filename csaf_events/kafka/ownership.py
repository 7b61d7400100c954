"""Which partitions this node owns, and taking them over: the one holder of that fact.

The owners group (a consumer group on the commands topic, cooperative-sticky) assigns
commands partition p to a member; that member owns events partition p. An assigned
partition is not served at once. Its commands stay paused while the takeover thread
fetches its committed command offset (fetched *stable*: this waits until a transaction
the previous owner still had open on it is committed or aborted) and restores the
projection from its checkpoint plus the committed log tail. Every failure of those steps
is logged with its cause and retried with backoff until the partition is served or
revoked. Then the partition is served: its writer exists, its commands are read again
from the committed offset.

A served partition whose transaction failed is *retaken* the same way: the projection
is brought back to what the log says and the routed commands of the failed transaction
are read again from the committed offset and decided again (or not at all, when their
caller's deadline passed). So a routed command is never dropped, never executed twice.

The poll thread only polls: a takeover never blocks it, so the group generation that the
node's transactions carry (KIP-447) is current while a restore runs, and the writes of
the partitions already served go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from csaf_events.core.commands import Command
from csaf_events.core.pending import Pending
from csaf_events.kafka.reader import TAIL_FETCH_WAIT_MS
from csaf_events.log.status import Takeover
from csaf_events.topics import Topics

log = logging.getLogger(__name__)

#: Backoff of a takeover step that failed: first retry, and the most between retries (seconds).
RETRY_FIRST, RETRY_MAX = 0.2, 5.0

#: Partitions taken over at once, each on a thread of its own.
TAKEOVER_THREADS = 4

#: Seconds between reads of the group metadata outside the rebalance callbacks (a safety
#: net: a transaction refused for a stale generation asks for a read at once).
METADATA_REFRESH_S = 30.0


class Origin(NamedTuple):
    """Where a routed command came from: the owner's reply goes there, in the transaction."""

    reply_topic: str
    correlation_id: bytes
    offset: int
    deadline_ms: int | None  # wall clock; the caller gives up then


class RoutedPending(Pending):
    """A command routed here by another node, as this node's writer decides it: its `Origin`
    says where the reply goes (in the transaction that commits it) and when its caller gives
    up (after that it is not decided)."""

    __slots__ = ("origin",)
    answered_in_append = True

    def __init__(self, command: Command, origin: Origin) -> None:
        super().__init__(command)
        self.origin = origin

    def late_ms(self, now_ms: int) -> int | None:
        deadline = self.origin.deadline_ms
        return None if deadline is None or deadline > now_ms else now_ms - deadline


class Ownership:
    def __init__(self, node_name: str, client_config: dict[str, Any], topics: Topics, timeout: float,
                 restore: Callable[[int], int]) -> None:
        self._node = node_name
        self._config = client_config
        self._commands = topics.commands.name
        self._group_id = topics.owners_group
        self._timeout = timeout
        self._restore = restore
        # One lock for every change of what is owned; the callbacks to the node (writers)
        # run under it, so a revoke can never overtake the serving of the same partition.
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._assigned: dict[int, int] = {}  # partition -> assignment epoch (served or not)
        self._served: set[int] = set()
        self._due: dict[int, tuple[float, float, int]] = {}  # not served: (retry at, backoff, attempts)
        self._in_progress: set[int] = set()  # takeovers running now
        self._epoch = 0
        self._commands_to_resume: dict[int, int] = {}  # served partition -> command offset to seek to
        self._commands_to_pause: set[int] = set()
        self._command_offsets: dict[int, int] = {}  # served partition -> next command offset to commit
        self.group_metadata: Any = None
        self._metadata_due = 0.0  # monotonic time of the next read of the group metadata
        self.takeovers: dict[int, Takeover] = {}
        self.last_poll_error: str | None = None
        self._on_served: Callable[[list[int]], None] = lambda ps: None
        self._on_revoked: Callable[[list[int]], None] = lambda ps: None
        self.on_command: Callable[[int, bytes, Origin], None] = lambda p, raw, origin: None
        self._first_assignment = threading.Event()
        self._stop = threading.Event()
        self._group: Consumer | None = None
        self._offsets: Consumer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------- reading --
    def serves(self, partition: int) -> bool:
        return partition in self._served

    def owned(self) -> list[int]:
        """The partitions this node serves now (writes are decided here)."""
        return sorted(self._served)

    def assigned(self) -> list[int]:
        """The partitions the group gave this node, served or still being taken over."""
        return sorted(self._assigned)

    def command_offset(self, partition: int) -> int:
        """The next command offset of a served partition to commit (0 when not served)."""
        return self._command_offsets.get(partition, 0)

    def commands_committed(self, offsets: dict[int, int]) -> None:
        """A transaction committed these next command offsets: kept for the partitions still
        served (under the lock, so a revoke or a retake meanwhile is not overwritten)."""
        with self._lock:
            for p, offset in offsets.items():
                if p in self._served:
                    self._command_offsets[p] = offset

    def wait_ready(self, timeout: float) -> bool:
        """Wait for the first assignment and the takeover of everything assigned then."""
        deadline = time.monotonic() + timeout
        if not self._first_assignment.wait(timeout):
            return False
        with self._lock:
            while set(self._assigned) - self._served:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._work.wait(min(left, 0.1))
        return True

    # ----------------------------------------------------------------- lifecycle --
    def start(self, on_served: Callable[[list[int]], None], on_revoked: Callable[[list[int]], None]) -> None:
        self._on_served, self._on_revoked = on_served, on_revoked
        self._offsets = Consumer({**self._config, "group.id": self._group_id, "enable.auto.commit": False,
                                  "isolation.level": "read_committed"})  # never subscribes: offsets only
        self._group = Consumer({
            **self._config, "group.id": self._group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS})
        self._group.subscribe([self._commands], on_assign=self._assign, on_revoke=self._revoke,
                              on_lost=self._revoke)
        for target, name in ((self._poll_loop, "owner"), (self._takeover_loop, "takeover")):
            t = threading.Thread(target=target, name=f"csaf-{name}-{self._node}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._work.notify_all()
        for t in self._threads:
            t.join(self._timeout)
        if self._offsets is not None:
            self._offsets.close()

    def refresh_group_metadata(self) -> None:
        """Have the poll thread read the group metadata again at its next turn."""
        self._metadata_due = 0.0

    # ------------------------------------------------------- the group's callbacks --
    # They run on the poll thread inside poll(); they must not raise (an exception would
    # come out of poll() with the rebalance half done) and must not block.
    def _assign(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        try:
            # the new generation, before a takeover can finish and a transaction carry it
            self.group_metadata = consumer.consumer_group_metadata()
            consumer.incremental_assign(tps)
            if tps:
                consumer.pause(tps)  # until taken over: then read again from the committed offset
            with self._lock:
                now = time.monotonic()
                for tp in tps:
                    self._epoch += 1
                    self._assigned[tp.partition] = self._epoch
                    self._due[tp.partition] = (now, RETRY_FIRST, 0)
                self._work.notify_all()
            if tps:
                log.info("node %s: assigned partitions %s; taking them over", self._node,
                         sorted(tp.partition for tp in tps))
        except BaseException:  # see above; the takeover thread retries what it can
            log.exception("node %s: handling the assignment of %s failed", self._node, tps)
        finally:
            self._first_assignment.set()

    def _revoke(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        try:
            self.group_metadata = consumer.consumer_group_metadata()
            self.release([tp.partition for tp in tps], "revoked by the owners group")
        except BaseException:  # see above
            log.exception("node %s: handling the revocation of %s failed", self._node, tps)

    def release(self, partitions: Iterable[int], why: str) -> None:
        ps = sorted(partitions)
        with self._lock:
            served = [p for p in ps if p in self._served]
            for p in ps:
                self._assigned.pop(p, None)
                self._due.pop(p, None)
                self._served.discard(p)
                self._command_offsets.pop(p, None)
                self._commands_to_resume.pop(p, None)
            if served:
                self._on_revoked(served)
            self._work.notify_all()
        if ps:
            log.info("node %s: gave up partitions %s (%s)", self._node, ps, why)

    def retake(self, partitions: Iterable[int], why: str) -> None:
        """Stop serving partitions whose state is in doubt (a failed transaction) and take
        them over again: restore from the log, read their commands again from the committed
        offset. Partitions no longer assigned are left to their new owner."""
        with self._lock:
            ps = sorted(p for p in set(partitions) if p in self._served)
            if not ps:
                return
            now = time.monotonic()
            for p in ps:
                self._served.discard(p)
                self._command_offsets.pop(p, None)
                self._commands_to_resume.pop(p, None)
                self._epoch += 1
                self._assigned[p] = self._epoch
                self._due[p] = (now, RETRY_FIRST, 0)
            self._commands_to_pause.update(ps)
            self._on_revoked(ps)
            self._work.notify_all()
        log.warning("node %s: taking partitions %s over again: %s", self._node, ps, why)

    # ----------------------------------------------------------------- the threads --
    def _poll_loop(self) -> None:
        group = self._group
        assert group is not None
        while not self._stop.is_set():
            try:
                self._pause_and_resume(group)
                msg = group.poll(0.05)
                # Only this thread touches the group consumer, so the group metadata for the
                # transactional offset commits is read here, and the transactions use that
                # copy: in every rebalance callback (a new generation), when a transaction was
                # refused for a stale one, and every METADATA_REFRESH_S besides. Not after every
                # poll: the call waits for the client's own thread while it holds the
                # interpreter lock (4-7 % of that lock under load, at one call a second).
                if time.monotonic() >= self._metadata_due:
                    self._metadata_due = time.monotonic() + METADATA_REFRESH_S
                    self.group_metadata = group.consumer_group_metadata()
            except BaseException as e:  # noqa: BLE001 - KafkaException, a KafkaError, a callback's error
                self.last_poll_error = f"{type(e).__name__}: {e}"
                log.warning("node %s: polling the owners group failed (%s); polling on", self._node,
                            self.last_poll_error)
                time.sleep(0.2)
                continue
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("node %s: owners group: %s", self._node, err)
                continue
            p = msg.partition()
            if p not in self._served:  # taken over later: read again from the committed offset
                continue
            # the stubs type any message: a consumed one has its offset, a routed command a
            # value, and a consumer gets headers as (name, bytes) pairs
            h = cast("dict[str, bytes]", dict(msg.headers() or ()))
            deadline = h.get("deadline")
            origin = Origin(h.get("reply_to", b"").decode(), h.get("corr", b""), cast(int, msg.offset()),
                            int(deadline) if deadline else None)
            try:
                self.on_command(p, cast(bytes, msg.value()), origin)
            except Exception:  # one bad command must not stop the node
                log.exception("node %s: handling a routed command at %s[%d]@%d failed", self._node,
                              self._commands, p, msg.offset())
        try:
            group.close()  # leaves the group: the others take over at once
        except BaseException:
            log.exception("node %s: leaving the owners group failed", self._node)

    def _pause_and_resume(self, group: Consumer) -> None:
        with self._lock:
            pause, self._commands_to_pause = self._commands_to_pause, set()
            resume, self._commands_to_resume = self._commands_to_resume, {}
        if pause:
            group.pause([TopicPartition(self._commands, p) for p in sorted(pause)])
        for p, offset in sorted(resume.items()):
            tp = TopicPartition(self._commands, p, offset)
            try:
                group.seek(tp)  # commands seen before the takeover are read again
            except KafkaException as e:
                # _STATE: the partition has not started fetching yet, so it starts where the
                # consumer's own (stable) committed-offset fetch says, which is this offset.
                log.info("node %s: seek %s[%d]@%d not done (%s); resuming from the committed offset",
                         self._node, self._commands, p, offset, e)
            group.resume([TopicPartition(self._commands, p)])

    def _takeover_loop(self) -> None:
        """Start the takeover of each partition due, each on its own pool thread: one waiting
        for a previous owner's open transaction must not hold up the others (a partition
        retaken after a failed transaction of this node among them)."""
        with ThreadPoolExecutor(TAKEOVER_THREADS, thread_name_prefix=f"csaf-takeover-{self._node}") as pool:
            while not self._stop.is_set():
                with self._lock:
                    now = time.monotonic()
                    due = {p: self._assigned[p] for p, (at, _, _) in self._due.items()
                           if at <= now and p not in self._in_progress}
                    if not due:
                        waits = [at - now for p, (at, _, _) in self._due.items() if p not in self._in_progress]
                        self._work.wait(min([0.5, *waits]))
                        continue
                    self._in_progress.update(due)
                for p, epoch in due.items():
                    pool.submit(self._take_over, p, epoch)

    def _take_over(self, p: int, epoch: int) -> None:
        """One attempt; a failed one is retried after its backoff."""
        try:
            t0 = time.monotonic()
            try:
                assert self._offsets is not None
                [tp] = self._offsets.committed([TopicPartition(self._commands, p)], timeout=self._timeout)
                if tp.error is not None:
                    raise KafkaException(tp.error)
                offset = max(tp.offset, 0)
            except BaseException as e:  # noqa: BLE001 - retried: a takeover must always finish
                self._failed({p: epoch}, "fetching the committed command offset", e)
                return
            settled = time.monotonic() - t0
            if self._assigned.get(p) != epoch:
                return  # revoked or retaken meanwhile
            t1 = time.monotonic()
            try:
                events = self._restore(p)
            except BaseException as e:  # noqa: BLE001 - retried
                self._failed({p: epoch}, "restoring the projection", e)
                return
            took = time.monotonic() - t1
            with self._lock:
                if self._assigned.get(p) != epoch:
                    return
                attempts = self._due.pop(p, (0, 0, 0))[2] + 1
                self._served.add(p)
                self._command_offsets[p] = offset
                self._commands_to_resume[p] = offset
                self.takeovers[p] = Takeover(p, settled, events, took, attempts, time.time())
                self._on_served([p])
            log.info("node %s took over partition %d: previous owner settled in %.3fs, %d events restored "
                     "in %.3fs (attempt %d)", self._node, p, settled, events, took, attempts)
        finally:
            with self._lock:
                self._in_progress.discard(p)
                self._work.notify_all()

    def _failed(self, due: dict[int, int], step: str, e: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            for p, epoch in due.items():
                if self._assigned.get(p) != epoch or p not in self._due:
                    continue
                _, backoff, attempts = self._due[p]
                self._due[p] = (now + backoff, min(backoff * 2, RETRY_MAX), attempts + 1)
                log.warning("node %s: taking over partition %d failed while %s (attempt %d, retrying in "
                            "%.1fs): %s: %s", self._node, p, step, attempts + 1, backoff, type(e).__name__, e)
