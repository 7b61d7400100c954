"""`python -m bench.compare REV_A REV_B [options] -- [bench args]`: two revisions side by side.

On this project's machines the same command moves 10-30 % from one run to the next, so a
before/after claim needs both revisions measured in one sitting, interleaved. This checks
each revision out into a git worktree of its own, then runs the chosen benchmark (`--bench`,
default `bench`, the lifecycle benchmark; `bench.matssocket` for the MatsSocket node) from
each worktree in turn, `--rounds` times, alternating which goes first (A B, B A, ...) so that
a drift of the machine (a broker warming up, another job) falls on both. Each run writes its
JSON report; the table shows every numeric figure of the reports with its min / median / max
per revision, and the ratio of the medians (B / A).

    python -m bench.compare cbd3505 HEAD --rounds 3 --bench bench.matssocket -- --sockets 1000
    python -m bench.compare d4fb06d HEAD --figure lifecycles_per_s --figure p50 -- --concurrency 64

Everything after ``--`` goes to the benchmark as it is (a Kafka run takes ``--backend kafka
--bootstrap HOST:PORT``). The worktrees live in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from csaf_events.ops.cli import positive_int

ROOT = Path(__file__).resolve().parent.parent


def flatten(report: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every number of a JSON report, named by its path (``send_ack.p50_ms``)."""
    if isinstance(report, dict):
        for k, v in report.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(report, (int, float)) and not isinstance(report, bool):
        yield prefix, float(report)


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def checkout(revision: str, into: Path) -> str:
    """A detached worktree of `revision` at `into`; its full commit id."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    _git("worktree", "add", "--detach", "--force", str(into), commit)
    return commit


def run_once(worktree: Path, bench: str, bench_args: list[str], out: Path) -> dict[str, Any]:
    """One run of the benchmark from `worktree` (its code, its `bench/`); its JSON report."""
    command = [sys.executable, "-m", bench, *bench_args, "--json", str(out)]
    result = subprocess.run(command, cwd=worktree, env={**os.environ, "PYTHONPATH": str(worktree)},
                            capture_output=True, text=True)
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(command)} in {worktree} failed ({result.returncode}):\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    return json.loads(out.read_text())


def summarize(runs: dict[str, list[dict[str, Any]]], figures: list[str]) -> list[dict[str, Any]]:
    """Per figure found in every run: min / median / max of each revision and the median ratio."""
    labels = list(runs)
    flat = {label: [dict(flatten(r)) for r in reports] for label, reports in runs.items()}
    names = [n for n in flat[labels[0]][0] if all(n in f for fs in flat.values() for f in fs)]
    if figures:
        names = [n for n in names if any(pattern in n for pattern in figures)]
    rows = []
    for name in names:
        row: dict[str, Any] = {"figure": name}
        for label in labels:
            values = [f[name] for f in flat[label]]
            row[label] = {"min": min(values), "median": statistics.median(values), "max": max(values),
                          "runs": values}
        a, b = (row[label]["median"] for label in labels)
        row["ratio"] = b / a if a else None
        rows.append(row)
    return rows


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(rows: list[dict[str, Any]], labels: list[str]) -> str:
    head = f"| figure | {' | '.join(f'{label} min / median / max' for label in labels)} | B/A |"
    lines = [head, "|---" * (len(labels) + 2) + "|"]
    for row in rows:
        cells = [" / ".join(_fmt(row[label][k]) for k in ("min", "median", "max")) for label in labels]
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"| {row['figure']} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, bench_args = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("rev_a", help="the first revision (before)")
    p.add_argument("rev_b", help="the second revision (after)")
    p.add_argument("--rounds", type=positive_int, default=3, help="runs of each revision (default 3)")
    p.add_argument("--bench", default="bench", help="the benchmark module (default bench; or bench.matssocket)")
    p.add_argument("--figure", action="append", default=[], metavar="TEXT",
                   help="show only figures whose name contains TEXT (repeatable; default all)")
    p.add_argument("--json", metavar="FILE", help="also write every run's report and the summary to FILE")
    args = p.parse_args(argv)
    if "--json" in bench_args:
        p.error("the benchmark's --json is set by bench.compare")
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        work = Path(tmp)
        trees = {"A": work / "a", "B": work / "b"}
        commits = {}
        try:
            commits = {label: checkout(rev, trees[label]) for label, rev in (("A", args.rev_a), ("B", args.rev_b))}
            runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
            for n in range(args.rounds):
                for label in ("A", "B") if n % 2 == 0 else ("B", "A"):
                    started = time.monotonic()
                    report = run_once(trees[label], args.bench, bench_args, work / f"{label}-{n}.json")
                    runs[label].append(report)
                    print(f"round {n + 1}/{args.rounds}: {label} ({commits[label][:10]}) "
                          f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        finally:
            for tree in trees.values():
                if tree.exists():
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                                   capture_output=True)
    rows = summarize(runs, args.figure)
    print(f"A = {args.rev_a} ({commits['A'][:10]}), B = {args.rev_b} ({commits['B'][:10]}); "
          f"{args.bench} {' '.join(bench_args)}; {args.rounds} rounds, interleaved")
    print(table(rows, ["A", "B"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"a": {"revision": args.rev_a, "commit": commits["A"]},
                                               "b": {"revision": args.rev_b, "commit": commits["B"]},
                                               "bench": args.bench, "bench_args": bench_args, "runs": runs,
                                               "summary": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
