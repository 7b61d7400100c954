"""The MatsSocket node, driven with raw protocol envelopes over a real WebSocket.

Every test starts a node (`MatsSocketServer` on an embedded store) on a free port and talks
to it with `RawClient`, a bare `websockets` client that sends and reads JSON envelope frames.
Assertions look at what the client gets and at what the store holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import string
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from csaf_events import open_store
from csaf_events.channel import InProcessHub
from csaf_events.core.clock import now_ms
from csaf_events.matssocket import AuthContext, IncomingContext, InvalidAuthentication, MatsSocketServer
from csaf_events.matssocket.forwarder import MAX_DELIVERY_ATTEMPTS
from csaf_events.matssocket.protocol import random_id
from csaf_events.matssocket.testapp import DummyAuthenticator

RECEIVE_TIMEOUT = 5.0


def token(user: str = "alice", valid_ms: int = 60_000) -> str:
    return f"DummyAuth:{user}:{now_ms() + valid_ms}"


class RevocableAuthenticator(DummyAuthenticator):
    """DummyAuth tokens, some revoked by the test; topic "secret" is forbidden."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()

    def initial_authentication(self, ctx: AuthContext, authorization: str):
        if authorization in self.revoked:
            return InvalidAuthentication("revoked")
        return super().initial_authentication(ctx, authorization)

    def reevaluate_authentication(self, ctx: AuthContext, authorization: str, principal: Any):
        if authorization in self.revoked:
            return InvalidAuthentication("revoked")
        return super().reevaluate_authentication(ctx, authorization, principal)

    def authorize_topic(self, ctx: AuthContext, principal: Any, topic: str) -> bool:
        return topic != "secret"


class App:
    """The endpoints the tests use, and what they saw."""

    def __init__(self, server: MatsSocketServer) -> None:
        self.server = server
        self.calls: dict[str, int] = {}
        self.replies: list[IncomingContext] = []
        self.later: list[Any] = []
        server.endpoint("count", self.count)
        server.endpoint("reject", self.reject)
        server.endpoint("deny", self.deny)
        server.endpoint("throws", self.throws)
        server.endpoint("ignore", self.ignore)
        server.endpoint("later", self.answer_later)
        server.endpoint("bad.reply", self.bad_reply)
        server.terminator("sink", self.ignore)
        server.terminator("reply.receiver", self.reply_receiver)

    async def count(self, ctx: IncomingContext) -> None:
        self.calls[ctx.endpoint_id] = self.calls.get(ctx.endpoint_id, 0) + 1
        if ctx.message_type == "REQUEST":
            ctx.resolve({"calls": self.calls[ctx.endpoint_id], "echo": ctx.message})

    async def reject(self, ctx: IncomingContext) -> None:
        ctx.reject({"why": "rejected"})

    async def deny(self, ctx: IncomingContext) -> None:
        ctx.deny()

    async def throws(self, ctx: IncomingContext) -> None:
        raise ValueError("handler failed")

    async def ignore(self, ctx: IncomingContext) -> None:
        return

    async def bad_reply(self, ctx: IncomingContext) -> None:
        ctx.resolve({"not", "json"})  # a set

    async def answer_later(self, ctx: IncomingContext) -> None:
        self.later.append(ctx.answer_later())

    async def reply_receiver(self, ctx: IncomingContext) -> None:
        self.replies.append(ctx)


