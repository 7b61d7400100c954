"""Faults on a real 3-broker Kafka cluster, with every node in its own process (issue 9).

Four faults, each under load from several node processes (`node_process.FaultLoad`: all
nodes write to the same sessions, so calls are decided locally or routed, and the nodes
race on the same inbox ids; node a also writes to every partition every 0.25 s, to time
each partition's gaps):

1. one broker (the owners group's coordinator) SIGKILLed under load and restarted 15 s
   later; a fourth node boots while it is down;
2. node c SIGKILLed with a transaction open (so whoever takes over its partition must wait
   that transaction out, up to its 10 s timeout), and node b SIGKILLed 8 s later, while
   the takeover of c's partitions is under way;
3. a slow takeover: nodes opened with `request_timeout=5`, shorter than the open
   transaction a new owner has to wait out; c SIGKILLed with a transaction open;
4. nodes joining and leaving every ~10 s under routed load: c joins, c closes cleanly, d
   joins, d is SIGKILLed with a transaction open, e joins.

"With a transaction open" is arranged, not hoped for: the node is frozen (SIGSTOP) until
the group coordinator reports its partitions' offsets unstable twice, half a second apart
(`Scenario.kill_in_transaction`).

Every test asserts, after the fault:
- nothing acknowledged is lost: every acknowledged outbox message (not completed since) is
  in its session's outbox and every inbox id some caller won is stored, read on a node
  that survived;
- no id accepted twice: at most one caller won each raced inbox id, and the events topic
  holds at most one `InboxStored` per inbox id and one `OutboxStored` per outbox id;
- no command executed after its caller's deadline: an outbox message (or a raced inbox id)
  whose store failed for its caller at wall time T, if it is in the events topic at all,
  was decided at or before T (its `stored_timestamp`); and an error that said
  `may_have_written=False` wrote nothing;
- every partition decides writes again within `RECOVERY_BOUND_S` of the end of the fault:
  a probe on a surviving node retries a write on a session of every partition and times
  the first success;
- every failure a caller saw (load, probe, boot) was a `CsafError`;
- and, where nodes are killed (2, 3), the partitions they did not own keep deciding writes:
  no gap over `UNAFFECTED_BOUND_S` from the kill on.

The figures (errors seen, per-partition time without a successful write, recovery and
takeover times) are printed and written to `faults-figures.json` in the pytest tmp dir
(the path is printed). Run them alone with `pytest -m faults -s`.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from brokers import LocalCluster, local_cluster_for_tests, unique_namespace
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_fixtures import delete_namespace_topics
from node_process import NodeProcess

from csaf_events.core.events import decode_state, header
from csaf_events.core.partitioning import partition_for

pytestmark = [pytest.mark.kafka, pytest.mark.faults, pytest.mark.timeout(420)]

PARTITIONS = 6
#: After a fault ends, every partition must decide a write again within this many seconds.
#: A node that dies may leave a transaction open; a new owner waits it out (the
#: transaction timeout, 10 s) after the group noticed the death (session timeout, 6 s).
RECOVERY_BOUND_S = float(os.environ.get("CSAF_FAULTS_BOUND_S", "30"))
#: A node kill must not stall the partitions it did not own (issue 9, item 2: a takeover
#: does not stall what the new owner already owns): no gap between decided writes on them
#: longer than this, from the kill to the end of the load. Measured 0.4-6.4 s since owners
#: answer routed commands after their commit, outside it; 0.6-12.8 s when the answers went
#: inside the transactions and a killed node's open one held back every caller's reply
#: partition (docs/operations.md, Faults).
UNAFFECTED_BOUND_S = float(os.environ.get("CSAF_FAULTS_UNAFFECTED_BOUND_S", "20"))
#: How long the probe keeps trying (past the bound, so a miss is measured, not just seen).
PROBE_MAX_S = RECOVERY_BOUND_S + 15
#: How long the read-back of acknowledged writes may take (a partition that cannot be read
#: is reported as such, not waited for).
CHECK_MAX_S = 45.0
SESSION_TIMEOUT_S = 6.0  # the owners group's session.timeout.ms
SESSIONS_PER_PARTITION = 3
#: Load per node: threads calling in a loop (each call waits for its answer), pause between
#: iterations. A call costs 0.3-0.9 s on a 3-broker cluster on 2 cores, mostly waiting.
LOAD_THREADS = int(os.environ.get("CSAF_FAULTS_THREADS", "4"))
LOAD_PAUSE_S = 0.01


def now_ms() -> float:
    return time.time() * 1000


# ------------------------------------------------------------------------ fixtures --

@pytest.fixture(scope="module")
def kafka3() -> LocalCluster:
    """One 3-broker kafka-local cluster for the whole file (each test has its own namespace)."""
    cluster = local_cluster_for_tests(3)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def all_brokers_up(kafka3: LocalCluster) -> None:
    """Each test starts with every broker up, whatever the one before left behind."""
    kafka3.ensure_all_up()


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory):
    """Figures of every test of the file, written to one JSON file at the end."""
    path = tmp_path_factory.mktemp("faults") / "faults-figures.json"
    data: dict[str, Any] = {"recovery_bound_s": RECOVERY_BOUND_S, "partitions": PARTITIONS, "tests": {}}
    yield data, path
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"\n[faults] all figures: {path}")


# ------------------------------------------------------------------------- helpers --

def sessions_covering(prefix: str, per_partition: int) -> list[str]:
    """`per_partition` session ids in every partition, interleaved across partitions."""
    by_p: dict[int, list[str]] = defaultdict(list)
    i = 0
    while min((len(by_p[p]) for p in range(PARTITIONS)), default=0) < per_partition:
        sid = f"{prefix}{i}"
        if len(by_p[partition_for(sid, PARTITIONS)]) < per_partition:
            by_p[partition_for(sid, PARTITIONS)].append(sid)
        i += 1
    return [by_p[p][k] for k in range(per_partition) for p in range(PARTITIONS)]


def in_parallel(*calls) -> list:
    results: list = [None] * len(calls)

    def run(i: int, fn) -> None:
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - the caller looks at it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def read_events(bootstrap: str, topic: str, timeout: float = 60.0) -> list[tuple[int, str, dict | None, dict]]:
    """Every committed record of the events topic: (partition, type, state or None, headers)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"faults-reader-{unique_namespace()}",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    out = []
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < PARTITIONS:
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} did not reach the end of partitions "
                                     f"{sorted(set(range(PARTITIONS)) - done)} in {timeout:.0f}s")
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done.add(m.partition())
                continue
            h = {k: v.decode() if v is not None else None for k, v in (m.headers() or ())}
            out.append((m.partition(), header(m.headers(), "type") or "",
                        decode_state(m.value()) if m.value() is not None else None, h))
    finally:
        c.close()
    return out


