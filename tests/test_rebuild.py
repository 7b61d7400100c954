"""At boot, a projection that cannot be trusted is rebuilt from the log, on both backends;
`csaf audit` finds what boot cannot (entries deleted or changed behind a good checkpoint)
and `csaf rebuild` repairs it."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient
from log_fixtures import PARTITIONS, LogNode, log_node, populate  # noqa: F401 - fixture

from csaf_events import CsafError
from projections import keys
from projections.rocks import Checkpoint


def _populated(log_node: LogNode) -> dict[int, dict[bytes, bytes]]:
    """Populate the node, stop it; returns its projection's state per partition."""
    store = log_node.open()
    populate(store)
    before = log_node.snapshots(store.node.projection)
    store.close()
    assert all(before.values()), "every partition has state"
    return before


def _damage(log_node: LogNode, change: Callable) -> None:
    raw = log_node.raw_projection()
    try:
        change(raw)
    finally:
        raw.close()


def _set_checkpoints(raw, make: Callable[[Checkpoint], bytes]) -> None:
    for p in range(PARTITIONS):
        raw.db.put(keys.checkpoint_key(p), make(raw.checkpoint(p)))


def _cp(next_offset: int, generation: str) -> bytes:
    return orjson.dumps({"next_offset": next_offset, "generation": generation})


def _drop_all(raw) -> None:
    for p in range(PARTITIONS):
        raw.drop_partition(p)


def _corrupt_values(raw) -> None:
    for p in range(PARTITIONS):
        key = next(k for k, _ in raw.scan(keys.kind_prefix(p, "o")))
        raw.db.put(key, b"\x00\x13 torn write")


