"""A MatsSocket cluster on Kafka: node processes (``csaf serve --bootstrap``) on one real broker.

Two nodes, A and B, run as processes of their own (``python -m csaf_events.ops.cli serve`` with
the app below) in a namespace of this module's own; the tests drive them with the raw
protocol client of test_matssocket_protocol. What crosses nodes goes through the store's
channel (`csaf_events.kafka.channel`): a message stored on A for a session whose socket is
on B ("new outbox message"), publish fan-out, "close your socket for session S" and
"disconnect your older socket". The last test kills B with SIGKILL while it streams to a
client, which reconnects to A. The nodes are started once for the module (a Kafka boot and
the rebalance between the two take seconds); the kill test comes last. The real MatsSocket
JavaScript client's own integration suite also runs against the two nodes (its sessions
spread over both).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import unique_namespace
from kafka_fixtures import delete_namespace_topics
from serve_process import ServeProcess
from test_matssocket_js import JS_DIR, client_suite, js_client  # noqa: F401 - fixtures
from test_matssocket_protocol import RawClient, token
from websockets.exceptions import ConnectionClosed

from csaf_events.matssocket import IncomingContext, MatsSocketServer
from csaf_events.matssocket.testapp import DummyAuthenticator, install
from csaf_events.store import ClusterStoreAndForward

pytestmark = pytest.mark.kafka

TIMEOUT = 30.0  # seconds a client waits for an envelope (a takeover after a kill takes several)
STREAM = 200  # messages of the SIGKILL test


def create_server(store: ClusterStoreAndForward) -> MatsSocketServer:
    """The nodes' app (``--app test_matssocket_cluster:create_server``): the test app (for the
    MatsSocket JS client's suite), and terminators that make the node store messages for a
    session (``stream``), publish (``publish``) and close a session (``close``), wherever that
    session's socket is."""
    server = MatsSocketServer(store, DummyAuthenticator())
    install(server)

    @server.terminator("stream")
    async def stream(ctx: IncomingContext) -> None:
        for i in range(ctx.message["count"]):
            await server.send(ctx.message["sid"], f"{ctx.trace_id}-{i}", "client.terminator",
                              {"i": i, "stored_on": server.node_name})

    @server.terminator("publish")
    async def publish(ctx: IncomingContext) -> None:
        await server.publish(ctx.message["topic"], ctx.trace_id, {"from": server.node_name})

    @server.terminator("close")
    async def close(ctx: IncomingContext) -> None:
        await server.close_session(ctx.message["sid"], f"closed through {server.node_name}")
    return server


class Client(RawClient):
    """The raw protocol client, waiting longer (a call may wait for a partition's takeover)."""

    @classmethod
    async def connect(cls, port: int) -> Client:  # type: ignore[override]
        from websockets.asyncio.client import connect
        return cls(await connect(f"ws://127.0.0.1:{port}/matssocket", subprotocols=["matssocket"]))

    async def _fill(self) -> None:
        import orjson
        self.buffer.extend(orjson.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT)))

    async def trigger(self, eid: str, cmid: int, **message: Any) -> None:
        await self.send({"t": "SEND", "eid": eid, "cmid": cmid, "tid": f"{eid}-{cmid}", "msg": message})


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServeProcess]]:
    namespace, tmp = unique_namespace("ms-cluster"), tmp_path_factory.mktemp("ms-cluster")
    app = ["--app", "test_matssocket_cluster:create_server", "--bootstrap", kafka_bootstrap,
           "--namespace", namespace, "--partitions", "2"]
    nodes = {name: ServeProcess(name, tmp, app).launch() for name in ("node-a", "node-b")}
    try:
        deadline = time.monotonic() + 120
        for node in nodes.values():
            node.wait_listening(deadline)
        yield nodes
    finally:
        for node in nodes.values():
            node.kill()
        delete_namespace_topics(kafka_bootstrap, namespace)