def load_records(path: Path) -> list[dict]:
    """The lines of a records file (`begin` lines included)."""
    recs = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:  # a line cut by a SIGKILL
                pass
    return recs


def _call_key(r: dict) -> tuple:
    return r["node"], r["op"], r["sid"], r["id"], r["t0"]


def _log_ms(line: str) -> float | None:
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1000
    except ValueError:
        return None


_TOOK_OVER = re.compile(r"took over partition (\d+)\b(.*)")
_SETTLED = re.compile(r"owns partitions \[([\d, ]*)\] now \(previous owners settled in ([\d.]+)s\)")


def log_findings(path: Path, since_ms: float) -> dict:
    """What a node's log says after `since_ms`: its takeovers (as logged) and its errors."""
    takeovers, settled, errors, warnings = [], [], [], Counter()
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        t = _log_ms(line)
        if t is not None and t < since_ms:
            continue
        if t is not None and (m := _TOOK_OVER.search(line)):
            # "...: applied N events from the log in Ts", or "...: previous owner settled in Ss,
            # N events restored in Ts (attempt A)"
            rest = m.group(2)
            tk = {"partition": int(m.group(1)), "at_ms": t}
            if times := re.findall(r"in ([\d.]+)s", rest):
                tk["restore_s"] = float(times[-1])
            if x := re.search(r"settled in ([\d.]+)s", rest):
                tk["settled_s"] = float(x.group(1))
            if x := re.search(r"attempt (\d+)", rest):
                tk["attempt"] = int(x.group(1))
            takeovers.append(tk)
        if t is not None and (m := _SETTLED.search(line)):
            settled.append({"partitions": m.group(1), "settled_s": float(m.group(2)), "at_ms": t})
        if t is None:  # a traceback's lines: keep what names the error
            if line.startswith("Exception in thread") or re.match(r"^[\w.]+(Error|Exception)\b", line):
                errors.append(line[:240])
            continue
        if " ERROR " in line or " CRITICAL " in line:
            errors.append(line[24:260])
        elif " WARNING " in line:
            warnings[re.sub(r"\d+", "N", line[24:140])] += 1
    return {"takeovers": takeovers, "settled": settled, "errors": errors[:8], "error_lines": len(errors),
            "warnings": dict(warnings.most_common(6))}


# --------------------------------------------------------------------- the scenario --

