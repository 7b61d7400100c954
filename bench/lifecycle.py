"""The MatsSocket lifecycle benchmark (WORKLOAD.md).

Runs `bench.workload` on a backend, then reports as JSON and as a table:
lifecycles/s, ops/s, latency p50/p99/max per operation, peak RSS, bytes on disk per
stored outbox message, the floor (the same storage work without csaf-events, see
`bench.floor`) with our ratio to it, the machine and the library versions.

Run from the repository root (it is a tool of the checkout, not part of the package)::

    python -m bench                                 # embedded, S=2000 P=1024 C=64
    python -m bench --sessions 500 --json out.json
    python -m bench --backend kafka --bootstrap localhost:9092 --nodes 3
    python -m bench --backend kafka --bootstrap localhost:9092 --takeover-events 100000
    csaf bench ...                                  # the same: the CLI runs python -m bench here

On Kafka the run also measures the Kafka floor (`bench.floor.run_kafka_floor`: the
run's records produced again by a bare transactional producer) and the takeover of a
partition (`bench.takeover`), then deletes the namespaces' topics from the broker.

Backends are functions in `BACKENDS`: ``(options) -> report dict``; each creates its
stores and hands them to `measure()`, which runs the workload on them. A benchmark
measures; it never fails because a number moved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.warmup import warm_up
from bench.workload import WorkloadConfig, WorkloadResult, run_workload
from csaf_events import CsafError, open_store
from csaf_events.core import timings
from csaf_events.ops import scheduling
from csaf_events.ops.cli import payload_size, positive_int
from csaf_events.ops.cli_ops import number
from csaf_events.ops.cli_run import run_main

#: JSON keys every report has (Kafka reports add `nodes` and `takeover_events_per_s`).
REPORT_KEYS = ("lifecycles_per_s", "ops_per_s", "latency_ms", "peak_rss_bytes", "disk_bytes_per_message",
               "floor", "machine", "versions")


@dataclass(frozen=True)
class BenchOptions:
    backend: str = "embedded"
    nodes: int = 1
    sessions: int = 2000
    concurrency: int = 64
    payload: int = 1024
    bootstrap: str | None = None
    data_dir: Path | None = None   # default: a temporary directory, removed afterwards
    floor: bool = True
    progress: bool = True
    takeover_events: int = 1_000_000  # kafka: events in the partition taken over; 0 skips it
    keep_topics: bool = False         # kafka: keep the run's topics on the broker (default: deleted)
    partitions: int | None = None     # kafka: partitions of the events topic (default: topics.yaml's)
    mint_session_ids: bool = False    # each session's id minted by its home node (`new_session_id`)
    processes: bool = False           # kafka: each node in a process of its own, S sessions and C in flight each
    transaction_lanes: int | None = None  # kafka: transactional producers per node (None: the store's default)
    kafka_config: tuple[tuple[str, str], ...] = ()  # kafka: client settings (`open_store(kafka_config=)`)
    metrics: bool = True              # the stores report Prometheus metrics (open_store's default); off: metrics=None
    warmup_s: float | None = None     # seconds of the workload run untimed before the measured run (None: WARMUP_S)

    def workload(self) -> WorkloadConfig:
        return WorkloadConfig(sessions=self.sessions, payload_bytes=self.payload, concurrency=self.concurrency,
                              mint_session_ids=self.mint_session_ids)

    @property
    def warmup_seconds(self) -> float:
        return WARMUP_S.get(self.backend, 0.0) if self.warmup_s is None else self.warmup_s


#: Seconds of the workload run untimed before the measured run, per backend. A broker just
#: started runs its request path in the JVM's interpreter until the JIT has compiled it: on
#: this project's 2-core VM the first Kafka run (40 s) on a fresh broker gave 519
#: lifecycles/s and the next ones 1,010-1,050, with the broker's C2 compiler thread busy
#: through the first run, and 10 s of warm-up were not enough. The embedded store has no JIT
#: to warm.
WARMUP_S = {"embedded": 0.0, "kafka": 60.0}


# ------------------------------------------------------------------- facts ----------

def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform()}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_bytes"] = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info.setdefault("cpu_model", platform.processor() or platform.machine())
    return info


def versions() -> dict[str, str]:
    import confluent_kafka
    import orjson

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    ck = confluent_kafka.version()
    return {
        "python": platform.python_version(),
        "csaf_events": dist("csaf-events"),
        "confluent_kafka": ck[0] if isinstance(ck, tuple) else str(ck),
        "librdkafka": confluent_kafka.libversion()[0],
        "rocksdict": dist("rocksdict"),
        "orjson": orjson.__version__,
    }


def source_revision() -> str | None:
    """The git commit of the checkout being measured (+ "-dirty" with local changes), if any."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "") if rev else None