def run(coro: Any, timeout: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _receive_sends(client: Client, count: int) -> list[dict]:
    """`count` SENDs, ACKed as they come."""
    got: list[dict] = []
    while len(got) < count:
        envelope = await client.expect("SEND")
        got.append(envelope)
        await client.send({"t": "ACK", "ids": [envelope["smid"]]})
    return got


async def _nothing_more(client: Client, t: str) -> None:
    """No envelope of type `t` is waiting behind what came (a PING's PONG comes after them)."""
    await client.send({"t": "PING", "x": "last"})
    await client.expect("PONG", x="last")
    assert [e for e in client.buffer if e["t"] == t] == []


def test_a_message_stored_on_a_reaches_the_client_on_b_once(cluster: dict[str, ServeProcess]) -> None:
    a, b = cluster["node-a"], cluster["node-b"]

    async def scenario() -> None:
        on_b = await Client.connect(b.port)
        sid = (await on_b.hello(token("bob")))["sid"]
        on_a = await Client.connect(a.port)
        await on_a.hello(token("bob"))
        await on_a.trigger("stream", 1, sid=sid, count=3)
        await on_a.expect("ACK", cmid=1)  # stored on A; B hears of it on the channel only
        got = await _receive_sends(on_b, 3)
        assert [(e["msg"]["i"], e["msg"]["stored_on"]) for e in got] == [(0, "node-a"), (1, "node-a"),
                                                                          (2, "node-a")]
        await _nothing_more(on_b, "SEND")
        await on_a.close()
        await on_b.close()
    run(scenario())


def test_a_publish_on_either_node_reaches_subscribers_on_both(cluster: dict[str, ServeProcess]) -> None:
    a, b = cluster["node-a"], cluster["node-b"]

    async def scenario() -> None:
        clients = [await Client.connect(a.port), await Client.connect(b.port)]
        for c in clients:
            await c.hello(token("sub"), None, {"t": "SUB", "eid": "news"})
            await c.expect("SUB_OK", eid="news")
        for cmid, c in enumerate(clients, 1):
            await c.trigger("publish", cmid, topic="news")
            await c.expect("ACK", cmid=cmid)
        for c in clients:
            got = sorted([(await c.expect("PUB", eid="news"))["msg"]["from"] for _ in range(2)])
            assert got == ["node-a", "node-b"]
            await _nothing_more(c, "PUB")
            await c.close()
    run(scenario())


def test_close_and_disconnect_reach_the_node_that_holds_the_socket(cluster: dict[str, ServeProcess]) -> None:
    a, b = cluster["node-a"], cluster["node-b"]

    async def scenario() -> None:
        first = await Client.connect(b.port)
        sid = (await first.hello(token("carol")))["sid"]
        # the same session connects to A: A tells B to drop its socket (DISCONNECT, 4003)
        second = await Client.connect(a.port)
        welcome = await second.hello(token("carol"), sid)
        assert welcome["sid"] == sid
        code, _ = await first.closed()
        assert code == 4003
        # back to B, and A is asked to close the session: B closes the socket (CLOSE_SESSION, 4000)
        third = await Client.connect(b.port)
        await third.hello(token("carol"), sid)
        assert (await second.closed())[0] == 4003
        on_a = await Client.connect(a.port)
        await on_a.hello(token("dave"))
        await on_a.trigger("close", 1, sid=sid)
        await on_a.expect("ACK", cmid=1)
        code, reason = await third.closed()
        assert code == 4000 and "closed through node-a" in reason
        gone = await Client.connect(a.port)
        await gone.send({"t": "HELLO", "clv": "raw", "an": "a", "av": "1", "auth": token("carol"), "sid": sid})
        assert (await gone.closed())[0] == 4001  # SESSION_LOST: the session left the store
        await on_a.close()
    run(scenario())


def test_the_js_client_s_own_integration_suite_passes_against_the_two_nodes(cluster: dict[str, ServeProcess],
                                                                            client_suite: Path) -> None:
    """MatsSocket's mocha suite with both nodes' URLs: each MatsSocket of the suite picks one,
    so sessions live on both nodes and the HTTP side channel publishes on either."""
    urls = ",".join(f"ws://127.0.0.1:{node.port}/matssocket" for node in cluster.values())
    env = {**os.environ, "MATS_SOCKET_URLS": urls, "NODE_OPTIONS": "--experimental-websocket"}
    result = subprocess.run([str(JS_DIR / "node_modules" / ".bin" / "mocha"), "--exit", "--reporter", "json",
                             "suite/*test.js"], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout[result.stdout.index("{"):])
    stats = report["stats"]
    failures = [f"{t['fullTitle']}: {t['err'].get('message')}" for t in report["failures"]]
    assert failures == [], f"{stats['failures']} of {stats['tests']} failed:\n" + "\n".join(failures)
    assert stats["passes"] >= 80 and stats["pending"] <= 3, stats


def test_node_b_killed_mid_stream_the_client_gets_everything_once_in_order_from_a(
        cluster: dict[str, ServeProcess]) -> None:
    """Last in the module: it kills B."""
    a, b = cluster["node-a"], cluster["node-b"]
    seen: set[str] = set()
    delivered: list[int] = []  # first copies, in arrival order

    def take(envelopes: list[dict]) -> list[str]:
        smids = []
        for e in envelopes:
            if e["t"] == "SEND":
                smids.append(e["smid"])
                if e["smid"] not in seen:
                    seen.add(e["smid"])
                    delivered.append(e["msg"]["i"])
        return smids

    async def receive(client: Client, until: int | None, ack: bool = True) -> None:
        while until is None or len(delivered) < until:
            await client._fill()
            smids = take(client.buffer)
            client.buffer.clear()
            if smids and ack:
                await client.send({"t": "ACK", "ids": smids})

    async def scenario() -> int:
        first = await Client.connect(b.port)
        sid = (await first.hello(token("erin")))["sid"]
        await first.close(4002)  # RECONNECT: the session waits while its stream is stored
        producer = await Client.connect(a.port)
        await producer.hello(token("erin"))
        await producer.trigger("stream", 1, sid=sid, count=STREAM)
        await producer.expect("ACK", cmid=1)  # the whole stream is stored
        on_b = await Client.connect(b.port)
        assert (await on_b.hello(token("erin"), sid))["sid"] == sid
        await receive(on_b, STREAM // 10)
        b.kill()  # SIGKILL while B streams: some delivered and ACKed, some delivered and not, others not sent
        with pytest.raises((ConnectionClosed, asyncio.TimeoutError)):
            await receive(on_b, None, ack=False)
        before = len(delivered)
        again = await Client.connect(a.port)
        assert (await again.hello(token("erin"), sid))["sid"] == sid
        await receive(again, STREAM)
        await _nothing_more(again, "SEND")
        await again.close()
        await producer.close()
        return before

    before_kill = run(scenario())
    assert 0 < before_kill < STREAM, "B was not killed mid-stream"
    assert delivered == list(range(STREAM))
