"""Kafka nodes in processes of their own (`--processes`): N nodes in one process share one
interpreter lock and can never show scale-out.

Each node process opens and boots its store, reports the partitions it owns until the
ownership is stable across all of them, then runs the lifecycle workload on its own node
(S sessions, C in flight: the load grows with the nodes) and sends back its result, its
write breakdown and the CPU it used. The figures are summed (lifecycles, ops) over the
longest node's wall time. The nodes time out sessions only once all of them are there
(`timeout_sessions` is cluster-wide); a session is timed out by whichever node comes first,
so the timed-out count is the sessions not closed.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.warmup import warm_up
from bench.workload import WorkloadResult, run_workload
from csaf_events import open_store
from csaf_events.core import timings

#: Seconds the ownership must stay unchanged before the run starts.
QUIET_S = 2.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _node(index: int, options: Any, work: Path, namespace: str, partitions: int, go: Any, out: Any,
          all_there: Any) -> None:
    try:
        store = open_store(f"node-{index}", work / namespace / f"node-{index}", bootstrap_servers=options.bootstrap,
                           namespace=namespace, partitions=partitions, transaction_lanes=options.transaction_lanes,
                           kafka_config=dict(options.kafka_config))
        store.boot()
        warm_up([store], options.warmup_seconds, options.workload())
        while not go.wait(0.25):
            out.put(("owned", index, store.node.owned()))
        cpu, before = _cpu_s(), store.node.timings.snapshot()
        result = run_workload([store], options.workload(), before_timeout=lambda: all_there.wait(600))
        used = _cpu_s() - cpu
        out.put(("done", index, result, before, store.node.timings.snapshot(), used))
        store.close()
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        out.put(("failed", index, f"{type(e).__name__}: {e}"))


def _merge(results: list[WorkloadResult]) -> WorkloadResult:
    latency: dict[str, list[int]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for r in results:
        for op, samples in r.latency_ns.items():
            latency[op] += samples
        for op, n in r.errors.items():
            errors[op] += n
    first = results[0]
    return dataclasses.replace(
        first, nodes=len(results), sessions=sum(r.sessions for r in results),
        lifecycles=sum(r.lifecycles for r in results), ops=sum(r.ops for r in results),
        elapsed_s=max(r.elapsed_s for r in results),
        outbox_messages_stored=sum(r.outbox_messages_stored for r in results),
        closed=sum(r.closed for r in results),
        timed_out=sum(r.sessions for r in results) - sum(r.closed for r in results),
        phases_s={k: max(r.phases_s.get(k, 0.0) for r in results) for k in first.phases_s},
        errors=dict(errors), error_samples=[s for r in results for s in r.error_samples][:5],
        latency_ns=dict(latency))


def run_node_processes(options: Any, work: Path, namespace: str, partitions: int
                       ) -> tuple[WorkloadResult, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The merged result, the CPU used, the write breakdown, and what the report adds for
    node processes (the lifecycle benchmark makes the report of them)."""
    from bench.kafka_admin import CpuMeter, local_broker_pids

    ctx = multiprocessing.get_context("spawn")
    go, out, all_there = ctx.Event(), ctx.Queue(), ctx.Barrier(options.nodes)
    procs = [ctx.Process(target=_node, args=(i, options, work, namespace, partitions, go, out, all_there),
                         daemon=True)
             for i in range(options.nodes)]
    for p in procs:
        p.start()
    owned: dict[int, list[int]] = {}
    stable_since, settle_started = None, time.monotonic()
    try:
        while True:  # until every partition has one owner, unchanged for QUIET_S
            kind, index, *rest = out.get(timeout=120 + options.warmup_seconds)  # a node warms up first
            if kind == "failed":
                raise RuntimeError(f"node-{index} failed: {rest[0]}")
            changed = owned.get(index) != rest[0]
            owned[index] = rest[0]
            complete = len(owned) == options.nodes and sorted(p for o in owned.values() for p in o) == list(
                range(partitions))
            if not complete or changed:
                stable_since = time.monotonic() if complete else None
            elif time.monotonic() - stable_since >= QUIET_S:
                break
        settle_s = round(time.monotonic() - settle_started, 2)
        print(f"ownership: {dict(sorted(owned.items()))}; running {options.nodes} node processes", file=sys.stderr)
        cpu = CpuMeter(local_broker_pids(options.bootstrap))
        go.set()
        done: dict[int, tuple] = {}
        while len(done) < options.nodes:
            try:
                kind, index, *rest = out.get(timeout=1800)
            except queue.Empty:
                raise RuntimeError("node processes did not finish within 30 minutes") from None
            if kind == "failed":
                raise RuntimeError(f"node-{index} failed: {rest[0]}")
            if kind == "done":
                done[index] = tuple(rest)
        cpu_use = cpu.stop()
    finally:
        go.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    results = [done[i][0] for i in sorted(done)]
    merged = _merge(results)
    cpu_use["node_process_cores"] = {f"node-{i}": round(done[i][3] / done[i][0].elapsed_s, 3)
                                     for i in sorted(done) if done[i][0].elapsed_s > 0}
    breakdown = timings.breakdown(timings.merge([done[i][1] for i in done]),
                                  timings.merge([done[i][2] for i in done]), merged.elapsed_s)
    extras = {"ownership_settle_s": settle_s,
              "per_node_lifecycles_per_s": {f"node-{i}": round(done[i][0].lifecycles_per_s, 1) for i in sorted(done)}}
    return merged, cpu_use, breakdown, extras