def changed_files() -> list[str]:
    """Files of the checkout that differ from its commit (what "-dirty" covers)."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def dir_bytes(path: Path) -> int:
    """Bytes of all files under `path` (what the data directory takes on disk, WAL included)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# --------------------------------------------------------------- measuring ----------

def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="session", file=sys.stderr, disable=None, leave=False)


def measure(stores: Sequence, options: BenchOptions) -> tuple[WorkloadResult, dict[str, Any]]:
    """Run the workload on booted `stores`; returns the result and the report's common part."""
    from bench.kafka_admin import CpuMeter, local_broker_pids
    from bench.thread_cpu import ThreadCpu, per_call

    warmup = warm_up(stores, options.warmup_seconds, options.workload())
    bar = _progress_bar(options.sessions, options.progress, f"{options.backend} x{len(stores)}")
    rss_before = current_rss_bytes()
    cpu = CpuMeter(local_broker_pids(options.bootstrap) if options.backend == "kafka" and options.bootstrap else [])
    threads = ThreadCpu()
    before = timings.merge([s.node.timings.snapshot() for s in stores])
    try:
        result = run_workload(stores, options.workload(), progress=bar.update if bar is not None else None)
    finally:
        cpu_use = cpu.stop()
        by_thread = threads.stop()
        if bar is not None:
            bar.close()
    after = timings.merge([s.node.timings.snapshot() for s in stores])
    report = report_of(result, options, cpu_use, timings.breakdown(before, after, result.elapsed_s))
    callers = by_thread.get("callers")
    if result.caller_cpu_s and callers:  # measured by each calling thread itself: exact, where /proc
        seen = callers[0] + callers[1]   # loses the last moments of a pool's threads; /proc's split
        share = callers[1] / seen if seen else 0.0
        callers[0], callers[1] = result.caller_cpu_s * (1 - share), result.caller_cpu_s * share
    report["cpu_cost"]["threads_ms_per_call"] = per_call(by_thread, result.ops)
    report["rss_before_bytes"] = rss_before
    report["warmup"] = warmup
    return result, report


def report_of(result: WorkloadResult, options: BenchOptions, cpu_use: dict[str, Any],
              breakdown: dict[str, Any]) -> dict[str, Any]:
    """The report's common part for a finished run."""
    report: dict[str, Any] = {
        "backend": options.backend,
        "metrics": options.metrics,
        "lifecycles_per_s": round(result.lifecycles_per_s, 1),
        "ops_per_s": round(result.ops_per_s, 1),
        "latency_ms": {op: {k: round(v, 3) for k, v in d.items() if k != "count"}
                       for op, d in result.latency_ms().items()},
        "latency_counts": {op: d["count"] for op, d in result.latency_ms().items()},
        "peak_rss_bytes": peak_rss_bytes(),
        "workload": {"sessions": result.sessions, "payload_bytes": options.payload,
                     "concurrency": options.concurrency, "mint_session_ids": options.mint_session_ids,
                     "inbox_messages": result.config.inbox_messages,
                     "outbox_messages": result.config.outbox_messages, "lifecycles": result.lifecycles,
                     "ops": result.ops, "elapsed_s": round(result.elapsed_s, 3),
                     "outbox_messages_stored": result.outbox_messages_stored,
                     "closed": result.closed, "timed_out": result.timed_out,
                     "phases_s": {k: round(v, 3) for k, v in result.phases_s.items()}},
        "write_breakdown": breakdown,
        "errors": result.errors,
        "cpu": cpu_use,
    }
    if result.error_samples:
        report["error_samples"] = result.error_samples
    report["cpu_cost"] = cpu_cost(cpu_use, result, breakdown)
    return report


