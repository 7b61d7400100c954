"""The node-to-node channel: short control messages between the nodes of one cluster.

A MatsSocket node that stores an outbox message for a session whose WebSocket is held by
another node must tell that node at once ("new message for session S"); a server-side
close must reach the node holding the socket ("close your socket for S"), and a publish
to a topic must reach every node with subscribers. The store knows which node holds a
session (`get_current_registered_node_for_session`, `store_message_in_outbox`); the
channel carries the nudge.

`NodeChannel` is the interface. Messages are small ``dict``s of JSON values (str, int,
float, bool, None, lists and dicts of them), so that an implementation over a log (a
per-node Kafka topic in cluster mode) can carry them as JSON. Delivery is at most once and
best effort: a message to a node that is gone is dropped. That is enough, because every
message is a hint about state that lives in the store (a node that misses "new message"
still delivers the outbox when the client reconnects, at the latest).

`InProcessChannel` is the implementation for nodes in one process (the embedded store,
tests with several nodes on one loop): nodes that share an `InProcessHub` reach each other.

The store provides a channel of its own, ``store.channel`` (a `NodeChannel` whose `node_name`
is the store's; the MatsSocket server picks it up): an `InProcessChannel` alone when embedded,
`csaf_events.kafka.channel.KafkaChannel` (a topic per node) in cluster mode. What every
implementation must do, and `tests/test_matssocket_channel.py` checks for each one listed in
``IMPLEMENTATIONS`` there: `send` to one node and `broadcast` to every other node of the
namespace, handlers called with the dict as sent (JSON round trip), messages of nodes that
are gone dropped, `close` stops delivery. Only messages sent after a node's end opened need
to reach it (start at the log end), and latency matters more than durability: no
transactions, ``acks=1`` is enough.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

NodeMessage = dict[str, Any]
"""One control message: a dict of JSON values."""

MessageHandler = Callable[[NodeMessage], None]
"""Receives this node's messages. It may be called from any thread and must not block:
hand the work over (for example with ``loop.call_soon_threadsafe``)."""


@runtime_checkable
class NodeChannel(Protocol):
    """Control messages between the nodes of one cluster (see the module docstring)."""

    @property
    def node_name(self) -> str:
        """The node this channel end belongs to (the store's node name)."""

    def send(self, node_name: str, message: NodeMessage) -> None:
        """Deliver `message` to the node named `node_name` (this node included), at most once.
        Never blocks on the receiver; a node that is not there drops it."""

    def broadcast(self, message: NodeMessage) -> None:
        """Deliver `message` to every other node of the cluster (publish fan-out)."""

    def subscribe(self, handler: MessageHandler) -> Callable[[], None]:
        """Call `handler` for every message sent or broadcast to this node; returns a
        function that removes the handler."""

    def close(self) -> None:
        """Stop receiving; later sends from this end are dropped."""


class InProcessHub:
    """The shared medium of the nodes of one process: node name -> its channel end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: dict[str, InProcessChannel] = {}

    def channel(self, node_name: str) -> InProcessChannel:
        """The channel end of `node_name` (one per name while it is open)."""
        return InProcessChannel(node_name, self)

    def _add(self, end: InProcessChannel) -> None:
        with self._lock:
            if end.node_name in self._ends:
                raise ValueError(f"node {end.node_name!r} already has an open channel on this hub")
            self._ends[end.node_name] = end

    def _remove(self, end: InProcessChannel) -> None:
        with self._lock:
            if self._ends.get(end.node_name) is end:
                del self._ends[end.node_name]

    def _end(self, node_name: str) -> InProcessChannel | None:
        with self._lock:
            return self._ends.get(node_name)

    def _others(self, node_name: str) -> list[InProcessChannel]:
        with self._lock:
            return [end for name, end in self._ends.items() if name != node_name]


class Handlers:
    """A channel's message handlers: subscribed and unsubscribed from any thread, each called
    for every message; one that raises does not stop the others, nor the caller."""

    def __init__(self, node_name: str) -> None:
        self._node_name = node_name
        self._lock = threading.Lock()
        self._handlers: list[MessageHandler] = []

    def subscribe(self, handler: MessageHandler) -> Callable[[], None]:
        if not callable(handler):
            raise TypeError("handler must be callable")
        with self._lock:
            self._handlers.append(handler)

        def unsubscribe() -> None:
            with self._lock:
                if handler in self._handlers:
                    self._handlers.remove(handler)
        return unsubscribe

    def deliver(self, message: NodeMessage) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                handler(message)
            except Exception:  # see the class docstring
                log.exception("node message handler failed on %s", self._node_name)

    def clear(self) -> None:
        with self._lock:
            self._handlers.clear()


class InProcessChannel:
    """`NodeChannel` for nodes in one process; delivers in the sender's thread.

    Without a `hub` the node is alone (the embedded store): it reaches only itself."""

    def __init__(self, node_name: str, hub: InProcessHub | None = None) -> None:
        if not isinstance(node_name, str) or not node_name:
            raise ValueError(f"node_name must be a non-empty str, got {node_name!r}")
        self._node_name = node_name
        self._hub = hub if hub is not None else InProcessHub()
        self._handlers = Handlers(node_name)
        self._closed = False
        self._hub._add(self)

    @property
    def node_name(self) -> str:
        return self._node_name

    def send(self, node_name: str, message: NodeMessage) -> None:
        if self._closed:
            return
        end = self._hub._end(node_name)
        if end is None:
            log.debug("no node %r on this hub; dropped %s", node_name, message.get("k"))
            return
        end._deliver(message)

    def broadcast(self, message: NodeMessage) -> None:
        if self._closed:
            return
        for end in self._hub._others(self._node_name):
            end._deliver(message)

    def subscribe(self, handler: MessageHandler) -> Callable[[], None]:
        return self._handlers.subscribe(handler)

    def close(self) -> None:
        self._closed = True
        self._handlers.clear()
        self._hub._remove(self)

    def _deliver(self, message: NodeMessage) -> None:
        self._handlers.deliver(message)
