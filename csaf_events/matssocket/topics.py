"""This node's topic subscriptions: topic -> the local connections subscribed to it.

Subscriptions are not stored: a client resubscribes on every (re)connect, and a published
message goes to the subscribers connected at that moment, on every node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from csaf_events.matssocket.protocol import Envelope

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """A local connection, as a topic delivers to it."""

    async def deliver_pub(self, envelope: Envelope) -> None: ...


class Topics:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscriber]] = {}

    def subscribe(self, topic: str, conn: Subscriber) -> None:
        self._subscribers.setdefault(topic, set()).add(conn)

    def unsubscribe(self, topic: str, conn: Subscriber) -> None:
        subscribers = self._subscribers.get(topic)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self._subscribers[topic]

    def count(self, topic: str) -> int:
        """How many local connections subscribe to `topic` (for operators and tests)."""
        return len(self._subscribers.get(topic, ()))

    async def deliver(self, topic: str, envelope: Envelope) -> int:
        """Send a PUB envelope to every local subscriber of `topic`; returns how many."""
        subscribers = list(self._subscribers.get(topic, ()))
        if subscribers:
            await asyncio.gather(*(conn.deliver_pub(envelope) for conn in subscribers))
        log.debug("PUB on %r to %d local subscriber(s)", topic, len(subscribers))
        return len(subscribers)
