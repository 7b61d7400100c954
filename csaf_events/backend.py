"""The backend interface: what a store runs on."""

from __future__ import annotations

from csaf_events.channel import NodeChannel
from csaf_events.node import Node
from csaf_events.registry import SessionRegistry


class Backend:
    """What a store runs on: a node (projection, log, writers, router), a session registry,
    and this node's end of the node-to-node channel (open after `boot`, closed by `close`)."""

    node: Node
    registry: SessionRegistry
    channel: NodeChannel

    def boot(self) -> None:
        raise NotImplementedError

    def sync_registry(self) -> None:
        """Return once this node's registry holds every session write that returned anywhere
        in the cluster before this call (embedded: always true)."""

    def close(self) -> None:
        raise NotImplementedError
