"""Client SEND/REQUEST and the client's RESOLVE/REJECT of server requests, each handled
exactly once: in one unit of work of the session (`csaf_events.core.unit_of_work`).

SEND and REQUEST: the unit puts the client message id in the inbox, runs the handler (what
it stores through its context joins the unit), stores the answer on the inbox entry, and
commits all of it together; only then is the client answered. A second copy (the client
resent after a lost answer, possibly to another node) finds the inbox entry and gets the
stored answer without the handler running; a copy racing the first one on another node
loses at the commit, its unit leaves nothing, and it gets the winner's stored answer. A node
that dies before the commit leaves nothing: the client's resend runs the handler again.

RESOLVE and REJECT answer a server-initiated REQUEST: the unit takes its correlation and
holds what the terminator stores, so a resent reply is ACKed and not handled twice.

A store failure answers RETRY (the client sends again later), with nothing written; a
handler that raises is answered NACK (and that answer is stored like any other).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from csaf_events.core.clock import now_ms
from csaf_events.core.dtos import MessageType as T
from csaf_events.core.errors import ConflictError, CsafError, MessageIdAlreadyExistsError
from csaf_events.matssocket.endpoints import IncomingContext, Resolution
from csaf_events.matssocket.ports import Socket
from csaf_events.matssocket.protocol import DebugOption, Envelope, ProtocolError, message_id

if TYPE_CHECKING:
    from csaf_events.core.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


async def handle(conn: Socket, envelope: Envelope, received: int) -> None:
    """Handle one SEND, REQUEST, RESOLVE or REJECT, and send the client its answer."""
    t = envelope["t"]
    if not isinstance(envelope.get("tid"), str) or not envelope["tid"]:
        raise ProtocolError(f"Missing 'tid' (TraceId) on {t}, cmid:[{envelope.get('cmid')}].")
    cmid_key = message_id(envelope, "cmid")
    if t in (T.RESOLVE, T.REJECT):
        answer = await _reply(conn, envelope, received)
    else:
        answer = await _send_or_request(conn, envelope, cmid_key, received)
    answer["cmid"] = envelope["cmid"]
    await conn.send([answer])
    conn.server.probe("answered", _session_id(conn), envelope)


def _session_id(conn: Socket) -> str:
    """The connection's session id: envelopes are handled only once HELLO established it."""
    assert conn.session_id is not None, "handled only on an established session"
    return conn.session_id


def _debug_options(conn: Socket, envelope: Envelope) -> DebugOption:
    rd = envelope.get("rd")
    if not isinstance(rd, int) or isinstance(rd, bool):
        return DebugOption(0)
    return DebugOption(rd & 0xFF) & conn.allowed_debug


def _context(conn: Socket, envelope: Envelope, endpoint_id: str, received: int, unit: UnitOfWork,
             **extra: Any) -> IncomingContext:
    assert conn.user_id is not None and conn.authorization is not None, "authenticated before HELLO"
    return IncomingContext(
        session_id=_session_id(conn), user_id=conn.user_id, principal=conn.principal,
        authorization=conn.authorization, endpoint_id=endpoint_id, message_type=T(envelope["t"]),
        trace_id=envelope["tid"], message=envelope.get("msg"), client_message_id=envelope["cmid"],
        received_ms=received, debug_options=_debug_options(conn, envelope), _server=conn.server, unit=unit,
        **extra)


def _retry(e: CsafError) -> Envelope:
    return {"t": T.RETRY, "desc": f"{type(e).__name__}: {e}"}


async def _commit(conn: Socket, envelope: Envelope, unit: UnitOfWork, ctx: IncomingContext | None) -> None:
    """Commit the message's unit, then nudge the outboxes it wrote to (raises its error)."""
    sid = _session_id(conn)
    conn.server.probe("handled", sid, envelope)
    await conn.server.io(unit.commit)
    conn.server.probe("committed", sid, envelope)
    for session_id, current in ctx.nudges if ctx is not None else ():
        conn.server.nudge(session_id, current)


