"""The store's calls for one session, once: checked (before anything is written) and turned
into a command for the session's partition. `ClusterStoreAndForward` runs each command on
the session's owner at once; a `UnitOfWork` gathers them and commits them together."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from csaf_events.core import commands as cmd
from csaf_events.core import validation as v
from csaf_events.core.dtos import CurrentNode, MessageType, RequestCorrelation, StoredInMessage, StoredOutMessage
from csaf_events.core.observe import CallObserver, observed
from csaf_events.core.validation import Limits


class SessionCalls:
    """The per-session methods of `ClusterStoreAndForward`; subclasses say how a command runs."""

    node_name: str
    limits: Limits
    metrics: CallObserver | None = None  # observes each call marked @observed (the store's metrics)

    def _run(self, session_id: str, command: cmd.Command) -> Any:
        """The command's result (each command has its own type: the callers cast it)."""
        raise NotImplementedError

    def _sid(self, session_id: object) -> str:
        return v.ident("session_id", session_id, self.limits)

    # ------------------------------------------------------------------- sessions --
    @observed
    def register_session_at_this_node(self, session_id: str, user_id: str, connection_id: str,
                                      client_lib_and_versions: str, app_name: str, app_version: str) -> int:
        """Make this node the session's only home; returns its created timestamp."""
        sid = self._sid(session_id)
        c = cmd.Register(
            sid, v.ident("user_id", user_id, self.limits), self.node_name,
            v.ident("connection_id", connection_id, self.limits),
            v.text("client_lib_and_versions", client_lib_and_versions, self.limits,
                   limit=self.limits.max_id_length * 4),
            v.text("app_name", app_name, self.limits, limit=self.limits.max_id_length),
            v.text("app_version", app_version, self.limits, limit=self.limits.max_id_length))
        return cast(int, self._run(sid, c))

    @observed
    def get_current_registered_node_for_session(self, session_id: str) -> CurrentNode | None:
        sid = self._sid(session_id)
        return cast("CurrentNode | None", self._run(sid, cmd.GetCurrentNode(sid)))

    @observed
    def is_session_exists(self, session_id: str) -> bool:
        sid = self._sid(session_id)
        return cast(bool, self._run(sid, cmd.SessionExists(sid)))

    @observed
    def deregister_session_from_this_node(self, session_id: str, connection_id: str) -> None:
        """Clear the session's home only if it is this node with this connection id."""
        sid = self._sid(session_id)
        self._run(sid, cmd.Deregister(sid, self.node_name, v.ident("connection_id", connection_id, self.limits)))

    @observed
    def close_session(self, session_id: str) -> None:
        """Delete the session and everything stored for it."""
        sid = self._sid(session_id)
        self._run(sid, cmd.Close(sid))

    # ---------------------------------------------------------------------- inbox --
    @observed
    def store_message_id_in_inbox(self, session_id: str, client_message_id: str) -> None:
        """Raises `MessageIdAlreadyExistsError` if the id is already stored for the session."""
        sid = self._sid(session_id)
        self._run(sid, cmd.StoreInbox(sid, v.ident("client_message_id", client_message_id, self.limits)))

    @observed
    def update_message_in_inbox(self, session_id: str, client_message_id: str, message_json: str | None,
                                message_binary: bytes | None) -> None:
        sid = self._sid(session_id)
        self._run(sid, cmd.UpdateInbox(
            sid, v.ident("client_message_id", client_message_id, self.limits),
            v.text("message_json", message_json, self.limits, optional=True),
            v.binary("message_binary", message_binary, self.limits)))

    @observed
    def get_message_from_inbox(self, session_id: str, client_message_id: str) -> StoredInMessage | None:
        sid = self._sid(session_id)
        return cast("StoredInMessage | None",
                    self._run(sid, cmd.GetInbox(sid, v.ident("client_message_id", client_message_id, self.limits))))

    @observed
    def delete_message_ids_from_inbox(self, session_id: str, client_message_ids: Iterable[str]) -> None:
        sid = self._sid(session_id)
        ids = v.ids("client_message_ids", client_message_ids, self.limits)
        if ids:
            self._run(sid, cmd.DeleteInbox(sid, ids))

    # --------------------------------------------------------------------- outbox --
    @observed
    def store_message_in_outbox(self, session_id: str, server_message_id: str, client_message_id: str | None,
                                trace_id: str | None, type: MessageType | str,  # noqa: A002 - the interface's name
                                request_timestamp: int | None,
                                envelope: str, message_json: str | None,
                                message_binary: bytes | None) -> CurrentNode | None:
        """Store the message and return the session's current node; None (and nothing
        stored) if the session does not exist."""
        sid = self._sid(session_id)
        c = cmd.StoreOutbox(
            sid, v.ident("server_message_id", server_message_id, self.limits),
            v.optional_ident("client_message_id", client_message_id, self.limits),
            v.text("trace_id", trace_id, self.limits, optional=True),
            str(v.message_type(type)),
            v.timestamp("request_timestamp", request_timestamp, optional=True),
            v.text("envelope", envelope, self.limits),
            v.text("message_json", message_json, self.limits, optional=True),
            v.binary("message_binary", message_binary, self.limits))
        return cast("CurrentNode | None", self._run(sid, c))

    @observed
    def get_messages_from_outbox(self, session_id: str, max_number_of_messages: int) -> list[StoredOutMessage]:
        """Up to max messages in the order stored, skipping attempted and dead-lettered ones."""
        sid = self._sid(session_id)
        return cast("list[StoredOutMessage]",
                    self._run(sid, cmd.GetOutbox(sid, v.count("max_number_of_messages", max_number_of_messages))))

    @observed
    def outbox_messages_attempted_delivery(self, session_id: str, server_message_ids: Iterable[str]) -> None:
        self._outbox_ids(session_id, server_message_ids, cmd.Attempted)

    @observed
    def outbox_messages_unmark_attempted_delivery(self, session_id: str) -> None:
        sid = self._sid(session_id)
        self._run(sid, cmd.Unmark(sid))

    @observed
    def outbox_messages_complete(self, session_id: str, server_message_ids: Iterable[str]) -> None:
        self._outbox_ids(session_id, server_message_ids, cmd.Complete)

    @observed
    def outbox_messages_dead_letter_queue(self, session_id: str, server_message_ids: Iterable[str]) -> None:
        """Dead-lettered messages are never fetched again, not even after an unmark."""
        self._outbox_ids(session_id, server_message_ids, cmd.DeadLetter)

    def _outbox_ids(self, session_id: object, server_message_ids: object,
                    command: Callable[[str, tuple[str, ...]], cmd.Command]) -> None:
        sid = self._sid(session_id)
        ids = v.ids("server_message_ids", server_message_ids, self.limits)
        if ids:
            self._run(sid, command(sid, ids))

    # --------------------------------------------------------------- correlations --
    @observed
    def store_request_correlation(self, session_id: str, server_message_id: str, request_timestamp: int,
                                  reply_terminator_id: str | None, correlation_string: str | None,
                                  correlation_binary: bytes | None) -> None:
        sid = self._sid(session_id)
        self._run(sid, cmd.StoreCorrelation(
            sid, v.ident("server_message_id", server_message_id, self.limits),
            v.timestamp("request_timestamp", request_timestamp),
            v.optional_ident("reply_terminator_id", reply_terminator_id, self.limits),
            v.text("correlation_string", correlation_string, self.limits, optional=True),
            v.binary("correlation_binary", correlation_binary, self.limits)))

    @observed
    def get_and_delete_request_correlation(self, session_id: str, server_message_id: str) -> RequestCorrelation | None:
        """Returns the correlation once; any later or concurrent call gets None."""
        sid = self._sid(session_id)
        return cast("RequestCorrelation | None", self._run(
            sid, cmd.TakeCorrelation(sid, v.ident("server_message_id", server_message_id, self.limits))))
