"""Ownership and the node transaction under failures (real broker, nodes in this process).

Failures are injected where the client library would raise them (a restore that fails, a
transaction the broker aborts); what must hold is what a caller and the log show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from confluent_kafka import KafkaError, KafkaException
from test_fencing import events_of

from csaf_events import DataAccessError, open_store
from csaf_events.core import commands as cmd
from csaf_events.core.errors import CsafError
from csaf_events.core.events import header
from csaf_events.core.partitioning import partition_for
from csaf_events.kafka.log import KafkaLog
from csaf_events.kafka.topics import TopicState, durability_differences
from csaf_events.topics import load_topics

pytestmark = pytest.mark.kafka

PARTITIONS = 2


def _open(name: str, tmp_path: Path, bootstrap: str, namespace: str, **kw: Any):
    return open_store(name, tmp_path / name, bootstrap_servers=bootstrap, namespace=namespace,
                      partitions=PARTITIONS, request_timeout=kw.pop("request_timeout", 10.0), **kw)


def _session_in(partition: int, prefix: str) -> str:
    return next(f"{prefix}-{i}" for i in range(10_000) if partition_for(f"{prefix}-{i}", PARTITIONS) == partition)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_takeover_whose_restore_fails_is_retried_until_the_partition_is_served(
        kafka_bootstrap: str, kafka_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = {"left": 3}
    restore = KafkaLog.restore

    def flaky_restore(self: KafkaLog, partition: int) -> int:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise DataAccessError("injected: the log is not readable yet", may_have_written=False)
        return restore(self, partition)

    monkeypatch.setattr(KafkaLog, "restore", flaky_restore)
    with _open("a", tmp_path, kafka_bootstrap, kafka_namespace) as store:
        assert store.node.owned() == list(range(PARTITIONS))
        takeovers = store.node.log.ownership.takeovers
        assert sum(t.attempts for t in takeovers.values()) == PARTITIONS + 3
        store.register_session_at_this_node("s1", "u", "c", "lib", "app", "1")
        assert store.is_session_exists("s1")


class _Proxy:
    """A node's producer whose `send_offsets_to_transaction` goes through `fault` first."""

    def __init__(self, producer: Any, fault: Any) -> None:
        self.producer = producer
        self._fault = fault

    def send_offsets_to_transaction(self, *args: Any) -> None:
        if self._fault.strike(self):
            return
        self.producer.send_offsets_to_transaction(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)


class _Fault:
    """A fault in the next `send_offsets_to_transaction` of any of a lane's producers."""

    def __init__(self) -> None:
        self.struck = 0
        self.hit: _Proxy | None = None  # the producer it struck

    def install(self, txn: Any) -> None:
        for slot in txn._slots:
            slot.producer = _Proxy(slot.producer, self)

    def strike(self, proxy: _Proxy) -> bool:
        """Fail (raise, or return True to skip the real call) the first time only."""
        if self.struck:
            return False
        self.struck += 1
        self.hit = proxy
        return self.act()

    def act(self) -> bool:
        raise NotImplementedError


class _AbortOnce(_Fault):
    """The next call fails the way the broker fails it on a rebalance (abortable)."""

    def act(self) -> bool:
        raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "injected", txn_requires_abort=True))


