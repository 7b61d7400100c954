"""Projection batches (`projections.rocks.ProjectionBatch`): a transaction's batches merged
into one write carry every change, later ones winning, and the session changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from projections.rocks import Projection, ProjectionBatch


def test_merged_batches_write_what_each_wrote_in_turn(tmp_path: Path) -> None:
    projection = Projection(tmp_path / "p")
    try:
        projection.db[b"gone"] = b"old"
        projection.db[b"kept"] = b"old"
        first = ProjectionBatch(projection)
        first.put(b"a", b"1")
        first.put(b"b", b"1")
        first.delete(b"gone")
        first.session_changed("s1", b"{}")
        second = ProjectionBatch(first)  # decided on the first, as a writer's next group is
        second.put(b"b", b"2")
        second.delete(b"a")
        second.put(b"gone", b"back")
        second.session_changed("s1", None)
        second.session_changed("s2", b"{}")

        merged = ProjectionBatch.merged(projection, [first, second])
        assert merged.sessions == {"s1": None, "s2": b"{}"}
        projection.write(merged)

        assert projection.get(b"a") is None
        assert projection.get(b"b") == b"2"
        assert projection.get(b"gone") == b"back"
        assert projection.get(b"kept") == b"old"
    finally:
        projection.close()


def test_an_untracked_batch_is_not_merged(tmp_path: Path) -> None:
    projection = Projection(tmp_path / "p")
    try:
        untracked = projection.batch(track=False)
        untracked.put(b"a", b"1")
        with pytest.raises(ValueError, match="untracked projection batch cannot be merged"):
            ProjectionBatch.merged(projection, [untracked])
        assert projection.get(b"a") is None
    finally:
        projection.close()


def test_the_last_key_under_a_prefix_among_keys_and_tombstones(tmp_path: Path) -> None:
    """`last_key` (an outbox's next seq): the greatest live key under the prefix, None where
    there is none, also between prefixes full of tombstones and with a backlog under it."""
    projection = Projection(tmp_path / "p")
    try:
        def key(prefix: bytes, n: int) -> bytes:
            return prefix + n.to_bytes(8, "big")
        before, mine, after = b"P1/sesr/", b"P1/sess/", b"P1/sest/"
        for prefix in (before, after):
            for n in range(2000):
                projection.db[key(prefix, n)] = b"v"
            for n in range(1990):
                del projection.db[key(prefix, n)]
        assert projection.last_key(mine) is None
        for n in range(500):
            projection.db[key(mine, n)] = b"v"
        assert projection.last_key(mine) == key(mine, 499)
        for n in range(400, 500):  # the newest gone: a tombstone after the last live key
            del projection.db[key(mine, n)]
        assert projection.last_key(mine) == key(mine, 399)
        for n in range(400):
            del projection.db[key(mine, n)]
        assert projection.last_key(mine) is None
        assert projection.last_key(before) == key(before, 1999)
        assert projection.last_key(b"P2/") is None  # past every key
        batch = ProjectionBatch(projection)  # a batch's own keys count, its deletes too
        batch.put(key(mine, 7), b"v")
        assert batch.last_key(mine) == key(mine, 7)
        batch.delete(key(before, 1999))
        assert batch.last_key(before) == key(before, 1998)
    finally:
        projection.close()
