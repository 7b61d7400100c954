"""Topic declarations from `topics.yaml`, namespaced, and the other names a cluster's nodes
share on Kafka: the owners group, a node's client id."""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import yaml

from csaf_events.core.errors import CsafError

ROLES = ("events", "commands", "sessions", "replies", "nodes")

#: A node's Kafka clients say ``client.id = csaf-<node>``: so the owners group's members name
#: their node (`csaf_events.ops.cluster_status`).
CLIENT_PREFIX = "csaf-"


def client_id(node_name: str) -> str:
    return CLIENT_PREFIX + node_name


def node_of_client(client: str) -> str:
    """The node a client id names (the id itself when it is not a node's)."""
    return client.removeprefix(CLIENT_PREFIX)


@dataclass(frozen=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]

    @property
    def cleanup_policy(self) -> str:
        return self.configs.get("cleanup.policy", "delete")


@dataclass(frozen=True)
class Topics:
    namespace: str
    events: TopicSpec
    commands: TopicSpec
    sessions: TopicSpec
    replies: TopicSpec
    nodes: TopicSpec

    def with_partitions(self, partitions: int) -> Topics:
        return replace(self, events=replace(self.events, partitions=partitions),
                       commands=replace(self.commands, partitions=partitions))

    def reply_topic(self, node_name: str) -> TopicSpec:
        return replace(self.replies, name=f"{self.replies.name}.{node_name}")

    def node_topic(self, node_name: str) -> TopicSpec:
        """The node's channel topic (`csaf_events.kafka.channel`): <namespace>.nodes.<node>."""
        return replace(self.nodes, name=f"{self.nodes.name}.{node_name}")

    @property
    def owners_group(self) -> str:
        """The consumer group on the commands topic whose members own the partitions."""
        return f"{self.namespace}.owners"

    def cluster_topics(self) -> list[TopicSpec]:
        return [self.events, self.commands, self.sessions]


def default_topics_file() -> Path:
    """topics.yaml beside the package (source checkout) or shipped inside it."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "topics.yaml", here / "topics.yaml"):
        if candidate.exists():
            return candidate
    return Path(str(resources.files("csaf_events") / "topics.yaml"))


def load_topics(path: str | Path | None, namespace: str) -> Topics:
    file = Path(path) if path is not None else default_topics_file()
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as e:
        raise CsafError(f"cannot read topics file {file}: {e}") from e
    if not isinstance(raw, dict):
        raise CsafError(f"{file}: expected a mapping of topic roles, got {type(raw).__name__}")
    missing = [r for r in ROLES if r not in raw]
    if missing:
        raise CsafError(f"{file}: missing topic role(s) {', '.join(missing)}")
    specs = {}
    for role in ROLES:
        t = raw[role] or {}
        partitions = t.get("partitions", raw["events"].get("partitions"))
        rf = t.get("replication_factor", 1)
        if not isinstance(partitions, int) or partitions < 1:
            raise CsafError(f"{file}: {role}.partitions must be a positive int, got {partitions!r}")
        if not isinstance(rf, int) or rf < 1:
            raise CsafError(f"{file}: {role}.replication_factor must be a positive int, got {rf!r}")
        specs[role] = TopicSpec(role, f"{namespace}.{t.get('name', role)}", partitions, rf,
                                {str(k): str(v) for k, v in (t.get("configs") or {}).items()})
    if specs["commands"].partitions != specs["events"].partitions:
        raise CsafError(f"{file}: commands must have as many partitions as events "
                        f"({specs['commands'].partitions} != {specs['events'].partitions})")
    return Topics(namespace, **specs)
