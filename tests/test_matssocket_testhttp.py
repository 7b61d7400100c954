"""The test app's HTTP side (`csaf_events.matssocket.testhttp`) and the server's HTTP hooks,
spoken to with plain HTTP and a raw WebSocket client: what the browser suite
(tests/test_matssocket_browser.py) relies on, checked without a browser; and a server
without the hooks still answers as before."""

from __future__ import annotations

import asyncio
import base64
import http.client
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from test_matssocket_js import NodeThread
from test_matssocket_protocol import token
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from csaf_events import open_store
from csaf_events.matssocket import MatsSocketServer
from csaf_events.matssocket.testapp import DummyAuthenticator

ORIGIN = "http://localhost:1234"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeThread]:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "page.html").write_text("<p>hello</p>")
    (tmp_path / "secret.txt").write_text("outside")
    node = NodeThread(tmp_path / "node", files=tmp_path / "files")
    try:
        yield node
    finally:
        node.close()


def request(port: int, method: str, path: str, **headers: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_the_pre_connection_puts_the_authorization_in_a_cookie(node: NodeThread) -> None:
    auth = token("bob")
    response = request(node.server.port, "GET", "/matssocket", Authorization=auth, Origin=ORIGIN)
    assert response.status == 204
    cookie = response.getheader("Set-Cookie")
    name, _, rest = cookie.partition("=")
    value = rest.split(";")[0]
    assert name == "MatsSocketAuthCookie" and "Max-Age=30" in cookie and "HttpOnly" in cookie
    assert base64.b64decode(value + "=" * (-len(value) % 4)).decode() == auth
    assert response.getheader("Access-Control-Allow-Origin") == ORIGIN
    assert response.getheader("Access-Control-Allow-Credentials") == "true"


def test_the_pre_connection_refuses_as_the_java_servlet_does(node: NodeThread) -> None:
    port = node.server.port
    assert request(port, "GET", "/matssocket").status == 400  # no Authorization
    assert request(port, "GET", "/matssocket", Authorization="DummyAuth:fail_preConnectOperationServlet:-1",
                   Origin=ORIGIN).status == 401
    assert request(port, "GET", "/matssocket", Authorization=token(), Origin="http://evil.example").status == 403


def test_a_cors_preflight_is_answered_for_allowed_origins_only(node: NodeThread) -> None:
    ok = request(node.server.port, "OPTIONS", "/matssocket", Origin="https://app.mats3.io:8443",
                 **{"Access-Control-Request-Headers": "authorization"})
    assert ok.status == 204
    assert ok.getheader("Access-Control-Allow-Origin") == "https://app.mats3.io:8443"
    assert ok.getheader("Access-Control-Allow-Headers") == "authorization"
    assert request(node.server.port, "OPTIONS", "/matssocket", Origin="http://mats3.io.evil.example").status == 403


def test_files_are_served_from_the_folder_given_and_nothing_outside_it(node: NodeThread) -> None:
    page = request(node.server.port, "GET", "/mats/page.html")
    assert page.status == 200 and page.getheader("Content-Type").startswith("text/html")
    assert request(node.server.port, "GET", "/mats/../secret.txt").status == 404
    assert request(node.server.port, "GET", "/mats/%2e%2e/secret.txt").status == 404
    assert request(node.server.port, "GET", "/mats/nothing.js").status == 404


async def _hello(port: int, query: str, cookie: str | None) -> tuple[dict, str | None]:
    """HELLO and a request to Test.replyWithCookieAuthorization: its answer, and the
    handshake response's Set-Cookie."""
    headers = {"Cookie": cookie} if cookie is not None else {}
    async with connect(f"ws://127.0.0.1:{port}/matssocket{query}", subprotocols=["matssocket"],
                       additional_headers=headers) as ws:
        set_cookie = ws.response.headers.get("Set-Cookie")
        auth = token("carol")
        await ws.send(orjson.dumps([{"t": "HELLO", "clv": "test", "an": "t", "av": "1", "auth": auth, "tid": "h"},
                                    {"t": "REQUEST", "eid": "Test.replyWithCookieAuthorization", "cmid": 1,
                                     "tid": "r", "msg": {"number": 1}}]).decode())
        while True:
            for envelope in orjson.loads(await asyncio.wait_for(ws.recv(), 10)):
                if envelope["t"] == "RESOLVE":
                    return envelope["msg"], set_cookie


def _cookie(value: str) -> str:
    return "other=1; MatsSocketAuthCookie=" + base64.b64encode(value.encode()).decode().rstrip("=")


def test_a_pre_connected_handshake_authenticates_from_the_cookie(node: NodeThread) -> None:
    from_cookie = token("carol")
    cleared = "MatsSocketAuthCookie=; Expires=Sun, 22-Mar-2020 20:00:00 GMT"
    answer, set_cookie = asyncio.run(_hello(node.server.port, "?preconnect=true", _cookie(from_cookie)))
    assert answer["string"] == from_cookie and set_cookie == cleared
    # without ?preconnect the cookie is only cleared, as the Java test server does
    answer, set_cookie = asyncio.run(_hello(node.server.port, "", _cookie(from_cookie)))
    assert answer.get("string") is None and set_cookie == cleared
    answer, set_cookie = asyncio.run(_hello(node.server.port, "", None))
    assert answer.get("string") is None and set_cookie is None


@pytest.mark.parametrize("cookie", [_cookie("DummyAuth:fail_checkHandshake:-1"), "other=1"])
def test_the_handshake_check_refuses_as_the_java_test_server_does(node: NodeThread, cookie: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(_hello(node.server.port, "?preconnect=true", cookie))
    assert refused.value.response.status_code == 403


def test_a_server_without_the_hooks_answers_as_before(tmp_path: Path) -> None:
    store = open_store(node_name="plain", data_dir=tmp_path / "plain")
    store.boot()
    server = MatsSocketServer(store, DummyAuthenticator(), maintenance=None)

    async def check() -> tuple[int, int]:
        await server.start("127.0.0.1", 0)
        try:
            plain = await asyncio.to_thread(request, server.port, "GET", "/matssocket")
            other = await asyncio.to_thread(request, server.port, "GET", "/elsewhere")
            return plain.status, other.status
        finally:
            await server.stop()
    try:
        assert asyncio.run(check()) == (426, 404)
    finally:
        store.close()
