"""Operators' view: Prometheus metrics scraped over HTTP after a workload (counts equal to the
calls made) on the embedded store and on a two-node Kafka cluster, `store.health()`,
``csaf status`` showing both owners, ``csaf metrics``, bad options, and the log context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka_fixtures import delete_namespace_topics
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from csaf_events import MessageIdAlreadyExistsError, open_store
from csaf_events.ops.cli import main
from csaf_events.ops.cli_ops import ClusterCollector
from csaf_events.ops.cluster_status import cluster_status, format_table
from csaf_events.ops.logs import ContextFilter, JsonFormatter, TextFormatter
from csaf_events.ops.metrics import serve_metrics


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """The samples of /metrics: (name, labels) -> value."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def workload(store, sessions: list[str]) -> dict[str, int]:
    """A fixed set of calls; returns how many of each method were made."""
    made: dict[str, int] = {}

    def call(method: str, *args):
        made[method] = made.get(method, 0) + 1
        return getattr(store, method)(*args)

    for sid in sessions:
        call("register_session_at_this_node", sid, "alice", "conn-1", "js,v1", "App", "1.0")
        for i in range(3):
            call("store_message_in_outbox", sid, f"m{i}", None, None, "SEND", None, "{}", '"x"', None)
        msgs = call("get_messages_from_outbox", sid, 10)
        call("outbox_messages_attempted_delivery", sid, [m.server_message_id for m in msgs])
        call("outbox_messages_complete", sid, [m.server_message_id for m in msgs])
        call("store_message_id_in_inbox", sid, "c1")
        with pytest.raises(MessageIdAlreadyExistsError):
            call("store_message_id_in_inbox", sid, "c1")
    call("get_sessions_count", True)
    call("notify_session_liveliness", sessions)
    return made


def check_calls(samples: dict, node: str, made: dict[str, int]) -> None:
    for method, n in made.items():
        calls = total(samples, "csaf_calls_total", node=node, method=method)
        assert calls == n, (method, calls, n)
        assert value(samples, "csaf_call_duration_seconds_count", node=node, method=method) == n, method
    assert value(samples, "csaf_calls_total", node=node, method="store_message_id_in_inbox",
                 outcome="MessageIdAlreadyExistsError") == made["store_message_id_in_inbox"] / 2


