"""Takeover: how fast a node takes over a partition that holds N events (WORKLOAD.md).

1. A store boots once on a fresh namespace to create its topics, and closes.
2. One partition of the events topic is filled with N valid event records, not timed:
   whole session lifecycles as the workload writes them (register, K inbox messages
   stored / updated with a P-byte result / deleted, M outbox messages stored with a
   P-byte message / attempted / completed, two correlations stored / taken, a
   reconnect; every second session closed), made with `csaf_events.core.events.to_record`
   for sessions that hash to that partition, produced by an idempotent (not
   transactional) producer in large batches. The session records also go to the
   sessions topic, as a node writes them, so the log is one a node could have written.
3. A fresh node (new data directory, empty projection) boots on the namespace: it joins
   the owners group, is assigned every partition and restores each projection from the
   log (`KafkaLog._assigned` -> `catch_up`), exactly as on a real takeover. Its
   the takeover record (`Ownership.takeovers`) of the filled partition give the figure: events applied / seconds.
4. The namespace's topics are deleted.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer

from bench.workload import make_payloads
from csaf_events import open_store
from csaf_events.core import events as ev
from csaf_events.core.events import SESSION, Record, key_prefix
from csaf_events.core.partitioning import partition_for
from csaf_events.topics import load_topics

DEFAULT_EVENTS = 1_000_000
PARTITION = 0


def session_ids(partition: int, partitions: int, prefix: str) -> Iterator[str]:
    """Session ids that hash to `partition` (the store's own partitioner)."""
    i = 0
    while True:
        sid = f"{prefix}-{i:08d}"
        if partition_for(sid, partitions) == partition:
            yield sid
        i += 1


def lifecycle_records(sid: str, payloads: list[str], now: int, node: str, n: int,
                      inbox: int = 10, outbox: int = 20, correlations: int = 2, close: bool = False) -> list[Record]:
    """The events of one session's workload lifecycle, as log records."""
    user = f"u{n % 100}"
    s = {"user_id": user, "node_name": node, "connection_id": f"{sid}-c1",
         "client_lib_and_versions": "csaf-workload/1.0",
             "app_name": "workload", "app_version": "1.0.0", "created_timestamp": now, "liveliness_timestamp": now}
    out = [ev.SessionRegistered(sid, **s)]
    for k in range(inbox):
        out.append(ev.InboxStored(sid, f"cm{k}", now, None, None))
        out.append(ev.InboxUpdated(sid, f"cm{k}", now, payloads[(n + k) % len(payloads)], None))
    out += [ev.InboxDeleted(sid, f"cm{k}") for k in range(inbox)]
    msgs = [{"seq": m, "server_message_id": f"sm{m}", "trace_id": f"trace-{sid}-{m}", "type": "SEND",
                 "client_message_id": None, "request_timestamp": None, "stored_timestamp": now,
                 "attempt_timestamp": None,
                 "delivery_count": 0, "dead_lettered": False, "envelope": f'{{"t":"SEND","smid":"sm{m}"}}',
                 "message_text": payloads[(n + m) % len(payloads)], "message_binary": None} for m in range(outbox)]
    out += [ev.OutboxStored(sid, **m) for m in msgs]
    out += [ev.DeliveryAttempted(sid, **{**m, "attempt_timestamp": now, "delivery_count": 1}) for m in msgs]
    out += [ev.Completed(sid, m["seq"], m["server_message_id"]) for m in msgs]
    for r in range(correlations):
        out.append(ev.CorrelationStored(sid, f"rq{r}", now, "Workload.replyTerminator", f"corr-{sid}-{r}", None))
        out.append(ev.CorrelationTaken(sid, f"rq{r}"))
    out.append(ev.SessionDeregistered(sid, **{**s, "node_name": None, "connection_id": None}))
    out.append(ev.SessionRegistered(sid, **{**s, "connection_id": f"{sid}-c2"}))
    if close:
        out.append(ev.SessionClosed(sid))
    return [ev.to_record(e, node, now) for e in out]


def fill_partition(bootstrap: str, events_topic: str, sessions_topic: str, partition: int, partitions: int,
                   events: int, payload: int = 1024, timeout: float = 60.0) -> dict:
    """Produce `events` event records (whole session lifecycles, the last one cut short)
    to one partition; returns what was written."""
    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "csaf-bench-fill",
                         "enable.idempotence": True, "acks": "all", "linger.ms": 50,
                         "batch.size": 1 << 20, "batch.num.messages": 100_000,
                         "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1 << 20})
    payloads = make_payloads(payload)
    now = int(time.time() * 1000)
    failed: list[str] = []

    def check(err, msg) -> None:
        if err is not None and len(failed) < 5:
            failed.append(str(err))

    def produce(topic: str, r: Record) -> None:
        while True:
            try:
                producer.produce(topic, r.value, r.key, partition=partition, headers=list(r.headers),
                                 on_delivery=check)
                return
            except BufferError:
                producer.poll(0.05)

    session_prefix = key_prefix(SESSION)
    t0 = time.monotonic()
    written = sessions = bytes_ = 0
    complete: dict[str, bool] = {}  # the first whole sessions: id -> closed
    for n, sid in enumerate(session_ids(partition, partitions, f"takeover-{uuid.uuid4().hex[:6]}")):
        if written >= events:
            break
        whole = lifecycle_records(sid, payloads, now, "bench-fill", n, close=n % 2 == 0)
        records = whole[: events - written]
        if len(records) == len(whole) and len(complete) < 2:
            complete[sid] = n % 2 == 0
        for r in records:
            produce(events_topic, r)
            if r.key.startswith(session_prefix):
                produce(sessions_topic, r)
            bytes_ += len(r.key) + len(r.value or b"")
        written += len(records)
        sessions += 1
        producer.poll(0)
    left = producer.flush(timeout)
    if left or failed:
        raise RuntimeError(f"filling {events_topic}[{partition}] failed: {left} undelivered; {failed}")
    return {"events": written, "sessions": sessions, "key_value_bytes": bytes_,
            "fill_s": round(time.monotonic() - t0, 3), "complete_sessions": complete}


def measure_takeover(bootstrap: str, events: int = DEFAULT_EVENTS, *, partitions: int = 12, payload: int = 1024,
                     work_dir: Path | None = None, timeout: float = 120.0, keep_topics: bool = False) -> dict:
    """Fill one partition with `events` events and time a fresh node taking it over.

    Returns ``{"events_per_s", "events", "restore_s", ...}``; `events_per_s` is the
    restore of the filled partition as the node's own takeover timed it."""
    from bench.kafka_admin import CpuMeter, delete_namespace, local_broker_pids

    namespace = f"takeover-{uuid.uuid4().hex[:10]}"
    temporary = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="csaf-takeover-")) if temporary else Path(work_dir)
    try:
        setup = open_store("takeover-setup", work / "setup", bootstrap_servers=bootstrap, namespace=namespace,
                           partitions=partitions, request_timeout=timeout)
        with setup:  # boot creates the namespace's topics
            pass
        topics = load_topics(None, namespace).with_partitions(partitions)
        events_topic, sessions_topic = topics.events.name, topics.sessions.name
        fill = fill_partition(bootstrap, events_topic, sessions_topic, PARTITION, partitions, events, payload,
                              timeout)
        node = open_store("takeover-node", work / "node", bootstrap_servers=bootstrap, namespace=namespace,
                          partitions=partitions, request_timeout=timeout)
        cpu = CpuMeter(local_broker_pids(bootstrap))
        t0 = time.monotonic()
        with node:
            boot_s = time.monotonic() - t0
            cpu_use = cpu.stop()
            stats = {p: (t.events, t.restore_seconds) for p, t in node.node.log.ownership.takeovers.items()}
            owned = node.node.owned()
            # the projection holds what the log says: a closed session is gone, an open one is there
            probe = {sid: node.is_session_exists(sid) is not closed
                     for sid, closed in fill.pop("complete_sessions").items()}
        applied, restore_s = stats.get(PARTITION, (0, 0.0))
        return {
            "events_per_s": round(applied / restore_s, 1) if restore_s > 0 else None,
            "events": applied, "restore_s": round(restore_s, 3), "partition": PARTITION, "namespace": namespace,
            "partitions": partitions, "owned_after_boot": owned, "boot_s": round(boot_s, 3),
            "other_partitions_restore_s": round(sum(s for p, (_, s) in stats.items() if p != PARTITION), 3),
            "fill": fill, "payload_bytes": payload, "cpu": cpu_use, "probe_ok": all(probe.values()) if probe else None,
            "method": "a fresh node boots on a namespace whose partition 0 holds the events; its own takeover "
                      "(KafkaLog restore: catch_up of an empty projection from the committed log) is timed "
                      "by its Takeover record; filling the partition is not timed",
        }
    finally:
        if not keep_topics:
            delete_namespace(bootstrap, namespace)
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
