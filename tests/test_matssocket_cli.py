"""``python -m csaf_events.matssocket`` (``csaf serve``): a node from the command line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from csaf_events import open_store
from csaf_events.core.clock import now_ms
from csaf_events.matssocket.cli import load_factory


def port_from_log(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """The port a `csaf serve` process says it listens on (its first one)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"listening on \S+ port\(s\) \[(\d+)", line)
        if match:
            return int(match.group(1))
    process.kill()
    pytest.fail("the node did not log its port:\n" + "".join(seen[-20:]))


async def _hello_and_request(port: int) -> tuple[str, dict]:
    async with connect(f"ws://127.0.0.1:{port}/matssocket", subprotocols=["matssocket"]) as ws:
        await ws.send(orjson.dumps([
            {"t": "HELLO", "clv": "cli-test", "an": "a", "av": "1", "auth": f"DummyAuth:cli:{now_ms() + 60_000}"},
            {"t": "REQUEST", "eid": "Test.resolveInIncomingHandler", "cmid": 1, "tid": "t", "msg": {"string": "x"}},
        ]).decode())
        envelopes: list[dict] = []
        while len(envelopes) < 2:
            envelopes.extend(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
        return envelopes[0]["sid"], envelopes[1]


def test_serve_the_test_app_until_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "cli-node"
    process = subprocess.Popen([sys.executable, "-m", "csaf_events.matssocket", "--test-app", "--port", "0",
                                "--host", "127.0.0.1", "--node-name", "cli-node", "--data-dir", str(data_dir),
                                "--cpus", "0", "--batch-scheduling"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port = port_from_log(process)
        affinities, policies = [], []  # every thread of the node, its client libraries' too
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            try:
                affinities.append(os.sched_getaffinity(int(task.name)))
                policies.append(os.sched_getscheduler(int(task.name)))
            except ProcessLookupError:  # the thread ended meanwhile
                pass
        assert len(affinities) > 3 and all(a == {0} for a in affinities)  # --cpus 0
        assert set(policies) == {os.SCHED_BATCH}  # --batch-scheduling
        sid, answer = asyncio.run(_hello_and_request(port))
        assert answer["t"] == "RESOLVE" and answer["msg"]["string"] == "x:From_resolveInIncomingHandler"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with open_store(node_name="cli-node", data_dir=data_dir) as store:
        # the client's socket was closed with SERVICE_RESTART: its session waits for a reconnect
        assert store.is_session_exists(sid)
        assert store.get_current_registered_node_for_session(sid) is None


@pytest.mark.parametrize("spec", ["no_colon", "csaf_events.matssocket.testapp:no_such_factory", ":x"])
def test_a_bad_app_spec_is_refused_with_its_reason(spec: str) -> None:
    with pytest.raises(ValueError, match="factory"):
        load_factory(spec)


def test_csaf_serve_is_a_subcommand_of_csaf() -> None:
    from csaf_events.matssocket import cli as serve_cli
    from csaf_events.ops import cli

    args = cli.build_parser().parse_args(["serve", "--test-app", "--bootstrap", "k:9092", "--partitions", "3"])
    assert args.run is serve_cli.run and (args.bootstrap, args.partitions, args.test_app) == ("k:9092", 3, True)
