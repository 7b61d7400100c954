"""What a log adapter tells operators about this node's share of the log (`EventLog.status`):
the partitions assigned to it, the last takeover of each, whether it is fenced, its last
errors. Plain types: health and metrics read them, the adapters fill them in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Takeover:
    """What the last takeover of a partition cost (for operators: logs, health, metrics)."""

    partition: int
    settle_seconds: float  # waiting for the committed offset (the previous owner's open transaction)
    events: int  # events restored from the log
    restore_seconds: float
    attempts: int
    finished_at: float  # time.time()


@dataclass(frozen=True)
class LogStatus:
    """This node's share of the log, now."""

    assigned: list[int]  # partitions given to this node, served or still being taken over
    takeovers: list[Takeover]  # the last takeover of each partition this node took over, by partition
    fenced: bool  # this node's transactions are refused as from a fenced producer or a member the group left
    last_transaction_error: str | None = None  # the last failed transaction, "ErrorClass: message"
    last_poll_error: str | None = None  # the last failure of the ownership's poll loop
