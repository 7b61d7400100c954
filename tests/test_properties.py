"""Random API sequences on the embedded store, checked against a reference model.

A hypothesis rule-based state machine calls the API (over small pools of session ids,
message ids, users and connections, including calls that must fail: wrong user,
duplicate ids, bad arguments) and compares every answer and the observable state with
`Model`, a plain in-memory implementation of DESIGN.md section 2. The runs also restart
the store (as another node name too) and compact the log. After each compaction and at
the end of each run, every partition's live projection must equal a fresh projection
folded from the log alone.

The machine's clock only moves forward; a clock that steps back is the subject of
`test_compaction_never_resurrects_a_deleted_entity_when_the_clock_steps_back`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from csaf_events import (
    CurrentNode,
    MessageIdAlreadyExistsError,
    MessageType,
    RequestCorrelation,
    SessionDto,
    StoredInMessage,
    StoredOutMessage,
    WrongUserError,
    open_store,
)
from csaf_events.core.partitioning import partition_for
from projections import queries
from projections.rebuild import apply_chunks, diff, snapshot
from projections.rocks import Projection

PARTITIONS = 4


class ManualClock:
    """Milliseconds since the epoch, moved only by the test."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


def _pool() -> list[str]:
    """Session ids: three sharing one partition (one a prefix of the others), and one more."""
    p = partition_for("s", PARTITIONS)
    same = ["s", *[c for c in (f"s{k}" for k in range(100)) if partition_for(c, PARTITIONS) == p][:2]]
    return [*same, "session-é"]


SIDS = _pool()
USERS = ["u1", "u2"]
CONNS = ["c1", "c2"]
NODES = ["node-a", "node-b"]
CMIDS = ["m1", "m2", "m3"]
SMIDS = ["o1", "o2", "o3", "o4"]

sids = st.sampled_from(SIDS)
cmids = st.sampled_from(CMIDS)
smids = st.sampled_from(SMIDS)
maybe_text = st.none() | st.text(max_size=12)
maybe_bytes = st.none() | st.binary(max_size=16)
types = st.sampled_from(list(MessageType)) | st.sampled_from([t.value for t in MessageType])


# ------------------------------------------------------------------ reference model ----

@dataclass
class Session:
    user_id: str
    node: CurrentNode | None
    lib: str
    app: str
    version: str
    created: int
    live: int


@dataclass
class Out:
    smid: str
    cmid: str | None
    trace: str | None
    type: MessageType
    request_ts: int | None
    stored: int
    envelope: str
    text: str | None
    binary: bytes | None
    attempt: int | None = None
    count: int = 0
    dead: bool = False


@dataclass
class Model:
    """DESIGN.md section 2, as plainly as it can be written."""

    sessions: dict[str, Session] = field(default_factory=dict)
    inbox: dict[tuple[str, str], StoredInMessage] = field(default_factory=dict)
    outbox: dict[str, list[Out]] = field(default_factory=dict)
    corrs: dict[tuple[str, str], RequestCorrelation] = field(default_factory=dict)

    def drop(self, sid: str) -> int:
        """Remove everything stored for a session id; returns how many entries."""
        n = len(self.outbox.pop(sid, []))
        for key in [k for k in self.inbox if k[0] == sid]:
            del self.inbox[key]
            n += 1
        for key in [k for k in self.corrs if k[0] == sid]:
            del self.corrs[key]
            n += 1
        return n

    def fetch(self, sid: str, max_n: int) -> list[StoredOutMessage]:
        out = [self.dto(sid, m) for m in self.outbox.get(sid, []) if m.attempt is None and not m.dead]
        return out[:max_n]

    @staticmethod
    def dto(sid: str, m: Out) -> StoredOutMessage:
        return StoredOutMessage(sid, m.smid, m.trace, m.type, m.cmid, m.request_ts, m.stored, m.attempt, m.count,
                                m.envelope, m.text, m.binary)

    def session_dtos(self) -> list[SessionDto]:
        return sorted((SessionDto(sid, s.user_id, s.node.node_name if s.node else None, s.lib, s.app, s.version,
                                  s.created, s.live) for sid, s in self.sessions.items()),
                      key=lambda d: d.session_id)


# ------------------------------------------------------------------- state machine ----

