// Drives the real MatsSocket JavaScript client against a csaf-events MatsSocket node running
// the test app (csaf_events.matssocket.testapp). Usage: node scenarios.mjs ws://host:port/matssocket
// Runs every scenario in turn and prints one JSON line per scenario:
//   {"name": ..., "ok": true|false, "detail": ..., "sid": <session id, when the test needs it>}
// tests/test_matssocket_js.py asserts on these lines (and on the store, for the session ids).
import * as mats from "matssocket";

const url = process.argv[2];
const TIMEOUT_MS = 8000;

function setAuth(ms, userId = "standard", duration = 20000, roomForLatency = 10000) {
    const expiry = Date.now() + duration;
    ms.setCurrentAuthorization(`DummyAuth:${userId}:${expiry}`, expiry, roomForLatency);
}

function newSocket(userId = "standard", duration = 20000, roomForLatency = 10000) {
    const ms = new mats.MatsSocket("TestApp", "1.2.3", [url]);
    ms.logging = false;
    setAuth(ms, userId, duration, roomForLatency);
    return ms;
}

function eventually(promise, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${TIMEOUT_MS} ms: ${what}`)), TIMEOUT_MS);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function check(condition, message) {
    if (!condition) throw new Error(message);
}

function nextMessage(register) {
    return new Promise(resolve => register(resolve));
}

const scenarios = {
    // SEND -> ACK; SEND to an unknown endpoint -> NACK.
    async send_ack_and_nack(ms) {
        const ack = await ms.send("Test.single", "SEND_" + ms.randomId(6), {string: "s", number: Math.PI});
        check(ack.type === mats.ReceivedEventType.ACK, `expected ACK, got ${ack.type}`);
        const nack = await ms.send("NON EXISTING!", "SEND_" + ms.randomId(6), {}).then(
            () => { throw new Error("a SEND to an unknown endpoint resolved"); }, e => e);
        check(nack.type === mats.ReceivedEventType.NACK, `expected NACK, got ${nack.type}`);
        return {ack: ack.type, nack: nack.type};
    },

    // REQUEST answered later through the outbox, and directly in the incoming handler.
    async requests_resolve_and_reject(ms) {
        const later = await ms.request("Test.single", "REQ_" + ms.randomId(6), {string: "ab", number: 2});
        check(later.data.number2 === 4, `later RESOLVE data ${JSON.stringify(later.data)}`);
        const direct = await ms.request("Test.resolveInIncomingHandler", "REQ_" + ms.randomId(6),
            {string: "x", number: 1, sleepTime: 0});
        check(direct.data.string === "x:From_resolveInIncomingHandler", `direct RESOLVE ${JSON.stringify(direct.data)}`);
        const outcomes = {};
        for (const eid of ["Test.rejectInIncomingHandler", "Test.denyInIncomingHandler",
            "Test.throwsInIncomingHandler", "Test.ignoreInIncomingHandler", "Test.rejectInReplyAdapter"]) {
            const settled = await ms.request(eid, "REQ_" + ms.randomId(6), {}).then(
                () => "resolved", e => e.type);
            outcomes[eid] = settled;
            check(settled !== "resolved", `${eid} resolved; it must reject`);
        }
        check(outcomes["Test.rejectInIncomingHandler"] === mats.MessageEventType.REJECT, JSON.stringify(outcomes));
        check(outcomes["Test.rejectInReplyAdapter"] === mats.MessageEventType.REJECT, JSON.stringify(outcomes));
        return outcomes;
    },

    // requestReplyTo: the reply goes to a client terminator with the correlation information.
    async request_reply_to(ms) {
        const correlation = ms.randomId(5);
        const got = nextMessage(resolve => ms.terminator("ClientSide.testTerminator", resolve));
        await ms.requestReplyTo("Test.single", "RRT_" + ms.randomId(6), {string: "a", number: 1},
            "ClientSide.testTerminator", correlation);
        const event = await eventually(got, "reply on ClientSide.testTerminator");
        check(event.correlationInformation === correlation, `correlation ${event.correlationInformation}`);
        return {correlation: event.correlationInformation};
    },

    // Server-initiated SEND through the outbox to a client terminator.
    async server_send(ms) {
        const got = nextMessage(resolve => ms.terminator("ClientSide.terminator", resolve));
        await ms.send("Test.server.send.thread", "PUSH_" + ms.randomId(6), {number: 7});
        const event = await eventually(got, "server SEND on ClientSide.terminator");
        check(event.data.string === ms.sessionId, `SEND data ${JSON.stringify(event.data)}`);
        return {data: event.data};
    },

    // Server-initiated REQUEST: the client endpoint's RESOLVE and REJECT reach the server's reply terminator.
    async server_request(ms) {
        let answer = "resolve";
        ms.endpoint("ClientSide.endpoint", event => answer === "resolve"
            ? Promise.resolve({...event.data, string: event.data.string + ":fromClient"})
            : Promise.reject({...event.data, string: event.data.string + ":fromClient"}));
        const received = [];
        let notify;
        ms.terminator("ClientSide.terminator", event => { received.push(event.data.string); notify(); });
        for (const a of ["resolve", "reject"]) {
            answer = a;
            const got = new Promise(resolve => { notify = resolve; });
            await ms.send("Test.server.request.direct", "SREQ_" + ms.randomId(6), {string: a, number: 1});
            await eventually(got, `the ${a} of a server REQUEST`);
        }
        check(received[0] === "resolve:fromClient:RESOLVE" && received[1] === "reject:fromClient:REJECT",
            `received ${JSON.stringify(received)}`);
        return {received};
    },

    // SUB -> SUB_OK, then PUB from a server endpoint and from the HTTP side channel.
    async pub_sub(ms) {
        const topic = "Topic_" + ms.randomId(6);
        const messages = [];
        let notify;
        ms.subscribe(topic, event => { messages.push(event.data); notify(); });
        const subEvent = nextMessage(resolve => ms.addSubscriptionEventListener(resolve));
        await ms.send("Test.single", "WARMUP_" + ms.randomId(6), {});
        const sub = await eventually(subEvent, "SUB_OK");
        check(sub.type === mats.SubscriptionEventType.OK, `subscription event ${sub.type}`);
        let got = new Promise(resolve => { notify = resolve; });
        await ms.send("Test.publish", "PUB_" + ms.randomId(6), topic);
        await eventually(got, "PUB from Test.publish");
        got = new Promise(resolve => { notify = resolve; });
        const http = url.replace(/^ws/, "http") + "/sendMessageOnTestTopic?topic=" + encodeURIComponent(topic);
        const response = await fetch(http);
        check(response.status === 204, `side channel answered ${response.status}`);
        await eventually(got, "PUB from the HTTP side channel");
        check(messages[0].string === "Test from Java!" && messages[1].string === "Publish to " + topic,
            `PUB messages ${JSON.stringify(messages)}`);
        return {messages};
    },

    // Debug fields asked for by the client and allowed by the authenticator.
    async debug_fields(ms) {
        setAuth(ms, "enableAllDebugOptions");
        const reply = await ms.request("Test.resolveInIncomingHandler", "DBG_" + ms.randomId(6), {string: "d"},
            {debug: mats.DebugOption.TIMESTAMPS | mats.DebugOption.NODES});
        const d = reply.debug;
        check(d && d.resolvedDebugOptions === 3, `debug ${JSON.stringify(d)}`);
        check(typeof d.clientMessageReceived === "number" && typeof d.messageSentToClient === "number",
            `timestamps ${JSON.stringify(d)}`);
        check(typeof d.clientMessageReceivedNodename === "string" && d.messageSentToClientNodename,
            `node names ${JSON.stringify(d)}`);
        return {debug: d};
    },

    // The server asks for REAUTH (incoming and outgoing) and holds the message until it has it.
    async reauth_incoming_and_outgoing(ms) {
        const results = {};
        for (const user of ["fail_reevaluateAuthentication", "fail_reevaluateAuthenticationForOutgoingMessage"]) {
            const socket = newSocket(user, 2000, 0);
            try {
                let callbacks = 0, type;
                socket.setAuthorizationExpiredCallback(event => { callbacks++; type = event.type; setAuth(socket); });
                await socket.send("Test.single", "HELLO_" + socket.randomId(6), {});
                const reply = await eventually(socket.request("Test.slow", "REAUTH_" + socket.randomId(6),
                    {string: "test", number: Math.E, sleepTime: 0}), `request as ${user}`);
                check(reply.data.string === "test:FromSlow", `reply ${JSON.stringify(reply.data)}`);
                check(callbacks === 1 && type === mats.AuthorizationRequiredEventType.REAUTHENTICATE,
                    `auth callback ${callbacks} x ${type}`);
                results[user] = type;
            } finally {
                socket.close("done");
            }
        }
        return results;
    },

    // A server request to the client's built-in MatsSocket.renewAuth endpoint.
    async renew_auth(ms) {
        let value;
        ms.setAuthorizationExpiredCallback(() => {
            const expiry = Date.now() + 20000;
            value = "DummyAuth:renewed_" + ms.randomId(6) + ":" + expiry;
            ms.setCurrentAuthorization(value, expiry, 0);
        });
        const got = nextMessage(resolve => ms.terminator("Client.renewAuth_terminator", resolve));
        await ms.send("Test.renewAuth", "RENEW_" + ms.randomId(6), {});
        const event = await eventually(got, "Client.renewAuth_terminator");
        check(event.data === value, `authorization seen by the server ${event.data}, set ${value}`);
        return {renewed: true};
    },

    // A reconnect (close code RECONNECT from the client) keeps the session; messages flow again.
    async reconnect_keeps_session(ms) {
        await ms.send("Test.single", "BEFORE_" + ms.randomId(6), {});
        const sid = ms.sessionId;
        const established = nextMessage(resolve => ms.addConnectionEventListener(event => {
            if (event.type === mats.ConnectionEventType.SESSION_ESTABLISHED) resolve(event);
        }));
        ms.reconnect("test reconnect");
        await eventually(established, "SESSION_ESTABLISHED after reconnect");
        const reply = await ms.request("Test.single", "AFTER_" + ms.randomId(6), {string: "r", number: 3});
        check(ms.sessionId === sid, `session id changed from ${sid} to ${ms.sessionId}`);
        check(reply.data.number2 === 6, `reply ${JSON.stringify(reply.data)}`);
        return {sid};
    },

    // The server closes the session (Test.closeThisSession): the client gets CLOSE_SESSION.
    async server_closes_session(ms) {
        await ms.send("Test.single", "FIRST_" + ms.randomId(6), {});
        const sid = ms.sessionId;
        const closed = nextMessage(resolve => ms.addSessionClosedEventListener(resolve));
        await ms.send("Test.closeThisSession", "CLOSE_" + ms.randomId(6), {});
        const event = await eventually(closed, "SessionClosedEvent");
        check(event.code === mats.MatsSocketCloseCodes.CLOSE_SESSION, `close code ${event.code}`);
        return {sid, code: event.code};
    },

    // The client closes its session: the server removes it from the store (checked by pytest).
    async client_closes_session(ms) {
        await ms.send("Test.single", "LAST_" + ms.randomId(6), {});
        const sid = ms.sessionId;
        ms.close("scenario done");
        await new Promise(resolve => setTimeout(resolve, 300));
        return {sid, closedByClient: true};
    },
};

for (const [name, scenario] of Object.entries(scenarios)) {
    const ms = newSocket();
    let line;
    try {
        const detail = await eventually(scenario(ms), name);
        line = {name, ok: true, detail, sid: detail && detail.sid};
    } catch (e) {
        line = {name, ok: false, detail: String(e && (e.stack || e.message || JSON.stringify(e)))};
    } finally {
        if (name !== "client_closes_session" && name !== "server_closes_session") {
            ms.close("scenario " + name + " done");
        }
    }
    console.log(JSON.stringify(line));
}
// The client keeps timers (pings, reconnects) alive; the scenarios are over.
process.exit(0);
