"""MatsSocket's own client integration suite in a real browser: headless Chromium.

Under Node.js (tests/test_matssocket_js.py) the suite skips its three PreConnectionOperation
tests: they need a browser's XMLHttpRequest and cookie jar. Here the test app's node serves
a page (``tests/matssocket_js/browser/suite.html``, at ``/mats/`` from the folder given to
`install`) that loads the client library as ES modules, the suite, and the browser builds of
mocha and chai, all from ``tests/matssocket_js``; `drive_browser.mjs` opens it in Chromium
through puppeteer-core and prints what the page collected. The pre-connection request goes
to the test app, which puts the authorization in a cookie; the browser sends the cookie with
the WebSocket handshake, which the test app's handshake check reads
(`csaf_events.matssocket.testhttp`).

Runs against one embedded node in this process (the suite's two URLs on two of its ports,
the page from a third, so that every pre-connection is cross-origin and CORS is gone through;
the test also checks what the node answered), and against two ``csaf serve --test-app``
processes on a real Kafka broker, one URL each, the page from the first.

Needs Chromium (Debian's ``chromium``, /usr/bin/chromium, or ``$CHROMIUM``), puppeteer-core
(``npm ci`` from the lock file, by the `js_client` fixture), websockets 17+ (earlier versions
refuse the preflight's OPTIONS before the server sees it), and what test_matssocket_js needs.
Anything missing fails the test and says what.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import websockets
from brokers import unique_namespace
from kafka_fixtures import delete_namespace_topics
from serve_process import ServeProcess
from test_matssocket_js import JS_DIR, NodeThread, client_suite, js_client  # noqa: F401 - fixtures
from websockets.http11 import Request, Response

from csaf_events.matssocket import MatsSocketServer

DRIVER = JS_DIR / "browser" / "drive_browser.mjs"
PAGE = "/mats/browser/suite.html"
PAGE_TIMEOUT = 240  # seconds for the whole suite in the page
MIN_PASSES = 80  # the suite has some 85 tests; every one must pass or name itself below
NODE_START = 120  # seconds for the Kafka nodes to listen


def _chromium() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no Chromium at {path}: the browser suite needs it (Debian: apt-get install -y chromium;"
                    " or set CHROMIUM to a Chromium or Chrome executable)")
    return path


@pytest.fixture(scope="session")
def browser(js_client: Path, client_suite: Path) -> str:
    """The Chromium executable, once puppeteer-core and the suite are in place."""
    major = int(websockets.version.version.split(".")[0])
    if major < 17:
        pytest.fail(f"websockets {websockets.version.version}: the browser's CORS preflight (OPTIONS) needs"
                    " websockets 17+, whose server passes non-GET requests to process_request")
    if not (JS_DIR / "node_modules" / "puppeteer-core" / "package.json").exists():
        pytest.fail(f"puppeteer-core is not in {JS_DIR / 'node_modules'} (npm ci there installs it from the lock)")
    return _chromium()


def run_suite(chromium: str, page_port: int, socket_ports: list[int]) -> dict:
    """The suite in Chromium, its page from `page_port`, its sockets to `socket_ports`; the
    page's result (stats, passes, pending, failures)."""
    urls = ",".join(f"ws://localhost:{port}/matssocket" for port in socket_ports)
    page = f"http://localhost:{page_port}{PAGE}?urls={quote(urls, safe='')}"
    env = {**os.environ, "CHROMIUM": chromium}
    try:
        result = subprocess.run(["node", str(DRIVER), page, str(PAGE_TIMEOUT)], cwd=JS_DIR, env=env,
                                capture_output=True, text=True, timeout=PAGE_TIMEOUT + 60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the browser suite did not finish in {PAGE_TIMEOUT + 60}s: {(e.stderr or '')[-3000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        pytest.fail(f"the browser driver failed (exit {result.returncode}): {result.stderr[-3000:]}")
    report = json.loads(lines[-1])
    if "error" in report:
        pytest.fail(f"the page could not run the suite: {report['error']}\n{result.stderr[-3000:]}")
    return report


def assert_all_pass(report: dict) -> None:
    stats = report["stats"]
    print(f"{report['browser']}: {len(report['passes'])} passed, {len(report['pending'])} pending,"
          f" {len(report['failures'])} failed of {stats['tests']}, in {stats.get('duration')} ms")
    failures = [f"{f['title']}: {f['message']}" for f in report["failures"]]
    assert failures == [], f"{len(failures)} of {stats['tests']} failed in {report['browser']}:\n" + "\n".join(failures)
    assert report["pending"] == [], f"skipped in the browser: {report['pending']}"
    assert len(report["passes"]) >= MIN_PASSES, stats
    preconnect = [t for t in report["passes"] if " PreConnectionOperation - " in t]
    assert len(preconnect) == 3, f"the PreConnectionOperation tests that passed: {preconnect}"


class Answers:
    """What a node's HTTP side answered: its http_handler's responses and its handshake
    check's verdicts (101 accepted, or the refusal)."""

    def __init__(self, server: MatsSocketServer) -> None:
        self.seen: list[tuple[str, str, str, int, str]] = []  # (kind, method, path, status, Set-Cookie)
        handler, check = server.http_handler, server.handshake_check
        server.http_handler = lambda ws, request: self._note("http", request, handler(ws, request))
        server.handshake_check = lambda ws, request, response: self._note(
            "handshake", request, check(ws, request, response), response)

    def _note(self, kind: str, request: Request, answer: Response | None,
              accepted: Response | None = None) -> Response | None:
        response = answer or accepted
        if response is not None:
            self.seen.append((kind, request.method, request.path, response.status_code,
                              response.headers.get("Set-Cookie", "")))
        return answer

    def on_socket_path(self, kind: str, method: str, status: int) -> list[tuple[str, str, str, int, str]]:
        return [s for s in self.seen
                if s[:2] == (kind, method) and s[2].split("?")[0] == "/matssocket" and s[3] == status]


def test_the_client_s_suite_passes_in_chromium_against_an_embedded_node(browser: str, tmp_path: Path) -> None:
    """The page from a third port of the node, so that every pre-connection is cross-origin."""
    node = NodeThread(tmp_path / "browser-node", ports=3, files=JS_DIR)
    answers = Answers(node.server)
    try:
        *socket_ports, page_port = node.server.ports
        report = run_suite(browser, page_port, socket_ports)
    finally:
        node.close()
    assert_all_pass(report)
    # what the PreConnectionOperation tests went through on the server
    assert answers.on_socket_path("http", "OPTIONS", 204), "no CORS preflight answered"
    cookies = [cookie for *_, cookie in answers.on_socket_path("http", "GET", 204)]
    assert any(cookie.startswith("MatsSocketAuthCookie=") for cookie in cookies), "no cookie set"
    assert answers.on_socket_path("http", "GET", 401), "no pre-connection refused (:fail_preConnectOperationServlet:)"
    assert answers.on_socket_path("handshake", "GET", 403), "no handshake refused (:fail_checkHandshake:)"
    assert [s for s in answers.on_socket_path("handshake", "GET", 101) if "preconnect" in s[2]], \
        "no socket accepted after a pre-connection"


@pytest.fixture
def kafka_nodes(kafka_bootstrap: str, tmp_path: Path) -> Iterator[list[ServeProcess]]:
    namespace = unique_namespace("ms-browser")
    args = ["--test-app", "--bootstrap", kafka_bootstrap, "--namespace", namespace, "--partitions", "2"]
    env = {"CSAF_TEST_APP_FILES": str(JS_DIR)}  # the page and the suite, served at /mats/
    nodes = [ServeProcess(name, tmp_path, args, env).launch() for name in ("node-a", "node-b")]
    try:
        deadline = time.monotonic() + NODE_START
        for node in nodes:
            node.wait_listening(deadline)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        delete_namespace_topics(kafka_bootstrap, namespace)


@pytest.mark.kafka
def test_the_client_s_suite_passes_in_chromium_against_two_kafka_nodes(browser: str,
                                                                        kafka_nodes: list[ServeProcess]) -> None:
    ports = [node.port for node in kafka_nodes]
    assert_all_pass(run_suite(browser, ports[0], ports))
