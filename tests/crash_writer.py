"""A write load on an embedded store, for the kill -9 test (`test_crash.py`).

    python tests/crash_writer.py DATA_DIR RUN_ID [THREADS]

Opens an embedded store in DATA_DIR, prints READY, then runs THREADS threads that
register sessions, store inbox ids, outbox messages and correlations, complete some
messages and take some correlations, until killed. Every write is reported on stdout
only after the store acknowledged it, one flushed line each:

    REG sid | IN sid cmid | OUT sid smid | CORR sid smid
    COMPLETING sid smid   (before the call)  | DONE sid smid   (after it returned)
    TAKING sid smid       (before the call)  | TAKEN sid smid  (after it returned the correlation)

RUN_ID prefixes every session id, so several runs can share one data dir.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csaf_events import MessageType, open_store

_out = threading.Lock()


def emit(*parts: str) -> None:
    line = " ".join(parts) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


def work(store, run: str, t: int) -> None:
    k = 0
    while True:
        sid = f"{run}-t{t}-s{k}"
        store.register_session_at_this_node(sid, f"user-{t}", f"conn-{k}", "crash_writer", "app", "1.0")
        emit("REG", sid)
        for i in range(3):
            store.store_message_id_in_inbox(sid, f"in{i}")
            emit("IN", sid, f"in{i}")
        for i in range(4):
            smid = f"out{i}"
            store.store_message_in_outbox(sid, smid, None, "trace", MessageType.SEND, None, "{}",
                                          f"msg {i}", bytes([i, 0, 10, 255]))
            emit("OUT", sid, smid)
        store.store_request_correlation(sid, "out0", 1, "Terminator", "c", b"\x00")
        emit("CORR", sid, "out0")
        for smid in ("out1", "out3"):
            emit("COMPLETING", sid, smid)
            store.outbox_messages_complete(sid, [smid])
            emit("DONE", sid, smid)
        if k % 2:
            emit("TAKING", sid, "out0")
            if store.get_and_delete_request_correlation(sid, "out0") is not None:
                emit("TAKEN", sid, "out0")
        store.outbox_messages_attempted_delivery(sid, ["out2"])
        k += 1


def main() -> None:
    data_dir, run = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    store = open_store("crash-node", data_dir)
    store.boot()
    emit("READY")
    workers = [threading.Thread(target=work, args=(store, run, t), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
