"""The hook through which a store's public calls are observed (counted and timed by
`csaf_events.ops.metrics`): each public method of the store is marked `@observed`, and calls
its holder's `metrics` when there is one. A store without metrics runs each call with one
check more, and nothing else."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast


class CallObserver(Protocol):
    def observe(self, method: str, fn: Callable[..., Any], holder: Any, args: tuple[Any, ...],
                kw: dict[str, Any]) -> Any:
        """Run ``fn(holder, *args, **kw)`` (the public call `method`) and return its result,
        or raise its error, observing it."""

    def record(self, method: str, seconds: float, routed: bool, error: BaseException | None) -> None:
        """One call of `method` that ended, made without `observe`: one that did not hold a
        thread while it waited (`csaf_events.async_store`)."""


class StoreObserver(CallObserver, Protocol):
    """What a store tells its metrics besides its calls."""

    def attach(self) -> None:
        """The store booted: report it."""

    def detach(self) -> None:
        """The store closed: report it no longer."""


F = TypeVar("F", bound=Callable[..., Any])


def observed(fn: F) -> F:
    """Mark a public method of a store: its holder's `metrics` (a `CallObserver`, or None)
    observes every call."""
    method = fn.__name__

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kw: Any) -> Any:
        observer = self.metrics
        if observer is None:
            return fn(self, *args, **kw)
        return observer.observe(method, fn, self, args, kw)
    return cast(F, call)
