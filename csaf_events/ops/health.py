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
minute after that refusal (a rebalance settles within seconds): the log says so
(`EventLog.status`). ``registry_lag`` is the number of committed records of the sessions
topic that this node's registry has not applied yet (None when the topic's end could not be
read; always 0 embedded).

Everything is read through the backend's and the log's ports (`Backend`, `EventLog.status`).
"""

from __future__ import annotations

import os
from typing import Any

from csaf_events.backend import Backend

#: Seconds the registry lag's end-offset request may take (a scrape must not hang).
LAG_TIMEOUT = 2.0


def facts(backend: Backend, node_name: str, partitions: int, booted: bool, closed: bool) -> dict[str, Any]:
    """The health facts of a store on `backend` (see the module docstring)."""
    out: dict[str, Any] = {
        "ok": False, "status": "closed" if closed else "not booted", "node": node_name,
        "backend": backend.kind, "booted": booted, "closed": closed, "partitions": partitions,
        "owned_partitions": [], "assigned_partitions": [], "fenced": False, "registry_lag": None,
        "registry_lag_error": None, "last_transaction_error": None, "last_poll_error": None,
        "routed_in_flight": 0, "routed_timed_out": 0, "projection_disk_bytes": dir_bytes(backend.projection_path),
        "takeovers": [],
    }
    if not booted or closed:
        return out
    node = backend.node
    owned = node.owned()
    status = node.log.status()
    assigned = status.assigned
    out["owned_partitions"] = owned
    out["assigned_partitions"] = assigned
    out["last_poll_error"] = status.last_poll_error
    out["takeovers"] = [
        {"partition": t.partition, "seconds": round(t.settle_seconds + t.restore_seconds, 6),
         "settle_seconds": round(t.settle_seconds, 6), "restore_seconds": round(t.restore_seconds, 6),
         "events": t.events, "attempts": t.attempts, "finished_at": t.finished_at}
        for t in status.takeovers if t.partition in assigned]
    out["last_transaction_error"] = status.last_transaction_error
    out["fenced"] = status.fenced
    out["routed_in_flight"], out["routed_timed_out"] = backend.routed_calls()
    out["registry_lag"], out["registry_lag_error"] = backend.registry_lag(LAG_TIMEOUT)
    served_all = set(assigned) <= set(owned)
    out["ok"] = not out["fenced"] and served_all
    out["status"] = "fenced" if out["fenced"] else "ok" if served_all else "taking over"
    return out


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under `path` (0 when it is gone)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                total += dir_bytes(e.path)
            else:
                total += e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total
