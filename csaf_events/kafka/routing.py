"""Routing a command to the owner of its partition and waiting for the answer (Kafka mode).

The command goes to the commands topic, partition p; the owner of p decides it, commits
its events, and then puts the reply on this node's reply topic (outside the transaction,
so the reply topic holds no transactional records and no owner's open transaction can
hold back another owner's replies). A reply seen means the events are committed.

Every command carries its caller's deadline (wall clock, milliseconds). An owner does not
decide a command after it (it answers "not executed" instead), so a caller that gave up
never sees its write appear later. The caller waits a little past the deadline
(`REPLY_GRACE`) for a command decided just in time to commit; no reply by then, and the
outcome is unknown: `DataAccessError`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from csaf_events.core.clock import now_ms
from csaf_events.core.codec import decode_outcome, encode_command
from csaf_events.core.commands import Command
from csaf_events.core.errors import DataAccessError, unreachable
from csaf_events.kafka.reader import TAIL_FETCH_WAIT_MS, current_end, poll_tail

log = logging.getLogger(__name__)

#: Seconds a caller waits past its command's deadline for the commit of a command decided
#: just before it.
REPLY_GRACE = 2.0


class KafkaRouter:
    def __init__(self, client_config: dict[str, Any], commands_topic: str, reply_topic: str,
                 node_name: str, timeout: float) -> None:
        self._commands = commands_topic
        self._reply_topic = reply_topic
        self._waiting: dict[bytes, Future] = {}
        self.timed_out = 0  # routed calls whose owner did not answer in time (csaf_routed_calls_timed_out_total)
        self._lock = threading.Lock()
        self._producer = Producer({**client_config, "linger.ms": 0, "acks": "all", "enable.idempotence": True})
        self._replies = Consumer({**client_config, "group.id": f"{reply_topic}.reader",
                                  "enable.auto.commit": False, "isolation.level": "read_committed",
                                  "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS})
        # Start at the current end, resolved now: OFFSET_END would be resolved at the first
        # fetch, and a reply written before that would be skipped.
        end = current_end(self._replies, reply_topic, timeout)
        self._replies.assign([TopicPartition(reply_topic, 0, end)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_replies, name=f"csaf-replies-{node_name}", daemon=True)
        self._thread.start()

    def send(self, partition: int, command: Command, timeout: float) -> Any:
        """Have the owner decide `command` within `timeout` seconds; its result, or its error."""
        corr = uuid.uuid4().bytes
        fut: Future = Future()
        deadline_ms = now_ms() + int(timeout * 1000)
        with self._lock:
            self._waiting[corr] = fut
        try:
            try:
                self._producer.produce(self._commands, encode_command(command), partition=partition,
                                       headers=[("corr", corr), ("reply_to", self._reply_topic.encode()),
                                                ("deadline", str(deadline_ms).encode())])
                self._producer.poll(0)
            except (KafkaException, BufferError) as e:
                raise unreachable(f"routing {type(command).__name__} to the owner of partition {partition}",
                                  e) from e
            try:
                raw = fut.result(timeout + REPLY_GRACE)
            except FutureTimeout:
                self.timed_out += 1
                raise DataAccessError(
                    f"the owner of partition {partition} did not answer {type(command).__name__} within "
                    f"{timeout:.1f}s; the outcome is unknown (it is not executed after that)",
                    may_have_written=not command.READ_ONLY) from None
        finally:
            with self._lock:
                self._waiting.pop(corr, None)
        return decode_outcome(raw)

    def in_flight(self) -> int:
        """Routed calls waiting for their owner's answer now."""
        return len(self._waiting)

    def reply(self, reply_topic: str, correlation_id: bytes, outcome: bytes) -> None:
        """Answer a routed command: a read at once, a write once its transaction committed."""
        self._producer.produce(reply_topic, outcome, partition=0, headers=[("corr", correlation_id)])
        self._producer.poll(0)

    def _read_replies(self) -> None:
        while not self._stop.is_set():
            msg = poll_tail(self._replies, 0.05, f"reply topic {self._reply_topic}", self._producer)
            if msg is None:
                continue
            corr = dict(msg.headers() or ()).get("corr")
            with self._lock:
                fut = self._waiting.pop(corr, None) if isinstance(corr, bytes) else None
            if fut is not None:
                fut.set_result(msg.value())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._producer.flush(5)
        self._replies.close()
