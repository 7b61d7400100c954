"""`csaf topics describe|apply|verify` against topics.yaml, on a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from log_fixtures import LogNode

pytestmark = pytest.mark.kafka


def _topics(node: LogNode, *argv: str) -> tuple[int, str, str]:
    return node.tool("topics", *argv, "--bootstrap", node.bootstrap, "--namespace", node.namespace,
                     "--partitions", "2")


def test_apply_creates_verify_checks_and_describe_shows(kafka_bootstrap: str, kafka_namespace: str,
                                                        tmp_path: Path) -> None:
    node = LogNode("kafka", tmp_path, kafka_bootstrap, kafka_namespace)
    ns = kafka_namespace

    code, out, _ = _topics(node, "verify")
    assert code == 1
    assert f"topic {ns}.events does not exist" in out and f"topic {ns}.sessions does not exist" in out

    code, out, err = _topics(node, "apply", "--node", "node-a")
    assert code == 0, out + err
    for name in ("events", "commands", "sessions", "replies.node-a", "nodes.node-a"):
        assert f"created topic {ns}.{name}" in out

    code, out, err = _topics(node, "verify", "--node", "node-a")
    assert code == 0, out + err
    assert "5 topics match topics.yaml" in out

    code, out, _ = _topics(node, "describe")
    assert code == 0
    assert f"{ns}.events: id " in out and "2 partitions (topics.yaml 2)" in out
    assert "cleanup.policy=compact" in out and "min.compaction.lag.ms=604800000" in out
    assert "<-" not in out  # nothing differs

    # someone changed a config by hand: verify names it, apply sets it back
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    res = ConfigResource("TOPIC", f"{ns}.commands", incremental_configs=[
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET)])
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(15)
    code, out, _ = _topics(node, "verify")
    assert code == 1 and f"topic {ns}.commands has retention.ms=60000, topics.yaml says 3600000" in out
    code, out, _ = _topics(node, "describe")
    assert "retention.ms=60000   <- topics.yaml says 3600000" in out
    code, out, err = _topics(node, "apply")
    assert code == 0, out + err
    assert f"set retention.ms=3600000 on topic {ns}.commands" in out
    assert _topics(node, "verify")[0] == 0
    code, out, _ = _topics(node, "apply")
    assert code == 0 and "already match" in out


def test_apply_leaves_what_it_must_not_change_to_a_person(kafka_bootstrap: str, kafka_namespace: str,
                                                          tmp_path: Path) -> None:
    node = LogNode("kafka", tmp_path, kafka_bootstrap, kafka_namespace)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    events = f"{kafka_namespace}.events"  # partitioned differently, with another cleanup policy
    admin.create_topics([NewTopic(events, 3, 1, config={"cleanup.policy": "delete"})])[events].result(15)

    code, out, _ = _topics(node, "apply")
    assert code == 1
    assert f"not changed (needs a person): topic {events} has 3 partitions, topics.yaml says 2" in out
    assert f"topic {events} has cleanup.policy=delete, topics.yaml says compact" in out
    assert f"created topic {kafka_namespace}.commands" in out
    code, out, _ = _topics(node, "verify")
    assert code == 1 and "has 3 partitions" in out


def test_topics_needs_a_cluster(tmp_path: Path) -> None:
    code, _, err = LogNode("embedded", tmp_path).tool("topics", "verify")
    assert code == 1 and "--bootstrap" in err
