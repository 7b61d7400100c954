"""The floor: the bare cost of the workload's storage work, without csaf-events.

Two floors: the embedded one (`run_floor`, RocksDB) described here, and the Kafka one
(`run_kafka_floor`, a bare transactional producer), described at its code below.

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

import itertools
import time
from collections import defaultdict
from pathlib import Path

import orjson
from rocksdict import Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from bench.workload import DRAIN_BATCH, WorkloadConfig, make_payloads
from csaf_events.kafka.transaction import PRODUCER_SETTINGS


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
            f.commit([*evs, (b"s" + sid.encode(), None)])
        timed = [(k, None) for k, s in f.scan(b"s") if s["liveliness_timestamp"] < now + 1]
        f.commit(timed)
        elapsed = time.perf_counter() - started
    finally:
        f.close()
    return {"kind": "embedded", "sessions": len(done), "ops": f.ops, "lifecycles": f.lifecycles,
            "elapsed_s": round(elapsed, 3),
            "ops_per_s": round(f.ops / elapsed, 1), "lifecycles_per_s": round(f.lifecycles / elapsed, 1),
            "method": "same commands, orjson + one rocksdict WriteBatch (raw mode) per command "
                      "(log record + entity state per event), one thread, no library code"}


# ------------------------------------------------------------------ Kafka floor -------
#
# The bare cost of the same log writes on Kafka, without csaf-events: the very records
# our run committed to the events topic (read back from it: same count, keys, values,
# headers, partitions), plus the copy of every session record to the sessions topic
# that a node writes in the same transaction, produced by one plain transactional
# producer with the node's producer settings to fresh topics of the same layout.
#
# naive:   one transaction per decided command (begin, produce its records, commit), one
#          command after another on one thread. This is the floor `ratio` divides by.
# batched: the same records in transactions of BATCH_RECORDS, back to back: what the
#          producer and broker can take at most, in records/s.
#
# Not in the floor: the transactional offset commit (KIP-447 fencing), replies to routed
# commands, the projection writes, the reads that decide commands, the session registry.

#: The node's transactional producer settings (`csaf_events.kafka.transaction`).
NODE_PRODUCER_SETTINGS = {**PRODUCER_SETTINGS, "acks": "all"}

#: Records per transaction of the batched loop.
BATCH_RECORDS = 5000

# Event types a command emits exactly one of; every other type may come in a run.
_SINGLE = frozenset({"SessionRegistered", "SessionDeregistered", "InboxStored", "InboxUpdated",
                     "OutboxStored", "CorrelationStored", "CorrelationTaken"})
_CHILD = frozenset({"InboxDeleted", "OutboxDiscarded", "CorrelationDiscarded"})  # also emitted by close/timeout


def _header(headers, name: str) -> bytes | None:
    for k, v in headers or ():
        if k == name:
            return v
    return None


def split_commands(entries: list) -> list[list]:
    """Cut one partition's records (in offset order) into the commands that emitted them.

    A command's records are contiguous in its partition and share the `ts` and `node`
    headers (one decision time per group commit). Within that: each single-event type
    starts a command; Attempted/Complete/Unmark/DeadLetter emit a run of one type for one
    session; DeleteInbox and a close emit a run of one session's children (a close ends
    it with `SessionClosed`); a liveliness notification or a time-out covers many
    sessions of the partition. Two such commands of one kind, adjacent and decided in the
    same millisecond, would count as one."""
    commands: list[list] = []
    cur: list = []
    kind = ""  # what the current command is: "drop" (children run), "timeout", or an event type
    last_type, last_sid, last_stamp = "", None, None
    for e in entries:
        t = (_header(e.headers, "type") or b"").decode()
        sid = orjson.loads(e.key)[1]
        stamp = (_header(e.headers, "ts"), _header(e.headers, "node"))
        children_of_same = sid == last_sid and last_type in _CHILD
        if not cur or stamp != last_stamp or t in _SINGLE:
            joins = False
        elif t == "LivelinessNotified":
            joins = kind == t
        elif t == "SessionClosed":
            joins = kind == "drop" and children_of_same
        elif t == "SessionTimedOut" or t in _CHILD:
            joins = (kind in ("drop", "timeout") and children_of_same) or \
                    (kind == "timeout" and last_type == "SessionTimedOut")
        else:  # DeliveryAttempted, Completed, DeliveryUnmarked, DeadLettered
            joins = kind == t and sid == last_sid
        if joins:
            cur.append(e)
            if t == "SessionTimedOut":
                kind = "timeout"
        else:
            if cur:
                commands.append(cur)
            cur = [e]
            kind = "timeout" if t == "SessionTimedOut" else "drop" if t in _CHILD else t
        last_type, last_sid, last_stamp = t, sid, stamp
    if cur:
        commands.append(cur)
    return commands


def read_log(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> tuple[list[list], int]:
    """Every committed record of `topic`, per partition in offset order, and the number
    of transaction markers between them (offset gaps: one per transaction and partition)."""
    from csaf_events.kafka.reader import KafkaReader

    reader = KafkaReader({"bootstrap.servers": bootstrap}, topic, "floor", f"{topic}.floor-reader", timeout)
    out, markers = [], 0
    try:
        for p in range(partitions):
            entries = list(reader.read(p))
            markers += sum(b.offset - a.offset - 1 for a, b in itertools.pairwise(entries))
            if entries:
                markers += 1  # the last transaction's marker
            out.append(entries)
    finally:
        reader.close()
    return out, markers


def _produce(producer, events_topic: str, sessions_topic: str, e, session_prefix: bytes) -> int:
    producer.produce(events_topic, e.value, e.key, partition=e.partition, headers=list(e.headers))
    if e.key.startswith(session_prefix):
        producer.produce(sessions_topic, e.value, e.key, partition=e.partition, headers=list(e.headers))
        return 2
    return 1


def run_kafka_floor(bootstrap: str, namespace: str, partitions: int, *, ops: int, lifecycles: int,
                    timeout: float = 30.0) -> dict:
    """Produce the records of the run in `namespace` again, bare, in a fresh namespace
    ``<namespace>-floor`` on the same cluster (its topics are deleted afterwards)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from csaf_events.core.events import SESSION, key_prefix
    from csaf_events.kafka import topics as kafka_topics
    from csaf_events.topics import load_topics

    session_prefix = key_prefix(SESSION)
    ours = load_topics(None, namespace).with_partitions(partitions)
    by_partition, markers = read_log(bootstrap, ours.events.name, partitions, timeout)
    records = [e for entries in by_partition for e in entries]
    commands = [c for entries in by_partition for c in split_commands(entries)]
    # replay in the order the run decided them (decision time), partitions interleaved
    commands.sort(key=lambda c: (int(_header(c[0].headers, "ts") or b"0"), c[0].partition, c[0].offset))
    log_bytes = sum(len(e.key) + len(e.value or b"") + sum(len(k) + len(v or b"") for k, v in e.headers)
                    for e in records)

    floor_ns = f"{namespace}-floor"
    topics = load_topics(None, floor_ns).with_partitions(partitions)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    kafka_topics.ensure(admin, [topics.events, topics.sessions], timeout)
    try:
        producer = Producer({"bootstrap.servers": bootstrap, "client.id": "csaf-floor",
                             "transactional.id": f"{floor_ns}.floor", **NODE_PRODUCER_SETTINGS})
        producer.init_transactions(timeout)
        ev_t, se_t = topics.events.name, topics.sessions.name

        started = time.perf_counter()
        produced = 0
        for c in commands:
            producer.begin_transaction()
            for e in c:
                produced += _produce(producer, ev_t, se_t, e, session_prefix)
            producer.commit_transaction(timeout)
        naive_s = time.perf_counter() - started

        started = time.perf_counter()
        for i in range(0, len(records), BATCH_RECORDS):
            producer.begin_transaction()
            for e in records[i:i + BATCH_RECORDS]:
                _produce(producer, ev_t, se_t, e, session_prefix)
                producer.poll(0)
            producer.commit_transaction(timeout)
        batched_s = time.perf_counter() - started
        producer.flush(timeout)
    finally:
        from bench.kafka_admin import delete_namespace
        delete_namespace(bootstrap, floor_ns, timeout)

    def rate(n: float, s: float) -> float:
        return round(n / s, 1) if s > 0 else 0.0

    return {
        "kind": "kafka",
        "events": len(records), "records_produced": produced, "log_bytes": log_bytes,
        "transactions": len(commands), "our_partition_commits": markers,
        "elapsed_s": round(naive_s, 3),
        "ops": ops, "lifecycles": lifecycles,
        "ops_per_s": rate(ops, naive_s), "lifecycles_per_s": rate(lifecycles, naive_s),
        "transactions_per_s": rate(len(commands), naive_s), "events_per_s": rate(len(records), naive_s),
        "batched": {"records_per_transaction": BATCH_RECORDS, "elapsed_s": round(batched_s, 3),
                    "events_per_s": rate(len(records), batched_s),
                    "records_per_s": rate(produced, batched_s)},
        "producer": dict(NODE_PRODUCER_SETTINGS),
        "method": "the run's committed events read back from its events topic (+ their copies to the "
                  "sessions topic) produced again by one bare transactional producer with the node's "
                  "settings: one transaction per decided command, one after another (ops_per_s, ratio); "
                  f"'batched': the same records in transactions of {BATCH_RECORDS} (events_per_s)",
    }
