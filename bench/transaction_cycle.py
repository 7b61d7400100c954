"""The bare Kafka transaction of a node, without the node: the floor of its commit cycle.

One transactional producer (or several taking turns, as a lane's do), one after another:
begin, R records of P bytes to each of N partitions of an events topic, the command
offsets of those partitions sent with a real consumer group's metadata (KIP-447), flush,
commit. No deciding, no projection, no other threads: what is left of a node's cycle here
is the protocol's round trips and the broker's work. A write of the lifecycle workload
waits for the cycle in flight and then its own, so this bounds a node from below.

Usage: python -m bench.transaction_cycle --bootstrap HOST:PORT [--transactions N]
           [--partitions N ...] [--producers K ...] [--records R] [--payload P] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.kafka_admin import CpuMeter, delete_namespace, local_broker_pids
from csaf_events.kafka.transaction import PRODUCER_SETTINGS
from csaf_events.ops.cli import positive_int

TOPIC_PARTITIONS = 12
PHASES = ("produce", "send_offsets", "flush", "commit")


def _producer(bootstrap: str, transactional_id: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, **PRODUCER_SETTINGS, "transactional.id": transactional_id,
                  "acks": "all"})
    p.init_transactions(30)
    return p


def measure(bootstrap: str, namespace: str, partitions: int, producers: int, transactions: int,
            records: int, payload: int) -> dict[str, Any]:
    """Run `transactions` bare transactions; returns the mean of each phase and the cycle."""
    events, commands = f"{namespace}.events", f"{namespace}.commands"
    group = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{namespace}.owners.{partitions}.{producers}",
                      "enable.auto.commit": False})
    group.subscribe([commands])
    deadline = time.monotonic() + 60
    while not group.assignment():
        group.poll(0.2)
        if time.monotonic() > deadline:
            raise RuntimeError("the consumer group gave no assignment within 60 s")
    metadata = group.consumer_group_metadata()
    lane = [_producer(bootstrap, f"{namespace}.cycle.{partitions}.{producers}.{k}") for k in range(producers)]
    value = b"x" * payload
    phases: dict[str, list[float]] = {k: [] for k in PHASES}
    cycles: list[float] = []
    cpu = CpuMeter(local_broker_pids(bootstrap))
    started = time.perf_counter()
    for i in range(transactions):
        p = lane[i % producers]
        t0 = time.perf_counter()
        p.begin_transaction()
        for q in range(partitions):
            for _ in range(records):
                p.produce(events, value, b"k", partition=q)
        t1 = time.perf_counter()
        p.send_offsets_to_transaction([TopicPartition(commands, q, i + 1) for q in range(partitions)], metadata, 30)
        t2 = time.perf_counter()
        p.flush(30)
        t3 = time.perf_counter()
        p.commit_transaction(30)
        t4 = time.perf_counter()
        for k, v in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[k].append(v * 1000)
        cycles.append((t4 - t0) * 1000)
    elapsed = time.perf_counter() - started
    cpu_use = cpu.stop()
    group.close()
    cycles.sort()
    return {"partitions": partitions, "producers": producers, "transactions": transactions,
            "records_per_partition": records, "payload_bytes": payload,
            "transactions_per_s": round(transactions / elapsed, 1),
            "ms": {k: round(statistics.mean(v), 3) for k, v in phases.items()},
            "cycle_ms": {"mean": round(statistics.mean(cycles), 3), "p50": round(cycles[len(cycles) // 2], 3),
                         "p99": round(cycles[int(len(cycles) * 0.99)], 3)},
            "cpu": cpu_use}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.transaction_cycle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    ap.add_argument("--transactions", type=positive_int, default=500, metavar="N")
    ap.add_argument("--partitions", type=positive_int, nargs="+", default=[1, 12], metavar="N",
                    help=f"partitions per transaction (at most {TOPIC_PARTITIONS}; default 1 12)")
    ap.add_argument("--producers", type=positive_int, nargs="+", default=[1, 2], metavar="K",
                    help="producers taking turns (default 1 2)")
    ap.add_argument("--records", type=positive_int, default=3, metavar="R", help="records per partition (default 3)")
    ap.add_argument("--payload", type=positive_int, default=1024, metavar="P", help="bytes per record (default 1024)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if max(args.partitions) > TOPIC_PARTITIONS:
        ap.error(f"--partitions: at most {TOPIC_PARTITIONS}")
    from bench.lifecycle import machine, versions

    namespace = f"cycle-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for f in admin.create_topics([NewTopic(f"{namespace}.{t}", TOPIC_PARTITIONS, 1)
                                  for t in ("events", "commands")]).values():
        f.result()
    runs = []
    try:
        for partitions in args.partitions:
            for producers in args.producers:
                r = measure(args.bootstrap, namespace, partitions, producers, args.transactions, args.records,
                            args.payload)
                runs.append(r)
                print(f"{partitions:>3} partitions, {producers} producer(s): {r['transactions_per_s']:>6,.0f} txn/s, "
                      f"cycle mean {r['cycle_ms']['mean']:.2f} ms (p50 {r['cycle_ms']['p50']:.2f}, "
                      f"p99 {r['cycle_ms']['p99']:.2f}); "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r["ms"].items())
                      + (f"; broker {r['cpu']['broker_cores']:.2f} cores" if r["cpu"].get("broker_cores") is not None
                         else ""), flush=True)
    finally:
        delete_namespace(args.bootstrap, namespace)
    report = {"namespace": namespace, "runs": runs, "machine": machine(), "versions": versions()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