def test_embedded_metrics_and_health_over_http(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = open_store("node-m", tmp_path / "m", metrics=registry)
    store.boot()
    server = serve_metrics(store, 0, "127.0.0.1")
    try:
        made = workload(store, [f"s{i}" for i in range(5)])
        samples = scrape(server.url)
        check_calls(samples, "node-m", made)
        # embedded: every call is decided here
        assert total(samples, "csaf_calls_total", node="node-m", outcome="routed") == 0
        assert value(samples, "csaf_calls_total", node="node-m", method="store_message_in_outbox",
                     outcome="local") == 15
        assert value(samples, "csaf_owned_partitions", node="node-m") == store.partitions
        assert value(samples, "csaf_projection_disk_bytes", node="node-m") > 0
        assert value(samples, "csaf_write_phase_writes_total", node="node-m", phase="decide") > 0
        assert value(samples, "csaf_up", node="node-m") == 1
        status, health = get_json(f"{server.url}/health")
        assert status == 200 and health["ok"] and health["backend"] == "embedded"
        assert health["owned_partitions"] == list(range(store.partitions)) and not health["fenced"]
    finally:
        server.close()
        store.close()
    # a closed store leaves the registry; its health says so
    assert not store.health()["ok"] and store.health()["status"] == "closed"
    from prometheus_client import generate_latest
    assert b'node="node-m"' not in generate_latest(registry)


def test_two_stores_share_a_registry_and_metrics_none_wraps_nothing(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with open_store("a", tmp_path / "a", metrics=registry) as a, open_store("b", tmp_path / "b", metrics=registry) as b:
        a.register_session_at_this_node("s", "u", "c", "js", "App", "1")
        b.is_session_exists("s")
        b.is_session_exists("t")
        from prometheus_client import generate_latest
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
        assert value(samples, "csaf_calls_total", node="a", method="register_session_at_this_node",
                     outcome="local") == 1
        assert value(samples, "csaf_calls_total", node="b", method="is_session_exists", outcome="local") == 2
    with open_store("c", tmp_path / "c", metrics=None) as c:
        assert c.metrics is None
        assert getattr(c.register_session_at_this_node, "__func__", None) is type(c).register_session_at_this_node
        assert c.health()["ok"]
    with pytest.raises(TypeError, match="metrics"):
        open_store("d", tmp_path / "d", metrics="yes")


def test_matssocket_node_counts_sockets_and_envelopes(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    from csaf_events.matssocket import MatsSocketServer
    from csaf_events.matssocket.testapp import DummyAuthenticator

    registry = CollectorRegistry()
    store = open_store("node-ws", tmp_path / "ws", metrics=registry)
    store.boot()

    async def scenario() -> None:
        server = MatsSocketServer(store, DummyAuthenticator())

        @server.terminator("sink")
        async def sink(ctx) -> None:
            return None

        await server.start("127.0.0.1", 0)
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/matssocket", subprotocols=["matssocket"]) as ws:
                await ws.send(orjson.dumps([{"t": "HELLO", "clv": "raw", "an": "App", "av": "1", "tid": "h",
                                             "auth": f"DummyAuth:alice:{int(time.time() * 1000) + 60000}"}]).decode())
                got = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert got[0]["t"] == "WELCOME"
                await ws.send(orjson.dumps([{"t": "SEND", "eid": "sink", "cmid": 1, "tid": "t", "msg": 1}]).decode())
                got = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert got[0]["t"] == "ACK"
                assert registry.get_sample_value("csaf_matssocket_sockets", {"node": "node-ws"}) == 1
        finally:
            await server.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
        g = registry.get_sample_value
        assert g("csaf_matssocket_envelopes_received_total", {"node": "node-ws", "type": "HELLO"}) == 1
        assert g("csaf_matssocket_envelopes_received_total", {"node": "node-ws", "type": "SEND"}) == 1
        assert g("csaf_matssocket_envelopes_sent_total", {"node": "node-ws", "type": "WELCOME"}) == 1
        assert g("csaf_matssocket_envelopes_sent_total", {"node": "node-ws", "type": "ACK"}) == 1
        assert g("csaf_matssocket_sockets", {"node": "node-ws"}) == 0
        assert g("csaf_matssocket_outbox_dead_letters_total", {"node": "node-ws"}) == 0
    finally:
        store.close()


@pytest.mark.kafka
def test_kafka_two_nodes_metrics_health_and_status(kafka_bootstrap: str, kafka_namespace: str,
                                                   tmp_path: Path) -> None:
    registry = CollectorRegistry()
    stores = [open_store(f"node-{i}", tmp_path / f"n{i}", kafka_bootstrap, namespace=kafka_namespace,
                         partitions=3, request_timeout=20.0, metrics=registry) for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.boot(), stores))
        deadline = time.monotonic() + 60
        while sorted(p for s in stores for p in s.node.owned()) != [0, 1, 2]:
            assert time.monotonic() < deadline, [s.health() for s in stores]
            time.sleep(0.1)
        a, b = stores
        owned_by_a = set(a.node.owned())
        server = serve_metrics(a, 0, "127.0.0.1")
        try:
            sessions = [f"sess-{i}" for i in range(9)]
            made = workload(a, sessions)
            samples = scrape(server.url)
            check_calls(samples, "node-0", made)
            # local or routed as the partition's owner says (ownership is stable in this test)
            from csaf_events.core.partitioning import partition_for
            local = sum(partition_for(s, 3) in owned_by_a for s in sessions)
            assert value(samples, "csaf_calls_total", node="node-0", method="register_session_at_this_node",
                         outcome="local") == local
            assert value(samples, "csaf_calls_total", node="node-0", method="register_session_at_this_node",
                         outcome="routed") == len(sessions) - local
            both = total(samples, "csaf_transactions_total")
            assert both > 0 and total(samples, "csaf_transaction_commands_total") >= both
            assert total(samples, "csaf_owned_partitions") == 3
            assert value(samples, "csaf_routed_calls_in_flight", node="node-0") == 0
            assert value(samples, "csaf_registry_lag_records", node="node-1") >= 0
            assert {dict(ls)["partition"] for (n, ls) in samples if n == "csaf_takeover_seconds"
                    and dict(ls)["node"] == "node-0"} == {str(p) for p in owned_by_a}
            assert value(samples, "csaf_takeovers_total", node="node-0") >= len(owned_by_a)
            assert value(samples, "csaf_takeovers_seconds_total", node="node-0") > 0
            status, health = get_json(f"{server.url}/health")
            assert status == 200 and health["ok"] and health["backend"] == "kafka" and not health["fenced"]
            assert health["assigned_partitions"] == sorted(owned_by_a)
        finally:
            server.close()
        b.get_sessions_count(True)  # syncs b's registry
        assert b.health()["registry_lag"] == 0

        # csaf status: both owners, every partition owned, ends and committed offsets
        s = cluster_status(kafka_bootstrap, kafka_namespace)
        owners = {n["node"]: n["partitions"] for n in s["nodes"]}
        assert owners == {"node-0": sorted(a.node.owned()), "node-1": sorted(b.node.owned())}
        assert s["unowned_partitions"] == [] and s["group_state"] == "STABLE"
        assert s["events_records"] > 0 and s["registry_records"] >= len(sessions)
        table = format_table(s)
        assert "node-0" in table and "node-1" in table
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["status", "--bootstrap", kafka_bootstrap, "--namespace", kafka_namespace, "--json"]) == 0
        assert {n["node"] for n in json.loads(out.getvalue())["nodes"]} == {"node-0", "node-1"}
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["status", "--bootstrap", kafka_bootstrap, "--namespace", kafka_namespace]) == 0
        assert "node-0" in out.getvalue() and "node-1" in out.getvalue()

        # csaf metrics: the same facts as csaf_cluster_* metrics
        c = ClusterCollector(kafka_bootstrap, kafka_namespace, 10.0, None)
        cluster = CollectorRegistry()
        cluster.register(c)  # type: ignore[arg-type]
        assert cluster.get_sample_value("csaf_cluster_nodes") == 2
        assert cluster.get_sample_value("csaf_cluster_unowned_partitions") == 0
        assert c.health()["ok"]
    finally:
        for s in stores:
            s.close()
        delete_namespace_topics(kafka_bootstrap, kafka_namespace)


