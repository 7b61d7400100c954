"""The MatsSocket node's unit of work per client message, driven with the raw protocol client.

Each client SEND/REQUEST is handled in one unit of work of its session: its inbox entry, what
its handler stores through its context and its answer commit together before the client is
answered (`csaf_events.matssocket.incoming`). These tests look at what the client gets and what
the store holds when the handler stores, raises, fails in the store, races a copy of its
message, or writes for another session. The node-death cases are in
tests/test_matssocket_exactly_once.py.
"""

from __future__ import annotations

import orjson
import pytest
from test_matssocket_protocol import RawClient, node, run, store, wait_until  # noqa: F401 - fixture

from csaf_events import DataAccessError
from csaf_events.core.unit_of_work import UnitOfWork
from csaf_events.matssocket import IncomingContext, MatsSocketServer

RECEIVER = "client.terminator"


def _effects(server: MatsSocketServer) -> dict[str, list[str]]:
    """Endpoints whose handler stores a SEND back to the client inside the message's unit."""
    ran: dict[str, list[str]] = {"store_then_raise": [], "race": [], "relay": [], "later.in.handler": []}

    @server.terminator("store_then_raise")
    async def store_then_raise(ctx: IncomingContext) -> None:
        ran["store_then_raise"].append(str(ctx.client_message_id))
        await ctx.send(RECEIVER, {"n": ctx.message})
        raise RuntimeError("after its send")

    @server.terminator("store")
    async def store_(ctx: IncomingContext) -> None:
        await ctx.send(RECEIVER, {"n": ctx.message})

    @server.terminator("race")
    async def race(ctx: IncomingContext) -> None:
        """As if a copy of this message committed on another node while this one ran."""
        ran["race"].append(str(ctx.client_message_id))
        await ctx.send(RECEIVER, {"n": "loser"})
        sid, cmid = ctx.session_id, str(ctx.client_message_id)

        def winner() -> None:
            with server.store.unit_of_work(sid) as uow:
                uow.store_message_id_in_inbox(sid, cmid)
                uow.update_message_in_inbox(sid, cmid, orjson.dumps({"t": "ACK", "cmid": ctx.client_message_id,
                                                                    "desc": "winner"}).decode(), None)
        await server.io(winner)

    @server.terminator("relay")
    async def relay(ctx: IncomingContext) -> None:
        ran["relay"].append(str(ctx.client_message_id))
        await ctx.send(RECEIVER, {"n": ctx.message["n"]}, session_id=ctx.message["to"])

    @server.endpoint("later.in.handler")
    async def later(ctx: IncomingContext) -> None:
        ran["later.in.handler"].append(str(ctx.client_message_id))
        await ctx.answer_later().resolve({"n": ctx.message})
    return ran


def _outbox(server: MatsSocketServer, sid: str) -> list[dict]:
    return [orjson.loads(m.message_text) for m in server.store.get_messages_from_outbox(sid, 100)]