class _HangOnce(_Fault):
    """The next call blocks past its timeout, the way librdkafka's does when the group
    coordinator's broker died."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def act(self) -> bool:
        self.release.wait(120)
        return True


class _Pair(NamedTuple):
    """Two nodes with one partition each: the owner of `partition` and a node that routes to it."""

    owner: Any
    caller: Any
    partition: int
    session_id: str  # registered, in `partition`


@pytest.fixture
def pair(kafka_bootstrap: str, kafka_namespace: str, tmp_path: Path) -> Iterator[_Pair]:
    with _open("owner", tmp_path, kafka_bootstrap, kafka_namespace) as owner, \
            _open("caller", tmp_path, kafka_bootstrap, kafka_namespace) as caller:
        _wait(lambda: len(owner.node.owned()) == 1 and len(caller.node.owned()) == 1, 60, "one partition each")
        p = owner.node.owned()[0]
        sid = _session_in(p, "routed")
        owner.register_session_at_this_node(sid, "u", "c", "lib", "app", "1")
        yield _Pair(owner, caller, p, sid)


def test_an_aborted_transaction_decides_its_routed_command_again_exactly_once(
        pair: _Pair, kafka_bootstrap: str, kafka_namespace: str) -> None:
    owner, caller, p, sid = pair
    txn = owner.node.log.transaction_for(p)
    failing = _AbortOnce()
    failing.install(txn)
    before = owner.node.log.ownership.takeovers[p].finished_at

    caller.store_message_id_in_inbox(sid, "m1")  # routed to the owner; its first transaction aborts

    assert failing.struck == 1
    assert owner.node.log.ownership.takeovers[p].finished_at > before, "the partition was not retaken"
    assert owner.get_message_from_inbox(sid, "m1") is not None
    with pytest.raises(CsafError, match="already"):
        caller.store_message_id_in_inbox(sid, "m1")
    events = events_of(kafka_bootstrap, f"{kafka_namespace}.events", p)
    stored = [e for e in events if header(e.headers, "type") == "InboxStored" and b'"m1"' in e.key]
    assert len(stored) == 1


def test_a_transaction_whose_offsets_call_hangs_is_left_uncommitted_and_a_new_producer_goes_on(
        kafka_bootstrap: str, kafka_namespace: str, tmp_path: Path) -> None:
    with _open("a", tmp_path, kafka_bootstrap, kafka_namespace, request_timeout=3.0) as store:
        p = 0
        sid = _session_in(p, "hang")
        store.register_session_at_this_node(sid, "u", "c", "lib", "app", "1")
        txn = store.node.log.transaction_for(p)
        hanging = _HangOnce()
        hanging.install(txn)
        try:
            with pytest.raises(DataAccessError, match="did not take the command offsets") as failed:
                store.store_message_id_in_inbox(sid, "m1")
            assert failed.value.may_have_written is False
            assert hanging.struck == 1
            assert hanging.hit is not None
            assert all(slot.producer is not hanging.hit for slot in txn._slots), "the blocked producer was kept"

            _wait(lambda: p in store.node.owned(), 30, "the partition retaken")
            store.store_message_id_in_inbox(sid, "m2")  # a new producer commits
            assert store.get_message_from_inbox(sid, "m1") is None  # the left transaction wrote nothing
            store.store_message_id_in_inbox(sid, "m1")  # so the id is free, and taken once now
            with pytest.raises(CsafError, match="already"):
                store.store_message_id_in_inbox(sid, "m1")
        finally:
            hanging.release.set()
        events = events_of(kafka_bootstrap, f"{kafka_namespace}.events", p)
        stored = [e.key for e in events if header(e.headers, "type") == "InboxStored"]
        assert sum(b'"m1"' in k for k in stored) == 1 and sum(b'"m2"' in k for k in stored) == 1


def test_a_routed_command_is_not_executed_after_its_callers_deadline(pair: _Pair) -> None:
    owner, caller, p, sid = pair
    # a caller that gives up at once: the command reaches the owner after its deadline
    with pytest.raises(DataAccessError) as refused:
        caller.node.router.send(p, cmd.StoreInbox(sid, "too-late"), 0.0)
    assert "not executed" in str(refused.value)
    assert refused.value.may_have_written is False
    assert owner.get_message_from_inbox(sid, "too-late") is None
    caller.store_message_id_in_inbox(sid, "in-time")  # the owner still decides what is in time
    assert owner.get_message_from_inbox(sid, "in-time") is not None


def test_boot_without_a_reachable_broker_raises_a_data_access_error(tmp_path: Path) -> None:
    store = open_store("lonely", tmp_path, bootstrap_servers="127.0.0.1:1", request_timeout=2.0)
    with pytest.raises(DataAccessError) as failed:
        store.boot()
    assert failed.value.may_have_written is False
    with pytest.raises(CsafError, match="boot"):
        store.register_session_at_this_node("s", "u", "c", "lib", "app", "1")


@pytest.mark.parametrize(("have", "brokers", "expected"), [
    ({"min.insync.replicas": "1"}, 3, ["min.insync.replicas=1, topics.yaml asks 2 (`csaf topics apply` sets it)"]),
    ({"min.insync.replicas": "2"}, 3, []),
    ({"min.insync.replicas": "1"}, 1, []),  # one broker: capped at the replication factor
])
def test_every_topic_less_durable_than_declared_is_named(have: dict, brokers: int, expected: list) -> None:
    topics = load_topics(None, "ns")
    for spec in (topics.events, topics.commands, topics.sessions, topics.replies):
        state = TopicState(spec.name, True, spec.partitions, min(3, brokers), have)
        diffs = durability_differences(spec, state, brokers)
        assert [d.split(" has ", 1)[1] for d in diffs] == expected
        assert all(spec.name in d for d in diffs)
