"""`open_store`: the one way to get a store, embedded or on Kafka."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from csaf_events.backend import Backend
from csaf_events.core.clock import now_ms
from csaf_events.core.validation import NAME, Limits
from csaf_events.embedded.backend import EmbeddedBackend
from csaf_events.embedded.log import CompactionPolicy
from csaf_events.kafka.backend import KafkaBackend
from csaf_events.kafka.transaction import DEFAULT_LANES
from csaf_events.ops.metrics import StoreMetrics
from csaf_events.store import ClusterStoreAndForward
from csaf_events.topics import load_topics


def open_store(node_name: str, data_dir: str | Path, bootstrap_servers: str | None = None, *,
               namespace: str = "csaf", partitions: int | None = None,
               topics_file: str | Path | None = None, limits: Limits | None = None,
               sync: bool = False, request_timeout: float = 30.0,
               kafka_config: dict | None = None, transaction_lanes: int | None = None,
               clock: Callable[[], int] = now_ms,
               metrics: CollectorRegistry | None = REGISTRY) -> ClusterStoreAndForward:
    """Open a store for this node; call `boot()` (or use `with`) before using it.

    Without `bootstrap_servers` the store is embedded: one node with a durable local log,
    no broker. With it, the node joins the Kafka cluster of `namespace`.
    `sync=True` fsyncs every embedded append (survives power loss, not just process death).
    `metrics` is the Prometheus registry the store reports to (default the process-wide one;
    None: no metrics, the calls are not wrapped at all); see `csaf_events.ops.metrics`.
    """
    if not isinstance(node_name, str) or not NAME.match(node_name):
        raise ValueError(f"node_name must be 1-100 characters of letters, digits, '.', '_' or '-', got {node_name!r}")
    if not isinstance(namespace, str) or not NAME.match(namespace):
        raise ValueError(f"namespace must be 1-100 characters of letters, digits, '.', '_' or '-', got {namespace!r}")
    if not isinstance(data_dir, (str, Path)) or not str(data_dir):
        raise TypeError(f"data_dir must be a path, got {data_dir!r}")
    if metrics is not None and not isinstance(metrics, CollectorRegistry):
        raise TypeError(f"metrics must be a prometheus_client CollectorRegistry or None, got {metrics!r}")
    topics = load_topics(topics_file, namespace)
    if partitions is not None:
        if isinstance(partitions, bool) or not isinstance(partitions, int) or not 1 <= partitions <= 4096:
            raise ValueError(f"partitions must be an int from 1 to 4096, got {partitions!r}")
        topics = topics.with_partitions(partitions)
    limits = limits or Limits()
    backend: Backend
    if bootstrap_servers is None:
        backend = EmbeddedBackend(node_name, Path(data_dir), topics.events.partitions, clock, sync,
                                  compaction=CompactionPolicy.of(topics.events))
    else:
        if not isinstance(bootstrap_servers, str) or not bootstrap_servers.strip():
            raise ValueError(f"bootstrap_servers must be 'host:port[,host:port...]', got {bootstrap_servers!r}")
        lanes = DEFAULT_LANES if transaction_lanes is None else transaction_lanes
        if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 64:
            raise ValueError(f"transaction_lanes must be an int from 1 to 64, got {transaction_lanes!r}")
        backend = KafkaBackend(node_name, Path(data_dir), bootstrap_servers, topics, clock,
                               request_timeout=request_timeout, kafka_config=kafka_config or {},
                               transaction_lanes=lanes)
    store = ClusterStoreAndForward(node_name, topics.events.partitions, backend, limits)
    if metrics is not None:
        store.metrics = StoreMetrics(store, metrics)  # observes the store's public calls
    return store