class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="csaf-prop-"))
        self.clock = ManualClock()
        self.node_name = "node-a"
        self.store = self._open()
        self.model = Model()

    def _open(self):
        s = open_store(self.node_name, self.dir / "node", partitions=PARTITIONS, clock=self.clock)
        s.boot()
        return s

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.check_log_fold()
                # Compaction (as Kafka's cleaner would, with no audit window) must not lose
                # state: the fold of what is left is still the projection ...
                dropped = self.store.node.log.compact(self.clock() + 1, 0, 0)
                self.check_log_fold()
                # ... and a restart on the compacted log shows the same store.
                self.restart(self.node_name)
                self.observable_state_matches_model()
                if dropped:
                    event("compaction dropped records")
        finally:
            if self.store is not None:
                self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(users=st.lists(st.sampled_from(USERS), min_size=3, max_size=3))
    def some_sessions(self, users) -> None:
        """Start with registered sessions (two in one partition), so most calls hit real data."""
        for sid, user in zip(SIDS[1:], users, strict=False):
            self.register(sid, user, "c1", "web", "1.9")

    # ---------------------------------------------------------------------- time ----
    @rule(ms=st.integers(0, 2_000))
    def advance_clock(self, ms: int) -> None:
        self.clock.advance(ms)

    @rule(node=st.sampled_from(NODES))
    def restart(self, node: str) -> None:
        """Close and reopen the data dir, possibly as another node (embedded is one node)."""
        self.store.close()
        self.node_name = node
        self.store = self._open()

    @rule(window=st.integers(0, 3_000), retention=st.integers(0, 3_000))
    def compact_log(self, window, retention) -> None:
        """Compact the log (as Kafka's cleaner does to the events topic) in the middle of the
        run: later appends, restarts and the final checks all work on a compacted log."""
        if self.store.node.log.compact(self.clock(), window, retention):
            event("compaction mid-run dropped records")
        self.check_log_fold()

    # ------------------------------------------------------------------ sessions ----
    @rule(sid=sids, user=st.sampled_from(USERS), conn=st.sampled_from(CONNS),
          app=st.sampled_from(["web", "mobile"]), version=st.sampled_from(["1.10", "1.9", "2"]))
    def register(self, sid, user, conn, app, version) -> None:
        s = self.model.sessions.get(sid)
        now = self.clock()
        if s is not None and s.user_id != user:
            try:
                self.store.register_session_at_this_node(sid, user, conn, "lib", app, version)
            except WrongUserError:
                return
            raise AssertionError("re-register with another user must raise WrongUserError")
        created = self.store.register_session_at_this_node(sid, user, conn, "lib", app, version)
        assert created == (now if s is None else s.created)
        self.model.sessions[sid] = Session(user, CurrentNode(self.node_name, conn), "lib", app, version, created, now)

    @rule(sid=sids, conn=st.sampled_from(CONNS))
    def deregister(self, sid, conn) -> None:
        self.store.deregister_session_from_this_node(sid, conn)
        s = self.model.sessions.get(sid)
        if s is not None and s.node == CurrentNode(self.node_name, conn):
            s.node = None

    @rule(sid=sids)
    def close_session(self, sid) -> None:
        self.store.close_session(sid)
        self.model.sessions.pop(sid, None)
        self.model.drop(sid)

    @rule(ids=st.lists(sids | st.just("ghost"), max_size=4))
    def notify(self, ids) -> None:
        self.store.notify_session_liveliness(ids)
        for sid in ids:
            if sid in self.model.sessions:
                self.model.sessions[sid].live = self.clock()

    @rule(age=st.integers(0, 20_000))
    def timeout(self, age) -> None:
        ts = max(0, self.clock() - age)
        got = self.store.timeout_sessions(ts)
        expected = sorted(sid for sid, s in self.model.sessions.items() if s.live < ts)
        assert sorted(got) == expected
        assert len(got) == len(set(got))
        for sid in expected:
            del self.model.sessions[sid]
            self.model.drop(sid)

    @rule()
    def scavenge(self) -> None:
        owners = {k[0] for k in self.model.inbox} | set(self.model.outbox) | {k[0] for k in self.model.corrs}
        expected = sum(self.model.drop(sid) for sid in owners if sid not in self.model.sessions)
        assert self.store.scavenge_session_remnants() == expected

    @rule(only_active=st.booleans(), user=st.none() | st.sampled_from(USERS),
          app=st.none() | st.sampled_from(["web", "mobile"]), version=st.none() | st.sampled_from(["1.2", "1.9", "2"]))
    def query_sessions(self, only_active, user, app, version) -> None:
        expected = [d for d in self.model.session_dtos()
                    if (d.node_name is not None or not only_active) and user in (None, d.user_id)
                    and app in (None, d.app_name) and (version is None or d.app_version >= version)]
        got = sorted(self.store.get_sessions(only_active, user, app, version), key=lambda d: d.session_id)
        assert got == expected
        assert self.store.get_sessions_count(only_active, user, app, version) == len(expected)

    @rule(sid=sids | st.just("ghost"))
    def current_node(self, sid) -> None:
        s = self.model.sessions.get(sid)
        assert self.store.get_current_registered_node_for_session(sid) == (s.node if s else None)
        assert self.store.is_session_exists(sid) == (s is not None)

    # --------------------------------------------------------------------- inbox ----
    @rule(sid=sids | st.just("ghost"), cmid=cmids)
    def store_inbox(self, sid, cmid) -> None:
        if (sid, cmid) in self.model.inbox:
            try:
                self.store.store_message_id_in_inbox(sid, cmid)
            except MessageIdAlreadyExistsError:
                return
            raise AssertionError("a duplicate inbox id must raise MessageIdAlreadyExistsError")
        self.store.store_message_id_in_inbox(sid, cmid)
        self.model.inbox[(sid, cmid)] = StoredInMessage(sid, cmid, self.clock(), None, None)

    @rule(sid=sids, cmid=cmids, json=maybe_text, binary=maybe_bytes)
    def update_inbox(self, sid, cmid, json, binary) -> None:
        self.store.update_message_in_inbox(sid, cmid, json, binary)
        old = self.model.inbox.get((sid, cmid))
        if old is not None:
            self.model.inbox[(sid, cmid)] = replace(old, full_envelope=json, message_binary=binary)

    @rule(sid=sids, ids=st.lists(cmids, max_size=3))
    def delete_inbox(self, sid, ids) -> None:
        self.store.delete_message_ids_from_inbox(sid, ids)
        for cmid in ids:
            self.model.inbox.pop((sid, cmid), None)

    # -------------------------------------------------------------------- outbox ----
    @rule(sid=sids | st.just("ghost"), smid=smids, type_=types, cmid=st.none() | cmids, trace=maybe_text,
          request_ts=st.none() | st.integers(0, 2**53), envelope=st.text(max_size=12), text=maybe_text,
          binary=maybe_bytes)
    def store_outbox(self, sid, smid, type_, cmid, trace, request_ts, envelope, text, binary) -> None:
        s = self.model.sessions.get(sid)
        box = self.model.outbox.setdefault(sid, []) if s is not None else []
        args = (sid, smid, cmid, trace, type_, request_ts, envelope, text, binary)
        if s is not None and any(m.smid == smid for m in box):
            try:
                self.store.store_message_in_outbox(*args)
            except MessageIdAlreadyExistsError:
                return
            raise AssertionError("a duplicate server message id must raise MessageIdAlreadyExistsError")
        result = self.store.store_message_in_outbox(*args)
        if s is None:
            assert result is None
            return
        assert result == s.node
        box.append(Out(smid, cmid, trace, MessageType(type_), request_ts, self.clock(), envelope, text, binary))

    def _some_session(self, data) -> str:
        """Mostly a session that exists (random choices would mostly hit empty ones)."""
        live = sorted(self.model.sessions)
        return data.draw(st.sampled_from(live) if live else sids)

    @rule(batch=st.lists(st.tuples(smids, types), min_size=1, max_size=4), data=st.data())
    def store_outbox_burst(self, batch, data) -> None:
        """Several messages at once (so ordering and redelivery get exercised often)."""
        sid = self._some_session(data)
        for smid, type_ in batch:
            self.store_outbox(sid, smid, type_, None, "trace", None, "{}", None, data.draw(maybe_bytes))
            self.clock.advance(data.draw(st.integers(0, 3)))

    @rule(data=st.data())
    def delivery_story(self, data) -> None:
        """What nodes do with one session's outbox over time: store a few messages, then
        attempt, dead-letter, complete, unmark and fetch in random order, mostly with ids
        that are in the outbox (random ones would mostly miss)."""
        sid = self._some_session(data)
        for smid in data.draw(st.lists(smids, min_size=1, max_size=4, unique=True)):
            self.store_outbox(sid, smid, MessageType.SEND, None, None, None, "{}", None, None)
        for _ in range(data.draw(st.integers(1, 8))):
            ids = st.sampled_from(sorted({m.smid for m in self.model.outbox.get(sid, [])}) or SMIDS)
            step = data.draw(st.sampled_from(["attempt", "attempt", "dead", "complete", "unmark", "unmark", "get"]))
            if step == "attempt":
                self.attempted(sid, data.draw(st.lists(ids, min_size=1, max_size=3)))
            elif step == "dead":
                self.dead_letter(sid, data.draw(st.lists(ids, min_size=1, max_size=2)))
            elif step == "complete":
                self.complete(sid, data.draw(st.lists(ids, min_size=1, max_size=1)))
            elif step == "unmark":
                self.unmark(sid)
            else:
                self.get_outbox(sid, data.draw(st.integers(1, 5)))

    @rule(sid=sids, max_n=st.integers(0, 5))
    def get_outbox(self, sid, max_n) -> None:
        assert self.store.get_messages_from_outbox(sid, max_n) == self.model.fetch(sid, max_n)

    @rule(sid=sids, ids=st.lists(smids, max_size=3))
    def attempted(self, sid, ids) -> None:
        self.store.outbox_messages_attempted_delivery(sid, ids)
        for m in self.model.outbox.get(sid, []):
            if m.smid in ids:
                m.attempt = self.clock()
                m.count += 1

    @rule(sid=sids)
    def unmark(self, sid) -> None:
        self.store.outbox_messages_unmark_attempted_delivery(sid)
        if any(m.dead for m in self.model.outbox.get(sid, [])):
            event("unmark with a dead letter in the outbox")
        for m in self.model.outbox.get(sid, []):
            if not m.dead:
                m.attempt = None

    @rule(sid=sids, ids=st.lists(smids, max_size=3))
    def complete(self, sid, ids) -> None:
        self.store.outbox_messages_complete(sid, ids)
        if sid in self.model.outbox:
            self.model.outbox[sid] = [m for m in self.model.outbox[sid] if m.smid not in ids]

    @rule(sid=sids, ids=st.lists(smids, max_size=3))
    def dead_letter(self, sid, ids) -> None:
        self.store.outbox_messages_dead_letter_queue(sid, ids)
        for m in self.model.outbox.get(sid, []):
            if m.smid in ids:
                m.dead = True

    # -------------------------------------------------------------- correlations ----
    @rule(sid=sids | st.just("ghost"), smid=smids, ts=st.integers(0, 2**53), term=st.sampled_from(["T1", "T2"]),
          string=maybe_text, binary=maybe_bytes)
    def store_correlation(self, sid, smid, ts, term, string, binary) -> None:
        if (sid, smid) in self.model.corrs:
            try:
                self.store.store_request_correlation(sid, smid, ts, term, string, binary)
            except MessageIdAlreadyExistsError:
                return
            raise AssertionError("a duplicate correlation must raise MessageIdAlreadyExistsError")
        self.store.store_request_correlation(sid, smid, ts, term, string, binary)
        self.model.corrs[(sid, smid)] = RequestCorrelation(sid, smid, ts, term, string, binary)

    @rule(sid=sids | st.just("ghost"), smid=smids)
    def take_correlation(self, sid, smid) -> None:
        assert self.store.get_and_delete_request_correlation(sid, smid) == self.model.corrs.pop((sid, smid), None)

    # ----------------------------------------------------------------- bad input ----
    @rule(data=st.data())
    def bad_call(self, data) -> None:
        sid = data.draw(sids)
        call = data.draw(st.sampled_from([
            lambda s: s.register_session_at_this_node(sid, "", "c1", "lib", "app", "1"),
            lambda s: s.register_session_at_this_node(sid, "u1", None, "lib", "app", "1"),
            lambda s: s.store_message_id_in_inbox(sid, 5),
            lambda s: s.update_message_in_inbox(sid, "m1", "{}", "not bytes"),
            lambda s: s.delete_message_ids_from_inbox(sid, "m1"),
            lambda s: s.store_message_in_outbox(sid, "o1", None, None, "NOPE", None, "{}", None, None),
            lambda s: s.store_message_in_outbox(sid, "o1", None, None, "SEND", True, "{}", None, None),
            lambda s: s.outbox_messages_complete(sid, ["o1", ""]),
            lambda s: s.outbox_messages_attempted_delivery(sid, ["o1", 5]),
            lambda s: s.outbox_messages_dead_letter_queue(sid, "o1"),
            lambda s: s.notify_session_liveliness([sid, None]),
            lambda s: s.timeout_sessions(True),
            lambda s: s.get_messages_from_outbox(sid, -1),
            lambda s: s.store_request_correlation(sid, "o1", "1", "T", None, None),
            lambda s: s.get_sessions(1),
            lambda s: s.close_session(""),
        ]))
        try:
            call(self.store)
        except (TypeError, ValueError):
            return  # the invariants check that nothing changed
        raise AssertionError("bad input must raise TypeError or ValueError")

    # ---------------------------------------------------------------- invariants ----
    @invariant()
    def observable_state_matches_model(self) -> None:
        assert sorted(self.store.get_sessions(False), key=lambda d: d.session_id) == self.model.session_dtos()
        for sid in [*SIDS, "ghost"]:
            assert self.store.get_messages_from_outbox(sid, 100) == self.model.fetch(sid, 100)
            for cmid in CMIDS:
                assert self.store.get_message_from_inbox(sid, cmid) == self.model.inbox.get((sid, cmid))

    # ------------------------------------------------------------------- the log ----
    def check_log_fold(self) -> None:
        """Every partition's projection is exactly the fold of its log."""
        node = self.store.node
        rebuilt_dir = Path(tempfile.mkdtemp(prefix="csaf-fold-", dir=self.dir))
        rebuilt = Projection(rebuilt_dir)
        try:
            for p in range(self.store.partitions):
                apply_chunks(rebuilt, p, node.log.read_chunks(p), node.log.generation(p))
                problems = diff(snapshot(rebuilt, p), snapshot(node.projection, p))
                assert not problems, f"partition {p}: projection differs from the fold of its log:\n" + \
                    "\n".join(problems[:20])
                cp = node.projection.checkpoint(p)
                assert (cp.next_offset if cp else 0) == node.log.end_offset(p)
        finally:
            rebuilt.close()


StoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestStoreAgainstModel = StoreMachine.TestCase


def test_compaction_never_resurrects_a_deleted_entity_when_the_clock_steps_back(tmp_path):
    """A session closed right after the wall clock stepped back (NTP; or, in Kafka mode, a
    new owner whose clock is behind) leaves tombstones with timestamps *older* than the
    records they delete. Compacting the embedded log must still never drop a key's
    tombstone while keeping an earlier record of that key, or a rebuild from the log
    brings the deleted session, inbox entry and outbox message back.

    Bug: csaf_events/embedded/log.py `EmbeddedLog._compact_partition` decides per record
    by its own timestamp: the last record (the tombstone, ts T-1) goes when older than
    `tombstones_before`, but an earlier record of the key (ts T) is kept because it is not
    older than `superseded_before`. Fix: when a key's last record is a tombstone being
    dropped, drop every earlier record of that key too (they are superseded whatever their
    timestamps), or judge records by the largest timestamp seen up to their offset, as
    Kafka's cleaner does by segment."""
    clock = ManualClock()
    store = open_store("node-a", tmp_path / "node", partitions=PARTITIONS, clock=clock)
    store.boot()
    try:
        store.register_session_at_this_node("s1", "u1", "c1", "lib", "app", "1")
        store.store_message_id_in_inbox("s1", "m1")
        store.store_message_in_outbox("s1", "o1", None, None, "SEND", None, "{}", None, None)
        clock.advance(-1)  # the wall clock steps back by 1 ms
        store.close_session("s1")
        assert not store.is_session_exists("s1")
        p = partition_for("s1", PARTITIONS)
        live = snapshot(store.node.projection, p)
        # compacting right away, with no audit window and no tombstone retention: the same
        # happens with the default windows when the clock stepped back by more than the
        # tombstone retention (delete.retention.ms, a day), and compaction runs in between
        store.node.log.compact(clock() + 1, 0, 0)
        rebuilt = Projection(tmp_path / "rebuilt")
        try:
            apply_chunks(rebuilt, p, store.node.log.read_chunks(p), store.node.log.generation(p))
            assert queries.session(rebuilt, p, "s1") is None, "the closed session came back from the log"
            assert queries.inbox(rebuilt, p, "s1", "m1") is None, "its inbox entry came back"
            assert list(queries.outbox_messages(rebuilt, p, "s1")) == [], "its outbox message came back"
            assert diff(snapshot(rebuilt, p), live) == []
        finally:
            rebuilt.close()
    finally:
        store.close()


