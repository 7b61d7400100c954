"""`store.health()`: what an operator (or a load balancer) asks a node, read from the facts
the node keeps anyway.

    {"ok": true, "status": "ok", "node": "node-a", "backend": "kafka", "booted": true,
     "closed": false, "partitions": 12, "owned_partitions": [0, 3, 7], "assigned_partitions": [0, 3, 7],
     "fenced": false, "registry_lag": 0, "last_transaction_error": null, "last_poll_error": null,
     "routed_in_flight": 0, "routed_timed_out": 0, "projection_disk_bytes": 1234567,
     "takeovers": [{"partition": 0, "seconds": 0.41, "settle_seconds": 0.02, "restore_seconds": 0.39,
                    "events": 1200, "attempts": 1, "finished_at": 1764310000.0}, ...]}

``ok`` is true when the store is booted and not closed, is not fenced, and serves every
partition the owners group gave it (false while a takeover runs). ``fenced`` is true when
the node's last transaction was refused as coming from a fenced producer (another process
took this node's transactional id, or its transaction timed out while it stalled) until a
transaction commits, or as coming from a member the owners group has moved on from, for a
minute after that refusal (a rebalance settles within seconds). ``registry_lag`` is the number of committed records of
the sessions topic that this node's registry has not applied yet (None when the topic's end
could not be read; always 0 embedded).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from csaf_events.store import ClusterStoreAndForward

#: Seconds the registry lag's end-offset request may take (a scrape must not hang).
LAG_TIMEOUT = 2.0


def watch(store: ClusterStoreAndForward) -> None:
    """Let the log lines of a booted store's threads name it (see `csaf_events.logs`)."""
    from csaf_events import logs
    logs.track(store)


#: Seconds a transaction aborted because the owners group moved on counts as fenced: a
#: rebalance settles within seconds, a node still refused after that keeps failing anew.
GROUP_MOVED_FENCE_S = 60.0


def is_fencing(error: str | None) -> bool:
    """A transaction error that says another member or producer superseded this node."""
    return is_producer_fenced(error) or is_group_moved(error)


def is_producer_fenced(error: str | None) -> bool:
    e = (error or "").lower()
    return "fenced" in e or "invalid_producer_epoch" in e


def is_group_moved(error: str | None) -> bool:
    return error is not None and error.startswith("NotOwnerError") and "transaction aborted" in error.lower()


def facts(store: ClusterStoreAndForward, registry_lag: bool = True) -> dict[str, Any]:
    """The health facts of a store (see the module docstring)."""
    backend = store._backend
    node = getattr(backend, "node", None)
    out: dict[str, Any] = {
        "ok": False, "status": "closed" if store._closed else "not booted", "node": store.node_name,
        "backend": "kafka" if hasattr(backend, "topics") else "embedded",
        "booted": store._booted, "closed": store._closed, "partitions": store.partitions,
        "owned_partitions": [], "assigned_partitions": [], "fenced": False, "registry_lag": None,
        "registry_lag_error": None, "last_transaction_error": None, "last_poll_error": None,
        "routed_in_flight": 0, "routed_timed_out": 0, "projection_disk_bytes": 0, "takeovers": [],
    }
    from csaf_events.metrics import dir_bytes
    path = getattr(backend, "_path", None)
    if path is not None:
        out["projection_disk_bytes"] = dir_bytes(path)
    if node is None or not store._booted or store._closed:
        return out
    event_log = node.log
    ownership = getattr(event_log, "ownership", None)
    owned = node.owned()
    out["owned_partitions"] = owned
    if ownership is None:  # embedded: one node owns everything, no transactions to fence
        out["assigned_partitions"] = owned
        out["registry_lag"] = 0
    else:
        assigned = ownership.assigned()
        out["assigned_partitions"] = assigned
        out["last_poll_error"] = ownership.last_poll_error
        out["takeovers"] = [
            {"partition": t.partition, "seconds": round(t.settle_seconds + t.restore_seconds, 6),
             "settle_seconds": round(t.settle_seconds, 6), "restore_seconds": round(t.restore_seconds, 6),
             "events": t.events, "attempts": t.attempts, "finished_at": t.finished_at}
            for t in sorted(ownership.takeovers.values(), key=lambda t: t.partition)
            if t.partition in assigned]
        out["last_transaction_error"] = event_log.last_transaction_error
        error = out["last_transaction_error"]
        t = node.timings
        out["fenced"] = bool(t.last_transaction_ok is False and (
            is_producer_fenced(error)
            or (is_group_moved(error) and time.monotonic() - t.last_transaction_at < GROUP_MOVED_FENCE_S)))
        router = getattr(backend, "router", None)
        if router is not None:
            out["routed_in_flight"] = len(router._waiting)
            out["routed_timed_out"] = getattr(router, "timed_out", 0)
        if registry_lag:
            out["registry_lag"], out["registry_lag_error"] = _registry_lag(backend)
    served_all = set(out["assigned_partitions"]) <= set(owned)
    out["ok"] = not out["fenced"] and served_all
    out["status"] = "fenced" if out["fenced"] else "ok" if served_all else "taking over"
    return out


def _registry_lag(backend: Any) -> tuple[int | None, str | None]:
    from confluent_kafka import IsolationLevel

    tailer = getattr(backend, "tailer", None)
    if tailer is None:
        return None, "no registry tail"
    try:
        ends = tailer.end_offsets(tailer._topic, range(tailer._partitions), IsolationLevel.READ_COMMITTED,
                                  LAG_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - reported, not raised: health must answer
        return None, f"{type(e).__name__}: {e}"
    pos = list(tailer._pos)
    return sum(max(0, end - pos[p]) for p, end in ends.items() if end >= 0), None
