"""A node that lost a partition cannot commit events for it (real broker)."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from node_process import NodeProcess
from test_cluster import PARTITIONS, _acks, _verify_acknowledged, spread, wait_for

from csaf_events import DataAccessError, open_store
from csaf_events.core.events import header
from csaf_events.core.partitioning import partition_for
from csaf_events.kafka.reader import read_partition

pytestmark = pytest.mark.kafka


def _log_ms(line: str) -> int:
    """The time of a node log line (local time, as logging writes it) in ms since the epoch."""
    return int(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000)


def events_of(bootstrap: str, topic: str, partition: int) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fencing-test-reader", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        return list(read_partition(c, topic, partition, 0, None, 30))
    finally:
        c.close()


def test_a_fenced_owner_cannot_commit(kafka_bootstrap: str, kafka_namespace: str, tmp_path: Path) -> None:
    with open_store("zombie", tmp_path, bootstrap_servers=kafka_bootstrap, namespace=kafka_namespace,
                    partitions=2, request_timeout=5.0) as store:
        sid = "fenced-session"
        p = partition_for(sid, 2)
        store.register_session_at_this_node(sid, "u", "c", "lib", "app", "1")
        store.store_message_id_in_inbox(sid, "before")
        # A second process starts as the same node (a restart while the old one still runs):
        # opening the node's transactional producers fences the old ones.
        ids = store.node.log.transaction_for(p).transactional_ids
        assert ids[0] == f"{kafka_namespace}.node.zombie"
        usurpers = [Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": i}) for i in ids]
        for usurper in usurpers:
            usurper.init_transactions(30)
        with pytest.raises(DataAccessError):
            store.store_message_id_in_inbox(sid, "after")
        assert store.get_message_from_inbox(sid, "after") is None
    events = events_of(kafka_bootstrap, f"{kafka_namespace}.events", p)
    types = [header(e.headers, "type") for e in events]
    assert types.count("InboxStored") == 1, types
    assert b'"after"' not in b"".join(e.key for e in events)


def test_a_paused_node_is_fenced_after_its_partitions_moved(kafka_bootstrap: str, kafka_namespace: str,
                                                             tmp_path: Path) -> None:
    nodes = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        nodes[name] = NodeProcess(name, tmp_path / name, kafka_bootstrap, kafka_namespace, PARTITIONS)
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    try:
        wait_for(lambda: spread([a, b, c]), what="partitions spread over three nodes")
        c_partitions = c.call("owned")
        files = {n: tmp_path / f"acks-{n}.txt" for n in nodes}
        for name, node in nodes.items():
            node.call("load", {"prefix": f"F{name}", "sessions": 30, "threads": 3}, str(files[name]))
        time.sleep(2)
        paused_at = int(time.time() * 1000)
        c.proc.send_signal(signal.SIGSTOP)  # a long GC pause, a frozen VM: c does not know it is gone
        wait_for(lambda: sorted(a.call("owned") + b.call("owned")) == list(range(PARTITIONS)), 60,
                 "a and b to take over c's partitions")
        c.proc.send_signal(signal.SIGCONT)  # c wakes up with transactions in flight
        time.sleep(4)
        for node in nodes.values():
            node.call("stop_load")
        acks = [x for f in files.values() for x in _acks(f)]
        _verify_acknowledged(a, acks)
    finally:
        for node in nodes.values():
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
            node.close()
    # In every partition c owned that another node wrote to while c was frozen: once that node
    # has written, nothing c decided before its pause may follow (those transactions were in
    # flight: they must have been fenced). c may write again only after it took the partition
    # back (a fresh takeover, logged). A takeover that ends just before c wakes and takes the
    # partition back leaves no other writer there, and so nothing to check: most partitions
    # have one, and at least one must.
    c_log = (tmp_path / "c" / "c.log").read_text()
    checked = 0
    for p in c_partitions:
        events = events_of(kafka_bootstrap, f"{kafka_namespace}.events", p)
        writers = [header(e.headers, "node") for e in events]
        assert "c" in writers
        first_other = next((i for i, w in enumerate(writers) if w != "c"), None)
        if first_other is None:
            continue
        checked += 1
        late = [e for e in events[first_other:] if header(e.headers, "node") == "c"]
        if late:
            retaken = [_log_ms(line) for line in c_log.splitlines() if f"took over partition {p}:" in line]
            retaken = [t for t in retaken if t > paused_at]
            assert retaken, f"c wrote to partition {p} after losing it and never took it back"
            zombie = [e for e in late if int(header(e.headers, "ts")) < retaken[0] - 5]
            assert not zombie, (f"partition {p}: {len(zombie)} events decided by c while it no longer owned the "
                                f"partition were committed")
    assert checked > 0, f"no other node wrote to any of c's partitions {c_partitions} while c was frozen"
