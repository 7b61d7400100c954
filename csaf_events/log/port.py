"""The log port: what command handling needs from a log (reading it back, the plain types
in `csaf_events.log.entries`, is what the projections need).

Two adapters implement it: `EmbeddedLog` (a durable RocksDB log in this process, owning
every partition) and `KafkaLog` (a compacted Kafka topic, partitions owned through a
consumer group). Command handling is written once against this port.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from csaf_events.core.events import Record
from csaf_events.core.group_commit import Runner
from csaf_events.core.pending import Pending
from csaf_events.log.entries import LogReader
from csaf_events.log.status import LogStatus
from projections.rocks import ProjectionBatch

OnDone = Callable[[BaseException | None], None]
OnCommitted = Callable[[], None]


class EventLog(LogReader, Protocol):
    """A log a node appends to: a reader that also takes appends and says what it owns."""

    partitions: int
    def append(self, partition: int, records: Sequence[Record], batch: ProjectionBatch,
               group: Sequence[Pending] = (), *, on_done: OnDone | None = None,
               valid: Callable[[], bool] | None = None, on_committed: OnCommitted | None = None) -> None:
        """Durably append `records` to `partition` and write `batch` (their fold) to the projection.

        Only the partition's owner calls this, in decision order per partition. `group` is
        the decided commands; those the adapter answers itself (`Pending.answered_in_append`:
        Kafka's routed commands) get their replies once the records are durable.

        Without `on_done` the call returns once all is durable, or raises (`DataAccessError`:
        the outcome is unknown, or nothing was written, as it says). With it, the call may
        return at once; `on_done(None)` or `on_done(error)` follows, in the order of the
        appends of the partition. `valid()` is asked just before the records are written:
        False (what the batch was decided on failed) refuses the append with
        `NotOwnerError`, nothing written. `on_committed()` is called when the records are
        durable but their batch is not written yet, which is when others may see them (in
        the log, or through a routed command's reply); a log that writes records and batch
        at once never calls it.
        """

    def round_runner(self, partition: int) -> Runner | None:
        """Where `partition`'s group-commit rounds (decide, then `append`) run; None: its
        callers lead them.

        A log whose `append` returns before the records are durable (Kafka transactions
        commit in the background) gives a caller woken to lead nothing to do but decide, hand
        on and wait again. Such a log runs the rounds on the thread that commits them, just
        before it builds its next transaction: one thread wakes per transaction, not one per
        round, and each caller waits once, for its answer."""

    def owned(self) -> list[int]:
        """The partitions this node decides now (appends are accepted for them): the log holds
        that fact, the node's writers follow it (`set_ownership_listener`)."""

    def serves(self, partition: int) -> bool:
        """Whether `partition` is one of `owned()` (cheap: asked on every call)."""

    def status(self) -> LogStatus:
        """What operators see of this node's share of the log: the partitions assigned to it
        (served or still being taken over), the last takeover of each, whether its
        transactions are refused as a fenced one's, its last errors (`csaf_events.ops.health`)."""

    def set_ownership_listener(self, on_assigned: Callable[[list[int]], None],
                               on_revoked: Callable[[list[int]], None]) -> None:
        """Callbacks for partitions this node starts / stops owning."""

    def close(self) -> None: ...
