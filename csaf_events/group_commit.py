"""Leader/follower group commit, used by the partition writers and the Kafka node transaction.

Callers add items to a queue. The first caller that finds no leader becomes the leader:
it commits everything queued in one go (up to `max_batch`) and hands every item its
outcome. Then it passes the lead on, because a leader that kept leading while work kept
coming would never return to its own caller. The next leader is a caller still waiting in
the queue, or a pool thread when no thread waits (items added without waiting). No thread
hand-off is needed when things are quiet: the caller does its own work.
"""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

_HANDOFF = ThreadPoolExecutor(max_workers=4, thread_name_prefix="csaf-commit")


class Signal:
    """What `threading.Event` does for an item, on one bare lock (held while not set).

    An item is waited for by one thread and set once per wait, so the Condition and the
    two locks an Event allocates buy nothing, and they cost as much as the rest of a
    small command's bookkeeping."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # set already
            pass

    def clear(self) -> None:
        self._lock.acquire(False)

    def wait(self) -> None:
        self._lock.acquire()
        self._lock.release()


class Item(Protocol):
    done: Signal  # set when finished, or when promoted to lead
    promoted: bool  # woken to lead the next round, not finished
    waiter: bool  # a thread waits for it (and so can be asked to lead)


T = TypeVar("T", bound=Item)


class GroupCommit(Generic[T]):
    def __init__(self, commit: Callable[[list[T]], None], max_batch: int | None = None) -> None:
        self._commit = commit  # must finish every item it is given (set its done)
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[T] = []
        self._leading = False

    def add(self, item: T) -> None:
        """Queue an item; the calling thread leads a round if nobody does."""
        with self._lock:
            if self._leading:
                self._queue.append(item)
                return
            self._leading = True  # and nothing is queued: a leader leaves only an empty queue
        self._lead([item])

    def wait(self, item: T) -> None:
        """Wait until `item` is finished, leading rounds whenever asked to."""
        while True:
            item.done.wait()
            if not item.promoted:
                return
            item.promoted = False
            item.done.clear()
            self._round()

    def drain(self) -> list[T]:
        """Take every queued item out (to fail them: the committer is closing)."""
        with self._lock:
            queued, self._queue = self._queue, []
        return queued

    def _round(self) -> None:
        with self._lock:
            n = len(self._queue) if self._max_batch is None else self._max_batch
            group = self._queue[:n]
            del self._queue[:n]
        self._lead(group)

    def _lead(self, group: list[T]) -> None:
        """Commit `group`, then pass the lead on (or give it up when nothing is queued)."""
        if group:
            self._commit(group)
        with self._lock:
            if not self._queue:
                self._leading = False
                return
            successor = next((i for i in self._queue if i.waiter), None)
        if successor is not None:
            successor.promoted = True
            successor.done.set()
        else:
            _HANDOFF.submit(self._round)
