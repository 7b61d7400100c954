"""Sums that many threads add to without sharing a lock: each thread adds to slots of its
own, a reader adds the threads' slots up.

A lock taken by every caller (or every partition's leader) for a few float additions is
a convoy under the interpreter lock: when its holder is switched out, every other thread
that wants it blocks, and each hand-off of the lock costs a switch. Here a thread's slots
are written only by that thread (one list item store at a time, each seen whole by a
reader), so the hot path takes no lock; registration (once per thread) and reading do.
A reader may see one thread's add half done (a count without its seconds): sums read
while work runs are a moment's view, as they always were.
"""

from __future__ import annotations

import threading


class Tally:
    """`width` sums (floats or ints), added to per thread, totalled when read."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._local = threading.local()
        self._lock = threading.Lock()  # registration and reading only
        self._threads: list[tuple[threading.Thread, list]] = []
        self._retired = [0] * width  # the sums of threads that ended

    def slots(self) -> list:
        """The calling thread's slots, to add to in place (``slots[i] += x``)."""
        try:
            slots: list = self._local.slots
        except AttributeError:
            slots = self._local.slots = [0] * self.width
            with self._lock:
                self._threads.append((threading.current_thread(), slots))
        return slots

    def __len__(self) -> int:
        """Threads with slots of their own (ended ones are folded in when totals are read)."""
        with self._lock:
            return len(self._threads)

    def totals(self) -> list:
        """Every slot summed over all threads, ended ones included."""
        with self._lock:
            live = []
            for thread, slots in self._threads:
                if thread.is_alive():
                    live.append((thread, slots))
                else:  # it adds nothing more: fold it in, so threads that come and go cost no memory
                    self._retired = [a + b for a, b in zip(self._retired, slots, strict=True)]
            self._threads = live
            out = list(self._retired)
        for _, slots in live:
            for i, x in enumerate(list(slots)):
                out[i] += x
        return out
