"""The session registry: every session of the cluster, in memory, for cluster-wide reads.

`get_sessions_count(user_id=...)` is called on every new MatsSocket session to cap the
sessions per user, so it must be answered locally and fast on any node. Session rows are
small; each node keeps all of them in dicts fed by the session records of the log
(embedded: its own projection; Kafka: the compacted sessions topic, tailed by all nodes).
Readers copy a dict's values (atomic under the GIL) and never wait.
"""

from __future__ import annotations

import logging

from csaf_events.core.dtos import SessionDto
from csaf_events.core.events import SessionState, decode

log = logging.getLogger(__name__)


class SessionRegistry:
    def __init__(self) -> None:
        self._sessions: dict[str, SessionDto] = {}
        self._by_user: dict[str, dict[str, SessionDto]] = {}

    def apply(self, changes: dict[str, bytes | None]) -> None:
        """Apply session states (encoded session events; None = gone).

        No lock: one session is only ever changed by one thread (its partition's writer, or
        the tailer), each dict operation is atomic, and per-user dicts are never removed,
        so concurrent changes to other sessions of the same user cannot be lost."""
        for sid, value in changes.items():
            old = self._sessions.pop(sid, None)
            if old is not None:
                self._by_user[old.user_id].pop(sid, None)
            if value is not None:
                try:
                    s = decode(SessionState, value)
                except (TypeError, ValueError) as e:  # a newer schema: left out, loudly
                    log.error("session %s: its row cannot be read (%s); cluster-wide session reads leave it "
                              "out until this node runs a version that reads it", sid, e, extra={"session": sid})
                    continue
                dto = SessionDto(sid, s.user_id, s.node_name, s.client_lib_and_versions, s.app_name,
                                 s.app_version, s.created_timestamp, s.liveliness_timestamp)
                self._by_user.setdefault(dto.user_id, {})[sid] = dto
                self._sessions[sid] = dto

    def select(self, only_active: bool, user_id: str | None = None, app_name: str | None = None,
               app_version_at_or_above: str | None = None) -> list[SessionDto]:
        if user_id is not None:
            rows = list(self._by_user.get(user_id, {}).values())
        else:
            rows = list(self._sessions.values())
        if not (only_active or app_name is not None or app_version_at_or_above is not None):
            return rows
        return [s for s in rows
                if (not only_active or s.node_name is not None)
                and (app_name is None or s.app_name == app_name)
                and (app_version_at_or_above is None or s.app_version >= app_version_at_or_above)]

    def __len__(self) -> int:
        return len(self._sessions)
