"""CPU of this process's threads over a run, by role: where a node's CPU per call goes.

Each thread's user + system time is read from ``/proc/self/task/<tid>/stat`` at the start
and the end of the measured run (exact kernel accounting, no sampling, no slowdown). A
thread is named by its Python name (``threading.Thread.native_id``) or, for threads of C
libraries, by the name they gave themselves (librdkafka: ``rdk:broker...``, ``rdk:main``;
RocksDB: ``rocksdb:...``), and put in a role (`ROLES`). Linux only; elsewhere nothing is
reported.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_TASKS = Path("/proc/self/task")

#: (role, pattern of the thread's name), first match wins.
ROLES: tuple[tuple[str, str], ...] = (
    ("callers", r"^csaf-workload"),
    ("committer", r"^csaf-commit-[^0-9]"),
    ("group-commit hand-off", r"^csaf-commit-\d+$"),
    ("registry tail", r"^csaf-registry"),
    ("owners group and command reader", r"^csaf-owner"),
    ("routed commands", r"^csaf-routed"),
    ("reply reader", r"^csaf-replies"),
    ("takeover", r"^csaf-takeover"),
    ("node channel", r"^csaf-(channel|nodes)"),
    ("cluster-wide fan-out", r"^csaf-fanout"),
    ("relay sweeper", r"^csaf-relays"),
    ("librdkafka", r"^rdk:"),
    ("rocksdb", r"^rocksdb"),
    ("main", r"^MainThread$"),
)


def _role(name: str) -> str:
    for role, pattern in ROLES:
        if re.search(pattern, name):
            return role
    return "other: " + re.sub(r"[-_]?\d+$", "", name)


def _snapshot() -> dict[int, tuple[str, float, float]]:
    """tid -> (thread name, user CPU seconds so far, system CPU seconds so far)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float, float]] = {}
    try:
        tids = [int(p.name) for p in _TASKS.iterdir()]
    except OSError:
        return out
    for tid in tids:
        try:
            stat = (_TASKS / str(tid) / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (names.get(tid, comm), int(fields[11]) / _TICK, int(fields[12]) / _TICK)
    return out


class ThreadCpu:
    """Started at the beginning of a run; `stop()` gives each role's CPU seconds in it.

    The threads are read again every `interval` seconds, so a thread that ends before the
    run does (the callers' pool is shut down with the workload) counts with what it had
    used at its last reading: at most `interval` of its time is lost."""

    def __init__(self, interval: float = 0.5) -> None:
        self._before = _snapshot()
        self._last = dict(self._before)
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._watch, name="bench-thread-cpu", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            self._last.update(_snapshot())

    def stop(self) -> dict[str, tuple[float, float]]:
        """role -> (user, system) CPU seconds used in the run, the busiest role first."""
        self._stop.set()
        self._thread.join()
        self._last.update(_snapshot())
        by_role: dict[str, tuple[float, float]] = {}
        for tid, (name, user, system) in self._last.items():
            _, user0, system0 = self._before.get(tid, (name, 0.0, 0.0))
            if (user - user0) + (system - system0) > 0 and name != "bench-thread-cpu":
                u, s = by_role.get(_role(name), (0.0, 0.0))
                by_role[_role(name)] = (u + user - user0, s + system - system0)
        return dict(sorted(by_role.items(), key=lambda kv: -sum(kv[1])))


def per_call(by_role: dict[str, tuple[float, float]], calls: int) -> dict[str, Any]:
    """Each role's CPU (user + system) in ms per store call, the total, and the total's
    system part (the kernel's: thread wake-ups, futexes, sockets, files)."""
    if not calls:
        return {}
    out: dict[str, Any] = {role: round((u + s) * 1000 / calls, 4) for role, (u, s) in by_role.items()}
    out["total"] = round(sum(u + s for u, s in by_role.values()) * 1000 / calls, 4)
    out["total_system"] = round(sum(s for _, s in by_role.values()) * 1000 / calls, 4)
    return out
