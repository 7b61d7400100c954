"""What a call costs when the session's home node does not own its partition (DESIGN §1, Q5).

Two nodes on one Kafka cluster; node a registers sessions whose partitions it owns and
sessions owned by node b, then times sequential outbox writes and reads from node a for
both kinds. Usage: python -m bench.routing_cost --bootstrap HOST:PORT [--sessions N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable

from csaf_events import open_store
from csaf_events.core.partitioning import partition_for

PARTITIONS = 6


def _percentiles(samples: list[float]) -> str:
    samples.sort()
    return f"p50 {samples[len(samples) // 2]:.2f} ms  p99 {samples[int(len(samples) * 0.99)]:.2f} ms"


def _time(sids: list[str], call: Callable[[str, int], object], repeat: int = 5) -> list[float]:
    out = []
    for sid in sids:
        for k in range(repeat):
            t0 = time.perf_counter()
            call(sid, k)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    parser.add_argument("--sessions", type=int, default=40, help="sessions of each kind (default 40)")
    args = parser.parse_args(argv)
    namespace = f"routing-{uuid.uuid4().hex[:8]}"
    nodes = [open_store(name, tempfile.mkdtemp(), bootstrap_servers=args.bootstrap, namespace=namespace,
                        partitions=PARTITIONS) for name in ("a", "b")]
    for node in nodes:
        node.boot()
    a = nodes[0]
    try:
        deadline = time.monotonic() + 60
        while not (a.node.owned() and nodes[1].node.owned()) and time.monotonic() < deadline:
            time.sleep(0.5)  # the group spreads the partitions over both nodes
        owned = set(a.node.owned())
        local = [f"L{i}" for i in range(100_000) if partition_for(f"L{i}", PARTITIONS) in owned][: args.sessions]
        remote = [f"R{i}" for i in range(100_000) if partition_for(f"R{i}", PARTITIONS) not in owned][: args.sessions]
        for sid in local + remote:
            a.register_session_at_this_node(sid, "u", "c", "lib", "app", "1")

        def write(sid: str, k: int) -> object:
            return a.store_message_in_outbox(sid, f"m{k}", None, None, "PUB", None, "e", "x", None)

        def read(sid: str, k: int) -> object:
            return a.get_messages_from_outbox(sid, 20)

        print(f"node a owns {sorted(owned)}; node b owns {nodes[1].node.owned()}")
        print(f"write, home node owns the partition: {_percentiles(_time(local, write))}")
        print(f"write, routed to the owner:          {_percentiles(_time(remote, write))}")
        print(f"read,  home node owns the partition: {_percentiles(_time(local, read))}")
        print(f"read,  routed to the owner:          {_percentiles(_time(remote, read))}")
    finally:
        for node in nodes:
            node.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
