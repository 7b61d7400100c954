"""The test application: what the MatsSocket clients' integration suites expect of a server.

`csaf serve --test-app` installs it. It mirrors the Java test server's endpoints (ids such
as ``Test.single``, ``Test.server.send.thread``, ``Test.publish``), its authenticator (tokens
``DummyAuth:<userId>:<expiresMillis>``, -1 for no expiry; user ``enableAllDebugOptions``
may see every debug field; ``:fail_reevaluateAuthentication:`` and
``:fail_reevaluateAuthenticationForOutgoingMessage:`` in a token fail those steps), and
its HTTP side (`csaf_events.matssocket.testhttp`): the side channel ``GET
<path>/sendMessageOnTestTopic?topic=T`` (publishes on T), the pre-connection request that
puts the client's authorization in a cookie and the handshake check that reads it back
(``Test.replyWithCookieAuthorization`` answers it), and, given a folder (``install(server,
files=DIR)``, or ``CSAF_TEST_APP_FILES=DIR`` for ``csaf serve --test-app``), the files under
it at ``/mats/``: how a browser loads the client library and its test suite from the node.
Where the Java server forwards to a Mats endpoint and adapts the reply, this app answers
later (`IncomingContext.answer_later`), which is what such a forward looks like to the client.
The handlers store what they send inside the message's unit of work (``await ctx.send``,
``await ctx.request``, a later answer given before they return), so that it is stored exactly
once with the message; only ``Test.slow`` (which answers after a delay) and
``Test.closeThisSession`` act after the handler returned.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csaf_events.core.clock import now_ms
from csaf_events.matssocket import testhttp
from csaf_events.matssocket.auth import (
    AuthContext,
    Authenticated,
    Authenticator,
    AuthResult,
    InvalidAuthentication,
    StillValid,
)
from csaf_events.matssocket.endpoints import IncomingContext
from csaf_events.matssocket.protocol import DebugOption, random_id
from csaf_events.matssocket.server import MatsSocketServer
from csaf_events.store import ClusterStoreAndForward

CORRELATION_BINARY = b"CorrelationBinary"
FILES_ENV = "CSAF_TEST_APP_FILES"  # the folder `csaf serve --test-app` serves at /mats/


@dataclass(frozen=True)
class DummyPrincipal:
    user_id: str
    authorization: str
    authorization_from_cookie: str | None = None  # what a pre-connection put in the handshake's cookie


class DummyAuthenticator(Authenticator):
    """Accepts ``DummyAuth:<userId>:<expiresMillis>`` until it expires."""

    def initial_authentication(self, ctx: AuthContext, authorization: str) -> AuthResult:
        parts = authorization.split(":")
        if len(parts) != 3 or parts[0] != "DummyAuth":
            return InvalidAuthentication("The Authorization should read 'DummyAuth:<userId>:<expiresMillis>'")
        if "fail_initialAuthentication" in parts[1]:
            return InvalidAuthentication("Asked to fail in initialAuthentication(..)")
        try:
            expires = int(parts[2])
        except ValueError:
            return InvalidAuthentication("The expiresMillis of the DummyAuth is not a number")
        if expires != -1 and expires < now_ms():
            return InvalidAuthentication("This DummyAuth is too old (initialAuthentication).")
        debug = DebugOption(0xFF) if parts[1] == "enableAllDebugOptions" else DebugOption(0)
        principal = DummyPrincipal(parts[1], authorization, testhttp.cookie_authorization(ctx.path, ctx.headers))
        return Authenticated(principal, parts[1], debug)

    def reevaluate_authentication(self, ctx: AuthContext, authorization: str, principal: Any) -> AuthResult:
        if ":fail_reevaluateAuthentication:" in authorization:
            return InvalidAuthentication("Asked to fail in reevaluateAuthentication(..)")
        if principal is not None and principal.authorization == authorization:
            expires = int(authorization.split(":")[2])
            if expires != -1 and expires <= now_ms():
                return InvalidAuthentication("This DummyAuth is too old (reevaluateAuthentication).")
            return StillValid()
        return self.initial_authentication(ctx, authorization)

    def reevaluate_for_outgoing(self, ctx: AuthContext, authorization: str, principal: Any,
                                last_authenticated_ms: int) -> AuthResult:
        if ":fail_reevaluateAuthenticationForOutgoingMessage:" in authorization:
            return InvalidAuthentication("Asked to fail in reevaluateAuthenticationForOutgoingMessage(..)")
        return self.reevaluate_authentication(ctx, authorization, principal)


def _field(msg: Any, name: str, default: Any = None) -> Any:
    return msg.get(name, default) if isinstance(msg, dict) else default


def create_server(store: ClusterStoreAndForward) -> MatsSocketServer:
    """The `csaf serve --app` factory of the test app (files at /mats/ from ``$CSAF_TEST_APP_FILES``)."""
    server = MatsSocketServer(store, DummyAuthenticator())
    files = os.environ.get(FILES_ENV)
    install(server, files=Path(files) if files else None)
    return server


def install(server: MatsSocketServer, files: Path | None = None) -> None:
    """Register the test endpoints and the HTTP side on `server` (`files`: the folder served
    at /mats/, none if None)."""
    background: set[asyncio.Task[Any]] = set()

    def later(coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    @server.endpoint("Test.single")
    async def single(ctx: IncomingContext) -> None:
        if ctx.message_type != "REQUEST":
            return
        reply = ctx.answer_later()
        msg = ctx.message
        await reply.resolve({"number1": len(str(_field(msg, "string", ""))) + len(":FromSingle"),
                             "number2": (_field(msg, "number", 0) or 0) * 2,
                             "requestTimestamp": _field(msg, "requestTimestamp")})

    @server.endpoint("Test.matsSocketPing")
    async def ping(ctx: IncomingContext) -> None:
        number = _field(ctx.message, "number")
        ctx.resolve({"payload": _field(ctx.message, "payload"), "number": number * math.e if number else None})

    @server.endpoint("Test.ignoreInIncomingHandler")
    async def ignore(ctx: IncomingContext) -> None:
        return

    @server.endpoint("Test.denyInIncomingHandler")
    async def deny(ctx: IncomingContext) -> None:
        ctx.deny()

    @server.endpoint("Test.resolveInIncomingHandler")
    async def resolve(ctx: IncomingContext) -> None:
        ctx.resolve({"number": _field(ctx.message, "number"),
                     "string": f"{_field(ctx.message, 'string')}:From_resolveInIncomingHandler",
                     "sleepTime": _field(ctx.message, "sleepTime")})

    @server.endpoint("Test.rejectInIncomingHandler")
    async def reject(ctx: IncomingContext) -> None:
        ctx.reject({"number1": 3, "number2": 4, "requestTimestamp": _field(ctx.message, "requestTimestamp")})

    @server.endpoint("Test.throwsInIncomingHandler")
    async def throws(ctx: IncomingContext) -> None:
        raise RuntimeError("Exception in IncomingAuthorizationAndAdapter should REJECT")

    @server.endpoint("Test.simpleMats")
    async def simple(ctx: IncomingContext) -> None:
        if ctx.message_type == "REQUEST":
            msg = ctx.message
            await ctx.answer_later().resolve({"number": _field(msg, "number"),
                                              "string": f"{_field(msg, 'string')}:FromSimpleMats",
                                              "sleepTime": _field(msg, "sleepTime")})

    @server.endpoint("Test.ignoreInReplyAdapter")
    async def ignore_later(ctx: IncomingContext) -> None:
        # a reply adapter that does nothing: the Java server settles the request with REJECT
        await ctx.answer_later().reject(None)

    @server.endpoint("Test.resolveInReplyAdapter")
    async def resolve_later(ctx: IncomingContext) -> None:
        await ctx.answer_later().resolve({"number1": 1, "number2": 2, "requestTimestamp": 123})

    @server.endpoint("Test.rejectInReplyAdapter")
    async def reject_later(ctx: IncomingContext) -> None:
        await ctx.answer_later().reject({"number1": 1, "number2": 2, "requestTimestamp": 123})

    @server.endpoint("Test.throwsInReplyAdapter")
    async def throws_later(ctx: IncomingContext) -> None:
        await ctx.answer_later().reject({"exception": "Exception in ReplyAdapter should REJECT."})

    @server.endpoint("Test.slow")
    async def slow(ctx: IncomingContext) -> None:
        msg = ctx.message
        await asyncio.sleep((_field(msg, "sleepIncoming", 0) or 0) / 1000)
        if ctx.message_type != "REQUEST":
            return
        reply = ctx.answer_later()

        async def answer() -> None:
            await asyncio.sleep((_field(msg, "sleepTime", 0) or 0) / 1000)
            await reply.resolve({"number": _field(msg, "number"), "string": f"{_field(msg, 'string')}:FromSlow",
                                 "sleepTime": _field(msg, "sleepTime")})
        later(answer())

    async def push_send(ctx: IncomingContext, suffix: str) -> None:
        await ctx.send("ClientSide.terminator", {"number": _field(ctx.message, "number"), "string": ctx.session_id,
                                                 "sleepTime": 1 if suffix == "SentFromMatsStage" else 2},
                       trace_id=f"{ctx.trace_id}:{suffix}")

    @server.terminator("Test.server.send.matsStage")
    async def send_mats_stage(ctx: IncomingContext) -> None:
        await push_send(ctx, "SentFromMatsStage")

    @server.terminator("Test.server.send.thread")
    async def send_thread(ctx: IncomingContext) -> None:
        await push_send(ctx, "SentFromThread")

    for kind in ("direct", "viaMats"):
        async def request_client(ctx: IncomingContext, kind: str = kind) -> None:
            await ctx.request("ClientSide.endpoint", ctx.message, f"Test.server.request.replyReceiver.{kind}",
                              correlation_string="CorrelationString", correlation_binary=CORRELATION_BINARY)

        async def reply_receiver(ctx: IncomingContext) -> None:
            if ctx.correlation_string != "CorrelationString" or ctx.correlation_binary != CORRELATION_BINARY:
                raise ValueError("the correlation data did not come back as stored")
            msg = ctx.message
            await ctx.send("ClientSide.terminator",
                           {"number": _field(msg, "number"), "string": f"{_field(msg, 'string')}:{ctx.message_type}",
                            "sleepTime": _field(msg, "sleepTime")})
        server.terminator(f"Test.server.request.{kind}", request_client)
        server.terminator(f"Test.server.request.replyReceiver.{kind}", reply_receiver)

    @server.endpoint("Test.replyWithCookieAuthorization")
    async def cookie(ctx: IncomingContext) -> None:
        from_cookie = getattr(ctx.principal, "authorization_from_cookie", None)
        ctx.resolve({"number": _field(ctx.message, "number"), "string": from_cookie,
                     "sleepTime": _field(ctx.message, "sleepTime")})

    @server.terminator("Test.closeThisSession")
    async def close_this(ctx: IncomingContext) -> None:
        async def close() -> None:
            await asyncio.sleep(0.25)
            await server.close_session(ctx.session_id, "Invoked via MatsSocket server-side Terminator"
                                                       " Test.closeThisSession")
        later(close())

    @server.terminator("Test.publish")
    async def publish(ctx: IncomingContext) -> None:
        later(server.publish(str(ctx.message), random_id(), {"number": math.pi, "string": "Test from Java!",
                                                              "sleepTime": 42}))

    @server.terminator("Test.renewAuth")
    async def renew_auth(ctx: IncomingContext) -> None:
        await ctx.request("MatsSocket.renewAuth", "", "Test.renewAuth_reply", correlation_string="123",
                          correlation_binary=bytes([1, 2, 3]))

    @server.terminator("Test.renewAuth_reply")
    async def renew_auth_reply(ctx: IncomingContext) -> None:
        if ctx.correlation_string != "123" or ctx.correlation_binary != bytes([1, 2, 3]):
            raise ValueError("the correlation data did not come back as stored")
        await ctx.send("Client.renewAuth_terminator", ctx.authorization)

    server.http_handler = functools.partial(testhttp.http_handler, server,
                                            testhttp.StaticFiles(files) if files is not None else None)
    server.handshake_check = testhttp.check_handshake
