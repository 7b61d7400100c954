"""A store node in its own process, driven over stdin/stdout with JSON lines.

Run as a script it serves one node; imported, `NodeProcess` starts and drives one. The
"load" call runs a write load in background threads and appends one line per
acknowledged write to a file (flushed), so a test can SIGKILL the node mid-load and
check every acknowledged write afterwards.

The fault tests (tests/test_faults.py) use "fault_load" instead: every call, answered or
failed, is one JSON line in a records file with its wall-clock start and end (the end of a
failed call is the moment its caller gave up) and the class of any exception; "probe"
times how long after a fault each partition takes to decide a write again; "check" reads
acknowledged writes back on this node.
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
    """An error raised inside the node process (its class name and message; `csaf` says
    whether it was a `CsafError`)."""

    def __init__(self, kind: str, message: str, csaf: bool | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.csaf = csaf


class NodeBootError(RuntimeError):
    """`boot()` raised inside the node process (`kind`: the exception class; `csaf`: whether
    it was a `CsafError`), or the process gave no ready line."""

    def __init__(self, message: str, kind: str | None = None, csaf: bool | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.csaf = csaf


class NodeProcess:
    def __init__(self, node_name: str, data_dir: Path, bootstrap: str, namespace: str, partitions: int,
                 boot_timeout: float = 90.0, request_timeout: float = 20.0) -> None:
        self.name = node_name
        self.log_path = Path(data_dir) / f"{node_name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, node_name, str(data_dir), bootstrap, namespace, str(partitions),
             str(request_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log_path, "ab"),
            text=True, bufsize=1, env=env)
        self._lock = threading.Lock()
        self._n = 0
        try:
            ready = self._read(boot_timeout)
        except RuntimeError as e:
            self.kill()
            raise NodeBootError(f"node {node_name} failed to boot: {e}") from None
        if ready.get("ready") is not True:
            self.kill()
            raise NodeBootError(f"node {node_name} failed to boot: {ready}", ready.get("error"), ready.get("csaf"))

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
            raise NodeError(out["error"], out["message"], out.get("csaf"))
        return out["result"]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no leaving the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=30)
            except Exception:  # noqa: BLE001 - the process is killed next in any case
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# ------------------------------------------------------------------ the node itself --

def _jsonable(obj: Any) -> Any:
    from csaf_events.core.codec import _plain
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


class FaultLoad:
    """The fault tests' load: every call is one JSON line in `spec["records"]`.

    All nodes work on the same sessions (`spec["sids"]`, registered beforehand), so a call
    is decided locally or routed depending on who owns the session's partition now:
    - inbox ids are taken from the wall clock (`r<half-second slot>-<thread>`), the same on
      every node, so the nodes race on them: exactly one call may succeed per id;
    - outbox ids are unique to the node (`o-<node>-<thread>-<i>`), and every third message
      is completed again;
    - every fifth iteration re-registers the session here (a routed Register, too).

    `spec["beats"]` (partition -> session) adds one thread per partition re-registering
    that session every `spec["beat"]` seconds (op "beat").

    Before each call (but beats) a line {"begin": true, op, sid, id, node, t0}; after it, a
    record: op (register|inbox|outbox|complete|beat), sid, id, node, t0 and t1 (wall-clock ms
    at the call and at its answer or failure: for a failure, when the caller gave up), ok,
    res (ok|stored|dup|none), err (exception class), csaf (whether it was a CsafError), mhw
    (the error's `may_have_written`, when it has one) and msg."""

    def __init__(self, store: Any, spec: dict) -> None:
        self.store = store
        self.spec = spec
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.out = open(spec["records"], "a", buffering=1)
        self.lock = threading.Lock()

    def start(self) -> None:
        for t in range(self.spec.get("threads", 2)):
            th = threading.Thread(target=self._worker, args=(t,), name=f"fault-load-{t}", daemon=True)
            th.start()
            self.threads.append(th)
        for p, sid in (self.spec.get("beats") or {}).items():
            th = threading.Thread(target=self._beat, args=(sid,), name=f"fault-beat-{p}", daemon=True)
            th.start()
            self.threads.append(th)

    def _beat(self, sid: str) -> None:
        """A write on one partition every `beat` seconds (op "beat"): how long the partition
        went without a decided write, apart from the load's threads stuck elsewhere."""
        interval = self.spec.get("beat", 0.25)
        while not self.stop.is_set():
            self._call("beat", sid, "", self.store.register_session_at_this_node, sid, "u", "beat", "lib", "app", "1")
            time.sleep(interval)

    def _record(self, rec: dict) -> None:
        with self.lock:
            self.out.write(json.dumps(rec) + "\n")
            self.out.flush()

    def _call(self, op: str, sid: str, mid: str, fn: Any, *args: Any) -> Any:
        from csaf_events import CsafError, MessageIdAlreadyExistsError
        rec = {"op": op, "sid": sid, "id": mid, "node": self.spec["node"], "t0": time.time() * 1000}
        if op != "beat":  # a call the node dies in leaves only this line: its outcome is unknown
            self._record({**rec, "begin": True})
        try:
            result = fn(*args)
            rec.update(ok=True, res="none" if (op == "outbox" and result is None) else "ok")
        except MessageIdAlreadyExistsError:
            result = None
            rec.update(ok=False, res="dup")
        except Exception as e:  # noqa: BLE001 - recorded for the test to judge
            result = e
            rec.update(ok=False, err=type(e).__name__, csaf=isinstance(e, CsafError), msg=str(e)[:300])
            if hasattr(e, "may_have_written"):
                rec["mhw"] = bool(e.may_have_written)
        rec["t1"] = time.time() * 1000
        if op == "inbox" and rec.get("res") == "ok":
            rec["res"] = "stored"
        self._record(rec)
        return result

    def _worker(self, t: int) -> None:
        store, sids, node = self.store, self.spec["sids"], self.spec["node"]
        pause = self.spec.get("pause", 0.02)
        i = 0
        while not self.stop.is_set():
            slot = int(time.time() * 2)
            sid = sids[(slot + 7 * t) % len(sids)]
            if i % 5 == 4:
                self._call("register", sid, "", store.register_session_at_this_node, sid, "u", f"c-{node}-{t}",
                           "lib", "app", "1")
            mid = f"r{slot}-{t}"
            failed = isinstance(self._call("inbox", sid, mid, store.store_message_id_in_inbox, sid, mid), Exception)
            oid = f"o-{node}-{t}-{i}"
            failed |= isinstance(self._call("outbox", sid, oid, store.store_message_in_outbox, sid, oid, None, None,
                                            "PUB", None, "e", "x", None), Exception)
            if i % 3 == 0:
                self._call("complete", sid, oid, store.outbox_messages_complete, sid, [oid])
            i += 1
            # a caller that just got an error backs off a little, as a server would
            time.sleep(self.spec.get("backoff", 0.25) if failed else pause)

    def close(self, timeout: float) -> int:
        """Stop and wait for the calls in flight; returns how many threads are still in a call."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for th in self.threads:
            th.join(max(0.0, deadline - time.monotonic()))
        return sum(th.is_alive() for th in self.threads)


def _probe(store: Any, sids: dict, max_s: float) -> dict:
    """Per partition (`sids`: partition -> a session of it), retry a write (a Register) until
    one succeeds or `max_s` passed; per partition: seconds to the first success (None if
    none), attempts, and the exception classes seen (non-CsafError ones listed apart)."""
    from csaf_events import CsafError
    start = time.monotonic()
    out: dict = {}

    def run(p: str, sid: str) -> None:
        r = {"ok_s": None, "attempts": 0, "errors": {}, "noncsaf": []}
        while time.monotonic() - start < max_s:
            r["attempts"] += 1
            try:
                store.register_session_at_this_node(sid, "u", "probe", "lib", "app", "1")
                r["ok_s"] = round(time.monotonic() - start, 3)
                r["ok_at"] = time.time() * 1000
                break
            except Exception as e:  # noqa: BLE001 - recorded
                r["errors"][type(e).__name__] = r["errors"].get(type(e).__name__, 0) + 1
                if not isinstance(e, CsafError):
                    r["noncsaf"].append(f"{type(e).__name__}: {str(e)[:200]}")
                time.sleep(0.25)
        out[p] = r

    threads = [threading.Thread(target=run, args=(p, sid), daemon=True) for p, sid in sids.items()]
    for th in threads:
        th.start()
    for th in threads:  # a call that hangs past max_s is reported as such, not waited for
        th.join(max(0.0, start + max_s + 2 - time.monotonic()))
    for p in sids:
        out.setdefault(p, {"ok_s": None, "attempts": None, "errors": {"(a call still hanging)": 1}, "noncsaf": []})
    return dict(out)


def _check(store: Any, outbox: dict, inbox: list, max_s: float = 90.0) -> dict:
    """Read acknowledged writes back: `outbox` sid -> ids that must be waiting in the outbox,
    `inbox` [sid, id] pairs that must be stored. Returns what is missing, and what could not
    be read (3 tries; once a partition failed them, or after `max_s`, the rest is not tried)."""
    from concurrent.futures import ThreadPoolExecutor

    from csaf_events.core.partitioning import partition_for

    missing_outbox: dict = {}
    missing_inbox: list = []
    unreadable: list = []
    down: set = set()
    deadline = time.monotonic() + max_s

    def retry(sid: str, fn: Any, *args: Any) -> Any:
        p = partition_for(sid, store.partitions)
        for attempt in range(3):
            if p in down or time.monotonic() > deadline:
                raise TimeoutError(f"not tried: partition {p} unreadable before, or the check ran out of time")
            try:
                return fn(*args)
            except Exception:
                if attempt == 2:
                    down.add(p)
                    raise
                time.sleep(0.5)

    def one_outbox(sid: str, ids: list) -> None:
        try:
            present = {m.server_message_id for m in retry(sid, store.get_messages_from_outbox, sid, 1_000_000)}
        except Exception as e:  # noqa: BLE001
            unreadable.append(["outbox", sid, f"{type(e).__name__}: {str(e)[:200]}"])
            return
        lost = sorted(set(ids) - present)
        if lost:
            missing_outbox[sid] = lost

    def one_inbox(sid: str, mid: str) -> None:
        try:
            if retry(sid, store.get_message_from_inbox, sid, mid) is None:
                missing_inbox.append([sid, mid])
        except Exception as e:  # noqa: BLE001
            unreadable.append(["inbox", f"{sid}/{mid}", f"{type(e).__name__}: {str(e)[:200]}"])

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one_outbox, sid, ids) for sid, ids in outbox.items()]
        futures += [pool.submit(one_inbox, sid, mid) for sid, mid in inbox]
        for f in futures:
            f.result()
    return {"missing_outbox": missing_outbox, "missing_inbox": missing_inbox, "unreadable": unreadable}


def main() -> None:
    import faulthandler
    import logging
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` dumps every thread's stack
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    from csaf_events import CsafError, open_store

    node_name, data_dir, bootstrap, namespace, partitions = sys.argv[1:6]
    request_timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 20.0
    try:
        store = open_store(node_name, data_dir, bootstrap_servers=bootstrap, namespace=namespace,
                           partitions=int(partitions), request_timeout=request_timeout)
        store.boot()
    except Exception as e:  # the test judges the class
        logging.getLogger("node_process").exception("boot failed")
        print(json.dumps({"ready": False, "error": type(e).__name__, "message": str(e)[:500],
                          "csaf": isinstance(e, CsafError)}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    stop = threading.Event()
    fault_load: FaultLoad | None = None
    for line in sys.stdin:
        req = json.loads(line)
        method, args = req["method"], req["args"]
        try:
            if method == "close":
                stop.set()
                if fault_load is not None:
                    fault_load.stop.set()
                store.close()
                print(json.dumps({"id": req["id"], "result": None}), flush=True)
                return
            if method == "owned":
                result = store.node.owned()
            elif method == "load":
                _load(store, args[0], args[1], stop)
                result = None
            elif method == "fault_load":
                fault_load = FaultLoad(store, args[0])
                fault_load.start()
                result = None
            elif method == "stop_fault_load":
                result = fault_load.close(args[0]) if fault_load is not None else 0
            elif method == "probe":
                result = _probe(store, args[0], args[1])
            elif method == "check":
                result = _check(store, *args)
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
                    except Exception as e:
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
            print(json.dumps({"id": req["id"], "error": type(e).__name__, "message": str(e),
                              "csaf": isinstance(e, CsafError)}), flush=True)


if __name__ == "__main__":
    main()