# ------------------------------------------------------------------- units of work ----
# `StoreMachine` with units of work interleaved: units that commit (at the end of a `with`
# block or by `commit()`), roll back (`rollback()` or an exception in the block), race with
# plain calls and with each other, relay writes to other sessions, and misuse the API. The
# model of a unit is the plain model: each call is the model's answer after the unit's
# earlier calls on the current model (written nowhere); the commit decides them all again
# on the model then (the first error, or ConflictError for a changed answer, and nothing
# changes), then applies the relays to their targets. Every write carries the unit's start.

import copy  # noqa: E402 - this section's own imports
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from csaf_events.core import commands as unit_commands  # noqa: E402
from csaf_events.core.errors import ConflictError, CsafError, UnitOfWorkError  # noqa: E402

#: The store's per-session methods a unit may call for another session (as relays).
RELAYED_CALLS = frozenset({"store_message_in_outbox", "store_request_correlation"})
#: Calls a unit records without asking the owner (commands.BLIND_WRITES): never an error
#: of state, never a ConflictError, at the call.
RECORDED_CALLS = frozenset({
    "deregister_session_from_this_node", "close_session", "update_message_in_inbox",
    "delete_message_ids_from_inbox", "outbox_messages_attempted_delivery",
    "outbox_messages_unmark_attempted_delivery", "outbox_messages_complete", "outbox_messages_dead_letter_queue"})


