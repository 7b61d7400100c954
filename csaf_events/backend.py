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
    #: Whether a call may wait for I/O or for another node (a transaction, a routed call, an
    #: fsync) rather than return after its own CPU work (see `ClusterStoreAndForward.calls_wait`).
    calls_wait: bool = True

    def boot(self) -> None:
        raise NotImplementedError

    def sync_registry(self) -> None:
        """Return once this node's registry holds every session write that returned anywhere
        in the cluster before this call (embedded: always true)."""

    def close(self) -> None:
        raise NotImplementedError
