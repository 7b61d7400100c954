"""Prometheus metrics of a store (``prometheus-client``; every name starts with ``csaf_``).

What is measured per call is measured in one place: `StoreMetrics.observe`, which the
store's public methods call (they are marked `csaf_events.core.observe.observed`) when the store
has metrics (a store opened with ``metrics=None`` runs each call with one check more, and
nothing else). Each call adds one observation
to ``csaf_call_duration_seconds{node,method}`` and one to
``csaf_calls_total{node,method,outcome}``, where the outcome is ``local`` (this node owns
the session's partition and decided it), ``routed`` (another node's), or the class name of
the error the call raised (``DataAccessError``, ``MessageIdAlreadyExistsError``, ...).
Cluster-wide calls (``get_sessions*``, ``notify_session_liveliness``, ``timeout_sessions``,
``scavenge_session_remnants``) are ``local`` when this node owns every partition they may
touch (the registry reads always are), else ``routed``.

Everything else is read at scrape time by one collector per registry, from the facts the
store keeps anyway (no code on the write path): the node's `Timings` (seconds per write
phase, transactions and their sizes), and `store.health()`: the partitions owned and
assigned, the last takeover of each partition, the registry tail's lag, the routed calls in
flight and timed out, the projection's size on disk (the log's `status()` besides, for the
takeovers counted). Every series carries a ``node`` label, so
several stores on one registry (a test process, a bench) never collide; a store leaves the
registry when it closes.

The MatsSocket node adds its own counters through `StoreMetrics.matssocket` (sockets,
envelopes in and out by type, outbox redeliveries and dead letters).

See docs/operations.md for what each metric means to an operator.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from csaf_events.core.partitioning import partition_for
from csaf_events.core.tally import Tally

if TYPE_CHECKING:
    from csaf_events.store import ClusterStoreAndForward

log = logging.getLogger(__name__)

#: Latency buckets (seconds): an embedded call takes tens of microseconds, a routed Kafka
#: write tens of milliseconds, a call that times out the request timeout (30 s).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, float("inf"))

#: Public methods keyed by one session: their partition says local or routed.
SESSION_METHODS = (
    "register_session_at_this_node", "get_current_registered_node_for_session", "is_session_exists",
    "deregister_session_from_this_node", "close_session", "store_message_id_in_inbox",
    "update_message_in_inbox", "get_message_from_inbox", "delete_message_ids_from_inbox",
    "store_message_in_outbox", "get_messages_from_outbox", "outbox_messages_attempted_delivery",
    "outbox_messages_unmark_attempted_delivery", "outbox_messages_complete",
    "outbox_messages_dead_letter_queue", "store_request_correlation", "get_and_delete_request_correlation",
)
#: Calls answered from this node's session registry: always local.
REGISTRY_METHODS = ("get_sessions", "get_sessions_count")
#: Calls that fan out to the owners of several partitions.
CLUSTER_METHODS = ("notify_session_liveliness", "timeout_sessions", "scavenge_session_remnants")

METHODS = SESSION_METHODS + REGISTRY_METHODS + CLUSTER_METHODS


class _Families:
    """The metric objects of one registry, made once (a name can be registered only once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sockets = Gauge("csaf_matssocket_sockets", "WebSockets connected to this MatsSocket node",
                             ("node",), registry=registry)
        self.envelopes_in = Counter("csaf_matssocket_envelopes_received", "Envelopes received from clients, "
                                    "by type", ("node", "type"), registry=registry)
        self.envelopes_out = Counter("csaf_matssocket_envelopes_sent", "Envelopes sent to clients, by type",
                                     ("node", "type"), registry=registry)
        self.redeliveries = Counter("csaf_matssocket_outbox_redeliveries", "Outbox messages sent again "
                                    "(delivery count > 0)", ("node",), registry=registry)
        self.dead_letters = Counter("csaf_matssocket_outbox_dead_letters", "Outbox messages dead-lettered "
                                    "after too many delivery attempts", ("node",), registry=registry)
        self.collector = _StoresCollector()
        registry.register(self.collector)


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_families_lock = threading.Lock()


def _families_of(registry: CollectorRegistry) -> _Families:
    with _families_lock:
        fam = _families.get(registry)
        if fam is None:
            fam = _families[registry] = _Families(registry)
        return fam


class MatsSocketMetrics:
    """The MatsSocket node's counters, bound to one node label (cheap to call)."""

    def __init__(self, fam: _Families, node: str) -> None:
        self._fam, self._node = fam, node
        self.sockets = fam.sockets.labels(node)
        self.redeliveries = fam.redeliveries.labels(node)
        self.dead_letters = fam.dead_letters.labels(node)
        self._in: dict[str, Any] = {}
        self._out: dict[str, Any] = {}

    def received(self, envelopes: list[dict[str, Any]]) -> None:
        for e in envelopes:
            key = str(e.get("t"))
            c = self._in.get(key)
            if c is None:
                c = self._in[key] = self._fam.envelopes_in.labels(self._node, key)
            c.inc()

    def sent(self, envelopes: list[dict[str, Any]]) -> None:
        for e in envelopes:
            key = str(e.get("t"))
            c = self._out.get(key)
            if c is None:
                c = self._out[key] = self._fam.envelopes_out.labels(self._node, key)
            c.inc()

    def remove(self) -> None:
        for family, keys in ((self._fam.envelopes_in, self._in), (self._fam.envelopes_out, self._out)):
            for key in keys:
                _remove(family, self._node, key)
        for metric in (self._fam.sockets, self._fam.redeliveries, self._fam.dead_letters):
            _remove(metric, self._node)


class _Nothing:
    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass


class NoMatsSocketMetrics:
    """What a MatsSocket node on a store without metrics counts with: nothing."""

    sockets = redeliveries = dead_letters = _Nothing()

    def received(self, envelopes: list[dict[str, Any]]) -> None:
        pass

    def sent(self, envelopes: list[dict[str, Any]]) -> None:
        pass


def matssocket_metrics(store: Any) -> MatsSocketMetrics | NoMatsSocketMetrics:
    """The MatsSocket counters of a node on `store` (its registry's; none without one)."""
    m = getattr(store, "metrics", None)
    return m.matssocket if m is not None else NoMatsSocketMetrics()


def _remove(family: Any, *labels: str) -> None:
    try:
        family.remove(*labels)
    except KeyError:
        pass


class StoreMetrics:
    """One store's metrics on one registry.

    The calls are counted in plain lists of the calling thread (`csaf_events.core.tally`: one
    bisect, three list additions, no lock) and turned into ``csaf_calls_total`` and the
    ``csaf_call_duration_seconds`` histogram at scrape time; prometheus-client's own
    `Histogram.observe` plus `Counter.inc` cost three times as much, a visible share of an
    embedded read."""

    def __init__(self, store: ClusterStoreAndForward, registry: CollectorRegistry) -> None:
        self.store = store
        self.registry = registry
        self.node = store.node_name
        self._fam = _families_of(registry)
        # method -> [local, routed, seconds, bucket 0, ..., bucket +Inf] (buckets not cumulative)
        # (per thread: a lock per method is a convoy of every caller of the method)
        self._calls: dict[str, Tally] = {m: Tally(3 + len(LATENCY_BUCKETS)) for m in METHODS}
        self._errors: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # the error counts and the takeovers counted: calls that raise, scrapes
        self._matssocket: MatsSocketMetrics | None = None
        self._attached = False
        self._takeovers_seen: dict[int, float] = {}  # partition -> finished_at of the last takeover counted
        self._takeover_totals = [0, 0, 0.0]  # takeovers, events restored, seconds
        self._recorders: dict[str, Callable[[float, int, BaseException | None], None]] = {}  # by _observer
        self._observers = {m: self._observer(m) for m in METHODS}

    # ------------------------------------------------------------- per call --
    def observe(self, method: str, fn: Callable[..., Any], holder: Any, args: tuple[Any, ...],
                kw: dict[str, Any]) -> Any:
        """Count and time one public call of the store (`csaf_events.core.observe.CallObserver`)."""
        return self._observers[method](fn, holder, args, kw)

    def record(self, method: str, seconds: float, routed: bool, error: BaseException | None) -> None:
        """Count one call that ended, made without `observe` (`csaf_events.core.observe.CallObserver`)."""
        self._recorders[method](seconds, int(routed), error)

    def _observer(self, method: str) -> Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]:
        """What counts and times the calls of `method`: ``(fn, store, args, kw) -> result``."""
        store = self.store
        slots_of, errors, lock = self._calls[method].slots, self._errors, self._lock
        bounds = LATENCY_BUCKETS[:-1]
        clock = time.perf_counter
        partitions = store.partitions

        def record(dt: float, where: int, error: BaseException | None) -> None:
            acc = slots_of()
            acc[2] += dt
            acc[3 + bisect_left(bounds, dt)] += 1
            if error is None:
                acc[where] += 1
            else:
                key = (method, type(error).__name__)
                with lock:
                    errors[key] = errors.get(key, 0) + 1
        self._recorders[method] = record

        if method in SESSION_METHODS:  # the hot path: kept flat, it runs on every call
            def call(fn: Callable[..., Any], holder: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
                t0 = clock()
                try:
                    where = not store.node.serves(partition_for(args[0] if args else kw["session_id"], partitions))
                except Exception:  # noqa: BLE001 - not booted, or a bad argument the call itself reports
                    where = True
                try:
                    result = fn(holder, *args, **kw)
                except BaseException as e:
                    record(clock() - t0, where, e)
                    raise
                dt = clock() - t0
                acc = slots_of()
                acc[where] += 1
                acc[2] += dt
                acc[3 + bisect_left(bounds, dt)] += 1
                return result
            return call

        def routed() -> int:
            if method in REGISTRY_METHODS:
                return 0
            node = getattr(store, "node", None)  # None: not booted
            return int(node is None or len(node.owned()) != partitions)

        def cluster_call(fn: Callable[..., Any], holder: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            t0 = clock()
            where = routed()
            try:
                result = fn(holder, *args, **kw)
            except BaseException as e:
                record(clock() - t0, where, e)
                raise
            record(clock() - t0, where, None)
            return result

        return cluster_call

    def calls(self) -> dict[tuple[str, str], int]:
        """Calls so far by (method, outcome): what ``csaf_calls_total`` says."""
        out: dict[tuple[str, str], int] = {}
        for m in METHODS:
            local, routed = self._calls[m].totals()[:2]
            out[(m, "local")], out[(m, "routed")] = local, routed
        with self._lock:
            out.update(self._errors)
        return out

    def _call_families(self) -> Iterator[Any]:
        calls = CounterMetricFamily("csaf_calls", "Store calls by method and outcome (local, routed, or the "
                                    "class of the error raised)", labels=("node", "method", "outcome"))
        for (m, outcome), n in sorted(self.calls().items()):
            calls.add_metric((self.node, m, outcome), n)
        yield calls
        hist = HistogramMetricFamily("csaf_call_duration_seconds", "Store call latency by method, as the "
                                     "caller sees it", labels=("node", "method"))
        for m in METHODS:
            acc = self._calls[m].totals()
            cumulative, buckets = 0, []
            for bound, n in zip(LATENCY_BUCKETS, acc[3:], strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            hist.add_metric((self.node, m), buckets, acc[2])
        yield hist

    # ---------------------------------------------------------- life cycle --
    def attach(self) -> None:
        """Start reporting this store's scrape-time metrics (at boot)."""
        if not self._attached:
            self._attached = True
            self._fam.collector.add(self)

    def detach(self) -> None:
        """Leave the registry (at close): this node's series disappear."""
        self._fam.collector.discard(self)
        if self._matssocket is not None:
            self._matssocket.remove()

    @property
    def matssocket(self) -> MatsSocketMetrics:
        """Counters of a MatsSocket node serving on this store."""
        if self._matssocket is None:
            self._matssocket = MatsSocketMetrics(self._fam, self.node)
        return self._matssocket

    # ---------------------------------------------------------- scrape time --
    def families(self) -> Iterator[tuple[str, str, str, list[tuple[tuple[str, ...], float]]]]:
        """(kind, name, help, [(extra label values, value)]) of this store, read now."""
        node = self.store.node
        snap = node.timings.snapshot()
        f = self.store.health()
        yield ("counter", "csaf_write_phase_seconds", "Seconds spent in each phase of a write, summed over "
               "the writes (mean per write = rate of this / rate of csaf_write_phase_writes)",
               [((phase,), s) for phase, s in snap["seconds"].items()])
        yield ("counter", "csaf_write_phase_writes", "Writes that passed each phase",
               [((phase,), n) for phase, n in snap["writes"].items()])
        yield ("counter", "csaf_transactions", "Node transactions (Kafka: one group commit of events, "
               "replies and command offsets)", [((), snap["transactions"])])
        yield ("counter", "csaf_transactions_failed", "Node transactions that failed (their callers got an "
               "error; the partitions are taken over again)", [((), snap["failed_transactions"])])
        for key, what in (("commands", "commands"), ("records", "records"), ("partitions", "partitions")):
            yield ("counter", f"csaf_transaction_{key}", f"{what.capitalize()} in node transactions, summed "
                   f"(mean per transaction = rate of this / rate of csaf_transactions)", [((), snap[key])])
        yield ("gauge", "csaf_partitions", "Partitions of the events topic", [((), self.store.partitions)])
        yield ("gauge", "csaf_owned_partitions", "Partitions this node serves (decides writes for) now",
               [((), len(f["owned_partitions"]))])
        yield ("gauge", "csaf_assigned_partitions", "Partitions the owners group gave this node, served or "
               "still being taken over", [((), len(f["assigned_partitions"]))])
        yield ("gauge", "csaf_partition_owned", "1 for each partition this node serves",
               [((str(p),), 1) for p in f["owned_partitions"]])
        takeovers = f["takeovers"]
        counted = self._count_takeovers()
        yield ("counter", "csaf_takeovers", "Takeovers of a partition by this node (counted at scrape time: two "
               "of one partition between two scrapes count once)", [((), counted[0])])
        yield ("counter", "csaf_takeovers_events_restored", "Events restored by the takeovers counted in "
               "csaf_takeovers_total", [((), counted[1])])
        yield ("counter", "csaf_takeovers_seconds", "Seconds spent by the takeovers counted in "
               "csaf_takeovers_total (settle + restore)", [((), counted[2])])
        for key, name, what in (
                ("seconds", "csaf_takeover_seconds", "Seconds the last takeover of the partition took "
                 "(settle + restore)"),
                ("settle_seconds", "csaf_takeover_settle_seconds", "Seconds the last takeover waited for the "
                 "previous owner's open transaction"),
                ("restore_seconds", "csaf_takeover_restore_seconds", "Seconds the last takeover spent "
                 "restoring the projection"),
                ("events", "csaf_takeover_events", "Events the last takeover of the partition restored"),
                ("attempts", "csaf_takeover_attempts", "Attempts the last takeover of the partition needed"),
                ("finished_at", "csaf_takeover_finished_timestamp_seconds", "When the last takeover of the "
                 "partition finished (Unix time)")):
            yield ("gauge", name, what, [((str(t["partition"]),), t[key]) for t in takeovers])
        lag = f["registry_lag"]
        yield ("gauge", "csaf_registry_lag_records", "Records of the sessions topic not yet in this node's "
               "session registry (committed end minus the tail's position; NaN when the end could not be "
               "read)", [((), float("nan") if lag is None else lag)])
        yield ("gauge", "csaf_routed_calls_in_flight", "Calls sent to another node's partition and waiting "
               "for its answer", [((), f["routed_in_flight"])])
        yield ("counter", "csaf_routed_calls_timed_out", "Routed calls whose owner did not answer in time "
               "(the caller got DataAccessError)", [((), f["routed_timed_out"])])
        yield ("gauge", "csaf_projection_disk_bytes", "Size of this node's projection database on disk",
               [((), f["projection_disk_bytes"])])
        yield ("gauge", "csaf_fenced", "1 when this node's transactions are refused as from a fenced (zombie) "
               "member or producer (store.health())", [((), int(f["fenced"]))])
        yield ("gauge", "csaf_up", "1 when store.health() says ok", [((), int(f["ok"]))])


    def _count_takeovers(self) -> list:
        takeovers = self.store.node.log.status().takeovers
        if takeovers:
            with self._lock:  # scrapes may run at once
                for t in takeovers:
                    if self._takeovers_seen.get(t.partition) != t.finished_at:
                        self._takeovers_seen[t.partition] = t.finished_at
                        self._takeover_totals[0] += 1
                        self._takeover_totals[1] += t.events
                        self._takeover_totals[2] += t.settle_seconds + t.restore_seconds
        return list(self._takeover_totals)


class _StoresCollector(Collector):
    """Reads every attached store of one registry at scrape time, one family per name."""

    def __init__(self) -> None:
        self._stores: set[StoreMetrics] = set()
        self._lock = threading.Lock()

    def add(self, m: StoreMetrics) -> None:
        with self._lock:
            self._stores.add(m)

    def discard(self, m: StoreMetrics) -> None:
        with self._lock:
            self._stores.discard(m)

    def describe(self) -> list:
        return []  # names are known only at scrape time; none of them is registered elsewhere

    def collect(self) -> Iterator[Any]:
        with self._lock:
            stores = sorted(self._stores, key=lambda m: m.node)
        out: dict[str, Any] = {}
        labels_of: dict[str, tuple[str, ...]] = {
            "csaf_write_phase_seconds": ("phase",), "csaf_write_phase_writes": ("phase",),
            "csaf_partition_owned": ("partition",)}
        calls: list[Any] = []
        for m in stores:
            try:
                calls.append(list(m._call_families()))
                rows = list(m.families())
            except Exception as e:  # noqa: BLE001 - a closing store must not break the scrape of the others
                log.debug("node %s: metrics not read: %s", m.node, e, extra={"node": m.node})
                continue
            for kind, name, help_, samples in rows:
                fam = out.get(name)
                if fam is None:
                    extra = labels_of.get(name, ("partition",) if name.startswith("csaf_takeover_") and kind == "gauge"
                                          else ())
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    fam = out[name] = cls(name, help_, labels=("node", *extra))
                for values, value in samples:
                    fam.add_metric((m.node, *values), value)
        for i in range(2):  # one family of each name, the samples of every store in it
            if calls:
                fam = calls[0][i]
                for other in calls[1:]:
                    fam.samples.extend(other[i].samples)
                yield fam
        yield from out.values()


# ---------------------------------------------------------------- HTTP --

class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def wsgi_app(registry: CollectorRegistry = REGISTRY,
             health: Callable[[], dict[str, Any]] | None = None) -> Callable[..., Any]:
    """A WSGI app: ``/health`` answers `health()` as JSON (200 when its ``ok`` is true, else
    503); every other path the registry's metrics (Prometheus text format)."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "/").rstrip("/") == "/health":
            if health is None:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"no health check here\n"]
            try:
                h = health()
            except Exception as e:  # noqa: BLE001 - a health check that fails is an answer too
                h = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            body = json.dumps(h, indent=2, default=str).encode() + b"\n"
            start_response("200 OK" if h.get("ok") else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)

    return app


class MetricsServer:
    """``/metrics`` and ``/health`` over HTTP on a thread of its own; `close()` stops it."""

    def __init__(self, app: Callable[..., Any], port: int, host: str = "0.0.0.0") -> None:
        self._httpd = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        self.host, self.port = host, self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"csaf-metrics-{self.port}",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(store: ClusterStoreAndForward, port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve the store's registry on ``/metrics`` and ``store.health()`` on ``/health``."""
    registry = store.metrics.registry if isinstance(store.metrics, StoreMetrics) else REGISTRY
    return MetricsServer(wsgi_app(registry, store.health), port, host)

