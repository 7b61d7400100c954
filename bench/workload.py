"""The MatsSocket lifecycle workload (WORKLOAD.md), written once for the demo and the benchmark.

Per session (S sessions, P-byte JSON payloads):

1. `register_session_at_this_node` (user ``u{i % 100}``), then `get_sessions_count(False, user)`.
2. Client -> server, K messages: `store_message_id_in_inbox`, `update_message_in_inbox`
   (P-byte result), then one `delete_message_ids_from_inbox` for all K.
3. Server -> client, M messages: `store_message_in_outbox` (from a node chosen at random
   when there are several stores), then the home node drains:
   `get_messages_from_outbox(sid, 20)` -> `outbox_messages_attempted_delivery` ->
   `outbox_messages_complete`, looping until the outbox is empty.
4. Two server -> client requests: `store_request_correlation`, then
   `get_and_delete_request_correlation`.
5. A reconnect: `deregister_session_from_this_node`, `register_session_at_this_node` with a
   new connection id, `outbox_messages_unmark_attempted_delivery`.
6. `notify_session_liveliness` for each batch of finished sessions (by their home node);
   at the end `close_session` for half of the sessions and one `timeout_sessions` for the
   rest (with a timestamp just after their liveliness, so exactly the sessions still
   there are timed out).

C sessions are in flight at once (a thread pool), because a MatsSocket node serves many
sockets at once. Every call is timed with `time.perf_counter_ns` per operation kind.

Session ids carry a random run prefix, so the workload can run again on the same data
directory. Note that the final `timeout_sessions` is cluster-wide: it also removes any
other session of the store that is not live since that moment; run it on a store of its own.

Use::

    with open_store("node-a", data_dir) as store:
        result = run_workload([store], WorkloadConfig(sessions=500, concurrency=16))
    print(result.lifecycles_per_s, result.latency_ms()["store_message_in_outbox"]["p99"])
"""

from __future__ import annotations

import random
import string
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from csaf_events.core.clock import now_ms
from csaf_events.core.dtos import MessageType
from csaf_events.store import ClusterStoreAndForward

#: The operation kinds the workload times, in the order a session uses them.
OPS = (
    "register_session_at_this_node", "get_sessions_count",
    "store_message_id_in_inbox", "update_message_in_inbox", "delete_message_ids_from_inbox",
    "store_message_in_outbox", "get_messages_from_outbox", "outbox_messages_attempted_delivery",
    "outbox_messages_complete",
    "store_request_correlation", "get_and_delete_request_correlation",
    "deregister_session_from_this_node", "outbox_messages_unmark_attempted_delivery",
    "notify_session_liveliness", "close_session", "timeout_sessions",
)

#: MatsSocket's forwarder fetches at most this many outbox messages per loop.
DRAIN_BATCH = 20


