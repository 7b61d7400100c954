"""A MatsSocket node killed with SIGKILL while it streams to a client.

The node runs in its own process (``python -m csaf_events.matssocket --app`` with the
factory below, embedded store). The client asks for a stream of messages, ACKs what it
gets, and the node is killed mid-stream; a new node process on the same data directory
takes the client's reconnect. The client must see every message exactly once, in order:
nothing ACKed is lost, nothing not ACKed is skipped, and what was delivered but whose ACK
died with the node is delivered again and recognised by its server message id (as the
MatsSocket clients do).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from test_matssocket_cli import port_from_log
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from csaf_events.core.clock import now_ms
from csaf_events.matssocket import IncomingContext, MatsSocketServer
from csaf_events.matssocket.testapp import DummyAuthenticator
from csaf_events.store import ClusterStoreAndForward

MESSAGES = 2000


def create_server(store: ClusterStoreAndForward) -> MatsSocketServer:
    """The node's app: ``stream`` stores `count` SENDs for session `sid` before it is ACKed."""
    server = MatsSocketServer(store, DummyAuthenticator())

    @server.terminator("stream")
    async def stream(ctx: IncomingContext) -> None:
        for i in range(ctx.message["count"]):
            await server.send(ctx.message["sid"], f"{ctx.trace_id}-{i}", "client.terminator", {"i": i})
    return server


def start_node(data_dir: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "csaf_events.matssocket", "--app",
                                "test_matssocket_crash:create_server", "--port", "0", "--host", "127.0.0.1",
                                "--node-name", "crash-node", "--data-dir", str(data_dir)],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    return process, port_from_log(process)


class StreamClient:
    """Receives SENDs, ACKs each frame, and keeps the first copy of every server message id."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.delivered: list[int] = []  # message numbers, first copies, in arrival order

    async def receive(self, ws, until: int | None, timeout: float = 20.0) -> None:
        """ACK what comes until `until` first copies are in (None: until the socket dies)."""
        while until is None or len(self.delivered) < until:
            frame = await asyncio.wait_for(ws.recv(), timeout)
            smids = [e["smid"] for e in orjson.loads(frame) if e["t"] == "SEND"]
            for envelope in orjson.loads(frame):
                if envelope["t"] == "SEND" and envelope["smid"] not in self.seen:
                    self.seen.add(envelope["smid"])
                    self.delivered.append(envelope["msg"]["i"])
            if smids:
                await ws.send(orjson.dumps([{"t": "ACK", "ids": smids}]).decode())


def _hello(sid: str | None = None, *more: dict) -> str:
    return orjson.dumps([{"t": "HELLO", "clv": "crash-test", "an": "a", "av": "1", "sid": sid,
                          "auth": f"DummyAuth:crash:{now_ms() + 600_000}"}, *more]).decode()


async def _welcome(ws) -> str:
    envelope = orjson.loads(await asyncio.wait_for(ws.recv(), 20))[0]
    assert envelope["t"] == "WELCOME", envelope
    return envelope["sid"]


def _url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/matssocket"


async def _scenario(data_dir: Path) -> tuple[StreamClient, int]:
    client = StreamClient()
    first, port = start_node(data_dir)
    try:
        async with connect(_url(port), subprotocols=["matssocket"]) as ws:
            await ws.send(_hello())
            sid = await _welcome(ws)
            await ws.close(4002, "back soon")  # RECONNECT: the session waits
        async with connect(_url(port), subprotocols=["matssocket"]) as producer:
            await producer.send(_hello(None, {"t": "SEND", "eid": "stream", "cmid": 1, "tid": "s",
                                              "msg": {"sid": sid, "count": MESSAGES}}))
            await _welcome(producer)
            ack = orjson.loads(await asyncio.wait_for(producer.recv(), 60))[0]
            assert (ack["t"], ack["cmid"]) == ("ACK", 1)  # every message of the stream is stored
        async with connect(_url(port), subprotocols=["matssocket"]) as ws:
            await ws.send(_hello(sid))
            assert await _welcome(ws) == sid
            await client.receive(ws, until=MESSAGES // 20)
            first.kill()  # SIGKILL mid-stream: delivered messages whose ACK is not yet applied, others not sent
            first.wait(10)
            with pytest.raises((ConnectionClosed, TimeoutError)):  # what reached the client before the socket died
                await client.receive(ws, until=None, timeout=5)
        before_kill = len(client.delivered)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    second, port = start_node(data_dir)
    try:
        async with connect(_url(port), subprotocols=["matssocket"]) as ws:
            await ws.send(_hello(sid))
            assert await _welcome(ws) == sid
            await client.receive(ws, until=MESSAGES)
    finally:
        second.kill()
        second.wait()
    return client, before_kill


def test_a_client_gets_every_message_exactly_once_in_order_across_a_sigkill(tmp_path: Path) -> None:
    client, before_kill = asyncio.run(_scenario(tmp_path / "crash-node"))
    assert 0 < before_kill < MESSAGES, "the node was not killed mid-stream"
    assert client.delivered == list(range(MESSAGES))
