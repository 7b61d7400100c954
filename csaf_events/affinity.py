"""Pinning a node's process to CPUs (`csaf serve --cpus`, `python -m bench --cpus`).

A node is one interpreter: its threads take turns holding the interpreter lock, and every
turn is a hand-off from one thread to another. When those threads run on different cores,
each hand-off also moves the lock and the data between cores. On this project's 2-core
machine a Kafka node pinned to one core (the broker keeping the other) ran 1.2–1.4× the
lifecycles at 22–24 % less CPU per call (docs/benchmarks.md, "One core per node")."""

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
    """Run the calling thread, and every thread it starts from now on, on `cpus` only: call it
    before the store opens, so that the store's threads and its client libraries' inherit it."""
    os.sched_setaffinity(0, cpus)
