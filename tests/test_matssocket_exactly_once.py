"""A client message is handled exactly once, even when the node handling it dies.

A node puts a client SEND/REQUEST in its inbox, runs the handler, and stores what the handler
stores (outbox messages) and the answer, all in one unit of work; only then is the client
answered. A resend (the client got no answer) of a message whose unit committed gets the
stored answer ("dupe ..."); a resend of one whose node died before the commit runs the
handler again. So a SIGKILL at any moment loses no ACKed message and doubles no effect.

Two tests:
- `test_the_js_client_s_stream_is_handled_exactly_once_across_a_node_kill`: the real
  MatsSocket JavaScript client (``matssocket_js/kill_stream.mjs``), given both URLs of a
  two-node cluster on Kafka, streams SENDs and REQUESTs while the node it is connected to
  is killed early, midway or late in the stream (then restarted for the next run). Every
  message must be settled once: each SEND ACKed with exactly one server SEND back, each
  REQUEST resolved with the right data.
- `test_a_kill_at_each_point_of_the_handling`: no timing involved. The node's fault
  injection seam (``MatsSocketServer(probe=...)``) kills the process exactly where a
  message's ``msg.crash`` says: after the handler ran (unit not committed), after the commit
  (client not answered) or after the answer went out. The raw protocol client then resends
  the very same envelope to the node restarted on the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from brokers import unique_namespace
from kafka_fixtures import delete_namespace_topics
from serve_process import ServeProcess
from test_matssocket_js import JS_DIR, js_client  # noqa: F401 - fixture
from test_matssocket_protocol import RawClient, token
from websockets.exceptions import ConnectionClosed

from csaf_events.matssocket import MatsSocketServer
from csaf_events.matssocket.testapp import DummyAuthenticator, install
from csaf_events.store import ClusterStoreAndForward

CRASH_DIR_ENV = "CSAF_TEST_CRASH_DIR"  # where the crashing node keeps its probe log and crash markers
PROBE_LOG = "probe.jsonl"

COUNT = 240  # client messages of a stream
INTERVAL_MS = 10  # between two of them
STREAM_DEADLINE_S = 60  # the script gives up and reports what it has (a takeover takes 5-20 s)
KILL_POINTS = {"early": 20, "midway": COUNT // 2, "late": COUNT - 20}  # messages sent when the node dies

POINTS = ("handled", "committed", "answered")
CMID, BARRIER_CMID, NUMBER, BARRIER = 1, 2, 7, -1


def create_server(store: ClusterStoreAndForward) -> MatsSocketServer:
    """The JS test's nodes (``--app test_matssocket_exactly_once:create_server``): the test app."""
    server = MatsSocketServer(store, DummyAuthenticator())
    install(server)
    return server


def create_crashing_server(store: ClusterStoreAndForward) -> MatsSocketServer:
    """The test app with a probe that logs every point it is called at (to $CSAF_TEST_CRASH_DIR)
    and SIGKILLs the process at the point a message's ``msg.crash`` names, the first time only:
    a marker file remembers the crash, so the identical resend is handled normally."""
    crash_dir = Path(os.environ[CRASH_DIR_ENV])

    def probe(point: str, session_id: str, envelope: dict) -> None:
        cmid = envelope.get("cmid")
        with open(crash_dir / PROBE_LOG, "a") as f:
            f.write(json.dumps([point, session_id, cmid]) + "\n")
        msg = envelope.get("msg")
        marker = crash_dir / f"crashed-{session_id}-{cmid}"
        if isinstance(msg, dict) and msg.get("crash") == point and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    server = MatsSocketServer(store, DummyAuthenticator(), probe=probe)
    install(server)
    return server


# ------------------------------------------------------- the JS client on a cluster --

@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServeProcess]]:
    """Two nodes on one broker, in a namespace of their own."""
    namespace, tmp = unique_namespace("ms-exactly-once"), tmp_path_factory.mktemp("ms-exactly-once")
    nodes = [ServeProcess(name, tmp, ["--app", "test_matssocket_exactly_once:create_server",
                                      "--bootstrap", kafka_bootstrap, "--namespace", namespace, "--partitions", "2"])
             for name in ("eo-a", "eo-b")]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.kill()
        delete_namespace_topics(kafka_bootstrap, namespace)


def wait_settled(nodes: list[ServeProcess], timeout: float = 90) -> None:
    """Until every node serves what the owners group gave it, and each owns a partition (a node
    restarted by the previous run has rejoined and taken its share)."""
    deadline = time.monotonic() + timeout
    while True:
        healths = [node.health() for node in nodes]
        if all(h is not None and h["ok"] and h["owned_partitions"] for h in healths):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the cluster did not settle in {timeout:.0f}s: {healths}\n" +
                        "\n".join(node.tail() for node in nodes))
        time.sleep(0.2)


@dataclass
class StreamRun:
    """What the JS script reported, and where the test killed a node."""

    events: list[dict] = field(default_factory=list)  # established / lost, in order
    summary: dict | None = None
    killed: ServeProcess | None = None
    killed_at: int | None = None  # messages sent when the node died
    kill_event: int = 0  # index in `events` at the kill


