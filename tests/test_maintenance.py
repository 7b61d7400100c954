"""The maintenance runner against a real embedded store, with short intervals."""

from __future__ import annotations

import threading
import time

import pytest

from csaf_events import open_store
from csaf_events.maintenance import (
    LIVELINESS_INTERVAL,
    SCAVENGE_INTERVAL,
    SESSION_TIMEOUT_MS,
    TIMEOUT_INTERVAL,
    Maintenance,
)

HOUR = 3600.0


@pytest.fixture
def store(tmp_path):
    with open_store("node-a", tmp_path / "node-a") as s:
        yield s


def register(store, sid: str) -> None:
    store.register_session_at_this_node(sid, "user-1", f"conn-{sid}", "test/1", "app", "1.0")


def liveliness(store, sid: str) -> int:
    return next(s.liveliness_timestamp for s in store.get_sessions(False) if s.session_id == sid)


def wait_for(condition, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_defaults_follow_matssocket():
    assert LIVELINESS_INTERVAL < 60 and LIVELINESS_INTERVAL * 1.1 < 60  # under a minute with jitter
    assert TIMEOUT_INTERVAL == 300
    assert SESSION_TIMEOUT_MS == 3 * 24 * 3600 * 1000
    assert SCAVENGE_INTERVAL == 90 * 60


def test_liveliness_advances(store):
    register(store, "s1")
    before = liveliness(store, "s1")
    time.sleep(0.01)
    with Maintenance(store, lambda: ["s1"], liveliness_interval=0.05, timeout_interval=None,
                     scavenge_interval=None) as m:
        assert wait_for(lambda: liveliness(store, "s1") > before)
        assert wait_for(lambda: m.stats["liveliness"].runs >= 2)
    assert m.stats["liveliness"].failures == 0
    assert m.stats["liveliness"].last_result == 1


def test_liveliness_ignores_unknown_sessions(store):
    m = Maintenance(store, lambda: ["gone-1", "gone-2"])
    assert m.run_liveliness() == 2
    assert not store.is_session_exists("gone-1")


def test_timed_out_sessions_disappear_live_ones_stay(store):
    register(store, "live")
    register(store, "dead")
    store.store_message_in_outbox("dead", "sm1", None, None, "SEND", None, "{}", '{"x":1}', None)
    store.store_message_id_in_inbox("dead", "cm1")
    with Maintenance(store, lambda: ["live"], liveliness_interval=0.05, timeout_interval=0.1,
                     session_timeout_ms=1000, scavenge_interval=None, jitter=0) as m:
        assert wait_for(lambda: not store.is_session_exists("dead"))
        assert store.is_session_exists("live")
        assert m.stats["timeout"].failures == 0
    assert store.get_messages_from_outbox("dead", 10) == []
    assert store.get_message_from_inbox("dead", "cm1") is None


def test_run_timeout_returns_ids_once(store):
    register(store, "old")
    time.sleep(0.01)
    m = Maintenance(store, list, session_timeout_ms=0)
    assert m.run_timeout() == ["old"]
    assert m.run_timeout() == []


def test_remnants_get_scavenged(store):
    # the inbox and correlations take ids for sessions that do not exist (as MatsSocket's
    # SQL store does); those entries are remnants until scavenged
    store.store_message_id_in_inbox("ghost", "cm1")
    store.store_request_correlation("ghost", "sm1", 1, "Reply.terminator", "corr", None)
    register(store, "real")
    store.store_message_id_in_inbox("real", "cm1")
    assert store.get_message_from_inbox("ghost", "cm1") is not None
    with Maintenance(store, lambda: ["real"], liveliness_interval=None, timeout_interval=None,
                     scavenge_interval=0.05) as m:
        assert wait_for(lambda: m.stats["scavenge"].runs >= 1)
    assert m.stats["scavenge"].failures == 0
    assert store.get_message_from_inbox("ghost", "cm1") is None
    assert store.get_and_delete_request_correlation("ghost", "sm1") is None
    assert store.get_message_from_inbox("real", "cm1") is not None
    assert Maintenance(store, list).run_scavenge() == 0


def test_stop_is_prompt(store):
    m = Maintenance(store, list, liveliness_interval=HOUR, timeout_interval=HOUR, scavenge_interval=HOUR)
    m.start()
    assert m.running
    t0 = time.monotonic()
    assert m.stop(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert not m.running
    assert all(s.runs == 0 for s in m.stats.values())  # first runs are one interval after start


def test_stop_lets_the_running_job_finish(store):
    register(store, "s1")
    entered, release = threading.Event(), threading.Event()

    def slow_live_sessions():
        entered.set()
        release.wait(10)
        return ["s1"]

    m = Maintenance(store, slow_live_sessions, liveliness_interval=0.02, timeout_interval=None,
                    scavenge_interval=None).start()
    assert entered.wait(5)
    assert m.stop(timeout=0.1) is False  # still inside the job
    release.set()
    assert wait_for(lambda: not m.running, 5)
    assert m.stats["liveliness"].runs == 1  # finished, and no new run started after stop
    with pytest.raises(RuntimeError, match="stopped"):
        m.start()


def test_errors_do_not_kill_the_runner(store):
    register(store, "s1")
    calls = {"n": 0}
    seen: list[tuple[str, BaseException]] = []

    def flaky():
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError(f"boom {calls['n']}")
        return ["s1"]

    with Maintenance(store, flaky, liveliness_interval=0.02, timeout_interval=None, scavenge_interval=None,
                     on_error=lambda job, e: seen.append((job, e))) as m:
        assert wait_for(lambda: m.stats["liveliness"].runs >= 2)
        assert m.running
    assert [job for job, _ in seen] == ["liveliness", "liveliness"]
    assert m.stats["liveliness"].failures == 2
    assert str(m.stats["liveliness"].last_error) == "boom 2"


def test_errors_are_logged_by_default(tmp_path, caplog):
    s = open_store("node-b", tmp_path / "b")
    s.boot()
    s.close()  # every job now fails with CsafError("this store is closed")
    with Maintenance(s, lambda: ["x"], liveliness_interval=0.02, timeout_interval=0.02,
                     scavenge_interval=0.02) as m:
        assert wait_for(lambda: all(st.failures >= 2 for st in m.stats.values()))
        assert m.running
    assert "CSAF maintenance job" in caplog.text
    assert "closed" in caplog.text


def test_run_once_runs_every_enabled_job(store):
    register(store, "s1")
    results = Maintenance(store, lambda: ["s1"], scavenge_interval=None).run_once()
    assert results == {"liveliness": 1, "timeout": []}


def test_jitter_spreads_intervals(store):
    intervals = {Maintenance(store, list, liveliness_interval=100)._jobs["liveliness"][1] for _ in range(20)}
    assert all(100 <= i <= 110 for i in intervals)
    assert len(intervals) > 1
    assert {Maintenance(store, list, liveliness_interval=100, jitter=0)._jobs["liveliness"][1]} == {100}


@pytest.mark.parametrize("kwargs, match", [
    ({"liveliness_interval": 0}, "liveliness_interval"),
    ({"timeout_interval": -1}, "timeout_interval"),
    ({"scavenge_interval": "x"}, "scavenge_interval"),
    ({"session_timeout_ms": 1.5}, "session_timeout_ms"),
    ({"jitter": 2}, "jitter"),
])
def test_bad_arguments(store, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Maintenance(store, list, **kwargs)
    with pytest.raises(TypeError, match="live_sessions"):
        Maintenance(store, ["s1"])
