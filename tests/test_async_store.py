"""`AsyncStore`, the store's asyncio face, on every backend: the same results and errors as
the store's own methods, bad arguments refused before anything is written, calls counted in
the store's metrics, and (Kafka) writes for the partitions the node decides queued on their
writers without a thread each: hundreds in flight on a pool of one thread."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from csaf_events import MessageIdAlreadyExistsError, MessageType
from csaf_events.async_store import AsyncStore
from csaf_events.core.session_calls import SessionCalls
from csaf_events.store import ClusterStoreAndForward

S = SessionCalls


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def _outbox_args(sid: str, smid: str) -> tuple[Any, ...]:
    return (sid, smid, None, f"trace-{smid}", MessageType.SEND, None, '{"t":"SEND"}', f'{{"n":"{smid}"}}', None)


def test_calls_give_what_the_store_gives(store: ClusterStoreAndForward) -> None:
    face = AsyncStore(store, threads=2)

    async def scenario() -> None:
        created = await face.call(S.register_session_at_this_node, "s1", "u1", "c1", "lib,v1", "app", "1.0")
        assert created == store.get_sessions(False, user_id="u1")[0].created_timestamp
        current = await face.call(S.store_message_in_outbox, *_outbox_args("s1", "m1"))
        assert current is not None and (current.node_name, current.connection_id) == (store.node_name, "c1")
        assert await face.call(S.store_message_in_outbox, *_outbox_args("nobody", "m1")) is None
        with pytest.raises(MessageIdAlreadyExistsError):
            await face.call(S.store_message_in_outbox, *_outbox_args("s1", "m1"))
        await face.call(S.store_message_in_outbox, *_outbox_args("s1", "m2"))
        fetched = await face.call(S.get_messages_from_outbox, "s1", 10)
        assert [m.server_message_id for m in fetched] == ["m1", "m2"]
        assert await face.call(S.outbox_messages_attempted_delivery, "s1", ["m1"]) is None
        assert [m.server_message_id for m in store.get_messages_from_outbox("s1", 10)] == ["m2"]
        assert await face.call(S.outbox_messages_complete, "s1", []) is None  # nothing to decide
        await face.call(S.outbox_messages_complete, "s1", ["m1", "m2"])
        assert store.get_messages_from_outbox("s1", 10) == []
        await face.call(S.store_message_id_in_inbox, "s1", "c-1")
        with pytest.raises(MessageIdAlreadyExistsError):
            await face.call(S.store_message_id_in_inbox, "s1", "c-1")
        assert await face.run(store.is_session_exists, "s1") is True
        await face.call(S.close_session, "s1")
        assert not store.is_session_exists("s1")
    try:
        _run(scenario())
    finally:
        face.close()


def test_bad_arguments_are_refused_before_anything_is_written(store: ClusterStoreAndForward) -> None:
    face = AsyncStore(store, threads=1)
    store.register_session_at_this_node("s1", "u1", "c1", "lib,v1", "app", "1.0")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="server_message_id"):
            await face.call(S.store_message_in_outbox, *_outbox_args("s1", ""))
        with pytest.raises(TypeError, match="server_message_ids"):
            await face.call(S.outbox_messages_complete, "s1", 7)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="session_id"):
            await face.call(S.close_session, "")
    try:
        _run(scenario())
    finally:
        face.close()
    assert store.is_session_exists("s1") and store.get_messages_from_outbox("s1", 10) == []


def test_calls_are_counted_in_the_store_s_metrics(store_factory) -> None:
    store = store_factory(metrics=CollectorRegistry())
    face = AsyncStore(store, threads=1)
    store.register_session_at_this_node("s1", "u1", "c1", "lib,v1", "app", "1.0")

    async def scenario() -> None:
        for i in range(5):
            await face.call(S.store_message_in_outbox, *_outbox_args("s1", f"m{i}"))
        with pytest.raises(MessageIdAlreadyExistsError):
            await face.call(S.store_message_in_outbox, *_outbox_args("s1", "m0"))
    try:
        _run(scenario())
    finally:
        face.close()
    assert store.metrics is not None
    counted = store.metrics.calls()  # type: ignore[attr-defined]
    assert counted[("store_message_in_outbox", "local")] == 5
    assert counted[("store_message_in_outbox", "MessageIdAlreadyExistsError")] == 1


@pytest.mark.parametrize("backend", [pytest.param("kafka", marks=pytest.mark.kafka)])
def test_kafka_writes_are_queued_on_their_writers_hundreds_in_flight_on_one_thread(store_factory,
                                                                                    monkeypatch) -> None:
    """One thread in the pool, 300 writes at once: none runs on it (nor through `Node.execute`),
    all are committed, and each caller gets its own answer; then a read, on the loop too.
    (Embedded calls run on the event loop: the tests above.)"""
    store = store_factory()
    for i in range(30):
        store.register_session_at_this_node(f"s{i}", "u1", f"c{i}", "lib,v1", "app", "1.0")
    executed: list[Any] = []
    real_execute = store.node.execute

    def execute(partition: int, command: Any) -> Any:
        executed.append(command)
        return real_execute(partition, command)
    monkeypatch.setattr(store.node, "execute", execute)
    face = AsyncStore(store, threads=1)

    async def scenario() -> tuple[list[Any], list[Any]]:
        answers = await asyncio.gather(*(face.call(S.store_message_in_outbox, *_outbox_args(f"s{i % 30}", f"m{i}"))
                                         for i in range(300)))
        # every commit answered is applied: a read is answered on the loop too
        return answers, await face.call(S.get_messages_from_outbox, "s0", 20)
    try:
        answers, read = _run(scenario())
    finally:
        face.close()
    assert executed == []
    assert [m.server_message_id for m in read] == [f"m{j}" for j in range(0, 300, 30)]
    assert all(a is not None and a.node_name == store.node_name for a in answers)
    for i in range(30):
        stored = store.get_messages_from_outbox(f"s{i}", 20)
        assert [m.server_message_id for m in stored] == [f"m{j}" for j in range(i, 300, 30)]
