"""Stores on every backend (`backends.BACKENDS`) for the log tests (history, rebuild,
audit, compaction).

`log_node` opens stores of one node (restartable: same data dir), on the embedded log or
on a real broker (namespace unique to the test), and knows the matching `csaf` tool
arguments. Test modules import `log_node` and the Kafka fixtures it may ask for.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS, backend_params

from csaf_events import ClusterStoreAndForward, open_store
from csaf_events.core.partitioning import partition_for
from csaf_events.ops.cli import main as cli_main
from projections.files import projection_dir
from projections.rebuild import snapshot
from projections.rocks import Projection

PARTITIONS = 2


@dataclass
class LogNode:
    backend: str
    data_dir: Path
    bootstrap: str | None = None
    namespace: str = "csaf"
    opened: list[ClusterStoreAndForward] = field(default_factory=list)

    @property
    def kafka(self) -> bool:
        return self.bootstrap is not None

    def open(self, boot: bool = True, **kw: Any) -> ClusterStoreAndForward:
        opts: dict[str, Any] = {"partitions": PARTITIONS, **kw}
        if self.kafka:
            opts.update(bootstrap_servers=self.bootstrap, namespace=self.namespace, request_timeout=15.0)
        store = open_store("node-a", self.data_dir, **opts)
        self.opened.append(store)
        if boot:
            store.boot()
        return store

    @property
    def projection_path(self) -> Path:
        return projection_dir(self.data_dir, self.namespace if self.kafka else None)

    def raw_projection(self) -> Projection:
        """The node's database opened directly (the node must be closed)."""
        return Projection(self.projection_path, extra_column_families=() if self.kafka else ("log",))

    def snapshots(self, projection: Projection) -> dict[int, dict[bytes, bytes]]:
        return {p: snapshot(projection, p) for p in range(PARTITIONS)}

    def tool_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir), "--node", "node-a"]
        if self.kafka:
            args += ["--bootstrap", self.bootstrap, "--namespace", self.namespace]
        return args

    def tool(self, *argv: str) -> tuple[int, str, str]:
        """Run a `csaf` log subcommand in this process: (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli_main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def close_all(self) -> None:
        for store in reversed(self.opened):
            store.close()
        self.opened.clear()


@pytest.fixture(params=backend_params())
def log_node(request: pytest.FixtureRequest, tmp_path: Path):
    options = BACKENDS[request.param].options(request)
    node = LogNode(request.param, tmp_path, options.get("bootstrap_servers"), options.get("namespace", "csaf"))
    yield node
    node.close_all()


def sessions_in_partition(partition: int, count: int, prefix: str = "sess") -> list[str]:
    """`count` session ids that all map to `partition`."""
    out, i = [], 0
    while len(out) < count:
        sid = f"{prefix}-{i}"
        if partition_for(sid, PARTITIONS) == partition:
            out.append(sid)
        i += 1
    return out


def populate(store: ClusterStoreAndForward, sessions: int = 6, rounds: int = 3) -> None:
    """State in every partition: sessions, inbox, outbox (some attempted, completed,
    dead-lettered), correlations, a closed session; with superseding updates."""
    for i in range(sessions):
        sid = f"pop-{i}"
        store.register_session_at_this_node(sid, f"user-{i % 2}", f"conn-{i}", "lib 1.0", "app", "1.0")
        for r in range(rounds):
            store.store_message_in_outbox(sid, f"m{r}", None, f"trace-{r}", "SEND", None, "env", f'{{"r":{r}}}',
                                          bytes([r, 255]))
            store.outbox_messages_attempted_delivery(sid, [f"m{r}"])
            store.store_message_id_in_inbox(sid, f"c{r}")
            store.update_message_in_inbox(sid, f"c{r}", "{}", b"\x00")
        store.outbox_messages_unmark_attempted_delivery(sid)
        store.outbox_messages_complete(sid, ["m0"])
        store.outbox_messages_dead_letter_queue(sid, ["m1"])
        store.store_request_correlation(sid, "req", 5, "Term", "corr", b"\x01")
        store.notify_session_liveliness([sid])
    store.close_session("pop-0")
