"""The real MatsSocket JavaScript client against a csaf-events MatsSocket node.

A node (embedded store, the test app of `csaf_events.matssocket.testapp`) runs in this
process on its own event loop thread; `tests/matssocket_js/scenarios.mjs` drives the client
library with the machine's ``node`` (20+) and prints one JSON line per scenario; each test
here asserts one scenario's line, and where it matters what the store holds afterwards.

`test_the_client_s_own_integration_suite_passes` runs MatsSocket's own mocha integration
suite (``matssocket-client-javascript/tests/src``) against another such node.

Installing what node needs, into git-ignored folders of ``tests/matssocket_js``:
- ``ws`` (the client's WebSocket in Node 20), ``mocha`` and ``chai`` (and ``puppeteer-core``
  for tests/test_matssocket_browser.py): ``npm ci`` from the committed lock file, into
  ``node_modules``, when any of them is missing;
- the MatsSocket client library (Apache-2.0), package ``matssocket``. The npm registry this
  project reaches does not serve it, so it is taken from a MatsSocket source checkout:
  ``MATSSOCKET_CLIENT_DIR`` (a folder holding the client's ``package.json`` and ``lib/``), or
  else the client folder of the git repository at ``MATSSOCKET_REPO`` (default: the mirror
  at /work/.mirror/centiservice+matssocket/repo), or else ``npm install matssocket``;
- the client's integration suite, into ``suite``, from the same repository.
Nothing of MatsSocket is committed here. Missing node, npm, client or suite: the tests fail
and say why.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from csaf_events import open_store
from csaf_events.matssocket import MatsSocketServer
from csaf_events.matssocket.testapp import DummyAuthenticator, install

JS_DIR = Path(__file__).parent / "matssocket_js"
CLIENT_DIR = JS_DIR / "node_modules" / "matssocket"
SUITE_DIR = JS_DIR / "suite"
DEFAULT_REPO = "/work/.mirror/centiservice+matssocket/repo"
CLIENT_IN_REPO = "matssocket-client-javascript/client"
SUITE_IN_REPO = "matssocket-client-javascript/tests/src"


def _repo() -> str:
    return os.environ.get("MATSSOCKET_REPO", DEFAULT_REPO)


def _run(cmd: list[str], what: str, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        pytest.fail(f"{what}: {cmd[0]!r} is not installed; the MatsSocket JS client tests need Node.js 20+ and npm")
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def _extract(repo: str, folder: str, paths: list[str], dest: Path) -> bool:
    """Copy `paths` (relative to `folder`) of the repository's HEAD into `dest`; False if
    there is no such repository."""
    if not Path(repo).exists():
        return False
    archive = subprocess.run(["git", "--git-dir", repo, "archive", "HEAD", *(f"{folder}/{p}" for p in paths)],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.fail(f"could not read {folder} from {repo}: {archive.stderr.decode()[-500:]}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            member.name = member.name[len(folder) + 1:]
            if member.name:
                tar.extract(member, dest, filter="data")
    return True


def _missing_packages() -> list[str]:
    """The packages of package.json that node_modules lacks (npm ci installs them all)."""
    manifest = json.loads((JS_DIR / "package.json").read_text())
    names = [*manifest.get("dependencies", {}), *manifest.get("devDependencies", {})]
    return [name for name in names if not (JS_DIR / "node_modules" / name / "package.json").exists()]


@pytest.fixture(scope="session")
def js_client() -> Path:
    """node_modules with ws and the MatsSocket client; returns the scenario script."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed to run the real MatsSocket JavaScript client (install Node.js 20+)")
    version = _run(["node", "--version"], "node --version").stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.fail(f"Node.js 20+ is needed for the MatsSocket JS client tests, found {version}")
    if _missing_packages():
        _run(["npm", "ci", "--no-audit", "--no-fund"], f"npm ci ({', '.join(_missing_packages())} missing)")
    if not (CLIENT_DIR / "lib" / "MatsSocket.js").exists():
        source = os.environ.get("MATSSOCKET_CLIENT_DIR")
        if source:
            shutil.copytree(Path(source), CLIENT_DIR, dirs_exist_ok=True)
        elif not _extract(_repo(), CLIENT_IN_REPO, ["package.json", "lib", "LICENSE"], CLIENT_DIR):
            _run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "matssocket"],
                 "npm install matssocket (no MatsSocket source checkout found: set MATSSOCKET_CLIENT_DIR"
                 " or MATSSOCKET_REPO)")
    if not (CLIENT_DIR / "lib" / "MatsSocket.js").exists():
        pytest.fail(f"the MatsSocket client is not in {CLIENT_DIR} after the install")
    return JS_DIR / "scenarios.mjs"