def stream_with_a_kill(nodes: list[ServeProcess], kill_at: int, client_log: Path) -> StreamRun:
    """Run kill_stream.mjs; SIGKILL the node it is connected to once `kill_at` messages are sent."""
    by_url = {node.url: node for node in nodes}
    run = StreamRun()
    with open(client_log, "w") as stderr:
        script = subprocess.Popen(["node", str(JS_DIR / "kill_stream.mjs"), ",".join(by_url), str(COUNT),
                                   str(INTERVAL_MS), str(STREAM_DEADLINE_S * 1000)],
                                  cwd=JS_DIR, stdout=subprocess.PIPE, stderr=stderr, text=True)
    watchdog = threading.Timer(STREAM_DEADLINE_S + 30, script.kill)  # the script's own deadline failed
    watchdog.start()
    current: ServeProcess | None = None
    try:
        assert script.stdout is not None
        for line in script.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["ev"] == "summary":
                run.summary = event
                continue
            if event["ev"] in ("established", "lost"):
                run.events.append(event)
                current = by_url[event["url"]] if event["ev"] == "established" else None
            if run.killed is None and current is not None and event["sent"] >= kill_at:
                current.kill()
                run.killed, run.killed_at, run.kill_event = current, event["sent"], len(run.events)
        script.wait(10)
    finally:
        watchdog.cancel()
        if script.poll() is None:
            script.kill()
            script.wait()
    return run


def _problems(summary: dict) -> list[dict]:
    """The messages not settled exactly once, with the right data: a SEND must be ACKed and have
    exactly one server SEND back (one server message id); a REQUEST resolved, by at most one
    stored (outbox) answer."""
    bad = []
    for m in summary["messages"]:
        if m["t"] == "SEND":
            ok = m["outcome"] == "ack" and m["delivered"] == 1 and m["serverSends"] == 1
        else:
            ok = m["outcome"] == "resolve" and m["outboxAnswers"] <= 1
        if not (ok and m["dataOk"]):
            bad.append(m)
    return bad


@pytest.mark.kafka
@pytest.mark.parametrize("kill_at", list(KILL_POINTS.values()), ids=list(KILL_POINTS))
def test_the_js_client_s_stream_is_handled_exactly_once_across_a_node_kill(
        cluster: list[ServeProcess], js_client: Path, kill_at: int, tmp_path: Path) -> None:
    wait_settled(cluster)
    client_log = tmp_path / "client.log"
    run = stream_with_a_kill(cluster, kill_at, client_log)
    try:
        def report() -> str:
            return (f"killed {run.killed and run.killed.name} at {run.killed_at} sent; events {run.events}\n"
                    f"client stderr: {client_log.read_text()[-3000:]}\n" + "\n".join(n.tail() for n in cluster))

        assert run.killed is not None, f"no node was killed: {report()}"
        assert run.summary is not None, f"the script printed no summary: {report()}"
        summary = run.summary
        after = [e for e in run.events[run.kill_event:] if e["ev"] == "established"]
        assert after and after[0]["url"] != run.killed.url, f"the client did not move to the survivor: {report()}"
        bad = _problems(summary)
        pending = [m["i"] for m in summary["messages"] if m["outcome"] is None]
        assert not summary["timedOut"], (f"{len(pending)} message(s) not settled in {STREAM_DEADLINE_S}s: "
                                         f"{pending[:30]}; not exactly once: {bad[:10]}\nclient errors: "
                                         f"{summary['errors'][:10]}\n{report()}")
        assert bad == [], (f"{len(bad)} of {COUNT} message(s) not handled exactly once, first: {bad[:15]}\n"
                           f"resent: {sum(m['timesSent'] > 1 for m in summary['messages'])}, sockets: "
                           f"{summary['wsLog']}\n{report()}")
        assert summary["barrier"] == 1
        assert any(m["timesSent"] > 1 for m in summary["messages"]), f"the kill caught no message in flight: {report()}"
    finally:
        if run.killed is not None:
            run.killed.start()  # the next run gets two nodes again


# ------------------------------------------------- a kill at each point, raw protocol --

@pytest.fixture(scope="module")
def crash_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """An embedded node that each test kills through the probe and restarts on the same data dir."""
    tmp = tmp_path_factory.mktemp("ms-crash-points")
    node = ServeProcess("eo-crash", tmp, ["--app", "test_matssocket_exactly_once:create_crashing_server"],
                        env={CRASH_DIR_ENV: str(tmp)})
    try:
        yield node.start()
    finally:
        node.kill()


