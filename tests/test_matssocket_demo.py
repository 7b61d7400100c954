"""The demo (`csaf serve --demo`, `csaf_events.matssocket.demo`): its page in headless Chromium
on a two-node cluster, and a node killed under it.

Two ``csaf serve --demo`` processes on a real Kafka broker, two partitions (one each). Two
tabs of the page (the real MatsSocket client, both nodes' URLs), on different nodes, send a
line every 250 ms each. The node of the second tab is killed with SIGKILL while the lines
flow. From what the pages saw (``window.demo.snapshot()``): the second tab reconnects to the
other node; the lines flow on; every line taken by the server (ACKed to its sender) arrives
exactly once in every tab, and no other line arrives; the page's cluster view shows the
surviving node alone, owning both partitions. ``CSAF_DEMO_SCREENSHOT=docs/demo.png`` also
writes the page with both nodes up (before the kill) there.

The rest checks the demo's parts without a broker or a browser: its HTTP side, the chat
line's validation, and ``csaf serve --demo``'s errors when the client library is missing.

Needs what tests/test_matssocket_js.py needs (Node.js, npm, the MatsSocket client), puppeteer-core
(in the lock file) and Chromium; anything missing fails the test and says what.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from brokers import unique_namespace
from browser_tabs import Tabs, chromium
from kafka_fixtures import delete_namespace_topics
from serve_process import ServeProcess
from test_matssocket_js import CLIENT_DIR, js_client  # noqa: F401 - fixture
from websockets.asyncio.client import connect

from csaf_events import open_store
from csaf_events.matssocket import demo

SCREENSHOT_ENV = "CSAF_DEMO_SCREENSHOT"
TICK_MS = 250  # each tab sends a line this often
NODE_START = 120  # seconds for a node to listen
TAKEOVER = 60  # seconds for the killed node's tab to be back, on the other node
OTHER_NODE_TRIES = 12  # tabs opened until one lands on the other node (the client picks a URL at random)


@pytest.fixture
def demo_nodes(kafka_bootstrap: str, js_client: Path, tmp_path: Path) -> Iterator[list[ServeProcess]]:
    namespace = unique_namespace("ms-demo")
    args = ["--demo", "--client-dir", str(CLIENT_DIR), "--bootstrap", kafka_bootstrap, "--namespace", namespace,
            "--partitions", "2"]
    nodes = [ServeProcess(name, tmp_path, args).launch() for name in ("node-a", "node-b")]
    try:
        deadline = time.monotonic() + NODE_START
        for node in nodes:
            node.wait_listening(deadline)
        while True:  # both in the owners group, each serving its partition
            healths = [node.health() for node in nodes]
            if all(h is not None and h["ok"] and h["owned_partitions"] for h in healths):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster did not settle: {healths}\n" + "\n".join(n.tail() for n in nodes))
            time.sleep(0.2)
        yield nodes
    finally:
        for node in nodes:
            node.kill()
        delete_namespace_topics(kafka_bootstrap, namespace)


SNAPSHOT = "demo.snapshot()"


def _open(tabs: Tabs, node: ServeProcess, urls: str, name: str) -> tuple[int, str]:
    """A tab of the page from `node`, with every node's URL; (the tab, the node its socket is on)."""
    tab = tabs.open(f"http://127.0.0.1:{node.port}/?urls={quote(urls, safe='')}&name={name}")
    on = tabs.wait(tab, SNAPSHOT, lambda s: s["node"] is not None, 30, "connected to a node")["node"]
    return tab, on


def _open_on_another_node(tabs: Tabs, node: ServeProcess, urls: str, name: str, not_on: str) -> tuple[int, str]:
    """Tabs opened (and left, their sessions closed) until one lands on a node other than `not_on`."""
    for _ in range(OTHER_NODE_TRIES):
        tab, on = _open(tabs, node, urls, name)
        if on != not_on:
            return tab, on
        tabs.eval(tab, "demo.leave()")
        tabs.close_tab(tab)
    pytest.fail(f"{OTHER_NODE_TRIES} tabs all connected to {not_on}")


