"""``csaf serve --demo``: a chat room on a MatsSocket cluster, with a page to watch it.

Every node serves the page (``demo_page/``, at ``/demo/``) and the MatsSocket JavaScript
client library it uses (at ``/demo/matssocket/``, from the folder `client_dir` finds: the
library is not part of this project). Each browser tab is a MatsSocket session of the app
``CsafDemoChat``; give the page every node's URL (``?urls=ws://a/matssocket,ws://b/matssocket``)
and a tab whose node dies reconnects to another one and keeps its session.

The room:

- ``Chat.say`` (a terminator: the client SENDs ``{"id", "text"}``): the line goes to the
  outbox of every session of the room, cluster-wide (`get_sessions` of the app), inside the
  message's unit of work. So a line is stored for every member exactly once, or for none
  (answered RETRY, the client sends it again; answered NACK, the page does); members on
  other partitions get it as relays, delivered exactly once after the commit. A member whose socket is gone
  (its node died, it is reconnecting) gets its lines when it is back, on any node.
- ``Chat.message``: the client terminator the lines arrive at, ``{"id", "from", "text",
  "via", "at"}`` (``via``: the node that took the line).
- ``Chat.whoami`` (REQUEST): the node holding this socket, and the session's id.
- ``Chat.cluster`` (a topic): each node publishes its status every second (`node_status`):
  partitions owned, sockets held, lines taken per second. Published messages are not
  stored, so a node that stops publishing has left or died.

Delivery to a member goes through the outbox, woken by a nudge to the node holding its
socket. A nudge can be lost (sent to a node that died), and a relay that could not be
delivered at the commit (its partition was being taken over) is delivered later by the
store's relay sweeper, which nudges no one; so each node also wakes the forwarders of its
sockets every `WAKE_INTERVAL` seconds, and a waiting line goes out within that.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from csaf_events.core.clock import now_ms
from csaf_events.core.errors import CsafError
from csaf_events.matssocket.auth import (
    AuthContext,
    Authenticated,
    Authenticator,
    AuthResult,
    InvalidAuthentication,
    StillValid,
)
from csaf_events.matssocket.endpoints import IncomingContext
from csaf_events.matssocket.protocol import Envelope, random_id
from csaf_events.matssocket.server import MatsSocketServer
from csaf_events.matssocket.statichttp import StaticFiles, redirect
from csaf_events.store import ClusterStoreAndForward

log = logging.getLogger(__name__)

APP_NAME = "CsafDemoChat"  # the page's MatsSocket app name: the room is the sessions of this app
SAY = "Chat.say"
WHOAMI = "Chat.whoami"
LINE_TERMINATOR = "Chat.message"
CLUSTER_TOPIC = "Chat.cluster"

CLIENT_DIR_ENV = "CSAF_MATSSOCKET_CLIENT_DIR"
PAGE_DIR = Path(__file__).with_name("demo_page")
PAGE_PREFIX = "/demo/"
CLIENT_PREFIX = "/demo/matssocket/"
CLIENT_ENTRY = Path("lib") / "index.js"  # the client's ES module entry (package.json "module")
#: The folder the JS client tests fill, in a checkout of this project (tests/test_matssocket_js.py).
CHECKOUT_CLIENT_DIR = Path(__file__).resolve().parents[2] / "tests" / "matssocket_js" / "node_modules" / "matssocket"

NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_ID = 80
MAX_TEXT = 500
MAX_ROOM = 200  # members a line goes to: one relay each in the line's unit of work (at most 256 calls)
STATUS_INTERVAL = 1.0  # seconds between two status messages of a node
WAKE_INTERVAL = 1.0  # seconds between two wake-ups of the forwarders
RATE_WINDOW = 5.0  # seconds the per-second rates average over


def client_dir(given: str | Path | None = None) -> Path:
    """The MatsSocket JavaScript client's folder (the one holding ``lib/index.js``): `given`,
    else ``$CSAF_MATSSOCKET_CLIENT_DIR``, else the one the JS tests install in a checkout of
    this project. A `ValueError` saying where to get it when there is none."""
    if given:
        path, source = Path(given), "--client-dir"
    elif os.environ.get(CLIENT_DIR_ENV):
        path, source = Path(os.environ[CLIENT_DIR_ENV]), f"${CLIENT_DIR_ENV}"
    else:
        path, source = CHECKOUT_CLIENT_DIR, "the default"
    if not (path / CLIENT_ENTRY).is_file():
        raise ValueError(
            f"the demo page needs the MatsSocket JavaScript client, and there is none at {path} ({source}: no "
            f"{CLIENT_ENTRY}). Give the client's folder with --client-dir DIR or ${CLIENT_DIR_ENV}: the folder "
            "matssocket-client-javascript/client of https://github.com/centiservice/matssocket, or "
            "node_modules/matssocket after 'npm install matssocket'; in a checkout of this project, "
            "'pytest tests/test_matssocket_js.py' puts it in tests/matssocket_js/node_modules/matssocket")
    return path.resolve()


class DemoAuthenticator(Authenticator):
    """``Demo:<name>``: the name is the user. A demo has no passwords."""

    def initial_authentication(self, ctx: AuthContext, authorization: str) -> AuthResult:
        scheme, _, name = authorization.partition(":")
        if scheme != "Demo" or not NAME.fullmatch(name):
            return InvalidAuthentication("The Authorization should read 'Demo:<name>', the name 1 to 32 of"
                                         " A-Z a-z 0-9 _ . -")
        return Authenticated(principal=name, user_id=name)

    def reevaluate_authentication(self, ctx: AuthContext, authorization: str, principal: Any) -> AuthResult:
        if principal is not None and authorization == f"Demo:{principal}":
            return StillValid()
        return self.initial_authentication(ctx, authorization)


def chat_line(message: Any) -> tuple[str, str]:
    """The ``(id, text)`` of a client's ``Chat.say`` message; `ValueError` saying what is wrong."""
    if not isinstance(message, dict):
        raise ValueError('a Chat.say message is {"id": "...", "text": "..."}')
    line_id, text = message.get("id"), message.get("text")
    if not isinstance(line_id, str) or not 0 < len(line_id) <= MAX_ID:
        raise ValueError(f"a Chat.say message needs an 'id': a string of 1 to {MAX_ID} characters")
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError(f"a Chat.say message needs a 'text': a string of at most {MAX_TEXT} characters")
    return line_id, text


