"""CPU of this process's threads over a run, by role: where a node's CPU per call goes.

Each thread's CPU time is read from its own CPU clock, and its context switches from
``/proc/self/task/<tid>/status``, at the start and the end of the measured run (no sampling,
no slowdown). A
thread is named by its Python name (``threading.Thread.native_id``) or, for threads of C
libraries, by the name they gave themselves (librdkafka: ``rdk:broker...``, ``rdk:main``;
RocksDB: ``rocksdb:...``), and put in a role (`ROLES`). Linux only; elsewhere nothing is
reported.
"""

from __future__ import annotations

import os
import re
import threading
import time
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


#: What is read of each thread: CPU seconds in user and kernel mode, and context switches
#: (voluntary: it waited, for a lock, a condition, the interpreter lock or I/O; forced: it
#: was preempted).
FIELDS = ("user_s", "system_s", "waits", "preemptions")


def _thread_clock_s(tid: int) -> float | None:
    """The exact CPU time of thread `tid` of this process (its Linux per-thread CPU clock, named
    by the thread id as glibc's `pthread_getcpuclockid` names it), None once it has ended. By
    id, not by `pthread_t`: the handle of a thread that ended is freed memory, and reading a
    clock through it can crash the process."""
    try:
        return time.clock_gettime((~tid << 3) | 6)  # MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)
    except OSError:
        return None


def _snapshot() -> dict[int, tuple[str, tuple[float, ...]]]:
    """tid -> (thread name, the `FIELDS` so far).

    A thread's CPU time is read from its own CPU clock (exact): the kernel's user and system
    ticks in /proc are samples (a thread that runs between ticks has been seen at a third of
    its time) and give only the split. A /proc listing can also skip live tasks while others
    exit, so the interpreter's threads are read by id as well."""
    threads = {t.native_id: t for t in threading.enumerate() if t.native_id is not None}
    out: dict[int, tuple[str, tuple[float, ...]]] = {}
    try:
        tids = {int(p.name) for p in _TASKS.iterdir()} | set(threads)
    except OSError:
        tids = set(threads)
    for tid in tids:
        thread = threads.get(tid)
        clock = _thread_clock_s(tid)
        if clock is None:
            continue  # ended meanwhile
        try:
            stat = (_TASKS / str(tid) / "stat").read_text()
            status = (_TASKS / str(tid) / "status").read_text()
        except OSError:  # ended between the two readings
            if thread is not None:
                out[tid] = (thread.name, (clock, 0.0, 0, 0))
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        user, system = int(fields[11]) / _TICK, int(fields[12]) / _TICK
        share = system / (user + system) if user + system else 0.0
        switches = dict(line.split(":\t") for line in status.splitlines() if "ctxt_switches" in line)
        out[tid] = (thread.name if thread is not None else comm,
                    (clock * (1 - share), clock * share, int(switches["voluntary_ctxt_switches"]),
                     int(switches["nonvoluntary_ctxt_switches"])))
    return out


class ThreadCpu:
    """Started at the beginning of a run; `stop()` gives each role's `FIELDS` in it.

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
            self.read()

    def read(self) -> None:
        """Read every thread now (the watcher does, every `interval`)."""
        self._last.update(_snapshot())

    def stop(self) -> dict[str, list[float]]:
        """role -> its `FIELDS` in the run, the busiest role first."""
        self._stop.set()
        self._thread.join()
        self._last.update(_snapshot())
        zero = (0.0,) * len(FIELDS)
        by_role: dict[str, list[float]] = {}
        for tid, (name, now) in self._last.items():
            if name == "bench-thread-cpu":
                continue
            was = self._before.get(tid, (name, zero))[1]
            used = [b - a for a, b in zip(was, now, strict=True)]
            ran = used[0] + used[1]  # exact; its split comes from samples and may move between readings
            used[1] = min(max(used[1], 0.0), max(ran, 0.0))
            used[0] = ran - used[1]
            if any(used):
                total = by_role.setdefault(_role(name), [0.0] * len(FIELDS))
                for i, x in enumerate(used):
                    total[i] += x
        return dict(sorted(by_role.items(), key=lambda kv: -(kv[1][0] + kv[1][1])))


def per_call(by_role: dict[str, list[float]], calls: int) -> dict[str, Any]:
    """Per store call: each role's CPU (user + system) in ms, and its context switches."""
    if not calls:
        return {}
    out: dict[str, Any] = {}
    for role, (user, system, waits, preemptions) in by_role.items():
        out[role] = {"ms": round((user + system) * 1000 / calls, 4),
                     "system_ms": round(system * 1000 / calls, 4),
                     "waits": round(waits / calls, 3), "preemptions": round(preemptions / calls, 3)}
    return out
