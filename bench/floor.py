"""The floor: the bare cost of the workload's storage work, without csaf-events.

For every command the workload has the store decide, the floor does the minimum an
event-sourced store on RocksDB must do for it, straight on rocksdict (raw mode) with
orjson: the reads that decide the command (a get, or a prefix scan for an outbox fetch),
then one `WriteBatch` holding, for each event the command emits, the event appended to a
log key and the entity's new state (orjson of the same fields our events carry) put, or
deleted for a tombstone. No argument checks, no command objects, no group commit, no
session registry, no threads: one thread running the same sequence of commands.

Our figures divided by the floor's show what the library's own code costs on top of the
storage engine. The floor counts operations exactly as the workload does (one per API
call), so `ops_per_s` of both compare directly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import orjson
from rocksdict import Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from csaf_events.workload import DRAIN_BATCH, WorkloadConfig, make_payloads


class _Floor:
    def __init__(self, path: Path) -> None:
        opt = Options(raw_mode=True)
        opt.create_if_missing(True)
        self.db = Rdict(str(path), options=opt)
        self.wo = WriteOptions()
        self.offset = 0
        self.ops = 0
        self.lifecycles = 0
        self.users: dict[str, set[str]] = defaultdict(set)

    def close(self) -> None:
        self.db.close()

    # a log record and a state change for each event, all in one batch per command
    def commit(self, events: list[tuple[bytes, dict | None]]) -> None:
        wb = WriteBatch(raw_mode=True)
        for key, state in events:
            value = None if state is None else orjson.dumps(state)
            wb.put(b"L" + self.offset.to_bytes(8, "big"), orjson.dumps([key.decode(), value is None]) + (value or b""))
            self.offset += 1
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        self.db.write(wb, self.wo)
        self.ops += 1

    def get(self, key: bytes) -> dict | None:
        raw = self.db.get(key)
        return None if raw is None else orjson.loads(raw)

    def scan(self, prefix: bytes) -> list[tuple[bytes, dict]]:
        out = []
        ro = ReadOptions()
        ro.set_iterate_upper_bound(_successor(prefix))  # stop at the prefix's end, not at the next live key
        it = self.db.iter(ro)
        it.seek(prefix)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            out.append((k, orjson.loads(it.value())))
            it.next()
        del it
        return out


def _successor(prefix: bytes) -> bytes:
    """The smallest key after every key starting with `prefix`."""
    p = prefix.rstrip(b"\xff")
    return p[:-1] + bytes([p[-1] + 1]) if p else b"\xff" * (len(prefix) + 1)


def run_floor(path: Path, config: WorkloadConfig, sessions: int | None = None) -> dict:
    """Run the floor for `sessions` sessions (default: the config's) in a new DB at `path`."""
    n = config.sessions if sessions is None else sessions
    payloads = make_payloads(config.payload_bytes, seed=config.seed or 0)
    f = _Floor(path)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    done: list[str] = []
    try:
        for i in range(n):
            sid = f"w-{i:07d}"
            user = f"u{i % config.users}"
            skey = b"s" + sid.encode()
            # 1. register + count
            s = f.get(skey)
            session = {"session_id": sid, "user_id": user, "node_name": "node-a", "connection_id": f"{sid}-c1",
                       "client_lib_and_versions": "csaf-workload/1.0", "app_name": "workload",
                       "app_version": "1.0.0", "created_timestamp": now, "liveliness_timestamp": now}
            f.commit([(skey, session)])
            f.users[user].add(sid)
            len(f.users[user])
            f.ops += 1
            # 2. inbox
            cmids = [f"cm{k}" for k in range(config.inbox_messages)]
            for k, cmid in enumerate(cmids):
                ikey = b"i" + sid.encode() + b"/" + cmid.encode()
                f.get(ikey)
                entry = {"session_id": sid, "client_message_id": cmid, "stored_timestamp": now,
                         "full_envelope": None, "message_binary": None}
                f.commit([(ikey, entry)])
                f.get(ikey)
                f.commit([(ikey, {**entry, "full_envelope": payloads[(i + k) % len(payloads)]})])
            if cmids:
                keys = [b"i" + sid.encode() + b"/" + c.encode() for c in cmids]
                for key in keys:
                    f.get(key)
                f.commit([(key, None) for key in keys])
            # 3. outbox: store M, drain
            oprefix = b"o" + sid.encode() + b"/"
            for m in range(config.outbox_messages):
                smid = f"sm{m}"
                f.get(skey)
                xkey = b"x" + sid.encode() + b"/" + smid.encode()
                f.db.get(xkey)
                okey = oprefix + m.to_bytes(8, "big")
                msg = {"session_id": sid, "seq": m, "server_message_id": smid, "trace_id": f"trace-{sid}-{m}",
                       "type": "SEND", "client_message_id": None, "request_timestamp": None,
                       "stored_timestamp": now, "attempt_timestamp": None, "delivery_count": 0,
                       "dead_lettered": False, "envelope": f'{{"t":"SEND","smid":"{smid}"}}',
                       "message_text": payloads[(i + m) % len(payloads)], "message_binary": None}
                wb_events = [(okey, msg), (xkey, {"seq": m})]
                f.commit(wb_events)
            while True:
                batch = [(k, m) for k, m in f.scan(oprefix) if m["attempt_timestamp"] is None][:DRAIN_BATCH]
                f.ops += 1
                if not batch:
                    break
                f.commit([(k, {**m, "attempt_timestamp": now, "delivery_count": m["delivery_count"] + 1})
                          for k, m in batch])
                gone = []
                for k, m in batch:
                    f.get(k)
                    gone += [(k, None), (b"x" + sid.encode() + b"/" + m["server_message_id"].encode(), None)]
                f.commit(gone)
                f.lifecycles += len(batch)
            # 4. correlations
            for r in range(config.correlations):
                ckey = b"c" + sid.encode() + b"/" + f"rq{r}".encode()
                f.get(ckey)
                f.commit([(ckey, {"session_id": sid, "server_message_id": f"rq{r}", "request_timestamp": now,
                                  "reply_terminator_id": "Workload.replyTerminator",
                                  "correlation_string": f"corr-{sid}-{r}", "correlation_binary": None})])
                f.get(ckey)
                f.commit([(ckey, None)])
            # 5. reconnect
            s = f.get(skey)
            f.commit([(skey, {**s, "node_name": None, "connection_id": None})])
            s = f.get(skey)
            f.commit([(skey, {**s, "node_name": "node-a", "connection_id": f"{sid}-c2"})])
            f.scan(oprefix)  # unmark: nothing attempted is left, nothing to write
            f.ops += 1
            done.append(sid)
            # 6a. liveliness per batch
            if len(done) % config.liveliness_batch == 0:
                f.commit([(b"s" + x.encode(), {**f.get(b"s" + x.encode()), "liveliness_timestamp": now})
                          for x in done[-config.liveliness_batch:]])
        rest = len(done) % config.liveliness_batch
        if rest:
            f.commit([(b"s" + x.encode(), {**f.get(b"s" + x.encode()), "liveliness_timestamp": now})
                      for x in done[-rest:]])
        # 6b. close half (each with its children), time out the rest in one command
        for sid in done[0::2]:
            evs = [(k, None) for p in (b"i", b"o", b"x", b"c") for k, _ in f.scan(p + sid.encode() + b"/")]
            f.commit(evs + [(b"s" + sid.encode(), None)])
        timed = [(k, None) for k, s in f.scan(b"s") if s["liveliness_timestamp"] < now + 1]
        f.commit(timed)
        elapsed = time.perf_counter() - started
    finally:
        f.close()
    return {"sessions": len(done), "ops": f.ops, "lifecycles": f.lifecycles, "elapsed_s": round(elapsed, 3),
            "ops_per_s": round(f.ops / elapsed, 1), "lifecycles_per_s": round(f.lifecycles / elapsed, 1),
            "method": "same commands, orjson + one rocksdict WriteBatch (raw mode) per command "
                      "(log record + entity state per event), one thread, no library code"}
