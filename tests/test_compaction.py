"""Compaction keeps the state: the fold of a compacted log is exactly the live projection.

Kafka: a real broker compacts a test topic (tiny segments, a one-second audit window); the
test waits until it has (fewer records left than were written), then rebuilds into a
fresh projection. Embedded: the embedded log compacts the same way, by the audit window
taken from topics.yaml.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from log_fixtures import PARTITIONS, LogNode, populate

from csaf_events import open_store
from csaf_events.core.partitioning import partition_for
from csaf_events.topics import default_topics_file
from projections.rebuild import catch_up, snapshot
from projections.rocks import Projection

DAY = 86_400_000
START = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


def churn(store, rounds: int) -> None:
    """Superseding updates of the same entities (each replaces the whole state), and tombstones."""
    for r in range(rounds):
        for i in range(1, 6):
            sid = f"pop-{i}"
            store.notify_session_liveliness([sid])
            store.outbox_messages_attempted_delivery(sid, ["m2"])
            store.outbox_messages_unmark_attempted_delivery(sid)
            store.store_message_id_in_inbox(sid, f"churn-{r}")
            store.delete_message_ids_from_inbox(sid, [f"churn-{r}"])


def records(log, p: int) -> list:
    return list(log.read(p))


def rebuilt_snapshots(log, tmp: Path) -> dict[int, dict[bytes, bytes]]:
    fresh = Projection(tmp)
    try:
        for p in range(PARTITIONS):
            catch_up(fresh, log, p)
        return {p: snapshot(fresh, p) for p in range(PARTITIONS)}
    finally:
        fresh.close()


# --------------------------------------------------------------------- embedded --

def test_embedded_compaction_drops_superseded_records_after_the_audit_window(tmp_path: Path) -> None:
    window = int(yaml.safe_load(default_topics_file().read_text())["events"]["configs"]["min.compaction.lag.ms"])
    retention = int(yaml.safe_load(default_topics_file().read_text())["events"]["configs"]["delete.retention.ms"])
    clock = Clock()
    store = open_store("node-a", tmp_path / "node", partitions=PARTITIONS, clock=clock)
    store.boot()
    log = store.node.log
    populate(store)
    churn(store, 4)
    written = {p: len(records(log, p)) for p in range(PARTITIONS)}
    ends = {p: log.end_offset(p) for p in range(PARTITIONS)}
    live = {p: snapshot(store.node.projection, p) for p in range(PARTITIONS)}

    clock.now += window - 1  # inside the audit window: the full history stays
    assert store._backend.compact() == 0

    clock.now += 2  # superseded records are now older than the window; tombstones not yet past retention
    dropped = store._backend.compact()
    left = {p: records(log, p) for p in range(PARTITIONS)}
    assert dropped == sum(written.values()) - sum(len(v) for v in left.values()) > 0
    assert all(len(left[p]) < written[p] for p in range(PARTITIONS))
    assert any(e.value is None for p in left for e in left[p]), "young-enough tombstones are kept"
    assert {p: log.end_offset(p) for p in range(PARTITIONS)} == ends
    assert rebuilt_snapshots(log, tmp_path / "fresh1") == live

    history = store.session_history("pop-0")  # closed: only its tombstones are left
    assert history and all(e.state is None for e in history)
    assert [e.type for e in store.session_history("pop-1")].count("LivelinessNotified") == 1

    clock.now += retention  # now the tombstones go too
    assert store._backend.compact() > 0
    assert not any(e.value is None for p in range(PARTITIONS) for e in records(log, p))
    assert store.session_history("pop-0") == []
    assert rebuilt_snapshots(log, tmp_path / "fresh2") == live

    # offsets are never reused, also after a restart; a restart trusts the compacted log
    store.close()
    store = open_store("node-a", tmp_path / "node", partitions=PARTITIONS, clock=clock)
    store.boot()
    try:
        assert {p: store.node.log.end_offset(p) for p in range(PARTITIONS)} == ends
        assert {p: snapshot(store.node.projection, p) for p in range(PARTITIONS)} == live
        store.notify_session_liveliness(["pop-1", "pop-2", "pop-3"])
        for sid in ("pop-1", "pop-2", "pop-3"):
            assert store.session_history(sid)[-1].offset >= ends[partition_for(sid, PARTITIONS)]
    finally:
        store.close()


def test_embedded_compaction_follows_the_topics_file(tmp_path: Path) -> None:
    raw = yaml.safe_load(default_topics_file().read_text())
    raw["events"]["configs"]["cleanup.policy"] = "delete"
    topics_file = tmp_path / "topics.yaml"
    topics_file.write_text(yaml.safe_dump(raw))
    clock = Clock()
    with open_store("node-a", tmp_path / "node", partitions=PARTITIONS, clock=clock, topics_file=topics_file) as store:
        populate(store)
        churn(store, 1)
        clock.now += 365 * DAY
        assert store._backend.compact() == 0  # not a compacted topic: nothing is dropped


# ------------------------------------------------------------------------ kafka --

def _compacting_topics(tmp_path: Path) -> Path:
    raw = yaml.safe_load(default_topics_file().read_text())
    raw["events"]["partitions"] = PARTITIONS
    raw["events"]["configs"].update({
        "min.compaction.lag.ms": "1000",       # audit window: one second
        "delete.retention.ms": "1000",
        "segment.ms": "300",                   # roll a segment (only closed ones are cleaned) every write after 0.3 s
        "segment.bytes": "1048576",            # the broker's minimum
        "min.cleanable.dirty.ratio": "0.01",
        "max.compaction.lag.ms": "2000",
    })
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.kafka
def test_a_log_compacted_by_the_broker_rebuilds_the_live_state(kafka_bootstrap: str, tmp_path: Path) -> None:
    from brokers import unique_namespace

    namespace, topics_file = unique_namespace("compact"), _compacting_topics(tmp_path)
    store = open_store("node-a", tmp_path / "node", bootstrap_servers=kafka_bootstrap, namespace=namespace,
                       topics_file=topics_file, request_timeout=15.0)
    store.boot()
    try:
        log = store.node.log
        populate(store)
        churn(store, 4)
        ends = {p: log.end_offset(p) for p in range(PARTITIONS)}
        written = {p: len(records(log, p)) for p in range(PARTITIONS)}

        deadline = time.monotonic() + 90
        compacted = False
        while not compacted:
            assert time.monotonic() < deadline, f"the broker did not compact within 90 s: {written}"
            time.sleep(0.4)
            store.notify_session_liveliness(["pop-1", "pop-2", "pop-3", "pop-4"])  # new records roll segments
            now = {p: len([e for e in records(log, p) if e.offset < ends[p]]) for p in range(PARTITIONS)}
            compacted = all(now[p] < written[p] for p in range(PARTITIONS))

        live = {p: snapshot(store.node.projection, p) for p in range(PARTITIONS)}
        assert rebuilt_snapshots(log, tmp_path / "fresh") == live
        total = sum(len(records(log, p)) for p in range(PARTITIONS))
        assert total < sum(written.values())
        # `csaf audit` of the running node against the compacted topic finds no difference
        node = LogNode("kafka", tmp_path / "node", kafka_bootstrap, namespace)
        code, out, err = node.tool("audit", "--topics-file", str(topics_file), *node.tool_args())
        assert code == 0 and "the projection equals the fold of the log" in out, out + err
    finally:
        store.close()
