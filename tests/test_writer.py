"""The partition writer (`csaf_events.core.writer`) against a log whose phases the test drives:
a read waits for an append that is committed (visible to others) but not yet in the
projection, and only for that, not for appends still on their way."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csaf_events.core import commands as cmd
from csaf_events.core.writer import PartitionWriter
from projections.rocks import Projection, ProjectionBatch


class _HeldLog:
    """Takes appends and holds them; the test says when each is committed and applied."""

    partitions = 1

    def __init__(self, projection: Projection) -> None:
        self._projection = projection
        self.held: list[tuple[ProjectionBatch, Callable[..., None], Callable[[], None] | None]] = []

    def append(self, partition: int, records: Any, batch: ProjectionBatch, group: Any = (), *,
               on_done: Callable[..., None] | None = None, valid: Any = None,
               on_committed: Callable[[], None] | None = None) -> None:
        assert on_done is not None
        self.held.append((batch, on_done, on_committed))

    def round_runner(self, partition: int) -> Callable[[Callable[[], None]], None]:
        """Rounds on a thread of their own, as a log whose appends are still on their way has."""
        return lambda next_round: threading.Thread(target=next_round, daemon=True).start()

    def commit(self, i: int) -> None:
        on_committed = self.held[i][2]
        assert on_committed is not None
        on_committed()

    def apply(self, i: int) -> None:
        batch, on_done, _ = self.held[i]
        self._projection.write(batch)
        on_done(None)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[PartitionWriter, _HeldLog]]:
    projection = Projection(tmp_path / "p")
    log = _HeldLog(projection)
    w = PartitionWriter(0, projection, log, "node-a", clock=lambda: 1_000)  # type: ignore[arg-type]
    try:
        yield w, log
    finally:
        w.close("test over")
        projection.close()


def _register(w: PartitionWriter, sid: str) -> threading.Thread:
    """Submit a registration from a thread of its own (it waits for its append)."""
    t = threading.Thread(target=w.execute, args=(cmd.Register(sid, "u", "node-a", "c", "lib", "app", "1"),),
                         daemon=True)
    t.start()
    return t


def _wait_held(log: _HeldLog, n: int) -> None:
    for _ in range(500):
        if len(log.held) >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{n} appends were not handed to the log")


def test_a_read_does_not_wait_for_an_append_still_on_its_way(writer: tuple[PartitionWriter, _HeldLog]) -> None:
    w, log = writer
    caller = _register(w, "s1")
    _wait_held(log, 1)
    assert w.read(cmd.SessionExists("s1")) is False  # at once: not committed, visible nowhere
    log.commit(0)
    log.apply(0)
    caller.join(5)
    assert w.read(cmd.SessionExists("s1")) is True


def test_a_read_waits_for_a_committed_append_to_be_applied(writer: tuple[PartitionWriter, _HeldLog]) -> None:
    w, log = writer
    caller = _register(w, "s1")
    _wait_held(log, 1)
    log.commit(0)  # durable: a routed caller may have its answer, others may read the log
    answers: list[bool] = []
    reader = threading.Thread(target=lambda: answers.append(w.read(cmd.SessionExists("s1"))), daemon=True)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and answers == [], "the read did not wait for the committed append"
    log.apply(0)
    reader.join(5)
    assert answers == [True]
    caller.join(5)
