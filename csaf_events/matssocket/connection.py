"""One WebSocket connection: the MatsSocket protocol state machine of a socket.

A connection starts NEW; HELLO (after a good authentication) makes it ESTABLISHED, bound
to a session; it ends DEREGISTERED (the session stays in the store for a reconnect) or
CLOSED (the session is gone). Frames are handled one at a time, each to its end before the
next is read, so a SEND in the frame right after HELLO finds the session established.

Order within a frame follows the Java server: AUTH values are taken, PING/PONG and the
client's ACK/NACK/ACK2 are handled first (they need no authentication), then the
authorization is (re-)evaluated, then HELLO, then the information-bearing envelopes (SEND,
REQUEST, RESOLVE, REJECT, SUB, UNSUB) in order.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from csaf_events.core.clock import now_ms
from csaf_events.core.dtos import MessageType as T
from csaf_events.core.errors import CsafError, WrongUserError
from csaf_events.core.session_calls import SessionCalls
from csaf_events.matssocket import incoming
from csaf_events.matssocket.auth import (
    AuthContext,
    Authenticated,
    InvalidAuthentication,
    StillValid,
    resolve,
)
from csaf_events.matssocket.forwarder import OutboxForwarder
from csaf_events.matssocket.ports import Node
from csaf_events.matssocket.protocol import (
    SESSION_ENDING_CLIENT_CODES,
    CloseCode,
    DebugOption,
    Envelope,
    ProtocolError,
    encode,
    message_ids,
    parse_frame,
    random_id,
)

log = logging.getLogger(__name__)

MAX_TOPIC_LENGTH = 256
MAX_TOPICS_PER_SESSION = 1500
MAX_HELD_ENVELOPES = 100
INFORMATION_BEARING = frozenset({T.SEND, T.REQUEST, T.RESOLVE, T.REJECT, T.SUB, T.UNSUB})


class State(enum.Enum):
    NEW = "new"
    ESTABLISHED = "established"
    DEREGISTERED = "deregistered"
    CLOSED = "closed"


class _Reauth(Exception):
    """The current authorization is no longer valid: ask the client for a new one."""


def _headers(ws: ServerConnection) -> dict[str, str]:
    request = ws.request
    return {k.lower(): v for k, v in request.headers.raw_items()} if request is not None else {}


class Connection:
    """The protocol state of one socket; `run()` serves it until it closes."""

    def __init__(self, server: Node, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.connection_id = random_id(12)
        self.state = State.NEW
        self.session_id: str | None = None
        self.user_id: str | None = None
        self.principal: Any = None
        self.authorization: str | None = None
        self.allowed_debug = DebugOption(0)
        self.server_debug = DebugOption(0)  # resolved from the client's last ``rd``, for server-initiated messages
        self.last_authenticated_ms = 0
        self.topics: set[str] = set()
        self.held: list[Envelope] = []
        self.asked_for_reauth = False
        self.hold_outgoing = False
        self.forwarder: OutboxForwarder | None = None
        remote = ws.remote_address
        self.auth_context = AuthContext(remote_address=str(remote[0]) if remote else None,
                                        path=ws.request.path if ws.request is not None else "",
                                        headers=_headers(ws))

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    # ------------------------------------------------------------------ serving --
    async def run(self) -> None:
        """Handle frames until the socket closes, then settle the session by the close code."""
        try:
            async for frame in self.ws:
                await self.handle_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            if self.established:
                code = self.ws.close_code
                reason = f"socket closed by the client ({code})"
                if code in SESSION_ENDING_CLIENT_CODES:
                    await self._end(State.CLOSED, reason)
                else:
                    await self._end(State.DEREGISTERED, reason)

    async def handle_frame(self, frame: str | bytes) -> None:
        """One frame, to its end; a protocol violation closes the socket and the session."""
        received = now_ms()
        if self.state in (State.CLOSED, State.DEREGISTERED):
            log.info("frame on a finished connection %s ignored", self.connection_id)
            return
        try:
            if isinstance(frame, bytes):
                raise ProtocolError("Binary frames are not part of the MatsSocket protocol")
            envelopes = parse_frame(frame)
            self.server.metrics.received(envelopes)
            await self._process(envelopes, received)
        except ProtocolError as e:
            log.warning("closing session %s (connection %s) with %s: %s", self.session_id, self.connection_id,
                        e.code.name, e.reason)
            await self.close_session(e.code, e.reason)
        except Exception:  # a bug or an unexpected store answer: the Java server's UNEXPECTED_CONDITION
            log.exception("unexpected failure on session %s (connection %s)", self.session_id, self.connection_id)
            await self.close_session(CloseCode.UNEXPECTED_CONDITION, "Internal server error")

    async def send(self, envelopes: list[Envelope]) -> bool:
        """Send one frame; False if the socket is gone (the caller's data stays where it is)."""
        try:
            await self.ws.send(encode(envelopes))
            self.server.metrics.sent(envelopes)
            return True
        except ConnectionClosed:
            log.debug("socket of %s closed before a send", self.session_id)
            return False

    # ------------------------------------------------------------ one frame ------
    async def _process(self, envelopes: list[Envelope], received: int) -> None:
        new_auth = None
        for envelope in envelopes:
            if envelope.get("auth") is not None:
                if not isinstance(envelope["auth"], str) or not envelope["auth"]:
                    raise ProtocolError("'auth' must be a non-empty string")
                new_auth = envelope["auth"]
        answers: list[Envelope] = []
        acks: list[str] = []
        ack2s: list[str] = []
        rest: list[Envelope] = []
        for envelope in envelopes:
            t = envelope["t"]
            if t == T.AUTH:
                continue
            if t in (T.PING, T.PONG, T.ACK, T.NACK, T.ACK2) and not self.established:
                raise ProtocolError(f"Cannot process {t} before HELLO and session established")
            if t == T.PING:
                answers.append({"t": T.PONG, "x": envelope.get("x")})
            elif t in (T.ACK, T.NACK):
                acks.extend(message_ids(envelope, "smid"))
            elif t == T.ACK2:
                ack2s.extend(message_ids(envelope, "cmid"))
            elif t != T.PONG:
                rest.append(envelope)
        if acks and await self._store_quietly("complete outbox messages", SessionCalls.outbox_messages_complete,
                                              acks):
            # only once completed: a client that got ACK2 forgets the ids, and would take a redelivery as new
            if self.forwarder is not None:
                self.forwarder.completed(acks)
            answers.append({"t": T.ACK2, "smid": acks[0]} if len(acks) == 1 else {"t": T.ACK2, "ids": acks})
        if ack2s:
            await self._store_quietly("delete inbox ids", SessionCalls.delete_message_ids_from_inbox, ack2s)
        if answers:
            await self.send(answers)
        if not rest and not self.held and new_auth is None:
            return
        try:
            await self._authenticate(new_auth)
        except _Reauth:
            await self._hold_for_reauth(rest)
            return
        hellos = [e for e in rest if e["t"] == T.HELLO]
        for hello in hellos:
            if self.established:
                raise ProtocolError("Shall only receive HELLO once per MatsSocket WebSocket connection",
                                    CloseCode.VIOLATED_POLICY)
            await self._hello(hello, received)
        if not self.established:
            raise ProtocolError("The first message on a MatsSocket connection must be HELLO",
                                CloseCode.VIOLATED_POLICY)
        pending, self.held = [*self.held, *(e for e in rest if e["t"] != T.HELLO)], []
        self._take_debug_request([*hellos, *pending])
        replies: list[Envelope] = []
        for envelope in pending:
            t = envelope["t"]
            if t in (T.SEND, T.REQUEST, T.RESOLVE, T.REJECT):
                await incoming.handle(self, envelope, received)
            elif t == T.SUB:
                replies.append(await self._subscribe(envelope))
            elif t == T.UNSUB:
                self._unsubscribe(envelope)
            else:
                raise ProtocolError(f"Received unknown message type {t}")
            if not self.established:  # the handling closed the session
                return
        if replies:
            await self.send(replies)

    def _take_debug_request(self, envelopes: Iterable[Envelope]) -> None:
        for envelope in envelopes:
            rd = envelope.get("rd")
            if isinstance(rd, int) and not isinstance(rd, bool):
                self.server_debug = DebugOption(rd & 0xFF) & self.allowed_debug

    async def _store_quietly(self, what: str, method: Callable[[SessionCalls, str, list[str]], None],
                             ids: list[str]) -> bool:
        """ACK-side store calls: a failure is logged (the client or the scavenger settles it
        later); whether the call succeeded."""
        assert self.session_id is not None, "ACKs are taken once the session is established"
        try:
            await self.server.store_calls.call(method, self.session_id, ids)
            return True
        except CsafError:
            log.warning("could not %s for session %s; continuing", what, self.session_id, exc_info=True)
            return False

    # ---------------------------------------------------------- authentication --
    async def _authenticate(self, new_auth: str | None) -> None:
        auth = self.server.authenticator
        try:
            if self.principal is None:
                if new_auth is None:
                    raise ProtocolError("Missing Authorization", CloseCode.VIOLATED_POLICY)
                result = await resolve(auth.initial_authentication(self.auth_context, new_auth))
                if not isinstance(result, Authenticated):
                    reason = result.reason if isinstance(result, InvalidAuthentication) else "Failed"
                    raise ProtocolError(f"Initial Auth-eval: {reason}", CloseCode.VIOLATED_POLICY)
                self._good_authentication(new_auth, result)
                return
            authorization = new_auth if new_auth is not None else self.authorization
            assert authorization is not None, "a principal comes with its authorization (_good_authentication)"
            result = await resolve(auth.reevaluate_authentication(self.auth_context, authorization, self.principal))
        except ProtocolError:
            raise
        except Exception as e:
            log.exception("the authenticator raised")
            raise ProtocolError(f"Auth-eval: got {type(e).__name__}", CloseCode.VIOLATED_POLICY) from e
        if isinstance(result, Authenticated):
            self._good_authentication(authorization, result)
        elif isinstance(result, StillValid):
            self._good_authentication(authorization, None)
        elif isinstance(result, InvalidAuthentication):
            raise _Reauth()
        else:
            raise ProtocolError("Auth re-eval: Failed", CloseCode.VIOLATED_POLICY)

    def _good_authentication(self, authorization: str, result: Authenticated | None) -> None:
        if result is not None:
            self.principal, self.user_id, self.allowed_debug = result.principal, result.user_id, result.debug_options
            self.auth_context.user_id = result.user_id
        self.authorization = authorization
        self.last_authenticated_ms = now_ms()
        self.asked_for_reauth = False
        if self.hold_outgoing:
            self.hold_outgoing = False
            if self.forwarder is not None:
                self.forwarder.notify()

    async def _hold_for_reauth(self, envelopes: list[Envelope]) -> None:
        """Keep information-bearing envelopes until the client re-authenticates; ask it to."""
        out: list[Envelope] = []
        if not self.asked_for_reauth:
            out.append({"t": T.REAUTH})
            self.asked_for_reauth = True
        for envelope in envelopes:
            if envelope["t"] not in INFORMATION_BEARING:
                raise ProtocolError(f"Cannot process {envelope['t']} while waiting for re-authentication")
            if len(self.held) < MAX_HELD_ENVELOPES:
                self.held.append(envelope)
            elif envelope.get("cmid") is not None:
                out.append({"t": T.RETRY, "cmid": envelope["cmid"]})
            else:
                raise ProtocolError("Too many messages while waiting for re-authentication",
                                    CloseCode.VIOLATED_POLICY)
        if out:
            await self.send(out)

    async def authorized_for_outgoing(self) -> bool:
        """Before forwarding: is the authorization still good? If not, hold outgoing
        messages and ask for REAUTH (once)."""
        if self.hold_outgoing:
            return False
        assert self.authorization is not None, "messages go out only on an authenticated connection"
        try:
            result = await resolve(self.server.authenticator.reevaluate_for_outgoing(
                self.auth_context, self.authorization, self.principal, self.last_authenticated_ms))
        except Exception:
            log.exception("the authenticator raised on outgoing re-evaluation; holding messages")
            result = None
        if isinstance(result, (Authenticated, StillValid)):
            return True
        self.hold_outgoing = True
        if not self.asked_for_reauth:
            self.asked_for_reauth = True
            await self.send([{"t": T.REAUTH}])
        return False

    # -------------------------------------------------------------------- HELLO --
    async def _hello(self, hello: Envelope, received: int) -> None:
        for field, name in (("clv", "ClientLibAndVersion"), ("an", "AppName"), ("av", "AppVersion")):
            if not isinstance(hello.get(field), str) or not hello[field]:
                raise ProtocolError(f"Missing {name} ({field}) in HELLO envelope.")
        server, store = self.server, self.server.store
        sid = hello.get("sid")
        description = "new session"
        try:
            if sid is not None:
                if not isinstance(sid, str) or not sid:
                    raise ProtocolError("Invalid 'sid' in HELLO envelope.")
                local = server.local_connection(sid)
                if local is not None and local is not self and local.established:
                    await local.deregister_and_close(
                        CloseCode.DISCONNECT, "Cannot have two MatsSockets with the same MatsSocketSessionId"
                                              " - closing the previous (from local node)")
                    description = "reconnected - existing local"
                elif await server.io(store.is_session_exists, sid):
                    current = await server.io(store.get_current_registered_node_for_session, sid)
                    if current is not None and current.node_name != server.node_name:
                        server.nodes.disconnect(current.node_name, sid, current.connection_id)
                    description = "reconnected - existing in CSAF"
                else:
                    raise ProtocolError("HELLO from client asked for reconnect, but given MatsSocketSessionId"
                                        " was gone.", CloseCode.SESSION_LOST)
            else:
                count = await server.io(store.get_sessions_count, False, self.user_id)
                if count >= server.max_sessions_per_user:
                    raise ProtocolError(f"Too many sessions for resolved userId: [{count}].",
                                        CloseCode.VIOLATED_POLICY)
                sid = await server.io(store.new_session_id)
            assert sid is not None and self.user_id is not None, "a session id, and a user authenticated"
            await server.store_calls.call(SessionCalls.register_session_at_this_node, sid, self.user_id,
                                          self.connection_id, hello["clv"], hello["an"], hello["av"])
            await server.store_calls.call(SessionCalls.outbox_messages_unmark_attempted_delivery, sid)
        except WrongUserError:
            raise ProtocolError("UserId of existing SessionId does not match currently logged in user.",
                                CloseCode.VIOLATED_POLICY) from None
        except CsafError as e:
            log.warning("could not establish session %s in the store", sid, exc_info=True)
            raise ProtocolError("Could not establish Session information in permanent storage, sorry.",
                                CloseCode.UNEXPECTED_CONDITION) from e
        self.session_id = sid
        self.auth_context.session_id = sid
        self.state = State.ESTABLISHED
        server.register_local(self)
        log.info("session %s %s for user %s on connection %s", sid, description, self.user_id, self.connection_id)
        await self.send([{"t": T.WELCOME, "sid": sid, "tid": hello.get("tid"), "desc": description}])
        self.forwarder = OutboxForwarder(self)
        self.forwarder.start()

    # --------------------------------------------------------------- topics ------
    async def _subscribe(self, envelope: Envelope) -> Envelope:
        topic = envelope.get("eid")
        if not isinstance(topic, str) or not topic.strip():
            raise ProtocolError("SUB: Topic is null or empty.")
        if len(topic) > MAX_TOPIC_LENGTH:
            raise ProtocolError(f"TopicId length > {MAX_TOPIC_LENGTH}", CloseCode.VIOLATED_POLICY)
        if topic in self.topics:
            raise ProtocolError(f"SUB: Already subscribed to Topic [{topic}]")
        if len(self.topics) >= MAX_TOPICS_PER_SESSION:
            raise ProtocolError(f"SUB: Subscribed to way too many topics [{len(self.topics)}]")
        try:
            allowed = await resolve(self.server.authenticator.authorize_topic(self.auth_context, self.principal,
                                                                              topic))
        except Exception as e:
            log.exception("the authenticator raised on topic %r", topic)
            raise ProtocolError("Authorization of Topic subscription: Error.", CloseCode.VIOLATED_POLICY) from e
        if not allowed:
            return {"t": T.SUB_NO_AUTH, "eid": topic}
        self.topics.add(topic)
        self.server.topics.subscribe(topic, self)
        # a resubscribe names the last message it saw; nothing is kept to replay, so it may have lost some
        return {"t": T.SUB_LOST if envelope.get("smid") is not None else T.SUB_OK, "eid": topic}

    def _unsubscribe(self, envelope: Envelope) -> None:
        topic = envelope.get("eid")
        if not isinstance(topic, str) or not topic.strip():
            raise ProtocolError("UNSUB: Topic is null or empty.")
        self.topics.discard(topic)
        self.server.topics.unsubscribe(topic, self)

    async def deliver_pub(self, envelope: Envelope) -> None:
        """A published message for one of this session's topics (not stored, not ACKed)."""
        if self.established:
            await self.send([self.server.with_server_debug(envelope, self.server_debug)])

    # ------------------------------------------------------------------ endings --
    async def close_session(self, code: CloseCode, reason: str) -> None:
        """End the session everywhere (store included) and close the socket with `code`."""
        await self._end(State.CLOSED, reason)
        await self._close_socket(code, reason)

    async def deregister_and_close(self, code: CloseCode, reason: str) -> None:
        """Leave the session in the store for a reconnect, and close the socket with `code`."""
        await self._end(State.DEREGISTERED, reason)
        await self._close_socket(code, reason)

    async def _end(self, state: State, reason: str) -> None:
        was_established = self.established
        if self.state in (State.CLOSED, State.DEREGISTERED):
            return
        self.state = state
        if self.forwarder is not None:
            self.forwarder.stop()
        for topic in self.topics:
            self.server.topics.unsubscribe(topic, self)
        if not was_established:
            return
        sid = self.session_id
        assert sid is not None, "an established connection has its session"
        try:
            if state is State.CLOSED:
                await self.server.store_calls.call(SessionCalls.close_session, sid)
            else:
                await self.server.store_calls.call(SessionCalls.deregister_session_from_this_node, sid,
                                                   self.connection_id)
        except CsafError:
            log.warning("could not %s session %s in the store", state.value, sid, exc_info=True)
        finally:  # after the store call: a session leaves this node's table once the store has settled it
            self.server.unregister_local(self)
        log.info("session %s %s: %s", sid, state.value, reason)

    async def _close_socket(self, code: CloseCode, reason: str) -> None:
        encoded = reason.encode()[:123].decode(errors="ignore")  # a close reason is at most 123 bytes
        await self.ws.close(int(code), encoded)