DAMAGE: dict[str, tuple[Callable, str]] = {
    "missing": (_drop_all, "there is no projection of it here yet"),
    "corrupt-entry": (_corrupt_values, "it is corrupt (value is not JSON"),
    "corrupt-checkpoint": (lambda raw: _set_checkpoints(raw, lambda cp: b"\xff{not json"),
                           "its checkpoint is unreadable"),
    "ahead-of-log": (lambda raw: _set_checkpoints(raw, lambda cp: _cp(cp.next_offset + 1000, cp.generation)),
                     "it is ahead of the log"),
    "earlier-generation": (lambda raw: _set_checkpoints(raw, lambda cp: _cp(cp.next_offset, "an-older-log")),
                           "built from an earlier generation of the log"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_projection_is_rebuilt_from_the_log_at_boot(log_node: LogNode, case: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    before = _populated(log_node)
    change, reason = DAMAGE[case]
    if case == "missing" and log_node.kafka:
        shutil.rmtree(log_node.projection_path)  # the whole directory gone (a new disk)
    else:
        _damage(log_node, change)

    with caplog.at_level(logging.INFO, logger="projections.rebuild"):
        store = log_node.open()
    assert log_node.snapshots(store.node.projection) == before
    assert store.get_message_from_inbox("pop-1", "c0") is not None
    rebuilt = [r.getMessage() for r in caplog.records if "projection rebuilt from the log" in r.getMessage()]
    assert len(rebuilt) == PARTITIONS, caplog.text
    assert all(reason in m and " events in " in m for m in rebuilt), rebuilt
    # the rebuilt projection is trusted at the next boot: nothing is rebuilt again
    store.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="projections.rebuild"):
        store = log_node.open()
    assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert log_node.snapshots(store.node.projection) == before


def test_a_projection_of_a_recreated_log_is_dropped(log_node: LogNode, caplog: pytest.LogCaptureFixture) -> None:
    """The log was deleted and created again: the old projection describes nothing in it."""
    _populated(log_node)
    if log_node.kafka:
        admin = AdminClient({"bootstrap.servers": log_node.bootstrap})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(log_node.namespace + ".")]
        for fut in admin.delete_topics(mine).values():
            fut.result(30)
        deadline = time.monotonic() + 30
        while set(mine) & set(admin.list_topics(timeout=10).topics):
            assert time.monotonic() < deadline, "topics were not deleted"
            time.sleep(0.2)
    else:
        _damage(log_node, lambda raw: raw.db.drop_column_family("log"))

    with caplog.at_level(logging.WARNING, logger="projections.rebuild"):
        store = log_node.open()
    assert all(not s for s in log_node.snapshots(store.node.projection).values())
    assert store.get_sessions(False) == [] and not store.is_session_exists("pop-1")
    assert "earlier generation of the log" in caplog.text
    store.register_session_at_this_node("pop-1", "u", "c", "lib", "app", "1")  # the new log works
    assert [e.type for e in store.session_history("pop-1")] == ["SessionRegistered"]


def test_a_database_rocksdb_cannot_open_is_recovered(log_node: LogNode, caplog: pytest.LogCaptureFixture) -> None:
    """Kafka: moved aside and rebuilt from the topic. Embedded (log in the same database):
    RocksDB repair."""
    before = _populated(log_node)
    (log_node.projection_path / "CURRENT").write_text("garbage")
    with caplog.at_level(logging.WARNING):
        store = log_node.open()
    assert log_node.snapshots(store.node.projection) == before
    if log_node.kafka:
        aside = list(log_node.projection_path.parent.glob(log_node.projection_path.name + ".corrupt-*"))
        assert len(aside) == 1 and (aside[0] / "CURRENT").read_text() == "garbage"
        assert "moved it to" in caplog.text
    else:
        assert "repaired the embedded store" in caplog.text


def test_an_embedded_store_that_cannot_be_repaired_is_a_clear_error(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    node = LogNode("embedded", tmp_path)
    _populated(node)
    (node.projection_path / "CURRENT").write_text("garbage")

    def fail(path) -> None:
        raise RuntimeError("Corruption: simulated unrepairable damage")

    monkeypatch.setattr("projections.files.repair_database", fail)
    with pytest.raises(CsafError, match=r"corrupt .* could not repair it .* restore .* from a backup"):
        node.open()
    node.close_all()


def _tamper_behind_the_checkpoint(raw) -> list[bytes]:
    """Delete an entry and change another, leaving the checkpoint as it was."""
    outbox = [k for k, _ in raw.scan(keys.kind_prefix(1, "o"))]
    raw.db.delete(outbox[0])
    session = next(k for k, _ in raw.scan(keys.kind_prefix(0, "s")))
    state = orjson.loads(raw.get(session))
    state["user_id"] = "mallory"
    raw.db.put(session, orjson.dumps(state))
    return [outbox[0], session]


def test_audit_finds_every_difference_and_rebuild_repairs_it(log_node: LogNode) -> None:
    before = _populated(log_node)
    store = log_node.open()
    code, out, err = log_node.tool("audit", *log_node.tool_args())  # works while the node runs
    assert code == 0, out + err
    assert "the projection equals the fold of the log" in out
    code, out, err = log_node.tool("rebuild", "--no-progress", *log_node.tool_args())
    assert code == 1 and "is running" in err and "Stop it first" in err
    store.close()

    _damage(log_node, _tamper_behind_the_checkpoint)
    code, out, err = log_node.tool("audit", *log_node.tool_args())
    assert code == 1
    assert "missing: partition 1 outbox message seq" in out
    assert "differs: partition 0 session of session" in out and "mallory" in out
    assert "2 difference(s)" in out

    code, out, err = log_node.tool("rebuild", *log_node.tool_args())
    assert code == 0, err
    assert f"rebuilt {PARTITIONS} partition(s)" in out and "events/s" in out
    assert "rebuild: 100%" in err  # the progress bar
    code, out, err = log_node.tool("audit", *log_node.tool_args())
    assert code == 0, out + err

    store = log_node.open()
    assert log_node.snapshots(store.node.projection) == before


def test_the_tools_explain_what_is_missing(tmp_path: Path) -> None:
    node = LogNode("embedded", tmp_path / "nothing-here")
    code, _, err = node.tool("audit", *node.tool_args())
    assert code == 1 and "no embedded store in" in err
    code, _, err = node.tool("replay", "--session", "s")
    assert code == 1 and "--bootstrap" in err and "--data-dir" in err


_CRASHING_RESTORE = '''
import os, sys
from csaf_events.core.events import SessionRegistered, to_record
from csaf_events.log.entries import Chunk
from projections import rebuild
from projections.rocks import Checkpoint, Projection

rebuild.RESTORE_BATCH = 1000
path, crash = sys.argv[1], sys.argv[2]
projection = Projection(path)
records = [to_record(SessionRegistered(f"s{i % 700}", "u", "n", f"c{i}", "lib", "app", "1", i, i), "n", i)
           for i in range(5000)]
chunks = [Chunk(o + 500, [r.key for r in records[o:o + 500]], [r.value for r in records[o:o + 500]])
          for o in range(0, 5000, 500)]


def live_write(partition: int, next_offset: int | None) -> None:
    """What a writer does after the restore: a logged write (with its checkpoint)."""
    batch = projection.batch(track=False)
    batch.put(partition.to_bytes(2, "big") + b"i\\x00\\x04live", b"{}")
    projection.write(batch, None if next_offset is None else {partition: Checkpoint(next_offset, "g")})


def progress(n: int, calls: list = []) -> None:
    calls.append(n)
    if crash == "mid-restore" and len(calls) == 3:
        live_write(1, None)  # another partition's logged write lands between restore writes
        os._exit(0)  # the process dies: no flush, no close


rebuild.apply_chunks(projection, 0, chunks, "g", progress)
live_write(0, 5001)
os._exit(0)
'''


def _fold_of(n: int) -> dict[bytes, bytes]:
    from csaf_events.core.events import SessionRegistered, to_record
    from projections.fold import Changes, fold_record

    expected = Changes()
    for i in range(n):
        r = to_record(SessionRegistered(f"s{i % 700}", "u", "n", f"c{i}", "lib", "app", "1", i, i), "n", i)
        fold_record(r.key, r.value, 0, expected)
    return expected.live()


@pytest.mark.parametrize("crash", ["mid-restore", "after-restore"])
def test_a_crash_during_or_after_a_restore_leaves_a_consistent_projection(tmp_path: Path, crash: str) -> None:
    """A restore writes without RocksDB's WAL. A crash in its middle (after a logged write
    of another partition) leaves a prefix of the log with the checkpoint that goes with it;
    a crash after it (and a logged write of the same partition) loses nothing of it."""
    import subprocess
    import sys

    from projections.rebuild import snapshot
    from projections.rocks import Projection

    path = tmp_path / "projection"
    subprocess.run([sys.executable, "-c", _CRASHING_RESTORE, str(path), crash], check=True, timeout=60)
    projection = Projection(path)
    try:
        cp = projection.checkpoint(0)
        state = snapshot(projection, 0)
        if crash == "mid-restore":
            assert projection.get(b"\x00\x01i\x00\x04live") == b"{}", "the logged write survived"
            applied = 0 if cp is None else cp.next_offset
            assert applied in (0, 1000, 2000, 3000), f"a checkpoint between batches, not {applied}"
            assert state == _fold_of(applied), f"the state is the fold of the first {applied} records"
        else:
            assert cp is not None and cp.next_offset == 5001
            live = b"\x00\x00i\x00\x04live"
            assert state.pop(live) == b"{}"
            assert state == _fold_of(5000), "every restored record survived the crash"
    finally:
        projection.close()


def test_a_restore_gives_the_garbage_collector_back_as_it_found_it(tmp_path: Path) -> None:
    """The fold pauses Python's cyclic collector; it runs again afterwards, also after an
    error, and stays off if the application had turned it off."""
    import gc

    from projections.rebuild import apply_chunks
    from projections.rocks import Projection

    projection = Projection(tmp_path / "projection")
    try:
        assert gc.isenabled()
        apply_chunks(projection, 0, iter(()), "g")
        assert gc.isenabled()

        def broken():
            assert not gc.isenabled(), "paused while folding"
            raise RuntimeError("the log went away")
            yield

        with pytest.raises(RuntimeError):
            apply_chunks(projection, 0, broken(), "g")
        assert gc.isenabled()
        gc.disable()
        try:
            apply_chunks(projection, 0, iter(()), "g")
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        projection.close()