class RawClient:
    """A bare protocol client: sends envelope frames, reads envelopes (kept in arrival order)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer: list[dict] = []
        self.sid: str | None = None

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await connect(f"ws://127.0.0.1:{port}/matssocket", subprotocols=["matssocket"]))

    async def send(self, *envelopes: dict) -> None:
        await self.ws.send(orjson.dumps(list(envelopes)).decode())

    async def _fill(self) -> None:
        frame = await asyncio.wait_for(self.ws.recv(), RECEIVE_TIMEOUT)
        self.buffer.extend(orjson.loads(frame))

    async def next(self) -> dict:
        """The next envelope, whatever its type."""
        while not self.buffer:
            await self._fill()
        return self.buffer.pop(0)

    async def expect(self, t: str, **fields: Any) -> dict:
        """The first envelope of type `t` with these fields (others stay buffered)."""
        while True:
            for i, envelope in enumerate(self.buffer):
                if envelope["t"] == t and all(envelope.get(k) == v for k, v in fields.items()):
                    return self.buffer.pop(i)
            await self._fill()

    async def closed(self) -> tuple[int, str]:
        """Wait for the server to close the socket; its close code and reason."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._fill()
        return self.ws.close_code, self.ws.close_reason

    async def hello(self, auth: str | None = None, sid: str | None = None, *more: dict) -> dict:
        await self.send({"t": "HELLO", "clv": "raw-test,v1", "an": "TestApp", "av": "1.0", "tid": "hello",
                         "auth": auth or token(), "sid": sid}, *more)
        welcome = await self.expect("WELCOME")
        self.sid = welcome["sid"]
        return welcome

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code, "test")


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(node_name="node-a", data_dir=tmp_path / "node-a")
    s.boot()
    yield s
    s.close()


@contextlib.asynccontextmanager
async def node(store, **options: Any) -> AsyncIterator[tuple[MatsSocketServer, App]]:
    options.setdefault("authenticator", RevocableAuthenticator())
    server = MatsSocketServer(store, **options)
    app = App(server)
    await server.start("127.0.0.1", 0)
    try:
        yield server, app
    finally:
        await server.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def wait_until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ HELLO --------

def test_hello_registers_the_session_and_a_send_in_the_next_frame_is_answered(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, app):
            c = await RawClient.connect(server.port)
            # the SEND goes out before WELCOME is back, as the JS client does; cmid a JSON number
            await c.send({"t": "HELLO", "clv": "raw", "an": "TestApp", "av": "1.0", "auth": token("alice"),
                          "tid": "h"})
            await c.send({"t": "SEND", "eid": "count", "cmid": 1, "tid": "t1", "msg": {"n": 1}})
            welcome = await c.next()
            assert welcome["t"] == "WELCOME" and welcome["tid"] == "h" and welcome["desc"] == "new session"
            assert await c.next() == {"t": "ACK", "cmid": 1}
            assert app.calls == {"count": 1}
            current = store.get_current_registered_node_for_session(welcome["sid"])
            assert current is not None and current.node_name == "node-a"
            [session] = store.get_sessions(True, user_id="alice")
            assert (session.session_id, session.app_name, session.app_version) == (welcome["sid"], "TestApp", "1.0")
            await c.close()
    run(scenario())


def test_hello_and_send_in_one_frame(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _app):
            c = await RawClient.connect(server.port)
            await c.hello(token(), None, {"t": "REQUEST", "eid": "count", "cmid": "c-1", "tid": "t", "msg": 5})
            answer = await c.expect("RESOLVE")
            assert answer["cmid"] == "c-1" and answer["msg"] == {"calls": 1, "echo": 5}
            await c.close()
    run(scenario())


