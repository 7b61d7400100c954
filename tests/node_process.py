"""A store node in its own process, driven over stdin/stdout with JSON lines.

Run as a script it serves one node; imported, `NodeProcess` starts and drives one. The
"load" call runs a write load in background threads and appends one line per
acknowledged write to a file (flushed), so a test can SIGKILL the node mid-load and
check every acknowledged write afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class NodeError(Exception):
    """An error raised inside the node process (its class name and message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class NodeProcess:
    def __init__(self, node_name: str, data_dir: Path, bootstrap: str, namespace: str, partitions: int,
                 boot_timeout: float = 90.0) -> None:
        self.name = node_name
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, node_name, str(data_dir), bootstrap, namespace, str(partitions)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(Path(data_dir) / f"{node_name}.log", "ab"),
            text=True, bufsize=1, env=env)
        self._lock = threading.Lock()
        self._n = 0
        ready = self._read(boot_timeout)
        if ready.get("ready") is not True:
            raise RuntimeError(f"node {node_name} failed to boot: {ready}")

    def _read(self, timeout: float) -> dict:
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not result:
            raise RuntimeError(f"node {self.name} gave no answer within {timeout}s")
        if not result[0]:
            raise RuntimeError(f"node {self.name} exited (code {self.proc.wait(10)}); see its log")
        return json.loads(result[0])

    def call(self, method: str, *args: Any, timeout: float = 60.0) -> Any:
        with self._lock:
            self._n += 1
            self.proc.stdin.write(json.dumps({"id": self._n, "method": method, "args": list(args)}) + "\n")
            self.proc.stdin.flush()
            out = self._read(timeout)
        if "error" in out:
            raise NodeError(out["error"], out["message"])
        return out["result"]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no leaving the group."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=30)
            except Exception:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# ------------------------------------------------------------------ the node itself --

def _jsonable(obj: Any) -> Any:
    from csaf_events.codec import _plain
    return _plain(obj)


def _load(store: Any, spec: dict, ack_file: str, stop: threading.Event) -> None:
    """Write load: sessions `prefix-i` on this node; per session inbox ids and outbox messages.

    Ack lines: "inbox <sid> <id>", "outbox <sid> <id>", "completing <sid> <id>" (before the
    call), "complete <sid> <id>"; failures
    are counted, never hidden (DataAccessError during a takeover is expected)."""
    from csaf_events import MessageIdAlreadyExistsError

    prefix, sessions, threads = spec["prefix"], spec["sessions"], spec.get("threads", 4)
    out = open(ack_file, "a", buffering=1)
    lock = threading.Lock()

    def ack(line: str) -> None:
        with lock:
            out.write(line + "\n")
            out.flush()

    def worker(t: int) -> None:
        i = 0
        while not stop.is_set():
            sid = f"{prefix}-{(i * threads + t) % sessions}"
            try:
                store.register_session_at_this_node(sid, "u", f"c-{t}", "lib", "app", "1")
                mid = f"m{t}-{i}"
                try:
                    store.store_message_id_in_inbox(sid, mid)
                    ack(f"inbox {sid} {mid}")
                except MessageIdAlreadyExistsError:
                    ack(f"dup {sid} {mid}")
                if store.store_message_in_outbox(sid, f"o{t}-{i}", None, None, "PUB", None, "e", "x", None) is not None:
                    ack(f"outbox {sid} o{t}-{i}")
                if i % 3 == 0:
                    ack(f"completing {sid} o{t}-{i}")  # before the call: it may succeed unacknowledged
                    store.outbox_messages_complete(sid, [f"o{t}-{i}"])
                    ack(f"complete {sid} o{t}-{i}")
            except Exception as e:  # noqa: BLE001 - recorded for the test to judge
                ack(f"error {sid} {type(e).__name__}")
            i += 1

    for t in range(threads):
        threading.Thread(target=worker, args=(t,), daemon=True).start()


def main() -> None:
    import faulthandler
    import logging
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` dumps every thread's stack
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    from csaf_events import open_store

    node_name, data_dir, bootstrap, namespace, partitions = sys.argv[1:6]
    store = open_store(node_name, data_dir, bootstrap_servers=bootstrap, namespace=namespace,
                       partitions=int(partitions), request_timeout=20.0)
    store.boot()
    print(json.dumps({"ready": True}), flush=True)
    stop = threading.Event()
    for line in sys.stdin:
        req = json.loads(line)
        method, args = req["method"], req["args"]
        try:
            if method == "close":
                stop.set()
                store.close()
                print(json.dumps({"id": req["id"], "result": None}), flush=True)
                return
            if method == "owned":
                result = store.node.owned()
            elif method == "load":
                _load(store, args[0], args[1], stop)
                result = None
            elif method == "stop_load":
                stop.set()
                time.sleep(0.5)
                result = None
            elif method == "race_inbox":  # at wall-clock time args[0], store every id, report the winners
                sid, ids, at = args[1], args[2], args[0]
                time.sleep(max(0.0, at - time.time()))
                won = []
                for mid in ids:
                    try:
                        store.store_message_id_in_inbox(sid, mid)
                        won.append(mid)
                    except Exception as e:  # noqa: BLE001
                        if type(e).__name__ != "MessageIdAlreadyExistsError":
                            raise
                result = won
            elif method == "at":  # call a store method at wall-clock time args[0]
                time.sleep(max(0.0, args[0] - time.time()))
                result = _jsonable(getattr(store, args[1])(*args[2:]))
            else:
                if method.startswith("_"):
                    raise ValueError(method)
                result = _jsonable(getattr(store, method)(*args))
            print(json.dumps({"id": req["id"], "result": result}), flush=True)
        except Exception as e:  # noqa: BLE001 - the test sees the error class and message
            print(json.dumps({"id": req["id"], "error": type(e).__name__, "message": str(e)}), flush=True)


if __name__ == "__main__":
    main()