class Rate:
    """Events per second over the last `window` seconds (for the page's messages/s); used
    on the event loop only."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._events: deque[tuple[float, int]] = deque()

    def add(self, n: int = 1) -> None:
        self._events.append((time.monotonic(), n))

    def per_second(self) -> float:
        cutoff = time.monotonic() - self.window
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()
        return sum(n for _, n in self._events) / self.window


class ChatRoom:
    """The room's endpoints on one node, and what the node tells the page about itself."""

    def __init__(self, server: MatsSocketServer) -> None:
        self.server = server
        self.lines = Rate()  # lines this node took (committed)
        self.deliveries = Rate()  # outbox messages those lines stored, one per member
        self._members_of: dict[tuple[str, Any], int] = {}  # (session, cmid) -> members, until its commit
        server.terminator(SAY, self.say)
        server.endpoint(WHOAMI, self.whoami)

    async def say(self, ctx: IncomingContext) -> None:
        line_id, text = chat_line(ctx.message)
        store = self.server.store
        members = await self.server.io(store.get_sessions, False, None, APP_NAME)
        if len(members) > MAX_ROOM:
            raise ValueError(f"the room is full: {len(members)} sessions, at most {MAX_ROOM}")
        line = {"id": line_id, "from": ctx.user_id, "text": text, "via": self.server.node_name, "at": now_ms()}
        for member in members:  # each one joins the message's unit of work (a relay for other partitions)
            await ctx.send(LINE_TERMINATOR, line, session_id=member.session_id)
        self._members_of[(ctx.session_id, ctx.client_message_id)] = len(members)

    async def whoami(self, ctx: IncomingContext) -> None:
        ctx.resolve({"node": self.server.node_name, "sessionId": ctx.session_id})

    def probe(self, point: str, session_id: str, envelope: Envelope) -> None:
        """The server's probe: counts a line once its unit has committed; a line whose unit did
        not commit (a RETRY) is forgotten when answered."""
        if envelope.get("eid") != SAY:
            return
        key = (session_id, envelope.get("cmid"))
        members = self._members_of.pop(key, None) if point in ("committed", "answered") else None
        if point == "committed" and members is not None:  # (a refused line commits its NACK: not counted)
            self.lines.add()
            self.deliveries.add(members)

    def store_facts(self) -> dict[str, Any]:
        """What the store says of this node and the room (blocking: run it with `server.io`)."""
        store = self.server.store
        health = store.health()
        return {"status": health["status"], "partitions": health["partitions"], "owned": health["owned_partitions"],
                "registryLag": health["registry_lag"], "room": store.get_sessions_count(False, None, APP_NAME)}

    async def node_status(self) -> dict[str, Any]:
        """This node's status for the page: the store's facts, and the counts kept on the loop."""
        facts = await self.server.io(self.store_facts)
        return {"node": self.server.node_name, **facts, "sockets": len(self.server.live_session_ids()),
                "linesPerS": round(self.lines.per_second(), 2),
                "deliveriesPerS": round(self.deliveries.per_second(), 2),
                "at": now_ms(), "intervalMs": int(STATUS_INTERVAL * 1000)}

    async def publish_status(self, interval: float = STATUS_INTERVAL) -> None:
        """Publish `node_status` on the cluster topic every `interval` seconds, until cancelled."""
        while True:
            try:
                await self.server.publish(CLUSTER_TOPIC, f"status-{random_id(6)}", await self.node_status())
            except CsafError as e:  # the store is busy or taking over: the next round tries again
                log.warning("no status this round: %s: %s", type(e).__name__, e)
            except Exception:  # a bug: said, and the page keeps getting the rounds that work
                log.exception("no status this round")
            await asyncio.sleep(interval)

    async def wake_forwarders(self, interval: float = WAKE_INTERVAL) -> None:
        """Wake the outbox forwarder of every socket here every `interval` seconds (see the
        module docstring: lines whose nudge was lost), until cancelled."""
        while True:
            await asyncio.sleep(interval)
            for session_id in self.server.live_session_ids():
                conn = self.server.local_connection(session_id)
                if conn is not None and conn.forwarder is not None:
                    conn.forwarder.notify()


