"""`ClusterStoreAndForward`: the public API, the same on every backend.

Each method checks its arguments (before anything is written), turns the call into a
command for the partition of its session, and lets the node have the owner decide it.
Cluster-wide reads come from the session registry.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from csaf_events.backend import Backend
from csaf_events.channel import NodeChannel
from csaf_events.core import commands as cmd
from csaf_events.core import history
from csaf_events.core import validation as v
from csaf_events.core.dtos import SessionDto
from csaf_events.core.errors import CsafError, unreachable
from csaf_events.core.history import HistoryEntry
from csaf_events.core.node import Node
from csaf_events.core.observe import StoreObserver, observed
from csaf_events.core.partitioning import partition_for
from csaf_events.core.pending import Pending
from csaf_events.core.registry import SessionRegistry
from csaf_events.core.relays import RelaySweeper
from csaf_events.core.session_calls import SessionCalls
from csaf_events.core.unit_of_work import UnitOfWork, check_not_nested
from csaf_events.core.validation import Limits
from csaf_events.ops import health, logs

log = logging.getLogger(__name__)


_MINTED = 16  # random characters of a minted session id (96 bits)


class ClusterStoreAndForward(SessionCalls):
    """The shared memory of a MatsSocket cluster: sessions, inbox, outbox, correlations."""

    def __init__(self, node_name: str, partitions: int, backend: Backend, limits: Limits) -> None:
        self.node_name = node_name
        self.partitions = partitions
        self.limits = limits
        self._backend = backend
        self._booted = False
        self._closed = False
        self._relays: RelaySweeper | None = None
        self.metrics: StoreObserver | None = None  # set by open_store(metrics=registry): csaf_events.ops.metrics

    # ------------------------------------------------------------------ lifecycle --
    def boot(self) -> None:
        """Create/verify topics, open projections, join the cluster. Idempotent."""
        if self._closed:
            raise CsafError("this store is closed; open a new one")
        if not self._booted:
            try:
                self._backend.boot()
            except CsafError:
                raise
            except Exception as e:  # the caller gets a CsafError saying what failed
                raise unreachable(f"node {self.node_name!r} could not boot", e) from e
            self._booted = True
            self._relays = RelaySweeper(self.node_name, self.node.owned, self.node.execute, self._run, self.node.clock)
            self._relays.start()
            logs.track(self)  # the log lines of its threads name it
            if self.metrics is not None:
                self.metrics.attach()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.metrics is not None:
                self.metrics.detach()
            if self._relays is not None:
                self._relays.stop()
            self._backend.close()

    def health(self) -> dict[str, Any]:
        """Booted, partitions owned and assigned, fenced or not, registry lag, last transaction
        error, takeovers, ...: see `csaf_events.ops.health` (``ok`` says whether all is well)."""
        return health.facts(self._backend, self.node_name, self.partitions, self._booted, self._closed)

    def __enter__(self) -> ClusterStoreAndForward:
        self.boot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def node(self) -> Node:
        return self._backend.node

    @property
    def calls_wait(self) -> bool:
        """Whether a call may wait for I/O or for another node: a Kafka transaction, a call
        routed to the owner, an fsync (embedded with ``sync=True``). False where every call
        returns after its own CPU work (embedded, the default): an asyncio application may
        then call the store from its event loop, where a hop to a thread and back would cost
        more than the call (`csaf_events.matssocket` does). Calls that wait belong on threads."""
        return self._backend.calls_wait

    @property
    def registry(self) -> SessionRegistry:
        return self._backend.registry

    @property
    def channel(self) -> NodeChannel:
        """This node's end of the node-to-node channel (`csaf_events.channel.NodeChannel`):
        short control messages to the other nodes of the cluster (a per-node Kafka topic in
        cluster mode; in process, reaching only this node, when embedded). Its `node_name` is
        this store's; it is opened by `boot()` and closed by `close()`."""
        self._check_open()
        return self._backend.channel

    def _run(self, session_id: str, command: cmd.Command) -> Any:
        self._check_open()
        return self._backend.node.execute(partition_for(session_id, self.partitions), command)

    def queue_group(self, partition: int, group: list[Pending]) -> bool:
        """Queue checked writes for `partition` together, no thread waiting for them, where
        this node decides the partition and commits on a thread of the log's (Kafka; for
        `csaf_events.async_store`): each is answered through its ``on_done`` once committed.
        False, and nothing queued, elsewhere: the store's own methods run such calls."""
        self._check_open()
        return self._backend.node.queue_group(partition, group)

    def read_at_once(self, partition: int, command: cmd.Command) -> tuple[bool, Any]:
        """A checked read-only command answered without waiting, where this node can
        (`Node.read_at_once`; for `csaf_events.async_store`): (True, its result); else
        (False, None), and the store's own method runs the call."""
        self._check_open()
        return self._backend.node.read_at_once(partition, command)

    def partition_of(self, session_id: str) -> int:
        """The partition of the session: ``murmur2(session_id) % partitions``."""
        return partition_for(session_id, self.partitions)

    def _check_open(self) -> None:
        if self._closed:
            raise CsafError("this store is closed")
        if not self._booted:
            raise CsafError("call boot() before using the store")

    def unit_of_work(self, session_id: str) -> UnitOfWork:
        """Calls for `session_id` committed together, all or nothing (`csaf_events.core.unit_of_work`)::

            with store.unit_of_work(sid) as uow:
                uow.store_message_id_in_inbox(sid, cmid)
                uow.store_message_in_outbox(sid, smid, None, trace, MessageType.SEND, None, env, msg, None)
                uow.update_message_in_inbox(sid, cmid, answer, None)
        """
        self._check_open()
        check_not_nested()
        return UnitOfWork(self._sid(session_id), self.node_name, self.limits, self._run, self.node.clock())

    def deliver_relays(self) -> int:
        """Deliver now every relay pending in the partitions this node owns (the background
        sweeper delivers those older than 2 s, every 2 s); how many were delivered."""
        self._check_open()
        assert self._relays is not None
        return self._relays.sweep(min_age_ms=0)

    def session_history(self, session_id: str) -> list[HistoryEntry]:
        """The session's events still in the log, in order: the full history inside the audit
        window, the latest state of each entity before it (see `csaf_events.core.history`)."""
        self._check_open()
        sid = self._sid(session_id)
        return history.session_history(self.node.log.read(partition_for(sid, self.partitions)), sid)

    def new_session_id(self, prefix: str = "") -> str:
        """A fresh random session id (after `prefix`) in a partition this node owns now.

        MatsSocket servers mint session ids themselves. An id minted here makes the node that
        holds the client's WebSocket the owner of the session, so its calls are decided here
        without a trip to another node, until ownership moves in a rebalance (then they are
        routed, as for any id). A node that owns no partition gets a random id."""
        self._check_open()
        v.ident("prefix", prefix, self.limits, prefix_of=_MINTED)
        owned = set(self.node.owned())
        for _ in range(64 * self.partitions if owned else 1):
            sid = prefix + secrets.token_urlsafe(_MINTED * 3 // 4)
            if partition_for(sid, self.partitions) in owned:
                break
        return sid

    # ------------------------------------------------------------------- sessions --
    @observed
    def get_sessions(self, only_active: bool, user_id: str | None = None, app_name: str | None = None,
                     app_version_at_or_above: str | None = None) -> list[SessionDto]:
        """Cluster-wide, from this node's session registry; the filters combine.

        Every session write that returned on any node before this call is included."""
        self._check_open()
        args = self._session_filter(only_active, user_id, app_name, app_version_at_or_above)
        self._backend.sync_registry()
        return sorted(self._backend.registry.select(*args), key=lambda s: (s.created_timestamp, s.session_id))

    @observed
    def get_sessions_count(self, only_active: bool, user_id: str | None = None, app_name: str | None = None,
                           app_version_at_or_above: str | None = None) -> int:
        self._check_open()
        args = self._session_filter(only_active, user_id, app_name, app_version_at_or_above)
        self._backend.sync_registry()
        return len(self._backend.registry.select(*args))

    def _session_filter(self, only_active: object, user_id: object, app_name: object,
                        version: object) -> tuple[bool, str | None, str | None, str | None]:
        return (v.flag("only_active", only_active),
                v.optional_ident("user_id", user_id, self.limits),
                v.text("app_name", app_name, self.limits, optional=True),
                v.text("app_version_at_or_above", version, self.limits, optional=True))

    @observed
    def notify_session_liveliness(self, session_ids: Iterable[str]) -> None:
        self._check_open()
        groups = self._by_partition(v.ids("session_ids", session_ids, self.limits))
        self._backend.node.execute_all([(p, cmd.NotifyLiveliness("", p, tuple(sids))) for p, sids in groups.items()])

    @observed
    def timeout_sessions(self, not_live_since_timestamp: int) -> list[str]:
        """Remove sessions not live since the timestamp, with their data; returns their ids.

        Each partition's owner decides, so concurrent calls never report a session twice.
        """
        self._check_open()
        ts = v.timestamp("not_live_since_timestamp", not_live_since_timestamp)
        self._backend.sync_registry()
        partitions = {partition_for(s.session_id, self.partitions)
                      for s in self._backend.registry.select(False) if s.liveliness_timestamp < ts}
        results = self._backend.node.execute_all([(p, cmd.TimeoutSessions("", p, ts)) for p in sorted(partitions)])
        out = [sid for r in results for sid in r]
        return out

    @observed
    def scavenge_session_remnants(self) -> int:
        """Remove inbox/outbox/correlation entries of sessions that no longer exist."""
        self._check_open()
        return sum(self._backend.node.execute_all([(p, cmd.Scavenge("", p)) for p in range(self.partitions)]))

    def _by_partition(self, session_ids: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for sid in session_ids:
            groups[partition_for(sid, self.partitions)].append(sid)
        return groups

