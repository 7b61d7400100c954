"""kill -9 in the middle of a write load loses no acknowledged write (embedded log).

`crash_writer.py` runs a multi-threaded load in a subprocess and prints a line per
acknowledged write; the test SIGKILLs it mid-load, reopens the data dir and checks every
acknowledged write, and that each partition's projection is exactly the fold of its log.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from csaf_events import MessageIdAlreadyExistsError, open_store
from csaf_events.embedded.log import LOG_CF, EmbeddedLog
from projections.files import projection_dir
from projections.rebuild import apply_chunks, diff, snapshot
from projections.rocks import Projection

WRITER = Path(__file__).with_name("crash_writer.py")
ACK_TIMEOUT = 60.0


class Acks:
    """What the writer acknowledged (and what it had started), from its stdout lines."""

    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.inbox: set[tuple[str, str]] = set()
        self.outbox: set[tuple[str, str]] = set()
        self.completing: set[tuple[str, str]] = set()
        self.done: set[tuple[str, str]] = set()
        self.corrs: set[tuple[str, str]] = set()
        self.taking: set[tuple[str, str]] = set()
        self.taken: set[tuple[str, str]] = set()
        self.count = 0

    def add(self, line: str) -> None:
        kind, *args = line.split()
        target = {"REG": None, "IN": self.inbox, "OUT": self.outbox, "COMPLETING": self.completing,
                  "DONE": self.done, "CORR": self.corrs, "TAKING": self.taking, "TAKEN": self.taken}[kind]
        if kind == "REG":
            self.sessions.add(args[0])
        else:
            target.add((args[0], args[1]))
        if kind not in ("COMPLETING", "TAKING"):
            self.count += 1


def run_and_kill(data_dir: Path, run: str, kill_after: int, acks: Acks, log: Path) -> None:
    """Start the writer, SIGKILL it once it acknowledged `kill_after` writes, record all acks."""
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, str(WRITER), str(data_dir), run, "6"],
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
    try:
        lines: list[str] = []
        reached = threading.Event()

        def reader() -> None:
            acked = 0
            for line in proc.stdout:  # ends at EOF, after the kill
                lines.append(line)
                acked += not line.startswith(("READY", "COMPLETING", "TAKING"))
                if acked >= kill_after:
                    reached.set()
            reached.set()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        assert reached.wait(ACK_TIMEOUT), f"writer acknowledged too few writes in {ACK_TIMEOUT}s: {log.read_text()}"
        assert proc.poll() is None, f"writer died by itself: {log.read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        t.join(10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines and lines[0] == "READY\n", f"writer did not start: {lines[:3]} {log.read_text()}"
    for line in lines[1:]:
        if line.endswith("\n"):  # a line cut by the kill was not acknowledged
            acks.add(line)
    assert "Traceback" not in log.read_text(), log.read_text()


def check_acknowledged(store, acks: Acks) -> None:
    missing: dict[str, list] = defaultdict(list)
    for sid in acks.sessions:
        if not store.is_session_exists(sid):
            missing["sessions"].append(sid)
    registry = {s.session_id for s in store.get_sessions(False)}
    missing["registry"] = sorted(acks.sessions - registry)
    for sid, cmid in acks.inbox:
        if store.get_message_from_inbox(sid, cmid) is None:
            missing["inbox"].append((sid, cmid))
        with pytest.raises(MessageIdAlreadyExistsError):
            store.store_message_id_in_inbox(sid, cmid)
    by_session: dict[str, set[str]] = defaultdict(set)
    for sid in {sid for sid, _ in acks.outbox}:
        store.outbox_messages_unmark_attempted_delivery(sid)
        by_session[sid] = {m.server_message_id for m in store.get_messages_from_outbox(sid, 100)}
    for sid, smid in acks.outbox:
        if (sid, smid) in acks.done:
            if smid in by_session[sid]:
                missing["completed but back"].append((sid, smid))
        elif (sid, smid) not in acks.completing and smid not in by_session[sid]:
            missing["outbox"].append((sid, smid))
    for sid, smid in acks.corrs:
        if (sid, smid) in acks.taking:
            continue
        if store.get_and_delete_request_correlation(sid, smid) is None:
            missing["correlations"].append((sid, smid))
    for sid, smid in acks.taken:
        if store.get_and_delete_request_correlation(sid, smid) is not None:
            missing["taken but back"].append((sid, smid))
    problems = {k: v[:10] for k, v in missing.items() if v}
    assert not problems, f"acknowledged writes lost after kill -9: {problems}"


def check_projection_is_fold_of_log(projection: Projection, event_log, scratch: Path) -> None:
    """Every partition's projection equals the fold of its log, and its checkpoint is the log's end."""
    rebuilt = Projection(scratch)
    try:
        total = 0
        for p in range(event_log.partitions):
            n = apply_chunks(rebuilt, p, event_log.read_chunks(p), event_log.generation(p))
            total += n
            problems = diff(snapshot(rebuilt, p), snapshot(projection, p))
            assert not problems, f"partition {p}: projection is not the fold of its log:\n" + "\n".join(problems[:20])
            cp = projection.checkpoint(p)
            assert (cp.next_offset if cp else 0) == event_log.end_offset(p), f"partition {p}: checkpoint {cp}"
        assert total > 0
    finally:
        rebuilt.close()


def check_raw_database(data_dir: Path, scratch: Path) -> None:
    """Look at the database as the kill left it, before a store's boot could repair anything."""
    projection = Projection(projection_dir(data_dir, None), extra_column_families=(LOG_CF,))
    event_log = EmbeddedLog(projection, None)
    try:
        check_projection_is_fold_of_log(projection, event_log, scratch)
    finally:
        event_log.close()
        projection.close()


@pytest.mark.parametrize("kill_points", [(300,), (3_000,), (500, 2_000, 1_000)],
                         ids=["early", "later", "three-times"])
def test_kill_9_loses_no_acknowledged_write(tmp_path, kill_points, caplog):
    data_dir = tmp_path / "node"
    acks = Acks()
    for i, kill_after in enumerate(kill_points):
        run_and_kill(data_dir, f"r{i}", kill_after, acks, tmp_path / "writer.log")
        assert acks.count >= kill_after
    check_raw_database(data_dir, tmp_path / "rebuilt-raw")
    caplog.set_level(logging.INFO)
    store = open_store("crash-node", data_dir)
    store.boot()
    try:
        rebuilt = [r.getMessage() for r in caplog.records if "rebuil" in r.getMessage()]
        assert not rebuilt, f"boot after kill -9 had to repair the projection: {rebuilt}"
        check_projection_is_fold_of_log(store.node.projection, store.node.log, tmp_path / "rebuilt")
        check_acknowledged(store, acks)
        # and the store works on after the crash
        store.register_session_at_this_node("after", "u", "c", "lib", "app", "1")
        assert store.is_session_exists("after")
    finally:
        store.close()
