"""``csaf serve``: run a MatsSocket node from the command line.

    csaf serve [--port 8080 ...] [--host localhost] [--data-dir DIR] [--node-name NAME]
               [--bootstrap HOST:PORT --namespace NS [--partitions N]]
               (--app module:factory | --test-app | --demo [--client-dir DIR])

`--app` names a factory ``factory(store) -> MatsSocketServer`` that builds the server with
its authenticator and endpoints; ``--test-app`` uses the test app
(`csaf_events.matssocket.testapp`) and, unless ports are given, listens on 8080 and 8081 as
the MatsSocket JS client's integration suite expects; ``--demo`` runs the chat room of
`csaf_events.matssocket.demo` and serves its page on http://HOST:PORT/ (``--client-dir``: the
MatsSocket JavaScript client's folder, which the page loads). The store is embedded unless
``--bootstrap`` is given; with it, every node started on the same Kafka cluster and namespace
(each with its own ``--node-name`` and data dir) is a node of one MatsSocket cluster, the
nodes reaching each other through the store's channel (`ClusterStoreAndForward.channel`).
The node runs until SIGINT or SIGTERM, then closes its sockets with SERVICE_RESTART (clients
reconnect elsewhere) and closes the store.

`register(subparsers)` adds the subcommand to the ``csaf`` command; ``python -m
csaf_events.matssocket`` runs it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from csaf_events.factory import open_store
from csaf_events.matssocket.server import MatsSocketServer
from csaf_events.ops import scheduling
from csaf_events.ops.cli_run import run_main
from csaf_events.ops.metrics import serve_metrics
from csaf_events.store import ClusterStoreAndForward

log = logging.getLogger(__name__)

TEST_APP = "csaf_events.matssocket.testapp:create_server"
TEST_APP_PORTS = (8080, 8081)

ServerFactory = Callable[[ClusterStoreAndForward], MatsSocketServer]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, action="append", help="port to listen on (repeat for several;"
                        " default 8080, with --test-app 8080 and 8081)")
    parser.add_argument("--host", default="localhost", help="interface to listen on (default localhost)")
    parser.add_argument("--node-name", default=socket.gethostname().split(".")[0] or "node",
                        help="this node's unique name (default: the host name)")
    parser.add_argument("--data-dir", type=Path, help="this node's data directory (default ./csaf-data/NODE)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: embedded store, one node)")
    parser.add_argument("--namespace", default="csaf", help="Kafka namespace of the cluster (default csaf)")
    parser.add_argument("--partitions", type=int, help="partitions of the events and commands topics (default:"
                        " topics.yaml's; every node of a cluster must use the same)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve this node's Prometheus metrics on /metrics and store.health() on /health "
                             "on this port (default: not served)")
    scheduling.add_arguments(parser, "the node")
    app = parser.add_mutually_exclusive_group(required=True)
    app.add_argument("--app", help="module:factory, factory(store) -> MatsSocketServer")
    app.add_argument("--test-app", action="store_true", help="the MatsSocket clients' integration test app")
    app.add_argument("--demo", action="store_true", help="a chat room and its page on http://HOST:PORT/ (see "
                     "docs/matssocket.md, Try it)")
    parser.add_argument("--client-dir", type=Path, metavar="DIR",
                        help="with --demo: the MatsSocket JavaScript client's folder (holding lib/index.js) that "
                             "the page loads (default $CSAF_MATSSOCKET_CLIENT_DIR, else the one the JS tests install "
                             "in tests/matssocket_js/node_modules/matssocket)")


def load_factory(spec: str) -> ServerFactory:
    """``module:attribute`` -> the factory it names (a clear error otherwise)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--app must read module:factory, got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(factory):
        raise ValueError(f"{spec!r} is not a callable factory(store) -> MatsSocketServer")
    return cast(ServerFactory, factory)  # what --app says it is: only calling it can tell


def run(args: argparse.Namespace) -> int:
    node_log = logging.getLogger("csaf_events.matssocket")
    if node_log.level == logging.NOTSET:  # the node's start and stop lines, also under `csaf` (warnings only)
        node_log.setLevel(logging.INFO)
    if args.client_dir is not None and not args.demo:
        raise ValueError("--client-dir goes with --demo (the page's MatsSocket client)")
    if args.demo:
        from csaf_events.matssocket import demo
        factory: ServerFactory = demo.factory(args.client_dir)  # checks the client before the store opens
    else:
        factory = load_factory(TEST_APP if args.test_app else args.app)
    ports = args.port or (list(TEST_APP_PORTS) if args.test_app else [8080])
    data_dir = args.data_dir or Path("csaf-data") / args.node_name
    scheduling.apply(args)  # before the store starts its threads: they inherit it
    with open_store(args.node_name, data_dir, args.bootstrap, namespace=args.namespace,
                    partitions=args.partitions) as store:
        server = factory(store)
        if not isinstance(server, MatsSocketServer):
            raise TypeError(f"the --app factory returned {type(server).__name__}, not a MatsSocketServer")
        metrics = serve_metrics(store, args.metrics_port, args.host) if args.metrics_port is not None else None
        try:
            asyncio.run(_serve(server, args.host, ports))
        finally:
            if metrics is not None:
                metrics.close()
    return 0


async def _serve(server: MatsSocketServer, host: str, ports: Sequence[int]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start(host, *ports)
    await stop.wait()
    await server.stop()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``csaf`` command (a `SubcommandGroup` row of csaf_events.ops.cli)."""
    parser = subparsers.add_parser("serve", help="run a MatsSocket node", description="Run a MatsSocket node: "
                                   "an embedded store, or a node of a Kafka cluster with --bootstrap.")
    add_arguments(parser)
    parser.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csaf_events.matssocket", description="Run a MatsSocket node.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_main(lambda: run(args), parser.prog)  # errors as one line, as `csaf serve` gives them
