"""Topic declarations from `topics.yaml`, namespaced."""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import yaml

from csaf_events.errors import CsafError

ROLES = ("events", "commands", "sessions", "replies", "nodes")


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