def model_call(model: Model, node: str, now: int, name: str, args: tuple) -> Any:
    """What the store's `name(*args)` returns at time `now` on node `node`, done on `model`
    (changed in place); raises the store's error. The plain rules of `StoreMachine`, as
    functions of the model alone."""
    sid = args[0]
    s = model.sessions.get(sid)
    box = model.outbox.get(sid, [])
    if name == "register_session_at_this_node":
        _, user, conn, lib, app, version = args
        if s is not None and s.user_id != user:
            raise WrongUserError(sid)
        created = now if s is None else s.created
        model.sessions[sid] = Session(user, CurrentNode(node, conn), lib, app, version, created, now)
        return created
    if name == "deregister_session_from_this_node":
        if s is not None and s.node == CurrentNode(node, args[1]):
            s.node = None
        return None
    if name == "close_session":
        model.sessions.pop(sid, None)
        model.drop(sid)
        return None
    if name == "is_session_exists":
        return s is not None
    if name == "get_current_registered_node_for_session":
        return s.node if s is not None else None
    if name == "store_message_id_in_inbox":
        if (sid, args[1]) in model.inbox:
            raise MessageIdAlreadyExistsError(args[1])
        model.inbox[(sid, args[1])] = StoredInMessage(sid, args[1], now, None, None)
        return None
    if name == "update_message_in_inbox":
        old = model.inbox.get((sid, args[1]))
        if old is not None:
            model.inbox[(sid, args[1])] = replace(old, full_envelope=args[2], message_binary=args[3])
        return None
    if name == "get_message_from_inbox":
        return model.inbox.get((sid, args[1]))
    if name == "delete_message_ids_from_inbox":
        for cmid in args[1]:
            model.inbox.pop((sid, cmid), None)
        return None
    if name == "store_message_in_outbox":
        _, smid, cmid, trace, type_, request_ts, envelope, text, binary = args
        if s is None:
            return None
        if any(m.smid == smid for m in box):
            raise MessageIdAlreadyExistsError(smid)
        model.outbox.setdefault(sid, []).append(
            Out(smid, cmid, trace, MessageType(type_), request_ts, now, envelope, text, binary))
        return s.node
    if name == "get_messages_from_outbox":
        return model.fetch(sid, args[1])
    if name == "outbox_messages_attempted_delivery":
        for m in box:
            if m.smid in args[1]:
                m.attempt, m.count = now, m.count + 1
        return None
    if name == "outbox_messages_unmark_attempted_delivery":
        for m in box:
            if not m.dead:
                m.attempt = None
        return None
    if name == "outbox_messages_complete":
        if sid in model.outbox:
            model.outbox[sid] = [m for m in box if m.smid not in args[1]]
        return None
    if name == "outbox_messages_dead_letter_queue":
        for m in box:
            if m.smid in args[1]:
                m.dead = True
        return None
    if name == "store_request_correlation":
        if (sid, args[1]) in model.corrs:
            raise MessageIdAlreadyExistsError(args[1])
        model.corrs[(sid, args[1])] = RequestCorrelation(*args)
        return None
    if name == "get_and_delete_request_correlation":
        return model.corrs.pop((sid, args[1]), None)
    raise AssertionError(f"no model of {name}")  # pragma: no cover