class Scenario:
    """Node processes of one test on the shared cluster, their load, and the checks."""

    def __init__(self, name: str, cluster: LocalCluster, tmp_path: Path, request_timeout: float = 20.0) -> None:
        self.name = name
        self.cluster = cluster
        self.tmp = tmp_path
        self.request_timeout = request_timeout
        self.namespace = unique_namespace(f"f{name[:6]}")
        self.nodes: dict[str, NodeProcess] = {}
        self.gone: set[str] = set()
        self.record_files: list[Path] = []
        self.sids = sessions_covering("s", SESSIONS_PER_PARTITION)
        self.beat_sids = dict(enumerate(sessions_covering("beat", 1)))
        self.timeline: list[tuple[float, str]] = []
        self.t_start = now_ms()
        self.boot_failures: list[dict] = []
        self.boot_s: dict[str, float] = {}
        self.owned_at: dict[str, Any] = {}
        self.load_stop_ms: float | None = None
        self.figures: dict[str, Any] = {"namespace": self.namespace, "request_timeout_s": request_timeout}
        self.problems: list[str] = []

    # -- nodes --------------------------------------------------------------------
    def mark(self, what: str) -> float:
        t = now_ms()
        self.timeline.append((t, what))
        print(f"[faults {self.name}] +{(t - self.t_start) / 1000:6.1f}s {what}", flush=True)
        return t

    def first(self, *names: str) -> list[NodeProcess | None]:
        """The first nodes of the namespace: one boots alone (it creates the topics), then
        the others together."""
        return self.start(names[0]) + self.start(*names[1:])

    def start(self, *names: str) -> list[NodeProcess | None]:
        """Start nodes in parallel; a node whose boot fails is recorded (class, CsafError?)."""
        def one(name: str) -> NodeProcess:
            d = self.tmp / name
            d.mkdir(exist_ok=True)
            t0 = time.monotonic()
            node = NodeProcess(name, d, self.cluster.bootstrap, self.namespace, PARTITIONS,
                               boot_timeout=120, request_timeout=self.request_timeout)
            self.boot_s[name] = round(time.monotonic() - t0, 2)
            return node

        results = in_parallel(*(lambda n=n: one(n) for n in names))
        out = []
        for name, r in zip(names, results, strict=True):
            if isinstance(r, NodeProcess):
                self.nodes[name] = r
                self.gone.discard(name)
                out.append(r)
                self.mark(f"node {name} booted in {self.boot_s[name]:.1f}s")
            else:
                kind = getattr(r, "kind", None) or type(r).__name__
                csaf = getattr(r, "csaf", None)
                self.boot_failures.append({"node": name, "error": kind, "csaf": csaf, "message": str(r)[:300]})
                self.mark(f"node {name} failed to boot: {r}")
                if csaf is not True:
                    self.problems.append(f"boot() of node {name} failed with {kind}, not a CsafError: {r}")
                out.append(None)
        return out

    def alive(self) -> list[NodeProcess]:
        return [n for name, n in self.nodes.items() if name not in self.gone and n.proc.poll() is None]

    def survivor(self, preferred: NodeProcess) -> NodeProcess:
        """`preferred` if its process still runs, else another live node (a crash is reported
        by `crashes`)."""
        if preferred.proc.poll() is None:
            return preferred
        self.crashes()
        others = self.alive()
        if not others:
            pytest.fail(f"{self.name}: no node process left alive:\n" + "\n".join(self.problems), pytrace=False)
        self.mark(f"node {preferred.name} is gone; using {others[0].name} instead")
        return others[0]

    def crashes(self) -> None:
        """A node process that exited without the test killing or closing it is a problem."""
        for name, n in self.nodes.items():
            code = n.proc.poll()
            if name in self.gone or code is None:
                continue
            self.gone.add(name)
            tail = [line for line in n.log_path.read_text(errors="replace").splitlines()[-40:]
                    if "Assertion" in line or "Error" in line or "Traceback" in line or "Fatal" in line]
            self.figures.setdefault("crashed", {})[name] = {"exit_code": code, "log": tail[-5:]}
            self.problems.append(f"node process {name} died by itself (exit code {code}); its log ends with "
                                 f"{tail[-3:]}")
            self.mark(f"node {name} died by itself (exit code {code})")

    def owned(self, node: NodeProcess) -> list[int] | None:
        try:
            return node.call("owned", timeout=10)
        except Exception:  # noqa: BLE001 - a figure only; the adapter may not offer it
            return None

    def wait_spread(self, timeout: float = 90.0) -> None:
        """Every live node owns partitions and together they own each one exactly once."""
        deadline = time.monotonic() + timeout
        while True:
            owned = [self.owned(n) for n in self.alive()]
            if any(o is None for o in owned):  # cannot ask: give the group time instead
                time.sleep(SESSION_TIMEOUT_S)
                return
            flat = sorted(p for o in owned for p in o)
            if all(owned) and flat == list(range(PARTITIONS)):
                self.mark(f"partitions spread: {dict(zip([n.name for n in self.alive()], owned, strict=False))}")
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the partitions did not spread over the nodes in {timeout:.0f}s: {owned}")
            time.sleep(0.5)

    def register_all(self, node: NodeProcess) -> None:
        for sid in self.sids:
            node.call("register_session_at_this_node", sid, "u", "c-setup", "lib", "app", "1", timeout=120)

    def load(self, node: NodeProcess, threads: int = LOAD_THREADS, beats: bool = False) -> None:
        """Start the load on `node`; `beats`: also one write per partition every 0.25 s (on
        a node that survives the test, to time each partition's gap without a write)."""
        path = self.tmp / f"records-{node.name}.jsonl"
        if path not in self.record_files:
            self.record_files.append(path)
        spec = {"sids": self.sids, "node": node.name, "threads": threads, "pause": LOAD_PAUSE_S,
                "records": str(path)}
        if beats:
            spec["beats"] = {str(p): sid for p, sid in self.beat_sids.items()}
            spec["beat"] = 0.25
        node.call("fault_load", spec)

    def kill(self, name: str) -> float:
        owned = self.owned(self.nodes[name])
        self.owned_at[name] = owned
        self.nodes[name].kill()
        self.gone.add(name)
        return self.mark(f"node {name} SIGKILLed (owned {owned})")

    def kill_in_transaction(self, name: str, tries: int = 80) -> float:
        """SIGKILL `name` while it has a transaction open that carries command offsets of a
        partition it owns: the case where a new owner has to wait the transaction out (up to
        its 10 s timeout) before it may restore. Found by freezing the node (SIGSTOP) and
        asking the group coordinator for its partitions' offsets with require_stable: an
        open transaction's offsets answer UNSTABLE_OFFSET_COMMIT. If none is caught in
        `tries`, the node is killed anyway (the figures say so)."""
        node = self.nodes[name]
        owned = self.owned(node)
        self.owned_at[name] = owned
        group, topic = f"{self.namespace}.owners", f"{self.namespace}.commands"
        admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap})
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p)
                                                        for p in (owned or range(PARTITIONS))])]
        def unstable() -> set[int]:
            try:
                answer = admin.list_consumer_group_offsets(request, require_stable=True,
                                                           request_timeout=2)[group].result(5)
            except Exception:  # noqa: BLE001 - then try again
                return set()
            return {tp.partition for tp in answer.topic_partitions
                    if tp.error is not None and tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT}

        caught: list[int] = []
        for attempt in range(tries):  # noqa: B007 - read after the loop
            node.proc.send_signal(signal.SIGSTOP)
            first = unstable()
            if first:
                # still pending half a second later, with the node frozen: the transaction is
                # open, not one whose commit the coordinator is completing
                time.sleep(0.5)
                caught = sorted(first & unstable())
                if caught:
                    break
            node.proc.send_signal(signal.SIGCONT)
            time.sleep(random.uniform(0.03, 0.15))
        node.kill()
        self.gone.add(name)
        self.figures.setdefault("killed_in_transaction", {})[name] = caught or None
        how = (f"with a transaction open on partitions {caught} (try {attempt + 1})" if caught
               else f"(no open transaction caught in {tries} tries)")
        return self.mark(f"node {name} SIGKILLed {how}; it owned {owned}")

    def close(self, name: str) -> float:
        """A clean close with the node's load still calling (calls in flight are left unknown)."""
        node = self.nodes[name]
        node.close()
        self.gone.add(name)
        return self.mark(f"node {name} closed")

    def stop_loads(self) -> None:
        self.load_stop_ms = now_ms()
        self.crashes()
        alive = self.alive()
        # calls still hanging after 10 s are left in flight (their outcome unknown) rather than waited for
        left = in_parallel(*(lambda n=n: n.call("stop_fault_load", 10, timeout=40) for n in alive))
        self.mark(f"loads stopped (calls still in flight: {dict(zip([n.name for n in alive], left, strict=False))})")

    def teardown(self) -> None:
        for node in self.nodes.values():
            node.kill()
        try:  # fewer partitions for the brokers to recover when a later test restarts one
            delete_namespace_topics(self.cluster.bootstrap, self.namespace)
        except Exception:  # noqa: BLE001 - best effort
            pass

    # -- measurements -------------------------------------------------------------
    def probe(self, node: NodeProcess, fault_end: float) -> dict:
        """Time from `fault_end` until a write succeeds on every partition (through `node`)."""
        node = self.survivor(node)
        sids = {str(p): next(f"probe-{p}-{i}" for i in range(100_000)
                             if partition_for(f"probe-{p}-{i}", PARTITIONS) == p) for p in range(PARTITIONS)}
        started = now_ms()
        result = node.call("probe", sids, PROBE_MAX_S, timeout=PROBE_MAX_S + 60)
        lag = (started - fault_end) / 1000
        recovery = {}
        for p, r in result.items():
            recovery[int(p)] = None if r["ok_s"] is None else round(r["ok_s"] + lag, 2)
            for msg in r["noncsaf"]:
                self.problems.append(f"probe on partition {p}: a non-CsafError reached the caller: {msg}")
        self.mark(f"probe through {node.name}: seconds to a decided write per partition {recovery}")
        self.figures["recovery_s"] = recovery
        self.figures["recovery_max_s"] = max((v for v in recovery.values() if v is not None), default=None)
        self.figures["probe_errors"] = {p: r["errors"] for p, r in result.items() if r["errors"]}
        self.probe_ok = {int(p): r.get("ok_at") for p, r in result.items()}
        slow = {p: v for p, v in recovery.items() if v is None or v > RECOVERY_BOUND_S}
        if slow:
            self.problems.append(
                f"partitions that decided no write within {RECOVERY_BOUND_S:.0f}s of the end of the fault "
                f"(None: not within the probe's {PROBE_MAX_S:.0f}s): {slow}")
        return recovery

    def verify(self, survivor: NodeProcess, fault_start: float, fault_end: float,
               takeover_of: list[int] | None = None, unaffected: list[int] | None = None) -> None:
        """All the checks of the module docstring, and the figures."""
        time.sleep(1.0)
        survivor = self.survivor(survivor)
        self.crashes()
        lines = [r for f in self.record_files for r in load_records(f)]
        records = [r for r in lines if not r.get("begin")]
        ended = {_call_key(r) for r in records}
        in_flight = [r for r in lines if r.get("begin") and _call_key(r) not in ended]  # their node died
        events = read_events(self.cluster.bootstrap, f"{self.namespace}.events")
        self.mark(f"{len(records)} calls recorded, {len(events)} events in the log")
        f = self.figures
        rel = lambda t: round((t - self.t_start) / 1000, 2)  # noqa: E731

        # calls and errors
        calls: dict[str, Counter] = defaultdict(Counter)
        errs = [r for r in records if r.get("err")]
        for r in records:
            calls[r["op"]][r.get("err") or r.get("res") or "?"] += 1
        f["calls"] = {op: dict(c) for op, c in calls.items()}
        f["calls_unanswered"] = dict(Counter(f"{r['node']}:{r['op']}" for r in in_flight))
        f["errors_total"] = len(errs)
        f["error_classes"] = dict(Counter(r["err"] for r in errs))
        f["errors_may_have_written"] = dict(Counter(str(r.get("mhw", "n/a")) for r in errs))
        if errs:
            f["errors_window_s"] = [rel(min(r["t1"] for r in errs)), rel(max(r["t1"] for r in errs))]
            f["error_samples"] = sorted({f"{r['err']}: {r.get('msg', '')[:160]}" for r in errs})[:6]
        noncsaf = [r for r in errs if not r.get("csaf")]
        if noncsaf:
            self.problems.append(f"{len(noncsaf)} calls failed with an error that is not a CsafError: "
                                 f"{dict(Counter(r['err'] for r in noncsaf))}; e.g. "
                                 f"{noncsaf[0]['err']}: {noncsaf[0].get('msg', '')[:200]}")
        ok_writes = [r for r in records if r.get("ok") or r.get("res") == "stored"]
        beats = [r for r in records if r["op"] == "beat"]
        if beats:
            f["beat_latency_s"] = _quantiles([(r["t1"] - r["t0"]) / 1000 for r in beats if r.get("ok")])
        f["call_latency_s"] = _quantiles([(r["t1"] - r["t0"]) / 1000 for r in records
                                          if r.get("ok") and r["op"] != "beat"])
        if len([r for r in ok_writes if r["op"] == "outbox"]) < 20:
            self.problems.append(f"the load did too little to prove anything: {f['calls']}")

        # the log: ids decided twice, and commands decided after their caller gave up
        outbox_ev: dict[tuple[str, str], list[int]] = defaultdict(list)
        inbox_ev: dict[tuple[str, str], list[int]] = defaultdict(list)
        for _, typ, state, _h in events:
            if typ == "OutboxStored":
                outbox_ev[(state["session_id"], state["server_message_id"])].append(state["stored_timestamp"])
            elif typ == "InboxStored":
                inbox_ev[(state["session_id"], state["client_message_id"])].append(state["stored_timestamp"])
        twice = [k for k, v in {**outbox_ev, **inbox_ev}.items() if len(v) > 1]
        if twice:
            self.problems.append(f"{len(twice)} ids were stored twice in the log: {twice[:5]}")
        calls_on: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in records:
            if r["op"] == "inbox":
                calls_on[(r["sid"], r["id"])].append(r)
        for r in in_flight:  # unanswered: it may be decided until its caller's deadline
            if r["op"] == "inbox":
                calls_on[(r["sid"], r["id"])].append({**r, "t1": r["t0"] + self.request_timeout * 1000})
        late, wrote_anyway = [], []
        for r in errs:
            if r["op"] == "outbox":
                stamps = outbox_ev.get((r["sid"], r["id"]), [])
            elif r["op"] == "inbox":
                # another node's call on the same id may have stored it after this one gave up
                stamps = [ts for ts in inbox_ev.get((r["sid"], r["id"]), [])
                          if not any(o is not r and o["t0"] - 50 <= ts <= o["t1"] + 50
                                     for o in calls_on[(r["sid"], r["id"])])]
            else:
                continue
            for ts in stamps:
                if ts > r["t1"]:
                    late.append({"op": r["op"], "sid": r["sid"], "id": r["id"], "err": r["err"],
                                 "gave_up_s": rel(r["t1"]), "decided_after_s": round((ts - r["t1"]) / 1000, 2)})
            if stamps and r.get("mhw") is False:
                wrote_anyway.append(f"{r['op']} {r['sid']}/{r['id']}: {r.get('msg', '')[:120]}")
        f["decided_after_caller_gave_up"] = len(late)
        if late:
            f["decided_after_caller_gave_up_max_s"] = max(x["decided_after_s"] for x in late)
            f["decided_after_caller_gave_up_samples"] = late[:5]
            self.problems.append(f"{len(late)} commands were decided after their caller had given up (up to "
                                 f"{f['decided_after_caller_gave_up_max_s']}s later), e.g. {late[:3]}")
        if wrote_anyway:
            self.problems.append(f"{len(wrote_anyway)} calls said may_have_written=False but were written: "
                                 f"{wrote_anyway[:3]}")

        # exactly one winner per raced inbox id
        winners: dict[tuple[str, str], int] = Counter()
        for r in records:
            if r["op"] == "inbox" and r.get("res") == "stored":
                winners[(r["sid"], r["id"])] += 1
        f["inbox_ids_raced"] = len(calls_on)
        f["inbox_ids_won"] = len(winners)
        f["inbox_attempts_per_id"] = round(sum(len(v) for v in calls_on.values()) / max(1, len(calls_on)), 1)
        double = [k for k, n in winners.items() if n > 1]
        if double:
            self.problems.append(f"{len(double)} inbox ids were accepted for more than one caller: {double[:5]}")
        refused_unwon = [k for k, rs in calls_on.items() if k not in winners and any(r.get("res") == "dup" for r in rs)
                         and not any(r.get("err") or r.get("begin") for r in rs)]
        if refused_unwon:
            self.problems.append(f"{len(refused_unwon)} inbox ids were refused as duplicates though no call "
                                 f"stored them: {refused_unwon[:5]}")

        # nothing acknowledged lost, read back on a survivor
        completing = {(r["sid"], r["id"]) for r in lines if r["op"] == "complete"}
        outbox: dict[str, list[str]] = defaultdict(list)
        for r in records:
            if r["op"] == "outbox" and r.get("ok") and r.get("res") == "ok" and (r["sid"], r["id"]) not in completing:
                outbox[r["sid"]].append(r["id"])
        checked = survivor.call("check", outbox, [list(k) for k in winners], CHECK_MAX_S, timeout=CHECK_MAX_S + 60)
        f["acknowledged_outbox_checked"] = sum(map(len, outbox.values()))
        f["acknowledged_inbox_checked"] = len(winners)
        lost_out = sum(map(len, checked["missing_outbox"].values()))
        f["lost_outbox"], f["lost_inbox"] = lost_out, len(checked["missing_inbox"])
        if lost_out or checked["missing_inbox"]:
            self.problems.append(f"acknowledged writes lost: {lost_out} outbox messages "
                                 f"({dict(list(checked['missing_outbox'].items())[:3])}), "
                                 f"{len(checked['missing_inbox'])} inbox ids ({checked['missing_inbox'][:5]})")
        if checked["unreadable"]:
            self.problems.append(f"{len(checked['unreadable'])} reads on the survivor {survivor.name} failed "
                                 f"after retries: {checked['unreadable'][:3]}")
        self.mark(f"checked on {survivor.name}: {f['acknowledged_outbox_checked']} outbox messages, "
                  f"{len(winners)} inbox ids; lost {lost_out} + {len(checked['missing_inbox'])}")

        # time without a writer per partition: the longest gap between decided writes
        done: dict[int, list[float]] = defaultdict(list)
        for r in ok_writes:
            done[partition_for(r["sid"], PARTITIONS)].append(r["t1"])
        for p, t in getattr(self, "probe_ok", {}).items():
            if t:
                done[p].append(t)
        load_start = min((r["t0"] for r in records), default=self.t_start)
        load_end = self.load_stop_ms or max((r["t1"] for r in records), default=now_ms())
        gaps, gap_at = {}, {}
        for p in range(PARTITIONS):
            ts = sorted([load_start, *(t for t in done[p] if t < load_end), load_end])
            i = max(range(len(ts) - 1), key=lambda k: ts[k + 1] - ts[k])
            gaps[p] = round((ts[i + 1] - ts[i]) / 1000, 2)
            gap_at[p] = [rel(ts[i]), rel(ts[i + 1])]
        self.write_times = done
        f["max_time_without_a_write_s"] = gaps
        f["max_time_without_a_write_at_s"] = gap_at
        # partitions the fault did not touch: no stall from the fault on
        if unaffected:
            stalls = {}
            for p in unaffected:
                ts = sorted([fault_start, *(t for t in done[p] if fault_start < t < load_end), load_end])
                stalls[p] = round(max(b - a for a, b in itertools.pairwise(ts)) / 1000, 2)
            f["max_gap_on_partitions_the_fault_did_not_touch_s"] = stalls
            slow = {p: g for p, g in stalls.items() if g > UNAFFECTED_BOUND_S}
            if slow:
                self.problems.append(f"partitions the killed nodes did not own went without a decided write for "
                                     f"more than {UNAFFECTED_BOUND_S:.0f}s after the kill (a takeover stalled what "
                                     f"the new owner already owned?): {slow}")
        # takeovers: from the fault to the first decided write of each partition afterwards
        if takeover_of is not None:
            # (None: no write on the partition after the fault at all)
            firsts = {p: min((t for t in done[p] if t > fault_start), default=None) for p in takeover_of}
            f["takeover_s"] = {p: None if t is None else round((t - fault_start) / 1000, 2) for p, t in firsts.items()}

        # what the nodes' logs say (figures only)
        f["logs"] = {name: log_findings(n.log_path, self.t_start) for name, n in self.nodes.items()}
        for _name, lf in f["logs"].items():
            for tk in lf.get("takeovers", []):
                tk["at_s"] = rel(tk.pop("at_ms"))
            for st in lf.get("settled", []):
                st["at_s"] = rel(st.pop("at_ms"))
        f["boot_s"] = self.boot_s
        f["boot_failures"] = self.boot_failures
        f["timeline"] = [f"+{rel(t):.1f}s {what}" for t, what in self.timeline]
        f["fault_s"] = [rel(fault_start), rel(fault_end)]

    def report(self, figures_fixture) -> None:
        data, path = figures_fixture
        self.figures["runtime_s"] = round((now_ms() - self.t_start) / 1000, 1)
        self.figures["problems"] = self.problems
        data["tests"][self.name] = self.figures
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
        mine = path.parent / f"{self.name}.json"
        mine.write_text(json.dumps(self.figures, indent=2, sort_keys=True))
        f = self.figures
        print(f"\n[faults {self.name}] figures: {mine}")
        for key in ("errors_total", "error_classes", "errors_window_s", "errors_may_have_written",
                    "call_latency_s", "beat_latency_s", "recovery_s", "recovery_max_s", "max_time_without_a_write_s",
                    "max_time_without_a_write_at_s", "takeover_s", "max_gap_on_partitions_the_fault_did_not_touch_s",
                    "decided_after_caller_gave_up", "decided_after_caller_gave_up_max_s",
                    "lost_outbox", "lost_inbox", "inbox_ids_raced", "inbox_ids_won", "boot_s", "boot_failures",
                    "runtime_s"):
            if key in f:
                print(f"  {key}: {f[key]}")
        for name, lf in f.get("logs", {}).items():
            if lf.get("error_lines"):
                print(f"  log {name}: {lf['error_lines']} ERROR lines, e.g. {lf['errors'][:2]}")
            if lf.get("takeovers"):
                takeovers = [(t["partition"], t.get("settled_s"), t.get("restore_s"), t.get("attempt"), t["at_s"])
                             for t in lf["takeovers"]]
                print(f"  log {name}: takeovers (partition, settled s, restore s, attempt, at s) {takeovers}")
            if lf.get("settled"):
                print(f"  log {name}: settled {[(s['partitions'], s['settled_s'], s['at_s']) for s in lf['settled']]}")
        for p in self.problems:
            print(f"  PROBLEM: {p}")
        if self.problems:
            pytest.fail(f"{self.name}: " + "\n".join(self.problems), pytrace=False)


