"""Reading the events topic: committed records of one partition, without joining any group.

Used by the owner's restore, by `session_history` and by the offline tools (`csaf
rebuild`, `csaf audit`, `csaf replay`), which must never take partitions from live nodes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any, Protocol, cast

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Message, Producer, TopicPartition

from csaf_events.core.errors import DataAccessError
from csaf_events.kafka.end_offsets import EndOffsets
from csaf_events.log.entries import Chunk, LogEntry

log = logging.getLogger(__name__)

#: Messages taken from librdkafka per call while reading a partition through.
RESTORE_FETCH = 10_000

#: fetch.wait.max.ms of the consumers that wait for new records (routed commands, replies).
#: The broker answers a waiting fetch as soon as a record arrives, so a long wait costs no
#: latency; a short one makes every idle consumer ask the broker hundreds of times a second
#: (an idle node cost the broker 0.19 cores with all its tails at 5 ms, 0.03 at 500 ms).
#: Not for a consumer whose connection is also asked for offsets: the broker answers one
#: connection's requests in order, so those answers would wait for the fetch.
TAIL_FETCH_WAIT_MS = 500


def current_end(consumer: Consumer, topic: str, timeout: float) -> int:
    """The end offset of partition 0 of a topic this node just created (its reply and node
    topics), asked again while the client's metadata does not know the topic yet
    (UNKNOWN_TOPIC_OR_PART right after the creation, seen when nodes boot together)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = max(0.5, deadline - time.monotonic())
            return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=left, cached=False)[1]
        except KafkaException as e:
            if time.monotonic() >= deadline or e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            time.sleep(0.2)


def poll_tail(consumer: Consumer, timeout: float, what: str, producer: Producer | None = None) -> Message | None:
    """The next message of a tailing consumer, or None: nothing came, the end of a partition,
    or an error (logged, naming `what`). It never raises: a tail must outlive every client
    error. `producer` (the tail's own, for replies or hints) is served its callbacks too."""
    try:
        msg = consumer.poll(timeout)
        if producer is not None:
            producer.poll(0)
    except BaseException as e:  # noqa: BLE001 - see above
        log.warning("%s: %s: %s; polling on", what, type(e).__name__, e)
        time.sleep(0.1)
        return None
    if msg is None:
        return None
    err = msg.error()
    if err is not None:
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: %s", what, err)
        return None
    return msg


