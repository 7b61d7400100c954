"""A node's log and projection opened by the operator tools, without running the node.

The tools never join the cluster: in Kafka mode they read the events topic with a plain
consumer (assign only, no owners group) and open the node's projection directory
directly. `rebuild` needs the projection writable, so the node must be stopped (RocksDB
allows one process at a time); `audit` and `replay` read through a RocksDB secondary
instance, so they also work while the node runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from confluent_kafka.admin import AdminClient

from csaf_events.core.errors import CsafError
from csaf_events.embedded.log import LOG_CF, EmbeddedLog
from csaf_events.kafka import topics as kafka_topics
from csaf_events.kafka.reader import KafkaReader
from csaf_events.log.entries import LogReader
from csaf_events.topics import Topics, load_topics
from projections.files import (
    DatabaseLocked,
    open_or_repair,
    open_or_set_aside,
    open_read_view,
    projection_dir,
)
from projections.rocks import Projection

Access = Literal["write", "read", "none"]


@dataclass
class NodeData:
    log: LogReader
    partitions: int
    projection: Projection | None  # None when opened with access="none"
    holds_all: bool  # embedded: the node holds every partition; Kafka: only those it owned


@dataclass(frozen=True)
class Target:
    """Which node's data, and where the log is (bootstrap None: embedded)."""

    data_dir: Path | None
    node: str  # for client ids only: the data dir and namespace say whose data it is
    bootstrap: str | None
    namespace: str
    partitions: int | None
    topics_file: Path | None
    timeout: float = 30.0

    def topics(self) -> Topics:
        topics = load_topics(self.topics_file, self.namespace)
        return topics if self.partitions is None else topics.with_partitions(self.partitions)

    def projection_path(self) -> Path:
        if self.data_dir is None:
            raise CsafError("--data-dir is needed: it holds the node's projection")
        return projection_dir(self.data_dir, None if self.bootstrap is None else self.namespace)


def _locked(target: Target) -> CsafError:
    return CsafError(f"the node using {target.projection_path()} is running (its database is locked). Stop "
                     f"it first: csaf rebuild rewrites its projection, and RocksDB lets only one process "
                     f"open it for writing")


@contextlib.contextmanager
def open_node_data(target: Target, access: Access) -> Iterator[NodeData]:
    """The node's log (and projection, with the given access) for the duration of the block."""
    if target.bootstrap is None:
        with _embedded(target, access) as data:
            yield data
    else:
        with _kafka(target, access) as data:
            yield data


@contextlib.contextmanager
def _embedded(target: Target, access: Access) -> Iterator[NodeData]:
    path = target.projection_path()
    if not (path / "CURRENT").exists():
        raise CsafError(f"no embedded store in {path}")
    with contextlib.ExitStack() as stack:
        if access == "write":
            try:
                projection = open_or_repair(path, extra_column_families=(LOG_CF,))
            except DatabaseLocked as e:
                raise _locked(target) from e
            stack.callback(projection.close)
        else:
            projection = stack.enter_context(open_read_view(path, extra_column_families=(LOG_CF,)))
        log = EmbeddedLog(projection, target.partitions)
        stack.callback(log.close)
        yield NodeData(log, log.partitions, None if access == "none" else projection, holds_all=True)


@contextlib.contextmanager
def _kafka(target: Target, access: Access) -> Iterator[NodeData]:
    assert target.bootstrap is not None, "open_node_data sends a target without one to _embedded"
    topics = target.topics()
    config: dict[str, str | int | float | bool] = {"bootstrap.servers": target.bootstrap}
    state = kafka_topics.describe(AdminClient(config), [topics.events], target.timeout)[topics.events.name]
    if not state.exists:
        raise CsafError(f"topic {topics.events.name} does not exist on {target.bootstrap} "
                        f"(wrong --namespace or --bootstrap?)")
    reader = KafkaReader({**config, "client.id": f"csaf-tool-{target.node}"}, topics.events.name,
                         state.topic_id or "unknown", f"{topics.namespace}.tool.{target.node}", target.timeout)
    with contextlib.ExitStack() as stack:
        stack.callback(reader.close)
        projection = None
        if access == "write":
            try:
                projection = open_or_set_aside(target.projection_path())
            except DatabaseLocked as e:
                raise _locked(target) from e
            stack.callback(projection.close)
        elif access == "read":
            projection = stack.enter_context(open_read_view(target.projection_path()))
        yield NodeData(reader, state.partitions or 0, projection, holds_all=False)
