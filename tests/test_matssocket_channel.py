"""The node-to-node channel (csaf_events.channel).

The contract tests take a `channels` factory, parametrized over the implementations in
`IMPLEMENTATIONS` (in process; Kafka on a real broker, one end per node name on a fresh
namespace). Delivery may be asynchronous, so the tests wait for what they expect
(`eventually`) and, for what must not arrive, send a marker behind it and wait for that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from csaf_events.channel import InProcessChannel, InProcessHub, NodeChannel

OpenChannels = Callable[..., list[NodeChannel]]


def _in_process(request: pytest.FixtureRequest) -> OpenChannels:
    hub = InProcessHub()
    return lambda *names: [hub.channel(name) for name in names]


def _kafka(request: pytest.FixtureRequest) -> OpenChannels:
    """One `KafkaChannel` per name on a real broker, in a namespace of the test's own (each
    node's topic created first, as a store's boot does)."""
    from brokers import unique_namespace
    from confluent_kafka.admin import AdminClient
    from kafka_fixtures import delete_namespace_topics

    from csaf_events.kafka import topics as kafka_topics
    from csaf_events.kafka.channel import KafkaChannel
    from csaf_events.topics import load_topics

    bootstrap = request.getfixturevalue("kafka_bootstrap")
    topics = load_topics(None, unique_namespace("chan"))
    request.addfinalizer(lambda: delete_namespace_topics(bootstrap, topics.namespace))
    config = {"bootstrap.servers": bootstrap}

    def open_channels(*names: str) -> list[NodeChannel]:
        kafka_topics.ensure(AdminClient(config), [topics.node_topic(n) for n in names], 30.0)
        return [KafkaChannel(config, topics, n) for n in names]
    return open_channels


IMPLEMENTATIONS = {"in-process": _in_process, "kafka": _kafka}


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.kafka] if name == "kafka" else [])
                        for name in IMPLEMENTATIONS])
def channels(request: pytest.FixtureRequest) -> Iterator[OpenChannels]:
    opened: list[NodeChannel] = []
    factory = IMPLEMENTATIONS[request.param](request)

    def open_channels(*names: str) -> list[NodeChannel]:
        ends = factory(*names)
        opened.extend(ends)
        return ends
    yield open_channels
    for end in opened:
        end.close()


def collect(channel: NodeChannel) -> list[dict]:
    got: list[dict] = []
    channel.subscribe(got.append)
    return got


def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_send_reaches_the_named_node_only(channels: OpenChannels) -> None:
    a, b, c = channels("a", "b", "c")
    got_a, got_b, got_c = collect(a), collect(b), collect(c)
    assert isinstance(a, NodeChannel) and a.node_name == "a"
    a.send("b", {"k": "outbox", "sid": "s1"})
    a.send("a", {"k": "to-self"})
    a.send("nobody", {"k": "dropped"})
    a.send("c", {"k": "marker"})
    eventually(lambda: got_c == [{"k": "marker"}], "the marker on c")
    eventually(lambda: got_b == [{"k": "outbox", "sid": "s1"}], "the message on b")
    eventually(lambda: got_a == [{"k": "to-self"}], "the message to itself")


def test_broadcast_reaches_every_other_node(channels: OpenChannels) -> None:
    a, b, c = channels("a", "b", "c")
    got_a, got_b, got_c = collect(a), collect(b), collect(c)
    a.broadcast({"k": "pub", "topic": "t", "env": {"t": "PUB", "msg": [1, 2.5, None, True]}})
    expected = [{"k": "pub", "topic": "t", "env": {"t": "PUB", "msg": [1, 2.5, None, True]}}]
    eventually(lambda: got_b == expected and got_c == expected, "the broadcast on b and c")
    a.send("a", {"k": "marker"})
    eventually(lambda: got_a == [{"k": "marker"}], "only the marker on a")


def test_unsubscribe_and_close(channels: OpenChannels) -> None:
    a, b = channels("a", "b")
    got: list[dict] = []
    markers = collect(b)
    unsubscribe = b.subscribe(got.append)
    a.send("b", {"n": 1})
    eventually(lambda: got == [{"n": 1}], "the first message")
    unsubscribe()
    a.send("b", {"n": 2})
    eventually(lambda: len(markers) == 2, "the second message on the other handler")
    assert got == [{"n": 1}]
    b.close()
    a.send("b", {"n": 3})  # dropped: b is gone
    b.send("a", {"n": 4})  # a closed end sends nothing
    time.sleep(0.2)
    assert len(markers) == 2


def test_a_failing_handler_does_not_stop_the_others(channels: OpenChannels) -> None:
    a, b = channels("a", "b")

    def broken(message: dict) -> None:
        raise RuntimeError("broken handler")
    b.subscribe(broken)
    got = collect(b)
    a.send("b", {"n": 1})
    a.send("b", {"n": 2})
    eventually(lambda: got == [{"n": 1}, {"n": 2}], "both messages despite the broken handler")


def test_in_process_standalone_channel_and_unique_names() -> None:
    alone = InProcessChannel("solo")
    got = collect(alone)
    alone.send("solo", {"n": 1})
    alone.broadcast({"n": 2})
    assert got == [{"n": 1}]
    hub = InProcessHub()
    hub.channel("x")
    with pytest.raises(ValueError, match="already has an open channel"):
        hub.channel("x")
    with pytest.raises(ValueError):
        InProcessChannel("")
    with pytest.raises(TypeError):
        alone.subscribe("not callable")  # type: ignore[arg-type]
    alone.close()
    assert InProcessChannel("x", hub=InProcessHub()).node_name == "x"


def test_the_store_s_channel(store_factory: Any, backend: str) -> None:
    """`store.channel`: this node's end (its node name), open from boot to close; on Kafka the
    nodes of one namespace reach each other through it."""
    from csaf_events import CsafError, open_store

    unbooted = open_store("node-x", store_factory.tmp_path / "unbooted")
    with pytest.raises(CsafError, match="boot"):
        _ = unbooted.channel
    a = store_factory("node-a")
    assert isinstance(a.channel, NodeChannel) and a.channel.node_name == "node-a"
    got_a = collect(a.channel)
    a.channel.send("node-a", {"k": "to-self"})
    eventually(lambda: got_a == [{"k": "to-self"}], "a message to itself")
    if store_factory.cluster:
        b = store_factory("node-b")
        got_b = collect(b.channel)
        a.channel.send("node-b", {"k": "outbox", "sid": "s"})
        b.channel.broadcast({"k": "pub"})
        eventually(lambda: got_b == [{"k": "outbox", "sid": "s"}], "A's message on B")
        eventually(lambda: got_a == [{"k": "to-self"}, {"k": "pub"}], "B's broadcast on A")
    a.close()
    with pytest.raises(CsafError, match="closed"):
        _ = a.channel