class NodeThread:
    """A MatsSocket node on its own event loop thread (the test drives it from outside)."""

    def __init__(self, data_dir: Path, ports: int = 1, files: Path | None = None) -> None:
        self.store = open_store(node_name="js-node", data_dir=data_dir)
        self.store.boot()
        self.loop = asyncio.new_event_loop()
        self.server = MatsSocketServer(self.store, DummyAuthenticator())
        install(self.server, files=files)
        self.thread = threading.Thread(target=self.loop.run_forever, name="matssocket-js-node", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", *[0] * ports), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.store.close()


@pytest.fixture(scope="module")
def scenario_results(js_client: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, NodeThread]]:
    node = NodeThread(tmp_path_factory.mktemp("js-node"))
    try:
        result = subprocess.run(["node", str(js_client), f"ws://127.0.0.1:{node.server.port}/matssocket"],
                                cwd=JS_DIR, capture_output=True, text=True, timeout=240)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        if not lines:
            pytest.fail(f"the scenario script printed no result (exit {result.returncode}): {result.stderr[-3000:]}")
        yield {line["name"]: line for line in lines}, node
    finally:
        node.close()


@pytest.fixture(scope="session")
def client_suite(js_client: Path) -> Path:
    """MatsSocket's own client integration suite (mocha), from the MatsSocket repository."""
    if not (SUITE_DIR / "integration_basic_test.js").exists() and not _extract(_repo(), SUITE_IN_REPO, ["."],
                                                                                SUITE_DIR):
        pytest.fail(f"the MatsSocket client's integration suite needs the MatsSocket repository: none at {_repo()}"
                    " (set MATSSOCKET_REPO to a clone of centiservice/matssocket)")
    return SUITE_DIR


def test_the_client_s_own_integration_suite_passes(client_suite: Path, tmp_path: Path) -> None:
    node = NodeThread(tmp_path / "suite-node", ports=2)
    try:
        urls = ",".join(f"ws://127.0.0.1:{port}/matssocket" for port in node.server.ports)
        env = {**os.environ, "MATS_SOCKET_URLS": urls, "NODE_OPTIONS": "--experimental-websocket"}
        mocha = JS_DIR / "node_modules" / ".bin" / "mocha"
        result = subprocess.run([str(mocha), "--exit", "--reporter", "json", "suite/*test.js"], cwd=JS_DIR, env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        node.close()
    report = json.loads(result.stdout[result.stdout.index("{"):])
    stats = report["stats"]
    failures = [f"{t['fullTitle']}: {t['err'].get('message')}" for t in report["failures"]]
    assert failures == [], f"{stats['failures']} of {stats['tests']} failed:\n" + "\n".join(failures)
    # the suite's own skips (3 need a browser's XMLHttpRequest and cookie jar) stay skipped under Node;
    # tests/test_matssocket_browser.py runs them in Chromium
    assert stats["passes"] >= 80 and stats["pending"] <= 3, stats


def _scenario(results: tuple[dict, NodeThread], name: str) -> dict:
    lines, _ = results
    assert name in lines, f"scenario {name} did not run; ran {sorted(lines)}"
    line = lines[name]
    assert line["ok"], f"{name}: {line['detail']}"
    return line["detail"]


@pytest.mark.parametrize("name", [
    "send_ack_and_nack", "requests_resolve_and_reject", "request_reply_to", "server_send", "server_request",
    "pub_sub", "debug_fields", "reauth_incoming_and_outgoing", "renew_auth",
])
def test_client_scenario(scenario_results: tuple[dict, NodeThread], name: str) -> None:
    _scenario(scenario_results, name)


def test_reconnect_keeps_the_session(scenario_results: tuple[dict, NodeThread]) -> None:
    detail = _scenario(scenario_results, "reconnect_keeps_session")
    assert scenario_results[1].store.is_session_exists(detail["sid"]) is False  # closed at the scenario's end


def test_closes_remove_the_session_from_the_store(scenario_results: tuple[dict, NodeThread]) -> None:
    store = scenario_results[1].store
    by_server = _scenario(scenario_results, "server_closes_session")
    assert by_server["code"] == 4000
    by_client = _scenario(scenario_results, "client_closes_session")
    assert not store.is_session_exists(by_server["sid"])
    assert not store.is_session_exists(by_client["sid"])
    assert store.get_sessions_count(False) == 0  # every scenario's session was closed, none left behind
