"""Delivering relays: the writes a unit of work made for other sessions.

A relay is committed with its unit in the unit's partition (`RelayStored`). Delivering it
applies its command on the target session's owner together with the relay's mark there
(`RelayDeliver`), then removes it from the source (`RelayDone`). A node may die between the
two steps: the relay is then still pending, is delivered again, and the mark makes that
second delivery a no-op. So every relay is applied exactly once, after its unit committed.

The committing caller delivers its unit's relays at once; `RelaySweeper` delivers whatever
is left pending in the partitions a node owns (a caller that died, a target that was
unreachable, a partition taken over), every few seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from csaf_events.core import commands as cmd
from csaf_events.core.codec import decode_command
from csaf_events.core.errors import CsafError

log = logging.getLogger(__name__)

Run = Callable[[str, cmd.Command], Any]  # run a command on the owner of a session's partition


def deliver(run: Run, source: str, relay_id: str, target: str, command: str, now: int) -> bool:
    """Apply the relay to its target (once, at `now`: its unit's time), then mark it done at
    its source. Whether it was applied now (False: a delivery before this one had applied it)."""
    applied = run(target, cmd.RelayDeliver(target, relay_id, now, decode_command(command.encode())))
    run(source, cmd.RelayDone(source, relay_id))
    return bool(applied)


class RelaySweeper:
    """A node's background delivery of the relays pending in the partitions it owns."""

    def __init__(self, node_name: str, owned: Callable[[], list[int]], run_partition: Callable[[int, cmd.Command], Any],
                 run: Run, clock: Callable[[], int], interval: float = 2.0, min_age_ms: int = 2000) -> None:
        self._owned = owned
        self._run_partition = run_partition
        self._run = run
        self._clock = clock
        self._interval = interval
        self._min_age_ms = min_age_ms  # younger ones are left to the caller that committed them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"csaf-relays-{node_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)  # a delivery still waiting on an owner fails once the store closes

    def sweep(self, min_age_ms: int | None = None) -> int:
        """Deliver the pending relays at least `min_age_ms` old (default: the sweeper's), of
        every partition owned now; how many."""
        delivered = 0
        for partition in self._owned():
            if self._stop.is_set():
                break
            try:
                pending = self._run_partition(partition, cmd.PendingRelays("", partition))
            except CsafError as e:
                log.info("relays of partition %d not read now: %s", partition, e)
                continue
            cutoff = self._clock() - (self._min_age_ms if min_age_ms is None else min_age_ms)
            for source, relay_id, target, command, stored in pending:
                if stored > cutoff:
                    continue
                try:
                    deliver(self._run, source, relay_id, target, command, stored)
                    delivered += 1
                except CsafError as e:
                    log.warning("relay %s of session %s to session %s not delivered yet: %s",
                                relay_id, source, target, e)
        return delivered

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive a bug in one round
                log.exception("relay sweep failed")
