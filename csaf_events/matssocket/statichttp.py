"""Static files on a MatsSocket node's HTTP side (its `HttpHandler`).

A browser page that uses the MatsSocket client needs the page and the client library from
somewhere; a node serves them itself, on its own port, so one process is all a demo or a
browser test needs. `StaticFiles` answers ``GET <prefix><file>`` from one folder and never
outside it; `redirect` sends a browser elsewhere (a folder's address to its page).
"""

from __future__ import annotations

import email.utils
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".json": "application/json", ".map": "application/json", ".png": "image/png",
                 ".svg": "image/svg+xml", ".ico": "image/x-icon", ".txt": "text/plain; charset=utf-8"}


def _headers(length: int, **more: str) -> Headers:
    return Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                    ("Content-Length", str(length)), *((k.replace("_", "-"), v) for k, v in more.items())])


class StaticFiles:
    """``GET <prefix><file>``: the files under `root` (nothing outside it)."""

    def __init__(self, root: Path, prefix: str = "/mats/") -> None:
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"prefix must start and end with '/', got {prefix!r}")
        self.root = Path(root).resolve()
        self.prefix = prefix

    def respond(self, ws: ServerConnection, request: Request) -> Response | None:
        """The file's response; 404 for no such file under the root; None for a request
        that is not a GET under the prefix (someone else's to answer)."""
        path = unquote(urlsplit(request.path).path)
        if request.method != "GET" or not path.startswith(self.prefix):
            return None
        file = (self.root / path[len(self.prefix):]).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            return ws.respond(HTTPStatus.NOT_FOUND, f"No file {path}\n")
        body = file.read_bytes()
        headers = _headers(len(body), Cache_Control="no-store",
                           Content_Type=CONTENT_TYPES.get(file.suffix, "application/octet-stream"))
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


def redirect(request: Request, location: str) -> Response:
    """302 to `location`, keeping the request's query (a page's parameters)."""
    query = urlsplit(request.path).query
    target = f"{location}?{query}" if query else location
    body = f"See {target}\n".encode()
    headers = _headers(len(body), Location=target, Content_Type="text/plain; charset=utf-8")
    return Response(HTTPStatus.FOUND.value, HTTPStatus.FOUND.phrase, headers, body)
