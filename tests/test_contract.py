"""The API contract of `ClusterStoreAndForward` (DESIGN.md section 2), for every backend.

Written only against the `store` / `store_factory` fixtures, so the same suite runs on
the embedded log and on a real broker.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from csaf_events import (
    ClusterStoreAndForward,
    CsafError,
    CurrentNode,
    Limits,
    MessageIdAlreadyExistsError,
    MessageType,
    RequestCorrelation,
    SessionDto,
    StoredInMessage,
    StoredOutMessage,
    WrongUserError,
)
from csaf_events.core.events import OutboxState
from csaf_events.core.partitioning import partition_for
from projections import queries

# Bytes that break naive encodings: NULs, newlines, every byte value, invalid UTF-8.
NASTY_BYTES = bytes(range(256)) + b"\x00\x00\n\r\n\xff\xfe\xc3\x28\x80" + b"\n" * 3 + b"\x00"
NASTY_TEXT = 'line1\nline2\r\n\ttab "quoted" \\ back \u00e9\u4e2d\U0001f600 {"json": [1, 2]} \x00 end'


# --------------------------------------------------------------------------- helpers ----

def register(store: ClusterStoreAndForward, sid: str, user: str = "u1", conn: str = "c1", *,
             lib: str = "MatsSocket.ts,v1.0", app: str = "app", version: str = "1.0") -> int:
    return store.register_session_at_this_node(sid, user, conn, lib, app, version)


def put_out(store: ClusterStoreAndForward, sid: str, smid: str, *, type: MessageType | str = MessageType.SEND,  # noqa: A002
            cmid: str | None = None, trace: str | None = "trace", request_ts: int | None = None,
            envelope: str = "{}", json: str | None = None, binary: bytes | None = None) -> CurrentNode | None:
    return store.store_message_in_outbox(sid, smid, cmid, trace, type, request_ts, envelope, json, binary)


def out_ids(store: ClusterStoreAndForward, sid: str, max_n: int = 1000) -> list[str]:
    return [m.server_message_id for m in store.get_messages_from_outbox(sid, max_n)]


def run_threads(n: int, fn: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run fn(i) on n threads started together; returns (results, errors)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - kept for the test to judge
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


def same_partition_ids(partitions: int, base: str, n: int) -> list[str]:
    """`n` session ids that land in the same partition as `base`, each starting with `base`."""
    p = partition_for(base, partitions)
    out = [base]
    for k in itertools.count():
        if len(out) == n:
            return out
        cand = f"{base}{k}"
        if partition_for(cand, partitions) == p:
            out.append(cand)
    raise AssertionError  # pragma: no cover


def owned_outbox_state(store: ClusterStoreAndForward, sid: str, smid: str) -> OutboxState | None:
    """The raw outbox state from this node's projection, if this node owns the partition
    (the API never shows an attempted message; this lets the test see its attempt mark)."""
    p = partition_for(sid, store.partitions)
    if p not in store.node.owned():
        return None
    return queries.outbox_message(store.node.projection, p, sid, smid)


class Nodes:
    """Stores at named nodes of one cluster. On a cluster backend every node stays open;
    embedded mode is one node, so switching node reopens the same data under the other
    node name (a restart of the single node with a new name)."""

    def __init__(self, store_factory, **kw: Any) -> None:
        self.factory = store_factory
        self.kw = kw
        self.dir = store_factory.data_dir("node-a")
        self.stores: dict[str, ClusterStoreAndForward] = {}
        self.current: ClusterStoreAndForward | None = None

    def __getitem__(self, name: str) -> ClusterStoreAndForward:
        if self.factory.cluster:
            if name not in self.stores:
                self.stores[name] = self.factory(name, **self.kw)
            return self.stores[name]
        if self.current is None or self.current.node_name != name:
            if self.current is not None:
                self.current.close()
            self.current = self.factory(name, data_dir=self.dir, **self.kw)
        return self.current


# ----------------------------------------------------------------------- lifecycle ----

def test_boot_is_idempotent_and_context_manager_works(store_factory):
    s = store_factory(boot=False)
    s.boot()
    s.boot()
    register(s, "s1")
    s.close()
    s.close()  # closing twice is harmless
    with store_factory() as again:  # reopen of the same node data
        assert again.is_session_exists("s1")
    with pytest.raises(CsafError):
        again.is_session_exists("s1")


def test_calls_wait_where_the_backend_waits_for_a_broker(store_factory):
    """Kafka calls wait for a transaction (or the owner); an embedded call is one local write."""
    s = store_factory()
    assert s.calls_wait is store_factory.cluster


# ------------------------------------------------------------------------ sessions ----

def test_register_returns_created_timestamp_now_then_original(store_factory, clock):
    store = store_factory(clock=clock)
    t0 = clock()
    assert register(store, "s1", conn="c1") == t0
    clock.advance(5_000)
    assert register(store, "s1", conn="c2") == t0  # re-register: the original
    assert store.get_current_registered_node_for_session("s1") == CurrentNode(store.node_name, "c2")
    clock.advance(5_000)
    assert register(store, "s2") == clock()
    [s1] = [s for s in store.get_sessions(False) if s.session_id == "s1"]
    assert s1.created_timestamp == t0
    assert store.get_sessions_count(False) == 2


def test_session_dto_fields(store_factory, clock):
    store = store_factory(clock=clock)
    register(store, "s1", "user-1", "conn-1", lib="MatsSocket.ts,v0.19; User-Agent: x", app="web", version="2.3.4")
    assert store.get_sessions(False) == [SessionDto(
        "s1", "user-1", store.node_name, "MatsSocket.ts,v0.19; User-Agent: x", "web", "2.3.4", clock(), clock())]


def test_reregister_with_other_user_raises_and_changes_nothing(store_factory, clock):
    store = store_factory(clock=clock)
    register(store, "s1", "alice", "c1", app="web", version="1.0")
    store.store_message_id_in_inbox("s1", "m1")
    put_out(store, "s1", "o1")
    before = store.get_sessions(False)
    clock.advance(1_000)
    with pytest.raises(WrongUserError):
        register(store, "s1", "mallory", "c2", app="evil", version="9.9")
    assert store.get_sessions(False) == before
    assert store.get_current_registered_node_for_session("s1") == CurrentNode(store.node_name, "c1")
    assert store.get_sessions_count(False, user_id="mallory") == 0
    assert store.get_sessions_count(False, user_id="alice") == 1
    assert out_ids(store, "s1") == ["o1"]
    with pytest.raises(MessageIdAlreadyExistsError):
        store.store_message_id_in_inbox("s1", "m1")
    # and the right user can still re-register
    assert register(store, "s1", "alice", "c3") == before[0].created_timestamp


def test_minted_session_ids_are_fresh_and_in_partitions_this_node_owns(store):
    owned = set(store.node.owned())
    ids = [store.new_session_id() for _ in range(50)] + [store.new_session_id("ws-") for _ in range(50)]
    assert len(set(ids)) == 100, "no id twice"
    assert all(partition_for(sid, store.partitions) in owned for sid in ids)
    assert all(sid.startswith("ws-") and len(sid) == 19 for sid in ids[50:])
    register(store, ids[0])
    assert store.get_current_registered_node_for_session(ids[0]) == CurrentNode(store.node_name, "c1")


@pytest.mark.parametrize("prefix, error", [(7, TypeError), ("x" * 241, ValueError), ("a\nb", ValueError)])
def test_a_bad_session_id_prefix_is_refused(store, prefix: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="prefix"):
        store.new_session_id(prefix)
    assert store.new_session_id("ok-").startswith("ok-"), "the store still works"


def test_current_node_none_when_missing_or_deregistered(store):
    assert store.get_current_registered_node_for_session("nope") is None
    register(store, "s1", conn="c1")
    assert store.get_current_registered_node_for_session("s1") == CurrentNode(store.node_name, "c1")
    store.deregister_session_from_this_node("s1", "c1")
    assert store.get_current_registered_node_for_session("s1") is None
    assert store.is_session_exists("s1")  # the row stays: registered or not


def test_is_session_exists(store):
    assert not store.is_session_exists("s1")
    register(store, "s1")
    assert store.is_session_exists("s1")
    store.deregister_session_from_this_node("s1", "c1")
    assert store.is_session_exists("s1")
    store.close_session("s1")
    assert not store.is_session_exists("s1")


def test_deregister_needs_the_same_connection(store):
    """A late close of an old socket must not undo a reconnect."""
    register(store, "s1", conn="c1")
    register(store, "s1", conn="c2")  # the client reconnected
    store.deregister_session_from_this_node("s1", "c1")  # the old socket's close arrives late
    assert store.get_current_registered_node_for_session("s1") == CurrentNode(store.node_name, "c2")
    assert store.get_sessions_count(True) == 1
    store.deregister_session_from_this_node("s1", "c2")
    assert store.get_current_registered_node_for_session("s1") is None
    assert store.get_sessions_count(True) == 0
    store.deregister_session_from_this_node("s1", "c2")  # again: harmless
    store.deregister_session_from_this_node("never-registered", "c1")  # unknown: harmless
    assert not store.is_session_exists("never-registered")


def test_deregister_needs_the_same_node(store_factory, clock):
    """Only the node that holds the session (with that connection) can clear its home."""
    nodes = Nodes(store_factory, clock=clock)
    register(nodes["node-a"], "s1", conn="c1")
    # the client moved to node-b
    assert register(nodes["node-b"], "s1", conn="c2") == clock()
    assert nodes["node-b"].get_current_registered_node_for_session("s1") == CurrentNode("node-b", "c2")
    # node-a sees the old socket close late, even with the new connection id: not its session
    nodes["node-a"].deregister_session_from_this_node("s1", "c1")
    nodes["node-a"].deregister_session_from_this_node("s1", "c2")
    assert nodes["node-a"].get_current_registered_node_for_session("s1") == CurrentNode("node-b", "c2")
    # node-b with a wrong connection id: no change either
    nodes["node-b"].deregister_session_from_this_node("s1", "c1")
    assert nodes["node-b"].get_current_registered_node_for_session("s1") == CurrentNode("node-b", "c2")
    [dto] = nodes["node-b"].get_sessions(True)
    assert dto.node_name == "node-b"
    nodes["node-b"].deregister_session_from_this_node("s1", "c2")
    assert nodes["node-b"].get_current_registered_node_for_session("s1") is None
    assert nodes["node-a"].get_current_registered_node_for_session("s1") is None
    assert nodes["node-a"].is_session_exists("s1")


SESSIONS = [
    # session id, user, app, version, active
    ("a1", "u1", "web", "1.10", True),
    ("a2", "u1", "web", "1.9", False),
    ("a3", "u2", "web", "2.0", True),
    ("a4", "u2", "mobile", "1.2", True),
    ("a5", "u1", "mobile", "10.0", False),
    ("a6", "u3", "web", "0.9", True),
    ("a7", "u3", "desk", "1.9", False),
]


def test_get_sessions_and_count_every_filter_combination(store):
    for sid, user, app, version, active in SESSIONS:
        register(store, sid, user, f"conn-{sid}", app=app, version=version)
        if not active:
            store.deregister_session_from_this_node(sid, f"conn-{sid}")
    checked = 0
    for only_active, user, app, version in itertools.product(
            (False, True), (None, "u1", "u2", "u3", "nobody"), (None, "web", "mobile", "desk", "none"),
            (None, "1.2", "1.9", "10", "2", "9", "")):
        expected = {sid for sid, u, a, ver, active in SESSIONS
                    if (active or not only_active) and user in (None, u) and app in (None, a)
                    and (version is None or ver >= version)}
        got = store.get_sessions(only_active, user_id=user, app_name=app, app_version_at_or_above=version)
        assert {s.session_id for s in got} == expected, (only_active, user, app, version)
        assert len(got) == len(expected)
        assert store.get_sessions_count(only_active, user, app, version) == len(expected)
        checked += bool(expected)
    assert checked > 50
    # plain string compare: "1.10" < "1.9" and "10.0" >= "1.9"
    assert {s.session_id for s in store.get_sessions(False, app_version_at_or_above="1.9")} == {"a2", "a3", "a5", "a7"}
    # active sessions carry the node, deregistered ones None
    for s in store.get_sessions(False):
        active = {x[0]: x[4] for x in SESSIONS}[s.session_id]
        assert s.node_name == (store.node_name if active else None)
        assert isinstance(s, SessionDto)


def test_close_session_deletes_everything_stored_for_it(store):
    register(store, "s1")
    register(store, "s2")
    for sid in ("s1", "s2"):
        store.store_message_id_in_inbox(sid, "m1")
        store.update_message_in_inbox(sid, "m1", "{}", b"x")
        put_out(store, sid, "o1")
        put_out(store, sid, "o2")
        store.outbox_messages_attempted_delivery(sid, ["o2"])
        put_out(store, sid, "o3")
        store.outbox_messages_dead_letter_queue(sid, ["o3"])
        store.store_request_correlation(sid, "o1", 1, "term", "corr", b"c")
    store.close_session("s1")
    assert not store.is_session_exists("s1")
    assert store.get_current_registered_node_for_session("s1") is None
    assert store.get_message_from_inbox("s1", "m1") is None
    assert store.get_messages_from_outbox("s1", 10) == []
    assert store.get_and_delete_request_correlation("s1", "o1") is None
    assert [s.session_id for s in store.get_sessions(False)] == ["s2"]
    assert store.scavenge_session_remnants() == 0  # nothing was left behind
    # a new session with the same id starts empty: ids are free again, nothing comes back
    register(store, "s1")
    store.store_message_id_in_inbox("s1", "m1")
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert store.get_messages_from_outbox("s1", 10) == []
    for smid in ("o1", "o2", "o3"):
        put_out(store, "s1", smid)
    assert out_ids(store, "s1") == ["o1", "o2", "o3"]
    # s2 untouched
    assert store.get_message_from_inbox("s2", "m1").message_binary == b"x"
    store.outbox_messages_unmark_attempted_delivery("s2")
    assert out_ids(store, "s2") == ["o1", "o2"]
    assert store.get_and_delete_request_correlation("s2", "o1") is not None
    store.close_session("s2")
    store.close_session("s2")  # closing a missing session is harmless
    store.close_session("never-there")


def test_sessions_sharing_a_partition_and_an_id_prefix_do_not_see_each_other(store):
    a, ab, abc = same_partition_ids(store.partitions, "a", 3)
    for sid in (a, ab, abc):
        register(store, sid)
        store.store_message_id_in_inbox(sid, f"in-{sid}")
        put_out(store, sid, f"out-{sid}")
        store.store_request_correlation(sid, f"out-{sid}", 1, "t", sid, None)
    assert out_ids(store, a) == [f"out-{a}"]
    assert store.get_message_from_inbox(a, f"in-{ab}") is None
    store.close_session(a)
    for sid in (ab, abc):
        assert store.is_session_exists(sid)
        assert out_ids(store, sid) == [f"out-{sid}"]
        assert store.get_message_from_inbox(sid, f"in-{sid}") is not None
        assert store.get_and_delete_request_correlation(sid, f"out-{sid}").correlation_string == sid


def test_notify_liveliness_only_for_existing_sessions(store_factory, clock):
    store = store_factory(clock=clock)
    t0 = clock()
    register(store, "s1")
    register(store, "s2")
    t1 = clock.advance(10_000)
    store.notify_session_liveliness(["s1", "ghost", "s1"])
    store.notify_session_liveliness([])
    store.notify_session_liveliness(iter(()))
    live = {s.session_id: s.liveliness_timestamp for s in store.get_sessions(False)}
    assert live == {"s1": t1, "s2": t0}
    assert not store.is_session_exists("ghost")
    # liveliness does not touch the home or the created timestamp
    assert store.get_current_registered_node_for_session("s1") == CurrentNode(store.node_name, "c1")
    assert {s.created_timestamp for s in store.get_sessions(False)} == {t0}
    # works for deregistered sessions too (the row exists)
    store.deregister_session_from_this_node("s2", "c1")
    t2 = clock.advance(10_000)
    store.notify_session_liveliness(("s2",))
    assert {s.session_id: s.liveliness_timestamp for s in store.get_sessions(False)}["s2"] == t2


def test_timeout_sessions(store_factory, clock):
    store = store_factory(clock=clock)
    t0 = clock()
    register(store, "old")
    store.store_message_id_in_inbox("old", "m1")
    put_out(store, "old", "o1")
    store.store_request_correlation("old", "o1", 1, "term", None, None)
    register(store, "fresh")
    t1 = clock.advance(60_000)
    store.notify_session_liveliness(["fresh"])
    assert store.timeout_sessions(t0) == []  # liveliness == timestamp is not older
    assert store.timeout_sessions(t0 + 1) == ["old"]
    assert store.timeout_sessions(t0 + 1) == []  # each id returned once
    assert not store.is_session_exists("old")
    assert [s.session_id for s in store.get_sessions(False)] == ["fresh"]
    assert store.scavenge_session_remnants() == 0  # its data went with it
    register(store, "old")  # a new session with the old id starts empty
    assert store.get_message_from_inbox("old", "m1") is None
    assert store.get_messages_from_outbox("old", 10) == []
    assert store.get_and_delete_request_correlation("old", "o1") is None
    clock.advance(1)
    assert sorted(store.timeout_sessions(clock())) == ["fresh", "old"]
    assert store.get_sessions_count(False) == 0
    assert t1 > t0


def test_timeout_sessions_concurrent_calls_return_each_id_once(store_factory, clock):
    store = store_factory(clock=clock)
    stale = [f"stale-{i}" for i in range(60)]
    for sid in stale:
        register(store, sid)
        store.store_message_id_in_inbox(sid, "m")
    clock.advance(1_000)
    register(store, "live")
    results, errors = run_threads(8, lambda i: store.timeout_sessions(clock()))
    assert not errors
    flat = [sid for r in results for sid in r]
    assert sorted(flat) == sorted(stale), "every stale session exactly once across all calls"
    assert [s.session_id for s in store.get_sessions(False)] == ["live"]


def test_scavenge_removes_remnants_of_sessions_that_do_not_exist(store):
    register(store, "real")
    store.store_message_id_in_inbox("real", "m1")
    put_out(store, "real", "o1")
    store.store_request_correlation("real", "o1", 1, "t", None, None)
    # The API lets inbox ids and correlations be stored for an id without a session row.
    for cmid in ("g1", "g2", "g3"):
        store.store_message_id_in_inbox("ghost", cmid)
    store.store_request_correlation("ghost", "r1", 1, "t", "x", None)
    store.store_request_correlation("ghost-2", "r1", 1, "t", None, b"y")
    assert put_out(store, "ghost", "o1") is None  # not stored: no session
    assert store.scavenge_session_remnants() == 5
    assert store.scavenge_session_remnants() == 0
    for cmid in ("g1", "g2", "g3"):
        assert store.get_message_from_inbox("ghost", cmid) is None
    assert store.get_and_delete_request_correlation("ghost", "r1") is None
    assert store.get_and_delete_request_correlation("ghost-2", "r1") is None
    # the real session is untouched
    assert store.get_message_from_inbox("real", "m1") is not None
    assert out_ids(store, "real") == ["o1"]
    assert store.get_and_delete_request_correlation("real", "o1") is not None


# --------------------------------------------------------------------------- inbox ----

def test_inbox_store_duplicate_update_get_delete(store_factory, clock):
    store = store_factory(clock=clock)
    register(store, "s1")
    register(store, "s2")
    assert store.get_message_from_inbox("s1", "m1") is None
    store.store_message_id_in_inbox("s1", "m1")
    t_stored = clock()
    assert store.get_message_from_inbox("s1", "m1") == StoredInMessage("s1", "m1", t_stored, None, None)
    with pytest.raises(MessageIdAlreadyExistsError):
        store.store_message_id_in_inbox("s1", "m1")
    store.store_message_id_in_inbox("s2", "m1")  # ids are per session
    clock.advance(100)
    store.update_message_in_inbox("s1", "m1", '{"t":"RESOLVE"}', b"\x00bin")
    assert store.get_message_from_inbox("s1", "m1") == StoredInMessage(
        "s1", "m1", t_stored, '{"t":"RESOLVE"}', b"\x00bin")
    store.update_message_in_inbox("s1", "m1", None, None)  # the latest result wins
    assert store.get_message_from_inbox("s1", "m1") == StoredInMessage("s1", "m1", t_stored, None, None)
    with pytest.raises(MessageIdAlreadyExistsError):  # still a duplicate after the update
        store.store_message_id_in_inbox("s1", "m1")
    store.update_message_in_inbox("s1", "unknown", "{}", None)  # updating a missing id stores nothing
    assert store.get_message_from_inbox("s1", "unknown") is None
    store.store_message_id_in_inbox("s1", "m2")
    store.store_message_id_in_inbox("s1", "m3")
    store.delete_message_ids_from_inbox("s1", ["m1", "m3", "not-there", "m1"])
    assert store.get_message_from_inbox("s1", "m1") is None
    assert store.get_message_from_inbox("s1", "m3") is None
    assert store.get_message_from_inbox("s1", "m2") is not None
    assert store.get_message_from_inbox("s2", "m1") is not None
    store.delete_message_ids_from_inbox("s1", [])
    store.store_message_id_in_inbox("s1", "m1")  # free again after delete
    store.delete_message_ids_from_inbox("s1", (x for x in ["m1", "m2"]))
    assert store.get_message_from_inbox("s1", "m2") is None


def test_inbox_duplicate_ids_under_concurrency_exactly_one_succeeds(store):
    register(store, "s1")
    for round_ in range(3):
        _results, errors = run_threads(16, lambda i: store.store_message_id_in_inbox("s1", f"dup-{round_}"))
        assert len(errors) == 15, errors
        assert all(isinstance(e, MessageIdAlreadyExistsError) for e in errors), errors
    # many ids at once, several threads each: every id exactly once
    ok: list[str] = []
    lock = threading.Lock()

    def store_all(i: int) -> None:
        for k in range(40):
            try:
                store.store_message_id_in_inbox("s1", f"id-{k}")
                with lock:
                    ok.append(f"id-{k}")
            except MessageIdAlreadyExistsError:
                pass

    _, errors = run_threads(6, store_all)
    assert not errors
    assert sorted(ok) == sorted(f"id-{k}" for k in range(40))


def test_concurrent_first_register_with_different_users_exactly_one_wins(store):
    for k in range(3):
        sid = f"contested-{k}"
        results, errors = run_threads(
            8, lambda i: store.register_session_at_this_node(sid, f"user-{i}", f"c{i}", "lib", "app", "1"))
        assert len(errors) == 7 and all(isinstance(e, WrongUserError) for e in errors), errors
        [winner] = [i for i, r in enumerate(results) if r is not None]
        [dto] = [s for s in store.get_sessions(False) if s.session_id == sid]
        assert dto.user_id == f"user-{winner}"
        assert store.get_current_registered_node_for_session(sid) == CurrentNode(store.node_name, f"c{winner}")


# -------------------------------------------------------------------------- outbox ----

def test_outbox_store_returns_current_node(store):
    register(store, "s1", conn="c1")
    assert put_out(store, "s1", "o1") == CurrentNode(store.node_name, "c1")
    store.deregister_session_from_this_node("s1", "c1")
    assert put_out(store, "s1", "o2") is None  # no node holds it ...
    assert out_ids(store, "s1") == ["o1", "o2"]  # ... but it is stored
    register(store, "s1", conn="c9")
    assert put_out(store, "s1", "o3") == CurrentNode(store.node_name, "c9")


def test_outbox_store_for_missing_session_stores_nothing(store):
    assert put_out(store, "nope", "o1") is None
    assert store.get_messages_from_outbox("nope", 10) == []
    assert not store.is_session_exists("nope")
    register(store, "nope")
    assert store.get_messages_from_outbox("nope", 10) == []
    put_out(store, "nope", "o1")  # no duplicate: nothing was stored before
    assert out_ids(store, "nope") == ["o1"]
    assert store.scavenge_session_remnants() == 0


def test_outbox_duplicate_server_message_id_under_concurrency_exactly_one_succeeds(store):
    register(store, "s1")
    for k in range(3):
        results, errors = run_threads(12, lambda i: put_out(store, "s1", f"dup-{k}", json=str(i)))
        assert len(errors) == 11 and all(isinstance(e, MessageIdAlreadyExistsError) for e in errors), errors
        [winner] = [i for i, r in enumerate(results) if r is not None]
        assert store.get_messages_from_outbox("s1", 100)[-1].message_text == str(winner)
    assert out_ids(store, "s1") == ["dup-0", "dup-1", "dup-2"]


def test_outbox_duplicate_server_message_id_raises(store):
    register(store, "s1")
    register(store, "s2")
    put_out(store, "s1", "o1", json="first")
    with pytest.raises(MessageIdAlreadyExistsError):
        put_out(store, "s1", "o1", json="second")
    put_out(store, "s2", "o1")  # ids are per session
    [m] = store.get_messages_from_outbox("s1", 10)
    assert m.message_text == "first"
    store.outbox_messages_attempted_delivery("s1", ["o1"])
    with pytest.raises(MessageIdAlreadyExistsError):
        put_out(store, "s1", "o1")
    store.outbox_messages_dead_letter_queue("s1", ["o1"])
    with pytest.raises(MessageIdAlreadyExistsError):  # kept for inspection: still taken
        put_out(store, "s1", "o1")


def test_outbox_message_fields(store_factory, clock):
    store = store_factory(clock=clock)
    register(store, "s1")
    t = clock.advance(7)
    put_out(store, "s1", "o1", type=MessageType.REQUEST, cmid="cm-1", trace="trace-1", request_ts=123,
            envelope='{"env":1}', json='{"msg":1}', binary=b"\x01\x02")
    put_out(store, "s1", "o2", type="PUB", trace=None, envelope="e")
    assert store.get_messages_from_outbox("s1", 10) == [
        StoredOutMessage("s1", "o1", "trace-1", MessageType.REQUEST, "cm-1", 123, t, None, 0,
                         '{"env":1}', '{"msg":1}', b"\x01\x02"),
        StoredOutMessage("s1", "o2", None, MessageType.PUB, None, None, t, None, 0, "e", None, None),
    ]


def test_outbox_get_in_order_stored_up_to_max(store):
    register(store, "s1")
    # ids whose sort order is not the store order
    smids = [f"{(i * 37) % 50:02d}-{chr(122 - i % 26)}" for i in range(50)]
    for smid in smids:
        put_out(store, "s1", smid)
    assert out_ids(store, "s1", 50) == smids
    assert out_ids(store, "s1", 100) == smids
    assert out_ids(store, "s1", 10) == smids[:10]
    assert out_ids(store, "s1", 1) == smids[:1]
    assert store.get_messages_from_outbox("s1", 0) == []
    assert store.get_messages_from_outbox("other", 10) == []


def test_outbox_get_skips_attempted_and_attempted_increments_count(store_factory, clock):
    store = store_factory(clock=clock)
    register(store, "s1")
    for smid in ("o1", "o2", "o3", "o4"):
        put_out(store, "s1", smid)
    t1 = clock.advance(1_000)
    store.outbox_messages_attempted_delivery("s1", ["o1", "o3", "unknown"])
    assert out_ids(store, "s1") == ["o2", "o4"]
    assert out_ids(store, "s1", 1) == ["o2"]  # max counts fetched messages, not skipped ones
    raw = owned_outbox_state(store, "s1", "o1")
    if raw is not None:
        assert raw.attempt_timestamp == t1
        assert raw.delivery_count == 1
    t2 = clock.advance(1_000)
    store.outbox_messages_attempted_delivery("s1", ["o1", "o2"])
    raw = owned_outbox_state(store, "s1", "o1")
    if raw is not None:
        assert raw.attempt_timestamp == t2
        assert raw.delivery_count == 2
    assert out_ids(store, "s1") == ["o4"]
    store.outbox_messages_attempted_delivery("s1", [])
    store.outbox_messages_attempted_delivery("s1", ["o4", "o4"])  # one call, one attempt
    store.outbox_messages_unmark_attempted_delivery("s1")
    msgs = store.get_messages_from_outbox("s1", 10)
    assert [(m.server_message_id, m.delivery_count, m.attempt_timestamp) for m in msgs] == [
        ("o1", 2, None), ("o2", 1, None), ("o3", 1, None), ("o4", 1, None)]


def test_outbox_unmark_clears_attempt_but_keeps_count(store):
    register(store, "s1")
    register(store, "s2")
    put_out(store, "s1", "o1")
    put_out(store, "s2", "o1")
    store.outbox_messages_attempted_delivery("s1", ["o1"])
    store.outbox_messages_attempted_delivery("s2", ["o1"])
    store.outbox_messages_unmark_attempted_delivery("s1")
    [m] = store.get_messages_from_outbox("s1", 10)
    assert (m.attempt_timestamp, m.delivery_count) == (None, 1)
    assert store.get_messages_from_outbox("s2", 10) == []  # unmark is per session
    store.outbox_messages_unmark_attempted_delivery("s1")  # nothing marked: harmless
    store.outbox_messages_unmark_attempted_delivery("no-such-session")
    assert store.get_messages_from_outbox("s1", 10) == [m]


def test_outbox_complete_removes(store):
    register(store, "s1")
    for smid in ("o1", "o2", "o3"):
        put_out(store, "s1", smid)
    store.outbox_messages_attempted_delivery("s1", ["o1", "o2"])
    store.outbox_messages_complete("s1", ["o1", "o3", "unknown"])
    assert out_ids(store, "s1") == []
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert out_ids(store, "s1") == ["o2"]
    store.outbox_messages_complete("s1", ["o2"])
    store.outbox_messages_complete("s1", ["o2"])  # twice: harmless
    store.outbox_messages_complete("s1", [])
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert out_ids(store, "s1") == []
    assert store.scavenge_session_remnants() == 0


def test_dead_lettered_messages_are_never_fetched_again_even_after_unmark(store):
    """The Java SQL peer writes the dead-letter marker into the attempt column, so an
    unmark brings its dead letters back. Here they stay out."""
    register(store, "s1")
    for smid in ("o1", "o2", "o3", "o4"):
        put_out(store, "s1", smid)
    store.outbox_messages_attempted_delivery("s1", ["o1", "o2"])
    store.outbox_messages_dead_letter_queue("s1", ["o1", "o3"])  # one attempted, one not
    assert out_ids(store, "s1") == ["o4"]
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert out_ids(store, "s1") == ["o2", "o4"]
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert out_ids(store, "s1") == ["o2", "o4"]
    # attempting a dead letter again, then unmarking, still does not bring it back
    store.outbox_messages_attempted_delivery("s1", ["o1", "o3"])
    store.outbox_messages_dead_letter_queue("s1", ["o1"])  # twice: harmless
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert out_ids(store, "s1") == ["o2", "o4"]
    store.outbox_messages_complete("s1", ["o2", "o4"])
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert store.get_messages_from_outbox("s1", 100) == []


def test_outbox_fetch_order_is_store_order(store_factory, clock):
    """The Java SQL peer fetches the outbox in no defined order. Here: the order stored,
    whatever the ids, the stored timestamps (even if the clock steps back), and the
    attempt/unmark/complete history."""
    store = store_factory(clock=clock)
    register(store, "s1")
    stored = ["zeta", "alpha", "m-10", "m-9", "Beta", "0", "\u00e9clair", "m-1"]
    for i, smid in enumerate(stored):
        clock.set(1_700_000_000_000 - i * 1_000)  # each stored "earlier" than the one before
        put_out(store, "s1", smid, request_ts=10_000 - i)
    assert out_ids(store, "s1") == stored
    store.outbox_messages_attempted_delivery("s1", ["alpha", "m-9", "m-1"])
    assert out_ids(store, "s1") == [s for s in stored if s not in {"alpha", "m-9", "m-1"}]
    store.outbox_messages_unmark_attempted_delivery("s1")
    assert out_ids(store, "s1") == stored
    store.outbox_messages_complete("s1", ["zeta", "m-10"])
    put_out(store, "s1", "aaa-late")
    put_out(store, "s1", "zeta")  # a completed id stored again goes to the end
    expected = [s for s in stored if s not in {"zeta", "m-10"}] + ["aaa-late", "zeta"]
    assert out_ids(store, "s1") == expected
    assert out_ids(store, "s1", 3) == expected[:3]


# -------------------------------------------------------------------- correlations ----

def test_request_correlation_store_and_take_once(store):
    store.store_request_correlation("s1", "r1", 1_234, "Terminator.reply", "corr-string", b"\x00corr")
    store.store_request_correlation("s1", "r2", 5, "T", None, None)
    assert store.get_and_delete_request_correlation("s1", "r1") == RequestCorrelation(
        "s1", "r1", 1_234, "Terminator.reply", "corr-string", b"\x00corr")
    assert store.get_and_delete_request_correlation("s1", "r1") is None
    assert store.get_and_delete_request_correlation("s1", "unknown") is None
    assert store.get_and_delete_request_correlation("s2", "r2") is None
    assert store.get_and_delete_request_correlation("s1", "r2") == RequestCorrelation("s1", "r2", 5, "T", None, None)


def test_request_correlation_without_reply_terminator(store_factory):
    """The reference schema's reply_terminator_id column is nullable: None is stored and
    given back as None, also through another node (routed, or after a restart)."""
    nodes = Nodes(store_factory)
    nodes["node-a"].store_request_correlation("s1", "r1", 7, None, "corr", None)
    nodes["node-a"].store_request_correlation("s1", "r2", 8, None, None, None)
    assert nodes["node-a"].get_and_delete_request_correlation("s1", "r1") == RequestCorrelation(
        "s1", "r1", 7, None, "corr", None)
    assert nodes["node-b"].get_and_delete_request_correlation("s1", "r2") == RequestCorrelation(
        "s1", "r2", 8, None, None, None)
    assert nodes["node-b"].get_and_delete_request_correlation("s1", "r2") is None


def test_request_correlation_concurrent_take_exactly_one(store):
    for k in range(3):
        store.store_request_correlation("s1", f"r{k}", 1, "T", f"c{k}", None)
        results, errors = run_threads(16, lambda i: store.get_and_delete_request_correlation("s1", f"r{k}"))
        assert not errors
        got = [r for r in results if r is not None]
        assert len(got) == 1, results
        assert got[0].correlation_string == f"c{k}"


# ----------------------------------------------------------------- types, payloads ----

def test_message_type_enum_and_plain_strings(store):
    register(store, "s1")
    for t in MessageType:
        put_out(store, "s1", f"enum-{t.value}", type=t)
        put_out(store, "s1", f"str-{t.value}", type=t.value)
    msgs = store.get_messages_from_outbox("s1", 1000)
    assert len(msgs) == 2 * len(MessageType)
    for m in msgs:
        assert isinstance(m.type, MessageType)
        assert m.type == MessageType(m.server_message_id.split("-", 1)[1])
        assert m.type == m.type.value  # a str enum
    for bad in ("BOGUS", "resolve", "", "RESOLVE "):
        with pytest.raises(ValueError, match="type"):
            put_out(store, "s1", "bad", type=bad)
    assert len(store.get_messages_from_outbox("s1", 1000)) == 2 * len(MessageType)
    put_out(store, "s1", "bad", type="RESOLVE")  # the failed ones stored nothing


def test_binary_and_text_payloads_round_trip_exactly(store):
    register(store, "s1")
    put_out(store, "s1", "o1", envelope=NASTY_TEXT, json=NASTY_TEXT, binary=NASTY_BYTES)
    put_out(store, "s1", "o2", binary=b"")
    put_out(store, "s1", "o3", binary=bytearray(b"\x00\xff"))
    m1, m2, m3 = store.get_messages_from_outbox("s1", 10)
    assert (m1.envelope, m1.message_text, m1.message_binary) == (NASTY_TEXT, NASTY_TEXT, NASTY_BYTES)
    assert m2.message_binary == b"" and m2.message_text is None
    assert m3.message_binary == b"\x00\xff" and isinstance(m3.message_binary, bytes)
    store.store_message_id_in_inbox("s1", "m1")
    store.update_message_in_inbox("s1", "m1", NASTY_TEXT, NASTY_BYTES)
    got = store.get_message_from_inbox("s1", "m1")
    assert (got.full_envelope, got.message_binary) == (NASTY_TEXT, NASTY_BYTES)
    store.store_request_correlation("s1", "r1", 1, "T", NASTY_TEXT, NASTY_BYTES)
    c = store.get_and_delete_request_correlation("s1", "r1")
    assert (c.correlation_string, c.correlation_binary) == (NASTY_TEXT, NASTY_BYTES)


def test_unusual_but_valid_ids(store):
    for sid in ("s/1", "s:1", "s 1", "\u00e9\u4e2d\U0001f600", "s\"1'", "[\"s\",1]", "x" * 256):
        register(store, sid, user=sid, conn=sid)
        store.store_message_id_in_inbox(sid, sid)
        put_out(store, sid, sid)
        store.store_request_correlation(sid, sid, 1, sid, None, None)
        assert store.get_current_registered_node_for_session(sid) == CurrentNode(store.node_name, sid)
        assert store.get_message_from_inbox(sid, sid).client_message_id == sid
        assert out_ids(store, sid) == [sid]
        assert store.get_and_delete_request_correlation(sid, sid).reply_terminator_id == sid
        assert store.get_sessions_count(False, user_id=sid) == 1


# --------------------------------------------------------------------- bad input ----

BIG = "x" * 1001
BIG_UTF8 = "\u00e9" * 600  # 600 characters, 1200 bytes
BIG_BYTES = b"\x00" * 1001

# (method, args, kwargs, error, argument named in the message)
BAD_CALLS: list[tuple[str, tuple, dict, type[Exception], str]] = [
    ("register_session_at_this_node", (5, "u", "c", "l", "a", "v"), {}, TypeError, "session_id"),
    ("register_session_at_this_node", ("", "u", "c", "l", "a", "v"), {}, ValueError, "session_id"),
    ("register_session_at_this_node", ("x" * 1000, "u", "c", "l", "a", "v"), {}, ValueError, "session_id"),
    ("register_session_at_this_node", ("s1", None, "c", "l", "a", "v"), {}, TypeError, "user_id"),
    ("register_session_at_this_node", ("s1", "", "c", "l", "a", "v"), {}, ValueError, "user_id"),
    ("register_session_at_this_node", ("s1", "u1", 7, "l", "a", "v"), {}, TypeError, "connection_id"),
    ("register_session_at_this_node", ("s1", "u1", "", "l", "a", "v"), {}, ValueError, "connection_id"),
    ("register_session_at_this_node", ("s1", "u1", "c", 1, "a", "v"), {}, TypeError, "client_lib_and_versions"),
    ("register_session_at_this_node", ("s1", "u1", "c", "l", b"a", "v"), {}, TypeError, "app_name"),
    ("register_session_at_this_node", ("s1", "u1", "c", "l", "a", 1.0), {}, TypeError, "app_version"),
    ("register_session_at_this_node", ("s1", "u1", "c", "l", "a", BIG), {}, ValueError, "app_version"),
    ("get_current_registered_node_for_session", (7,), {}, TypeError, "session_id"),
    ("get_current_registered_node_for_session", ("",), {}, ValueError, "session_id"),
    ("is_session_exists", (None,), {}, TypeError, "session_id"),
    ("is_session_exists", ("",), {}, ValueError, "session_id"),
    ("get_sessions", ("yes",), {}, TypeError, "only_active"),
    ("get_sessions", (1,), {}, TypeError, "only_active"),
    ("get_sessions", (True,), {"user_id": 5}, TypeError, "user_id"),
    ("get_sessions", (True,), {"user_id": ""}, ValueError, "user_id"),
    ("get_sessions", (True,), {"app_name": 5}, TypeError, "app_name"),
    ("get_sessions", (True,), {"app_version_at_or_above": 1.0}, TypeError, "app_version_at_or_above"),
    ("get_sessions_count", (None,), {}, TypeError, "only_active"),
    ("get_sessions_count", (False,), {"user_id": ["u1"]}, TypeError, "user_id"),
    ("get_sessions_count", (False,), {"app_name": b"app"}, TypeError, "app_name"),
    ("get_sessions_count", (False,), {"app_version_at_or_above": 2}, TypeError, "app_version_at_or_above"),
    ("deregister_session_from_this_node", (5, "c1"), {}, TypeError, "session_id"),
    ("deregister_session_from_this_node", ("s1", 5), {}, TypeError, "connection_id"),
    ("deregister_session_from_this_node", ("s1", ""), {}, ValueError, "connection_id"),
    ("close_session", (5,), {}, TypeError, "session_id"),
    ("close_session", ("",), {}, ValueError, "session_id"),
    ("notify_session_liveliness", ("s1",), {}, TypeError, "session_ids"),
    ("notify_session_liveliness", (None,), {}, TypeError, "session_ids"),
    ("notify_session_liveliness", (["s1", ""],), {}, ValueError, "session_ids"),
    ("notify_session_liveliness", (["s1", 5],), {}, TypeError, "session_ids"),
    ("timeout_sessions", (True,), {}, TypeError, "not_live_since_timestamp"),
    ("timeout_sessions", ("1700000000000",), {}, TypeError, "not_live_since_timestamp"),
    ("timeout_sessions", (None,), {}, TypeError, "not_live_since_timestamp"),
    ("timeout_sessions", (1.7e12,), {}, TypeError, "not_live_since_timestamp"),
    ("timeout_sessions", (-1,), {}, ValueError, "not_live_since_timestamp"),
    ("store_message_id_in_inbox", (5, "m9"), {}, TypeError, "session_id"),
    ("store_message_id_in_inbox", ("s1", ""), {}, ValueError, "client_message_id"),
    ("store_message_id_in_inbox", ("s1", 9), {}, TypeError, "client_message_id"),
    ("store_message_id_in_inbox", ("s1", "m" * 300), {}, ValueError, "client_message_id"),
    ("update_message_in_inbox", ("s1", "m1", 5, None), {}, TypeError, "message_json"),
    ("update_message_in_inbox", ("s1", "m1", None, "text"), {}, TypeError, "message_binary"),
    ("update_message_in_inbox", ("s1", "m1", BIG, None), {}, ValueError, "message_json"),
    ("update_message_in_inbox", ("s1", "m1", BIG_UTF8, None), {}, ValueError, "message_json"),
    ("update_message_in_inbox", ("s1", "m1", None, BIG_BYTES), {}, ValueError, "message_binary"),
    ("update_message_in_inbox", ("s1", "", "{}", None), {}, ValueError, "client_message_id"),
    ("get_message_from_inbox", ("s1", 5), {}, TypeError, "client_message_id"),
    ("get_message_from_inbox", ("", "m1"), {}, ValueError, "session_id"),
    ("delete_message_ids_from_inbox", ("s1", "m1"), {}, TypeError, "client_message_ids"),
    ("delete_message_ids_from_inbox", ("s1", None), {}, TypeError, "client_message_ids"),
    ("delete_message_ids_from_inbox", ("s1", ["m1", 5]), {}, TypeError, "client_message_ids"),
    ("delete_message_ids_from_inbox", ("s1", ["m1", ""]), {}, ValueError, "client_message_ids"),
    ("delete_message_ids_from_inbox", (True, ["m1"]), {}, TypeError, "session_id"),
    ("delete_message_ids_from_inbox", ("s1", ["m1"] + [f"x{i}" for i in range(10_000)]), {}, ValueError,
     "client_message_ids"),
    ("store_message_in_outbox", (5, "o9", None, None, "SEND", None, "{}", None, None), {}, TypeError, "session_id"),
    ("store_message_in_outbox", ("s1", "", None, None, "SEND", None, "{}", None, None), {}, ValueError,
     "server_message_id"),
    ("store_message_in_outbox", ("s1", 9, None, None, "SEND", None, "{}", None, None), {}, TypeError,
     "server_message_id"),
    ("store_message_in_outbox", ("s1", "o9", 5, None, "SEND", None, "{}", None, None), {}, TypeError,
     "client_message_id"),
    ("store_message_in_outbox", ("s1", "o9", "", None, "SEND", None, "{}", None, None), {}, ValueError,
     "client_message_id"),
    ("store_message_in_outbox", ("s1", "o9", None, 5, "SEND", None, "{}", None, None), {}, TypeError, "trace_id"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "BOGUS", None, "{}", None, None), {}, ValueError, "type"),
    ("store_message_in_outbox", ("s1", "o9", None, None, 5, None, "{}", None, None), {}, TypeError, "type"),
    ("store_message_in_outbox", ("s1", "o9", None, None, None, None, "{}", None, None), {}, TypeError, "type"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", True, "{}", None, None), {}, TypeError,
     "request_timestamp"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", "123", "{}", None, None), {}, TypeError,
     "request_timestamp"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", -5, "{}", None, None), {}, ValueError,
     "request_timestamp"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", None, None, None, None), {}, TypeError, "envelope"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", None, BIG, None, None), {}, ValueError, "envelope"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", None, "{}", 5, None), {}, TypeError, "message_json"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", None, "{}", BIG_UTF8, None), {}, ValueError,
     "message_json"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", None, "{}", None, "bin"), {}, TypeError,
     "message_binary"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", None, "{}", None, BIG_BYTES), {}, ValueError,
     "message_binary"),
    ("get_messages_from_outbox", ("s1", "10"), {}, TypeError, "max_number_of_messages"),
    ("get_messages_from_outbox", ("s1", True), {}, TypeError, "max_number_of_messages"),
    ("get_messages_from_outbox", ("s1", None), {}, TypeError, "max_number_of_messages"),
    ("get_messages_from_outbox", ("s1", -1), {}, ValueError, "max_number_of_messages"),
    ("get_messages_from_outbox", (5, 10), {}, TypeError, "session_id"),
    ("outbox_messages_attempted_delivery", ("s1", "o2"), {}, TypeError, "server_message_ids"),
    ("outbox_messages_attempted_delivery", ("s1", ["o2", 5]), {}, TypeError, "server_message_ids"),
    ("outbox_messages_attempted_delivery", ("s1", ["o2", ""]), {}, ValueError, "server_message_ids"),
    ("outbox_messages_attempted_delivery", (5, ["o2"]), {}, TypeError, "session_id"),
    ("outbox_messages_unmark_attempted_delivery", (5,), {}, TypeError, "session_id"),
    ("outbox_messages_unmark_attempted_delivery", ("",), {}, ValueError, "session_id"),
    ("outbox_messages_complete", ("s1", "o2"), {}, TypeError, "server_message_ids"),
    ("outbox_messages_complete", ("s1", ["o2", ""]), {}, ValueError, "server_message_ids"),
    ("outbox_messages_complete", ("", ["o2"]), {}, ValueError, "session_id"),
    ("outbox_messages_dead_letter_queue", ("s1", "o2"), {}, TypeError, "server_message_ids"),
    ("outbox_messages_dead_letter_queue", ("s1", [None]), {}, TypeError, "server_message_ids"),
    ("store_request_correlation", (5, "r9", 1, "T", None, None), {}, TypeError, "session_id"),
    ("store_request_correlation", ("s1", "", 1, "T", None, None), {}, ValueError, "server_message_id"),
    ("store_request_correlation", ("s1", "r9", True, "T", None, None), {}, TypeError, "request_timestamp"),
    ("store_request_correlation", ("s1", "r9", "1", "T", None, None), {}, TypeError, "request_timestamp"),
    ("store_request_correlation", ("s1", "r9", None, "T", None, None), {}, TypeError, "request_timestamp"),
    ("store_request_correlation", ("s1", "r9", 1, "", None, None), {}, ValueError, "reply_terminator_id"),
    ("store_request_correlation", ("s1", "r9", 1, 5, None, None), {}, TypeError, "reply_terminator_id"),
    ("store_request_correlation", ("s1", "r9", 1, "T", 5, None), {}, TypeError, "correlation_string"),
    ("store_request_correlation", ("s1", "r9", 1, "T", BIG, None), {}, ValueError, "correlation_string"),
    ("store_request_correlation", ("s1", "r9", 1, "T", None, "bin"), {}, TypeError, "correlation_binary"),
    ("store_request_correlation", ("s1", "r9", 1, "T", None, BIG_BYTES), {}, ValueError, "correlation_binary"),
    ("get_and_delete_request_correlation", ("s1", 5), {}, TypeError, "server_message_id"),
    ("get_and_delete_request_correlation", ("s1", ""), {}, ValueError, "server_message_id"),
    ("get_and_delete_request_correlation", (None, "r1"), {}, TypeError, "session_id"),
]

API_METHODS = {
    "register_session_at_this_node", "get_current_registered_node_for_session", "is_session_exists",
    "get_sessions", "get_sessions_count", "deregister_session_from_this_node", "close_session",
    "notify_session_liveliness", "timeout_sessions", "scavenge_session_remnants", "store_message_id_in_inbox",
    "update_message_in_inbox", "get_message_from_inbox", "delete_message_ids_from_inbox",
    "store_message_in_outbox", "get_messages_from_outbox", "outbox_messages_attempted_delivery",
    "outbox_messages_unmark_attempted_delivery", "outbox_messages_complete", "outbox_messages_dead_letter_queue",
    "store_request_correlation", "get_and_delete_request_correlation",
}


def test_bad_call_table_covers_every_method_with_arguments():
    assert {m for m, *_ in BAD_CALLS} == API_METHODS - {"scavenge_session_remnants"}
    assert all(callable(getattr(ClusterStoreAndForward, m, None)) for m in API_METHODS)


def _populate(store: ClusterStoreAndForward) -> None:
    register(store, "s1", "u1", "c1")
    register(store, "s2", "u2", "c2")
    store.store_message_id_in_inbox("s1", "m1")
    store.update_message_in_inbox("s1", "m1", "{}", b"r")
    store.store_message_id_in_inbox("s1", "m2")
    put_out(store, "s1", "o1")
    put_out(store, "s1", "o2")
    put_out(store, "s1", "o3")
    store.outbox_messages_attempted_delivery("s1", ["o1"])
    store.store_request_correlation("s1", "r1", 1, "T", "c", b"b")


def _observable(store: ClusterStoreAndForward) -> tuple:
    """Everything the API shows without changing anything, plus how many events each log
    partition holds (not its end offset: Kafka's transaction markers move that on their own)."""
    return (
        sorted(store.get_sessions(False), key=lambda s: s.session_id),
        [store.get_current_registered_node_for_session(s) for s in ("s1", "s2", "s9")],
        [store.is_session_exists(s) for s in ("s1", "s2", "s9")],
        [store.get_message_from_inbox("s1", m) for m in ("m1", "m2", "m9")],
        store.get_messages_from_outbox("s1", 100),
        {p: sum(1 for _ in store.node.log.read(p)) for p in store.node.owned()},
    )


@pytest.mark.parametrize(("method", "args", "kwargs", "error", "argument"), BAD_CALLS,
                         ids=[f"{m}-{a}-{i}" for i, (m, _, _, _, a) in enumerate(BAD_CALLS)])
def test_bad_input_is_refused_naming_the_argument_and_changes_nothing(
        store_factory, clock, method, args, kwargs, error, argument):
    store = store_factory(clock=clock, limits=Limits(max_message_bytes=1000))
    _populate(store)
    before = _observable(store)
    clock.advance(1_000)
    with pytest.raises(error) as exc:
        getattr(store, method)(*args, **kwargs)
    assert argument in str(exc.value), f"the message {str(exc.value)!r} does not name {argument!r}"
    assert _observable(store) == before
    # and the store still works
    store.store_message_id_in_inbox("s1", "after")
    assert store.get_message_from_inbox("s1", "after") is not None
    assert store.get_and_delete_request_correlation("s1", "r1") == RequestCorrelation("s1", "r1", 1, "T", "c", b"b")
    store.outbox_messages_unmark_attempted_delivery("s1")
    msgs = store.get_messages_from_outbox("s1", 100)
    assert [(m.server_message_id, m.delivery_count) for m in msgs] == [("o1", 1), ("o2", 0), ("o3", 0)]
    assert [s.liveliness_timestamp for s in store.get_sessions(False)] == [clock() - 1_000] * 2


def _refused_and_unchanged(store_factory, clock, method, args, argument) -> None:
    store = store_factory(clock=clock, limits=Limits(max_message_bytes=1000))
    _populate(store)
    before = _observable(store)
    with pytest.raises((TypeError, ValueError)) as exc:
        getattr(store, method)(*args)
    assert argument in str(exc.value), f"the message {str(exc.value)!r} does not name {argument!r}"
    assert _observable(store) == before
    store.store_message_id_in_inbox("s1", "after")


LONE_SURROGATE = "ok\ud800"  # a str Python allows but UTF-8 cannot encode


@pytest.mark.parametrize(("method", "args", "argument"), [
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", None, LONE_SURROGATE, None, None), "envelope"),
    ("store_message_in_outbox", ("s1", "o9", None, LONE_SURROGATE, "SEND", None, "{}", None, None), "trace_id"),
    ("update_message_in_inbox", ("s1", "m1", LONE_SURROGATE, None), "message_json"),
    ("register_session_at_this_node", ("s3", "u1", "c1", "lib", LONE_SURROGATE, "1"), "app_name"),
    ("store_request_correlation", ("s1", "r9", 1, "T", LONE_SURROGATE, None), "correlation_string"),
    ("get_sessions", (False, None, None, LONE_SURROGATE), "app_version_at_or_above"),
], ids=["envelope", "trace_id", "message_json", "app_name", "correlation_string", "app_version_at_or_above"])
def test_text_that_is_not_encodable_is_refused_naming_the_argument(store_factory, clock, method, args, argument):
    """Free text with a lone surrogate (a str Python allows, UTF-8 cannot encode) is bad
    input like any other: refused by the argument check, naming the argument."""
    _refused_and_unchanged(store_factory, clock, method, args, argument)


@pytest.mark.parametrize(("method", "args", "argument"), [
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", 2**64, "{}", None, None), "request_timestamp"),
    ("store_message_in_outbox", ("s1", "o9", None, None, "SEND", 2**63, "{}", None, None), "request_timestamp"),
    ("store_request_correlation", ("s1", "r9", 2**64, "T", None, None), "request_timestamp"),
    ("store_request_correlation", ("s1", "r9", 2**63, "T", None, None), "request_timestamp"),
    ("timeout_sessions", (2**63,), "not_live_since_timestamp"),
], ids=["outbox-2^64", "outbox-2^63", "correlation-2^64", "correlation-2^63", "timeout-2^63"])
def test_timestamp_beyond_64_bits_is_refused_naming_the_argument(store_factory, clock, method, args, argument):
    """Timestamps are Java longs: one that does not fit is refused by the argument check
    (not by the event encoder, with a message that names nothing)."""
    _refused_and_unchanged(store_factory, clock, method, args, argument)


def test_largest_64_bit_timestamp_is_accepted(store):
    register(store, "s1")
    put_out(store, "s1", "o1", request_ts=2**63 - 1)
    assert store.get_messages_from_outbox("s1", 2**63 - 1)[0].request_timestamp == 2**63 - 1
    store.store_request_correlation("s1", "r1", 2**63 - 1, "T", None, None)
    assert store.get_and_delete_request_correlation("s1", "r1").request_timestamp == 2**63 - 1
    assert store.get_messages_from_outbox("s1", 2**70)[0].server_message_id == "o1"  # "all of them"
    assert store.timeout_sessions(2**63 - 1) == ["s1"]


def test_payload_at_the_limit_is_accepted(store_factory):
    store = store_factory(limits=Limits(max_message_bytes=1000))
    register(store, "s1")
    put_out(store, "s1", "o1", envelope="e" * 1000, json="\u00e9" * 500, binary=b"\xff" * 1000)
    [m] = store.get_messages_from_outbox("s1", 1)
    assert (len(m.envelope), len(m.message_text), len(m.message_binary)) == (1000, 500, 1000)


VALID_CALLS: dict[str, tuple] = {
    "register_session_at_this_node": ("s1", "u1", "c1", "lib", "app", "1"),
    "get_current_registered_node_for_session": ("s1",),
    "is_session_exists": ("s1",),
    "get_sessions": (False,),
    "get_sessions_count": (False,),
    "deregister_session_from_this_node": ("s1", "c1"),
    "close_session": ("s1",),
    "notify_session_liveliness": (["s1"],),
    "timeout_sessions": (1,),
    "scavenge_session_remnants": (),
    "store_message_id_in_inbox": ("s1", "m1"),
    "update_message_in_inbox": ("s1", "m1", "{}", None),
    "get_message_from_inbox": ("s1", "m1"),
    "delete_message_ids_from_inbox": ("s1", ["m1"]),
    "store_message_in_outbox": ("s1", "o1", None, None, "SEND", None, "{}", None, None),
    "get_messages_from_outbox": ("s1", 10),
    "outbox_messages_attempted_delivery": ("s1", ["o1"]),
    "outbox_messages_unmark_attempted_delivery": ("s1",),
    "outbox_messages_complete": ("s1", ["o1"]),
    "outbox_messages_dead_letter_queue": ("s1", ["o1"]),
    "store_request_correlation": ("s1", "r1", 1, "T", None, None),
    "get_and_delete_request_correlation": ("s1", "r1"),
}


def test_valid_call_table_covers_every_method():
    assert set(VALID_CALLS) == API_METHODS


@pytest.mark.parametrize("method", sorted(VALID_CALLS))
def test_not_booted_or_closed_store_raises_csaf_error(store_factory, method):
    fresh = store_factory("node-a", boot=False)
    with pytest.raises(CsafError):
        getattr(fresh, method)(*VALID_CALLS[method])
    fresh.close()
    with pytest.raises(CsafError):
        getattr(fresh, method)(*VALID_CALLS[method])
    with pytest.raises(CsafError):
        fresh.boot()  # a closed store stays closed
    used = store_factory("node-a")
    register(used, "s1")
    used.close()
    with pytest.raises(CsafError):
        getattr(used, method)(*VALID_CALLS[method])
    # nothing above touched the data
    again = store_factory("node-a")
    assert [s.session_id for s in again.get_sessions(False)] == ["s1"]


# --------------------------------------------------------------------- persistence ----

def test_everything_survives_close_and_reopen(store_factory, clock):
    store = store_factory("node-a", clock=clock)
    t0 = clock()
    register(store, "s1", "u1", "c1", app="web", version="1.0")
    register(store, "s2", "u2", "c2", app="mobile", version="2.0")
    store.deregister_session_from_this_node("s2", "c2")
    store.store_message_id_in_inbox("s1", "m1")
    store.update_message_in_inbox("s1", "m1", NASTY_TEXT, NASTY_BYTES)
    store.store_message_id_in_inbox("s1", "m2")
    for smid in ("o3", "o1", "o2", "o4"):
        put_out(store, "s1", smid, json=smid, binary=NASTY_BYTES)
    store.outbox_messages_attempted_delivery("s1", ["o1"])
    store.outbox_messages_dead_letter_queue("s1", ["o2"])
    store.store_request_correlation("s1", "r1", 42, "T", NASTY_TEXT, NASTY_BYTES)
    store.store_request_correlation("s2", "r1", 43, "T", None, None)
    store.store_request_correlation("s1", "taken", 1, "T", None, None)
    store.get_and_delete_request_correlation("s1", "taken")
    store.store_message_id_in_inbox("s1", "gone")
    store.delete_message_ids_from_inbox("s1", ["gone"])
    sessions = store.get_sessions(False)
    inbox = store.get_message_from_inbox("s1", "m1")
    outbox = store.get_messages_from_outbox("s1", 10)
    store.close()

    clock.advance(60_000)
    again = store_factory("node-a", clock=clock)
    assert again.get_sessions(False) == sessions
    assert again.get_sessions_count(True) == 1
    assert again.get_current_registered_node_for_session("s1") == CurrentNode("node-a", "c1")
    assert again.get_current_registered_node_for_session("s2") is None
    assert again.is_session_exists("s2")
    assert again.get_message_from_inbox("s1", "m1") == inbox
    assert again.get_message_from_inbox("s1", "gone") is None
    with pytest.raises(MessageIdAlreadyExistsError):
        again.store_message_id_in_inbox("s1", "m2")
    assert again.get_messages_from_outbox("s1", 10) == outbox
    assert [m.server_message_id for m in outbox] == ["o3", "o4"]
    with pytest.raises(MessageIdAlreadyExistsError):
        put_out(again, "s1", "o2")
    put_out(again, "s1", "o0")  # new messages go after the old ones
    again.outbox_messages_unmark_attempted_delivery("s1")
    msgs = again.get_messages_from_outbox("s1", 10)
    assert [(m.server_message_id, m.delivery_count) for m in msgs] == [("o3", 0), ("o1", 1), ("o4", 0), ("o0", 0)]
    assert again.get_and_delete_request_correlation("s1", "taken") is None
    assert again.get_and_delete_request_correlation("s1", "r1") == RequestCorrelation(
        "s1", "r1", 42, "T", NASTY_TEXT, NASTY_BYTES)
    assert again.get_and_delete_request_correlation("s2", "r1").request_timestamp == 43
    # re-register after restart keeps the original created timestamp
    assert register(again, "s1", "u1", "c5") == t0
    assert again.timeout_sessions(t0 + 1) == ["s2"]


def test_the_outbox_messages_fields_are_the_events() -> None:
    """The command that stores an outbox message and the DTO that returns one are filled from
    the event by field name (`csaf_events.core.commands`): each of their fields is one of the event's."""
    from dataclasses import fields

    from csaf_events.core.commands import StoreOutbox
    from csaf_events.core.dtos import StoredOutMessage
    from csaf_events.core.events import OutboxState

    event = {f.name for f in fields(OutboxState)}
    assert {f.name for f in fields(StoreOutbox)} <= event
    assert {f.name for f in fields(StoredOutMessage)} <= event