async def _send_or_request(conn: Socket, envelope: Envelope, cmid: str, received: int) -> Envelope:
    server, store, sid, t = conn.server, conn.server.store, _session_id(conn), envelope["t"]
    try:
        unit = store.unit_of_work(sid)
        await server.io(unit.store_message_id_in_inbox, sid, cmid)
    except MessageIdAlreadyExistsError:
        return await _stored_answer(conn, t, cmid)
    except CsafError as e:
        log.warning("could not store %s %s of session %s in the inbox; asking for RETRY", t, cmid, sid)
        return _retry(e)
    ctx, received_only = None, unit.savepoint()
    eid = envelope.get("eid")
    endpoint = server.endpoints.get(eid) if isinstance(eid, str) else None
    if endpoint is None:
        answer: Envelope = {"t": T.NACK, "desc": f"An incoming {t} envelope targeted a non-existing MatsSocketEndpoint"}
    elif t == T.REQUEST and not endpoint.replies:
        answer = {"t": T.NACK, "desc": "An incoming REQUEST envelope targeted a MatsSocketEndpoint which is a"
                                       " Terminator, i.e. it won't ever reply"}
    else:
        ctx = _context(conn, envelope, endpoint.endpoint_id, received, unit)
        answer, raised = await _run_handler(conn, endpoint.handler, ctx)
        if raised:  # what it wrote is dropped: the inbox entry and the NACK are all that is stored
            unit.rollback_to(received_only)
            ctx = None
    try:
        try:  # so that a resend gets this same answer (recorded in the unit: no store call)
            unit.update_message_in_inbox(sid, cmid, orjson.dumps({**answer, "cmid": envelope["cmid"]}).decode(), None)
        except ValueError:  # over the store's size limit: a resend gets a plain ACK
            log.warning("the answer to %s %s of session %s is too large to store", t, cmid, sid, exc_info=True)
        await _commit(conn, envelope, unit, ctx)
    except MessageIdAlreadyExistsError:  # a copy of it on another node committed first
        return await _stored_answer(conn, t, cmid)
    except CsafError as e:
        log.warning("could not commit %s %s of session %s; asking for RETRY", t, cmid, sid)
        if unit.is_open:
            unit.rollback()
        return _retry(e)
    return answer


async def _stored_answer(conn: Socket, t: str, cmid: str) -> Envelope:
    """A double delivery: the answer given the first time (ACK if none was stored)."""
    try:
        stored = await conn.server.io(conn.server.store.get_message_from_inbox, conn.session_id, cmid)
    except CsafError as e:
        return _retry(e)
    log.info("double delivery of %s %s on session %s", t, cmid, conn.session_id)
    if stored is None or stored.full_envelope is None:
        return {"t": T.ACK, "desc": f"dupe {t} ACK"}
    answer: Envelope = orjson.loads(stored.full_envelope)
    answer["desc"] = f"dupe {t} stored"
    return answer


async def _reply(conn: Socket, envelope: Envelope, received: int) -> Envelope:
    server, sid, t = conn.server, _session_id(conn), envelope["t"]
    smid = message_id(envelope, "smid")
    try:
        unit = server.store.unit_of_work(sid)
        correlation = await server.io(unit.get_and_delete_request_correlation, sid, smid)
    except CsafError as e:
        return _retry(e)
    if correlation is None:
        unit.rollback()
        return {"t": T.ACK, "desc": f"dupe {t}"}
    terminator = correlation.reply_terminator_id
    endpoint = server.endpoints.get(terminator) if terminator is not None else None
    ctx, taken_only = None, unit.savepoint()
    if endpoint is None:
        log.warning("no terminator %r for the %s of server request %s", correlation.reply_terminator_id, t, smid)
        answer: Envelope = {"t": T.NACK, "desc": f"An incoming {t} targeted a non-existing MatsSocketEndpoint"}
    else:
        ctx = _context(conn, envelope, endpoint.endpoint_id, received, unit,
                       correlation_string=correlation.correlation_string,
                       correlation_binary=correlation.correlation_binary)
        answer, raised = await _run_handler(conn, endpoint.handler, ctx)
        if raised:  # what it wrote is dropped: the correlation is still taken
            unit.rollback_to(taken_only)
            ctx = None
    try:
        await _commit(conn, envelope, unit, ctx)
    except ConflictError:  # another copy of this reply took the correlation first, and is handled there
        return {"t": T.ACK, "desc": f"dupe {t}"}
    except CsafError as e:
        if unit.is_open:
            unit.rollback()
        return _retry(e)
    return answer


async def _run_handler(conn: Socket, handler: Any, ctx: IncomingContext) -> tuple[Envelope, bool]:
    """The answer the handler settled on, and whether it raised."""
    try:
        await handler(ctx)
    except Exception as e:
        log.warning("handler of %s raised; answering NACK", ctx.endpoint_id, exc_info=True)
        return {"t": T.NACK, "desc": f"{type(e).__name__}: {e}"}, True
    resolution = ctx.resolution
    if resolution is Resolution.DENY:
        return {"t": T.NACK}, False
    if resolution in (Resolution.RESOLVE, Resolution.REJECT):
        try:
            orjson.dumps(ctx.reply)
        except TypeError as e:
            log.warning("handler of %s answered with a value that is not JSON; answering NACK", ctx.endpoint_id)
            return {"t": T.NACK, "desc": f"the reply is not a JSON value: {e}"}, False
        answer: Envelope = {"t": T.RESOLVE if resolution is Resolution.RESOLVE else T.REJECT, "tid": ctx.trace_id,
                            "msg": ctx.reply}
        if ctx.debug_options:
            answer["debug"] = conn.server.debug_fields(ctx.debug_options, client_received=ctx.received_ms,
                                                       sent=now_ms())
        return answer, False
    if resolution is Resolution.NO_ACTION and ctx.message_type == T.REQUEST:
        return {"t": T.NACK,
                "desc": "An incoming REQUEST envelope was ignored by the MatsSocket incoming handler."}, False
    return {"t": T.ACK}, False