# --------------------------------------------------------------------------- tests --

def test_broker_killed_and_restarted_under_load(kafka3: LocalCluster, figures, tmp_path: Path) -> None:
    """One broker of three SIGKILLed under load (events RF 3, min ISR 2: writes can go on),
    a node booted while it is down, the broker back after 15 s."""
    s = Scenario("broker_kill", kafka3, tmp_path)
    try:
        a, b, c = s.first("a", "b", "c")
        assert a and b and c, s.boot_failures
        s.wait_spread()
        s.register_all(a)
        for n in (a, b, c):
            s.load(n, beats=n is a)
        time.sleep(5)
        broker = _coordinator(kafka3.bootstrap, f"{s.namespace}.owners") or kafka3.broker_ids[0]
        kafka3.stop_broker(broker, kill=True)
        fault_start = s.mark(f"broker {broker} (the owners group's coordinator) SIGKILLed")
        back: list = []

        def restart() -> None:  # 15 s after the kill, whatever the node booting meanwhile does
            time.sleep(max(0.0, 15 - (now_ms() - fault_start) / 1000))
            s.mark(f"restarting broker {broker}")
            try:
                kafka3.start_broker(broker)
                back.append(s.mark(f"broker {broker} restarted"))
            except BaseException as e:  # noqa: BLE001 - raised below
                back.append(e)

        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        time.sleep(3)
        d = s.start("d")[0]  # boot() with a broker down
        if d is not None:
            s.load(d)
        restarter.join(300)
        assert back and not isinstance(back[0], BaseException), f"broker {broker} did not come back: {back}"
        fault_end = back[0]
        s.figures["broker_down_s"] = round((fault_end - fault_start) / 1000, 1)
        s.probe(a, fault_end)
        time.sleep(3)
        s.stop_loads()
        s.verify(a, fault_start, fault_end)
    finally:
        s.teardown()
    s.report(figures)


