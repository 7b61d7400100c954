"""The contract of `ClusterStoreAndForward.unit_of_work` (csaf_events/core/unit_of_work.py), for
every backend of tests/backends.py.

A unit's calls for its session are answered at once and written only at commit, in one
append, all or nothing; writes for other sessions are relays, delivered exactly once after
the commit. On a cluster backend each test opens two nodes, and a unit is mostly made on
the node that does not own its session (its calls and its commit are routed), while the
plain calls it races with are made on the owner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from csaf_events import (
    ClusterStoreAndForward,
    CurrentNode,
    MessageIdAlreadyExistsError,
    MessageType,
    RequestCorrelation,
    StoredInMessage,
    WrongUserError,
)
from csaf_events.core import commands as cmd
from csaf_events.core import relays, unit_of_work
from csaf_events.core.codec import decode_command, encode_command
from csaf_events.core.errors import ConflictError, DataAccessError, UnitOfWorkError
from csaf_events.core.partitioning import partition_for
from csaf_events.core.unit_of_work import MAX_CALLS, UnitOfWork
from projections import queries

NASTY_BYTES = bytes(range(256)) + b"\x00\n\r\n\xff\xfe\xc3\x28"
NASTY_TEXT = 'line1\nline2\r\n\ttab "q" \\ \u00e9\u4e2d\U0001f600 {"json": [1]} \x00 end'
SWEEP_AGE_MS = 2_001  # older than the sweeper's minimum age (relays.RelaySweeper min_age_ms)


# --------------------------------------------------------------------------- helpers ----

def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Cluster:
    """The nodes of one test: two on a cluster backend (partitions spread over both), else
    the one embedded node. `remote(sid)` is a node that does not own the session where there
    is one (its calls are routed), `owner(sid)` the one that does."""

    def __init__(self, store_factory: Any, **kw: Any) -> None:
        self.stores: list[ClusterStoreAndForward] = [store_factory("node-a", **kw)]
        if store_factory.cluster:
            self.stores.append(store_factory("node-b", **kw))
            wait_for(self._spread, "partitions spread over both nodes")
        self.partitions = self.stores[0].partitions

    def _spread(self) -> bool:
        owned = [s.node.owned() for s in self.stores]
        return all(owned) and sorted(p for o in owned for p in o) == list(range(self.stores[0].partitions))

    def partition(self, sid: str) -> int:
        return partition_for(sid, self.partitions)

    def owner(self, sid: str) -> ClusterStoreAndForward:
        return next(s for s in self.stores if self.partition(sid) in s.node.owned())

    def remote(self, sid: str) -> ClusterStoreAndForward:
        return next((s for s in self.stores if self.partition(sid) not in s.node.owned()), self.stores[0])

    def sid(self, prefix: str, node: int = 0, *, like: str | None = None, unlike: str | None = None) -> str:
        """A session id starting with `prefix` owned by node `node` (modulo the nodes there
        are); in the partition of `like`, or not in that of `unlike`, when given."""
        owned = set(self.stores[node % len(self.stores)].node.owned())
        for k in range(100_000):
            sid = f"{prefix}{k}"
            p = self.partition(sid)
            if (p in owned and (like is None or p == self.partition(like))
                    and (unlike is None or p != self.partition(unlike))):
                return sid
        raise AssertionError("no such session id")  # pragma: no cover

    def pending(self) -> list[tuple[str, str, str, str, int]]:
        """Every relay not delivered yet, cluster-wide."""
        store = self.stores[0]
        return [r for p in range(self.partitions) for r in store.node.execute(p, cmd.PendingRelays("", p))]

    def deliver(self) -> int:
        return sum(s.deliver_relays() for s in self.stores)

    def log_size(self, sid: str) -> int:
        """How many events the log of the session's partition holds."""
        return sum(1 for _ in self.stores[0].node.log.read(self.partition(sid)))

    def view(self, sid: str) -> tuple[Any, int]:
        """The owner's projection (caught up with every append that returned) and the partition."""
        owner, p = self.owner(sid), self.partition(sid)
        owner.node.execute(p, cmd.SessionExists(sid))  # a read waits for committed appends
        return owner.node.projection, p

    def marks(self, sid: str) -> list[str]:
        """The relay ids marked as received by session `sid`."""
        view, p = self.view(sid)
        return [m.relay_id for m in queries.relay_marks(view, p, sid)]


@pytest.fixture
def nodes(store_factory: Any, clock: Any) -> Cluster:
    return Cluster(store_factory, clock=clock)


def register(store: ClusterStoreAndForward | UnitOfWork, sid: str, user: str = "u1", conn: str = "c1") -> int:
    return store.register_session_at_this_node(sid, user, conn, "lib", "app", "1.0")


