"""What the Prometheus metrics cost a call: the same calls on two embedded stores, one with
metrics (open_store's default) and one without (``metrics=None``: nothing wrapped).

    python -m bench.metrics_cost [--rounds 7] [--calls 20000]

Times are the calling thread's CPU time (`time.thread_time`), so the machine's other work
does not count; rounds alternate between the two stores and the fastest round of each is
kept. ``wrapper`` times the metrics' observation alone of a call that does nothing:
what counting and timing one call costs, whatever the call (two clock reads, a partition
hash, three list additions under a lock). Compare it with a call's CPU time: the reads
and writes here, and the lifecycle benchmark's CPU time per operation (``python -m bench
--json FILE``: cpu.process_cores × cpu.wall_s / workload.ops).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from csaf_events import open_store
from csaf_events.core.observe import observed
from csaf_events.ops.cli import positive_int


def _rounds(store, calls: int, sessions: list[str]) -> dict[str, float]:
    n = len(sessions)
    clock = time.thread_time
    t = clock()
    for i in range(calls):
        store.is_session_exists(sessions[i % n])
    read = (clock() - t) / calls
    writes = max(1, calls // 20)
    t = clock()
    for i in range(writes):
        store.store_message_id_in_inbox(sessions[i % n], f"m-{time.monotonic_ns()}-{i}")
    write = (clock() - t) / writes
    return {"read": read, "write": write}


class _Nothing:
    """A public call doing nothing, observed as the store's are (`csaf_events.core.observe`)."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics

    @observed
    def is_session_exists(self, session_id: str) -> None:
        return None


def _wrapper(store, calls: int) -> tuple[float, float]:
    """CPU seconds per call of a function doing nothing, bare and observed by the store's metrics."""
    def nothing(session_id: str) -> None:
        return None
    wrapped = _Nothing(store.metrics).is_session_exists
    clock = time.thread_time
    t = clock()
    for _ in range(calls):
        nothing("session-1")
    bare = (clock() - t) / calls
    t = clock()
    for _ in range(calls):
        wrapped("session-1")
    return bare, (clock() - t) / calls


def measure(rounds: int = 7, calls: int = 20000) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="csaf-metrics-cost-"))
    try:
        with open_store("with", work / "with", metrics=CollectorRegistry()) as on, \
                open_store("without", work / "without", metrics=None) as off:
            sessions = [f"session-{i}" for i in range(256)]
            for s in (on, off):
                for sid in sessions:
                    s.register_session_at_this_node(sid, "user", "conn", "bench", "App", "1.0")
            best: dict[str, dict[str, float]] = {"on": {}, "off": {}}
            for _ in range(rounds):
                for name, store in (("off", off), ("on", on)):
                    for kind, seconds in _rounds(store, calls, sessions).items():
                        best[name][kind] = min(best[name].get(kind, float("inf")), seconds)
                bare, wrapped = _wrapper(on, calls * 5)
                best["off"]["wrapper"] = min(best["off"].get("wrapper", float("inf")), bare)
                best["on"]["wrapper"] = min(best["on"].get("wrapper", float("inf")), wrapped)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out: dict[str, object] = {"rounds": rounds, "calls_per_round": calls}
    for kind in ("wrapper", "read", "write"):
        a, b = best["off"][kind] * 1e6, best["on"][kind] * 1e6
        out[kind] = {"cpu_us_per_call_off": round(a, 3), "cpu_us_per_call_on": round(b, 3),
                     "cost_us": round(b - a, 3)}
        if kind != "wrapper":
            out[kind]["cost_percent"] = round((b - a) * 100 / a, 1)
            out[kind]["wrapper_percent"] = round(out["wrapper"]["cost_us"] * 100 / a, 1)  # type: ignore[index]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--calls", type=positive_int, default=20000, metavar="N", help="reads per round (writes: N/20)")
    args = p.parse_args(argv)
    r = measure(args.rounds, args.calls)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
