"""A unit of work: several calls for one session, decided together by its owner and committed
in one append, all or nothing (what the Java server gets from its database transaction).

Each call is answered at once: its session's owner decides it after the unit's earlier calls,
on the current state, and writes nothing (reads in a unit see its own writes). Writes that
return nothing whatever the state (`commands.BLIND_WRITES`: inbox updates and deletes, the
outbox marks, deregister, close) are only recorded, without a round trip. At `commit` the
owner decides them all again, on the state then, and appends their events in one go. A call
that now fails raises its error (`MessageIdAlreadyExistsError` for an id that another node
stored meanwhile); a call that now returns other than it did raises `ConflictError`: the
caller acted on an answer that no longer holds. Either way nothing is written.

Writes for other sessions (`store_message_in_outbox`, `store_request_correlation`) are
relays: committed in the unit's own partition with the unit, then delivered to the target's
owner and marked there, so that a second delivery (the node died before the relay was
marked done) changes nothing: exactly once. `commit` delivers them before it returns; one it
could not deliver is delivered by the owner of the unit's partition later (`RelaySweeper`).
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from csaf_events.core import commands as cmd
from csaf_events.core.codec import encode_command
from csaf_events.core.errors import CsafError, UnitOfWorkError
from csaf_events.core.relays import deliver
from csaf_events.core.session_calls import SessionCalls
from csaf_events.core.validation import Limits

#: The unit a `with` block has open in this thread or task: units do not nest.
_OPEN: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar("csaf_open_unit", default=None)

#: Calls one unit may hold: each call re-decides the ones before it.
MAX_CALLS = 256


def check_not_nested() -> None:
    """`UnitOfWorkError` when a unit is open here already (`store.unit_of_work` inside a
    `with` block of another unit would commit on its own, outside the first)."""
    open_unit = _OPEN.get()
    if open_unit is not None:
        raise UnitOfWorkError(f"a unit of work of session {open_unit.session_id!r} is open here; "
                              f"units of work do not nest: make the calls on that unit")


class UnitOfWork(SessionCalls):
    """Made by `ClusterStoreAndForward.unit_of_work(session_id)`; its calls are the store's
    per-session methods. Use it as a context manager (commits at the end of the block, rolls
    back when the block raises), or call `commit` / `rollback`."""

    def __init__(self, session_id: str, node_name: str, limits: Limits, run: Callable[[str, cmd.Command], Any],
                 now: int) -> None:
        self.session_id = session_id
        self.node_name = node_name
        self.limits = limits
        self.now = now  # the time every write of the unit carries
        self._run_on_owner = run
        self._steps: list[cmd.Command] = []
        self._expected: list[str] = []
        self._relays: list[tuple[str, str, str]] = []
        self._finished: str | None = None  # "committing" / "committed" / "rolled back" / "failed"
        self._lock = threading.Lock()  # a call from another thread never slips past the commit
        self._token: contextvars.Token[UnitOfWork | None] | None = None

    def __enter__(self) -> UnitOfWork:
        check_not_nested()
        self._token = _OPEN.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is not None:
            _OPEN.reset(self._token)
            self._token = None
        if self._finished is not None:  # committed or rolled back inside the block
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    @property
    def is_open(self) -> bool:
        """Whether calls can still join the unit (not committing or finished)."""
        return self._finished is None

    @property
    def calls(self) -> int:
        """Calls made in the unit so far (relays included)."""
        return len(self._steps) + len(self._relays)

    def _run(self, session_id: str, command: cmd.Command) -> Any:
        with self._lock:
            return self._add(session_id, command)

    def _add(self, session_id: str, command: cmd.Command) -> Any:
        self._check_usable()
        if len(self._steps) + len(self._relays) >= MAX_CALLS:
            raise UnitOfWorkError(f"a unit of work holds at most {MAX_CALLS} calls")
        if session_id != self.session_id:
            return self._relay(session_id, command)
        if type(command) in cmd.BLIND_WRITES:
            self._steps.append(command)
            self._expected.append(cmd.fingerprint(None))
            return None
        steps = (*self._steps, command)
        result, fp = self._run_on_owner(self.session_id, cmd.UnitPreview(
            self.session_id, self.now, steps, tuple(self._expected)))
        self._steps.append(command)
        self._expected.append(fp)
        return list(result) if isinstance(result, tuple) else result

    def _relay(self, target: str, command: cmd.Command) -> Any:
        if type(command) not in cmd.RELAYED:
            raise UnitOfWorkError(
                f"a unit of work of session {self.session_id!r} cannot {type(command).__name__} for session "
                f"{target!r}: for other sessions it can only store outbox messages and request correlations")
        self._relays.append((uuid.uuid4().hex, target, encode_command(command).decode()))
        if isinstance(command, cmd.StoreOutbox):  # what the store would return: the target's node now
            return self._run_on_owner(target, cmd.GetCurrentNode(target))
        return None

    def commit(self) -> None:
        """Decide every call again on the owner and append their events together; then deliver
        the relays. Raises the error of a call that now fails, or `ConflictError`; nothing is
        written then. The unit is finished either way."""
        with self._lock:
            self._check_usable()
            self._finished = "committing"
        if not self._steps and not self._relays:
            self._finished = "committed"
            return
        try:
            self._run_on_owner(self.session_id, cmd.Unit(self.session_id, self.now, tuple(self._steps),
                                                         tuple(self._expected), tuple(self._relays)))
        except BaseException:
            self._finished = "failed"
            raise
        self._finished = "committed"
        for relay_id, target, command in self._relays:
            try:
                deliver(self._run_on_owner, self.session_id, relay_id, target, command, self.now)
            except CsafError:  # committed: the owner of this unit's partition delivers it later
                pass

    def savepoint(self) -> tuple[int, int]:
        """A point to roll back to (`rollback_to`): the calls and relays made so far."""
        with self._lock:
            return len(self._steps), len(self._relays)

    def rollback_to(self, point: tuple[int, int]) -> None:
        """Drop the calls and relays made since `point`; the unit stays open."""
        with self._lock:
            self._check_usable()
            steps, relays = point
            del self._steps[steps:], self._expected[steps:], self._relays[relays:]

    def rollback(self) -> None:
        """Drop the unit: nothing of it was written, nothing will be."""
        with self._lock:
            self._check_usable()
            self._finished = "rolled back"

    def _check_usable(self) -> None:
        if self._finished is not None:
            raise UnitOfWorkError(f"this unit of work of session {self.session_id!r} is {self._finished}; "
                                  f"open a new one")
