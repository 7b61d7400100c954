"""End offsets of a topic's partitions, asked through an admin client that outlives its errors.

An admin client can keep asking with a leader epoch the broker has moved past after a
broker came back (FENCED_LEADER_EPOCH, for minutes); a new client asks afresh. But a client
destroyed while another thread's request on it is outstanding can take the process down,
and end offsets are asked from many threads at once (takeovers, registry reads, health).
So `EndOffsets` replaces its client only under a lock, at most once per `RENEW_S`, and keeps
the replaced ones until `close()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from csaf_events.core.errors import DataAccessError

#: Seconds a client that failed a request is kept in use before a new one replaces it.
RENEW_S = 5.0


def end_offsets(admin: AdminClient, topic: str, partitions: Iterable[int], level: IsolationLevel,
                timeout: float) -> dict[int, int]:
    """The end offsets of several partitions in one request (high watermark for
    READ_UNCOMMITTED, last stable offset for READ_COMMITTED)."""
    try:
        futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                                     isolation_level=level, request_timeout=timeout)
        ends = {tp.partition: f.result(timeout).offset for tp, f in futures.items()}
    except Exception as e:  # KafkaException, or the future's TimeoutError
        raise DataAccessError(f"cannot read the end offsets of {topic}: {type(e).__name__}: {e}",
                              may_have_written=False) from e
    unknown = sorted(p for p, end in ends.items() if end < 0)
    if unknown:  # -1001 while a partition has no leader: not an end (a restore would drop everything)
        raise DataAccessError(f"the end offsets of {topic} partitions {unknown} are unknown now (no leader?)",
                              may_have_written=False)
    return ends


class EndOffsets:
    """`end_offsets` through one shared admin client, renewed after errors (see above)."""

    def __init__(self, client_config: dict[str, Any]) -> None:
        self._config = client_config
        self._lock = threading.Lock()
        self._admin = AdminClient(client_config)
        self._since = time.monotonic()
        self._retired: list[AdminClient] = []

    def __call__(self, topic: str, partitions: Iterable[int], level: IsolationLevel,
                 timeout: float) -> dict[int, int]:
        admin = self._admin
        try:
            return end_offsets(admin, topic, partitions, level, timeout)
        except DataAccessError:
            with self._lock:
                if self._admin is admin and time.monotonic() - self._since >= RENEW_S:
                    self._retired.append(admin)
                    self._admin, self._since = AdminClient(self._config), time.monotonic()
            raise

    def close(self) -> None:
        with self._lock:
            self._retired.clear()