# ------------------------------------------------------------- bad options ---

@pytest.mark.parametrize("argv, message", [
    (["status"], "--bootstrap"),
    (["status", "--bootstrap", "localhost:9092", "--namespace", "a b"], "--namespace"),
    (["status", "--bootstrap", ",", ], "--bootstrap"),
    (["status", "--bootstrap", "localhost:9092", "--timeout", "0"], "--timeout"),
    (["metrics", "--bootstrap", "localhost:9092"], "--port"),
    (["metrics", "--bootstrap", "localhost:9092", "--port", "70000"], "--port"),
    (["--log-level", "LOUD", "status", "--bootstrap", "localhost:9092"], "--log-level"),
])
def test_bad_options_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_status_of_an_unreachable_cluster_says_so(capsys: pytest.CaptureFixture) -> None:
    assert main(["status", "--bootstrap", "127.0.0.1:1", "--timeout", "1"]) == 1
    assert "cannot reach the Kafka cluster" in capsys.readouterr().err


# -------------------------------------------------------------------- logs ---

def _record(msg: str, *args, thread: str = "MainThread", **extra) -> logging.LogRecord:
    r = logging.LogRecord("csaf_events.kafka.ownership", logging.INFO, __file__, 1, msg, args, None)
    r.threadName = thread
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_log_records_carry_node_partition_and_session() -> None:
    f = ContextFilter()
    r = _record("node %s took over partition %d: %d events restored", "node-a", 7, 120)
    f.filter(r)
    assert (r.node, r.partition, r.session) == ("node-a", 7, None)
    r = _record("outbox of session %s: store failure; trying again in %s s", "sid-1", 2.5,
                thread="csaf-store-node-b_3")
    f.filter(r)
    assert (r.node, r.partition, r.session) == ("node-b", None, "sid-1")
    r = _record("transaction failed", thread="csaf-commit-node-0-1")
    f.filter(r)
    assert r.node == "node-0"
    r = _record("dropping %s", "x", node="n", partition=3, session="s")  # extra wins
    f.filter(r)
    assert (r.node, r.partition, r.session) == ("n", 3, "s")

    r = _record("node %s: gave up partitions %s (%s)", "node-a", [1, 2], "revoked")
    f.filter(r)
    line = json.loads(JsonFormatter().format(r))
    assert line["node"] == "node-a" and line["partition"] == [1, 2] and line["message"].startswith("node node-a")
    assert line["level"] == "INFO" and line["logger"] == "csaf_events.kafka.ownership"
    assert TextFormatter().format(r).endswith("[node=node-a partition=1,2]")


def test_cli_log_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        main(["--log-json", "--log-level", "info", "status", "--bootstrap", "127.0.0.1:1", "--timeout", "1"])
        logging.getLogger("csaf_events.test").warning("node %s: hello from partition %d", "node-x", 4)
        err = capsys.readouterr().err
        line = next(json.loads(x) for x in err.splitlines() if x.startswith("{") and "hello" in x)
        assert (line["node"], line["partition"], line["level"]) == ("node-x", 4, "WARNING")
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(logging.WARNING)


