"""The session registry: every session of the cluster, in memory, for cluster-wide reads.

`get_sessions_count(user_id=...)` is called on every new MatsSocket session to cap the
sessions per user, so it must be answered locally and fast on any node. Session rows are
small; each node keeps all of them in a dict fed by the session records of the log
(embedded: its own projection; Kafka: the compacted sessions topic, tailed by all nodes).
"""

from __future__ import annotations

import threading

import orjson

from csaf_events.dtos import SessionDto

_DTO_FIELDS = SessionDto.__dataclass_fields__.keys()


class SessionRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionDto] = {}

    def apply(self, changes: dict[str, bytes | None]) -> None:
        """Apply session states (encoded session events; None = gone)."""
        with self._lock:
            for sid, value in changes.items():
                if value is None:
                    self._sessions.pop(sid, None)
                else:
                    s = orjson.loads(value)
                    self._sessions[sid] = SessionDto(**{k: s[k] for k in _DTO_FIELDS})

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def get(self, session_id: str) -> SessionDto | None:
        return self._sessions.get(session_id)

    def select(self, only_active: bool, user_id: str | None = None, app_name: str | None = None,
               app_version_at_or_above: str | None = None) -> list[SessionDto]:
        with self._lock:
            rows = list(self._sessions.values())
        return [s for s in rows
                if (not only_active or s.node_name is not None)
                and (user_id is None or s.user_id == user_id)
                and (app_name is None or s.app_name == app_name)
                and (app_version_at_or_above is None or s.app_version >= app_version_at_or_above)]

    def __len__(self) -> int:
        return len(self._sessions)