def model_replay(model: Model, node: str, now: int, steps: list[tuple[str, tuple, Any]]) -> None:
    """Decide a unit's steps again on `model`: the first one's error, or ConflictError for one
    that returns other than it did."""
    for name, args, answered in steps:
        if model_call(model, node, now, name, args) != answered:
            raise ConflictError(f"{name} returns another answer now")


@dataclass
class OpenUnit:
    """A unit of work under test and what the model says it holds."""

    uow: Any
    sid: str
    steps: list[tuple[str, tuple, Any]] = field(default_factory=list)  # (method, args, answer)
    relays: list[tuple[str, tuple]] = field(default_factory=list)


class _Rollback(Exception):
    """Raised inside a unit's `with` block: the unit must roll back."""


def unit_call_args(data: Any, sid: str) -> tuple[str, tuple]:
    """A random per-session call for `sid`: (method name, arguments)."""
    ids = st.lists(cmids, min_size=1, max_size=3)
    out_ids_ = st.lists(smids, min_size=1, max_size=3)
    calls: dict[str, Callable[[], tuple]] = {
        "register_session_at_this_node": lambda: (sid, data.draw(st.sampled_from(USERS)),
                                                  data.draw(st.sampled_from(CONNS)), "lib", "web", "1.9"),
        "deregister_session_from_this_node": lambda: (sid, data.draw(st.sampled_from(CONNS))),
        "close_session": lambda: (sid,),
        "is_session_exists": lambda: (sid,),
        "get_current_registered_node_for_session": lambda: (sid,),
        "store_message_id_in_inbox": lambda: (sid, data.draw(cmids)),
        "update_message_in_inbox": lambda: (sid, data.draw(cmids), data.draw(maybe_text), data.draw(maybe_bytes)),
        "get_message_from_inbox": lambda: (sid, data.draw(cmids)),
        "delete_message_ids_from_inbox": lambda: (sid, data.draw(ids)),
        "store_message_in_outbox": lambda: (sid, data.draw(smids), data.draw(st.none() | cmids), "trace",
                                            data.draw(types), None, "{}", data.draw(maybe_text),
                                            data.draw(maybe_bytes)),
        "get_messages_from_outbox": lambda: (sid, data.draw(st.integers(0, 5))),
        "outbox_messages_attempted_delivery": lambda: (sid, data.draw(out_ids_)),
        "outbox_messages_unmark_attempted_delivery": lambda: (sid,),
        "outbox_messages_complete": lambda: (sid, data.draw(out_ids_)),
        "outbox_messages_dead_letter_queue": lambda: (sid, data.draw(out_ids_)),
        "store_request_correlation": lambda: (sid, data.draw(smids), data.draw(st.integers(0, 2**53)),
                                              data.draw(st.sampled_from(["T1", "T2"])), data.draw(maybe_text),
                                              data.draw(maybe_bytes)),
        "get_and_delete_request_correlation": lambda: (sid, data.draw(smids)),
    }
    name = data.draw(st.sampled_from(sorted(calls)))
    return name, calls[name]()


