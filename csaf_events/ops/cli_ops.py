"""The operator subcommands of ``csaf``: the cluster as Kafka sees it, and its metrics.

    csaf status  --bootstrap HOST:PORT [--namespace NS] [--json] [--timeout S]
    csaf metrics --port P --bootstrap HOST:PORT [--namespace NS] [--host H] [--timeout S]

``status`` prints the owners group's members and the partitions each owns, the committed
command offsets, the events topic's end per partition and the session registry's size
(`csaf_events.ops.cluster_status`). ``metrics`` serves the same facts as Prometheus metrics on
``/metrics`` (``csaf_cluster_*``, read at each scrape) and ``/health`` (200 when every
partition has an owner), without joining the cluster. A node's own metrics come from the
node (`csaf_events.ops.metrics.serve_metrics`, ``csaf serve``). See docs/operations.md. Each
subcommand imports what only it needs (Kafka's admin API, prometheus-client), so that ``csaf
--help`` stays fast; none of those imports dodges an import circle (`tests/test_layers.py`
counts them).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from csaf_events.core.validation import NAME


def namespace(text: str) -> str:
    if not NAME.match(text):
        raise argparse.ArgumentTypeError(f"must be 1-100 letters, digits, '.', '_' or '-', got {text!r}")
    return text


N = TypeVar("N", int, float)


def number(convert: Callable[[str], N], accept: Callable[[N], bool], what: str) -> Callable[[str], N]:
    """An argparse type: `convert` the text, refuse what `accept` does not, naming `what`."""
    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what
    return parse


port = number(int, lambda v: 0 <= v <= 65535, "a port number (0-65535)")
positive_float = number(float, lambda v: 0 < v < float("inf"), "a positive number")


def bootstrap(text: str) -> str:
    if not text.strip() or any(not part.strip() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"must be HOST:PORT[,HOST:PORT...], got {text!r}")
    return text


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=bootstrap, required=True, metavar="HOST:PORT",
                   help="Kafka bootstrap servers of the cluster")
    p.add_argument("--namespace", type=namespace, default="csaf", help="topic and group name prefix (default csaf)")
    p.add_argument("--topics-file", type=Path, metavar="FILE", help="topics.yaml (default: the packaged one)")
    p.add_argument("--timeout", type=positive_float, default=10.0, metavar="S",
                   help="seconds to wait for each Kafka request (default 10)")


# ------------------------------------------------------------------- status --

def _status(args: argparse.Namespace) -> int:
    from csaf_events.ops.cluster_status import cluster_status, format_table
    s = cluster_status(args.bootstrap, args.namespace, timeout=args.timeout, topics_file=args.topics_file)
    if args.json:
        sys.stdout.write(json.dumps(s, indent=2) + "\n")
    else:
        print(format_table(s))
    return 0


# ------------------------------------------------------------------ metrics --

class ClusterCollector:
    """``csaf_cluster_*`` metrics, read from Kafka at each scrape (`cluster_status`)."""

    def __init__(self, bootstrap: str, namespace: str, timeout: float, topics_file: Path | None) -> None:
        self._args = (bootstrap, namespace)
        self._timeout, self._topics_file = timeout, topics_file
        self.last: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any] | None:
        from csaf_events.ops.cluster_status import cluster_status
        with self._lock:
            try:
                self.last = cluster_status(*self._args, timeout=self._timeout, topics_file=self._topics_file)
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - a scrape reports it as csaf_cluster_up 0
                self.last, self.last_error = None, f"{type(e).__name__}: {e}"
            return self.last

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        s = self.read()
        yield GaugeMetricFamily("csaf_cluster_up", "1 when the cluster's status could be read from Kafka",
                                value=0 if s is None else 1)
        if s is None:
            return
        yield GaugeMetricFamily("csaf_cluster_nodes", "Members of the owners group", value=len(s["nodes"]))
        yield GaugeMetricFamily("csaf_cluster_unowned_partitions", "Partitions no member of the owners group "
                                "is assigned", value=len(s["unowned_partitions"]))
        owner = GaugeMetricFamily("csaf_cluster_partition_owner", "1 for the node the owners group assigned "
                                  "each partition to", labels=("partition", "node"))
        per = {name: GaugeMetricFamily(name, help_, labels=("partition",)) for name, help_ in (
            ("csaf_cluster_committed_command_offset", "Routed commands decided (committed offset of the owners "
             "group on the commands topic)"),
            ("csaf_cluster_commands_end_offset", "End of the commands topic"),
            ("csaf_cluster_commands_waiting", "Routed commands not yet decided by the partition's owner"),
            ("csaf_cluster_events_end_offset", "End of the events topic (committed records)"),
            ("csaf_cluster_sessions_end_offset", "End of the sessions topic (the session registry's feed)"))}
        keys = {"csaf_cluster_committed_command_offset": "committed_command_offset",
                "csaf_cluster_commands_end_offset": "commands_end", "csaf_cluster_commands_waiting":
                "commands_waiting", "csaf_cluster_events_end_offset": "events_end",
                "csaf_cluster_sessions_end_offset": "sessions_end"}
        for r in s["partitions"]:
            p = str(r["partition"])
            if r["owner"] is not None:
                owner.add_metric((p, r["owner"]), 1)
            for name, key in keys.items():
                if r[key] is not None:
                    per[name].add_metric((p,), r[key])
        yield owner
        yield from per.values()

    def health(self) -> dict[str, Any]:
        s = self.last if self.last is not None else self.read()
        if s is None:
            return {"ok": False, "error": self.last_error}
        return {"ok": not s["unowned_partitions"] and bool(s["nodes"]), "group_state": s["group_state"],
                "nodes": {n["node"]: n["partitions"] for n in s["nodes"]},
                "unowned_partitions": s["unowned_partitions"]}


def _metrics(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from csaf_events.ops.metrics import MetricsServer, wsgi_app
    registry = CollectorRegistry()
    collector = ClusterCollector(args.bootstrap, args.namespace, args.timeout, args.topics_file)
    registry.register(collector)
    server = MetricsServer(wsgi_app(registry, lambda: _fresh_health(collector)), args.port, args.host)
    print(f"csaf metrics: the cluster {args.namespace} at {args.bootstrap} on {server.url}/metrics and "
          f"{server.url}/health (Ctrl-C stops)", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.close()
    return 0


def _fresh_health(collector: ClusterCollector) -> dict[str, Any]:
    collector.read()
    return collector.health()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``status`` and ``metrics`` to the ``csaf`` command (a `SubcommandGroup` row)."""
    p = subparsers.add_parser("status", help="the cluster as Kafka sees it: nodes, partitions, offsets",
                              description="The cluster of a namespace as Kafka's group and offset APIs see it: "
                                          "the nodes and the partitions each owns, committed command offsets, "
                                          "the events topic's end per partition, the session registry's size.")
    _cluster_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(run=_status)
    m = subparsers.add_parser("metrics", help="serve the cluster's status as Prometheus metrics (/metrics, /health)",
                              description="Serve csaf_cluster_* metrics (read from Kafka at each scrape) on "
                                          "/metrics and the cluster's health on /health, without joining it.")
    m.add_argument("--port", type=port, required=True, help="HTTP port (0: any free one)")
    m.add_argument("--host", default="0.0.0.0", help="interface to listen on (default all)")
    _cluster_arguments(m)
    m.set_defaults(run=_metrics)
