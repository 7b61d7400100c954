"""The backend interface: what a store runs on."""

from __future__ import annotations

from csaf_events.node import Node
from csaf_events.registry import SessionRegistry


class Backend:
    """What a store runs on: a node (projection, log, writers, router) and a session registry."""

    node: Node
    registry: SessionRegistry

    def boot(self) -> None:
        raise NotImplementedError

    def sync_registry(self) -> None:
        """Return once this node's registry holds every session write that returned anywhere
        in the cluster before this call (embedded: always true)."""

    def close(self) -> None:
        raise NotImplementedError