def test_node_killed_while_another_is_mid_takeover(kafka3: LocalCluster, figures, tmp_path: Path) -> None:
    """c is SIGKILLed under load with a transaction open; once the group has noticed
    (session timeout) a and b are taking over c's partitions, one of them waiting out c's
    transaction; then b is SIGKILLed too. a must end up serving everything."""
    s = Scenario("kill_mid_takeover", kafka3, tmp_path)
    try:
        a, b, c = s.first("a", "b", "c")
        assert a and b and c, s.boot_failures
        s.wait_spread()
        s.register_all(a)
        for n in (a, b, c):
            s.load(n, beats=n is a)
        time.sleep(4)
        c_owned = s.owned(c)
        fault_start = s.kill_in_transaction("c")
        # the group notices after the session timeout; b then waits out c's open transaction
        time.sleep(SESSION_TIMEOUT_S + 2)
        b_owned = s.owned(b)
        fault_end = s.kill("b")
        s.figures["c_owned"] = c_owned
        s.figures["b_owned_when_killed"] = b_owned
        if b_owned is not None and c_owned is not None:
            s.figures["b_had_taken_over_of_c"] = sorted(set(b_owned) & set(c_owned))
        s.probe(a, fault_end)
        time.sleep(2)
        s.stop_loads()
        killed = set(c_owned or []) | set(b_owned or [])
        s.verify(a, fault_start, fault_end, takeover_of=c_owned,
                 unaffected=sorted(set(range(PARTITIONS)) - killed) if c_owned and b_owned else None)
        if c_owned:  # was b still taking over when it was killed? (no write on c's partitions yet)
            s.figures["c_partitions_written_between_kills"] = sorted(
                {p for p, t in s.write_times.items() for x in t if fault_start < x < fault_end and p in c_owned})
    finally:
        s.teardown()
    s.report(figures)


