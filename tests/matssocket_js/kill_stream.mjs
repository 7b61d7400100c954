// A stream of client messages from the real MatsSocket JavaScript client to a cluster of
// csaf-events MatsSocket nodes, while tests/test_matssocket_exactly_once.py kills the node the
// client is connected to. Usage:
//   node kill_stream.mjs URL1,URL2 COUNT INTERVAL_MS DEADLINE_MS
// Message i (0 <= i < COUNT) goes out INTERVAL_MS after message i-1: i % 3 == 0 a SEND to
// Test.server.send.thread (the server SENDs {number: i} back on ClientSide.terminator), 1 a
// REQUEST to Test.resolveInIncomingHandler, 2 a REQUEST to Test.simpleMats. Once every message
// has settled, a last SEND (number -1) is a barrier: the outbox is delivered in the order
// stored, so when its server SEND is in, every effect stored before it is in too.
// Prints JSON lines on stdout:
//   {"ev": "established"|"lost", "url": ..., "sent": n}  the socket the client is on (or lost)
//   {"ev": "progress", "sent": n, "settled": m}          after each message goes to the library
//   {"ev": "summary", ...}                               at the end (or at DEADLINE_MS)
// The summary has each message's outcome as the library settled it ("ack" for a SEND,
// "resolve" for a REQUEST when all is well, null while not settled).
// Besides what the library reports (it hides double deliveries), the script counts what crossed
// the wire, through the library's webSocketFactory: each cmid's envelopes out, its answers in,
// and the server message ids of the SENDs for each number.
import * as mats from "matssocket";
import WebSocket from "ws";

const urls = process.argv[2].split(",");
const COUNT = Number(process.argv[3]);
const INTERVAL_MS = Number(process.argv[4]);
const DEADLINE_MS = Number(process.argv[5]);
const BARRIER = -1;
const KINDS = [
    {t: "SEND", eid: "Test.server.send.thread"},
    {t: "REQUEST", eid: "Test.resolveInIncomingHandler", suffix: ":From_resolveInIncomingHandler"},
    {t: "REQUEST", eid: "Test.simpleMats", suffix: ":FromSimpleMats"},
];

function emit(line) {
    console.log(JSON.stringify(line));
}

// :: The wire, below the library's own bookkeeping
const tidOfCmid = new Map();        // cmid -> tid, from the envelopes the client sent
const sendsOut = new Map();         // tid -> how many times its envelope went out
const answersIn = new Map();        // cmid -> [{t, smid, desc}]
const serverSends = new Map();      // number -> Set of smids of server SENDs carrying it
const wsLog = [];                   // what happened to the sockets, for the failure report

function tappedWebSocket(url, protocol) {
    const ws = new WebSocket(url, protocol);
    const send = ws.send.bind(ws);
    ws.send = data => {
        for (const e of JSON.parse(data)) {
            if ((e.t === "SEND" || e.t === "REQUEST") && e.tid !== undefined) {
                tidOfCmid.set(e.cmid, e.tid);
                sendsOut.set(e.tid, (sendsOut.get(e.tid) || 0) + 1);
            }
        }
        send(data);
    };
    ws.addEventListener("message", event => {
        for (const e of JSON.parse(event.data)) {
            if (e.t === "SEND" && e.eid === "ClientSide.terminator") {
                const number = e.msg && e.msg.number;
                if (!serverSends.has(number)) serverSends.set(number, new Set());
                serverSends.get(number).add(e.smid);
            } else if (["ACK", "NACK", "RESOLVE", "REJECT", "RETRY"].includes(e.t) && e.cmid !== undefined) {
                if (!answersIn.has(e.cmid)) answersIn.set(e.cmid, []);
                answersIn.get(e.cmid).push({t: e.t, smid: e.smid, desc: e.desc});
            }
        }
    });
    ws.addEventListener("close", event => wsLog.push({url, close: event.code, reason: event.reason}));
    return ws;
}