def cpu_cost(cpu_use: dict[str, Any], result: WorkloadResult, breakdown: dict[str, Any]) -> dict[str, Any]:
    """CPU per unit of work, to size a machine with: the node processes' ms per store call
    and the broker's ms per transaction (what a rate needs is rate x this)."""
    out: dict[str, Any] = {}
    node_cores = (sum(cpu_use["node_process_cores"].values()) if cpu_use.get("node_process_cores")
                  else cpu_use.get("process_cores"))
    if node_cores is not None and result.ops:
        out["node_ms_per_call"] = round(node_cores * result.elapsed_s / result.ops * 1000, 4)
    txns = breakdown.get("transactions")
    if cpu_use.get("broker_cores") is not None and txns:
        out["broker_ms_per_transaction"] = round(cpu_use["broker_cores"] * result.elapsed_s / txns * 1000, 3)
    return out


def _with_floor(report: dict[str, Any], options: BenchOptions, work_dir: Path) -> None:
    if not options.floor:
        report["floor"] = None
        return
    from bench.floor import run_floor
    floor = run_floor(work_dir / "floor", options.workload(), sessions=report["workload"]["sessions"])
    floor["ratio"] = round(report["ops_per_s"] / floor["ops_per_s"], 4) if floor["ops_per_s"] else None
    floor["lifecycles_ratio"] = (round(report["lifecycles_per_s"] / floor["lifecycles_per_s"], 4)
                                 if floor["lifecycles_per_s"] else None)
    report["floor"] = floor