def put_out(store: ClusterStoreAndForward | UnitOfWork, sid: str, smid: str, text: str | None = None,
            binary: bytes | None = None) -> CurrentNode | None:
    return store.store_message_in_outbox(sid, smid, None, "trace", MessageType.SEND, None, "{}", text, binary)


def out_ids(store: ClusterStoreAndForward | UnitOfWork, sid: str) -> list[str]:
    return [m.server_message_id for m in store.get_messages_from_outbox(sid, 100)]


def seen_from(nodes: Cluster, sid: str) -> list[tuple]:
    """What every node shows of a session without changing it."""
    return [(s.is_session_exists(sid), s.get_current_registered_node_for_session(sid),
             s.get_message_from_inbox(sid, "m1"), out_ids(s, sid)) for s in nodes.stores]


def assert_finished(uow: UnitOfWork, sid: str) -> None:
    """Every call, commit and rollback of a finished unit is refused."""
    for use in (lambda: uow.is_session_exists(sid), lambda: uow.store_message_id_in_inbox(sid, "late"),
                lambda: put_out(uow, "someone-else", "late"), uow.commit, uow.rollback):
        with pytest.raises(UnitOfWorkError):
            use()


# -------------------------------------------------------------------- commit, reads ----

def two_sessions(nodes: Cluster) -> tuple[str, str, ClusterStoreAndForward]:
    """A unit's session (owned by the second node, where there are two) and a target session
    of the first node, both registered; and the target's owner, for plain calls."""
    sid, target = nodes.sid("s", 1), nodes.sid("t", 0)
    plain = nodes.owner(target)
    register(plain, sid)
    register(plain, target)
    return sid, target, plain


def test_a_commit_writes_every_call_together_at_the_units_time(nodes: Cluster, clock: Any) -> None:
    sid = nodes.sid("s", 1)
    owner = nodes.owner(sid)
    register(owner, sid, conn="c1")
    before, size = seen_from(nodes, sid), nodes.log_size(sid)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        start = uow.now
        assert start == clock()
        uow.store_message_id_in_inbox(sid, "m1")
        uow.update_message_in_inbox(sid, "m1", NASTY_TEXT, NASTY_BYTES)
        assert put_out(uow, sid, "o1", "answer") == CurrentNode(owner.node_name, "c1")
        uow.store_request_correlation(sid, "r1", 5, "T", "corr", b"\x00")
        clock.advance(1_000)  # the writes still carry the unit's start
        assert seen_from(nodes, sid) == before, "nothing is visible outside before the commit"
        assert nodes.log_size(sid) == size, "nothing is written before the commit"
        assert uow.calls == 4
    for store in nodes.stores:
        assert store.get_message_from_inbox(sid, "m1") == StoredInMessage(sid, "m1", start, NASTY_TEXT, NASTY_BYTES)
        [msg] = store.get_messages_from_outbox(sid, 10)
        assert (msg.server_message_id, msg.message_text, msg.stored_timestamp) == ("o1", "answer", start)
    assert owner.get_and_delete_request_correlation(sid, "r1") == RequestCorrelation(sid, "r1", 5, "T", "corr", b"\x00")
    assert nodes.log_size(sid) == size + 5  # inbox stored + updated, outbox stored, correlation stored, taken


def test_reads_in_a_unit_see_its_own_writes(nodes: Cluster, clock: Any) -> None:
    sid = nodes.sid("s", 1)
    plain = nodes.owner(sid)
    plain.store_request_correlation(sid, "r0", 1, "T", "before", None)
    uow = nodes.remote(sid).unit_of_work(sid)
    assert not uow.is_session_exists(sid)
    assert register(uow, sid, "alice", "c1") == uow.now
    assert uow.is_session_exists(sid)
    assert uow.get_current_registered_node_for_session(sid) == CurrentNode(uow.node_name, "c1")
    uow.store_message_id_in_inbox(sid, "m1")
    with pytest.raises(MessageIdAlreadyExistsError):  # its own earlier write counts
        uow.store_message_id_in_inbox(sid, "m1")
    assert uow.get_message_from_inbox(sid, "m1") == StoredInMessage(sid, "m1", uow.now, None, None)
    uow.delete_message_ids_from_inbox(sid, ["m1"])
    assert uow.get_message_from_inbox(sid, "m1") is None
    put_out(uow, sid, "o1")
    put_out(uow, sid, "o2")
    uow.outbox_messages_attempted_delivery(sid, ["o1"])
    assert out_ids(uow, sid) == ["o2"]
    uow.outbox_messages_unmark_attempted_delivery(sid)
    [o1, _] = uow.get_messages_from_outbox(sid, 10)
    assert o1.delivery_count == 1
    uow.outbox_messages_complete(sid, ["o2"])
    uow.outbox_messages_dead_letter_queue(sid, ["o1"])
    assert out_ids(uow, sid) == []
    uow.store_request_correlation(sid, "r1", 2, "T", "mine", None)
    assert uow.get_and_delete_request_correlation(sid, "r1") == RequestCorrelation(sid, "r1", 2, "T", "mine", None)
    assert uow.get_and_delete_request_correlation(sid, "r1") is None
    assert uow.get_and_delete_request_correlation(sid, "r0").correlation_string == "before"
    uow.deregister_session_from_this_node(sid, "c1")
    assert uow.get_current_registered_node_for_session(sid) is None
    # outside: nothing of it, on every node
    for store in nodes.stores:
        assert not store.is_session_exists(sid)
        assert store.get_sessions_count(False, user_id="alice") == 0
    uow.commit()
    for store in nodes.stores:
        assert store.is_session_exists(sid)
        assert store.get_current_registered_node_for_session(sid) is None
        [dto] = store.get_sessions(False, user_id="alice")
        assert dto.created_timestamp == uow.now
        assert out_ids(store, sid) == []
    assert plain.get_and_delete_request_correlation(sid, "r0") is None, "the unit took it"
    uow2 = plain.unit_of_work(sid)
    uow2.close_session(sid)
    assert not uow2.is_session_exists(sid) and plain.is_session_exists(sid)
    uow2.commit()
    assert not any(s.is_session_exists(sid) for s in nodes.stores)


