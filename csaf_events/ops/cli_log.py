"""The log subcommands of ``csaf``: the log is the source of truth, these read it.

    csaf replay  --session SID [--json]          a session's events, from the log
    csaf rebuild --data-dir DIR --node NAME      drop and refold a stopped node's projection
    csaf audit   --data-dir DIR --node NAME      fold the log, compare with the projection
    csaf topics  describe|apply|verify           the cluster's topics against topics.yaml

Each works on an embedded data dir, or with ``--bootstrap`` on a Kafka cluster, where it
reads the events topic with a plain consumer and never joins the cluster. `register`
adds them to the ``csaf`` parser (each sets ``run``: args -> exit code); `main` runs them
alone. See docs/log.md. What only one subcommand needs (the Kafka admin client, the
rebuild, the audit, tqdm) is imported in that subcommand, so that ``csaf --help`` stays
fast; none of those imports dodges an import circle (`tests/test_layers.py` counts them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from csaf_events.core.errors import CsafError
from csaf_events.ops.offline import Target, open_node_data

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

    from csaf_events.topics import TopicSpec

PROG = "csaf"


# ---------------------------------------------------------------- arguments --

def _where(p: argparse.ArgumentParser, *, data_dir_required: bool) -> None:
    p.add_argument("--data-dir", type=Path, metavar="DIR", required=data_dir_required,
                   help="the node's data directory (as given to open_store)")
    p.add_argument("--node", default="csaf-tool", metavar="NAME", help="the node's name (for messages and "
                   "client ids)")
    _cluster(p)


def _cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers; without it, the "
                   "embedded store in --data-dir")
    p.add_argument("--namespace", default="csaf", help="topic and group name prefix (default csaf)")
    p.add_argument("--partitions", type=int, metavar="N", help="partition count, if open_store was given one")
    p.add_argument("--topics-file", type=Path, metavar="FILE", help="topics.yaml (default: the packaged one)")


def _target(args: argparse.Namespace) -> Target:
    return Target(getattr(args, "data_dir", None), args.node, args.bootstrap, args.namespace, args.partitions,
                  args.topics_file)


# ------------------------------------------------------------------- replay --

def _replay(args: argparse.Namespace) -> int:
    from csaf_events.core.history import format_text, session_history, to_json
    from csaf_events.core.partitioning import partition_for

    if args.bootstrap is None and args.data_dir is None:
        raise CsafError("replay needs --bootstrap (a Kafka cluster) or --data-dir (an embedded store)")
    with open_node_data(_target(args), access="none") as data:
        history = session_history(data.log.read(partition_for(args.session, data.partitions)), args.session)
    if args.json:
        sys.stdout.write(to_json(history).decode() + "\n")
    elif history:
        print(format_text(history))
    else:
        print(f"{PROG} replay: no events of session {args.session!r} in the log", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ rebuild --

def _rebuild(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from projections.rebuild import catch_up

    with open_node_data(_target(args), access="write") as data:
        assert data.projection is not None
        partitions = args.partition or list(range(data.partitions))
        bad = [p for p in partitions if not 0 <= p < data.partitions]
        if bad:
            raise CsafError(f"no partition {bad[0]}: the log has partitions 0..{data.partitions - 1}")
        ends = {p: data.log.end_offset(p) for p in partitions}
        t0 = time.monotonic()
        results = []
        # the bar counts log offsets: records as they are folded, then the partition's gaps
        # (compacted records, transaction markers) when it is done
        with logging_redirect_tqdm(), tqdm(total=sum(ends.values()), unit="ev", desc="rebuild", file=sys.stderr,
                                           disable=args.no_progress) as bar:
            for p in partitions:
                results.append(catch_up(data.projection, data.log, p, force="csaf rebuild asked for it",
                                        progress=bar.update))
                bar.update(max(0, ends[p] - results[-1].events))
        took = time.monotonic() - t0
    events = sum(r.events for r in results)
    print(f"{PROG} rebuild: rebuilt {len(results)} partition(s) in {_target(args).projection_path()} from the log: "
          f"{events:,} events in {took:.2f}s ({events / took if took > 0 else 0:,.0f} events/s)")
    return 0


# -------------------------------------------------------------------- audit --

def _audit(args: argparse.Namespace) -> int:
    from projections.audit import audit_partition

    found = 0
    with open_node_data(_target(args), access="read") as data:
        assert data.projection is not None
        for p in range(data.partitions):
            a = audit_partition(data.projection, data.log, p, holds=data.holds_all)
            if a is None:
                print(f"partition {p}: not held by this node, skipped")
                continue
            behind = f", {a.behind} records behind (applied in memory)" if a.behind else ""
            if not a.differences:
                print(f"partition {p}: ok ({a.events} events, {a.entities} entries{behind})")
                continue
            found += len(a.differences)
            print(f"partition {p}: {len(a.differences)} difference(s) ({a.events} events{behind})")
            for d in a.differences[:args.max_differences]:
                print(f"  {d}")
            if len(a.differences) > args.max_differences:
                print(f"  ... and {len(a.differences) - args.max_differences} more")
    print(f"{PROG} audit: " + ("the projection equals the fold of the log" if not found else
                               f"{found} difference(s); `csaf rebuild` (node stopped) refolds the projection"))
    return 1 if found else 0


# ------------------------------------------------------------------- topics --

def _topic_specs(args: argparse.Namespace) -> list[TopicSpec]:
    from csaf_events.topics import load_topics

    if not args.bootstrap:
        raise CsafError("topics needs --bootstrap HOST:PORT (a Kafka cluster)")
    topics = load_topics(args.topics_file, args.namespace)
    if args.partitions is not None:
        topics = topics.with_partitions(args.partitions)
    specs = topics.cluster_topics()
    if args.node:
        specs += [topics.reply_topic(args.node), topics.node_topic(args.node)]
    return specs


def _admin(args: argparse.Namespace) -> AdminClient:
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": args.bootstrap})


def _topics_describe(args: argparse.Namespace) -> int:
    from csaf_events.kafka import topics as kafka_topics

    specs, admin = _topic_specs(args), _admin(args)
    states = kafka_topics.describe(admin, specs)
    brokers = kafka_topics.broker_count(admin, 15.0)
    for s in specs:
        st = states[s.name]
        if not st.exists:
            print(f"{s.name}: missing (topics.yaml: {s.partitions} partitions, replication {s.replication_factor})")
            continue
        rf, cfg = kafka_topics.expected_configs(s, brokers)
        print(f"{s.name}: id {st.topic_id}, {st.partitions} partitions (topics.yaml {s.partitions}), "
              f"replication {st.replication_factor} (expected {rf})")
        for k, v in sorted(cfg.items()):
            actual = (st.configs or {}).get(k)
            mark = "" if actual == v else f"   <- topics.yaml says {v}"
            print(f"  {k}={actual}{mark}")
    return 0


def _topics_apply(args: argparse.Namespace) -> int:
    from csaf_events.kafka import topics as kafka_topics

    changes, left = kafka_topics.apply(_admin(args), _topic_specs(args))
    for c in changes:
        print(c)
    for d in left:
        print(f"not changed (needs a person): {d}")
    if not changes and not left:
        print("the topics already match topics.yaml")
    return 1 if left else 0


def _topics_verify(args: argparse.Namespace) -> int:
    from csaf_events.kafka import topics as kafka_topics

    specs, admin = _topic_specs(args), _admin(args)
    states = kafka_topics.describe(admin, specs)
    brokers = kafka_topics.broker_count(admin, 15.0)
    diffs = [d for s in specs for d in kafka_topics.all_differences(s, states[s.name], brokers)]
    for d in diffs:
        print(d)
    print(f"{PROG} topics verify: " + (f"{len(diffs)} difference(s) from topics.yaml" if diffs else
                                       f"{len(specs)} topics match topics.yaml"))
    return 1 if diffs else 0


# ----------------------------------------------------------------- registry --

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add replay, rebuild, audit and topics to the ``csaf`` parser."""
    p = subparsers.add_parser("replay", help="print a session's events from the log",
                              description="Print the events of one session still in the log, in order.")
    p.add_argument("--session", required=True, metavar="SID", help="the session id")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    _where(p, data_dir_required=False)
    p.set_defaults(run=_replay)

    p = subparsers.add_parser("rebuild", help="drop and rebuild a stopped node's projection from the log",
                              description="Drop the node's projection and fold it again from the log. "
                                          "The node must be stopped.")
    _where(p, data_dir_required=True)
    p.add_argument("--partition", type=int, action="append", metavar="P",
                   help="only this partition (repeatable; default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_rebuild)

    p = subparsers.add_parser("audit", help="fold the log and compare it with the node's projection",
                              description="Fold the log and compare it with the node's projection; "
                                          "exit code 1 if they differ.")
    _where(p, data_dir_required=True)
    p.add_argument("--max-differences", type=int, default=20, metavar="N",
                   help="differences shown per partition (default 20)")
    p.set_defaults(run=_audit)

    p = subparsers.add_parser("topics", help="describe, create or verify the topics of topics.yaml",
                              description="The cluster's topics against topics.yaml.")
    sub = p.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    for name, run, text in (
            ("describe", _topics_describe, "show each topic's partitions, replication and configs"),
            ("apply", _topics_apply, "create missing topics and set differing configs"),
            ("verify", _topics_verify, "exit code 1 if any topic differs from topics.yaml")):
        q = sub.add_parser(name, help=text, description=text)
        _cluster(q)
        q.add_argument("--node", metavar="NAME", help="also this node's reply and channel topics")
        q.set_defaults(run=run)