def test_reconnect_to_a_session_that_is_gone_closes_with_session_lost(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            await c.send({"t": "HELLO", "clv": "raw", "an": "a", "av": "1", "auth": token(), "sid": "no-such-session"})
            code, reason = await c.closed()
            assert code == 4001 and "gone" in reason
            assert not store.is_session_exists("no-such-session")
    run(scenario())


def test_reconnect_as_another_user_is_refused_and_the_session_is_kept(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            alice = await RawClient.connect(server.port)
            sid = (await alice.hello(token("alice")))["sid"]
            await alice.close(4002)  # RECONNECT: the session stays for alice
            await wait_until(lambda: store.get_current_registered_node_for_session(sid) is None, "deregister")
            mallory = await RawClient.connect(server.port)
            await mallory.send({"t": "HELLO", "clv": "raw", "an": "a", "av": "1", "auth": token("mallory"),
                                "sid": sid})
            code, reason = await mallory.closed()
            assert code == 1008 and "does not match" in reason
            [session] = store.get_sessions(False)
            assert (session.session_id, session.user_id) == (sid, "alice")
    run(scenario())


def test_a_second_socket_for_a_session_disconnects_the_first(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            first = await RawClient.connect(server.port)
            sid = (await first.hello())["sid"]
            second = await RawClient.connect(server.port)
            welcome = await second.hello(None, sid)
            assert welcome["sid"] == sid and welcome["desc"] == "reconnected - existing local"
            assert (await first.closed())[0] == 4003
            await second.send({"t": "SEND", "eid": "count", "cmid": 1, "tid": "t"})
            assert (await second.expect("ACK"))["cmid"] == 1
            assert store.get_current_registered_node_for_session(sid).node_name == "node-a"
            await second.close()
    run(scenario())


def test_sessions_per_user_are_limited(store) -> None:
    async def scenario() -> None:
        async with node(store, max_sessions_per_user=2) as (server, _):
            clients = [await RawClient.connect(server.port) for _ in range(3)]
            await clients[0].hello(token("bob"))
            await clients[1].hello(token("bob"))
            await clients[2].send({"t": "HELLO", "clv": "raw", "an": "a", "av": "1", "auth": token("bob")})
            code, reason = await clients[2].closed()
            assert code == 1008 and "Too many sessions" in reason
            assert store.get_sessions_count(False, user_id="bob") == 2
            other = await RawClient.connect(server.port)
            await other.hello(token("carol"))  # other users are not affected
    run(scenario())


# ------------------------------------------------------- incoming messages --------

@pytest.mark.parametrize(("t", "eid", "expected"), [
    ("SEND", "count", {"t": "ACK"}),
    ("SEND", "sink", {"t": "ACK"}),
    ("SEND", "deny", {"t": "NACK"}),
    ("SEND", "nowhere", {"t": "NACK"}),
    ("REQUEST", "count", {"t": "RESOLVE", "msg": {"calls": 1, "echo": {"q": 1}}}),
    ("REQUEST", "reject", {"t": "REJECT", "msg": {"why": "rejected"}}),
    ("REQUEST", "deny", {"t": "NACK"}),
    ("REQUEST", "throws", {"t": "NACK", "desc": "ValueError: handler failed"}),
    ("REQUEST", "ignore", {"t": "NACK"}),
    ("REQUEST", "sink", {"t": "NACK"}),  # a terminator never replies
    ("REQUEST", "nowhere", {"t": "NACK"}),
    ("REQUEST", "bad.reply", {"t": "NACK"}),
])
def test_every_settlement_gets_its_answer(store, t: str, eid: str, expected: dict) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            await c.hello()
            await c.send({"t": t, "eid": eid, "cmid": 42, "tid": "trace-1", "msg": {"q": 1}})
            answer = await c.next()
            assert answer["cmid"] == 42
            assert {k: answer.get(k) for k in expected} == expected
            # the answer, a plain ACK too, is kept for a resend until the client's ACK2
            stored = store.get_message_from_inbox(c.sid, "42")
            assert stored is not None and stored.full_envelope is not None
            assert orjson.loads(stored.full_envelope) == answer
            await c.send({"t": "ACK2", "cmid": 42})
            await c.send({"t": "PING", "x": "sync"})
            await c.expect("PONG", x="sync")
            assert store.get_message_from_inbox(c.sid, "42") is None
            await c.close()
    run(scenario())


def test_a_double_send_is_answered_once_with_the_stored_answer(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, app):
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            request = {"t": "REQUEST", "eid": "count", "cmid": 7, "tid": "t7", "msg": "first"}
            await c.send(request)
            first = await c.expect("RESOLVE", cmid=7)
            await c.send({**request, "msg": "second"})
            again = await c.expect("RESOLVE", cmid=7)
            assert again["msg"] == first["msg"] == {"calls": 1, "echo": "first"}
            assert again["desc"] == "dupe REQUEST stored"
            # and after a reconnect, as a client resends everything unanswered
            await c.close(4002)
            c2 = await RawClient.connect(server.port)
            await c2.hello(None, sid, request)
            assert (await c2.expect("RESOLVE", cmid=7))["msg"] == first["msg"]
            send = {"t": "SEND", "eid": "count", "cmid": 8, "tid": "t8"}
            await c2.send(send)
            await c2.send(send)
            assert (await c2.expect("ACK", cmid=8)).get("desc") is None
            assert (await c2.expect("ACK", cmid=8))["desc"] == "dupe SEND stored"
            assert app.calls == {"count": 2}  # the REQUEST once, the SEND once
            await c2.close()
    run(scenario())


def test_an_answer_given_later_reaches_the_client_through_the_outbox(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, app):
            c = await RawClient.connect(server.port)
            await c.hello()
            await c.send({"t": "REQUEST", "eid": "later", "cmid": 3, "tid": "t3", "msg": None},
                         {"t": "REQUEST", "eid": "later", "cmid": 4, "tid": "t4", "msg": None})
            assert (await c.expect("ACK", cmid=3))["t"] == "ACK"
            assert (await c.expect("ACK", cmid=4))["t"] == "ACK"
            await app.later[0].resolve({"answer": 3})
            await app.later[1].reject({"answer": 4})
            resolve = await c.expect("RESOLVE", cmid=3)
            reject = await c.expect("REJECT", cmid=4)
            assert (resolve["msg"], resolve["tid"], reject["msg"]) == ({"answer": 3}, "t3", {"answer": 4})
            assert len(store.get_messages_from_outbox(c.sid, 10)) == 0  # attempted: not fetched again
            await c.send({"t": "ACK", "ids": [resolve["smid"], reject["smid"]]})
            assert (await c.expect("ACK2"))["ids"] == [resolve["smid"], reject["smid"]]
            store.outbox_messages_unmark_attempted_delivery(c.sid)
            assert store.get_messages_from_outbox(c.sid, 10) == []  # completed, not just attempted
            with pytest.raises(RuntimeError):
                await app.later[0].resolve("twice")
            await c.close()
    run(scenario())


# ------------------------------------------------------- server-initiated --------

def test_a_reconnect_gets_every_unacknowledged_message_again_in_order(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            for i in range(5):
                assert await server.send(sid, f"trace-{i}", "client.terminator", {"i": i})
            got = [await c.expect("SEND") for _ in range(5)]
            assert [e["msg"]["i"] for e in got] == [0, 1, 2, 3, 4]
            assert {e["eid"] for e in got} == {"client.terminator"}
            await c.send({"t": "ACK", "smid": got[0]["smid"]})  # only the first is acknowledged
            await c.expect("ACK2", smid=got[0]["smid"])
            await c.close(4002)
            await wait_until(lambda: store.get_current_registered_node_for_session(sid) is None, "deregister")
            for i in (5, 6):  # stored while the client is away
                assert await server.send(sid, f"trace-{i}", "client.terminator", {"i": i})
            c2 = await RawClient.connect(server.port)
            assert (await c2.hello(None, sid))["desc"] == "reconnected - existing in CSAF"
            again = [await c2.expect("SEND") for _ in range(6)]
            assert [e["msg"]["i"] for e in again] == [1, 2, 3, 4, 5, 6]
            await c2.send({"t": "ACK", "ids": [e["smid"] for e in again]})
            await c2.expect("ACK2")
            store.outbox_messages_unmark_attempted_delivery(sid)
            assert store.get_messages_from_outbox(sid, 20) == []
            await c2.close()
    run(scenario())


def test_a_message_attempted_too_often_is_dead_lettered(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            await c.close(4002)
            await wait_until(lambda: store.get_current_registered_node_for_session(sid) is None, "deregister")
            await server.send(sid, "poison", "client.terminator", {"poison": True})
            [poison] = store.get_messages_from_outbox(sid, 1)
            for _ in range(MAX_DELIVERY_ATTEMPTS):  # as if every delivery had crashed the client
                store.outbox_messages_attempted_delivery(sid, [poison.server_message_id])
                store.outbox_messages_unmark_attempted_delivery(sid)
            await server.send(sid, "fine", "client.terminator", {"poison": False})
            c2 = await RawClient.connect(server.port)
            await c2.hello(None, sid)
            delivered = await c2.expect("SEND")
            assert delivered["msg"] == {"poison": False}
            await c2.send({"t": "ACK", "smid": delivered["smid"]}, {"t": "PING", "x": 1})
            await c2.expect("PONG", x=1)
            assert [e for e in c2.buffer if e["t"] == "SEND"] == []
            store.outbox_messages_unmark_attempted_delivery(sid)
            assert store.get_messages_from_outbox(sid, 20) == []  # the poison stays in the dead letters
            await c2.close()
    run(scenario())


def test_a_server_request_and_the_client_reply(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, app):
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            assert await server.request(sid, "trace-r", "client.endpoint", {"ask": 1}, "reply.receiver",
                                        "corr", b"\x00\x01")
            request = await c.expect("REQUEST")
            assert (request["eid"], request["msg"], request["tid"]) == ("client.endpoint", {"ask": 1}, "trace-r")
            reply = {"t": "RESOLVE", "smid": request["smid"], "cmid": 100, "tid": "trace-r", "msg": {"answer": 2}}
            await c.send({"t": "ACK", "smid": request["smid"]}, reply)
            assert (await c.expect("ACK", cmid=100))["t"] == "ACK"
            await c.send(reply)  # a resend: ACKed, not handled again
            assert (await c.expect("ACK", cmid=100))["desc"] == "dupe RESOLVE"
            assert len(app.replies) == 1
            ctx = app.replies[0]
            assert (ctx.message_type, ctx.message, ctx.correlation_string, ctx.correlation_binary) == (
                "RESOLVE", {"answer": 2}, "corr", b"\x00\x01")
            assert store.get_and_delete_request_correlation(sid, request["smid"]) is None
            assert not await server.request("no-such-session", "t", "client.endpoint", 1, "reply.receiver")
            await c.close()
    run(scenario())


# ------------------------------------------------------------- topics ------------

def test_subscribe_publish_unsubscribe(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            await c.hello(None, None, {"t": "SUB", "eid": "news"}, {"t": "SUB", "eid": "old", "smid": "last-seen"},
                          {"t": "SUB", "eid": "secret"})
            assert (await c.expect("SUB_OK"))["eid"] == "news"
            assert (await c.expect("SUB_LOST"))["eid"] == "old"
            assert (await c.expect("SUB_NO_AUTH"))["eid"] == "secret"
            assert (server.topics.count("news"), server.topics.count("secret")) == (1, 0)
            await server.publish("news", "trace-p", {"headline": 1})
            pub = await c.expect("PUB")
            assert (pub["eid"], pub["msg"], pub["tid"]) == ("news", {"headline": 1}, "trace-p")
            await c.send({"t": "UNSUB", "eid": "news"}, {"t": "PING", "x": "u"})
            await c.expect("PONG", x="u")
            assert server.topics.count("news") == 0
            await server.publish("news", "trace-q", {"headline": 2})
            await server.publish("secret", "trace-s", {"headline": 3})
            await c.send({"t": "PING", "x": "after"})
            await c.expect("PONG", x="after")
            assert [e for e in c.buffer if e["t"] == "PUB"] == []
            await c.close()
    run(scenario())


def test_a_publish_reaches_subscribers_on_every_node(tmp_path: Path) -> None:
    hub = InProcessHub()
    stores = [open_store(node_name=name, data_dir=tmp_path / name) for name in ("node-a", "node-b")]
    for s in stores:
        s.boot()

    async def scenario() -> None:
        async with node(stores[0], channel=hub.channel("node-a")) as (a, _), \
                node(stores[1], channel=hub.channel("node-b")) as (b, _):
            ca, cb = await RawClient.connect(a.port), await RawClient.connect(b.port)
            for c in (ca, cb):
                await c.hello(None, None, {"t": "SUB", "eid": "fan-out"})
                await c.expect("SUB_OK")
            await a.publish("fan-out", "trace-f", {"n": 1})
            for c in (ca, cb):
                assert (await c.expect("PUB"))["msg"] == {"n": 1}
            await ca.close()
            await cb.close()
    try:
        run(scenario())
    finally:
        for s in stores:
            s.close()


def test_node_messages_from_another_node_reach_the_sockets_held_here(tmp_path: Path) -> None:
    """What node A tells node B over the channel: new outbox message, disconnect, close."""
    hub = InProcessHub()
    stores = [open_store(node_name=name, data_dir=tmp_path / name) for name in ("node-a", "node-b")]
    for s in stores:
        s.boot()

    async def scenario() -> None:
        async with node(stores[0], channel=hub.channel("node-a")) as (a, _), \
                node(stores[1], channel=hub.channel("node-b")) as (b, _):
            c = await RawClient.connect(b.port)
            sid = (await c.hello())["sid"]
            # stored behind B's back (as another node would store it), then A's nudge
            stores[1].store_message_in_outbox(sid, "m-1", None, "t", "SEND", None,
                                              '{"t": "SEND", "eid": "client.terminator", "smid": "m-1", "tid": "t"}',
                                              '{"from": "node-a"}', None)
            a.nodes.new_message("node-b", sid)
            assert (await c.expect("SEND", smid="m-1"))["msg"] == {"from": "node-a"}
            a.nodes.disconnect("node-b", sid, "some-older-connection")  # not this socket: nothing happens
            await c.send({"t": "PING", "x": 1})
            await c.expect("PONG", x=1)
            current = stores[1].get_current_registered_node_for_session(sid)
            a.nodes.disconnect("node-b", sid, current.connection_id)
            assert (await c.closed())[0] == 4003
            assert stores[1].is_session_exists(sid)  # a disconnect keeps the session
            c2 = await RawClient.connect(b.port)
            await c2.hello(None, sid)
            a.nodes.close("node-b", sid, "closed on node-a")
            code, reason = await c2.closed()
            assert code == 4000 and "closed on node-a" in reason
            await wait_until(lambda: not stores[1].is_session_exists(sid), "the session's close")
    try:
        run(scenario())
    finally:
        for s in stores:
            s.close()


# --------------------------------------------------------- authentication --------

def test_an_invalid_authorization_holds_messages_until_reauthentication(store) -> None:
    auth = RevocableAuthenticator()

    async def scenario() -> None:
        async with node(store, authenticator=auth) as (server, app):
            c = await RawClient.connect(server.port)
            first = token("alice")
            sid = (await c.hello(first))["sid"]
            auth.revoked.add(first)
            await c.send({"t": "SEND", "eid": "count", "cmid": 1, "tid": "t1"})
            assert (await c.next())["t"] == "REAUTH"
            await server.send(sid, "out", "client.terminator", {"held": True})  # outgoing is held as well
            await c.send({"t": "PING", "x": 1})
            assert await c.next() == {"t": "PONG", "x": 1}
            assert app.calls == {}
            await c.send({"t": "AUTH", "auth": token("alice", 120_000)})
            assert await c.expect("ACK", cmid=1)
            assert (await c.expect("SEND"))["msg"] == {"held": True}
            assert app.calls == {"count": 1}
            await c.close()
    run(scenario())


def test_bad_or_missing_authorization_closes_with_violated_policy(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            for auth in (None, "Bearer nope", token("alice", -1000)):
                c = await RawClient.connect(server.port)
                await c.send({"t": "HELLO", "clv": "raw", "an": "a", "av": "1", "auth": auth})
                assert (await c.closed())[0] == 1008
            assert store.get_sessions_count(False) == 0
    run(scenario())


# ------------------------------------------------------------ close codes --------

@pytest.mark.parametrize(("code", "session_kept"), [
    (4000, False), (1001, False), (4004, False), (4002, True), (1000, True), (4003, True),
])
def test_what_a_client_close_does_to_the_session(store, code: int, session_kept: bool) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            await c.close(code)
            await wait_until(lambda: server.local_connection(sid) is None, "the socket's end")
            assert store.is_session_exists(sid) == session_kept
            assert store.get_current_registered_node_for_session(sid) is None
            assert server.live_session_ids() == []
    run(scenario())


def test_server_side_close_session(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            await server.close_session(sid, "enough")
            code, reason = await c.closed()
            assert code == 4000 and "enough" in reason
            assert not store.is_session_exists(sid)
            away = await RawClient.connect(server.port)  # a session whose client is away
            away_sid = (await away.hello())["sid"]
            await away.close(4002)
            await wait_until(lambda: server.local_connection(away_sid) is None, "deregister")
            await server.close_session(away_sid)
            assert not store.is_session_exists(away_sid)
    run(scenario())


def test_stopping_the_node_sends_service_restart_and_keeps_the_sessions(store) -> None:
    async def scenario() -> None:
        server = MatsSocketServer(store, RevocableAuthenticator())
        await server.start("127.0.0.1", 0)
        c = await RawClient.connect(server.port)
        sid = (await c.hello())["sid"]
        await server.stop()
        assert (await c.closed())[0] == 1012
        assert store.is_session_exists(sid)
        assert store.get_current_registered_node_for_session(sid) is None
    run(scenario())


# ---------------------------------------------------------------- bad frames -----

BAD_FRAMES = [
    ("not json", "this is not JSON", 4004),
    ("not an array", '{"t": "PING"}', 4004),
    ("not an object", "[1, 2]", 4004),
    ("unknown type", '[{"t": "BOGUS"}]', 4004),
    ("server-only type", '[{"t": "WELCOME", "sid": "x"}]', 4004),
    ("missing cmid", '[{"t": "SEND", "eid": "count", "tid": "t"}]', 4004),
    ("missing tid", '[{"t": "REQUEST", "eid": "count", "cmid": 1}]', 4004),
    ("reply without smid", '[{"t": "RESOLVE", "cmid": 1, "tid": "t"}]', 4004),
    ("ACK without ids", '[{"t": "ACK"}]', 4004),
    ("ACK2 with both ids", '[{"t": "ACK2", "cmid": 1, "ids": [2]}]', 4004),
    ("oversize id", '[{"t": "SEND", "eid": "count", "tid": "t", "cmid": "' + "x" * 300 + '"}]', 4004),
    ("second HELLO", '[{"t": "HELLO", "clv": "c", "an": "a", "av": "1"}]', 1008),
    ("binary frame", b"\x00\x01", 4004),
    ("oversize frame", '["' + "x" * 70_000 + '"]', 1009),
]


@pytest.mark.parametrize(("frame", "code"), [pytest.param(f, c, id=name) for name, f, c in BAD_FRAMES])
def test_a_bad_frame_gets_the_protocol_answer_and_disturbs_nothing_else(store, frame: str | bytes, code: int) -> None:
    async def scenario() -> None:
        async with node(store, max_frame_bytes=64 * 1024) as (server, _):
            bystander = await RawClient.connect(server.port)
            await bystander.hello(token("bystander"))
            bad = await RawClient.connect(server.port)
            sid = (await bad.hello(token("bad")))["sid"]
            await bad.ws.send(frame)
            assert (await bad.closed())[0] == code
            await wait_until(lambda: server.local_connection(sid) is None, "the bad session's end")
            # a protocol error ends the session; an oversize frame is the WebSocket's answer, the session stays
            assert store.is_session_exists(sid) == (code == 1009)
            await bystander.send({"t": "REQUEST", "eid": "count", "cmid": 1, "tid": "t", "msg": "still here"})
            assert (await bystander.expect("RESOLVE", cmid=1))["msg"]["echo"] == "still here"
            late = await RawClient.connect(server.port)
            await late.hello(token("late"))
            await bystander.close()
            await late.close()
    run(scenario())


def test_an_unexpected_failure_closes_with_unexpected_condition(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            # the authenticator accepts a user id longer than the store takes
            await c.send({"t": "HELLO", "clv": "raw", "an": "a", "av": "1", "auth": token("u" * 300)})
            code, reason = await c.closed()
            assert code == 1011 and "Internal" in reason
            assert store.get_sessions_count(False) == 0
            ok = await RawClient.connect(server.port)
            await ok.hello()
            await ok.close()
    run(scenario())


def test_a_handshake_without_the_subprotocol_or_on_another_path_is_refused(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            for path, subprotocols, status in (("/matssocket", None, 400), ("/matssocket", ["other"], 400),
                                               ("/elsewhere", ["matssocket"], 404)):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(f"ws://127.0.0.1:{server.port}{path}", subprotocols=subprotocols)
                assert refused.value.response.status_code == status
    run(scenario())


def test_messages_before_hello_are_refused(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            await c.send({"t": "SEND", "eid": "count", "cmid": 1, "tid": "t", "auth": token()})
            code, reason = await c.closed()
            assert code == 1008 and "HELLO" in reason
            c = await RawClient.connect(server.port)
            await c.send({"t": "PING", "x": 1})
            assert (await c.closed())[0] == 4004
    run(scenario())


# --------------------------------------------------------- PING, debug, jobs -----

def test_ping_is_answered_with_pong(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            c = await RawClient.connect(server.port)
            await c.hello()
            await c.send({"t": "PING", "x": "abc"}, {"t": "PING", "x": 2})
            assert await c.next() == {"t": "PONG", "x": "abc"}
            assert await c.next() == {"t": "PONG", "x": 2}
            await c.close()
    run(scenario())


def test_debug_fields_are_those_asked_for_and_allowed(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            allowed = await RawClient.connect(server.port)
            sid = (await allowed.hello(token("enableAllDebugOptions")))["sid"]
            await allowed.send({"t": "REQUEST", "eid": "count", "cmid": 1, "tid": "t", "rd": 3})
            debug = (await allowed.expect("RESOLVE", cmid=1))["debug"]
            assert debug["resd"] == 3 and debug["cmrnn"] == debug["mscnn"] == "node-a"
            assert debug["cmrts"] <= debug["mscts"]
            await server.send(sid, "push", "client.terminator", 1)  # the session asked for 3 above
            pushed = (await allowed.expect("SEND"))["debug"]
            assert pushed["resd"] == 3 and pushed["smcnn"] == pushed["mscnn"] == "node-a"
            assert pushed["smcts"] <= pushed["mscts"]
            plain = await RawClient.connect(server.port)
            await plain.hello(token("plain"))
            await plain.send({"t": "REQUEST", "eid": "count", "cmid": 1, "tid": "t", "rd": 3})
            assert "debug" not in await plain.expect("RESOLVE", cmid=1)
            await allowed.close()
            await plain.close()
    run(scenario())


def test_liveliness_is_notified_for_live_sessions(store) -> None:
    async def scenario() -> None:
        jobs = {"liveliness_interval": 0.2, "timeout_interval": None, "scavenge_interval": None, "jitter": 0}
        async with node(store, maintenance=jobs) as (server, _):
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            [before] = store.get_sessions(True)
            await asyncio.sleep(0.5)
            [after] = store.get_sessions(True)
            assert after.session_id == sid and after.liveliness_timestamp > before.liveliness_timestamp
            await c.close()
    run(scenario())


# ------------------------------------------------------------ store calls ------

@pytest.mark.parametrize("sync", [False, True], ids=["embedded", "embedded-fsync"])
def test_store_calls_run_on_the_event_loop_only_where_they_do_not_wait(tmp_path: Path, sync: bool) -> None:
    """An embedded store's call is its own CPU work: the node makes it on its event loop (a
    thread hop costs more). One that fsyncs waits for the disk: it runs on the store threads."""
    s = open_store(node_name="node-a", data_dir=tmp_path / "node-a", sync=sync)
    s.boot()
    try:
        assert s.calls_wait is sync

        async def scenario() -> None:
            async with node(s) as (server, _):
                def where() -> str:
                    return threading.current_thread().name
                ran_on = await server.io(where)
                assert (ran_on == threading.current_thread().name) is not sync, ran_on
                c = await RawClient.connect(server.port)
                await c.hello()
                await c.send({"t": "SEND", "eid": "count", "cmid": 1, "tid": "t1", "msg": {}})
                assert await c.expect("ACK") == {"t": "ACK", "cmid": 1}
                assert s.get_message_from_inbox(c.sid, "1") is not None
                await c.close()
        run(scenario())
    finally:
        s.close()


def test_random_ids_are_letters_and_digits_each_as_likely() -> None:
    ids = [random_id() for _ in range(4000)] + [random_id(40) for _ in range(100)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 for i in ids[:4000]) and all(len(i) == 40 for i in ids[4000:])
    counts = collections.Counter("".join(ids[:4000]))
    assert set(counts) == set(string.ascii_letters + string.digits)
    expected = 4000 * 16 / 62  # about 1,032 of each; a folded alphabet would give its first 8 a quarter more
    assert all(abs(n - expected) < expected * 0.2 for n in counts.values()), counts.most_common(3)
