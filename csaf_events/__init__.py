"""csaf-events: the Cluster Store-and-Forward of a MatsSocket cluster, event-sourced on a log.

The public names load on first use, so importing one module of the package (for example
the event catalog, which the projections build on) does not import the whole store.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CurrentNode": "csaf_events.dtos", "MessageType": "csaf_events.dtos",
    "RequestCorrelation": "csaf_events.dtos", "SessionDto": "csaf_events.dtos",
    "StoredInMessage": "csaf_events.dtos", "StoredOutMessage": "csaf_events.dtos",
    "CsafError": "csaf_events.errors", "DataAccessError": "csaf_events.errors",
    "MessageIdAlreadyExistsError": "csaf_events.errors", "WrongUserError": "csaf_events.errors",
    "ConflictError": "csaf_events.errors", "UnitOfWorkError": "csaf_events.errors",
    "UnitOfWork": "csaf_events.unit_of_work",
    "open_store": "csaf_events.factory", "ClusterStoreAndForward": "csaf_events.store",
    "Limits": "csaf_events.validation",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from csaf_events.dtos import (
        CurrentNode,
        MessageType,
        RequestCorrelation,
        SessionDto,
        StoredInMessage,
        StoredOutMessage,
    )
    from csaf_events.errors import (
        ConflictError,
        CsafError,
        DataAccessError,
        MessageIdAlreadyExistsError,
        UnitOfWorkError,
        WrongUserError,
    )
    from csaf_events.factory import open_store
    from csaf_events.store import ClusterStoreAndForward
    from csaf_events.unit_of_work import UnitOfWork
    from csaf_events.validation import Limits


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'csaf_events' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
