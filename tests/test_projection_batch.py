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
