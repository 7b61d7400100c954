"""Create and verify the cluster's topics against their declarations (topics.yaml)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, OffsetSpec

from csaf_events.core.errors import CsafError, DataAccessError
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
        raise DataAccessError(f"cannot reach Kafka to list topics: {e}", may_have_written=False) from e
    out: dict[str, TopicState] = {}
    present = [s.name for s in specs if s.name in md.topics and md.topics[s.name].error is None]
    configs: dict[str, dict[str, str] | None] = {}
    ids: dict[str, str | None] = {}
    if present:
        for res, fut in admin.describe_configs([ConfigResource("TOPIC", n) for n in present]).items():
            configs[res.name] = _known(fut, timeout, lambda r: {k: c.value for k, c in r.items()})
        for name, fut in admin.describe_topics(TopicCollection(present)).items():
            ids[name] = _known(fut, timeout, lambda r: str(r.topic_id))
        # a topic another node has just created can be in one broker's metadata and not yet
        # in the broker asked for its configs: not there yet (`ensure` asks again)
        present = [n for n in present if configs[n] is not None and ids[n] is not None]
    for s in specs:
        if s.name in present:
            t = md.topics[s.name]
            rf = len(next(iter(t.partitions.values())).replicas) if t.partitions else None
            out[s.name] = TopicState(s.name, True, len(t.partitions), rf, configs.get(s.name), ids.get(s.name))
        else:
            out[s.name] = TopicState(s.name, False)
    return out


def _known(fut: Any, timeout: float, value: Callable[[Any], Any]) -> Any:
    """`value` of the future's result, or None if the broker asked does not know the topic yet."""
    try:
        return value(fut.result(timeout))
    except KafkaException as e:
        if e.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise


def differences(spec: TopicSpec, state: TopicState) -> list[str]:
    """What makes an existing topic unusable for its role (partitions, cleanup policy)."""
    diffs = []
    if state.partitions != spec.partitions:
        diffs.append(f"topic {spec.name} has {state.partitions} partitions, topics.yaml says {spec.partitions}")
    actual_policy = (state.configs or {}).get("cleanup.policy", "delete")
    if sorted(actual_policy.split(",")) != sorted(spec.cleanup_policy.split(",")):
        diffs.append(f"topic {spec.name} has cleanup.policy={actual_policy}, topics.yaml says {spec.cleanup_policy}")
    return diffs


def durability_differences(spec: TopicSpec, state: TopicState, brokers: int) -> list[str]:
    """Where an existing topic is less durable than topics.yaml asks (replication factor,
    min.insync.replicas): an acknowledged write could then sit on fewer replicas."""
    rf, cfg = expected_configs(spec, brokers)
    diffs = []
    if state.replication_factor is not None and state.replication_factor < rf:
        diffs.append(f"topic {spec.name} has replication factor {state.replication_factor}, topics.yaml asks {rf}")
    want = cfg.get("min.insync.replicas")
    have = (state.configs or {}).get("min.insync.replicas")
    if want is not None and have is not None and int(have) < int(want):
        diffs.append(f"topic {spec.name} has min.insync.replicas={have}, topics.yaml asks {want} "
                     f"(`csaf topics apply` sets it)")
    return diffs


def broker_count(admin: AdminClient, timeout: float) -> int:
    try:
        return len(admin.list_topics(timeout=timeout).brokers)
    except KafkaException as e:
        raise DataAccessError(f"cannot reach Kafka: {e}", may_have_written=False) from e


def expected_configs(spec: TopicSpec, brokers: int) -> tuple[int, dict[str, str]]:
    """The replication factor and configs a topic gets on a cluster of `brokers` brokers:
    both capped so that a smaller (development) cluster works with the same topics.yaml."""
    rf = min(spec.replication_factor, brokers)
    cfg = dict(spec.configs)
    if "min.insync.replicas" in cfg:
        cfg["min.insync.replicas"] = str(min(int(cfg["min.insync.replicas"]), rf))
    return rf, cfg


def all_differences(spec: TopicSpec, state: TopicState, brokers: int) -> list[str]:
    """Every way a topic differs from topics.yaml (missing, partitions, replication, configs)."""
    if not state.exists:
        return [f"topic {spec.name} does not exist"]
    rf, cfg = expected_configs(spec, brokers)
    diffs = differences(spec, state)
    if state.replication_factor != rf:
        diffs.append(f"topic {spec.name} has replication factor {state.replication_factor}, expected {rf}")
    for k, v in cfg.items():
        actual = (state.configs or {}).get(k)
        if k != "cleanup.policy" and actual != v:
            diffs.append(f"topic {spec.name} has {k}={actual}, topics.yaml says {v}")
    return diffs


