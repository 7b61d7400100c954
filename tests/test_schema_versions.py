"""A record of an event type this code does not know, or of a newer schema version, stops
whatever folds the log (a rebuild at boot, `csaf rebuild`, `csaf audit`) with an error
that says where it is, instead of being folded as if it were understood."""

from __future__ import annotations

import re

import pytest
from confluent_kafka import Producer
from log_fixtures import PARTITIONS, LogNode, log_node  # noqa: F401 - fixture

from csaf_events import CsafError
from csaf_events.core import events as ev
from csaf_events.core.partitioning import partition_for
from csaf_events.embedded.log import EmbeddedLog
from csaf_events.topics import load_topics

SID = "sess-1"
PARTITION = partition_for(SID, PARTITIONS)

# A well-formed outbox state, and the same as a version 2 would write it (its version first).
_STATE = ev.OutboxStored(SID, 7, "m7", None, "SEND", None, None, 1, None, 0, False, "{}", "later", None)
_V1 = ev.encode_value(_STATE)
_V2 = b'{"v":2,' + _V1[1:]
# case: (headers, value, what the error says, whether a restore without headers sees it)
UNREADABLE = {
    "unknown-type": ((("type", b"OutboxPaused"), ("v", b"1")), _V1, "event type 'OutboxPaused' is unknown", False),
    "newer-version": ((("type", b"OutboxStored"), ("v", b"2")), _V2, "OutboxStored schema v2 is newer than this code",
                      True),
    "no-version": ((("type", b"OutboxStored"),), _V1, "has no schema version", False),
    "newer-value": ((("type", b"OutboxStored"), ("v", b"1")), _V2, "a layout this code does not read", True),
}


def _append(node: LogNode, record: ev.Record) -> tuple[str, int]:
    """Append `record` after the node's events (node stopped); returns the topic name errors
    give and the record's offset."""
    if node.kafka:
        topic = load_topics(None, node.namespace).with_partitions(PARTITIONS).events.name
        producer = Producer({"bootstrap.servers": node.bootstrap})
        offsets: list[int] = []
        producer.produce(topic, record.value, record.key, partition=PARTITION, headers=list(record.headers),
                         on_delivery=lambda err, msg: offsets.append(msg.offset()))
        assert producer.flush(30) == 0 and offsets
        return topic, offsets[0]
    raw = node.raw_projection()
    try:
        log = EmbeddedLog(raw, None)
        offset = log.end_offset(PARTITION)
        log.append(PARTITION, [record], raw.batch())  # the projection does not fold it: only the log has it
        log.close()
        return log.topic, offset
    finally:
        raw.close()


def _stopped_node_with_unreadable_record(node: LogNode, case: str) -> tuple[str, str]:
    """The node's log: a session, then one unreadable record; returns (where, what) the error names."""
    with node.open() as store:
        store.register_session_at_this_node(SID, "u", "c", "lib", "app", "1")
    headers, value, what, _ = UNREADABLE[case]
    topic, offset = _append(node, ev.Record(_STATE.key(), value, headers + ev.stamp("future-node", 2)))
    return f"{topic} partition {PARTITION} offset {offset}", what


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_the_audit_stops_at_an_unreadable_record(log_node: LogNode, case: str) -> None:
    where, what = _stopped_node_with_unreadable_record(log_node, case)
    code, out, err = log_node.tool("audit", *log_node.tool_args())
    assert code == 1 and where in err and what in err, (out, err)


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_a_rebuild_stops_at_an_unreadable_record(log_node: LogNode, case: str) -> None:
    """The Kafka restore reads no headers: it sees a newer version by the value alone, and
    folds a record whose value is a state this code reads (the audit stops at it)."""
    where, what = _stopped_node_with_unreadable_record(log_node, case)
    code, _, err = log_node.tool("rebuild", *log_node.tool_args())
    if log_node.kafka and not UNREADABLE[case][3]:
        assert code == 0, err
        return
    assert code == 1 and where in err and what in err, err
    if not log_node.kafka:  # the projection was dropped before the fold: the next boot rebuilds it, and stops too
        with pytest.raises(CsafError, match=f"{re.escape(where)}: its .*{re.escape(what)}"):
            log_node.open()


def test_a_record_whose_headers_come_in_another_order_is_folded(tmp_path) -> None:
    """What the fast check (the first two headers) leaves to the slow one: a writer that
    puts the type and version elsewhere among the headers."""
    node = LogNode("embedded", tmp_path)
    with node.open() as store:
        store.register_session_at_this_node(SID, "u", "c", "lib", "app", "1")
    headers = (*ev.stamp("other-writer", 3), ("v", b"1"), ("type", b"OutboxStored"))
    assert not ev.known_types([headers])
    _append(node, ev.Record(_STATE.key(), ev.encode_value(_STATE), headers))
    code, _, err = node.tool("rebuild", *node.tool_args())
    assert code == 0, err
    with node.open() as store:
        assert [m.message_text for m in store.get_messages_from_outbox(SID, 10)] == ["later"]
    node.close_all()
