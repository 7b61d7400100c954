"""What the parts of a MatsSocket node need of each other, as Protocols.

A socket's parts (its `Connection`, the outbox forwarder, the handling of incoming
messages, the node channel's dispatch) need the node they run on, and the node needs them:
they name the `Node` and the `Socket` they work with here, and `MatsSocketServer` and
`Connection` are what fills them, without an import of one by the other.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from csaf_events.async_store import AsyncStore
from csaf_events.core.dtos import CurrentNode
from csaf_events.matssocket.auth import Authenticator
from csaf_events.matssocket.endpoints import Endpoint, Replies
from csaf_events.matssocket.protocol import CloseCode, DebugOption, Envelope
from csaf_events.matssocket.topics import Topics
from csaf_events.ops.metrics import MatsSocketMetrics, NoMatsSocketMetrics
from csaf_events.store import ClusterStoreAndForward

R = TypeVar("R")

#: Called on the event loop at each step of a client SEND/REQUEST/RESOLVE/REJECT: "handled"
#: (its handler finished, its unit of work not committed), "committed" (not answered yet),
#: "answered". For tracing, and for tests that kill a node at an exact point.
Probe = Callable[[str, str, Envelope], None]


class Forwarder(Protocol):
    """A live session's outbox forwarder, as its socket and node use it."""

    def notify(self) -> None: ...

    def completed(self, server_message_ids: list[str]) -> None: ...

    def stop(self) -> None: ...


class OtherNodes(Protocol):
    """The messages a socket sends to the other nodes of the cluster."""

    def disconnect(self, node_name: str, session_id: str, connection_id: str) -> None: ...


class Socket(Protocol):
    """One client's WebSocket connection (`Connection`), as its parts and its node use it."""

    @property
    def server(self) -> Node: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def connection_id(self) -> str: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def principal(self) -> Any: ...

    @property
    def authorization(self) -> str | None: ...

    @property
    def allowed_debug(self) -> DebugOption: ...

    @property
    def server_debug(self) -> DebugOption: ...

    @property
    def forwarder(self) -> Forwarder | None: ...

    @property
    def established(self) -> bool: ...

    async def send(self, envelopes: list[Envelope]) -> bool: ...

    async def authorized_for_outgoing(self) -> bool: ...

    async def close_session(self, code: CloseCode, reason: str) -> None: ...

    async def deregister_and_close(self, code: CloseCode, reason: str) -> None: ...

    async def deliver_pub(self, envelope: Envelope) -> None: ...


class Node(Replies, Protocol):
    """The node (`MatsSocketServer`), as a socket and its parts use it."""

    @property
    def node_name(self) -> str: ...

    @property
    def store(self) -> ClusterStoreAndForward: ...

    @property
    def store_calls(self) -> AsyncStore: ...

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def metrics(self) -> MatsSocketMetrics | NoMatsSocketMetrics: ...

    @property
    def endpoints(self) -> dict[str, Endpoint]: ...

    @property
    def topics(self) -> Topics: ...

    @property
    def nodes(self) -> OtherNodes: ...

    @property
    def max_sessions_per_user(self) -> int: ...

    @property
    def probe(self) -> Probe: ...

    async def io(self, fn: Callable[..., R], *args: Any) -> R: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def local_connection(self, session_id: str) -> Socket | None: ...

    def register_local(self, conn: Socket) -> None: ...

    def unregister_local(self, conn: Socket) -> None: ...

    def debug_fields(self, options: DebugOption, *, client_received: int | None = None,
                     handed_off: int | None = None, reply_received: int | None = None,
                     sent: int | None = None) -> dict[str, Any]: ...

    def debug_option_of(self, debug: dict[str, Any]) -> DebugOption: ...

    def with_server_debug(self, envelope: Envelope, options: DebugOption) -> Envelope: ...

    def nudge(self, session_id: str, current: CurrentNode) -> None: ...
