"""Create and verify the cluster's topics against their declarations (topics.yaml)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from csaf_events.errors import CsafError, DataAccessError
from csaf_events.topics import TopicSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicState:
    name: str
    exists: bool
    partitions: int | None = None
    replication_factor: int | None = None
    configs: dict[str, str] | None = None
    topic_id: str | None = None


def describe(admin: AdminClient, specs: list[TopicSpec], timeout: float = 15.0) -> dict[str, TopicState]:
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as e:
        raise DataAccessError(f"cannot reach Kafka to list topics: {e}") from e
    out: dict[str, TopicState] = {}
    present = [s.name for s in specs if s.name in md.topics and md.topics[s.name].error is None]
    configs: dict[str, dict[str, str]] = {}
    ids: dict[str, str] = {}
    if present:
        for res, fut in admin.describe_configs([ConfigResource("TOPIC", n) for n in present]).items():
            configs[res.name] = {k: c.value for k, c in fut.result(timeout).items()}
        for name, fut in admin.describe_topics(TopicCollection(present)).items():
            ids[name] = str(fut.result(timeout).topic_id)
    for s in specs:
        if s.name in present:
            t = md.topics[s.name]
            rf = len(next(iter(t.partitions.values())).replicas) if t.partitions else None
            out[s.name] = TopicState(s.name, True, len(t.partitions), rf, configs.get(s.name), ids.get(s.name))
        else:
            out[s.name] = TopicState(s.name, False)
    return out


def differences(spec: TopicSpec, state: TopicState) -> list[str]:
    """What makes an existing topic unusable for its role (partitions, cleanup policy)."""
    diffs = []
    if state.partitions != spec.partitions:
        diffs.append(f"topic {spec.name} has {state.partitions} partitions, topics.yaml says {spec.partitions}")
    actual_policy = (state.configs or {}).get("cleanup.policy", "delete")
    if sorted(actual_policy.split(",")) != sorted(spec.cleanup_policy.split(",")):
        diffs.append(f"topic {spec.name} has cleanup.policy={actual_policy}, topics.yaml says {spec.cleanup_policy}")
    return diffs


def ensure(admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0) -> dict[str, TopicState]:
    """Create missing topics; refuse (CsafError naming the difference) a mismatched one."""
    states = describe(admin, specs, timeout)
    brokers = len(admin.list_topics(timeout=timeout).brokers)
    missing = [s for s in specs if not states[s.name].exists]
    if missing:
        new = []
        for s in missing:
            rf = min(s.replication_factor, brokers)
            if rf < s.replication_factor:
                log.warning("creating %s with replication factor %d (only %d brokers; topics.yaml says %d)",
                            s.name, rf, brokers, s.replication_factor)
            cfg = dict(s.configs)
            if "min.insync.replicas" in cfg:
                cfg["min.insync.replicas"] = str(min(int(cfg["min.insync.replicas"]), rf))
            new.append(NewTopic(s.name, num_partitions=s.partitions, replication_factor=rf, config=cfg))
        for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
                log.info("created topic %s", name)
            except KafkaException as e:
                if e.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another node won the race
                    raise DataAccessError(f"cannot create topic {name}: {e}") from e
        deadline = time.monotonic() + timeout
        states = describe(admin, specs, timeout)
        while not all(st.exists and st.partitions for st in states.values()):  # metadata catches up
            if time.monotonic() > deadline:
                raise DataAccessError("created topics did not appear in the cluster metadata in time: " +
                                      ", ".join(n for n, st in states.items() if not st.exists))
            time.sleep(0.1)
            states = describe(admin, specs, timeout)
    problems = [d for s in specs for d in differences(s, states[s.name])]
    if problems:
        raise CsafError("refusing to run on mismatched topics: " + "; ".join(problems))
    return states
