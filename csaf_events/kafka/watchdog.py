"""Giving up on a blocking call that does not return in time, without a thread hop per call.

A call that librdkafka does not bound itself (see `NodeTransaction._send_offsets`) could be
made on a thread of its own and waited for with a timeout, but every such call then costs
two hand-offs of the interpreter lock, and with the lock busy that was 3 ms of a 10 ms
transaction. So the caller makes the call itself, and a watchdog thread, which wakes a
few times a second, gives up on it once it has run past its bound: it hands the call's
context to `on_stuck` (which fails the call's work and lets a new thread go on), and the
caller, if the call ever returns, learns from `done` that it was given up on and must
touch nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: How often the watchdog looks; a stuck call is given up on at most this much after its bound.
PERIOD_S = 0.25


class Watch:
    """One call being watched."""

    __slots__ = ("context", "deadline", "given_up")

    def __init__(self, deadline: float, context: Any) -> None:
        self.deadline = deadline
        self.context = context
        self.given_up = False


class Watchdog:
    def __init__(self, name: str, on_stuck: Callable[[Any], None], period: float = PERIOD_S) -> None:
        self._on_stuck = on_stuck
        self._period = period
        self._lock = threading.Lock()
        self._watched: list[Watch] = []
        self._closed = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def watch(self, bound: float, context: Any) -> Watch:
        """Start watching a call that should return within `bound` seconds."""
        w = Watch(time.monotonic() + bound, context)
        with self._lock:
            self._watched.append(w)
        return w

    def done(self, w: Watch) -> bool:
        """The call returned (or raised). True if it had been given up on: its context now
        belongs to `on_stuck`, and the caller must leave it alone."""
        with self._lock:
            if w.given_up:
                return True
            self._watched.remove(w)
            return False

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.wait(self._period):
            now = time.monotonic()
            with self._lock:
                stuck = [w for w in self._watched if w.deadline <= now]
                for w in stuck:
                    w.given_up = True
                    self._watched.remove(w)
            for w in stuck:
                try:
                    self._on_stuck(w.context)
                except Exception:  # the watchdog must outlive a bug in one handler
                    log.exception("handling a stuck call failed")
