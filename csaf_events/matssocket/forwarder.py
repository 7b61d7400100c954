"""The outbox forwarder of one live session: moves the session's outbox onto its socket.

Woken by `notify()` (a message was stored for the session, here or on another node, or the
client re-authenticated), it loops: fetch up to 20 messages in the order stored, mark them
attempted, send them in one frame; until the outbox has no unattempted message. The client
ACKs each message; the ACK completes it in the store (`Connection`). A message not ACKed
stays attempted: it is not sent again on this socket, and a reconnect (on any node) clears
the marks so that it is sent again there, in order.

Messages being redelivered (``delivery_count > 0``) go one per frame, and a message that
has been attempted `MAX_DELIVERY_ATTEMPTS` times is dead-lettered instead: a message that
makes its client drop the connection every time must not block the session forever.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from csaf_events.core.clock import now_ms
from csaf_events.core.dtos import MessageType, StoredOutMessage
from csaf_events.core.errors import CsafError
from csaf_events.core.session_calls import SessionCalls
from csaf_events.matssocket.ports import Socket
from csaf_events.matssocket.protocol import Envelope

log = logging.getLogger(__name__)

BATCH = 20
MAX_DELIVERY_ATTEMPTS = 10
RETRY_DELAY = 2.5  # seconds after a store failure before the forwarder tries again


class OutboxForwarder:
    """One asyncio task per established connection; see the module docstring."""

    def __init__(self, conn: Socket) -> None:
        self.conn = conn
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._completed_since_fetch: set[str] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"forwarder-{self.conn.session_id}")
        self.notify()

    def notify(self) -> None:
        """New messages may be in the outbox (safe to call any number of times)."""
        self._wake.set()

    def completed(self, server_message_ids: list[str]) -> None:
        """The client ACKed these and they are completed, its ACK2 about to go out: a batch
        fetched before must not send them after that ACK2 (the client would have forgotten
        them, and take the copy as new)."""
        self._completed_since_fetch.update(server_message_ids)

    def stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _run(self) -> None:
        while self.conn.established:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self.conn.established and await self._forward_batch():
                    pass
            except CsafError:
                log.warning("outbox of session %s: store failure; trying again in %s s", self.conn.session_id,
                            RETRY_DELAY, exc_info=True)
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()
            except Exception:
                log.exception("outbox forwarder of session %s failed; trying again at the next message",
                              self.conn.session_id)

    async def _forward_batch(self) -> bool:
        """Send one batch; True if there may be more to send now."""
        conn, server, sid = self.conn, self.conn.server, self.conn.session_id
        assert sid is not None, "a forwarder runs for an established session"
        self._completed_since_fetch = set()  # what was completed before this fetch, it does not return
        messages: list[StoredOutMessage] = await server.io(server.store.get_messages_from_outbox, sid, BATCH)
        if not messages or not await conn.authorized_for_outgoing():
            return False
        dead = [m.server_message_id for m in messages if m.delivery_count >= MAX_DELIVERY_ATTEMPTS]
        if dead:
            log.warning("session %s: dead-lettering %d message(s) after %d attempts: %s", sid, len(dead),
                        MAX_DELIVERY_ATTEMPTS, dead)
            await server.store_calls.call(SessionCalls.outbox_messages_dead_letter_queue, sid, dead)
            server.metrics.dead_letters.inc(len(dead))
            return True
        more = len(messages) == BATCH
        redeliveries = [m for m in messages if m.delivery_count > 0]
        if redeliveries:
            messages, more = redeliveries[:1], True
        ids = [m.server_message_id for m in messages]
        # marked before the send: an ACK racing the mark cannot leave a completed message marked,
        # and a crash between mark and send is undone by the reconnect's unmark
        await server.store_calls.call(SessionCalls.outbox_messages_attempted_delivery, sid, ids)
        messages = [m for m in messages if m.server_message_id not in self._completed_since_fetch]
        if messages and not await conn.send([self._envelope(m) for m in messages]):  # (no await since the filter)
            return False
        if redeliveries:
            server.metrics.redeliveries.inc(len(messages))
        log.debug("session %s: forwarded %d message(s)", sid, len(ids))
        return more

    def _envelope(self, message: StoredOutMessage) -> Envelope:
        envelope: Envelope = orjson.loads(message.envelope)
        # the payload goes out as the JSON text it was stored as: never parsed, never encoded again
        envelope["msg"] = orjson.Fragment(message.message_text) if message.message_text is not None else None
        server = self.conn.server
        if message.type in (MessageType.RESOLVE, MessageType.REJECT):
            debug = envelope.get("debug")
            if debug:  # the options were resolved when the REQUEST came in
                debug.update(server.debug_fields(server.debug_option_of(debug), sent=now_ms()))
        elif message.type in (MessageType.SEND, MessageType.REQUEST):
            envelope = server.with_server_debug(envelope, self.conn.server_debug)
        return envelope