class UnitMachine(StoreMachine):
    """`StoreMachine` and its rules, with units of work in between."""

    def _pending_relays(self) -> list:
        node = self.store.node
        return [r for p in range(self.store.partitions) for r in node.execute(p, unit_commands.PendingRelays("", p))]

    def _expect(self, error: type[BaseException] | None, call: Callable[[], Any]) -> Any:
        """Run `call`; it must raise exactly `error` (or, for None, return)."""
        try:
            result = call()
        except Exception as e:  # noqa: BLE001 - compared below
            assert error is not None and type(e) is error, f"expected {error}, got {e!r}"
            return None
        assert error is None, f"expected {error.__name__}, the call returned {result!r}"
        return result

    def _unit_call(self, u: OpenUnit, name: str, args: tuple) -> None:
        before = u.uow.calls
        target = args[0]
        if target != u.sid:  # for another session: a relay, or refused
            if name not in RELAYED_CALLS:
                self._expect(UnitOfWorkError, lambda: getattr(u.uow, name)(*args))
            else:
                s = self.model.sessions.get(target)
                answer = (s.node if s else None) if name == "store_message_in_outbox" else None
                assert getattr(u.uow, name)(*args) == answer
                u.relays.append((name, args))
            assert u.uow.calls == before + (name in RELAYED_CALLS)
            return
        error: type[BaseException] | None = None
        answer = None
        if name not in RECORDED_CALLS:
            probe = copy.deepcopy(self.model)
            try:
                model_replay(probe, self.node_name, u.uow.now, u.steps)
                answer = model_call(probe, self.node_name, u.uow.now, name, args)
            except CsafError as e:
                error = type(e)
        got = self._expect(error, lambda: getattr(u.uow, name)(*args))
        if error is None:
            assert got == answer, f"{name}{args} in the unit returned {got!r}, the model says {answer!r}"
            u.steps.append((name, args, answer))
        assert u.uow.calls == before + (error is None), "a call that raised is not part of the unit"

    def _end_unit(self, u: OpenUnit, how: str) -> None:
        if how in ("rollback", "raise"):
            if how == "rollback":
                u.uow.rollback()
            else:
                try:
                    with u.uow:
                        raise _Rollback()
                except _Rollback:
                    pass
        else:
            error: type[BaseException] | None = None
            probe = copy.deepcopy(self.model)
            try:
                model_replay(probe, self.node_name, u.uow.now, u.steps)
            except CsafError as e:
                error = type(e)

            def commit() -> None:
                if how == "with":
                    with u.uow:
                        pass
                else:
                    u.uow.commit()

            self._expect(error, commit)
            if error is None:
                if u.steps or u.relays:
                    event("unit of work committed")
                self.model = probe
                for name, args in u.relays:  # delivered by the commit, once, at the unit's time
                    try:
                        model_call(self.model, self.node_name, u.uow.now, name, args)
                    except MessageIdAlreadyExistsError:
                        pass  # the target holds the id already: the relay is dropped
            else:
                event(f"unit of work failed: {error.__name__}")
        assert self._pending_relays() == []
        self._expect(UnitOfWorkError, lambda: u.uow.is_session_exists(u.sid))
        self._expect(UnitOfWorkError, u.uow.commit)

    # (several rules run `_units`: so that units are a good share of the steps)
    @rule(data=st.data())
    def unit_of_work(self, data: Any) -> None:
        self._units(data, [self._some_session(data)])

    @rule(data=st.data())
    def units_racing_on_one_session(self, data: Any) -> None:
        sid = self._some_session(data)
        self._units(data, [sid, sid])

    @rule(data=st.data(), second=sids)
    def units_of_two_sessions(self, data: Any, second: str) -> None:
        self._units(data, [self._some_session(data), second])

    @rule(data=st.data())
    def unit_relaying(self, data: Any) -> None:
        self._units(data, [self._some_session(data)], relays=4)

    def _units(self, data: Any, unit_sids: list[str], relays: int = 2) -> None:
        """Units of `unit_sids`, their calls interleaved with each other's, with plain calls,
        with time moving on and with misuse; then each ends, in a random order."""
        units = [OpenUnit(self.store.unit_of_work(sid), sid) for sid in unit_sids]
        assert all(u.uow.now == self.clock() for u in units)
        for _ in range(data.draw(st.integers(1, 8))):
            u = data.draw(st.sampled_from(units))
            step = data.draw(st.sampled_from(["call"] * 6 + ["relay"] * relays + ["plain", "plain", "clock", "bad"]))
            if step == "call":
                self._unit_call(u, *unit_call_args(data, u.sid))
            elif step == "relay":  # any per-session call for another session: relayed or refused
                other = data.draw(st.sampled_from([s for s in [*SIDS, "ghost"] if s != u.sid]))
                name, args = unit_call_args(data, other)
                if data.draw(st.booleans()):
                    name, args = "store_message_in_outbox", (other, data.draw(smids), None, None, "SEND",
                                                             None, "{}", data.draw(maybe_text), None)
                self._unit_call(u, name, args)
            elif step == "plain":  # a plain call racing the unit, on its session
                self._racing_plain_call(data, u.sid)
            elif step == "clock":
                self.clock.advance(data.draw(st.integers(1, 3_000)))
            else:
                before = u.uow.calls
                bad = data.draw(st.sampled_from([
                    lambda: u.uow.store_message_id_in_inbox(u.sid, 5),
                    lambda: u.uow.update_message_in_inbox(u.sid, "m1", "{}", "not bytes"),
                    lambda: u.uow.outbox_messages_complete(u.sid, "o1"),
                    lambda: u.uow.get_messages_from_outbox(u.sid, -1),
                    lambda: u.uow.store_message_in_outbox("ghost", "o1", None, None, "NOPE", None, "{}", None, None),
                ]))
                try:
                    bad()
                except (TypeError, ValueError):
                    pass
                else:
                    raise AssertionError("bad input must raise TypeError or ValueError")
                assert u.uow.calls == before
        for u in data.draw(st.permutations(units)):
            self._end_unit(u, data.draw(st.sampled_from(["commit", "with", "with", "rollback", "raise"])))

    def _racing_plain_call(self, data: Any, sid: str) -> None:
        """A plain call on the unit's session, checked against the model by `StoreMachine`."""
        choice = data.draw(st.sampled_from(["inbox", "take", "correlation", "outbox", "complete", "attempt",
                                            "close", "register", "delete"]))
        if choice == "inbox":
            self.store_inbox(sid, data.draw(cmids))
        elif choice == "take":
            self.take_correlation(sid, data.draw(smids))
        elif choice == "correlation":
            self.store_correlation(sid, data.draw(smids), 1, "T1", None, None)
        elif choice == "outbox":
            self.store_outbox(sid, data.draw(smids), "SEND", None, None, None, "{}", None, None)
        elif choice == "complete":
            self.complete(sid, [data.draw(smids)])
        elif choice == "attempt":
            self.attempted(sid, [data.draw(smids)])
        elif choice == "close":
            self.close_session(sid)
        elif choice == "register":
            self.register(sid, data.draw(st.sampled_from(USERS)), data.draw(st.sampled_from(CONNS)), "web", "1.9")
        else:
            self.delete_inbox(sid, [data.draw(cmids)])

    @rule()
    def nested_unit_is_refused(self) -> None:
        """A unit inside the `with` block of another is refused; the outer one goes on."""
        sid = SIDS[0]
        with self.store.unit_of_work(sid) as outer:
            self._expect(UnitOfWorkError, lambda: self.store.unit_of_work(SIDS[1]))
            assert outer.calls == 0

    @rule()
    def fold_matches_log(self) -> None:
        self.check_log_fold()


UnitMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestUnitsOfWorkAgainstModel = UnitMachine.TestCase
