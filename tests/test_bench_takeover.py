"""The benchmark's Kafka measurements (bench/takeover.py, bench/transaction_cycle.py), tiny, on a real broker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ lives in the checkout, not in the installed package
    sys.path.insert(0, str(REPO))

from bench.takeover import lifecycle_records, measure_takeover  # noqa: E402
from bench.transaction_cycle import main as transaction_cycle  # noqa: E402

pytestmark = pytest.mark.kafka


def test_a_fresh_node_restores_the_filled_partition(kafka_bootstrap: str, tmp_path: Path) -> None:
    events = 1500  # 15 whole session lifecycles and part of a 16th
    report = measure_takeover(kafka_bootstrap, events, partitions=3, payload=256, work_dir=tmp_path, timeout=30)
    assert report["events"] == events == report["fill"]["events"]  # the node applied every event in the log
    assert report["events_per_s"] > 0 and report["restore_s"] > 0
    assert report["owned_after_boot"] == [0, 1, 2]
    assert report["probe_ok"] is True  # a closed session is gone, an open one is there
    # the namespace's topics are deleted afterwards
    names = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    ns = report["namespace"]
    assert not [t for t in names if t.startswith(f"{ns}.")]


def test_a_lifecycle_is_the_workloads_events() -> None:
    records = lifecycle_records("s-1", ['{"data":"x"}'], 1, "n", 0, close=True)
    types = [dict(r.headers)["type"].decode() for r in records]
    assert types.count("OutboxStored") == types.count("DeliveryAttempted") == types.count("Completed") == 20
    assert types.count("InboxUpdated") == types.count("InboxDeleted") == 10
    assert types[0] == "SessionRegistered" and types[-1] == "SessionClosed"
    assert len(records) == 98


def test_the_bare_transaction_cycle_is_measured_on_both_lane_shapes(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "cycle.json"
    assert transaction_cycle(["--bootstrap", kafka_bootstrap, "--transactions", "10", "--partitions", "1", "3",
                              "--producers", "1", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [(r["partitions"], r["producers"]) for r in runs] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    for r in runs:
        assert r["transactions"] == 10 and r["transactions_per_s"] > 0
        assert set(r["ms"]) == {"produce", "send_offsets", "flush", "commit"}
        assert 0 < r["cycle_ms"]["p50"] <= r["cycle_ms"]["p99"]
    names = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert not [t for t in names if t.startswith(f"{report['namespace']}.")], "the run's topics were not deleted"
