"""The authentication plugin: turns a client's authorization value into a principal and user id.

A MatsSocket client sends an authorization value (typically a bearer token) with HELLO and
again whenever it changes (``auth`` on any envelope, or an AUTH envelope). The server asks
the `Authenticator` about it on every incoming frame that carries information, and before
forwarding outgoing messages, so that an expired token stops the flow both ways until the
client re-authenticates (the server answers REAUTH and holds messages meanwhile).

Methods may be plain or ``async``; they run on the server's event loop, so a plain method
must not block.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from csaf_events.matssocket.protocol import DebugOption


@dataclass(frozen=True)
class Authenticated:
    """The authorization is valid: who it is, and which debug fields the user may see."""

    principal: Any
    user_id: str
    debug_options: DebugOption = DebugOption(0)  # noqa: RUF009 - a flag value is immutable


@dataclass(frozen=True)
class StillValid:
    """The authorization already accepted is still good (a cheap re-evaluation)."""


@dataclass(frozen=True)
class InvalidAuthentication:
    """The authorization is not (or no longer) valid. At the first evaluation the socket is
    closed (1008); later the client is asked to re-authenticate (REAUTH)."""

    reason: str = "invalid authorization"


AuthResult = Authenticated | StillValid | InvalidAuthentication


@dataclass
class AuthContext:
    """What the authenticator may look at besides the authorization value."""

    remote_address: str | None
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    user_id: str | None = None


class Authenticator:
    """Subclass and implement `initial_authentication`; the other methods have defaults."""

    def initial_authentication(self, ctx: AuthContext, authorization: str) -> AuthResult | Awaitable[AuthResult]:
        """The first evaluation on a socket (with HELLO). Must return `Authenticated` or
        `InvalidAuthentication`."""
        raise NotImplementedError

    def reevaluate_authentication(self, ctx: AuthContext, authorization: str,
                                  principal: Any) -> AuthResult | Awaitable[AuthResult]:
        """Every later incoming frame: `authorization` is the new value if the client sent
        one, else the current. Default: evaluate it as the first time."""
        return self.initial_authentication(ctx, authorization)

    def reevaluate_for_outgoing(self, ctx: AuthContext, authorization: str, principal: Any,
                                last_authenticated_ms: int) -> AuthResult | Awaitable[AuthResult]:
        """Before outgoing messages are forwarded. `InvalidAuthentication` holds them and
        asks the client for REAUTH. Default: evaluate the current value again."""
        return self.reevaluate_authentication(ctx, authorization, principal)

    def authorize_topic(self, ctx: AuthContext, principal: Any, topic: str) -> bool | Awaitable[bool]:
        """May this user subscribe to `topic`? False answers SUB_NO_AUTH. Default: yes."""
        return True


async def resolve(value: Any) -> Any:
    """The result of an authenticator method, awaited if it is awaitable."""
    return await value if inspect.isawaitable(value) else value