def next_batch(consumer: Consumer, timeout: float, max_messages: int = 2000) -> list[Any]:
    """Messages available now, waiting up to `timeout` only for the first one.

    `consume(n, timeout)` alone waits until it has n messages or the timeout passed, which
    adds the whole timeout to every quiet read; `poll` returns at the first message."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(num_messages=max_messages - 1, timeout=0)]


def read_chunks(consumer: Consumer, topic: str, partition: int, start: int, end: int | None,
                timeout: float) -> Iterator[list[Message]]:
    """Committed records of one partition from `start` to `end` (or the end seen when
    reading), as the lists of messages librdkafka hands over: a restore pays per record
    only for what it uses.

    Stops at partition EOF, so a transaction's control record after the last data record
    cannot make it wait forever."""
    # an offset, not OFFSET_BEGINNING: resolving that costs a lookup of about 0.5 s; an offset
    # the log no longer has is reset to the earliest one (auto.offset.reset)
    consumer.assign([TopicPartition(topic, partition, max(start, 0))])
    deadline = time.monotonic() + timeout
    try:
        while True:
            msgs = next_batch(consumer, 0.5, RESTORE_FETCH)
            if not msgs:
                if time.monotonic() > deadline:
                    raise DataAccessError(f"reading {topic}[{partition}] from {start} timed out",
                                          may_have_written=False)
                continue
            deadline = time.monotonic() + timeout
            chunk, stop = msgs, False
            errors = list(map(Message.error, msgs))  # per message in C: this loop is the restore's
            if any(errors):  # an error, or the end of the partition
                cut, error = next((i, err) for i, err in enumerate(errors) if err is not None)
                if error.code() != KafkaError._PARTITION_EOF:
                    raise DataAccessError(f"reading {topic}[{partition}]: {error}", may_have_written=False)
                chunk, stop = msgs[:cut], True
            if end is not None and chunk and chunk[-1].offset() >= end:
                chunk, stop = [m for m in chunk if m.offset() < end], True
            if chunk:
                yield chunk
            if stop:
                return
    finally:
        consumer.unassign()


def read_partition(consumer: Consumer, topic: str, partition: int, start: int, end: int | None,
                   timeout: float) -> Iterator[LogEntry]:
    """The records of `read_chunks` one by one, with their headers."""
    for msgs in read_chunks(consumer, topic, partition, start, end, timeout):
        yield from entries(partition, msgs)


class _EventMessage(Protocol):
    """A consumed record of the events topic. The stubs type any message: every accessor
    optional, headers a dict or a list. A consumed record has its offset, each of the
    events topic a key, and a consumer gets headers as (name, bytes) pairs."""

    def offset(self) -> int: ...
    def key(self) -> bytes: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


def entries(partition: int, msgs: list[Message]) -> Iterator[LogEntry]:
    for m in cast("list[_EventMessage]", msgs):  # one cast for the list, none per record
        yield LogEntry(partition, m.offset(), m.key(), m.value(), tuple(m.headers() or ()))


class KafkaReader:
    """Reads one topic's partitions (read_committed, assign only: no group membership).

    `end_offset` is the *stable* end: the high watermark once every transaction open when
    it was asked has been decided. `commit_transaction()` returns before the commit markers
    are written, so a read that stopped at the last stable offset right after a write
    could miss that write; waiting for the LSO to pass the high watermark closes the gap.
    """

    def __init__(self, client_config: dict[str, Any], topic: str, generation: str, group_id: str,
                 timeout: float) -> None:
        self.topic = topic
        self._generation = generation
        self._config = client_config
        self._group_id = group_id
        self._timeout = timeout
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        self._end_offsets = EndOffsets(client_config)

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer({**self._config, "group.id": self._group_id, "enable.auto.commit": False,
                                       "isolation.level": "read_committed", "enable.partition.eof": True,
                                       "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
                                       # a restore reads a partition through: large fetches, and the
                                       # next one at once when the queue has room (the default
                                       # waits up to 1 s once the queue was full)
                                       "max.partition.fetch.bytes": 16 << 20, "fetch.queue.backoff.ms": 1})
        return self._consumer

    def _offset(self, partition: int, level: IsolationLevel) -> int:
        return self._end_offsets(self.topic, [partition], level, self._timeout)[partition]

    def end_offset(self, partition: int) -> int:
        high = self._offset(partition, IsolationLevel.READ_UNCOMMITTED)
        deadline = time.monotonic() + self._timeout
        while self._offset(partition, IsolationLevel.READ_COMMITTED) < high:
            if time.monotonic() > deadline:
                raise DataAccessError(f"{self.topic}[{partition}]: a transaction stayed undecided for "
                                      f"{self._timeout:.0f}s; cannot tell where the committed log ends",
                                      may_have_written=False)
            time.sleep(0.01)
        return high

    def read(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        for msgs in self._messages(partition, start, end):
            yield from entries(partition, msgs)

    def read_chunks(self, partition: int, start: int = 0, end: int | None = None) -> Generator[Chunk, None, None]:
        for msgs in self._messages(partition, start, end):  # offsets and keys are there (`_EventMessage`)
            yield Chunk(cast(int, msgs[-1].offset()) + 1, cast("list[bytes]", list(map(Message.key, msgs))),
                        list(map(Message.value, msgs)))

    def _messages(self, partition: int, start: int, end: int | None) -> Iterator[list[Message]]:
        if end is None:
            end = self.end_offset(partition)
        if start >= end:
            return
        with self._lock:
            yield from read_chunks(self._reader(), self.topic, partition, start, end, self._timeout)

    def generation(self, partition: int) -> str:
        return self._generation

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
        self._end_offsets.close()
