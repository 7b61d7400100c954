"""csaf-events: the Cluster Store-and-Forward of a MatsSocket cluster, event-sourced on a log."""

from csaf_events.dtos import (
    CurrentNode, MessageType, RequestCorrelation, SessionDto, StoredInMessage, StoredOutMessage,
)
from csaf_events.errors import CsafError, DataAccessError, MessageIdAlreadyExistsError, WrongUserError
from csaf_events.factory import open_store
from csaf_events.store import ClusterStoreAndForward
from csaf_events.validation import Limits

__all__ = [
    "ClusterStoreAndForward", "CsafError", "CurrentNode", "DataAccessError", "Limits", "MessageIdAlreadyExistsError",
    "MessageType", "RequestCorrelation", "SessionDto", "StoredInMessage", "StoredOutMessage", "WrongUserError",
    "open_store",
]
