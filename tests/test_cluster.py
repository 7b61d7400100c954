"""Several nodes, each in its own process, on one real Kafka cluster."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from node_process import NodeError, NodeProcess

from csaf_events.core.partitioning import partition_for

PARTITIONS = 6
pytestmark = pytest.mark.kafka


@pytest.fixture
def cluster(kafka_bootstrap: str, kafka_namespace: str, tmp_path: Path):
    nodes: list[NodeProcess] = []

    def start(name: str) -> NodeProcess:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        node = NodeProcess(name, d, kafka_bootstrap, kafka_namespace, PARTITIONS)
        nodes.append(node)
        return node

    yield start
    for n in nodes:
        n.close()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def spread(nodes: list[NodeProcess]) -> bool:
    """Every node owns some partitions and together they own all of them exactly once."""
    owned = [n.call("owned") for n in nodes]
    flat = [p for o in owned for p in o]
    return all(owned) and sorted(flat) == list(range(PARTITIONS))


def session_owned_by(node: NodeProcess, prefix: str) -> str:
    owned = set(node.call("owned"))
    return next(f"{prefix}{i}" for i in range(10_000) if partition_for(f"{prefix}{i}", PARTITIONS) in owned)


def register(node: NodeProcess, sid: str, user: str = "u1", conn: str = "c1") -> int:
    return node.call("register_session_at_this_node", sid, user, conn, "lib", "app", "1.0")


def in_parallel(*calls):
    results: list = [None] * len(calls)

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_two_nodes_racing_on_the_same_inbox_ids_exactly_one_wins(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    wait_for(lambda: spread([a, b]), what="partitions spread over both nodes")
    for sid in (session_owned_by(a, "ra"), session_owned_by(b, "rb")):  # owner local on one side, routed on the other
        register(a, sid)
        ids = [f"m{i}" for i in range(60)]
        at = time.time() + 1.0
        won_a, won_b = in_parallel(lambda: a.call("race_inbox", at, sid, ids),
                                   lambda: b.call("race_inbox", at, sid, ids))
        assert not isinstance(won_a, Exception) and not isinstance(won_b, Exception), (won_a, won_b)
        assert not set(won_a) & set(won_b), "an inbox id was accepted on both nodes"
        assert sorted(set(won_a) | set(won_b)) == sorted(ids)


def test_wrong_user_from_another_node_is_refused_and_changes_nothing(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    wait_for(lambda: spread([a, b]), what="partitions spread")
    for sid in (session_owned_by(a, "wa"), session_owned_by(b, "wb")):
        created = register(a, sid, user="alice")
        with pytest.raises(NodeError) as e:
            register(b, sid, user="mallory", conn="c9")
        assert e.value.kind == "WrongUserError"
        assert b.call("get_current_registered_node_for_session", sid) == {
            "$t": "CurrentNode", "node_name": "a", "connection_id": "c1"}
        assert register(b, sid, user="alice", conn="c2") == created  # same user may move it


def test_outbox_written_on_any_node_is_drained_by_the_home_node_in_order(cluster) -> None:
    a, b, c = cluster("a"), cluster("b"), cluster("c")
    wait_for(lambda: spread([a, b, c]), what="partitions spread over three nodes")
    sids = [f"home-{i}" for i in range(6)]
    for sid in sids:
        register(a, sid)
    writers = [a, b, c]
    for sid in sids:
        for i in range(9):
            node = writers[i % 3]
            home = node.call("store_message_in_outbox", sid, f"o{i}", None, None, "PUB", None, "env", f"m{i}", None)
            assert home == {"$t": "CurrentNode", "node_name": "a", "connection_id": "c1"}
            # read-after-write: the home node sees it at once, wherever it was written
            got = [m["server_message_id"] for m in a.call("get_messages_from_outbox", sid, 100)]
            assert got == [f"o{j}" for j in range(i + 1)]
    for sid in sids:
        msgs = a.call("get_messages_from_outbox", sid, 20)
        ids = [m["server_message_id"] for m in msgs]
        a.call("outbox_messages_attempted_delivery", sid, ids)
        a.call("outbox_messages_complete", sid, ids)
        assert a.call("get_messages_from_outbox", sid, 20) == []


def test_cluster_wide_session_reads_on_every_node(cluster) -> None:
    a, b = cluster("a"), cluster("b")
    for i in range(10):
        register(a if i % 2 else b, f"cw-{i}", user=f"user{i % 3}")
    for node in (a, b):
        assert node.call("get_sessions_count", False) == 10
        assert node.call("get_sessions_count", False, "user0") == 4
        assert node.call("get_sessions_count", True, None, "app", "1.0") == 10
    b.call("deregister_session_from_this_node", "cw-0", "c1")
    assert b.call("get_sessions_count", True) == 9
    wait_for(lambda: a.call("get_sessions_count", True) == 9, 10, "node a to see the deregistration")


def test_each_node_mints_session_ids_in_its_own_partitions(cluster) -> None:
    """A session minted on the node that holds its socket is owned there: nodes mint in
    disjoint partitions, and the session works from every node."""
    a, b = cluster("a"), cluster("b")
    wait_for(lambda: spread([a, b]), 60, "the partitions to spread over both nodes")
    minted = {}
    for node in (a, b):
        owned = set(node.call("owned"))
        ids = [node.call("new_session_id", "m-") for _ in range(20)]
        assert {partition_for(sid, PARTITIONS) for sid in ids} <= owned, f"node {node.name} minted elsewhere"
        minted[node.name] = ids
    assert not set(minted["a"]) & set(minted["b"])
    sid = minted["a"][0]
    register(a, sid)
    b.call("store_message_in_outbox", sid, "sm1", None, None, "SEND", None, "{}", "hello", None)
    assert [m["server_message_id"] for m in a.call("get_messages_from_outbox", sid, 10)] == ["sm1"]


def test_timeout_sessions_on_several_nodes_never_reports_a_session_twice(cluster) -> None:
    a, b, c = cluster("a"), cluster("b"), cluster("c")
    sids = [f"to-{i}" for i in range(30)]
    for i, sid in enumerate(sids):
        register([a, b, c][i % 3], sid)
    wait_for(lambda: all(n.call("get_sessions_count", False) == 30 for n in (a, b, c)), 20, "registry")
    at = time.time() + 1.0
    cutoff = int(at * 1000) + 1000
    results = in_parallel(*(lambda n=n: n.call("at", at, "timeout_sessions", cutoff) for n in (a, b, c)))
    assert not any(isinstance(r, Exception) for r in results), results
    counts = Counter(sid for r in results for sid in r)
    assert sorted(counts) == sorted(sids)
    assert max(counts.values()) == 1, [s for s, n in counts.items() if n > 1]
    for n in (a, b, c):
        assert n.call("get_sessions_count", False) == 0 or wait_for(
            lambda n=n: n.call("get_sessions_count", False) == 0, 10, "registry") is None


def _acks(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _verify_acknowledged(node: NodeProcess, acks: list[list[str]]) -> None:
    """Every acknowledged inbox id is still there (a second store is refused) and every
    acknowledged, not completed outbox message is still waiting."""
    completed = {(s, m) for kind, s, m in acks if kind in ("complete", "completing")}
    outbox: dict[str, set[str]] = {}
    for kind, sid, mid in acks:
        if kind == "outbox" and (sid, mid) not in completed:
            outbox.setdefault(sid, set()).add(mid)
    for sid, mids in outbox.items():
        present = {m["server_message_id"] for m in node.call("get_messages_from_outbox", sid, 100_000)}
        assert mids <= present, f"acknowledged outbox messages lost for {sid}: {sorted(mids - present)[:5]}"
    inbox = [(s, m) for kind, s, m in acks if kind == "inbox"]
    assert len(inbox) == len(set(inbox)), "an inbox id was acknowledged twice"
    for sid, mid in inbox[:: max(1, len(inbox) // 200)]:  # a sample: each check is a round trip
        with pytest.raises(NodeError) as e:
            node.call("store_message_id_in_inbox", sid, mid)
        assert e.value.kind == "MessageIdAlreadyExistsError", (sid, mid, e.value)


def test_node_killed_under_load_loses_no_acknowledged_write(cluster, tmp_path: Path) -> None:
    a, b, c = cluster("a"), cluster("b"), cluster("c")
    wait_for(lambda: spread([a, b, c]), what="partitions spread over three nodes")
    files = {n.name: tmp_path / f"acks-{n.name}.txt" for n in (a, b, c)}
    for n in (a, b, c):
        n.call("load", {"prefix": f"L{n.name}", "sessions": 40, "threads": 3}, str(files[n.name]))
    time.sleep(4)
    c.kill()
    wait_for(lambda: sorted(a.call("owned") + b.call("owned")) == list(range(PARTITIONS)), 60,
             "the survivors to take over every partition")
    time.sleep(2)
    for n in (a, b):
        n.call("stop_load")
    acks = [x for f in files.values() for x in _acks(f)]
    assert sum(1 for x in acks if x[0] == "outbox") > 50, "the load did too little to prove anything"
    _verify_acknowledged(a, acks)
    _verify_acknowledged(b, [x for x in acks if x[1].startswith("Lb")])


def test_node_joining_mid_load_takes_partitions_without_losing_writes(cluster, tmp_path: Path) -> None:
    a = cluster("a")
    acks_file = tmp_path / "acks-a.txt"
    a.call("load", {"prefix": "J", "sessions": 30, "threads": 3}, str(acks_file))
    time.sleep(2)
    b = cluster("b")
    wait_for(lambda: spread([a, b]), what="the new node to get partitions")
    time.sleep(2)
    a.call("stop_load")
    acks = _acks(acks_file)
    errors = [x for x in acks if x[0] == "error"]
    assert len(errors) <= len(acks) // 10, f"too many failed calls during the rebalance: {errors[:5]}"
    _verify_acknowledged(b, acks)
