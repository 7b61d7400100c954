"""``csaf demo``: the MatsSocket session lifecycle (`bench.workload`) for a few seconds on an
embedded store, and a summary. ``csaf demo`` runs it as ``python -m bench.demo`` in the
source checkout, as ``csaf bench`` runs ``python -m bench``."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from bench.workload import WorkloadConfig, run_workload
from csaf_events import open_store
from csaf_events.ops.cli import positive_int
from csaf_events.ops.cli_ops import positive_float
from csaf_events.ops.cli_run import run_main

PROG = "csaf demo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="where the embedded store keeps its data (kept afterwards); "
                        "default: a temporary directory, removed afterwards")
    p.add_argument("--seconds", type=positive_float, default=5.0, metavar="N",
                   help="start new sessions for this many seconds (default 5)")
    p.add_argument("--sessions", type=positive_int, default=1_000_000, metavar="S",
                   help="stop after this many sessions even if time is left (default: no limit in practice)")
    p.add_argument("--concurrency", type=positive_int, default=16, metavar="C",
                   help="sessions in flight at once (default 16)")


def run(args: argparse.Namespace) -> int:
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="csaf-demo-")) if temporary else args.data_dir
    config = WorkloadConfig(sessions=args.sessions, concurrency=args.concurrency, duration=args.seconds)
    print(f"csaf demo: the MatsSocket session lifecycle on the embedded store for {args.seconds:g} s "
          f"({args.concurrency} sessions in flight) ...", file=sys.stderr)
    try:
        with open_store("demo-node", data_dir) as store, \
                tqdm(desc="sessions", unit=" sessions", file=sys.stderr, leave=False, mininterval=0.25) as bar:
            r = run_workload([store], config, progress=bar.update)
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    lat = r.latency_ms()

    def p99(op: str) -> str:
        return f"{lat[op]['p99']:.2f} ms" if op in lat else "-"

    k, m = config.inbox_messages, config.outbox_messages
    print(f"csaf demo: {r.elapsed_s:.1f} s on the embedded store")
    print(f"  sessions            {r.sessions:,} (registered, reconnected; {r.closed:,} closed, "
          f"{r.timed_out:,} timed out)")
    print(f"  messages delivered  {r.lifecycles:,} server->client (stored, fetched, attempted, completed; "
          f"{m} per session)")
    print(f"  client messages     {r.sessions * k:,} inbox ids stored, updated and deleted ({k} per session)")
    print(f"  throughput          {r.ops_per_s:,.0f} ops/s, {r.lifecycles_per_s:,.0f} messages delivered/s "
          f"({r.ops:,} operations)")
    print(f"  p99 latency         store_message_in_outbox {p99('store_message_in_outbox')}, "
          f"get_messages_from_outbox {p99('get_messages_from_outbox')}, "
          f"register_session_at_this_node {p99('register_session_at_this_node')}")
    if r.errors:
        print(f"  errors              {r.errors}")
        for sample in r.error_samples[:3]:
            print(f"                      {sample}")
    where = f"{data_dir} (temporary, removed)" if temporary else f"{data_dir} (kept)"
    print(f"  data dir            {where}")
    return 1 if r.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run the MatsSocket session lifecycle for a few seconds on an embedded store.")
    add_arguments(parser)
    return run_main(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
