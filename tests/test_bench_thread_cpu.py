"""The benchmark's CPU view by thread (`bench.thread_cpu`): each thread's time goes to its
role, a thread that ends before the run does still counts, and `--cpus` pins the run."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import pytest

from bench import lifecycle
from bench.thread_cpu import ThreadCpu, _role, _thread_clock_s, per_call


def _spin(cpu_seconds: float) -> None:
    """Use `cpu_seconds` of CPU (however busy the machine is), then end."""
    start, give_up = time.thread_time(), time.monotonic() + 30
    while time.thread_time() - start < cpu_seconds and time.monotonic() < give_up:
        for _ in range(10_000):
            pass


def test_threads_are_put_in_their_roles() -> None:
    assert _role("csaf-workload_12") == "callers"
    assert _role("csaf-commit-node-0-0") == "committer"
    assert _role("csaf-commit-7") == "group-commit hand-off"
    assert _role("csaf-registry-node-0") == "registry tail"
    assert _role("rdk:broker1") == "librdkafka"
    assert _role("some-pool_3") == "other: some-pool"


def test_each_threads_cpu_goes_to_its_role_ended_threads_included() -> None:
    meter = ThreadCpu(interval=60)  # read by the test, not by the watcher
    for name in ("csaf-workload_0", "csaf-commit-node-x-0"):  # one after the other: each has a core
        spun, end = threading.Event(), threading.Event()

        def work() -> None:
            _spin(0.3)
            spun.set()
            end.wait(10)

        t = threading.Thread(target=work, name=name)
        t.start()
        assert spun.wait(60)
        meter.read()  # its last reading: the thread ends before the meter stops
        end.set()
        t.join()
    by_role = meter.stop()
    assert by_role["callers"][0] + by_role["callers"][1] >= 0.3  # a Python thread's own CPU clock: exact
    assert by_role["committer"][0] + by_role["committer"][1] >= 0.3
    report = per_call(by_role, calls=100)
    assert report["callers"]["ms"] == pytest.approx(sum(by_role["callers"][:2]) * 1000 / 100, abs=1e-3)
    assert set(report["callers"]) == {"ms", "system_ms", "waits", "preemptions"}


def test_cpus_must_be_cpus_this_process_may_use() -> None:
    parser = argparse.ArgumentParser()
    lifecycle.add_arguments(parser)
    assert parser.parse_args(["--cpus", "0"]).cpus == frozenset({0})
    with pytest.raises(SystemExit):
        parser.parse_args(["--cpus", "zero"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--cpus", "4096"])


def test_threads_that_end_while_they_are_read_are_left_out_safely() -> None:
    """Threads come and go during a run (hand-off threads end when idle): a thread that ended
    reads as gone, and reading while hundreds start and end never touches a freed handle."""
    ended = threading.Thread(target=_spin, args=(0.001,))
    ended.start()
    ended.join()  # the interpreter is done with it; the kernel's task may outlive that briefly
    task = Path(f"/proc/self/task/{ended.native_id}")
    give_up = time.monotonic() + 5
    while task.exists() and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not task.exists() and _thread_clock_s(ended.native_id) is None
    assert _thread_clock_s(threading.get_native_id()) == pytest.approx(time.thread_time(), abs=0.05)
    meter = ThreadCpu(interval=60)
    for _ in range(300):
        t = threading.Thread(target=time.sleep, args=(0.0005,), name="bench-short-lived")
        t.start()
        meter.read()
    assert "callers" not in meter.stop()  # it read them all without crashing; none is a caller
