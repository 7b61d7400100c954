"""Audit: fold the log and compare it with a projection, listing every difference.

The comparison is with what the node would serve once caught up: the projection plus the
log records after its checkpoint (folded in memory), against the fold of the whole log.
So a stopped node that is merely behind is not reported, and records compacted away after
its checkpoint was taken cannot cause false differences.
"""

from __future__ import annotations

from typing import NamedTuple

from csaf_events.log.entries import LogReader
from projections.fold import Changes, fold_record
from projections.integrity import first_problem
from projections.rebuild import check_entry, diff, snapshot
from projections.rocks import Projection


class Audit(NamedTuple):
    partition: int
    events: int  # log records folded
    entities: int  # projection entries the fold of the log gives
    behind: int  # records the projection had not applied yet (applied in memory to compare)
    differences: list[str]


def audit_partition(projection: Projection, log_reader: LogReader, partition: int, *,
                    holds: bool) -> Audit | None:
    """Compare one partition; None when this node has never held it (`holds` False and no
    trace of it in the projection). A record of a type or version this code does not read
    stops the audit (`UnknownEventError`): the fold it would be compared with means nothing."""
    end = log_reader.end_offset(partition)
    generation = log_reader.generation(partition)
    problems: list[str] = []
    try:
        cp = projection.checkpoint(partition)
    except Exception as e:  # noqa: BLE001 - whatever it is, the audit reports it
        cp, problems = None, [f"the checkpoint is unreadable: {e}"]
    actual = snapshot(projection, partition)
    if cp is None and not actual and not problems and not holds:
        return None
    corrupt = first_problem(projection, partition)
    if corrupt is not None:
        problems.append(f"the projection is corrupt: {corrupt}")
    tail_from: int | None = None  # apply the log from here onto the projection before comparing
    if cp is None:
        if actual or end > 0:
            problems.append("the projection has no checkpoint")
    elif cp.generation != generation:
        problems.append(f"the projection was built from log generation {cp.generation}, the log is {generation}")
    elif cp.next_offset > end:
        problems.append(f"the checkpoint ({cp.next_offset}) is ahead of the log end ({end})")
    else:
        tail_from = cp.next_offset
    expected, caught_up = Changes(), Changes(actual)
    n = behind = 0
    for entry in log_reader.read(partition, 0, end):
        check_entry(log_reader.topic, entry)
        n += 1
        try:
            fold_record(entry.key, entry.value, partition, expected)
            if tail_from is not None and entry.offset >= tail_from:
                fold_record(entry.key, entry.value, partition, caught_up)
                behind += 1
        except Exception as ex:  # noqa: BLE001 - whatever it is, the audit reports it
            problems.append(f"the log record at offset {entry.offset} cannot be folded: {ex}")
    folded = expected.live()
    return Audit(partition, n, len(folded), behind, problems + diff(folded, caught_up.live()))
