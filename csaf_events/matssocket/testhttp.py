"""The test app's HTTP side: what the servlets of MatsSocket's Java test server answer.

- The pre-connection request (the client's ``preconnectoperation``): ``GET <path>`` with an
  ``Authorization`` header. A browser cannot put that header on a WebSocket handshake, so
  this request turns it into a cookie, ``MatsSocketAuthCookie`` (the value in base64 without
  padding, 30 s, HttpOnly), which the browser then sends with the handshake. 204; 400
  without the header; 401 for a value containing ``:fail_preConnectOperationServlet:``.
- `check_handshake` (the server's `HandshakeCheck`): a handshake with ``?preconnect`` must
  carry that cookie, and is refused (403) if its value contains ``:fail_checkHandshake:``;
  any such cookie is cleared on the response. `cookie_authorization` gives the value to the
  authenticator, whose principal carries it (``Test.replyWithCookieAuthorization``).
- The side channel ``GET <path>/sendMessageOnTestTopic?topic=T`` publishes on T.
- CORS as the Java server's: a request with an ``Origin`` on localhost (or a loopback
  address), ``*.mats3.io`` or ``*.mats3.org`` is allowed, with cookies and the
  ``Authorization`` header; another origin gets 403. Preflights (``OPTIONS``) get 204.
- `StaticFiles` (`csaf_events.matssocket.statichttp`): ``GET /mats/<file>`` from a folder, as
  the Java server's ``/mats/*`` servlet serves the client library and its tests to a browser.

WebSocket handshakes are not subject to CORS; the Java server accepts any origin for them,
and so does this one.
"""

from __future__ import annotations

import base64
import math
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from csaf_events.matssocket.protocol import random_id
from csaf_events.matssocket.server import MatsSocketServer
from csaf_events.matssocket.statichttp import StaticFiles  # (the test app's too: testhttp.StaticFiles)

AUTH_COOKIE = "MatsSocketAuthCookie"
COOKIE_SECONDS = 30  # the Java servlet's Max-Age: the cookie only has to outlive the connect
CLEAR_COOKIE = f"{AUTH_COOKIE}=; Expires=Sun, 22-Mar-2020 20:00:00 GMT"
ALLOWED_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ALLOWED_DOMAINS = ("mats3.io", "mats3.org")


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a ``Cookie`` header, None if absent."""
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def _decode(value: str) -> str | None:
    """A cookie's base64 value (padding left off), None if it is no base64 of UTF-8."""
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None


def _preconnect(path: str) -> bool:
    return "preconnect" in parse_qs(urlsplit(path).query, keep_blank_values=True)


def cookie_authorization(path: str, headers: dict[str, str]) -> str | None:
    """The authorization a pre-connection put in the cookie, for a socket whose handshake
    asked for ``?preconnect`` (`AuthContext.path` and ``.headers``); None otherwise."""
    value = cookie_value(headers.get("cookie"), AUTH_COOKIE) if _preconnect(path) else None
    return _decode(value) if value is not None else None


def check_handshake(ws: ServerConnection, request: Request, response: Response) -> Response | None:
    """The Java test server's ``checkHandshake``: clears the cookie; with ``?preconnect``
    the cookie must be there, and a ``:fail_checkHandshake:`` value refuses the socket."""
    headers = request.headers.get_all("Cookie")
    if not headers:
        return None
    response.headers["Set-Cookie"] = CLEAR_COOKIE
    if not _preconnect(request.path):
        return None
    value = cookie_value(headers[0], AUTH_COOKIE)
    authorization = _decode(value) if value is not None else None
    if value is None:
        reason = f"Cookie with name '{AUTH_COOKIE}' was not present!"
    elif authorization is None:
        reason = f"Cookie '{AUTH_COOKIE}' is not base64"
    elif ":fail_checkHandshake:" in authorization:
        reason = "Asked to fail in checkHandshake(..)"
    else:
        return None
    refused = ws.respond(HTTPStatus.FORBIDDEN, reason + "\n")
    refused.headers["Set-Cookie"] = CLEAR_COOKIE
    return refused


def _origin_allowed(origin: str) -> bool:
    url = urlsplit(origin)
    host = url.hostname or ""
    return url.scheme in ("http", "https") and (
        host in ALLOWED_HOSTS or any(host == d or host.endswith("." + d) for d in ALLOWED_DOMAINS))


def _cors(request: Request, headers: Headers) -> bool:
    """Add the CORS headers for the request's origin; False if that origin is refused."""
    origin = request.headers.get("Origin")
    if origin is None:
        headers["X-MatsSocketServer-CORS"] = "NoOriginHeaderInRequest_Ok"
        return True
    if not _origin_allowed(origin):
        return False
    headers["Access-Control-Allow-Origin"] = origin
    headers["Vary"] = "Origin"
    headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Allow-Headers"] = "authorization"
    return True


def _answer(ws: ServerConnection, request: Request, status: HTTPStatus, text: str = "",
            cookie: str | None = None) -> Response:
    response = ws.respond(status, text)
    if not _cors(request, response.headers):
        return ws.respond(HTTPStatus.FORBIDDEN, f"Origin {request.headers.get('Origin')} is not allowed\n")
    if cookie is not None:
        response.headers["Set-Cookie"] = cookie
    return response


def pre_connection(ws: ServerConnection, request: Request) -> Response:
    """``GET <path>``: the ``Authorization`` header into the cookie."""
    authorization = request.headers.get("Authorization")
    if authorization is None:
        return _answer(ws, request, HTTPStatus.BAD_REQUEST, "An Authorization header is required\n")
    if ":fail_preConnectOperationServlet:" in authorization:
        return _answer(ws, request, HTTPStatus.UNAUTHORIZED)
    encoded = base64.b64encode(authorization.encode()).decode().rstrip("=")
    return _answer(ws, request, HTTPStatus.NO_CONTENT,
                   cookie=f"{AUTH_COOKIE}={encoded}; Max-Age={COOKIE_SECONDS}; HttpOnly")


def _publish_on_test_topic(server: MatsSocketServer, ws: ServerConnection, request: Request) -> Response:
    topic = parse_qs(urlsplit(request.path).query).get("topic", [""])[0]
    if not topic:
        return _answer(ws, request, HTTPStatus.BAD_REQUEST, "topic= is required\n")
    server.spawn(server.publish(topic, random_id(), {"number": math.pi, "string": f"Publish to {topic}"}))
    return _answer(ws, request, HTTPStatus.NO_CONTENT)


def http_handler(server: MatsSocketServer, files: StaticFiles | None, ws: ServerConnection,
                 request: Request) -> Response | None:
    """The test app's `HttpHandler` (bind `server` and `files` with functools.partial)."""
    path = urlsplit(request.path).path
    if path in (server.path, f"{server.path}/sendMessageOnTestTopic"):
        if request.method == "OPTIONS":
            return _answer(ws, request, HTTPStatus.NO_CONTENT)
        if request.method != "GET":
            return None
        return pre_connection(ws, request) if path == server.path else _publish_on_test_topic(server, ws, request)
    return files.respond(ws, request) if files is not None else None
