"""The periodic jobs every MatsSocket node runs against its store, as a background runner.

A MatsSocket server keeps the CSAF tidy with three jobs (MatsSocket's
``LivelinessAndTimeoutAndScavenger``); `Maintenance` runs them on one daemon thread:

- **liveliness**: every `liveliness_interval` (default 54 s, MatsSocket's "less than a
  minute"), ``store.notify_session_liveliness(live_sessions())`` for the sessions whose
  WebSocket this node holds right now;
- **timeout**: every `timeout_interval` (default 5 min),
  ``store.timeout_sessions(now - session_timeout_ms)``: sessions no node has reported live
  for `session_timeout_ms` (default 3 days, MatsSocket's value) are removed with their
  data. `timeout_sessions` is cluster-wide and decided by the partition owners, so every
  node may run it: no session is reported timed out twice;
- **scavenge**: every `scavenge_interval` (default 90 min),
  ``store.scavenge_session_remnants()`` removes inbox/outbox/correlation entries of
  sessions that no longer exist.

Jitter: each job waits its interval plus a random extra of up to ``jitter * interval``
(default 10 %), drawn once per job when the runner starts, as MatsSocket does. Nodes
started together drift apart instead of all hitting the store at the same instant.
As in MatsSocket, the first run of a job is one interval after `start()`.

A job that raises is logged (or handed to `on_error`) and runs again at its next time;
it never stops the runner. `stop()` wakes the thread at once: a job already running
finishes, no new one starts.

Use::

    with open_store("node-a", data_dir) as store, Maintenance(store, server.live_session_ids):
        ...  # serve WebSockets

`run_liveliness()`, `run_timeout()` and `run_scavenge()` run one job now, in the calling
thread (for tests and operators); `run_once()` runs all three.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from csaf_events.core.clock import now_ms

if TYPE_CHECKING:
    from csaf_events.store import ClusterStoreAndForward

log = logging.getLogger(__name__)

LIVELINESS_INTERVAL = 54.0                    # seconds; + jitter stays under a minute
TIMEOUT_INTERVAL = 5 * 60.0                   # seconds
SESSION_TIMEOUT_MS = 3 * 24 * 60 * 60 * 1000  # 3 days without liveliness
SCAVENGE_INTERVAL = 90 * 60.0                 # seconds


def _log_error(job: str, error: BaseException) -> None:
    log.warning("CSAF maintenance job %r failed; it runs again at its next time", job, exc_info=error)


@dataclass
class JobStats:
    """What one job has done so far (for operators and tests)."""

    runs: int = 0
    failures: int = 0
    last_result: object = None
    last_error: BaseException | None = None
    last_run_ms: int | None = None


class Maintenance:
    """Runs the liveliness, timeout and scavenge jobs of one node on a background thread.

    `live_sessions` returns the ids of the sessions this node holds a WebSocket for; it
    is called from the runner thread at each liveliness run. Intervals are in seconds;
    an interval of None disables that job. `clock` gives now in epoch milliseconds (the
    timeout job's reference).
    """

    def __init__(self, store: ClusterStoreAndForward, live_sessions: Callable[[], Iterable[str]], *,
                 liveliness_interval: float | None = LIVELINESS_INTERVAL,
                 timeout_interval: float | None = TIMEOUT_INTERVAL,
                 session_timeout_ms: int = SESSION_TIMEOUT_MS,
                 scavenge_interval: float | None = SCAVENGE_INTERVAL,
                 jitter: float = 0.1,
                 on_error: Callable[[str, BaseException], None] | None = None,
                 clock: Callable[[], int] = now_ms,
                 name: str | None = None) -> None:
        if not callable(live_sessions):
            raise TypeError("live_sessions must be a callable returning the ids of this node's live sessions")
        for arg, value in (("liveliness_interval", liveliness_interval), ("timeout_interval", timeout_interval),
                           ("scavenge_interval", scavenge_interval)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{arg} must be a positive number of seconds or None, got {value!r}")
        if isinstance(session_timeout_ms, bool) or not isinstance(session_timeout_ms, int) or session_timeout_ms < 0:
            raise ValueError(f"session_timeout_ms must be a non-negative int, got {session_timeout_ms!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be a fraction from 0 to 1, got {jitter!r}")
        self.store = store
        self.live_sessions = live_sessions
        self.session_timeout_ms = session_timeout_ms
        self.on_error = on_error or _log_error
        self._clock = clock
        self._name = name or f"csaf-maintenance-{getattr(store, 'node_name', 'node')}"
        self._jobs: dict[str, tuple[Callable[[], object], float]] = {}
        for job, fn, interval in (("liveliness", self.run_liveliness, liveliness_interval),
                                  ("timeout", self.run_timeout, timeout_interval),
                                  ("scavenge", self.run_scavenge, scavenge_interval)):
            if interval is not None:
                # constant extra per job, as MatsSocket: spreads nodes started together
                self._jobs[job] = (fn, float(interval) * (1 + random.random() * jitter))
        self.stats: dict[str, JobStats] = {job: JobStats() for job in ("liveliness", "timeout", "scavenge")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._job_lock = threading.Lock()  # one job at a time, runner or run_*() callers

    # ----------------------------------------------------------------- the jobs --
    def run_liveliness(self) -> int:
        """Notify liveliness of this node's live sessions; returns how many were notified."""
        sids = list(self.live_sessions())
        if sids:
            self.store.notify_session_liveliness(sids)
        return len(sids)

    def run_timeout(self) -> list[str]:
        """Time out sessions not live for `session_timeout_ms`; returns their ids."""
        timed_out = self.store.timeout_sessions(max(0, self._clock() - self.session_timeout_ms))
        if timed_out:
            log.info("timed out %d session(s) not live for %d ms", len(timed_out), self.session_timeout_ms)
        return timed_out

    def run_scavenge(self) -> int:
        """Remove remnants of sessions that no longer exist; returns how many entries."""
        n = self.store.scavenge_session_remnants()
        if n:
            log.info("scavenged %d remnant(s) of sessions that no longer exist", n)
        return n

    def run_once(self) -> dict[str, object]:
        """Run every enabled job once now, in this thread; {job: result or the error}."""
        return {job: self._run_job(job) for job in self._jobs}

    def _run_job(self, job: str) -> object:
        fn = self._jobs[job][0]
        stats = self.stats[job]
        with self._job_lock:
            stats.last_run_ms = self._clock()
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - logged, never fatal to the runner
                stats.failures += 1
                stats.last_error = e
                try:
                    self.on_error(job, e)
                except Exception:  # a broken error handler must not kill the runner either
                    log.exception("on_error handler failed for job %r", job)
                return e
            stats.runs += 1
            stats.last_result = result
            return result

    # --------------------------------------------------------------- the runner --
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Maintenance:
        """Start the background thread (idempotent while running)."""
        if self.running:
            return self
        if self._stop.is_set():
            raise RuntimeError("this Maintenance was stopped; create a new one")
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the runner: no new job starts, a running one finishes. Returns True if the
        thread ended within `timeout` seconds (False: a job is still running)."""
        self._stop.set()
        t = self._thread
        if t is None or t is threading.current_thread():
            return True
        t.join(timeout)
        return not t.is_alive()

    def __enter__(self) -> Maintenance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        start = time.monotonic()
        due = {job: start + interval for job, (_, interval) in self._jobs.items()}
        while due and not self._stop.is_set():
            job = min(due, key=due.__getitem__)
            if self._stop.wait(max(0.0, due[job] - time.monotonic())):
                break
            self._run_job(job)
            # next run one interval after this one was due; if a slow job made us miss
            # that, one interval from now (no burst of catch-up runs)
            interval = self._jobs[job][1]
            now = time.monotonic()
            due[job] = due[job] + interval if due[job] + interval > now else now + interval