def test_slow_takeover_with_short_request_timeout(kafka3: LocalCluster, figures, tmp_path: Path) -> None:
    """Nodes with request_timeout=5 s; c is SIGKILLed with a transaction open (10 s timeout),
    so the new owner's takeover outlasts a request timeout, and must still finish."""
    s = Scenario("slow_takeover", kafka3, tmp_path, request_timeout=5.0)
    try:
        a, b, c = s.first("a", "b", "c")
        assert a and b and c, s.boot_failures
        s.wait_spread()
        s.register_all(a)
        for n in (a, b, c):
            s.load(n, beats=n is a)
        time.sleep(4)
        c_owned = s.owned(c)
        fault = s.kill_in_transaction("c")
        s.figures["c_owned"] = c_owned
        s.probe(a, fault)
        time.sleep(2)
        s.stop_loads()
        s.verify(a, fault, fault, takeover_of=c_owned or list(range(PARTITIONS)),
                 unaffected=sorted(set(range(PARTITIONS)) - set(c_owned)) if c_owned else None)
    finally:
        s.teardown()
    s.report(figures)


def test_nodes_joining_and_leaving_under_routed_load(kafka3: LocalCluster, figures, tmp_path: Path) -> None:
    """a and b stay; every ~10 s a node joins or leaves (a clean close, then a SIGKILL with
    a transaction open), each joined node adding its own load. Most calls are routed: with
    three nodes, two of three partitions are owned elsewhere."""
    s = Scenario("join_leave", kafka3, tmp_path)
    try:
        a, b = s.first("a", "b")
        assert a and b, s.boot_failures
        s.wait_spread()
        s.register_all(a)
        for n in (a, b):
            s.load(n, beats=n is a)
        t0 = time.monotonic()
        fault_start = now_ms()
        steps = [("join", "c"), ("close", "c"), ("join", "d"), ("kill", "d"), ("join", "e")]
        for k, (what, name) in enumerate(steps):
            time.sleep(max(0.0, t0 + 10 * k + 3 - time.monotonic()))
            if what == "join":
                node = s.start(name)[0]
                if node is not None:
                    s.load(node)
            elif what == "close":
                s.close(name)
            elif name in s.nodes:  # a node that failed to boot is in s.boot_failures already
                s.kill_in_transaction(name)
        fault_end = s.mark("last membership change done")
        s.probe(a, fault_end)
        time.sleep(2)
        s.stop_loads()
        s.verify(a, fault_start, fault_end)
    finally:
        s.teardown()
    s.report(figures)


def _quantiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    xs = sorted(xs)
    return {"n": len(xs), "p50": round(xs[len(xs) // 2], 3), "p99": round(xs[min(len(xs) - 1, len(xs) * 99 // 100)], 3),
            "max": round(xs[-1], 3)}


def _coordinator(bootstrap: str, group: str) -> int | None:
    """The broker that coordinates `group` (None if it cannot be told)."""
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
        return desc.coordinator.id
    except Exception:  # noqa: BLE001 - then any broker will do
        return None