def _acked(s: dict) -> int:
    return len(s["acked"])


@pytest.mark.kafka
def test_a_tab_whose_node_is_killed_moves_to_the_other_and_every_line_arrives_once_everywhere(
        demo_nodes: list[ServeProcess], tmp_path: Path) -> None:
    by_name = {node.name: node for node in demo_nodes}
    urls = ",".join(node.url for node in demo_nodes)
    tabs = Tabs(chromium(), tmp_path / "browser.log")
    try:
        def report() -> str:
            return tabs.stderr() + "\n" + "\n".join(node.tail() for node in demo_nodes)

        first, first_node = _open(tabs, demo_nodes[0], urls, "alice")
        second, victim_name = _open_on_another_node(tabs, demo_nodes[1], urls, "bob", first_node)
        victim, survivor = by_name[victim_name], by_name[first_node]
        both = (first, second)
        for tab in both:  # the cluster view: both nodes up, each owning a partition
            tabs.wait(tab, SNAPSHOT, lambda s: len(s["liveNodes"]) == 2 and not s["unowned"]
                      and all(n["owned"] for n in s["liveNodes"]), 15, "showing both nodes owning a partition")
            tabs.eval(tab, f"demo.ticker({TICK_MS})")
        for tab in both:  # lines flow between the nodes, both ways
            tabs.wait(tab, SNAPSHOT, lambda s: _acked(s) >= 15 and sum(i.startswith("alice:") for i in s["received"])
                      >= 10 and sum(i.startswith("bob:") for i in s["received"]) >= 10, 30,
                      "sending and receiving lines")
        screenshot = tmp_path / "demo.png"
        tabs.screenshot(first, screenshot)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])

        before = tabs.eval(second, SNAPSHOT)
        victim.kill()  # SIGKILL, lines in flight both ways
        killed_at = time.monotonic()
        back = tabs.wait(second, SNAPSHOT, lambda s: s["node"] == survivor.name, TAKEOVER,
                         f"reconnected to {survivor.name}")
        moved_after = time.monotonic() - killed_at
        sessions = {c["url"]: c["node"] for c in back["connections"]}
        assert back["sessionId"] == before["sessionId"], "the tab's session did not survive the move"
        assert back["connections"][0]["node"] == victim.name and sessions[survivor.url] == survivor.name
        marks = [_acked(tabs.eval(tab, SNAPSHOT)) for tab in both]
        for tab, mark in zip(both, marks, strict=True):  # the lines flow on, from both tabs
            tabs.wait(tab, SNAPSHOT, lambda s, mark=mark: _acked(s) >= mark + 10, 30, "sending lines after the move")
        for tab in both:
            tabs.eval(tab, "demo.ticker(0)")
        ends = [tabs.wait(tab, SNAPSHOT, lambda s: not s["pending"], 45, "done sending (every line taken)")
                for tab in both]
        taken = {i for s in ends for i in s["acked"]}
        for tab in both:
            tabs.wait(tab, SNAPSHOT, lambda s: taken <= set(s["received"]), 30, "given every line taken")
        time.sleep(1.5)  # a late copy would show up by now
        finals = [tabs.eval(tab, SNAPSHOT) for tab in both]
        for s in finals:
            assert s["failed"] == [] and s["sent"] == _acked(s), (s["name"], s["failed"], s["errors"][:10])
            assert set(s["received"]) == taken, (
                f"{s['name']} got lines nobody had taken: {sorted(set(s['received']) - taken)[:20]}; "
                f"missing {sorted(taken - set(s['received']))[:20]}\n{report()}")
            doubled = {i: n for i, n in s["received"].items() if n != 1}
            assert doubled == {} and s["doubles"] == [], f"{s['name']} got lines more than once: {doubled}"
            assert s["gaps"] == {}, f"{s['name']} misses lines: {s['gaps']}"
        # the lines bob wrote while his node was dead and its partition taken over waited, and arrived once
        assert back["sent"] - _acked(before) >= 10, (before["sent"], _acked(before), back["sent"])
        # the page's cluster view: the survivor alone, owning both partitions
        for tab in both:
            tabs.wait(tab, SNAPSHOT, lambda s: [n["node"] for n in s["liveNodes"]] == [survivor.name]
                      and sorted(s["liveNodes"][0]["owned"]) == [0, 1] and not s["unowned"], 20,
                      f"showing {survivor.name} alone, owning both partitions")
        print(f"{tabs.version}: {len(taken)} lines, each once in both tabs; {victim.name} killed, bob on "
              f"{survivor.name} {moved_after:.1f}s later; refused and sent again: "
              f"{[s['refused'] for s in finals]}")
    finally:
        tabs.close()