def test_a_handler_s_stores_commit_with_its_answer_and_a_resend_gets_the_stored_answer(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            _effects(server)
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            await c.send({"t": "SEND", "eid": "store", "cmid": 1, "tid": "t", "msg": 7})
            assert (await c.expect("ACK", cmid=1)).get("desc") is None
            sent = await c.expect("SEND", eid=RECEIVER)
            assert sent["msg"] == {"n": 7}
            await c.send({"t": "SEND", "eid": "store", "cmid": 1, "tid": "t", "msg": 7})
            assert (await c.expect("ACK", cmid=1))["desc"] == "dupe SEND stored"
            await c.send({"t": "ACK", "ids": [sent["smid"]]})
            await c.send({"t": "PING", "x": "sync"})
            await c.expect("PONG", x="sync")
            assert [e for e in c.buffer if e["t"] == "SEND"] == []  # the resend stored nothing more
            assert _outbox(server, sid) == []
    run(scenario())


def test_a_handler_that_raises_leaves_only_its_inbox_entry_and_nack(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            ran = _effects(server)
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            await c.send({"t": "SEND", "eid": "store_then_raise", "cmid": 2, "tid": "t", "msg": 1})
            nack = await c.expect("NACK", cmid=2)
            assert "after its send" in nack["desc"]
            assert _outbox(server, sid) == []  # its send went with its unit
            stored = store.get_message_from_inbox(sid, "2")
            assert stored is not None and orjson.loads(stored.full_envelope)["t"] == "NACK"
            await c.send({"t": "SEND", "eid": "store_then_raise", "cmid": 2, "tid": "t", "msg": 1})
            assert (await c.expect("NACK", cmid=2))["desc"] == "dupe SEND stored"
            assert ran["store_then_raise"] == ["2"]
    run(scenario())


def test_a_store_failure_at_the_commit_answers_retry_and_writes_nothing(store, monkeypatch: pytest.MonkeyPatch) -> None:
    real_commit = UnitOfWork.commit
    failures = [DataAccessError("the owner went away", may_have_written=False)]

    def failing_commit(self: UnitOfWork) -> None:
        if failures:
            self.rollback()
            raise failures.pop()
        real_commit(self)
    monkeypatch.setattr(UnitOfWork, "commit", failing_commit)

    async def scenario() -> None:
        async with node(store) as (server, _):
            _effects(server)
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            await c.send({"t": "SEND", "eid": "store", "cmid": 3, "tid": "t", "msg": 3})
            retry = await c.expect("RETRY", cmid=3)
            assert "the owner went away" in retry["desc"]
            assert store.get_message_from_inbox(sid, "3") is None
            assert _outbox(server, sid) == []
            await c.send({"t": "SEND", "eid": "store", "cmid": 3, "tid": "t", "msg": 3})  # the client's resend
            assert (await c.expect("ACK", cmid=3)).get("desc") is None  # handled now, not a dupe
            assert (await c.expect("SEND", eid=RECEIVER))["msg"] == {"n": 3}
    run(scenario())


def test_a_copy_that_committed_first_elsewhere_wins_and_the_loser_leaves_nothing(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            ran = _effects(server)
            c = await RawClient.connect(server.port)
            sid = (await c.hello())["sid"]
            await c.send({"t": "SEND", "eid": "race", "cmid": 4, "tid": "t"})
            answer = await c.expect("ACK", cmid=4)
            assert answer["desc"] == "dupe SEND stored"  # the winner's answer, not a bare dupe ACK
            assert ran["race"] == ["4"]
            assert _outbox(server, sid) == []  # the loser's send is gone with its unit
    run(scenario())


def test_a_later_answer_given_in_the_handler_commits_with_the_message(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            ran = _effects(server)
            c = await RawClient.connect(server.port)
            await c.hello()
            await c.send({"t": "REQUEST", "eid": "later.in.handler", "cmid": 5, "tid": "t", "msg": 5})
            assert (await c.expect("ACK", cmid=5)).get("desc") is None
            resolve = await c.expect("RESOLVE", cmid=5)
            assert resolve["msg"] == {"n": 5}
            await c.send({"t": "REQUEST", "eid": "later.in.handler", "cmid": 5, "tid": "t", "msg": 5})
            assert (await c.expect("ACK", cmid=5))["desc"] == "dupe REQUEST stored"
            assert ran["later.in.handler"] == ["5"]
    run(scenario())


def test_a_send_to_another_session_is_relayed_once(store) -> None:
    async def scenario() -> None:
        async with node(store) as (server, _):
            ran = _effects(server)
            sender, receiver = await RawClient.connect(server.port), await RawClient.connect(server.port)
            await sender.hello()
            to = (await receiver.hello())["sid"]
            message = {"t": "SEND", "eid": "relay", "cmid": 6, "tid": "t", "msg": {"to": to, "n": 6}}
            await sender.send(message)
            assert (await sender.expect("ACK", cmid=6)).get("desc") is None
            got = await receiver.expect("SEND", eid=RECEIVER)
            assert got["msg"] == {"n": 6}
            await receiver.send({"t": "ACK", "ids": [got["smid"]]})
            await sender.send(message)  # a resend: the stored answer, no second relay
            assert (await sender.expect("ACK", cmid=6))["desc"] == "dupe SEND stored"
            assert server.store.deliver_relays() == 0
            await wait_until(lambda: _outbox(server, to) == [], "the relayed message completed")
            assert ran["relay"] == ["6"]
    run(scenario())
