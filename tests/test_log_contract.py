"""The contract of the log adapters (`csaf_events.log`): what an append gives back when read,
from an offset, up to an end, in chunks; tombstones with their headers. One suite, run on
every backend of `backends.BACKENDS` (the embedded log, a real Kafka broker).

Records are appended through a booted store's own log (`store.node.log`), on a partition
that node owns, with their fold in the same batch, as the node's writer appends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from csaf_events.core import events as ev
from csaf_events.core.partitioning import partition_for
from csaf_events.log.entries import LogEntry
from csaf_events.log.port import EventLog
from projections.fold import fold_record
from projections.rocks import Projection

if TYPE_CHECKING:
    from conftest import StoreFactory

NOW = 1_700_000_000_000


@dataclass
class OwnedPartition:
    """One partition a booted node owns, and that node's log and projection."""

    log: EventLog
    projection: Projection
    partition: int
    partitions: int

    def session_id(self, prefix: str) -> str:
        """A session id that falls in this partition."""
        return next(sid for sid in (f"{prefix}-{i}" for i in range(10_000))
                    if partition_for(sid, self.partitions) == self.partition)

    def append(self, events: list[ev.Event], node: str = "node-a") -> list[ev.Record]:
        records = [ev.to_record(e, node, NOW) for e in events]
        batch = self.projection.batch()
        for r in records:
            fold_record(r.key, r.value, self.partition, batch)
        self.log.append(self.partition, records, batch)
        return records


@pytest.fixture
def owned(store_factory: StoreFactory) -> OwnedPartition:
    store = store_factory()
    node = store.node
    owned = OwnedPartition(node.log, node.projection, node.owned()[0], store.partitions)
    # a call decided on the partition: the node serves it now (Kafka: its takeover is done)
    store.register_session_at_this_node(owned.session_id("served"), "u0", "c0", "lib", "app", "1.0")
    return owned


def _session(sid: str, conn: str = "c1") -> ev.SessionRegistered:
    return ev.SessionRegistered(sid, "u1", "node-a", conn, "lib", "app", "1.0", NOW, NOW)


def _lifecycle(sid: str) -> list[ev.Event]:
    """State records and tombstones of every entity kind, binary values included."""
    return [
        _session(sid),
        ev.InboxStored(sid, "cm1", NOW, None, None),
        ev.InboxUpdated(sid, "cm1", NOW, '{"r":1}', b"\x00\n\xff"),
        ev.OutboxStored(sid, 0, "sm1", "t", "SEND", None, None, NOW, None, 0, False, "{}", "text", b"\x01"),
        ev.CorrelationStored(sid, "rq1", NOW, None, "corr", None),
        ev.Completed(sid, 0, "sm1"),
        ev.CorrelationTaken(sid, "rq1"),
        ev.InboxDeleted(sid, "cm1"),
        ev.SessionClosed(sid),
    ]


def _as_records(entries: list[LogEntry]) -> list[ev.Record]:
    return [ev.Record(e.key, e.value, tuple(e.headers)) for e in entries]


def test_an_append_reads_back_as_written_after_the_end_it_found(owned: OwnedPartition) -> None:
    p = owned.partition
    start = owned.log.end_offset(p)
    records = owned.append(_lifecycle(owned.session_id("a")))
    entries = list(owned.log.read(p, start))
    assert _as_records(entries) == records
    offsets = [e.offset for e in entries]
    assert offsets[0] >= start and offsets == sorted(set(offsets))
    assert {e.partition for e in entries} == {p}
    assert owned.log.end_offset(p) > offsets[-1]


def test_tombstones_carry_no_value_and_keep_their_headers(owned: OwnedPartition) -> None:
    p = owned.partition
    start = owned.log.end_offset(p)
    sid = owned.session_id("t")
    owned.append([_session(sid), ev.SessionClosed(sid)], node="node-t")
    registered, closed = owned.log.read(p, start)
    assert registered.value is not None and closed.value is None
    assert closed.key == registered.key  # the same entity: compaction keeps only the tombstone
    assert ev.event_class(closed.headers) is ev.SessionClosed
    assert (ev.header(closed.headers, "node"), ev.header(closed.headers, "ts")) == ("node-t", str(NOW))


def test_reads_start_at_an_offset_and_stop_before_an_end(owned: OwnedPartition) -> None:
    p = owned.partition
    start = owned.log.end_offset(p)
    records = owned.append(_lifecycle(owned.session_id("r")))
    offsets = [e.offset for e in owned.log.read(p, start)]
    assert _as_records(list(owned.log.read(p, offsets[3]))) == records[3:]
    assert _as_records(list(owned.log.read(p, offsets[2], offsets[5]))) == records[2:5]
    end = owned.log.end_offset(p)
    assert list(owned.log.read(p, end)) == [] and list(owned.log.read_chunks(p, end)) == []


def test_later_appends_follow_earlier_ones(owned: OwnedPartition) -> None:
    p = owned.partition
    start = owned.log.end_offset(p)
    sid = owned.session_id("l")
    first = owned.append([_session(sid, "c1")])
    middle = owned.log.end_offset(p)
    second = owned.append([_session(sid, "c2"), ev.SessionClosed(sid)])
    assert _as_records(list(owned.log.read(p, start))) == first + second
    assert _as_records(list(owned.log.read(p, middle))) == second


def test_chunks_hold_the_records_of_a_read(owned: OwnedPartition) -> None:
    p = owned.partition
    start = owned.log.end_offset(p)
    for prefix in ("c1", "c2", "c3"):  # several appends: a chunk may span them
        owned.append(_lifecycle(owned.session_id(prefix)))
    entries = list(owned.log.read(p, start))
    chunks = list(owned.log.read_chunks(p, start))
    assert [k for c in chunks for k in c.keys] == [e.key for e in entries]
    assert [v for c in chunks for v in c.values] == [e.value for e in entries]
    assert chunks[-1].next_offset == entries[-1].offset + 1
    assert all(c.next_offset > entries[0].offset for c in chunks)
    assert [c.next_offset for c in chunks] == sorted({c.next_offset for c in chunks})
    for c in chunks:  # headers, where a log carries them in chunks, are the records' own
        assert c.headers is None or len(c.headers) == len(c.keys)
    if chunks[0].headers is not None:
        assert [tuple(h) for c in chunks for h in c.headers] == [tuple(e.headers) for e in entries]


def test_the_generation_names_this_log(owned: OwnedPartition) -> None:
    generation = owned.log.generation(owned.partition)
    assert isinstance(generation, str) and generation
    owned.append([_session(owned.session_id("g"))])
    assert owned.log.generation(owned.partition) == generation  # appends do not make a new log
