"""Incoming endpoints: the async handlers user code registers for client messages.

A client SEND or REQUEST targets an endpoint id. Its handler gets an `IncomingContext` and
settles the message through it, which decides the answer the client gets:

- returns without a call: SEND is ACKed; REQUEST is NACKed (nobody will ever reply);
- ``ctx.deny()``: NACK;
- ``ctx.resolve(msg)`` / ``ctx.reject(msg)`` (REQUEST only): RESOLVE / REJECT at once;
- ``later = ctx.answer_later()`` (REQUEST only): ACK now; ``await later.resolve(msg)`` or
  ``await later.reject(msg)`` any time afterwards, from anywhere, stores the answer in the
  session's outbox, so it reaches the client even across reconnects and nodes;
- raises: NACK with the error as description.

Exactly once: the handler runs inside a unit of work of the session
(`csaf_events.core.unit_of_work`). The message's inbox entry, what the handler stores through the
context (``await ctx.send(..)``, ``await ctx.request(..)``, ``ctx.unit``'s store calls, a
``later`` answer given before the handler returns) and the answer are committed together, and
only then is the client answered. A node that dies before the commit leaves nothing: the
client sends again and the handler runs again. A copy sent again after the commit gets the
stored answer, and the handler does not run. Effects outside the store (a call to another
service) are at least once. What the handler starts in the background and stores after it
returned (``server.send``, a ``later`` answer given afterwards) is stored on its own, when it
happens: if the node dies first, it never happens.

A *terminator* is an endpoint that never replies: a REQUEST to it is NACKed before the
handler runs. Terminators also receive the client's RESOLVE/REJECT answers to
server-initiated requests (the ``reply_to`` of `MatsSocketServer.request`); for those,
``ctx.message_type`` is RESOLVE or REJECT and ``ctx.correlation_string`` /
``ctx.correlation_binary`` carry what the request stored.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from csaf_events.core.clock import now_ms
from csaf_events.core.dtos import MessageType
from csaf_events.core.errors import UnitOfWorkError
from csaf_events.matssocket.protocol import DebugOption

if TYPE_CHECKING:
    from csaf_events.core.unit_of_work import UnitOfWork

#: Sessions whose outbox a unit of work wrote to, and the node the store named for each:
#: nudged once the unit has committed.
Nudges = list[tuple[str, Any]]


class Resolution(enum.Enum):
    """How a handler settled an incoming message."""

    NO_ACTION = "no action"
    DENY = "deny"
    RESOLVE = "resolve"
    REJECT = "reject"
    LATER = "later"


IncomingHandler = Callable[["IncomingContext"], Awaitable[None]]


@dataclass(frozen=True)
class Endpoint:
    """A registered endpoint id and its handler; `replies` False makes it a terminator."""

    endpoint_id: str
    handler: IncomingHandler
    replies: bool


class Replies(Protocol):
    """What an incoming message's context needs of its node (`MatsSocketServer`)."""

    async def outbox_in(self, unit: UnitOfWork | None, nudges: Nudges | None, session_id: str, type_: MessageType,
                        fields: dict[str, Any], message: Any, *, smid: str | None = None,
                        client_message_id: str | None = None, request_timestamp: int | None = None) -> bool: ...

    async def request_in(self, unit: UnitOfWork | None, nudges: Nudges | None, session_id: str, trace_id: str,
                         client_endpoint_id: str, message: Any, reply_to: str, correlation_string: str | None,
                         correlation_binary: bytes | None) -> bool: ...

    async def store_later_reply(self, later: LaterReply, type_: MessageType, message: Any, unit: UnitOfWork | None,
                                nudges: Nudges | None) -> None: ...


