"""The node-to-node channel's in-process implementation (csaf_events.channel)."""

from __future__ import annotations

import pytest

from csaf_events.channel import InProcessChannel, InProcessHub, NodeChannel


def collect(channel: InProcessChannel) -> list[dict]:
    got: list[dict] = []
    channel.subscribe(got.append)
    return got


def test_send_reaches_the_named_node_only() -> None:
    hub = InProcessHub()
    a, b, c = hub.channel("a"), hub.channel("b"), hub.channel("c")
    got_a, got_b, got_c = collect(a), collect(b), collect(c)
    a.send("b", {"k": "outbox", "sid": "s1"})
    a.send("a", {"k": "to-self"})
    a.send("nobody", {"k": "dropped"})
    assert got_b == [{"k": "outbox", "sid": "s1"}]
    assert got_a == [{"k": "to-self"}]
    assert got_c == []
    assert isinstance(a, NodeChannel) and a.node_name == "a"


def test_broadcast_reaches_every_other_node() -> None:
    hub = InProcessHub()
    a, b, c = hub.channel("a"), hub.channel("b"), hub.channel("c")
    got_a, got_b, got_c = collect(a), collect(b), collect(c)
    a.broadcast({"k": "pub", "topic": "t"})
    assert (got_a, got_b, got_c) == ([], [{"k": "pub", "topic": "t"}], [{"k": "pub", "topic": "t"}])


def test_unsubscribe_and_close() -> None:
    hub = InProcessHub()
    a, b = hub.channel("a"), hub.channel("b")
    got: list[dict] = []
    unsubscribe = b.subscribe(got.append)
    a.send("b", {"n": 1})
    unsubscribe()
    a.send("b", {"n": 2})
    assert got == [{"n": 1}]
    b.close()
    a.send("b", {"n": 3})  # dropped: b is gone
    b.send("a", {"n": 4})  # a closed end sends nothing
    assert hub.channel("b").node_name == "b"  # the name is free again


def test_a_failing_handler_does_not_stop_the_others_nor_the_sender() -> None:
    hub = InProcessHub()
    a, b = hub.channel("a"), hub.channel("b")

    def broken(message: dict) -> None:
        raise RuntimeError("broken handler")
    b.subscribe(broken)
    got = collect(b)
    a.send("b", {"n": 1})
    assert got == [{"n": 1}]


def test_a_standalone_channel_reaches_only_itself_and_names_are_unique_per_hub() -> None:
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
