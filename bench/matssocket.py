"""MatsSocket node: client round trips and server push throughput with N sockets connected.

    python -m bench.matssocket [--backend embedded|kafka] [--bootstrap HOST:PORT]
                               [--sockets 1000] [--messages 1000] [--json FILE]

One node runs as a ``csaf serve`` process of its own (so that it does not share an event
loop with the clients), with `create_server` as its app: an embedded store, or a node of a
Kafka cluster on a fresh namespace (deleted afterwards). This process connects --sockets
sockets, each a session of its own user, with a bare `websockets` client speaking the
MatsSocket protocol (`BenchSocket`), and measures, in order:

1. SEND→ACK: --messages SENDs to an endpoint that returns without settling, one at a time,
   round robin over the sockets; from the frame sent to the ACK read.
2. REQUEST→RESOLVE: as 1, REQUESTs to an endpoint that resolves at once; the client sends
   ACK2 for each RESOLVE (not timed), as a client must.
3. Push: one REQUEST asks the node to `server.send` k = ceil(messages / sockets) messages
   to every connected session (sessions concurrently, each session's k in order). Every
   client ACKs the messages of a frame as it reads it; the node completes them in the store
   and answers ACK2. Timed from the trigger to the last message read (delivered/s) and to
   the last ACK2 read (acknowledged/s: stored, forwarded, ACKed, completed).

The report gives each figure with the CPU seconds the node process and this process used,
the machine and the library versions. It measures; it never fails because a number moved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.kafka_admin import delete_namespace
from bench.lifecycle import machine, source_revision, versions
from csaf_events.matssocket import IncomingContext, MatsSocketServer
from csaf_events.matssocket.testapp import DummyAuthenticator
from csaf_events.ops.scheduling import parse_cpus, pin
from csaf_events.store import ClusterStoreAndForward

log = logging.getLogger("bench.matssocket")

ROOT = Path(__file__).resolve().parent.parent
SEND_ENDPOINT, REQUEST_ENDPOINT, PUSH_ENDPOINT = "Bench.send", "Bench.request", "Bench.push"
CLIENT_TERMINATOR = "Bench.client"
CONNECT_PARALLEL = 50  # sockets opening at once
ANSWER_TIMEOUT = 60.0  # seconds for one answer, or for a whole push, before the run gives up
BOOT_TIMEOUT = 180.0


# ------------------------------------------------------------------ the node's app --

def create_server(store: ClusterStoreAndForward) -> MatsSocketServer:
    """The node's app (``csaf serve --app bench.matssocket:create_server``): DummyAuth tokens,
    a SEND endpoint that ACKs, a REQUEST endpoint that resolves with the message, and the
    push trigger."""
    server = MatsSocketServer(store, DummyAuthenticator())

    @server.endpoint(SEND_ENDPOINT)
    async def ack(ctx: IncomingContext) -> None:
        return

    @server.endpoint(REQUEST_ENDPOINT)
    async def resolve(ctx: IncomingContext) -> None:
        ctx.resolve(ctx.message)

    @server.endpoint(PUSH_ENDPOINT)
    async def push(ctx: IncomingContext) -> None:
        sessions, per_session = server.live_session_ids(), int(ctx.message["perSession"])

        async def to_session(sid: str) -> None:
            for i in range(per_session):
                await server.send(sid, f"{ctx.trace_id}-{i}", CLIENT_TERMINATOR, {"i": i})

        async def to_all() -> None:
            await asyncio.gather(*(to_session(sid) for sid in sessions))
        server.spawn(to_all())
        ctx.resolve({"sessions": len(sessions)})

    return server


# ------------------------------------------------------------------------ the node --

class NodeProcess:
    """One ``csaf serve`` process running `create_server`; its log in ``<work>/node.log``."""

    def __init__(self, work: Path, bootstrap: str | None, namespace: str, serve_args: Sequence[str] = ()) -> None:
        self.log_path = work / "node.log"
        command = [sys.executable, "-m", "csaf_events.ops.cli", "serve", "--app", "bench.matssocket:create_server",
                   "--node-name", "bench-node", "--data-dir", str(work / "data"), "--host", "127.0.0.1",
                   "--port", "0", *serve_args]
        if bootstrap:
            command += ["--bootstrap", bootstrap, "--namespace", namespace]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                           if p)}
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=ROOT)
        self.port = self._wait_listening()

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            match = re.search(r"listening on \S+ port\(s\) \[(\d+)", self.log_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            time.sleep(0.1)
        self.stop()
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the node did not start (exit {self.process.poll()}):\n{tail}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the node process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM (the node closes its sockets and its store), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# ---------------------------------------------------------------------- the client --

class BenchSocket:
    """One MatsSocket session on a bare WebSocket: answers to its SEND/REQUEST wake the
    caller; server SENDs are ACKed per frame as they are read, and counted in `push`."""

    def __init__(self, ws: ClientConnection, push: PushCounter) -> None:
        self.ws = ws
        self.push = push
        self._cmids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[float, dict]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, user: str, push: PushCounter) -> BenchSocket:
        """Connect, HELLO as `user` (a DummyAuth token that never expires), wait for WELCOME."""
        ws = await connect(f"ws://127.0.0.1:{port}/matssocket", subprotocols=["matssocket"],
                           max_size=None, open_timeout=ANSWER_TIMEOUT)
        await ws.send(orjson.dumps([{"t": "HELLO", "clv": "bench.matssocket,v1", "an": "Bench", "av": "1.0",
                                     "tid": f"hello-{user}", "auth": f"DummyAuth:{user}:-1"}]).decode())
        welcome = orjson.loads(await asyncio.wait_for(ws.recv(), ANSWER_TIMEOUT))
        if welcome[0].get("t") != "WELCOME":
            raise RuntimeError(f"HELLO as {user} was answered with {welcome}")
        sock = cls(ws, push)
        sock._reader = asyncio.get_running_loop().create_task(sock._read())
        return sock

    async def call(self, t: str, eid: str, message: Any) -> tuple[float, dict]:
        """Send one SEND or REQUEST; the round trip in seconds (frame sent to answer read)
        and the answer. A RESOLVE is ACK2ed."""
        cmid = next(self._cmids)
        answered: asyncio.Future[tuple[float, dict]] = asyncio.get_running_loop().create_future()
        self._waiting[cmid] = answered
        started = time.perf_counter()
        await self.ws.send(orjson.dumps([{"t": t, "eid": eid, "cmid": cmid, "tid": f"{eid}-{cmid}",
                                          "msg": message}]).decode())
        ended, answer = await asyncio.wait_for(answered, ANSWER_TIMEOUT)
        if answer["t"] in ("RESOLVE", "REJECT"):
            await self.ws.send(orjson.dumps([{"t": "ACK2", "cmid": cmid}]).decode())
        return ended - started, answer

    async def _read(self) -> None:
        async for frame in self.ws:
            read = time.perf_counter()
            pushed: list[str] = []
            for envelope in orjson.loads(frame):
                t = envelope["t"]
                if t in ("ACK", "NACK", "RESOLVE", "REJECT") and envelope.get("cmid") in self._waiting:
                    self._waiting.pop(envelope["cmid"]).set_result((read, envelope))
                elif t == "SEND":
                    pushed.append(envelope["smid"])
                elif t == "ACK2" and "smid" in envelope:
                    self.push.acknowledged(1)
                elif t == "ACK2":
                    self.push.acknowledged(len(envelope["ids"]))
                elif t == "PING":
                    await self.ws.send(orjson.dumps([{"t": "PONG", "x": envelope.get("x")}]).decode())
            if pushed:
                self.push.delivered(len(pushed))
                await self.ws.send(orjson.dumps([{"t": "ACK", "smid": pushed[0]} if len(pushed) == 1
                                                 else {"t": "ACK", "ids": pushed}]).decode())

    async def close(self) -> None:
        """Close with 1000: the session stays in the store (the node's data goes with the run)."""
        await self.ws.close(1000, "bench done")
        if self._reader is not None:
            await self._reader


class PushCounter:
    """Server messages read and ACK2ed over all sockets, and when the last of each came."""

    def __init__(self) -> None:
        self.expected = 0
        self.delivered_n = self.acknowledged_n = 0
        self.delivered_at = self.acknowledged_at = 0.0
        self.done = asyncio.Event()

    def delivered(self, n: int) -> None:
        self.delivered_n += n
        self.delivered_at = time.perf_counter()

    def acknowledged(self, n: int) -> None:
        self.acknowledged_n += n
        self.acknowledged_at = time.perf_counter()
        if self.expected and self.acknowledged_n >= self.expected:
            self.done.set()


# -------------------------------------------------------------------- measurements --

def latency_figures(samples: list[float], wall_s: float) -> dict[str, Any]:
    """p50/p99/max/mean in ms of round trips in seconds, and calls per second."""
    ordered = sorted(samples)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    return {"calls": len(ordered), "p50_ms": round(quantile(0.50), 3), "p99_ms": round(quantile(0.99), 3),
            "max_ms": round(ordered[-1] * 1000, 3), "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
            "calls_per_s": round(len(ordered) / wall_s, 1)}


@contextlib.contextmanager
def cpu_of(node: NodeProcess, into: dict[str, Any]) -> Iterator[None]:
    """Adds the node's and this process's CPU seconds over the block to `into`."""
    node0, self0 = node.cpu_s(), time.process_time()
    yield
    into["node_cpu_s"] = round(node.cpu_s() - node0, 2)
    into["client_cpu_s"] = round(time.process_time() - self0, 2)


async def round_trips(node: NodeProcess, sockets: list[BenchSocket], t: str, eid: str, calls: int,
                      expected: str) -> dict[str, Any]:
    """`calls` SENDs or REQUESTs one at a time, round robin over `sockets`."""
    samples: list[float] = []
    figures: dict[str, Any] = {}
    with cpu_of(node, figures):
        started = time.perf_counter()
        for i in range(calls):
            seconds, answer = await sockets[i % len(sockets)].call(t, eid, {"n": i})
            if answer["t"] != expected:
                raise RuntimeError(f"{t} to {eid} was answered with {answer}")
            samples.append(seconds)
        wall = time.perf_counter() - started
    return {**latency_figures(samples, wall), **figures}


async def push_throughput(node: NodeProcess, sockets: list[BenchSocket], counter: PushCounter,
                          per_session: int) -> dict[str, Any]:
    """The node sends `per_session` messages to every session; until every one is ACK2ed."""
    counter.expected = per_session * len(sockets)
    figures: dict[str, Any] = {"messages": counter.expected, "per_session": per_session}
    with cpu_of(node, figures):
        started = time.perf_counter()
        _, answer = await sockets[0].call("REQUEST", PUSH_ENDPOINT, {"perSession": per_session})
        if answer.get("msg", {}).get("sessions") != len(sockets):
            raise RuntimeError(f"the push trigger was answered with {answer}")
        await asyncio.wait_for(counter.done.wait(), ANSWER_TIMEOUT + counter.expected * 0.1)
    delivered_s, acknowledged_s = counter.delivered_at - started, counter.acknowledged_at - started
    return {**figures, "delivered_s": round(delivered_s, 3), "acknowledged_s": round(acknowledged_s, 3),
            "delivered_per_s": round(counter.delivered_n / delivered_s, 1),
            "acknowledged_per_s": round(counter.acknowledged_n / acknowledged_s, 1)}


@contextlib.asynccontextmanager
async def connected(port: int, count: int, counter: PushCounter,
                    into: dict[str, Any]) -> AsyncIterator[list[BenchSocket]]:
    """`count` sockets, each HELLOed as a user of its own (CONNECT_PARALLEL at a time);
    the connect time goes into `into`. Closed at the end."""
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one(i: int) -> BenchSocket:
        async with gate:
            return await BenchSocket.open(port, f"bench-{i}", counter)

    started = time.perf_counter()
    sockets = list(await asyncio.gather(*(one(i) for i in range(count))))
    wall = time.perf_counter() - started
    into.update(sockets=count, connect_s=round(wall, 3), sessions_per_s=round(count / wall, 1))
    log.info("%d sockets connected in %.1f s", count, wall)
    try:
        yield sockets
    finally:
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


async def measure(node: NodeProcess, sockets: int, messages: int, pushes: int) -> dict[str, Any]:
    counter = PushCounter()
    report: dict[str, Any] = {"connect": {}}
    async with connected(node.port, sockets, counter, report["connect"]) as socks:
        log.info("SEND→ACK: %d calls", messages)
        report["send_ack"] = await round_trips(node, socks, "SEND", SEND_ENDPOINT, messages, "ACK")
        log.info("REQUEST→RESOLVE: %d calls", messages)
        report["request_resolve"] = await round_trips(node, socks, "REQUEST", REQUEST_ENDPOINT, messages, "RESOLVE")
        per_session = max(1, math.ceil(pushes / sockets))
        log.info("push: %d message(s) to each of %d sessions", per_session, sockets)
        report["push"] = await push_throughput(node, socks, counter, per_session)
    return report


def run(backend: str, bootstrap: str | None, sockets: int, messages: int, pushes: int | None = None,
        serve_args: Sequence[str] = (), client_cpus: frozenset[int] | None = None) -> dict[str, Any]:
    """Start the node (`serve_args`: more options of ``csaf serve``), measure, stop it; the report.
    `client_cpus`: where this process (the clients) runs once the node has started."""
    if backend == "kafka" and not bootstrap:
        raise ValueError("--backend kafka needs --bootstrap HOST:PORT")
    namespace = f"mbench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="bench-matssocket-"))
    node = None
    try:
        node = NodeProcess(work, bootstrap if backend == "kafka" else None, namespace, serve_args)
        log.info("node listening on port %d (%s)", node.port, backend)
        if client_cpus:  # after the node started: it must not inherit the clients' CPUs
            pin(client_cpus)
        figures = asyncio.run(measure(node, sockets, messages, pushes or messages))
    finally:
        if node is not None:
            node.stop()
        if backend == "kafka" and bootstrap:
            delete_namespace(bootstrap, namespace)
        shutil.rmtree(work, ignore_errors=True)
    return {"backend": backend, "parameters": {"sockets": sockets, "messages": messages, "pushes": pushes or messages,
                                               "bootstrap": bootstrap if backend == "kafka" else None,
                                               "serve_args": list(serve_args)},
            **figures, "machine": machine(),
            "versions": {**versions(), "websockets": metadata.version("websockets")},
            "revision": source_revision()}


def table(report: dict[str, Any]) -> str:
    """The report as a text table."""
    c, m, v = report["connect"], report["machine"], report["versions"]
    rows = [f"MatsSocket node, {report['backend']} store, {c['sockets']} sockets connected "
            f"({c['connect_s']} s, {c['sessions_per_s']} sessions/s)"
            + (f"; node with {' '.join(report['parameters']['serve_args'])}"
               if report["parameters"].get("serve_args") else ""),
            f"{'round trip':<18} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'calls/s':>8} "
            f"{'node cpu s':>10} {'client cpu s':>12}"]
    for name, key in (("SEND→ACK", "send_ack"), ("REQUEST→RESOLVE", "request_resolve")):
        r = report[key]
        rows.append(f"{name:<18} {r['calls']:>6} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} "
                    f"{r['calls_per_s']:>8} {r['node_cpu_s']:>10} {r['client_cpu_s']:>12}")
    p = report["push"]
    rows += [f"push: {p['messages']} messages ({p['per_session']} per session): delivered {p['delivered_per_s']}/s "
             f"({p['delivered_s']} s), acknowledged {p['acknowledged_per_s']}/s ({p['acknowledged_s']} s); "
             f"node cpu {p['node_cpu_s']} s, client cpu {p['client_cpu_s']} s",
             f"machine: {m['cores']} cores, {m['cpu_model']}; python {v['python']}, websockets {v['websockets']}, "
             f"rocksdict {v['rocksdict']}, librdkafka {v['librdkafka']}"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.matssocket", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("embedded", "kafka"), default="embedded",
                        help="the node's store (default embedded; kafka needs --bootstrap)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers, HOST:PORT")
    parser.add_argument("--sockets", type=int, default=1000, help="sockets connected (default 1000)")
    parser.add_argument("--messages", type=int, default=1000,
                        help="round trips of each kind, and pushes in all unless --pushes (default 1000)")
    parser.add_argument("--pushes", type=int, metavar="N",
                        help="messages pushed in all (at least one per socket; default: --messages)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--node-cpus", type=parse_cpus, metavar="LIST",
                        help="run the node on these CPUs (csaf serve --cpus); this process, the clients, then "
                             "runs on the others")
    parser.add_argument("--node-batch-scheduling", action="store_true",
                        help="the node's threads under SCHED_BATCH (csaf serve --batch-scheduling)")
    args = parser.parse_args(argv)
    if args.sockets < 1 or args.messages < 1 or (args.pushes is not None and args.pushes < 1):
        parser.error("--sockets, --messages and --pushes must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_args = ["--batch-scheduling"] if args.node_batch_scheduling else []
    client_cpus = None
    if args.node_cpus:
        serve_args += ["--cpus", ",".join(map(str, sorted(args.node_cpus)))]
        client_cpus = frozenset(os.sched_getaffinity(0) - args.node_cpus) or None  # the clients off its cores
    report = run(args.backend, args.bootstrap, args.sockets, args.messages, args.pushes, serve_args, client_cpus)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log.info("JSON report written to %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
