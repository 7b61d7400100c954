"""The node transaction's bounded calls (`_DaemonCaller`): a call that never returns gives
its caller a `TimeoutError` in time and does not hold up the process's exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from csaf_events.kafka.transaction import _DaemonCaller


def test_a_call_returns_its_value_or_raises_its_error() -> None:
    caller = _DaemonCaller("test-caller")
    try:
        assert caller.call(5, lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            caller.call(5, lambda: 1 / 0)
    finally:
        caller.close()


def test_a_call_that_hangs_times_out_for_its_caller() -> None:
    caller, never = _DaemonCaller("test-hang"), threading.Event()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="did not return within 0.2s"):
        caller.call(0.2, never.wait)
    assert time.monotonic() - t0 < 2
    never.set()


def test_a_call_that_never_returns_does_not_hold_up_the_exit() -> None:
    script = ("import threading\n"
              "from csaf_events.kafka.transaction import _DaemonCaller\n"
              "try:\n"
              "    _DaemonCaller('stuck').call(0.1, threading.Event().wait)\n"
              "except TimeoutError:\n"
              "    print('timed out')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "timed out"
