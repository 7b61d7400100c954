"""The pieces under every write that many threads share: the group commit (a round led by
a waiting caller, or by the group's own hand-off thread when nobody waits) and the
per-thread sums of `csaf_events.core.tally` (what timings and metrics count with)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from csaf_events.core import group_commit
from csaf_events.core.group_commit import GroupCommit, Signal
from csaf_events.core.tally import Tally
from csaf_events.core.timings import Timings


class _Item:
    def __init__(self, n: int, waiter: bool) -> None:
        self.n, self.waiter, self.promoted, self.done = n, waiter, False, Signal()


def _threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_items_nobody_waits_for_are_led_by_the_groups_own_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "HANDOFF_IDLE_S", 0.2)
    rounds: list[list[int]] = []
    first = threading.Event()
    release = threading.Event()

    def commit(items: list[_Item]) -> None:
        rounds.append([i.n for i in items])
        if not first.is_set():
            first.set()
            release.wait(5)  # the first round holds the lead while more items queue up
        for i in items:
            i.done.set()

    gc: GroupCommit[_Item] = GroupCommit(commit, name="test-handoff")
    items = [_Item(n, waiter=False) for n in range(5)]
    leader = threading.Thread(target=gc.add, args=(items[0],))
    leader.start()
    assert first.wait(5)
    for i in items[1:]:
        gc.add(i)  # queued: a round is being led
    release.set()
    leader.join(5)
    for i in items:
        i.done.wait()  # each set once: the queued ones by a round nobody waited in
    assert rounds == [[0], [1, 2, 3, 4]]
    assert len(_threads_named("test-handoff")) == 1  # the second round ran on the group's own thread
    deadline = time.monotonic() + 5
    while _threads_named("test-handoff") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _threads_named("test-handoff"), "an idle hand-off thread ends"
    # and starts again when needed
    again = [_Item(n, waiter=False) for n in (5, 6)]
    first.clear()
    release.clear()
    leader = threading.Thread(target=gc.add, args=(again[0],))
    leader.start()
    assert first.wait(5)
    gc.add(again[1])
    release.set()
    leader.join(5)
    again[1].done.wait()
    assert rounds[-2:] == [[5], [6]]


def test_a_tally_sums_every_threads_slots_and_keeps_those_of_ended_threads() -> None:
    tally = Tally(2)

    def work(n: int) -> None:
        for _ in range(n):
            s = tally.slots()
            s[0] += 1
            s[1] += 0.5

    threads = [threading.Thread(target=work, args=(1000 * (k + 1),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(1000 * (k + 1) for k in range(8))
    assert tally.totals() == [total, total * 0.5]
    work(10)  # this thread's own slots, alive
    assert tally.totals() == [total + 10, (total + 10) * 0.5]
    assert len(tally) == 1  # the ended threads were folded into one sum


def test_timings_add_up_across_threads() -> None:
    timings = Timings()

    def leader(k: int) -> None:
        for _ in range(100):
            timings.add("decide", 0.001, writes=2)
            timings.add_total("txn_wait", 0.006, writes=2)
            timings.group(queued_s=0.003, decide_s=0.0005, writes=3)
        timings.transaction(commands=3, records=4, partitions=1, ok=k != 0)

    threads = [threading.Thread(target=leader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = timings.snapshot()
    assert snap["writes"]["decide"] == 2000 and snap["seconds"]["decide"] == pytest.approx(0.8 + 0.6)
    assert snap["writes"]["txn_wait"] == 800 and snap["seconds"]["txn_wait"] == pytest.approx(2.4)
    assert snap["writes"]["queued"] == 1200 and snap["seconds"]["queued"] == pytest.approx(1.2)
    assert (snap["transactions"], snap["failed_transactions"], snap["commands"], snap["records"],
            snap["partitions"]) == (4, 1, 12, 16, 4)
    assert timings.last_transaction_ok is not None


@pytest.mark.parametrize("with_runner", [True, False], ids=["runner", "hand-off-thread"])
def test_items_added_together_are_one_round_and_the_adder_goes_on(with_runner: bool) -> None:
    """`add_all`: what a caller that gathers its own commands (the asyncio face) queues is led
    by the runner, or else by the group's hand-off thread, in one round, and never by it."""
    adder = threading.current_thread()
    rounds: list[tuple[list[int], threading.Thread]] = []

    def commit(items: list[_Item]) -> None:
        rounds.append(([i.n for i in items], threading.current_thread()))
        for i in items:
            i.done.set()

    def runner(round_: Callable[[], None]) -> None:
        threading.Thread(target=round_, name="test-runner").start()

    gc: GroupCommit[_Item] = GroupCommit(commit, name="test-add-all", runner=runner if with_runner else None)
    items = [_Item(n, waiter=False) for n in range(4)]
    gc.add_all(items)
    for i in items:
        i.done.wait()
    assert [r[0] for r in rounds] == [[0, 1, 2, 3]]
    assert rounds[0][1] is not adder
    assert rounds[0][1].name == ("test-runner" if with_runner else "test-add-all")
