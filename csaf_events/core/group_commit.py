"""Leader/follower group commit, used by the partition writers and the Kafka node transaction.

Callers add items to a queue. The first caller that finds no leader becomes the leader:
it commits everything queued in one go (up to `max_batch`) and hands every item its
outcome. Then it passes the lead on, because a leader that kept leading while work kept
coming would never return to its own caller. The next leader is a caller still waiting in
the queue, or the group's own hand-off thread when no thread waits (items added without
waiting, such as commands routed from other nodes). No thread hand-off is needed when things
are quiet: the caller does its own work. Nothing here is shared between groups: a pool common
to every partition would queue one partition's round behind another's.

Given a `runner`, no caller leads: every round is handed to it. That is for a commit that
only hands its items on (a Kafka append returns before the transaction commits): a caller
woken to lead would decide, hand on, and wait again, so each caller it leads for waits once
more, and each wake of a thread costs a wait for the interpreter lock too. The Kafka log
runs the rounds on the thread that commits them (`EventLog.round_runner`).
"""

from __future__ import annotations

import _thread
import queue
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

#: Runs a round (a call of no arguments) on a thread of its own choosing, later.
Runner = Callable[[Callable[[], None]], None]

#: Seconds a hand-off thread waits for another round before it ends (started again when needed).
HANDOFF_IDLE_S = 5.0


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
    def __init__(self, commit: Callable[[list[T]], None], max_batch: int | None = None,
                 name: str = "csaf-commit", runner: Runner | None = None) -> None:
        self._commit = commit  # must finish every item it is given (set its done)
        self._max_batch = max_batch
        self._runner = runner  # given: it runs every round, no caller leads one
        self._name = name
        self._lock = threading.Lock()
        self._queue: list[T] = []
        self._leading = False
        self._handoffs: queue.SimpleQueue[None] = queue.SimpleQueue()  # one entry per round to lead
        self._handoff_thread = False  # a hand-off thread runs (it ends when idle)

    def add(self, item: T) -> None:
        """Queue an item; the calling thread leads a round if nobody does."""
        with self._lock:
            if self._leading:
                self._queue.append(item)
                return
            self._leading = True  # and nothing is queued: a leader leaves only an empty queue
            if self._runner is not None:
                self._queue.append(item)
        if self._runner is None:
            self._lead([item])
        else:
            self._hand_off()

    def add_all(self, items: list[T]) -> None:
        """Queue items that no thread waits for, together: the runner (or the hand-off
        thread) leads their round, the calling thread goes on."""
        with self._lock:
            self._queue.extend(items)
            if self._leading:
                return
            self._leading = True
        self._hand_off()

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
            successor = next((i for i in self._queue if i.waiter), None) if self._runner is None else None
        if successor is not None:
            successor.promoted = True
            successor.done.set()
        else:
            self._hand_off()

    def _hand_off(self) -> None:
        """Have the runner, or else this group's hand-off thread, lead the next round."""
        if self._runner is not None:
            self._runner(self._round)
            return
        with self._lock:
            self._handoffs.put(None)  # under the lock: an ending thread looks at the queue under it
            if self._handoff_thread:
                return
            self._handoff_thread = True
        threading.Thread(target=self._hand_off_loop, name=self._name, daemon=True).start()

    def _hand_off_loop(self) -> None:
        while True:
            try:
                self._handoffs.get(timeout=HANDOFF_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._handoffs.empty():
                        self._handoff_thread = False
                        return
                continue
            self._round()