@dataclass(frozen=True)
class WorkloadConfig:
    """Sizes of the workload; the defaults are those of WORKLOAD.md."""

    sessions: int = 2000             # S
    payload_bytes: int = 1024        # P, size of each JSON payload
    inbox_messages: int = 10         # K, client -> server messages per session
    outbox_messages: int = 20        # M, server -> client messages per session
    correlations: int = 2            # server -> client requests per session
    concurrency: int = 64            # C, sessions in flight at once
    users: int = 100                 # sessions belong to users u0..u{users-1}
    liveliness_batch: int = 100      # sessions per notify_session_liveliness call
    duration: float | None = None    # seconds: stop starting sessions after this (demo)
    seed: int | None = None          # for the random choice of the outbox node
    mint_session_ids: bool = False   # session ids minted by the home node (in its partitions)

    def __post_init__(self) -> None:
        for name in ("sessions", "payload_bytes", "inbox_messages", "outbox_messages",
                     "correlations", "concurrency", "users", "liveliness_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            minimum = 0 if name in ("inbox_messages", "outbox_messages", "correlations") else 1
            if value < minimum:
                raise ValueError(f"{name} must be at least {minimum}, got {value}")
        if not isinstance(self.mint_session_ids, bool):
            raise TypeError(f"mint_session_ids must be a bool, got {type(self.mint_session_ids).__name__}")
        if self.payload_bytes < 16:
            raise ValueError(f"payload_bytes must be at least 16, got {self.payload_bytes}")
        if self.duration is not None and not (isinstance(self.duration, (int, float)) and self.duration > 0):
            raise ValueError(f"duration must be a positive number of seconds or None, got {self.duration!r}")


@dataclass
class WorkloadResult:
    """What one run did and how long it took."""

    config: WorkloadConfig
    nodes: int
    sessions: int                  # sessions that went through steps 1-5
    lifecycles: int                # outbox messages stored -> fetched -> attempted -> completed
    ops: int                       # every store call made
    elapsed_s: float               # wall time of the whole run, steps 1-6
    outbox_messages_stored: int
    closed: int
    timed_out: int
    phases_s: dict[str, float] = field(default_factory=dict)    # sessions (1-5), close, timeout
    errors: dict[str, int] = field(default_factory=dict)        # op -> count of exceptions
    error_samples: list[str] = field(default_factory=list)      # the first few, as text
    latency_ns: dict[str, list[int]] = field(default_factory=dict, repr=False)
    caller_cpu_s: float = 0.0      # CPU of the calling threads (steps 1-6; the timeout call's not counted)

    @property
    def lifecycles_per_s(self) -> float:
        return self.lifecycles / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self) -> dict[str, dict[str, float]]:
        """{op: {p50, p99, max, count}} in milliseconds, ops in workload order."""
        out: dict[str, dict[str, float]] = {}
        for op in sorted(self.latency_ns, key=lambda o: OPS.index(o) if o in OPS else len(OPS)):
            samples = sorted(self.latency_ns[op])
            if samples:
                out[op] = {"p50": _pct(samples, 50) / 1e6, "p99": _pct(samples, 99) / 1e6,
                           "max": samples[-1] / 1e6, "count": len(samples)}
        return out