def _work_dir(options: BenchOptions) -> tuple[Path, bool]:
    if options.data_dir is not None:
        path = Path(options.data_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path, False
    return Path(tempfile.mkdtemp(prefix="csaf-bench-")), True


def run_embedded(options: BenchOptions) -> dict[str, Any]:
    if options.nodes != 1:
        raise CsafError("the embedded backend is one node; --nodes needs --backend kafka")
    work, temporary = _work_dir(options)
    data = work / f"embedded-{uuid.uuid4().hex[:8]}"
    try:
        with open_store("node-0", data, metrics=_registry(options)) as store:
            result, report = measure([store], options)
        disk = dir_bytes(data)  # after close: what stays on disk
        report["disk_bytes"] = disk
        report["disk_bytes_per_message"] = round(disk / result.outbox_messages_stored, 1) \
            if result.outbox_messages_stored else None
        _with_floor(report, options, work)
        report["data_dir"] = None if temporary else str(data)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _registry(options: BenchOptions) -> Any:
    """--metrics on: a registry of the run's own (what open_store does by default, without
    mixing runs); off: none, the store's calls are not wrapped."""
    from prometheus_client import CollectorRegistry
    return CollectorRegistry() if options.metrics else None


def _takeover(options: BenchOptions) -> dict[str, Any] | None:
    """The takeover of a partition of `options.takeover_events` events (`bench.takeover`)."""
    if options.takeover_events <= 0:
        return None
    from bench.takeover import measure_takeover as run
    return run(options.bootstrap, options.takeover_events, partitions=_partitions(options),
               payload=options.payload, keep_topics=options.keep_topics)


def _partitions(options: BenchOptions) -> int:
    from csaf_events.topics import load_topics
    return options.partitions or load_topics(None, "bench").events.partitions


#: Hook for the Kafka backend: measures the takeover of a partition on the cluster and
#: returns its report (``events_per_s`` first), or None when not measured.
measure_takeover: Callable[[BenchOptions], dict[str, Any] | None] | None = _takeover


def wait_for_stable_ownership(stores: Sequence, timeout: float = 60.0, quiet: float = 2.0) -> float | None:
    """Wait until every partition has exactly one owner among `stores` and that has not
    changed for `quiet` seconds (the group's rebalances after boot are over), so the
    benchmark measures the steady state. Returns the seconds waited, None on timeout."""
    started = time.monotonic()
    last, since = None, started
    while time.monotonic() - started < timeout:
        owned = [tuple(s.node.owned()) for s in stores]
        flat = sorted(p for o in owned for p in o)
        if flat != list(range(stores[0].partitions)):
            last, since = None, time.monotonic()
        elif owned != last:
            last, since = owned, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    print(f"warning: partition ownership not stable after {timeout:.0f}s; measuring anyway", file=sys.stderr)
    return None


def _lanes(options: BenchOptions) -> int:
    from csaf_events.kafka.transaction import DEFAULT_LANES
    return DEFAULT_LANES if options.transaction_lanes is None else options.transaction_lanes


def _run_in_this_process(options: BenchOptions, work: Path, namespace: str,
                         partitions: int) -> tuple[WorkloadResult, dict[str, Any]]:
    stores = [open_store(f"node-{i}", work / namespace / f"node-{i}", bootstrap_servers=options.bootstrap,
                         namespace=namespace, partitions=partitions, transaction_lanes=options.transaction_lanes,
                         kafka_config=dict(options.kafka_config), metrics=_registry(options))
              for i in range(options.nodes)]
    try:
        with ThreadPoolExecutor(len(stores)) as pool:  # boot together: one rebalance, not N
            list(pool.map(lambda s: s.boot(), stores))
        settle_s = wait_for_stable_ownership(stores)
        result, report = measure(stores, options)
        report["ownership_settle_s"] = settle_s
        return result, report
    finally:
        for s in stores:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001 - report the figures anyway
                print(f"warning: closing {s.node_name} failed: {e}", file=sys.stderr)


def run_kafka(options: BenchOptions) -> dict[str, Any]:
    if not options.bootstrap:
        raise CsafError("--backend kafka needs --bootstrap HOST:PORT (a running Kafka cluster)")
    from bench.kafka_admin import delete_namespace

    work, temporary = _work_dir(options)
    namespace = f"bench-{uuid.uuid4().hex[:10]}"
    partitions = _partitions(options)
    try:
        if options.processes:
            from bench.processes import run_node_processes
            result, cpu_use, breakdown, extras = run_node_processes(options, work, namespace, partitions)
            report = {**report_of(result, options, cpu_use, breakdown), **extras}
        else:
            result, report = _run_in_this_process(options, work, namespace, partitions)
        disk = dir_bytes(work / namespace)
        report["nodes"] = options.nodes
        report["processes"] = options.processes
        report["transaction_lanes"] = _lanes(options)
        report["kafka_config"] = dict(options.kafka_config)
        report["namespace"] = namespace
        report["partitions"] = partitions
        report["disk_bytes"] = disk
        report["disk_bytes_per_message"] = round(disk / result.outbox_messages_stored, 1) \
            if result.outbox_messages_stored else None
        report["disk_note"] = "the nodes' local projections only; the brokers' log segments are not counted"
        report["floor"] = None
        if options.floor:
            from bench.floor import run_kafka_floor
            floor = run_kafka_floor(options.bootstrap, namespace, partitions, ops=result.ops,
                                    lifecycles=result.lifecycles)
            our_events_per_s = floor["events"] / result.elapsed_s if result.elapsed_s else 0.0
            floor["ratio"] = round(report["ops_per_s"] / floor["ops_per_s"], 4) if floor["ops_per_s"] else None
            floor["lifecycles_ratio"] = (round(report["lifecycles_per_s"] / floor["lifecycles_per_s"], 4)
                                         if floor["lifecycles_per_s"] else None)
            b = floor["batched"]
            b["our_events_per_s"] = round(our_events_per_s, 1)
            b["ratio"] = round(our_events_per_s / b["events_per_s"], 4) if b["events_per_s"] else None
            report["floor"] = floor
            report["log_bytes_per_message"] = round(floor["log_bytes"] / result.outbox_messages_stored, 1) \
                if result.outbox_messages_stored else None
        takeover = measure_takeover(options) if measure_takeover is not None else None
        if takeover:
            takeover["peak_rss_bytes_after"] = peak_rss_bytes()
        report["takeover"] = takeover
        report["takeover_events_per_s"] = takeover["events_per_s"] if takeover else None
    finally:
        if not options.keep_topics:
            delete_namespace(options.bootstrap, namespace)
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return report


BACKENDS: dict[str, Callable[[BenchOptions], dict[str, Any]]] = {
    "embedded": run_embedded,
    "kafka": run_kafka,
}


def run_benchmark(options: BenchOptions) -> dict[str, Any]:
    """Run one benchmark and return its report (the JSON document)."""
    try:
        backend = BACKENDS[options.backend]
    except KeyError:
        raise CsafError(f"unknown backend {options.backend!r}; one of {', '.join(BACKENDS)}") from None
    started = time.time()
    report = backend(options)
    report["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    report["machine"] = machine()
    report["versions"] = versions()
    report["revision"] = source_revision()
    report["changed_files"] = changed_files()
    return report


# ----------------------------------------------------------------- output -----------

def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f} MiB"


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 30):.1f} GiB"


