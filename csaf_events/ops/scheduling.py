"""How a node's process is scheduled (`csaf serve --cpus/--batch-scheduling`, and the same
options of `python -m bench`).

A node is one interpreter: its threads take turns holding the interpreter lock, and every
turn is a hand-off from one thread to another.

- **Pinned** (`--cpus`): when those threads run on different cores, each hand-off also moves
  the lock and the data between cores. On this project's 2-core machine a Kafka node pinned
  to one core (the broker keeping the other) ran 1.2-1.4x the lifecycles at 22-24 % less
  CPU per call.
- **Batch scheduling** (`--batch-scheduling`, Linux's SCHED_BATCH): a thread the kernel wakes
  (a caller whose answer is ready) no longer preempts the thread that woke it. Under the
  normal policy the committer, answering a transaction's callers, is switched out at each
  wake while it holds the interpreter lock; the woken caller finds the lock taken and
  sleeps again. A wake then costs two switches instead of none. The price is latency for a
  woken thread while the core is busy (it waits for the running one to block or use up its
  slice), which an event-loop thread serving sockets may feel. Figures: docs/benchmarks.md.

Both are inherited by the threads started afterwards: apply them before the store opens.
"""

from __future__ import annotations

import argparse
import os


def parse_cpus(text: str) -> frozenset[int]:
    """`"0"` or `"0,2"`: CPUs this process may use (an `argparse` type)."""
    try:
        cpus = frozenset(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of CPU numbers, not {text!r}") from None
    available = os.sched_getaffinity(0)
    if not cpus <= available:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(cpus - available)} are not available to this process "
                                         f"(it may use {sorted(available)})")
    return cpus


def pin(cpus: frozenset[int]) -> None:
    """Run the calling thread, and every thread it starts from now on, on `cpus` only."""
    os.sched_setaffinity(0, cpus)


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--cpus` and `--batch-scheduling` for `what` ("the node", "this process": all its threads)."""
    parser.add_argument("--cpus", type=parse_cpus, metavar="LIST",
                        help=f"run {what} (all its threads) on these CPUs only, e.g. 0 or 0,1 (default: any); "
                             "one interpreter's threads on one core do not pass the interpreter lock and "
                             "their data between cores at every hand-off")
    parser.add_argument("--batch-scheduling", action="store_true",
                        help=f"run {what}'s threads under Linux's SCHED_BATCH: a woken thread does not preempt "
                             "the one holding the interpreter lock (less CPU per call; a woken thread may "
                             "wait for a busy core a little longer)")


def apply(args: argparse.Namespace) -> None:
    """What `add_arguments` parsed, applied to the calling thread and every thread it starts
    from now on: call it before the store opens."""
    if args.cpus:
        pin(args.cpus)
    if args.batch_scheduling:
        batch_scheduling()


def batch_scheduling() -> None:
    """Put the calling thread, and every thread it starts from now on, under SCHED_BATCH (no
    privilege needed). `OSError` where the system has no such policy."""
    if not hasattr(os, "SCHED_BATCH"):
        raise OSError("this system has no SCHED_BATCH scheduling policy (Linux only)")
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