def test_a_record_that_names_no_node_is_the_only_open_stores(tmp_path: Path) -> None:
    with open_store("lonely", tmp_path / "lonely", metrics=None):
        r = logging.LogRecord("csaf_events.matssocket.connection", logging.INFO, __file__, 1,
                              "session %s established", ("sid-9",), None)
        ContextFilter().filter(r)
        assert (r.node, r.session) == ("lonely", "sid-9")


def test_fenced_says_which_transaction_errors_fence_a_node(tmp_path: Path) -> None:
    """Fencing is a typed fact of the Kafka log (`EventLog.status().fenced`), from the class of
    the last failed transaction's error, not from its text."""
    from types import SimpleNamespace

    from csaf_events.core.errors import DataAccessError, ProducerFencedError, TransactionAbortedError
    from csaf_events.core.timings import Timings
    from csaf_events.kafka.log import GROUP_MOVED_FENCE_S, KafkaLog

    def status(failure: BaseException | None, ok: bool | None = False, ago: float = 0.0) -> Any:
        log = object.__new__(KafkaLog)
        log._timings = Timings()
        log._timings.last_transaction_ok, log._timings.last_transaction_at = ok, time.monotonic() - ago
        log.transactions = [SimpleNamespace(last_failure=failure)]
        log.ownership = SimpleNamespace(assigned=lambda: [1], takeovers={}, last_poll_error=None)
        return log.status()

    fenced = ProducerFencedError("partitions [1]: the transaction was fenced, nothing was written")
    assert status(fenced).fenced and not fenced.may_have_written
    assert status(fenced).last_transaction_error.startswith("ProducerFencedError: partitions [1]")
    assert not status(fenced, ok=True).fenced  # a transaction committed since
    aborted = TransactionAbortedError("partitions [1]: transaction aborted, nothing was written")
    assert status(aborted).fenced and not status(aborted, ago=GROUP_MOVED_FENCE_S + 1).fenced
    assert not status(DataAccessError("partitions [1]: commit outcome unknown: timed out")).fenced
    assert not status(None, ok=None).fenced
    # on the wire to a routed caller they are what they were before they had classes of their own
    from csaf_events.core.codec import decode_outcome, encode_outcome
    from csaf_events.core.errors import NotOwnerError
    with pytest.raises(NotOwnerError) as e:
        decode_outcome(encode_outcome(None, aborted))
    assert type(e.value) is NotOwnerError
    with pytest.raises(DataAccessError) as e2:
        decode_outcome(encode_outcome(None, fenced))
    assert type(e2.value) is DataAccessError and not e2.value.may_have_written


def test_csaf_serve_metrics_port_and_json_logs(tmp_path: Path) -> None:
    import re
    import signal
    import socket
    import subprocess
    import sys

    from websockets.asyncio.client import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "csaf_events.ops.cli", "--log-json", "--log-level", "INFO", "serve", "--test-app",
         "--port", "0", "--host", "127.0.0.1", "--metrics-port", str(metrics_port), "--node-name", "served",
         "--data-dir", str(tmp_path / "served")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline, port, listening = time.monotonic() + 60, None, None
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "the node exited"
            m = re.search(r"listening on \S+ port\(s\) \[(\d+)", line)
            if m:
                port, listening = int(m.group(1)), json.loads(line)
        assert port is not None and listening["node"] == "served" and listening["level"] == "INFO"
        url = f"http://127.0.0.1:{metrics_port}"
        status, health = get_json(f"{url}/health")
        assert status == 200 and health["node"] == "served" and health["ok"]

        async def hello() -> None:
            async with connect(f"ws://127.0.0.1:{port}/matssocket", subprotocols=["matssocket"]) as ws:
                await ws.send(orjson.dumps([{"t": "HELLO", "clv": "t", "an": "a", "av": "1",
                                             "auth": f"DummyAuth:u:{int(time.time() * 1000) + 60_000}"}]).decode())
                assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))[0]["t"] == "WELCOME"
        asyncio.run(hello())
        samples = scrape(url)
        assert value(samples, "csaf_matssocket_envelopes_received_total", node="served", type="HELLO") == 1
        assert value(samples, "csaf_calls_total", node="served", method="register_session_at_this_node",
                     outcome="local") == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