class DemoPage:
    """The node's HTTP side: the page at ``/demo/``, the client library at ``/demo/matssocket/``;
    ``/`` and ``/demo`` lead to the page (its query kept)."""

    def __init__(self, client: Path) -> None:
        self.client = StaticFiles(client, CLIENT_PREFIX)
        self.page = StaticFiles(PAGE_DIR, PAGE_PREFIX)

    def respond(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if request.method == "GET" and path in ("/", "/demo", PAGE_PREFIX):
            return redirect(request, f"{PAGE_PREFIX}index.html")
        answer = self.client.respond(ws, request)
        return answer if answer is not None else self.page.respond(ws, request)


class DemoServer(MatsSocketServer):
    """A MatsSocket node running the chat room and serving its page; its status publishing
    and forwarder wake-ups run between `start` and `stop`."""

    def __init__(self, store: ClusterStoreAndForward, client: Path, **kwargs: Any) -> None:
        super().__init__(store, DemoAuthenticator(), probe=lambda *args: self.room.probe(*args), **kwargs)
        self.room = ChatRoom(self)
        self.page = DemoPage(client)
        self.http_handler = self.page.respond
        self._room_tasks: list[asyncio.Task[None]] = []

    async def start(self, host: str = "localhost", port: int = 8080, *more_ports: int) -> DemoServer:
        await super().start(host, port, *more_ports)
        log.info("demo page on http://%s:%s/ (add ?urls=ws://HOST:PORT/matssocket,... to list every node)",
                 host, self.port)
        loop = asyncio.get_running_loop()
        self._room_tasks = [loop.create_task(self.room.publish_status(), name="demo-status"),
                            loop.create_task(self.room.wake_forwarders(), name="demo-wake")]
        return self

    async def stop(self) -> None:
        for task in self._room_tasks:
            task.cancel()
        await asyncio.gather(*self._room_tasks, return_exceptions=True)
        await super().stop()


def create_server(store: ClusterStoreAndForward, client: str | Path | None = None) -> DemoServer:
    """The demo's `csaf serve --app` factory (`client`: the client's folder, see `client_dir`)."""
    return DemoServer(store, client_dir(client))


def factory(client: str | Path | None = None) -> functools.partial[DemoServer]:
    """``factory(store)`` for `csaf serve --demo`; the client's folder is checked now, before
    the store opens, so that a missing client fails at once."""
    return functools.partial(create_server, client=client_dir(client))
