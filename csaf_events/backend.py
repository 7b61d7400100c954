"""The backend interface: what a store runs on, and what it tells health and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import NamedTuple

from csaf_events.channel import NodeChannel
from csaf_events.core.node import Node
from csaf_events.core.registry import SessionRegistry


class RoutedCalls(NamedTuple):
    """Calls this node sent to another node's partition."""

    in_flight: int  # waiting for the owner's answer now
    timed_out: int  # since boot: the owner did not answer in time (the caller got DataAccessError)


class Backend(ABC):
    """What a store runs on: a node (projection, log, writers, router), a session registry,
    and this node's end of the node-to-node channel (open after `boot`, closed by `close`).

    The facts an operator reads (`csaf_events.ops.health`, `csaf_events.ops.metrics`) come from here
    and from the node's log (`EventLog.status`), never from an adapter's private state."""

    node: Node
    registry: SessionRegistry
    channel: NodeChannel
    #: Whether a call may wait for I/O or for another node (a transaction, a routed call, an
    #: fsync) rather than return after its own CPU work (see `ClusterStoreAndForward.calls_wait`).
    calls_wait: bool = True

    @property
    @abstractmethod
    def kind(self) -> str:
        """``embedded`` or ``kafka``."""

    @property
    @abstractmethod
    def projection_path(self) -> Path:
        """The folder of this node's projection database (known before `boot`)."""

    @abstractmethod
    def boot(self) -> None: ...

    @abstractmethod
    def sync_registry(self) -> None:
        """Return once this node's registry holds every session write that returned anywhere
        in the cluster before this call (embedded: always true)."""

    @abstractmethod
    def registry_lag(self, timeout: float) -> tuple[int | None, str | None]:
        """Committed session rows not in this node's registry yet (after `boot`), or None and
        why that could not be read within `timeout`."""

    @abstractmethod
    def routed_calls(self) -> RoutedCalls:
        """This node's calls to the owners of partitions it does not serve (after `boot`)."""

    @abstractmethod
    def close(self) -> None: ...