def apply(admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0) -> tuple[list[str], list[str]]:
    """Make the cluster match topics.yaml as far as is safe: create missing topics, set
    differing configs. Returns (changes made, differences left that need a person: partition
    count, replication factor, cleanup policy)."""
    before = describe(admin, specs, timeout)
    states = ensure(admin, specs, timeout, refuse=False)
    brokers = broker_count(admin, timeout)
    changes = [f"created topic {s.name}" for s in specs if not before[s.name].exists]
    resources = []
    for s in specs:
        if differences(s, states[s.name]):
            continue  # the wrong kind of topic for its role: a person decides, nothing is changed
        _, cfg = expected_configs(s, brokers)
        wrong = {k: v for k, v in cfg.items()
                 if k != "cleanup.policy" and (states[s.name].configs or {}).get(k) != v}
        if wrong:
            resources.append(ConfigResource("TOPIC", s.name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in wrong.items()]))
            changes += [f"set {k}={v} on topic {s.name}" for k, v in wrong.items()]
    if resources:
        for res, fut in admin.incremental_alter_configs(resources).items():
            try:
                fut.result(timeout)
            except KafkaException as e:
                raise DataAccessError(f"cannot change the configs of topic {res.name}: {e}",
                                      may_have_written=False) from e
    left = [d for s in specs for d in all_differences(s, describe(admin, [s], timeout)[s.name], brokers)]
    return changes, left


def _wait_until_served(admin: AdminClient, states: dict[str, TopicState], names: list[str],
                       deadline: float) -> None:
    """A new topic is listed before its partition leaders serve requests; clients that ask
    too early get NOT_LEADER_FOR_PARTITION. Wait until every partition answers ListOffsets."""
    waiting = [TopicPartition(n, p) for n in names for p in range(states[n].partitions or 0)]
    while waiting:
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in waiting},
                                     request_timeout=max(1.0, deadline - time.monotonic()))
        still = []
        for tp, fut in futures.items():
            try:
                fut.result()
            except KafkaException:
                still.append(tp)
        waiting = still
        if waiting and time.monotonic() > deadline:
            raise DataAccessError("created topics are not served yet: " +
                                  ", ".join(f"{tp.topic}[{tp.partition}]" for tp in waiting), may_have_written=False)
        if waiting:
            time.sleep(0.1)


def ensure(admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0, *,
           refuse: bool = True) -> dict[str, TopicState]:
    """Create missing topics; refuse (CsafError naming the difference) a mismatched one."""
    states = describe(admin, specs, timeout)
    brokers = broker_count(admin, timeout)
    missing = [s for s in specs if not states[s.name].exists]
    if missing:
        new = []
        for s in missing:
            rf, cfg = expected_configs(s, brokers)
            if rf < s.replication_factor:
                log.warning("creating %s with replication factor %d (only %d brokers; topics.yaml says %d)",
                            s.name, rf, brokers, s.replication_factor)
            new.append(NewTopic(s.name, num_partitions=s.partitions, replication_factor=rf, config=cfg))
        for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
                log.info("created topic %s", name)
            except KafkaException as e:
                if e.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another node won the race
                    raise DataAccessError(f"cannot create topic {name}: {e}", may_have_written=False) from e
        deadline = time.monotonic() + timeout
        states = describe(admin, specs, timeout)
        while not all(st.exists and st.partitions for st in states.values()):  # metadata catches up
            if time.monotonic() > deadline:
                raise DataAccessError("created topics did not appear in the cluster metadata in time: " +
                                      ", ".join(n for n, st in states.items() if not st.exists), may_have_written=False)
            time.sleep(0.1)
            states = describe(admin, specs, timeout)
        _wait_until_served(admin, states, [s.name for s in missing], deadline)
    problems = [d for s in specs for d in differences(s, states[s.name])]
    if refuse:
        problems += [d for s in specs for d in durability_differences(s, states[s.name], brokers)]
    if problems and refuse:
        raise CsafError("refusing to run on mismatched topics: " + "; ".join(problems))
    return states
