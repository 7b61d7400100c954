"""`AsyncStore`: the store's calls for an application on asyncio, with no thread per call.

A store call either returns after its own CPU work (embedded: one RocksDB write) or waits
for something (Kafka: the transaction that commits it; a routed call: the owner's answer).
A hop to a thread and back costs more than a call of the first kind; a call of the second
kind must not hold the event loop while it waits, and a pool of threads would bound the
writes in flight, and so what a transaction carries, to its size. So:

- where the store's calls do not wait (``store.calls_wait`` False: embedded), every call
  runs on the loop, at once. (Gathering them as below was measured too: a caller that
  stores several messages in a row then suspends at each, the session's forwarder wakes
  between them and sends them a frame each, and the node pushed a third as much.)
- where they wait (Kafka), writes are gathered while the loop runs its ready callbacks and
  handed to the node once per loop iteration, one group per partition: where this node
  decides the partition, the group joins the next transaction together, and each caller is
  answered once what it wrote is committed, the answers of one transaction with one wake of
  the loop. A read runs on the loop where it need not wait (this node decides the partition
  and has applied every commit it knows of), else on a thread;
- whatever the node does not decide here (a partition of another node), and every blocking
  call given to `run` (a unit of work's), goes through the store's own methods on a thread
  of the face's pool.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from csaf_events.core import commands as cmd
from csaf_events.core.errors import CsafError, NotOwnerError
from csaf_events.core.node import unexpected
from csaf_events.core.pending import Pending
from csaf_events.core.session_calls import SessionCalls
from csaf_events.store import ClusterStoreAndForward

P = ParamSpec("P")
R = TypeVar("R")

_DECIDED = object()  # what a call returns where it returns its command's result


class _Taker(SessionCalls):
    """Checks a call's arguments and takes its command instead of running it."""

    def __init__(self, store: ClusterStoreAndForward) -> None:
        self.node_name = store.node_name
        self.limits = store.limits
        self.taken: tuple[str, cmd.Command] | None = None

    def _run(self, session_id: str, command: cmd.Command) -> Any:
        self.taken = (session_id, command)
        return _DECIDED


class AsyncStore:
    """`store`'s calls as coroutines (see the module docstring); `threads` for the calls
    that wait on a thread. Made on any thread; its coroutines run on one event loop."""

    def __init__(self, store: ClusterStoreAndForward, threads: int = 16) -> None:
        self.store = store
        self._inline = not store.calls_wait  # its calls run on the loop
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"csaf-store-{store.node_name}")
        self._taker = _Taker(store)
        self._gathered: dict[int, list[Pending]] = {}  # writes of this loop iteration, by partition
        self._flush_scheduled = False
        # answered writes, from the log's threads to the loop; one wake of the loop while any wait
        self._answered: deque[asyncio.Future[None]] = deque()
        self._wake_sent = False

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Any blocking call of the store (or of a unit of work): on the loop where the store's
        calls do not wait, else on a thread of the pool."""
        if self._inline:
            return fn(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def call(self, method: Callable[Concatenate[SessionCalls, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """One of the store's per-session calls, named by its method:
        ``await face.call(SessionCalls.outbox_messages_complete, session_id, ids)``. Its
        result, or its error, as the store's method gives them (and counted in its metrics)."""
        store = self.store
        if self._inline:
            return method(store, *args, **kwargs)
        taker = self._taker
        taker.taken = None
        returned = method(taker, *args, **kwargs)  # bad arguments raise here, before anything is queued
        if taker.taken is None:  # nothing to decide (no ids given)
            return returned
        session_id, command = taker.taken
        partition = store.partition_of(session_id)
        if command.READ_ONLY:
            return await self._read(method, partition, command, returned, *args, **kwargs)
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()
        pending = Pending(command)
        pending.on_done = lambda _: self._answer(loop, answered)
        group = self._gathered.get(partition)
        if group is None:
            group = self._gathered[partition] = []
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        group.append(pending)
        started = time.perf_counter()
        await answered
        if isinstance(pending.error, NotOwnerError):  # not executed here: the store's method finds the owner
            return await self.run(method, store, *args, **kwargs)
        return self._outcome(method, command, partition, started, pending.result, pending.error, returned)

    async def _read(self, method: Callable[Concatenate[SessionCalls, P], R], partition: int, command: cmd.Command,
                    returned: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        """A read: on the loop where it need not wait, else on a thread."""
        started = time.perf_counter()
        result: Any = None
        error: BaseException | None = None
        try:
            answered, result = self.store.read_at_once(partition, command)
        except Exception as e:  # noqa: BLE001 - its caller gets it (a CsafError, as _outcome makes it)
            answered, error = True, e
        if not answered:
            return await self.run(method, self.store, *args, **kwargs)
        return self._outcome(method, command, partition, started, result, error, returned)

    def _outcome(self, method: Callable[..., R], command: cmd.Command, partition: int, started: float,
                 result: Any, error: BaseException | None, returned: Any) -> R:
        """A call answered without the store's method, as that method would end it: counted in
        the store's metrics, its error raised (a `CsafError`), or its result returned."""
        if error is not None and not isinstance(error, CsafError):
            error = unexpected(command, partition, error)
        if self.store.metrics is not None:
            self.store.metrics.record(method.__name__, time.perf_counter() - started, False, error)
        if error is not None:
            raise error
        return cast(R, result) if returned is _DECIDED else returned

    def _flush(self) -> None:
        """Hand the writes gathered in this loop iteration to the node, a group per partition."""
        self._flush_scheduled = False
        gathered, self._gathered = self._gathered, {}
        for partition, group in gathered.items():
            try:
                decided = self.store.queue_group(partition, group)
            except CsafError as e:  # the store is closed: nothing was queued
                decided, reason = False, e
            else:
                reason = NotOwnerError(f"partition {partition} is decided by another node")
            if not decided:
                for p in group:
                    p.error = reason
                    assert p.on_done is not None, "every gathered write has its answer"
                    p.on_done(p)

    def close(self) -> None:
        """Wait for the calls running on threads, and end the pool."""
        self._executor.shutdown(wait=True)

    def _answer(self, loop: asyncio.AbstractEventLoop, answered: asyncio.Future[None]) -> None:
        """A queued write is answered (on the log's thread): wake its caller. Whoever finds
        no wake sent sends one; the loop clears the flag before it takes the answers, so an
        answer added after that take finds the flag clear and sends another."""
        self._answered.append(answered)
        if not self._wake_sent:
            self._wake_sent = True
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: its callers are gone
                self._wake_sent = False

    def _wake(self) -> None:
        self._wake_sent = False
        answered = self._answered
        while answered:
            future = answered.popleft()
            if not future.done():  # (cancelled: its caller is gone)
                future.set_result(None)
