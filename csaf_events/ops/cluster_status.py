"""``csaf status``: a Kafka-mode cluster as Kafka itself sees it, without joining it.

Everything comes from Kafka's own group and offset APIs (an `AdminClient`, nothing
consumed, no group joined):

- the owners group ``<namespace>.owners`` (`describe_consumer_groups`): its state and
  members; a member is a node (client id ``csaf-<node>``), and the commands partitions it
  is assigned are the partitions it owns;
- the group's committed offsets on the commands topic (`list_consumer_group_offsets`): how
  far each partition's owner has decided the routed commands, and so, against the
  commands topic's end, how many routed commands wait;
- the end offset of each partition of the events topic and of the sessions topic
  (`list_offsets`, committed records): how big the log and each node's session registry
  feed are (records, including those compaction has not yet dropped).

`cluster_status` returns a dict (``--json`` prints it), `format_table` the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient

from csaf_events.core.errors import CsafError
from csaf_events.kafka.end_offsets import end_offsets
from csaf_events.topics import load_topics, node_of_client


def _partitions(admin: AdminClient, topic: str, timeout: float) -> int:
    try:
        meta = admin.list_topics(topic=topic, timeout=timeout)
    except Exception as e:  # KafkaException: the broker is unreachable
        raise CsafError(f"cannot reach the Kafka cluster: {type(e).__name__}: {e}") from e
    t = meta.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise CsafError(f"topic {topic} does not exist: no csaf cluster in this namespace (or not booted yet)")
    return len(t.partitions)


def cluster_status(bootstrap: str, namespace: str = "csaf", *, timeout: float = 10.0,
                   topics_file: str | Path | None = None) -> dict[str, Any]:
    """The cluster of `namespace` on the Kafka at `bootstrap` (see the module docstring)."""
    topics = load_topics(topics_file, namespace)
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "csaf-status", "log_level": 2,
                         "socket.timeout.ms": int(timeout * 1000)})
    commands, events, sessions = topics.commands.name, topics.events.name, topics.sessions.name
    group = topics.owners_group
    n = _partitions(admin, events, timeout)
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
        committed_tps = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(commands, p) for p in range(n)])],
            request_timeout=timeout)[group].result(timeout).topic_partitions
    except Exception as e:  # KafkaException or a future's timeout
        raise CsafError(f"cannot read the owners group {group}: {type(e).__name__}: {e}") from e
    commands_end = end_offsets(admin, commands, range(n), IsolationLevel.READ_COMMITTED, timeout)
    events_end = end_offsets(admin, events, range(n), IsolationLevel.READ_COMMITTED, timeout)
    sessions_end = end_offsets(admin, sessions, range(topics.sessions.partitions), IsolationLevel.READ_COMMITTED,
                               timeout)
    nodes, owner = [], {}
    for m in sorted(desc.members, key=lambda m: m.client_id):
        name = node_of_client(m.client_id)
        owned = sorted(tp.partition for tp in (m.assignment.topic_partitions if m.assignment else [])
                       if tp.topic == commands)
        nodes.append({"node": name, "client_id": m.client_id, "host": m.host, "member_id": m.member_id,
                      "partitions": owned})
        for p in owned:
            owner[p] = name
    committed = {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in committed_tps}
    rows = []
    for p in range(n):
        c = committed.get(p)
        rows.append({"partition": p, "owner": owner.get(p), "committed_command_offset": c,
                     "commands_end": commands_end.get(p),
                     "commands_waiting": max(0, commands_end.get(p, 0) - (c or 0)),
                     "events_end": events_end.get(p), "sessions_end": sessions_end.get(p)})
    state = getattr(desc.state, "name", str(desc.state))
    return {"bootstrap": bootstrap, "namespace": namespace, "group": group, "group_state": state,
            "nodes": nodes, "partitions": rows, "unowned_partitions": [p for p in range(n) if p not in owner],
            "events_records": sum(v for v in events_end.values() if v and v > 0),
            "registry_records": sum(v for v in sessions_end.values() if v and v > 0)}


def format_table(s: dict[str, Any]) -> str:
    """The status as text: the nodes, then one line per partition."""
    lines = [f"cluster {s['namespace']} at {s['bootstrap']}: owners group {s['group']} {s['group_state']}, "
             f"{len(s['nodes'])} node(s), {len(s['partitions'])} partitions"]
    if s["unowned_partitions"]:
        lines.append(f"NOT OWNED: partitions {', '.join(map(str, s['unowned_partitions']))}")
    lines.append("")
    width = max([4, *(len(n["node"]) for n in s["nodes"])])
    lines.append(f"{'NODE':<{width}}  {'HOST':<15}  PARTITIONS")
    for n in s["nodes"]:
        lines.append(f"{n['node']:<{width}}  {n['host']:<15}  {','.join(map(str, n['partitions'])) or '-'}")
    if not s["nodes"]:
        lines.append("(no node is a member of the owners group)")
    lines.append("")
    cols = ("PARTITION", "OWNER", "COMMITTED", "COMMANDS_END", "WAITING", "EVENTS_END", "SESSIONS_END")
    ow = max([5, *(len(r["owner"] or "-") for r in s["partitions"])])
    lines.append(f"{cols[0]:>9}  {cols[1]:<{ow}}  {cols[2]:>9}  {cols[3]:>12}  {cols[4]:>7}  {cols[5]:>10}  "
                 f"{cols[6]:>12}")

    def v(x: Any) -> str:
        return "-" if x is None else str(x)
    for r in s["partitions"]:
        lines.append(f"{r['partition']:>9}  {r['owner'] or '-':<{ow}}  {v(r['committed_command_offset']):>9}  "
                     f"{v(r['commands_end']):>12}  {r['commands_waiting']:>7}  {v(r['events_end']):>10}  "
                     f"{v(r['sessions_end']):>12}")
    lines.append("")
    lines.append(f"events records {s['events_records']:,}, session registry records {s['registry_records']:,}")
    return "\n".join(lines)
