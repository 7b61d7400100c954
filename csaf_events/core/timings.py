"""Where a write's time goes: seconds per phase, summed over the writes that spent them.

A node keeps one `Timings`. The partition writers add the time a write waited for its
writer and the time its group took to decide; the Kafka node transaction adds the time a
write waited for its transaction and each step of that transaction (attributed to every
write in it); routed calls add their round trip. The benchmark reports the mean per write
of each phase, and the transactions' sizes. Adding is a few float operations on the
adding thread's own sums, per group, not per write.
"""

from __future__ import annotations

import time
from typing import Any

from csaf_events.core.tally import Tally

#: The phases, in the order a write passes them.
PHASES = ("queued", "decide", "txn_wait", "produce", "send_offsets", "flush", "commit", "apply", "routed_call")


_INDEX = {phase: i for i, phase in enumerate(PHASES)}
_N = len(PHASES)
_TXN = 2 * _N  # then: transactions, failed, commands, records, partitions
_QUEUED, _DECIDE = _INDEX["queued"], _INDEX["decide"]
_COUNTS = ("transactions", "failed_transactions", "commands", "records", "partitions")


class Timings:
    """Per-thread sums (`csaf_events.core.tally`): every partition's leader adds to them twice per
    group, so one lock here would be a convoy of all partitions."""

    def __init__(self) -> None:
        self._tally = Tally(2 * _N + len(_COUNTS))
        self.last_transaction_ok: bool | None = None  # None: no transaction yet
        self.last_transaction_at = 0.0  # time.monotonic() of the last one

    def add(self, phase: str, seconds: float, writes: int = 1) -> None:
        """`writes` writes each spent `seconds` in `phase`."""
        i, slots = _INDEX[phase], self._tally.slots()
        slots[i] += seconds * writes
        slots[_N + i] += writes

    def add_total(self, phase: str, seconds: float, writes: int) -> None:
        """`writes` writes spent `seconds` in `phase` between them."""
        i, slots = _INDEX[phase], self._tally.slots()
        slots[i] += seconds
        slots[_N + i] += writes

    def group(self, queued_s: float, decide_s: float, writes: int) -> None:
        """A partition writer's group of `writes`: their summed wait for the writer, and the
        time the group took to decide (each of them spent it). One call per group."""
        slots = self._tally.slots()
        slots[_QUEUED] += queued_s
        slots[_N + _QUEUED] += writes
        slots[_DECIDE] += decide_s * writes
        slots[_N + _DECIDE] += writes

    def transaction(self, commands: int, records: int, partitions: int, ok: bool) -> None:
        slots = self._tally.slots()
        slots[_TXN] += 1
        slots[_TXN + 1] += not ok
        slots[_TXN + 2] += commands
        slots[_TXN + 3] += records
        slots[_TXN + 4] += partitions
        self.last_transaction_ok, self.last_transaction_at = ok, time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """Totals so far (subtract two snapshots for an interval)."""
        t = self._tally.totals()
        out: dict[str, Any] = {"seconds": dict(zip(PHASES, t[:_N], strict=True)),
                               "writes": dict(zip(PHASES, t[_N:_TXN], strict=True))}
        out.update(zip(_COUNTS, t[_TXN:], strict=True))
        return out


def breakdown(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Mean milliseconds per write of each phase between two snapshots, with transactions/s
    and the mean commands, records and partitions per transaction."""
    per_write = {}
    for phase in PHASES:
        n = after["writes"][phase] - before["writes"][phase]
        if n:
            per_write[phase] = round((after["seconds"][phase] - before["seconds"][phase]) * 1000 / n, 3)
    txns = after["transactions"] - before["transactions"]
    out: dict[str, Any] = {"ms_per_write": per_write, "transactions": txns,
                           "failed_transactions": after["failed_transactions"] - before["failed_transactions"],
                           "transactions_per_s": round(txns / seconds, 1) if seconds > 0 else None}
    if txns:
        for key in ("commands", "records", "partitions"):
            out[f"{key}_per_transaction"] = round((after[key] - before[key]) / txns, 2)
    return out


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot of several nodes."""
    total: dict[str, Any] = {"seconds": dict.fromkeys(PHASES, 0.0), "writes": dict.fromkeys(PHASES, 0)}
    for key in ("transactions", "failed_transactions", "commands", "records", "partitions"):
        total[key] = sum(s[key] for s in snapshots)
    for s in snapshots:
        for phase in PHASES:
            total["seconds"][phase] += s["seconds"][phase]
            total["writes"][phase] += s["writes"][phase]
    return total