def _pct(sorted_samples: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of sorted samples."""
    n = len(sorted_samples)
    rank = max(1, -(-n * pct // 100))  # ceil(n * pct / 100)
    return sorted_samples[int(rank) - 1]


def make_payloads(size: int, count: int = 64, seed: int = 0) -> list[str]:
    """`count` JSON documents of exactly `size` bytes with random (hardly compressible) text."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    frame = '{"data":""}'
    return ['{"data":"' + "".join(rng.choices(alphabet, k=size - len(frame))) + '"}' for _ in range(count)]


class _Recorder:
    """Latencies and counts of one worker thread (merged at the end: no lock on the hot path)."""

    def __init__(self) -> None:
        self.latency: dict[str, list[int]] = defaultdict(list)
        self.lifecycles = 0
        self.stored = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.samples: list[str] = []
        self.cpu_s = 0.0  # CPU time of the thread that made the calls, while it made them

    def call(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args)
        finally:
            self.latency[op].append(time.perf_counter_ns() - t0)


class _Failed(Exception):
    def __init__(self, op: str, cause: BaseException) -> None:
        super().__init__(f"{op}: {type(cause).__name__}: {cause}")
        self.op = op


def run_workload(stores: Sequence[ClusterStoreAndForward], config: WorkloadConfig | None = None, *,
                 progress: Callable[[int], None] | None = None,
                 before_timeout: Callable[[], None] | None = None) -> WorkloadResult:
    """Run the lifecycle workload on booted `stores` (one per node) and measure it.

    Session ``i`` lives on ``stores[i % len(stores)]`` (its home node); its outbox messages
    are stored from a store chosen at random. `progress(n)` is called (from worker threads)
    each time `n` more sessions have finished steps 1-5, e.g. ``progress=tqdm_bar.update``.
    A call that raises is counted in `errors` (with the first samples kept) and ends that
    session's work; the run goes on. `timeout_sessions` is cluster-wide: runs on other
    processes of the same cluster pass `before_timeout` to wait until all of them are there.
    """
    config = config or WorkloadConfig()
    stores = list(stores)
    if not stores:
        raise ValueError("stores must hold at least one booted store")
    run_id = uuid.uuid4().hex[:8]
    payloads = make_payloads(config.payload_bytes, seed=config.seed or 0)
    rng = random.Random(config.seed)
    rng_lock = threading.Lock()
    deadline = None if config.duration is None else time.monotonic() + config.duration

    next_index = iter(range(config.sessions))
    index_lock = threading.Lock()
    done_lock = threading.Lock()
    finished: list[tuple[int, str]] = []  # (index, id) of every session that went through steps 1-5
    pending_live: dict[int, list[str]] = defaultdict(list)  # home -> sessions awaiting liveliness
    recorders: list[_Recorder] = []

    def outbox_store() -> ClusterStoreAndForward:
        if len(stores) == 1:
            return stores[0]
        with rng_lock:
            return rng.choice(stores)

    def session_work(rec: _Recorder, i: int, sid: str) -> None:
        home = stores[i % len(stores)]
        user = f"u{i % config.users}"
        op = "register_session_at_this_node"
        try:
            # 1. register, cap check
            rec.call(op, home.register_session_at_this_node, sid, user, f"{sid}-c1",
                     "csaf-workload/1.0", "workload", "1.0.0")
            op = "get_sessions_count"
            rec.call(op, home.get_sessions_count, False, user)
            # 2. client -> server
            cmids = [f"cm{k}" for k in range(config.inbox_messages)]
            for k, cmid in enumerate(cmids):
                op = "store_message_id_in_inbox"
                rec.call(op, home.store_message_id_in_inbox, sid, cmid)
                op = "update_message_in_inbox"
                rec.call(op, home.update_message_in_inbox, sid, cmid, payloads[(i + k) % len(payloads)], None)
            if cmids:
                op = "delete_message_ids_from_inbox"
                rec.call(op, home.delete_message_ids_from_inbox, sid, cmids)
            # 3. server -> client: store (from any node), then the home node drains
            for m in range(config.outbox_messages):
                op = "store_message_in_outbox"
                smid = f"sm{m}"
                node = rec.call(op, outbox_store().store_message_in_outbox, sid, smid, None, f"trace-{sid}-{m}",
                                MessageType.SEND, None, f'{{"t":"SEND","smid":"{smid}"}}',
                                payloads[(i + m) % len(payloads)], None)
                if node is None:
                    raise RuntimeError("store_message_in_outbox returned None for an existing session")
                rec.stored += 1
            while True:
                op = "get_messages_from_outbox"
                batch = rec.call(op, home.get_messages_from_outbox, sid, DRAIN_BATCH)
                if not batch:
                    break
                ids = [m.server_message_id for m in batch]
                op = "outbox_messages_attempted_delivery"
                rec.call(op, home.outbox_messages_attempted_delivery, sid, ids)
                op = "outbox_messages_complete"
                rec.call(op, home.outbox_messages_complete, sid, ids)
                rec.lifecycles += len(ids)
            # 4. server -> client requests
            for r in range(config.correlations):
                smid = f"rq{r}"
                op = "store_request_correlation"
                rec.call(op, home.store_request_correlation, sid, smid, now_ms(), "Workload.replyTerminator",
                         f"corr-{sid}-{r}", None)
                op = "get_and_delete_request_correlation"
                if rec.call(op, home.get_and_delete_request_correlation, sid, smid) is None:
                    raise RuntimeError("get_and_delete_request_correlation lost a stored correlation")
            # 5. reconnect
            op = "deregister_session_from_this_node"
            rec.call(op, home.deregister_session_from_this_node, sid, f"{sid}-c1")
            op = "register_session_at_this_node"
            rec.call(op, home.register_session_at_this_node, sid, user, f"{sid}-c2",
                     "csaf-workload/1.0", "workload", "1.0.0")
            op = "outbox_messages_unmark_attempted_delivery"
            rec.call(op, home.outbox_messages_unmark_attempted_delivery, sid)
        except Exception as e:
            raise _Failed(op, e) from e

    def flush_liveliness(rec: _Recorder, home: int, sids: list[str]) -> None:
        try:
            rec.call("notify_session_liveliness", stores[home].notify_session_liveliness, sids)
        except Exception as e:  # noqa: BLE001 - a failed call is counted, the run goes on
            rec.errors["notify_session_liveliness"] += 1
            if len(rec.samples) < 5:
                rec.samples.append(f"notify_session_liveliness: {type(e).__name__}: {e}")

    def worker() -> _Recorder:
        rec = _Recorder()
        with done_lock:
            recorders.append(rec)
        cpu0 = time.thread_time()
        try:
            work(rec)
        finally:
            rec.cpu_s += time.thread_time() - cpu0
        return rec

    def work(rec: _Recorder) -> None:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            with index_lock:
                i = next(next_index, None)
            if i is None:
                return
            home = i % len(stores)
            prefix = f"w{run_id}-{i:07d}"
            sid = stores[home].new_session_id(prefix + "-") if config.mint_session_ids else prefix
            try:
                session_work(rec, i, sid)
            except _Failed as f:
                rec.errors[f.op] += 1
                if len(rec.samples) < 5:
                    rec.samples.append(str(f))
            batch: list[str] | None = None
            with done_lock:
                finished.append((i, sid))
                pending_live[home].append(sid)
                if len(pending_live[home]) >= config.liveliness_batch:
                    batch, pending_live[home] = pending_live[home], []
            if batch:
                flush_liveliness(rec, home, batch)
            if progress is not None:
                progress(1)

    started = time.perf_counter()
    end_rec = _Recorder()
    closed = timed_out = 0
    with ThreadPoolExecutor(config.concurrency, thread_name_prefix="csaf-workload") as pool:
        for f in [pool.submit(worker) for _ in range(config.concurrency)]:
            f.result()
        t_sessions = time.perf_counter()
        for home, sids in pending_live.items():
            if sids:
                flush_liveliness(end_rec, home, sids)
        # 6. close half of the sessions (each on its home node), time out the rest
        by_index = sorted(finished)
        to_close = by_index[0::2]

        def close(session: tuple[int, str]) -> int:
            i, sid = session
            rec = _Recorder()
            home = stores[i % len(stores)]
            cpu0 = time.thread_time()
            try:
                rec.call("close_session", home.close_session, sid)
            except Exception as e:  # noqa: BLE001 - a failed call is counted, the run goes on
                rec.errors["close_session"] += 1
                rec.samples.append(f"close_session: {type(e).__name__}: {e}")
            rec.cpu_s = time.thread_time() - cpu0
            with done_lock:
                recorders.append(rec)
            return 0 if rec.errors else 1

        closed = sum(pool.map(close, to_close))
    if before_timeout is not None:
        before_timeout()
    t_closed = time.perf_counter()
    if len(to_close) < len(finished):
        try:
            ids = end_rec.call("timeout_sessions", stores[0].timeout_sessions, now_ms() + 1)
            ours = f"w{run_id}-"
            timed_out = sum(1 for s in ids if s.startswith(ours))
        except Exception as e:  # noqa: BLE001 - a failed call is counted, the run goes on
            end_rec.errors["timeout_sessions"] += 1
            end_rec.samples.append(f"timeout_sessions: {type(e).__name__}: {e}")
    elapsed = time.perf_counter() - started

    recorders.append(end_rec)
    latency: dict[str, list[int]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    samples: list[str] = []
    for rec in recorders:
        for op, xs in rec.latency.items():
            latency[op].extend(xs)
        for op, n in rec.errors.items():
            errors[op] += n
        samples.extend(rec.samples)
    return WorkloadResult(
        config=config, nodes=len(stores), sessions=len(finished),
        lifecycles=sum(r.lifecycles for r in recorders),
        ops=sum(len(xs) for xs in latency.values()), elapsed_s=elapsed,
        outbox_messages_stored=sum(r.stored for r in recorders),
        closed=closed, timed_out=timed_out,
        phases_s={"sessions": t_sessions - started, "close": t_closed - t_sessions,
                  "timeout": started + elapsed - t_closed},
        errors=dict(errors), error_samples=samples[:10],
        latency_ns=dict(latency), caller_cpu_s=sum(r.cpu_s for r in recorders))
