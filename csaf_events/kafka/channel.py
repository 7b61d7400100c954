"""The node-to-node channel over Kafka (`csaf_events.channel.NodeChannel`, cluster mode).

Each node has a topic of its own, ``<namespace>.nodes.<node>`` (the ``nodes`` role of
topics.yaml: one partition, short retention), created at boot with the node's other topics.

- `send(node, message)` produces the message (JSON) to that node's topic; a node whose
  topic does not exist is not a node of the cluster: the message is dropped.
- `broadcast(message)` produces it to the topic of every other node. The nodes are the
  topics named ``<namespace>.nodes.*`` (cluster metadata, looked up again every
  `DISCOVERY_INTERVAL` seconds in the background, and at once when a send names a node not
  seen yet). A node that stopped keeps its topic, and broadcasts reach it until retention
  drops them. The owners group's members are not asked: describing a group whose
  coordinator broker is down makes librdkafka (2.16) abort the process
  (`rd_kafka_enq_once_del_source_return` assertion), and a node must outlive a broker.
- `subscribe(handler)`: one consumer thread reads this node's topic from the end it had when
  the channel opened (what was sent to the node before it was there is not for it), with a
  long-poll fetch (`TAIL_FETCH_WAIT_MS`): a message is handed to the handlers as soon as the
  broker has it.

Messages are hints about state that lives in the store, so the channel trades durability for
latency: no transactions, ``acks=1``, no retries beyond librdkafka's own, ``linger.ms=0``;
`send` and `broadcast` never block (they enqueue on the producer and return), so they may be
called on an event loop. Delivery is at most once: a message to a node that is down or
restarting is lost, and the node catches up from the store (a reconnecting client gets its
outbox).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from csaf_events.channel import Handlers, MessageHandler, NodeMessage
from csaf_events.kafka.reader import TAIL_FETCH_WAIT_MS, current_end, poll_tail
from csaf_events.topics import Topics

log = logging.getLogger(__name__)

#: Seconds between two lookups of the cluster's nodes (their channel topics) for `broadcast`.
DISCOVERY_INTERVAL = 2.0


class KafkaChannel:
    """`NodeChannel` on per-node Kafka topics (see the module docstring).

    `topics` are the cluster's (namespaced) topics; the node's own topic must exist (the
    backend creates it at boot, with `csaf_events.kafka.topics.ensure`). `timeout` bounds the
    lookups made while opening."""

    def __init__(self, client_config: dict[str, Any], topics: Topics, node_name: str, timeout: float = 30.0) -> None:
        self._node_name = node_name
        self._prefix = f"{topics.nodes.name}."
        self._topic = topics.node_topic(node_name).name
        self._handlers = Handlers(node_name)
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._wake_discovery = threading.Event()
        self._unknown: dict[str, list[bytes]] = {}  # sends to nodes not seen yet, waiting for a lookup
        self._producer = Producer({**client_config, "acks": 1, "linger.ms": 0, "enable.idempotence": False,
                                   "allow.auto.create.topics": False, "message.timeout.ms": 10_000})
        self._consumer = Consumer({**client_config, "group.id": f"{self._topic}.reader",
                                   "enable.auto.commit": False, "isolation.level": "read_uncommitted",
                                   "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS, "allow.auto.create.topics": False})
        try:
            # Start at the end resolved now: OFFSET_END would be resolved at the first fetch,
            # and a message sent in between would be skipped.
            end = current_end(self._consumer, self._topic, timeout)
            self._consumer.assign([TopicPartition(self._topic, 0, end)])
            self._nodes: frozenset[str] = self._discover(timeout)
        except BaseException:
            self._consumer.close()
            raise
        self._threads = [threading.Thread(target=self._receive, name=f"csaf-channel-{node_name}", daemon=True),
                         threading.Thread(target=self._discovery, name=f"csaf-nodes-{node_name}", daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def node_name(self) -> str:
        return self._node_name

    def nodes(self) -> frozenset[str]:
        """The nodes of the cluster as last looked up (this one included)."""
        return self._nodes

    # ---------------------------------------------------------------- sending --
    def send(self, node_name: str, message: NodeMessage) -> None:
        if self._closed:
            return
        value = orjson.dumps(message)
        if node_name in self._nodes:
            self._produce(node_name, value)
            return
        with self._lock:  # a node that booted since the last lookup, or none: look now
            self._unknown.setdefault(node_name, []).append(value)
        self._wake_discovery.set()

    def broadcast(self, message: NodeMessage) -> None:
        if self._closed:
            return
        value = orjson.dumps(message)
        for node in self._nodes:
            if node != self._node_name:
                self._produce(node, value)

    def _produce(self, node_name: str, value: bytes) -> None:
        try:
            self._producer.produce(f"{self._prefix}{node_name}", value, partition=0,
                                   headers=[("from", self._node_name.encode())], on_delivery=_delivered)
            self._producer.poll(0)
        except (BufferError, KafkaException) as e:  # at most once: a hint is dropped, never waited for
            log.warning("node channel %s: dropped a message to %s: %s", self._node_name, node_name, e)

    # -------------------------------------------------------------- receiving --
    def subscribe(self, handler: MessageHandler) -> Callable[[], None]:
        return self._handlers.subscribe(handler)

    def _receive(self) -> None:
        while not self._stop.is_set():
            msg = poll_tail(self._consumer, 0.1, f"node channel {self._topic}", self._producer)
            if msg is None:
                continue
            try:
                message = orjson.loads(msg.value() or b"")  # a null value is no JSON either
            except orjson.JSONDecodeError:
                log.warning("node channel %s: dropped a message that is not JSON at offset %d", self._topic,
                            msg.offset())
                continue
            if not isinstance(message, dict):
                log.warning("node channel %s: dropped a message that is not an object: %r", self._topic, message)
                continue
            self._handlers.deliver(message)

    # -------------------------------------------------------------- discovery --
    def _discover(self, timeout: float) -> frozenset[str]:
        metadata = self._producer.list_topics(timeout=timeout)
        return frozenset(name[len(self._prefix):] for name, t in metadata.topics.items()
                         if name.startswith(self._prefix) and t.error is None and len(name) > len(self._prefix))

    def _discovery(self) -> None:
        while not self._stop.is_set():
            self._wake_discovery.wait(DISCOVERY_INTERVAL)
            self._wake_discovery.clear()
            if self._stop.is_set():
                return
            try:
                self._nodes = self._discover(10.0)
            except Exception as e:  # noqa: BLE001 - keep the last lists; try again
                log.warning("node channel %s: looking up the nodes failed: %s", self._node_name, e)
            with self._lock:
                waiting, self._unknown = self._unknown, {}
            for node, values in waiting.items():
                if node not in self._nodes:
                    log.debug("node channel %s: no node %r; dropped %d message(s)", self._node_name, node,
                              len(values))
                    continue
                for value in values:
                    self._produce(node, value)

    # -------------------------------------------------------------- lifecycle --
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._handlers.clear()
        with self._lock:
            self._unknown.clear()
        self._stop.set()
        self._wake_discovery.set()
        for t in self._threads:
            t.join(5)
        self._producer.flush(2)
        self._consumer.close()


def _delivered(err: KafkaError | None, msg: Any) -> None:
    if err is not None:
        log.debug("node channel: a message to %s was not delivered: %s", msg.topic(), err)