@dataclass
class IncomingContext:
    """One incoming client message, and the means to answer it."""

    session_id: str
    user_id: str
    principal: Any
    authorization: str
    endpoint_id: str
    message_type: MessageType
    trace_id: str
    message: Any
    client_message_id: str | int
    received_ms: int
    debug_options: DebugOption = DebugOption(0)  # noqa: RUF009 - a flag value is immutable
    correlation_string: str | None = None
    correlation_binary: bytes | None = None
    _server: Replies | None = field(default=None, repr=False)
    unit: UnitOfWork | None = field(default=None, repr=False)  # the message's unit of work
    nudges: Nudges = field(default_factory=list, repr=False)  # outboxes written in it, nudged after its commit
    resolution: Resolution = Resolution.NO_ACTION
    reply: Any = None

    async def send(self, client_terminator_id: str, message: Any, *, session_id: str | None = None,
                   trace_id: str | None = None) -> bool:
        """SEND `message` to a client terminator, committed with this message's unit of work:
        of this session by default, or of `session_id` (relayed: delivered exactly once after
        the commit). False if the session does not exist."""
        server = self._server_of()
        return await server.outbox_in(self.unit, self.nudges, session_id or self.session_id, MessageType.SEND,
                                      {"eid": client_terminator_id, "tid": trace_id or self.trace_id}, message)

    async def request(self, client_endpoint_id: str, message: Any, reply_to: str, *,
                      correlation_string: str | None = None, correlation_binary: bytes | None = None,
                      session_id: str | None = None, trace_id: str | None = None) -> bool:
        """A server-initiated REQUEST (`MatsSocketServer.request`) committed with this message's
        unit of work. False if the session does not exist."""
        return await self._server_of().request_in(self.unit, self.nudges, session_id or self.session_id,
                                                  trace_id or self.trace_id, client_endpoint_id, message, reply_to,
                                                  correlation_string, correlation_binary)

    def _server_of(self) -> Replies:
        if self._server is None:
            raise RuntimeError("this context belongs to no server")
        return self._server

    def _settle(self, resolution: Resolution, reply: Any = None) -> None:
        if self.resolution is not Resolution.NO_ACTION:
            raise RuntimeError(f"this {self.message_type} was already settled ({self.resolution.value})")
        self.resolution, self.reply = resolution, reply

    def _request_only(self, what: str) -> None:
        if self.message_type != MessageType.REQUEST:
            raise RuntimeError(f"only a REQUEST can be {what}; this is a {self.message_type}")

    def deny(self) -> None:
        """Refuse the message: the client gets NACK."""
        self._settle(Resolution.DENY)

    def resolve(self, message: Any) -> None:
        """Answer the REQUEST with RESOLVE carrying `message` (any JSON value)."""
        self._request_only("resolved")
        self._settle(Resolution.RESOLVE, message)

    def reject(self, message: Any) -> None:
        """Answer the REQUEST with REJECT carrying `message` (any JSON value)."""
        self._request_only("rejected")
        self._settle(Resolution.REJECT, message)

    def answer_later(self) -> LaterReply:
        """ACK the REQUEST now and answer it later through the returned `LaterReply`."""
        self._request_only("answered later")
        server = self._server_of()
        self._settle(Resolution.LATER)
        return LaterReply(server, self.session_id, self.client_message_id, self.trace_id,
                          self.received_ms, now_ms(), self.debug_options, self)


@dataclass
class LaterReply:
    """The pending answer of a REQUEST; settle it once, from any coroutine on the server's loop."""

    _server: Replies
    session_id: str
    client_message_id: str | int
    trace_id: str
    received_ms: int
    handed_off_ms: int
    debug_options: DebugOption
    _context: IncomingContext | None = field(default=None, repr=False)
    _done: bool = False

    async def resolve(self, message: Any) -> None:
        """Send RESOLVE with `message` to the client (through the session's outbox)."""
        await self._answer(MessageType.RESOLVE, message)

    async def reject(self, message: Any) -> None:
        """Send REJECT with `message` to the client (through the session's outbox)."""
        await self._answer(MessageType.REJECT, message)

    async def _answer(self, type_: MessageType, message: Any) -> None:
        if self._done:
            raise RuntimeError("this REQUEST was already answered")
        self._done = True
        ctx = self._context
        if ctx is not None and ctx.unit is not None and ctx.unit.is_open:  # the handler has not returned yet
            try:
                await self._server.store_later_reply(self, type_, message, ctx.unit, ctx.nudges)
                return
            except UnitOfWorkError:  # its commit began meanwhile: stored on its own
                pass
        await self._server.store_later_reply(self, type_, message, None, None)