const ms = new mats.MatsSocket("ExactlyOnce", "1.0", urls, {webSocketFactory: tappedWebSocket});
ms.logging = false;
const expiry = Date.now() + 15 * 60_000;
ms.setCurrentAuthorization(`DummyAuth:exactly-once:${expiry}`, expiry, 10_000);

let sent = 0;
let settled = 0;
ms.addConnectionEventListener(event => {
    if (event.type === mats.ConnectionEventType.SESSION_ESTABLISHED) {
        emit({ev: "established", url: event.webSocketUrl, sent});
    } else if (event.type === mats.ConnectionEventType.LOST_CONNECTION) {
        emit({ev: "lost", url: event.webSocketUrl, sent});
    }
});
const errors = [];
ms.addErrorEventListener(event => errors.push(`${event.type}: ${event.message}`));

// :: What the library hands the application: server SENDs once per smid
const delivered = new Map();        // number -> times ClientSide.terminator got it
const foreign = new Set();          // numbers whose server SEND did not carry this session's id
let barrierIn;
const barrierArrived = new Promise(resolve => { barrierIn = resolve; });
ms.terminator("ClientSide.terminator", event => {
    const number = event.data.number;
    delivered.set(number, (delivered.get(number) || 0) + 1);
    if (event.data.string !== ms.sessionId) foreign.add(number);
    if (number === BARRIER) barrierIn();
});

const messages = [];

function outcome(message, promise) {
    return promise.then(
        event => { message.outcome = event.type; message.data = event.data; },
        event => { message.outcome = event && event.type !== undefined ? String(event.type) : String(event); })
        .finally(() => { settled++; });
}

function summary(timedOut) {
    const cmidOfTid = new Map([...tidOfCmid].map(([cmid, tid]) => [tid, cmid]));
    return {
        ev: "summary", timedOut, sessionId: ms.sessionId, barrier: delivered.get(BARRIER) || 0, errors, wsLog,
        messages: messages.map(m => {
            const answers = answersIn.get(cmidOfTid.get(m.tid)) || [];
            const item = {
                i: m.i, t: m.t, eid: m.eid, outcome: m.outcome, timesSent: sendsOut.get(m.tid) || 0,
                answers: answers.map(a => a.t),
                dupeAnswers: answers.filter(a => (a.desc || "").startsWith("dupe")).length,
                outboxAnswers: new Set(answers.filter(a => a.smid !== undefined).map(a => a.smid)).size,
            };
            if (m.t === "SEND") {
                item.delivered = delivered.get(m.i) || 0;
                item.serverSends = (serverSends.get(m.i) || new Set()).size;
                item.dataOk = !foreign.has(m.i);
            } else {
                const want = `s${m.i}${m.suffix}`;
                item.dataOk = !!m.data && m.data.number === m.i && m.data.string === want;
                if (!item.dataOk) item.data = m.data === undefined ? null : m.data;
            }
            return item;
        }),
    };
}

const deadline = setTimeout(() => {
    emit(summary(true));
    process.exit(0);
}, DEADLINE_MS);

const pending = [];
for (let i = 0; i < COUNT; i++) {
    const kind = KINDS[i % KINDS.length];
    const message = {i, t: kind.t, eid: kind.eid, suffix: kind.suffix, tid: `eo_${i}_${kind.eid}`, outcome: null};
    messages.push(message);
    const payload = {number: i, string: `s${i}`, sleepTime: 0};
    pending.push(outcome(message, kind.t === "SEND"
        ? ms.send(kind.eid, message.tid, payload)
        : ms.request(kind.eid, message.tid, payload, {timeout: DEADLINE_MS})));
    sent++;
    emit({ev: "progress", sent, settled});
    await new Promise(resolve => setTimeout(resolve, INTERVAL_MS));
}
await Promise.allSettled(pending);
await ms.send("Test.server.send.thread", "eo_barrier", {number: BARRIER, string: "barrier", sleepTime: 0});
await barrierArrived;
clearTimeout(deadline);
emit(summary(false));
// The client keeps timers (pings, reconnects) alive; the stream is over.
process.exit(0);
