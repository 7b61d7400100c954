"""The MatsSocket server's messages to other nodes, over the store's `NodeChannel`.

Four kinds, each a hint about state that lives in the store:

- ``{"k": "outbox", "sid": S}``: a message was stored for session S, whose socket you hold:
  wake its forwarder;
- ``{"k": "close", "sid": S, "reason": R}``: session S was closed server-side: close its socket
  (CLOSE_SESSION);
- ``{"k": "disconnect", "sid": S, "cid": C}``: S reconnected elsewhere: close connection C of
  it (DISCONNECT) if you still hold it;
- ``{"k": "pub", "topic": T, "env": E}``: deliver PUB envelope E to your subscribers of T.

Messages arrive on the channel's thread and are handed to the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from csaf_events.channel import NodeChannel, NodeMessage
from csaf_events.matssocket.ports import Node
from csaf_events.matssocket.protocol import CloseCode, Envelope

log = logging.getLogger(__name__)


class NodeMessages:
    def __init__(self, server: Node, channel: NodeChannel) -> None:
        self.server = server
        self.channel = channel
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._unsubscribe = self.channel.subscribe(self._on_message)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # --------------------------------------------------------------- sending --
    def new_message(self, node_name: str, session_id: str) -> None:
        self.channel.send(node_name, {"k": "outbox", "sid": session_id})

    def close(self, node_name: str, session_id: str, reason: str) -> None:
        self.channel.send(node_name, {"k": "close", "sid": session_id, "reason": reason})

    def disconnect(self, node_name: str, session_id: str, connection_id: str) -> None:
        self.channel.send(node_name, {"k": "disconnect", "sid": session_id, "cid": connection_id})

    def publish(self, topic: str, envelope: Envelope) -> None:
        self.channel.broadcast({"k": "pub", "topic": topic, "env": envelope})

    # ------------------------------------------------------------- receiving --
    def _on_message(self, message: NodeMessage) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._dispatch, message)
        except RuntimeError:  # the loop closed in between: the node is stopping
            log.debug("node message after the loop closed: %s", message.get("k"))

    def _dispatch(self, message: NodeMessage) -> None:
        kind = message.get("k")
        if kind == "pub" and isinstance(message.get("topic"), str) and isinstance(message.get("env"), dict):
            self.server.spawn(self.server.topics.deliver(message["topic"], message["env"]))
            return
        sid = message.get("sid")
        conn = self.server.local_connection(sid) if isinstance(sid, str) else None
        if kind == "outbox":
            if conn is not None and conn.forwarder is not None:
                conn.forwarder.notify()
        elif kind == "close":
            if conn is not None:
                self.server.spawn(conn.close_session(CloseCode.CLOSE_SESSION, f"Server Side: {message.get('reason')}"))
        elif kind == "disconnect":
            if conn is not None and conn.connection_id == message.get("cid"):
                self.server.spawn(conn.deregister_and_close(
                    CloseCode.DISCONNECT, "Cannot have two MatsSockets with the same MatsSocketSessionId"
                                          " - closing the previous (from another node)"))
        else:
            log.warning("unknown node message ignored: %r", message)