def format_report(report: dict[str, Any]) -> str:
    """The report as a readable table."""
    m, v, w = report["machine"], report["versions"], report["workload"]
    lines = [
        f"csaf-events lifecycle benchmark — backend {report['backend']}"
        + (f", {report['nodes']} node(s)" if "nodes" in report else "")
        + (" in processes of their own" if report.get("processes") else "")
        + (f", {report['transaction_lanes']} transaction lane(s) per node" if "transaction_lanes" in report else "")
        + (", metrics off" if report.get("metrics") is False else ", metrics on")
        + (f", pinned to CPU(s) {','.join(map(str, report['cpus']))}" if report.get("cpus") else "")
        + (", SCHED_BATCH" if report.get("batch_scheduling") else ""),
        f"machine: {m.get('cpu_model')}, {m.get('cores')} cores, {_gib(m.get('memory_bytes'))} memory; "
        f"python {v['python']}, rocksdict {v['rocksdict']}, orjson {v['orjson']}, "
        f"confluent-kafka {v['confluent_kafka']} (librdkafka {v['librdkafka']})",
        f"workload: {w['sessions']} sessions, {w['payload_bytes']} B payloads, concurrency {w['concurrency']}, "
        f"K={w['inbox_messages']} M={w['outbox_messages']}"
        + (", session ids minted by their home node" if w.get("mint_session_ids") else "")
        + f"; {w['ops']} ops in {w['elapsed_s']:.2f} s"
        + (f" after a warm-up of {report['warmup']['seconds']:g} s" if report.get("warmup") else "")
        + (" (steps 1-5 {sessions:.2f} s, closes {close:.2f} s, timeout {timeout:.2f} s)".format(**w["phases_s"])
           if w.get("phases_s") else ""),
        "",
        f"  {'lifecycles/s':<26}{report['lifecycles_per_s']:>12,.0f}",
        f"  {'ops/s':<26}{report['ops_per_s']:>12,.0f}",
    ]
    floor = report.get("floor")
    if floor:
        what = " (1 txn/command)" if floor.get("kind") == "kafka" else ""
        lines += [f"  {'floor ops/s' + what:<26}{floor['ops_per_s']:>12,.0f}",
                  f"  {'ratio (ours / floor)':<26}{floor['ratio']:>12.3f}"]
        if floor.get("kind") == "kafka":
            b = floor["batched"]
            lines += [f"  {'events/s (ours)':<26}{b['our_events_per_s']:>12,.0f}",
                      f"  {'floor events/s, batched':<26}{b['events_per_s']:>12,.0f}",
                      f"  {'ratio to batched floor':<26}{b['ratio']:>12.3f}"]
    lines += [f"  {'peak RSS':<26}{_mib(report['peak_rss_bytes']):>12}",
              f"  {'disk bytes / message':<26}{report['disk_bytes_per_message'] or 0:>12,.0f}"]
    if "takeover_events_per_s" in report:
        t = report["takeover_events_per_s"]
        lines.append(f"  {'takeover events/s':<26}{'not measured' if t is None else f'{t:,.0f}':>12}"
                     + (f"  ({report['takeover']['events']:,} events in {report['takeover']['restore_s']:.1f} s)"
                        if t is not None else ""))
    cpu = report.get("cpu") or {}
    for node, cores in (cpu.get("node_process_cores") or {}).items():
        lines.append(f"  {'CPU of ' + node:<26}{cores:>9.2f} cores")
    if cpu.get("process_cores") is not None:
        lines.append(f"  {'CPU during the run':<26}{cpu['process_cores']:>9.2f} cores this process"
                     + (f", {cpu['broker_cores']:.2f} the broker" if cpu.get("broker_cores") is not None else "")
                     + (f", {cpu['machine_busy_cores']:.2f} the machine (of {report['machine'].get('cores')})"
                        if cpu.get("machine_busy_cores") is not None else ""))
    cost = report.get("cpu_cost") or {}
    if cost:
        lines.append(f"  {'CPU per unit of work':<26}"
                     + ", ".join(([f"node {cost['node_ms_per_call']:.3f} ms per call"] if "node_ms_per_call" in cost
                                  else [])
                                 + ([f"broker {cost['broker_ms_per_transaction']:.2f} ms per transaction"]
                                    if "broker_ms_per_transaction" in cost else [])))
    by_thread = cost.get("threads_ms_per_call") or {}
    if by_thread:
        lines += ["", f"  {'CPU per call, by thread':<36}{'ms':>8}{'kernel ms':>11}{'waits':>8}{'preempted':>11}"]
        for role, t in by_thread.items():
            if t["ms"] >= 0.0005 or t["waits"] >= 0.01:
                lines.append(f"    {role:<34}{t['ms']:>8.3f}{t['system_ms']:>11.3f}{t['waits']:>8.2f}"
                             f"{t['preemptions']:>11.2f}")
        lines.append(f"    {'(all)':<34}{sum(t['ms'] for t in by_thread.values()):>8.3f}"
                     f"{sum(t['system_ms'] for t in by_thread.values()):>11.3f}"
                     f"{sum(t['waits'] for t in by_thread.values()):>8.2f}"
                     f"{sum(t['preemptions'] for t in by_thread.values()):>11.2f}")
    if report.get("errors"):
        lines.append(f"  ERRORS (figures are not comparable): {report['errors']}")
        lines += [f"    {sample}" for sample in report.get("error_samples", [])[:3]]
    b = report.get("write_breakdown") or {}
    if b.get("ms_per_write"):
        lines += ["", "  where a write's time goes (mean ms per write):"]
        lines += [f"    {phase:<24}{ms:>10.3f}" for phase, ms in b["ms_per_write"].items()]
        if b.get("transactions"):
            lines.append(f"    {b['transactions']:,} transactions ({b['transactions_per_s']:,.0f}/s, "
                         f"{b['failed_transactions']} failed); per transaction {b['commands_per_transaction']} "
                         f"commands, {b['records_per_transaction']} records, {b['partitions_per_transaction']} "
                         f"partitions")
    lines += ["", f"  {'latency (ms)':<44}{'count':>8}{'p50':>9}{'p99':>9}{'max':>9}"]
    for op, d in report["latency_ms"].items():
        lines.append(f"  {op:<44}{report.get('latency_counts', {}).get(op, 0):>8}"
                     f"{d['p50']:>9.3f}{d['p99']:>9.3f}{d['max']:>9.2f}")
    return "\n".join(lines)


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (`csaf bench` passes its arguments on to `python -m bench`)."""
    p.add_argument("--backend", choices=("embedded", "kafka"), default="embedded",
                   help="the store to measure (default embedded)")
    p.add_argument("--nodes", type=positive_int, default=1, metavar="N",
                   help="number of nodes (kafka only; default 1)")
    p.add_argument("--sessions", type=positive_int, default=2000, metavar="S", help="sessions (default 2000)")
    p.add_argument("--concurrency", type=positive_int, default=64, metavar="C",
                   help="sessions in flight at once (default 64)")
    p.add_argument("--payload", type=payload_size, default=1024, metavar="P",
                   help="bytes per JSON payload (default 1024)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (kafka backend)")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="where to put the stores' data (default: a temporary directory, removed afterwards)")
    p.add_argument("--no-floor", action="store_true", help="skip measuring the floor")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--takeover-events", type=int, default=1_000_000, metavar="N",
                   help="kafka: events in the partition a fresh node takes over (default 1,000,000; 0 skips)")
    p.add_argument("--partitions", type=int, metavar="P",
                   help="kafka: partitions of the namespace's topics (default: topics.yaml's)")
    p.add_argument("--keep-topics", action="store_true",
                   help="kafka: keep the run's topics on the broker (default: deleted after the run)")
    p.add_argument("--lanes", type=positive_int, metavar="L",
                   help="kafka: transactional producers per node (default: the store's, 1)")
    p.add_argument("--kafka-config", action="append", default=[], type=_setting, metavar="KEY=VALUE",
                   help="kafka: a librdkafka setting for the nodes' clients (repeatable)")
    p.add_argument("--processes", action="store_true",
                   help="kafka: run each node in a process of its own, each with S sessions and C in flight "
                        "(default: all nodes in this process, S and C in all)")
    p.add_argument("--metrics", choices=("on", "off"), default="on",
                   help="the stores report Prometheus metrics (on, open_store's default) or not (off: calls "
                        "not wrapped); run both to see what metrics cost a call")
    p.add_argument("--warmup", type=number(float, lambda n: n >= 0, "0 or more seconds"), metavar="SECONDS",
                   help="seconds of the workload run untimed before the measured run (default: 60 for kafka, "
                        "whose broker JIT-compiles its request path in its first minutes; 0 for embedded)")
    scheduling.add_arguments(p, "this process (the nodes in it and the calling threads)")
    p.add_argument("--mint-session-ids", action="store_true",
                   help="each session's id minted by its home node, in a partition it owns "
                        "(default: ids that ignore ownership)")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    if args.processes and args.metrics == "off":
        raise CsafError("--metrics off is not passed to node processes (--processes); run in this process")
    if args.backend == "kafka" and not args.bootstrap:
        raise CsafError("--backend kafka needs --bootstrap HOST:PORT (a running Kafka cluster)")
    if args.processes and args.backend != "kafka":
        raise CsafError("--processes needs --backend kafka")
    if args.backend == "embedded" and args.nodes != 1:
        raise CsafError(f"the embedded backend is a single node; use --backend kafka for --nodes {args.nodes}")
    return BenchOptions(backend=args.backend, nodes=args.nodes, sessions=args.sessions,
                        concurrency=args.concurrency, payload=args.payload, bootstrap=args.bootstrap,
                        data_dir=args.data_dir, floor=not args.no_floor, progress=not args.no_progress,
                        takeover_events=args.takeover_events, keep_topics=args.keep_topics,
                        partitions=args.partitions, mint_session_ids=args.mint_session_ids,
                        processes=args.processes, transaction_lanes=args.lanes, metrics=args.metrics == "on",
                        warmup_s=args.warmup, kafka_config=tuple(args.kafka_config))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed arguments; prints the table, writes --json.

    Exit code 1 if store calls failed (the figures then do not describe the workload);
    never because of the figures themselves."""
    scheduling.apply(args)  # before any thread starts: every thread of the process inherits it
    report = run_benchmark(options_from_args(args))
    report["cpus"] = sorted(args.cpus) if args.cpus else None
    report["batch_scheduling"] = args.batch_scheduling
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON report written to {args.json}")
    return 1 if report.get("errors") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_main(lambda: run_from_args(parser.parse_args(argv)), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
