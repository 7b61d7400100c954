"""csaf-events: the Cluster Store-and-Forward of a MatsSocket cluster, event-sourced on a log.

The public names load on first use, so importing one module of the package (for example
the event catalog, which the projections build on) does not import the whole store.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CurrentNode": "csaf_events.core.dtos", "MessageType": "csaf_events.core.dtos",
    "RequestCorrelation": "csaf_events.core.dtos", "SessionDto": "csaf_events.core.dtos",
    "StoredInMessage": "csaf_events.core.dtos", "StoredOutMessage": "csaf_events.core.dtos",
    "CsafError": "csaf_events.core.errors", "DataAccessError": "csaf_events.core.errors",
    "MessageIdAlreadyExistsError": "csaf_events.core.errors", "WrongUserError": "csaf_events.core.errors",
    "ConflictError": "csaf_events.core.errors", "UnitOfWorkError": "csaf_events.core.errors",
    "UnitOfWork": "csaf_events.core.unit_of_work",
    "open_store": "csaf_events.factory", "ClusterStoreAndForward": "csaf_events.store",
    "Limits": "csaf_events.core.validation",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from csaf_events.core.dtos import (
        CurrentNode,
        MessageType,
        RequestCorrelation,
        SessionDto,
        StoredInMessage,
        StoredOutMessage,
    )
    from csaf_events.core.errors import (
        ConflictError,
        CsafError,
        DataAccessError,
        MessageIdAlreadyExistsError,
        UnitOfWorkError,
        WrongUserError,
    )
    from csaf_events.core.unit_of_work import UnitOfWork
    from csaf_events.core.validation import Limits
    from csaf_events.factory import open_store
    from csaf_events.store import ClusterStoreAndForward


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'csaf_events' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
