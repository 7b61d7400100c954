"""A session's history read back from the log: `store.session_history` and `csaf replay`."""

from __future__ import annotations

import orjson
import pytest
from log_fixtures import LogNode, log_node, sessions_in_partition  # noqa: F401 - fixture

from csaf_events import open_store
from csaf_events.core.history import HistoryEntry

START = 1_700_000_000_000


class StepClock:
    """Every reading is 1 ms later, so each event has its own time."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        self.now += 1
        return self.now


def _lifecycle(store, sid: str, other: str) -> None:
    store.register_session_at_this_node(sid, "user", "conn-1", "lib", "app", "1.0")
    store.register_session_at_this_node(other, "user", "conn-2", "lib", "app", "1.0")  # same partition
    store.store_message_in_outbox(sid, "m1", "c-1", "trace", "REQUEST", 7, "env", '{"x":1}', b"\x00\xff")
    store.store_message_in_outbox(other, "m1", None, None, "SEND", None, "env", None, None)
    store.outbox_messages_attempted_delivery(sid, ["m1"])
    store.outbox_messages_complete(sid, ["m1"])
    store.store_message_id_in_inbox(sid, "in-1")
    store.store_request_correlation(sid, "r1", 9, "Term", None, b"\x01")
    assert store.get_and_delete_request_correlation(sid, "r1") is not None
    store.close_session(sid)


EXPECTED_TYPES = ["SessionRegistered", "OutboxStored", "DeliveryAttempted", "Completed", "InboxStored",
                  "CorrelationStored", "CorrelationTaken", "InboxDeleted", "SessionClosed"]


def test_session_history_is_the_sessions_events_in_log_order(log_node: LogNode) -> None:
    sid, other = sessions_in_partition(1, 2)
    store = log_node.open(clock=StepClock())
    _lifecycle(store, sid, other)

    history = store.session_history(sid)

    assert [e.type for e in history] == EXPECTED_TYPES
    assert all(isinstance(e, HistoryEntry) for e in history)
    assert all(e.entity_key[1] == sid for e in history), "only this session's records"
    assert [e.offset for e in history] == sorted(e.offset for e in history)
    assert all(e.node == "node-a" for e in history)
    times = [e.timestamp for e in history]
    assert times == sorted(times) and times[0] > START
    by_type = {e.type: e for e in history}
    stored = by_type["OutboxStored"]
    assert stored.entity_key == ("o", sid, 0, "m1")
    assert stored.state["message_binary"] == b"\x00\xff" and stored.state["delivery_count"] == 0
    assert by_type["DeliveryAttempted"].state["delivery_count"] == 1
    assert by_type["Completed"].state is None  # tombstone
    assert by_type["SessionClosed"].state is None
    assert by_type["SessionRegistered"].state["user_id"] == "user"
    # the other session of the same partition has its own history; unknown sessions have none
    assert [e.type for e in store.session_history(other)] == ["SessionRegistered", "OutboxStored"]
    assert store.session_history("never-seen") == []


def test_session_history_checks_its_argument(tmp_path) -> None:
    with open_store("node-a", tmp_path) as store:
        with pytest.raises(ValueError, match="session_id"):
            store.session_history("")
        with pytest.raises(TypeError, match="session_id"):
            store.session_history(42)  # type: ignore[arg-type]


def test_csaf_replay_prints_the_history_as_text_and_json(log_node: LogNode) -> None:
    sid, other = sessions_in_partition(0, 2)
    store = log_node.open(clock=StepClock())
    _lifecycle(store, sid, other)
    expected = store.session_history(sid)
    if log_node.kafka:  # the tool reads the topic; the node may keep running
        where = ["--bootstrap", log_node.bootstrap, "--namespace", log_node.namespace]
    else:  # the embedded log is read through a read-only view while the node runs
        where = ["--data-dir", str(log_node.data_dir)]

    code, out, err = log_node.tool("replay", "--session", sid, "--json", *where)
    assert code == 0, err
    rows = orjson.loads(out)
    assert [r["type"] for r in rows] == EXPECTED_TYPES
    assert [r["offset"] for r in rows] == [e.offset for e in expected]
    assert rows[1]["state"]["message_binary"] == "AP8="  # base64 of b"\x00\xff"
    assert rows[3]["state"] is None

    code, out, err = log_node.tool("replay", "--session", sid, *where)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == len(EXPECTED_TYPES)
    assert "OutboxStored" in lines[1] and "node-a" in lines[1] and "o/0/m1" in lines[1]
    assert "(tombstone)" in lines[-1]

    code, out, err = log_node.tool("replay", "--session", "nobody", *where)
    assert code == 0 and out == "" and "no events" in err
