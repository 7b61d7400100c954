"""The watchdog that gives up on a blocking call past its bound (`csaf_events.kafka.watchdog`):
a call that returns in time is left alone; one that does not is handed to `on_stuck` once,
and its caller learns that it was given up on."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from csaf_events.kafka.watchdog import Watchdog


def test_a_call_that_returns_in_time_is_left_alone() -> None:
    stuck: list[object] = []
    dog = Watchdog("test-watch", stuck.append, period=0.02)
    try:
        w = dog.watch(0.5, "ctx")
        time.sleep(0.05)
        assert dog.done(w) is False
        time.sleep(0.6)
        assert stuck == []
    finally:
        dog.close()


def test_a_call_past_its_bound_is_given_up_on_once() -> None:
    stuck: list[object] = []
    handled = threading.Event()
    dog = Watchdog("test-watch", lambda ctx: (stuck.append(ctx), handled.set()), period=0.02)
    try:
        t0 = time.monotonic()
        w = dog.watch(0.1, ("slot", ["req"]))
        assert handled.wait(5)
        assert time.monotonic() - t0 < 2
        time.sleep(0.1)
        assert stuck == [("slot", ["req"])]  # once, with the call's context
        assert dog.done(w) is True  # the caller, when its call returns, must leave
    finally:
        dog.close()


def test_a_failing_handler_does_not_stop_the_watchdog() -> None:
    seen: list[object] = []

    def on_stuck(ctx: object) -> None:
        seen.append(ctx)
        if ctx == "first":
            raise RuntimeError("a bug in the handler")

    dog = Watchdog("test-watch", on_stuck, period=0.02)
    try:
        dog.watch(0.01, "first")
        time.sleep(0.2)
        dog.watch(0.01, "second")
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == ["first", "second"]
    finally:
        dog.close()


def test_a_watched_call_that_never_returns_does_not_hold_up_the_exit() -> None:
    script = ("import threading\n"
              "from csaf_events.kafka.watchdog import Watchdog\n"
              "given_up = threading.Event()\n"
              "dog = Watchdog('stuck', lambda ctx: given_up.set(), period=0.02)\n"
              "def call():\n"
              "    dog.watch(0.1, None)\n"
              "    threading.Event().wait()\n"
              "threading.Thread(target=call, daemon=True).start()\n"
              "print('given up' if given_up.wait(10) else 'not given up')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "given up"
