"""`MatsSocketServer`: a MatsSocket node on the `websockets` library, on top of the CSAF store.

The server accepts WebSocket connections speaking the ``matssocket`` subprotocol, keeps
one `Connection` per socket and one `OutboxForwarder` per live session, runs the store's
periodic jobs (`csaf_events.maintenance.Maintenance`) and talks to the other nodes of the
cluster through a `NodeChannel`. It reaches the store through `AsyncStore`
(`store_calls`): never waiting on the event loop, with no thread per call where none is needed
(an embedded store's calls run on the loop; Kafka writes for partitions this node decides are
queued on their writers; the rest runs on `store_threads` threads).

User code plugs in through endpoints (`endpoint`, `terminator`), an `Authenticator`, the
server-initiated `send`, `request`, `publish` and `close_session`, and on the HTTP side an
`HttpHandler` (other paths, a client's pre-connection request) and a `HandshakeCheck`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, TypeVar

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from csaf_events.async_store import AsyncStore
from csaf_events.channel import InProcessChannel, NodeChannel
from csaf_events.core.clock import now_ms
from csaf_events.core.dtos import MessageType as T
from csaf_events.core.session_calls import SessionCalls
from csaf_events.core.unit_of_work import UnitOfWork
from csaf_events.maintenance import Maintenance
from csaf_events.matssocket.auth import Authenticator
from csaf_events.matssocket.connection import Connection
from csaf_events.matssocket.endpoints import Endpoint, IncomingHandler, LaterReply, Nudges
from csaf_events.matssocket.nodes import NodeMessages
from csaf_events.matssocket.ports import Probe, Socket
from csaf_events.matssocket.protocol import SUBPROTOCOL, CloseCode, DebugOption, Envelope, random_id
from csaf_events.matssocket.topics import Topics
from csaf_events.ops.metrics import matssocket_metrics
from csaf_events.store import ClusterStoreAndForward

log = logging.getLogger(__name__)

R = TypeVar("R")
HttpHandler = Callable[[ServerConnection, Request], Response | None]
#: Looks at a WebSocket handshake the server is about to accept (the request, and the 101
#: response it may add headers to), as MatsSocket's ``SessionAuthenticator.checkHandshake``
#: does: None accepts it; a response (``ws.respond(HTTPStatus.FORBIDDEN, ...)``) refuses it,
#: and the client sees a failed connection attempt.
HandshakeCheck = Callable[[ServerConnection, Request, Response], Response | None]


def _json(name: str, value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError as e:
        raise TypeError(f"{name} must be a JSON value: {e}") from None


class MatsSocketServer:
    """A MatsSocket node. Create, register endpoints, ``await start()``; ``await stop()`` at the end.

    `store` is a booted store (the caller opens and closes it). `channel` reaches the other
    nodes; by default the store's ``channel`` attribute where it has one, else an
    `InProcessChannel` that reaches only this node (the embedded store is one node).
    The store's periodic jobs run with `maintenance` as `Maintenance`'s keyword arguments
    (its defaults unless given; None: no periodic jobs, for a node whose jobs run elsewhere).
    """

    def __init__(self, store: ClusterStoreAndForward, authenticator: Authenticator, *,
                 channel: NodeChannel | None = None, path: str = "/matssocket",
                 max_sessions_per_user: int = 75, store_threads: int = 16, max_frame_bytes: int = 1 << 20,
                 maintenance: Mapping[str, Any] | None = MappingProxyType({}),
                 http_handler: HttpHandler | None = None, handshake_check: HandshakeCheck | None = None,
                 probe: Probe | None = None) -> None:
        if not isinstance(authenticator, Authenticator):
            raise TypeError("authenticator must be an Authenticator")
        if not isinstance(max_sessions_per_user, int) or max_sessions_per_user < 1:
            raise ValueError(f"max_sessions_per_user must be a positive int, got {max_sessions_per_user!r}")
        self.store = store
        self.authenticator = authenticator
        self.node_name: str = store.node_name
        # the store's own channel once it has one (cluster mode), else a node alone
        shared: NodeChannel | None = channel or getattr(store, "channel", None)
        self._own_channel = shared is None
        self.channel: NodeChannel = InProcessChannel(self.node_name) if shared is None else shared
        self.path = path
        self.max_sessions_per_user = max_sessions_per_user
        self.max_frame_bytes = max_frame_bytes
        self.endpoints: dict[str, Endpoint] = {}
        self.topics = Topics()
        self.nodes = NodeMessages(self, self.channel)
        # the HTTP side: other paths, and requests on the socket's path that are no WebSocket
        # upgrade (a client's pre-connection request). Where it answers None: 404 on other
        # paths, the WebSocket library's own answer (426 Upgrade Required) on the socket's path
        self.http_handler = http_handler
        self.handshake_check = handshake_check
        self.probe: Probe = probe or (lambda point, session_id, envelope: None)
        self.metrics = matssocket_metrics(store)  # csaf_matssocket_* on the store's registry
        self.store_calls = AsyncStore(store, store_threads)
        self._maintenance = (Maintenance(store, self.live_session_ids, **maintenance)
                             if maintenance is not None else None)
        self._local: dict[str, Socket] = {}
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ws_servers: list[Server] = []

    # ------------------------------------------------------------ registration --
    def endpoint(self, endpoint_id: str, handler: IncomingHandler | None = None) -> Any:
        """Register an endpoint for client SEND and REQUEST (also usable as a decorator)."""
        return self._register(endpoint_id, handler, replies=True)

    def terminator(self, endpoint_id: str, handler: IncomingHandler | None = None) -> Any:
        """Register an endpoint that never replies: client SENDs, and the client's answers to
        server-initiated requests (`request`'s ``reply_to``)."""
        return self._register(endpoint_id, handler, replies=False)

    def _register(self, endpoint_id: str, handler: IncomingHandler | None, replies: bool) -> Any:
        if not isinstance(endpoint_id, str) or not endpoint_id:
            raise ValueError(f"endpoint_id must be a non-empty str, got {endpoint_id!r}")
        if endpoint_id in self.endpoints:
            raise ValueError(f"endpoint {endpoint_id!r} is already registered")

        def add(fn: IncomingHandler) -> IncomingHandler:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"the handler of {endpoint_id!r} must be an async function")
            self.endpoints[endpoint_id] = Endpoint(endpoint_id, fn, replies)
            return fn
        return add(handler) if handler is not None else add

    # ---------------------------------------------------------------- lifecycle --
    async def start(self, host: str = "localhost", port: int = 8080, *more_ports: int) -> MatsSocketServer:
        """Listen on `host`:`port` and any `more_ports` (port 0: any free port, see `port`)."""
        self.nodes.start(asyncio.get_running_loop())
        for p in (port, *more_ports):
            self._ws_servers.append(await serve(self._serve_socket, host, p, subprotocols=[Subprotocol(SUBPROTOCOL)],
                                                process_request=self._process_request,
                                                process_response=self._process_response,
                                                max_size=self.max_frame_bytes))
        if self._maintenance is not None:
            self._maintenance.start()
        log.info("MatsSocket node %s listening on %s port(s) %s, path %s", self.node_name, host, self.ports,
                 self.path)
        return self

    @property
    def ports(self) -> list[int]:
        """The ports listened on (after `start`)."""
        return [server.sockets[0].getsockname()[1] for server in self._ws_servers]

    @property
    def port(self) -> int:
        """The first port listened on (after `start`)."""
        return self.ports[0]

    async def stop(self) -> None:
        """Close every socket with SERVICE_RESTART (the sessions stay in the store, and the
        clients reconnect to another node), then stop. The store stays open."""
        self.nodes.stop()
        for server in self._ws_servers:
            server.close(close_connections=False)
        await asyncio.gather(*(c.deregister_and_close(CloseCode.SERVICE_RESTART, "MatsSocket node stopping")
                               for c in list(self._connections)), return_exceptions=True)
        for server in self._ws_servers:
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._maintenance is not None:
            await asyncio.to_thread(self._maintenance.stop)
        self.store_calls.close()
        if self._own_channel:
            self.channel.close()

    async def _serve_socket(self, ws: ServerConnection) -> None:
        # (websockets itself refuses, with HTTP 400, a handshake that does not offer the subprotocol)
        conn = Connection(self, ws)
        self._connections.add(conn)
        self.metrics.sockets.inc()
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self.metrics.sockets.dec()

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        on_socket_path = request.path.split("?", 1)[0] == self.path
        if on_socket_path and "websocket" in request.headers.get("Upgrade", "").lower():
            return None
        if self.http_handler is not None:
            response = self.http_handler(ws, request)
            if response is not None:
                return response
        if on_socket_path:
            return None
        return ws.respond(HTTPStatus.NOT_FOUND, f"No MatsSocket endpoint at {request.path}\n")

    def _process_response(self, ws: ServerConnection, request: Request, response: Response) -> Response | None:
        if self.handshake_check is None or response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        return self.handshake_check(ws, request, response)

    # ------------------------------------------------------------------ helpers --
    async def io(self, fn: Callable[..., R], *args: Any) -> R:
        """A blocking call of the store or of a unit of work (`AsyncStore.run`)."""
        return await self.store_calls.run(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task the server keeps (and cancels at stop); failures are logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", exc_info=t.exception())
        task.add_done_callback(done)

    def live_session_ids(self) -> list[str]:
        """The sessions whose socket this node holds (for the liveliness job; any thread)."""
        return list(self._local)

    def local_connection(self, session_id: str) -> Socket | None:
        return self._local.get(session_id)

    def register_local(self, conn: Socket) -> None:
        assert conn.session_id is not None, "registered once HELLO established the session"
        self._local[conn.session_id] = conn

    def unregister_local(self, conn: Socket) -> None:
        assert conn.session_id is not None, "unregistered only if it was established"
        if self._local.get(conn.session_id) is conn:
            del self._local[conn.session_id]

    def debug_fields(self, options: DebugOption, *, client_received: int | None = None,
                     handed_off: int | None = None, reply_received: int | None = None,
                     sent: int | None = None) -> dict[str, Any]:
        """The ``debug`` object of an answer: of the moments given (client message received,
        handed off by the handler to answer later, answer produced, sent to the client), the
        timestamps and node names that `options` asks for."""
        debug: dict[str, Any] = {"resd": int(options)}
        if DebugOption.TIMESTAMPS in options:
            debug.update(cmrts=client_received, mmsts=handed_off, mmrrts=reply_received, mscts=sent)
        if DebugOption.NODES in options:
            for field, moment in (("cmrnn", client_received), ("mmrrnn", reply_received), ("mscnn", sent)):
                if moment is not None:
                    debug[field] = self.node_name
        return {k: v for k, v in debug.items() if v is not None}

    @staticmethod
    def debug_option_of(debug: dict[str, Any]) -> DebugOption:
        resd = debug.get("resd")
        return DebugOption(resd & 0xFF) if isinstance(resd, int) else DebugOption(0)

    def with_server_debug(self, envelope: Envelope, options: DebugOption) -> Envelope:
        """A server-initiated envelope (SEND, REQUEST, PUB) with the debug fields the receiving
        session asked for (none if it asked for none). `envelope` is left as it is."""
        if not options and "debug" not in envelope:
            return envelope
        created = envelope.get("debug") or {}
        envelope = {k: v for k, v in envelope.items() if k != "debug"}
        if options:
            debug: dict[str, Any] = {"resd": int(options)}
            if DebugOption.TIMESTAMPS in options:
                debug.update(smcts=created.get("smcts"), mscts=now_ms())
            if DebugOption.NODES in options:
                debug.update(smcnn=created.get("smcnn"), mscnn=self.node_name)
            envelope["debug"] = debug
        return envelope

    # ------------------------------------------------------- server-initiated --
    async def send(self, session_id: str, trace_id: str, client_terminator_id: str, message: Any) -> bool:
        """SEND `message` to a client terminator of the session, through its outbox (delivered
        when the client is connected, on whatever node). False if the session does not exist."""
        return await self.outbox_in(None, None, session_id, T.SEND, {"eid": client_terminator_id, "tid": trace_id},
                                    message)

    async def request(self, session_id: str, trace_id: str, client_endpoint_id: str, message: Any, reply_to: str,
                      correlation_string: str | None = None, correlation_binary: bytes | None = None) -> bool:
        """REQUEST from a client endpoint; its RESOLVE/REJECT goes to the server terminator
        `reply_to` with the correlation data. False if the session does not exist."""
        return await self.request_in(None, None, session_id, trace_id, client_endpoint_id, message, reply_to,
                                     correlation_string, correlation_binary)

    async def request_in(self, unit: UnitOfWork | None, nudges: Nudges | None, session_id: str, trace_id: str,
                         client_endpoint_id: str, message: Any, reply_to: str, correlation_string: str | None,
                         correlation_binary: bytes | None) -> bool:
        """`request`, its correlation and outbox message written in `unit` (None: at once)."""
        smid = random_id()
        args = (session_id, smid, now_ms(), reply_to, correlation_string, correlation_binary)
        if unit is None:
            await self.store_calls.call(SessionCalls.store_request_correlation, *args)
        else:
            await self.io(unit.store_request_correlation, *args)
        stored = await self.outbox_in(unit, nudges, session_id, T.REQUEST,
                                      {"eid": client_endpoint_id, "tid": trace_id}, message, smid=smid)
        if not stored and unit is None:
            await self.store_calls.call(SessionCalls.get_and_delete_request_correlation, session_id, smid)
        return stored

    async def publish(self, topic: str, trace_id: str, message: Any) -> None:
        """PUB `message` to every session subscribed to `topic`, on every node (not stored:
        a subscriber that is not connected misses it, and learns so by SUB_LOST)."""
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty str, got {topic!r}")
        envelope = {"t": T.PUB, "eid": topic, "smid": random_id(), "tid": trace_id,
                    "msg": orjson.loads(_json("message", message)),
                    "debug": {"smcts": now_ms(), "smcnn": self.node_name}}
        self.nodes.publish(topic, envelope)
        await self.topics.deliver(topic, envelope)

    async def close_session(self, session_id: str, reason: str = "closed by the server") -> None:
        """End the session: its data leaves the store, and its socket (on whatever node) is
        closed with CLOSE_SESSION."""
        conn = self.local_connection(session_id)
        if conn is not None:
            await conn.close_session(CloseCode.CLOSE_SESSION, f"Server Side: {reason}")
            return
        current = await self.io(self.store.get_current_registered_node_for_session, session_id)
        await self.store_calls.call(SessionCalls.close_session, session_id)
        if current is not None:
            self.nodes.close(current.node_name, session_id, reason)

    async def outbox_in(self, unit: UnitOfWork | None, nudges: Nudges | None, session_id: str, type_: T,
                        fields: Envelope, message: Any, *, smid: str | None = None,
                        client_message_id: str | None = None, request_timestamp: int | None = None) -> bool:
        """Store a SEND/REQUEST/RESOLVE/REJECT for the session's client, in `unit` (None: at
        once), and nudge the node holding its socket (after the unit's commit: `nudges`).
        False if the session does not exist."""
        smid = smid or random_id()
        envelope = {"t": type_, **fields, "smid": smid}
        if type_ in (T.SEND, T.REQUEST):
            envelope["debug"] = {"smcts": now_ms(), "smcnn": self.node_name}
        args = (session_id, smid, client_message_id, envelope.get("tid"), type_, request_timestamp,
                _json("envelope", envelope), _json("message", message), None)
        if unit is None:
            current = await self.store_calls.call(SessionCalls.store_message_in_outbox, *args)
        else:
            current = await self.io(unit.store_message_in_outbox, *args)
        if current is None:
            exists = (unit.is_session_exists if unit is not None and unit.session_id == session_id
                      else self.store.is_session_exists)
            return await self.io(exists, session_id)
        if nudges is None:
            self.nudge(session_id, current)
        else:
            nudges.append((session_id, current))
        return True

    def nudge(self, session_id: str, current: Any) -> None:
        """Tell the forwarder of the session (on this node or the one named) that its outbox grew."""
        if current.node_name == self.node_name:
            conn = self.local_connection(session_id)
            if conn is not None and conn.forwarder is not None:
                conn.forwarder.notify()
        else:
            self.nodes.new_message(current.node_name, session_id)

    async def store_later_reply(self, later: LaterReply, type_: T, message: Any, unit: UnitOfWork | None,
                                 nudges: Nudges | None) -> None:
        fields: Envelope = {"cmid": later.client_message_id, "tid": later.trace_id}
        if later.debug_options:
            fields["debug"] = self.debug_fields(later.debug_options, client_received=later.received_ms,
                                                handed_off=later.handed_off_ms, reply_received=now_ms())
        await self.outbox_in(unit, nudges, later.session_id, type_, fields, message,
                             client_message_id=str(later.client_message_id), request_timestamp=later.received_ms)
