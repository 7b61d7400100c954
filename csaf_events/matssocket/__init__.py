"""A MatsSocket server node on the CSAF store (see docs/matssocket.md).

    from csaf_events.matssocket import MatsSocketServer, Authenticator, Authenticated

The public names are re-exported here; each lives in a module with one job:
`protocol` (envelopes, close codes), `auth` (the authentication plugin), `endpoints`
(incoming handlers), `connection` (one socket's state machine), `incoming` (SEND/REQUEST
and replies), `forwarder` (a session's outbox onto its socket), `topics`, `nodes`
(messages to other nodes), `server` (the node), `cli` (``csaf serve``).
"""

from csaf_events.matssocket.auth import (
    AuthContext,
    Authenticated,
    Authenticator,
    AuthResult,
    InvalidAuthentication,
    StillValid,
)
from csaf_events.matssocket.endpoints import IncomingContext, LaterReply
from csaf_events.matssocket.protocol import SUBPROTOCOL, CloseCode, DebugOption
from csaf_events.matssocket.server import MatsSocketServer

__all__ = [
    "SUBPROTOCOL", "AuthContext", "AuthResult", "Authenticated", "Authenticator", "CloseCode", "DebugOption",
    "IncomingContext", "InvalidAuthentication", "LaterReply", "MatsSocketServer", "StillValid",
]
