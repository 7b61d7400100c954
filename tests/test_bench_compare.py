"""`python -m bench.compare`: two revisions from worktrees of their own, runs interleaved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.compare import flatten, summarize

ROOT = Path(__file__).resolve().parent.parent


def test_flatten_names_every_number_by_its_path_and_skips_the_rest() -> None:
    report = {"a": 1, "b": {"c": 2.5, "d": "text", "e": True}, "f": [1, 2]}
    assert dict(flatten(report)) == {"a": 1.0, "b.c": 2.5}


def test_summarize_gives_min_median_max_per_revision_and_the_median_ratio() -> None:
    runs = {"A": [{"x": 1, "y": 5}, {"x": 3, "y": 5}, {"x": 2, "y": 5}], "B": [{"x": 4}, {"x": 6}, {"x": 8}]}
    [row] = summarize(runs, [])  # "y" is not in B's reports: left out
    assert row["figure"] == "x"
    assert (row["A"]["min"], row["A"]["median"], row["A"]["max"]) == (1, 2, 3)
    assert (row["B"]["min"], row["B"]["median"], row["B"]["max"]) == (4, 6, 8)
    assert row["ratio"] == 3


def test_two_revisions_are_run_interleaved_from_their_worktrees(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.compare", "HEAD", "HEAD", "--rounds", "2", "--figure", "lifecycles_per_s",
         "--json", str(out), "--", "--sessions", "40", "--concurrency", "2", "--no-floor", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split(":")[1].split()[0] for line in result.stderr.splitlines() if line.startswith("round")] \
        == ["A", "B", "B", "A"]
    assert "| lifecycles_per_s |" in result.stdout
    report = json.loads(out.read_text())
    assert report["a"]["commit"] == report["b"]["commit"]
    assert [len(report["runs"][label]) for label in ("A", "B")] == [2, 2]
    assert all(r["lifecycles_per_s"] > 0 for label in ("A", "B") for r in report["runs"][label])
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "bench-compare-" not in worktrees  # removed at the end