def test_an_exception_in_the_with_block_rolls_the_unit_back(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    register(nodes.owner(sid), sid)
    before, size = seen_from(nodes, sid), nodes.log_size(sid)
    with pytest.raises(KeyError, match="the caller's own error"), nodes.remote(sid).unit_of_work(sid) as uow:
        uow.store_message_id_in_inbox(sid, "m1")
        put_out(uow, sid, "o1")
        put_out(uow, "someone-else", "o1")  # a relay: dropped with the unit
        raise KeyError("the caller's own error")
    assert seen_from(nodes, sid) == before
    assert nodes.log_size(sid) == size
    assert nodes.pending() == []
    assert_finished(uow, sid)
    nodes.owner(sid).store_message_id_in_inbox(sid, "m1")  # the id was never taken


def test_a_rollback_writes_nothing_and_an_empty_unit_commits_nothing(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    store = nodes.remote(sid)
    register(store, sid)
    before, size = seen_from(nodes, sid), nodes.log_size(sid)
    uow = store.unit_of_work(sid)
    uow.store_message_id_in_inbox(sid, "m1")
    put_out(uow, sid, "o1")
    uow.rollback()
    assert_finished(uow, sid)
    with store.unit_of_work(sid) as empty:
        assert empty.calls == 0
    assert_finished(empty, sid)
    assert seen_from(nodes, sid) == before
    assert nodes.log_size(sid) == size


# ------------------------------------------------------------------------- the race ----

def test_two_units_storing_the_same_inbox_id_exactly_one_wins(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    register(nodes.owner(sid), sid)
    first, second = nodes.remote(sid).unit_of_work(sid), nodes.owner(sid).unit_of_work(sid)
    for i, uow in enumerate((first, second)):
        uow.store_message_id_in_inbox(sid, "m1")  # both answered: neither has committed
        put_out(uow, sid, f"o{i}")
        uow.store_request_correlation(sid, f"r{i}", i, "T", None, None)
        put_out(uow, "other", f"relay{i}")
    first.commit()
    size = nodes.log_size(sid)
    with pytest.raises(MessageIdAlreadyExistsError):
        second.commit()
    assert nodes.log_size(sid) == size, "the loser wrote nothing"
    assert_finished(second, sid)
    for store in nodes.stores:
        assert out_ids(store, sid) == ["o0"]
    owner = nodes.owner(sid)
    assert owner.get_and_delete_request_correlation(sid, "r1") is None
    assert owner.get_and_delete_request_correlation(sid, "r0") is not None
    assert nodes.pending() == []


@pytest.mark.parametrize("plain_first", [True, False], ids=["plain-call-first", "unit-first"])
def test_a_unit_racing_a_plain_call_for_the_same_inbox_id(nodes: Cluster, plain_first: bool) -> None:
    sid = nodes.sid("s", 1)
    plain = nodes.owner(sid)
    register(plain, sid)
    uow = nodes.remote(sid).unit_of_work(sid)
    uow.store_message_id_in_inbox(sid, "m1")
    put_out(uow, sid, "o1")
    if plain_first:
        plain.store_message_id_in_inbox(sid, "m1")
        size = nodes.log_size(sid)
        with pytest.raises(MessageIdAlreadyExistsError):
            uow.commit()
        assert nodes.log_size(sid) == size
        assert out_ids(plain, sid) == []
    else:
        uow.commit()
        with pytest.raises(MessageIdAlreadyExistsError):
            plain.store_message_id_in_inbox(sid, "m1")
        assert out_ids(plain, sid) == ["o1"]
    assert plain.get_message_from_inbox(sid, "m1") is not None


def test_concurrent_units_on_one_inbox_id_exactly_one_commits(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    register(nodes.owner(sid), sid)
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list[Any] = [None] * n

    def work(i: int) -> None:
        try:
            with nodes.stores[i % len(nodes.stores)].unit_of_work(sid) as uow:
                uow.store_message_id_in_inbox(sid, "m1")
                put_out(uow, sid, f"o{i}")
                barrier.wait(30)  # everyone answered before anyone commits
            outcomes[i] = "committed"
        except BaseException as e:  # noqa: BLE001 - the outcome is what is checked
            outcomes[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    winners = [i for i, o in enumerate(outcomes) if o == "committed"]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, MessageIdAlreadyExistsError) for i, o in enumerate(outcomes) if i not in winners)
    for store in nodes.stores:
        assert out_ids(store, sid) == [f"o{winners[0]}"]


# ------------------------------------------------------------------------ conflicts ----

def test_a_correlation_the_unit_took_and_a_plain_call_took_first_is_a_conflict(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    plain = nodes.owner(sid)
    register(plain, sid)
    plain.store_request_correlation(sid, "r1", 7, "T", "c", None)
    uow = nodes.remote(sid).unit_of_work(sid)
    taken = uow.get_and_delete_request_correlation(sid, "r1")
    assert taken == RequestCorrelation(sid, "r1", 7, "T", "c", None)
    uow.store_message_id_in_inbox(sid, "m1")
    assert plain.get_and_delete_request_correlation(sid, "r1") == taken, "not taken outside before the commit"
    size = nodes.log_size(sid)
    with pytest.raises(ConflictError) as exc:
        uow.commit()
    assert isinstance(exc.value, DataAccessError) and exc.value.may_have_written is False
    assert nodes.log_size(sid) == size
    assert plain.get_message_from_inbox(sid, "m1") is None
    assert_finished(uow, sid)


CHANGES: dict[str, Callable[[ClusterStoreAndForward, str], None]] = {
    "another-message-stored": lambda s, sid: put_out(s, sid, "o9"),
    "message-completed": lambda s, sid: s.outbox_messages_complete(sid, ["o1"]),
    "message-attempted": lambda s, sid: s.outbox_messages_attempted_delivery(sid, ["o1"]),
    "session-closed": lambda s, sid: s.close_session(sid),
}


def test_an_outbox_read_that_changed_before_commit_is_a_conflict(nodes: Cluster) -> None:
    for change, make in CHANGES.items():
        sid = nodes.sid(f"{change}-", 1)
        plain = nodes.owner(sid)
        register(plain, sid)
        put_out(plain, sid, "o1")
        uow = nodes.remote(sid).unit_of_work(sid)
        assert out_ids(uow, sid) == ["o1"]
        uow.outbox_messages_attempted_delivery(sid, ["o1"])
        make(plain, sid)
        after = seen_from(nodes, sid)
        with pytest.raises(ConflictError):
            uow.commit()
        assert seen_from(nodes, sid) == after, change


def test_writes_to_other_sessions_of_the_partition_are_no_conflict(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    neighbour = nodes.sid("n", 1, like=sid)
    plain = nodes.owner(sid)
    for s in (sid, neighbour):
        register(plain, s)
        put_out(plain, s, "o1")
    uow = nodes.remote(sid).unit_of_work(sid)
    assert out_ids(uow, sid) == ["o1"]
    assert uow.get_message_from_inbox(sid, "m1") is None
    uow.outbox_messages_complete(sid, ["o1"])
    put_out(plain, neighbour, "o2")
    plain.store_message_id_in_inbox(neighbour, "m1")
    uow.commit()
    assert out_ids(plain, sid) == [] and out_ids(plain, neighbour) == ["o1", "o2"]


def test_a_changed_answer_fails_the_units_next_call_too(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    plain = nodes.owner(sid)
    register(plain, sid)
    uow = nodes.remote(sid).unit_of_work(sid)
    assert uow.get_message_from_inbox(sid, "m1") is None
    plain.store_message_id_in_inbox(sid, "m1")
    with pytest.raises(ConflictError):
        uow.store_message_id_in_inbox(sid, "m2")
    assert uow.calls == 1, "the failed call is not part of the unit"
    with pytest.raises(ConflictError):
        uow.commit()
    assert plain.get_message_from_inbox(sid, "m2") is None
    # an earlier write that now fails fails the next call with its error
    uow = nodes.remote(sid).unit_of_work(sid)
    uow.store_message_id_in_inbox(sid, "m3")
    plain.store_message_id_in_inbox(sid, "m3")
    with pytest.raises(MessageIdAlreadyExistsError):
        uow.is_session_exists(sid)


def test_writes_recorded_without_a_round_trip_are_decided_at_the_commit(nodes: Cluster) -> None:
    """Updates, deletes, outbox marks, deregister and close return None whatever the state:
    a unit records them, and the commit decides them on the state then."""
    sid = nodes.sid("s", 1)
    plain = nodes.owner(sid)
    register(plain, sid, conn="c1")
    plain.store_message_id_in_inbox(sid, "m1")
    put_out(plain, sid, "o1")
    uow = nodes.remote(sid).unit_of_work(sid)
    assert uow.update_message_in_inbox(sid, "m1", "answer", None) is None
    assert uow.outbox_messages_complete(sid, ["o1", "o2"]) is None
    assert uow.outbox_messages_attempted_delivery(sid, ["o3"]) is None
    plain.delete_message_ids_from_inbox(sid, ["m1"])  # the update finds nothing: no conflict
    put_out(plain, sid, "o3")  # the attempt finds it
    uow.commit()
    assert plain.get_message_from_inbox(sid, "m1") is None
    assert out_ids(plain, sid) == [], "o1 completed, o3 attempted"
    plain.outbox_messages_unmark_attempted_delivery(sid)
    [o3] = plain.get_messages_from_outbox(sid, 10)
    assert (o3.server_message_id, o3.delivery_count) == ("o3", 1)
    with pytest.raises(TypeError):  # still checked at once
        nodes.remote(sid).unit_of_work(sid).outbox_messages_complete(sid, "o3")


# --------------------------------------------------------------------------- misuse ----

def test_a_call_that_fails_is_not_part_of_the_unit(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    plain = nodes.owner(sid)
    register(plain, sid, "alice")
    plain.store_message_id_in_inbox(sid, "m0")
    size = nodes.log_size(sid)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        uow.store_message_id_in_inbox(sid, "m1")
        failing: list[tuple[type[Exception], Callable[[], Any]]] = [
            (MessageIdAlreadyExistsError, lambda: uow.store_message_id_in_inbox(sid, "m0")),
            (MessageIdAlreadyExistsError, lambda: uow.store_message_id_in_inbox(sid, "m1")),
            (WrongUserError, lambda: register(uow, sid, "mallory")),
            (TypeError, lambda: uow.store_message_id_in_inbox(sid, 5)),
            (ValueError, lambda: uow.store_message_id_in_inbox(sid, "")),
            (ValueError, lambda: uow.store_message_in_outbox(sid, "o1", None, None, "NOPE", None, "{}", None, None)),
            (TypeError, lambda: uow.update_message_in_inbox(sid, "m1", "{}", "not bytes")),
            (ValueError, lambda: uow.get_messages_from_outbox(sid, -1)),
            (TypeError, lambda: uow.delete_message_ids_from_inbox(sid, "m1")),
            (TypeError, lambda: put_out(uow, "other", 7)),  # a bad relay: not kept either
        ]
        for error, call in failing:
            with pytest.raises(error):
                call()
            assert uow.calls == 1
        assert uow.get_message_from_inbox(sid, "m1") is not None, "the unit stays usable"
        put_out(uow, sid, "o1")
    assert plain.get_message_from_inbox(sid, "m1") is not None
    assert out_ids(plain, sid) == ["o1"]
    assert plain.get_sessions_count(False, user_id="mallory") == 0
    assert nodes.log_size(sid) == size + 2
    assert nodes.pending() == []


def test_a_finished_unit_refuses_every_call(nodes: Cluster) -> None:
    for end in ("commit", "rollback", "failed-commit"):
        sid = nodes.sid(f"{end}-", 1)
        plain = nodes.owner(sid)
        register(plain, sid)
        uow = nodes.remote(sid).unit_of_work(sid)
        uow.store_message_id_in_inbox(sid, "m1")
        if end == "commit":
            uow.commit()
        elif end == "rollback":
            uow.rollback()
        else:
            plain.store_message_id_in_inbox(sid, "m1")
            with pytest.raises(MessageIdAlreadyExistsError):
                uow.commit()
        size = nodes.log_size(sid)
        assert_finished(uow, sid)
        assert nodes.log_size(sid) == size, end
        assert (plain.get_message_from_inbox(sid, "m1") is None) == (end == "rollback")


def test_units_do_not_nest_in_one_thread(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    store = nodes.remote(sid)
    register(store, sid)
    in_thread: list[Any] = []

    def other_thread() -> None:
        with nodes.owner(sid).unit_of_work(sid) as inner:
            inner.store_message_id_in_inbox(sid, "m2")
        in_thread.append("committed")

    with store.unit_of_work(sid) as outer:
        outer.store_message_id_in_inbox(sid, "m1")
        for s in nodes.stores:  # on this node or another, for this session or another
            for target in (sid, "other"):
                with pytest.raises(UnitOfWorkError):
                    s.unit_of_work(target)
        with pytest.raises(UnitOfWorkError), UnitOfWork(sid, store.node_name, store.limits, lambda *a: None, 0):
            pass
        t = threading.Thread(target=other_thread)
        t.start()
        t.join(60)
        assert in_thread == ["committed"], "another thread has units of its own"
        assert outer.get_message_from_inbox(sid, "m1") is not None, "the outer unit still works"
    assert store.get_message_from_inbox(sid, "m1") is not None
    assert store.get_message_from_inbox(sid, "m2") is not None
    with store.unit_of_work(sid) as again:  # the block is over: a unit may be opened again
        again.store_message_id_in_inbox(sid, "m3")
    assert store.get_message_from_inbox(sid, "m3") is not None


NOT_RELAYED: dict[str, Callable[[UnitOfWork, str], Any]] = {
    "register": lambda u, t: register(u, t),
    "current-node": lambda u, t: u.get_current_registered_node_for_session(t),
    "exists": lambda u, t: u.is_session_exists(t),
    "deregister": lambda u, t: u.deregister_session_from_this_node(t, "c1"),
    "close": lambda u, t: u.close_session(t),
    "store-inbox": lambda u, t: u.store_message_id_in_inbox(t, "m1"),
    "update-inbox": lambda u, t: u.update_message_in_inbox(t, "m1", "{}", None),
    "get-inbox": lambda u, t: u.get_message_from_inbox(t, "m1"),
    "delete-inbox": lambda u, t: u.delete_message_ids_from_inbox(t, ["m1"]),
    "get-outbox": lambda u, t: u.get_messages_from_outbox(t, 5),
    "attempted": lambda u, t: u.outbox_messages_attempted_delivery(t, ["o1"]),
    "unmark": lambda u, t: u.outbox_messages_unmark_attempted_delivery(t),
    "complete": lambda u, t: u.outbox_messages_complete(t, ["o1"]),
    "dead-letter": lambda u, t: u.outbox_messages_dead_letter_queue(t, ["o1"]),
    "take-correlation": lambda u, t: u.get_and_delete_request_correlation(t, "r1"),
}


def test_a_unit_refuses_every_call_for_another_session_but_the_relayed_ones(nodes: Cluster) -> None:
    sid, target, plain = two_sessions(nodes)
    put_out(plain, target, "o1")
    plain.store_message_id_in_inbox(target, "m1")
    plain.store_request_correlation(target, "r1", 1, None, None, None)
    before = seen_from(nodes, target)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        uow.store_message_id_in_inbox(sid, "m1")
        for name, call in NOT_RELAYED.items():
            with pytest.raises(UnitOfWorkError, match="other sessions"):
                call(uow, target)
            assert uow.calls == 1, name
    assert seen_from(nodes, target) == before
    assert plain.get_and_delete_request_correlation(target, "r1") is not None
    assert plain.get_message_from_inbox(sid, "m1") is not None


def test_a_unit_holds_at_most_max_calls(nodes: Cluster) -> None:
    sid = nodes.sid("s", 0)
    store = nodes.owner(sid)
    with store.unit_of_work(sid) as uow:
        for i in range(MAX_CALLS - 1):
            uow.store_message_id_in_inbox(sid, f"m{i}")
        put_out(uow, "other", "o1")  # relays count too
        with pytest.raises(UnitOfWorkError, match=str(MAX_CALLS)):
            uow.store_message_id_in_inbox(sid, "one-too-many")
        assert uow.calls == MAX_CALLS
    assert store.get_message_from_inbox(sid, f"m{MAX_CALLS - 2}") is not None
    assert store.get_message_from_inbox(sid, "one-too-many") is None


# --------------------------------------------------------------------------- relays ----

@pytest.mark.parametrize("where", ["same-partition", "other-partition"])
def test_relays_are_delivered_once_after_the_commit(nodes: Cluster, clock: Any, where: str) -> None:
    sid = nodes.sid("s", 1)
    target = nodes.sid("t", 1, like=sid) if where == "same-partition" else nodes.sid("t", 0, unlike=sid)
    plain = nodes.owner(target)
    register(plain, sid)
    register(plain, target, conn="tc")
    with nodes.remote(sid).unit_of_work(sid) as uow:
        uow.store_message_id_in_inbox(sid, "m1")
        assert put_out(uow, target, "o1", NASTY_TEXT, NASTY_BYTES) == CurrentNode(plain.node_name, "tc")
        assert uow.store_request_correlation(target, "r1", 3, "T", "corr", b"\xff") is None
        assert uow.calls == 3
        assert out_ids(plain, target) == [], "not before the commit"
        assert nodes.pending() == []
    for store in nodes.stores:
        [msg] = store.get_messages_from_outbox(target, 10)
        assert (msg.server_message_id, msg.message_text, msg.message_binary) == ("o1", NASTY_TEXT, NASTY_BYTES)
    assert nodes.pending() == [], "delivered before commit returned"
    assert len(nodes.marks(target)) == 2
    clock.advance(SWEEP_AGE_MS)
    assert nodes.deliver() == 0
    assert out_ids(plain, target) == ["o1"]
    assert plain.get_and_delete_request_correlation(target, "r1") == RequestCorrelation(
        target, "r1", 3, "T", "corr", b"\xff")
    assert plain.get_and_delete_request_correlation(target, "r1") is None


def _undelivered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The committing caller cannot reach the relays' targets."""
    def unreachable(*args: Any) -> bool:
        raise DataAccessError("the target's owner cannot be reached (test)", may_have_written=False)
    monkeypatch.setattr(unit_of_work, "deliver", unreachable)


def test_a_relay_not_delivered_at_commit_is_delivered_later_exactly_once(
        nodes: Cluster, clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sid, target, plain = two_sessions(nodes)
    _undelivered(monkeypatch)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        put_out(uow, sid, "own")
        put_out(uow, target, "o1")
    assert out_ids(plain, sid) == ["own"], "the commit stands"
    assert out_ids(plain, target) == []
    [(source, _, to, _, stored)] = nodes.pending()
    assert (source, to, stored) == (sid, target, uow.now)
    plain.close_session(sid)  # the relays of a session outlive it
    clock.advance(SWEEP_AGE_MS)
    nodes.deliver()  # (or the background sweeper, which runs on the same clock)
    assert nodes.pending() == []
    assert out_ids(plain, target) == ["o1"]
    assert nodes.deliver() == 0
    assert out_ids(plain, target) == ["o1"]


def test_deliver_relays_delivers_the_pending_relays_now(
        nodes: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md: `store.deliver_relays()` delivers the pending relays of this node's
    partitions now, also one just left by a commit that could not reach its target."""
    sid, target = nodes.sid("s", 1), nodes.sid("t", 0)
    plain = nodes.owner(target)
    register(plain, target)
    _undelivered(monkeypatch)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        put_out(uow, target, "o1")
    assert len(nodes.pending()) == 1
    assert nodes.owner(sid).deliver_relays() == 1, "the pending relay was not delivered"
    assert nodes.pending() == []
    assert out_ids(plain, target) == ["o1"]


def test_a_relay_applied_before_its_node_died_is_not_applied_again(
        nodes: Cluster, clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sid, target, plain = two_sessions(nodes)

    def dies_before_done(run: relays.Run, source: str, relay_id: str, to: str, command: str, now: int) -> bool:
        assert run(to, cmd.RelayDeliver(to, relay_id, now, decode_command(command.encode()))) is True
        raise DataAccessError("the node died before RelayDone (test)")

    monkeypatch.setattr(unit_of_work, "deliver", dies_before_done)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        put_out(uow, target, "o1")
        uow.store_request_correlation(target, "r1", 1, None, "c", None)
    assert out_ids(plain, target) == ["o1"]
    pending = nodes.pending()
    assert len(pending) == 2
    clock.advance(SWEEP_AGE_MS)
    nodes.deliver()
    assert nodes.pending() == []
    # delivering again, as a node that read the relays before they were done would
    execute = lambda s, c: plain.node.execute(nodes.partition(s), c)  # noqa: E731
    for source, relay_id, to, command, stored in pending:
        assert relays.deliver(execute, source, relay_id, to, command, stored) is False
    assert out_ids(plain, target) == ["o1"]
    assert plain.get_and_delete_request_correlation(target, "r1").correlation_string == "c"
    assert plain.get_and_delete_request_correlation(target, "r1") is None
    assert nodes.pending() == []


def test_a_unit_command_committed_alone_is_delivered_by_the_background_sweeper(
        nodes: Cluster, clock: Any) -> None:
    """The unit's node died right after its `Unit` was appended: nobody delivers its relays
    but the sweeper of the node that owns the unit's partition."""
    sid, target = nodes.sid("s", 1), nodes.sid("t", 0)
    plain = nodes.owner(target)
    register(plain, target)
    relay = cmd.StoreOutbox(target, "o1", None, None, "SEND", None, "{}", "hi", None)
    committed = cmd.Unit(sid, clock(), (cmd.StoreInbox(sid, "m1"),), ("None",),
                         (("relay-1", target, encode_command(relay).decode()),))
    caller = nodes.remote(sid)
    caller.node.execute(nodes.partition(sid), committed)  # the store's normal path, no delivery
    assert caller.get_message_from_inbox(sid, "m1") is not None
    assert [r[1] for r in nodes.pending()] == ["relay-1"]
    time.sleep(2.5)  # a sweep or more: the relay is young on the store's clock
    assert out_ids(plain, target) == []
    clock.advance(SWEEP_AGE_MS)
    wait_for(lambda: nodes.pending() == [], "the sweeper delivered the relay", timeout=20)
    assert [m.message_text for m in plain.get_messages_from_outbox(target, 10)] == ["hi"]
    assert nodes.marks(target) == ["relay-1"]
    again = cmd.Unit(sid, clock(), (), (), committed.relays)  # the same relay committed again
    caller.node.execute(nodes.partition(sid), again)
    assert [r[1] for r in nodes.pending()] == ["relay-1"]
    clock.advance(SWEEP_AGE_MS)
    nodes.deliver()
    assert nodes.pending() == []
    assert out_ids(plain, target) == ["o1"]


def test_a_relay_to_a_session_that_does_not_exist_stores_nothing(nodes: Cluster) -> None:
    sid = nodes.sid("s", 1)
    ghost = nodes.sid("ghost", 0, unlike=sid)  # its partition holds only what reaches the ghost
    register(nodes.owner(sid), sid)
    size = nodes.log_size(ghost)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        assert put_out(uow, ghost, "o1") is None
    assert nodes.pending() == []
    for store in nodes.stores:
        assert not store.is_session_exists(ghost)
        assert out_ids(store, ghost) == []
    view, p = nodes.view(ghost)
    assert queries.children(view, p, ghost) == ([], [], [], []), "an entry was stored for the missing session"
    assert nodes.stores[0].scavenge_session_remnants() == 0, "a remnant was left for the missing session"
    assert nodes.log_size(ghost) == size


def test_a_relayed_message_whose_id_is_taken_is_dropped_not_doubled(nodes: Cluster) -> None:
    sid, target, plain = two_sessions(nodes)
    put_out(plain, target, "o1", "first")
    plain.store_request_correlation(target, "r1", 1, None, "first", None)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        put_out(uow, target, "o1", "second")  # decided at delivery: refused there, not here
        uow.store_request_correlation(target, "r1", 2, None, "second", None)
        uow.store_message_id_in_inbox(sid, "m1")
    assert nodes.pending() == []
    assert [m.message_text for m in plain.get_messages_from_outbox(target, 10)] == ["first"]
    assert plain.get_and_delete_request_correlation(target, "r1").correlation_string == "first"
    assert plain.get_message_from_inbox(sid, "m1") is not None


@pytest.mark.parametrize("removal", ["close", "timeout"])
def test_relay_marks_go_with_their_session(nodes: Cluster, clock: Any, removal: str) -> None:
    sid, target, plain = two_sessions(nodes)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        put_out(uow, target, "o1")
    assert len(nodes.marks(target)) == 1
    if removal == "close":
        plain.close_session(target)
    else:
        clock.advance(10)
        plain.notify_session_liveliness([sid])
        assert plain.timeout_sessions(clock()) == [target]
    assert nodes.marks(target) == []
    assert not plain.is_session_exists(target) and out_ids(plain, target) == []
    assert plain.scavenge_session_remnants() == 0, "nothing of the session is left"


def test_relay_marks_are_scavenged_after_their_retention(nodes: Cluster, clock: Any) -> None:
    sid, target, plain = two_sessions(nodes)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        put_out(uow, target, "o1")
    [mark] = nodes.marks(target)
    clock.advance(cmd.RELAY_MARK_RETENTION_MS)
    assert plain.scavenge_session_remnants() == 0
    assert nodes.marks(target) == [mark], "kept for its whole retention"
    clock.advance(1)
    plain.scavenge_session_remnants()
    assert nodes.marks(target) == []
    assert out_ids(plain, target) == ["o1"], "the relayed message stays"
    assert plain.is_session_exists(target)


def test_relayed_writes_carry_the_units_time(nodes: Cluster, clock: Any) -> None:
    """Every write of a unit carries its start, the relayed ones too (not their delivery's)."""
    sid, target, plain = two_sessions(nodes)
    with nodes.remote(sid).unit_of_work(sid) as uow:
        put_out(uow, sid, "own")
        put_out(uow, target, "relayed")
        clock.advance(1_000)
    [own] = plain.get_messages_from_outbox(sid, 10)
    [relayed] = plain.get_messages_from_outbox(target, 10)
    assert own.stored_timestamp == uow.now
    assert relayed.stored_timestamp == uow.now, f"stored at {relayed.stored_timestamp}, the unit began at {uow.now}"


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_ending_the_unit_inside_its_with_block_ends_it_cleanly(nodes: Cluster, end: str) -> None:
    """`uow.commit()` (or `rollback()`) inside the block, then leaving the block normally:
    the block's end must not report an error for a unit that was ended as asked. (A caller
    told UnitOfWorkError after a successful commit would run the unit again.)"""
    sid = nodes.sid("s", 1)
    store = nodes.remote(sid)
    register(store, sid)
    outcome: BaseException | None = None
    try:
        with store.unit_of_work(sid) as uow:
            uow.store_message_id_in_inbox(sid, "m1")
            getattr(uow, end)()
    except UnitOfWorkError as e:
        outcome = e
    assert (store.get_message_from_inbox(sid, "m1") is not None) == (end == "commit")
    assert outcome is None, f"leaving the block after {end}() raised {outcome!r}"