# ------------------------------------------------------- the parts, no broker or browser --

class EmbeddedDemo:
    """A demo node on the embedded store, on its own event loop thread."""

    def __init__(self, data_dir: Path, client: Path) -> None:
        self.store = open_store(node_name="demo-node", data_dir=data_dir)
        self.store.boot()
        self.loop = asyncio.new_event_loop()
        self.server = demo.create_server(self.store, client)
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-node", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(10)

    def get(self, path: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        conn.close()
        return response

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.store.close()


@pytest.fixture
def fake_client(tmp_path: Path) -> Path:
    """A folder shaped like the client's (lib/index.js): the HTTP tests need no real one."""
    (tmp_path / "client" / "lib").mkdir(parents=True)
    (tmp_path / "client" / "lib" / "index.js").write_text("export const client = 1;\n")
    (tmp_path / "secret.txt").write_text("outside")
    return tmp_path / "client"


@pytest.fixture
def embedded(tmp_path: Path, fake_client: Path) -> Iterator[EmbeddedDemo]:
    node = EmbeddedDemo(tmp_path / "node", fake_client)
    try:
        yield node
    finally:
        node.close()


def test_the_node_serves_the_page_and_the_client_and_nothing_outside_them(embedded: EmbeddedDemo) -> None:
    root = embedded.get("/?urls=ws://x/matssocket&name=al")
    assert root.status == 302 and root.getheader("Location") == "/demo/index.html?urls=ws://x/matssocket&name=al"
    page = embedded.get("/demo/index.html")
    assert page.status == 200 and page.getheader("Content-Type").startswith("text/html")
    assert b'"matssocket": "./matssocket/lib/index.js"' in page.body  # type: ignore[attr-defined]
    script = embedded.get("/demo/demo.js")
    assert script.status == 200 and script.getheader("Content-Type").startswith("text/javascript")
    client = embedded.get("/demo/matssocket/lib/index.js")
    assert client.status == 200 and client.body == b"export const client = 1;\n"  # type: ignore[attr-defined]
    for outside in ("/demo/matssocket/../../secret.txt", "/demo/matssocket/%2e%2e/%2e%2e/secret.txt",
                    "/demo/%2e%2e/demo.py", "/demo/nothing.html"):
        assert embedded.get(outside).status == 404, outside
    assert embedded.get("/elsewhere").status == 404


def test_whoami_and_a_line_to_the_room_over_the_protocol(embedded: EmbeddedDemo) -> None:
    """A raw protocol client: Chat.whoami names the node; a line comes back to its sender (a
    member of the room); a bad line and a REQUEST to the terminator are NACKed."""
    async def scenario() -> list[dict]:
        async with connect(f"ws://127.0.0.1:{embedded.server.port}/matssocket", subprotocols=["matssocket"]) as ws:
            await ws.send(orjson.dumps([
                {"t": "HELLO", "clv": "raw", "an": demo.APP_NAME, "av": "1", "auth": "Demo:carol"},
                {"t": "REQUEST", "eid": demo.WHOAMI, "cmid": 1, "tid": "w", "msg": {}},
                {"t": "SEND", "eid": demo.SAY, "cmid": 2, "tid": "s", "msg": {"id": "carol:0", "text": "hi"}},
                {"t": "SEND", "eid": demo.SAY, "cmid": 3, "tid": "b", "msg": {"text": "no id"}},
                {"t": "REQUEST", "eid": demo.SAY, "cmid": 4, "tid": "r", "msg": {"id": "carol:1", "text": "x"}},
            ]).decode())
            got: list[dict] = []
            while len([e for e in got if e["t"] != "SUB_OK"]) < 6:
                got.extend(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            return got
    got = asyncio.run(scenario())
    by = {(e["t"], e.get("cmid")): e for e in got}
    assert by[("RESOLVE", 1)]["msg"] == {"node": "demo-node", "sessionId": by[("WELCOME", None)]["sid"]}
    assert ("ACK", 2) in by
    assert "needs an 'id'" in by[("NACK", 3)]["desc"]
    assert ("NACK", 4) in by  # a terminator never replies
    line = next(e for e in got if e["t"] == "SEND")
    assert line["eid"] == demo.LINE_TERMINATOR
    assert {k: line["msg"][k] for k in ("id", "from", "text", "via")} == {"id": "carol:0", "from": "carol",
                                                                           "text": "hi", "via": "demo-node"}


@pytest.mark.parametrize("message, error", [
    ("text", "a Chat.say message is"), ({"id": "", "text": "x"}, "needs an 'id'"),
    ({"id": "x" * 81, "text": "x"}, "needs an 'id'"), ({"id": "a:1", "text": 5}, "needs a 'text'"),
    ({"id": "a:1", "text": "x" * 501}, "needs a 'text'")])
def test_a_bad_chat_line_is_refused_with_its_reason(message: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        demo.chat_line(message)


def test_only_demo_authorizations_are_accepted() -> None:
    from csaf_events.matssocket.auth import AuthContext, Authenticated, InvalidAuthentication
    auth, ctx = demo.DemoAuthenticator(), AuthContext(remote_address="127.0.0.1", path="/matssocket")
    assert isinstance(auth.initial_authentication(ctx, "Demo:bob"), Authenticated)
    for bad in ("DummyAuth:bob:-1", "Demo:", "Demo:with space", "Demo:" + "x" * 33):
        assert isinstance(auth.initial_authentication(ctx, bad), InvalidAuthentication), bad


def test_csaf_serve_demo_without_the_client_says_where_to_get_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != demo.CLIENT_DIR_ENV}
    result = subprocess.run([sys.executable, "-m", "csaf_events.ops.cli", "serve", "--demo", "--client-dir",
                             str(tmp_path / "nothing"), "--data-dir", str(tmp_path / "node"), "--port", "0"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "no lib/index.js" in result.stderr and "--client-dir" in result.stderr
    assert "centiservice/matssocket" in result.stderr and "npm install matssocket" in result.stderr
    assert not (tmp_path / "node").exists()  # refused before the store opened
    wrong = subprocess.run([sys.executable, "-m", "csaf_events.ops.cli", "serve", "--test-app", "--client-dir",
                            str(tmp_path), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "--client-dir goes with --demo" in wrong.stderr


def test_the_client_folder_comes_from_the_option_the_environment_or_the_checkout(
        fake_client: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(demo.CLIENT_DIR_ENV, raising=False)
    assert demo.client_dir(fake_client) == fake_client.resolve()
    monkeypatch.setenv(demo.CLIENT_DIR_ENV, str(fake_client))
    assert demo.client_dir(None) == fake_client.resolve()
    monkeypatch.setenv(demo.CLIENT_DIR_ENV, str(tmp_path / "gone"))
    with pytest.raises(ValueError, match=re.escape(f"${demo.CLIENT_DIR_ENV}")):
        demo.client_dir(None)
    monkeypatch.delenv(demo.CLIENT_DIR_ENV)
    assert demo.CHECKOUT_CLIENT_DIR == CLIENT_DIR  # the default is what the JS tests install