@dataclass
class Seen:
    """What a client saw over its connections: answers to the message (cmid `CMID`) per
    connection, and the server message ids of the server SENDs for each number. Server SENDs and
    outbox answers are ACKed as they come, as the MatsSocket client does."""

    answers: list[list[dict]] = field(default_factory=lambda: [[], []])
    sends: dict[int, set[str]] = field(default_factory=dict)

    def direct(self, connection: int) -> list[dict]:
        """The answers the node gave to the message itself (an answer given later comes through
        the outbox, with a server message id)."""
        return [a for a in self.answers[connection] if a.get("smid") is None]

    async def take(self, client: RawClient, connection: int) -> None:
        envelopes, client.buffer = client.buffer, []
        acks = []
        for e in envelopes:
            if e["t"] == "SEND":
                self.sends.setdefault(e["msg"]["number"], set()).add(e["smid"])
                acks.append(e["smid"])
            elif e["t"] in ("ACK", "NACK", "RESOLVE", "REJECT", "RETRY") and e.get("cmid") == CMID:
                self.answers[connection].append(e)
                if e.get("smid") is not None:
                    acks.append(e["smid"])
        if acks:
            await client.send({"t": "ACK", "ids": acks})

    async def until(self, client: RawClient, connection: int, done: Callable[[], Any], what: str) -> None:
        while not done():
            try:
                await client._fill()
            except TimeoutError:
                pytest.fail(f"timed out waiting for {what}; seen {self}")
            await self.take(client, connection)

    async def until_closed(self, client: RawClient, what: str) -> None:
        """Everything the node sent on connection 0 before its socket died."""
        with contextlib.suppress(ConnectionClosed):
            await self.until(client, 0, lambda: False, what)


def _handled_count(crash_dir: Path, session_id: str) -> int:
    """How many times the handler of the message ran to its end (the probe's "handled" calls)."""
    calls = [json.loads(line) for line in (crash_dir / PROBE_LOG).read_text().splitlines()]
    return sum(1 for point, sid, cmid in calls if point == "handled" and sid == session_id and cmid == CMID)


async def _crash_and_resend(node: ServeProcess, envelope: dict) -> tuple[str, Seen]:
    """Send `envelope` (the node dies at its ``msg.crash`` point), restart the node, resend the
    identical envelope on the same session, then push a barrier SEND through the outbox: the
    outbox is delivered in the order stored, so once the barrier's server SEND is in, every
    effect stored before it is in too."""
    seen = Seen()
    first = await RawClient.connect(node.port)
    sid = (await first.hello(token("exactly-once")))["sid"]
    await first.send(envelope)
    await seen.until_closed(first, f"the probe to kill the node at {envelope['msg']['crash']!r}")
    assert node.wait_dead() == -signal.SIGKILL
    node.start()
    second = await RawClient.connect(node.port)
    assert (await second.hello(token("exactly-once"), sid))["sid"] == sid
    await second.send(envelope)
    await seen.until(second, 1, lambda: seen.direct(1), "the answer to the resend")
    await second.send({"t": "SEND", "eid": "Test.server.send.thread", "cmid": BARRIER_CMID, "tid": "barrier",
                       "msg": {"number": BARRIER}})
    await seen.until(second, 1, lambda: BARRIER in seen.sends, "the barrier's server SEND")
    await second.close()
    return sid, seen


KINDS = {  # message type, endpoint, and for a REQUEST the suffix its answer's string gets
    "send": ("SEND", "Test.server.send.thread", None),
    "request-resolved-in-handler": ("REQUEST", "Test.resolveInIncomingHandler", ":From_resolveInIncomingHandler"),
    "request-simple-mats": ("REQUEST", "Test.simpleMats", ":FromSimpleMats"),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_point_of_the_handling(crash_node: ServeProcess, point: str, kind: str) -> None:
    t, eid, suffix = KINDS[kind]
    envelope = {"t": t, "eid": eid, "cmid": CMID, "tid": f"crash-{point}-{kind}",
                "msg": {"number": NUMBER, "string": "s", "crash": point}}
    sid, seen = asyncio.run(asyncio.wait_for(_crash_and_resend(crash_node, envelope), 120))
    first, resend = seen.answers[0], seen.direct(1)[0]
    assert resend["t"] != "RETRY", resend
    if point == "answered":
        assert [a["t"] for a in seen.direct(0)][:1] == [resend["t"]], (first, resend)
    else:  # nothing was answered before the unit committed and the client was told
        assert first == [], first
    rerun = point == "handled"
    assert (resend.get("desc") or "").startswith("dupe") is not rerun, resend
    assert _handled_count(Path(crash_node.env[CRASH_DIR_ENV]), sid) == (2 if rerun else 1), \
        "the handler ran again for a message whose unit had committed, or did not after a loss"
    answers = [*first, *seen.answers[1]]
    if t == "SEND":
        assert resend["t"] == "ACK", resend
        assert len(seen.sends.get(NUMBER, ())) == 1, f"server SENDs for the message: {seen.sends}"
    else:
        resolutions = [a for a in answers if a["t"] in ("RESOLVE", "REJECT")]
        assert resolutions and all(a["t"] == "RESOLVE" and a["msg"]["number"] == NUMBER
                                   and a["msg"]["string"] == f"s{suffix}" for a in resolutions), answers
        # one answer: given directly (and resent as stored), or stored once in the outbox
        assert len({a.get("smid") for a in resolutions}) == 1, answers
