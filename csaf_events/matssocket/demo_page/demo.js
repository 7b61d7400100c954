// The chat room's page (csaf_events/matssocket/demo.py): one MatsSocket session per tab, through
// the real MatsSocket client. It sends lines to Chat.say, gets every line of the room on the
// Chat.message terminator, asks Chat.whoami which node holds its socket after each
// (re)connect, and shows the nodes' status from the Chat.cluster topic.
//
// What the page saw is in window.demo.snapshot() (the tests read it): the lines it sent and
// the server took (ACK), those not taken yet, how many times each line arrived, and the lines
// missing from each sender's sequence. A line the server refused (NACK: nothing of it was
// stored) is sent again, with the same id, so every line is taken once in the end.

import {MatsSocket, ConnectionEventType} from "matssocket";

const APP = "CsafDemoChat";
const SAY = "Chat.say", WHOAMI = "Chat.whoami", LINES = "Chat.message", CLUSTER = "Chat.cluster";
const NODE_GONE_MS = 3500;      // a node whose status is older than this has left or died
const KEEP_LINES = 300;         // lines shown
const MAX_ATTEMPTS = 30;        // sends of one line refused before the page gives up on it
const RESEND_MS = 1000;

const params = new URLSearchParams(location.search);
const ownUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/matssocket`;
const urls = (params.get("urls") || ownUrl).split(",").map(u => u.trim()).filter(u => u);
const name = params.get("name") || `tab-${Math.random().toString(36).slice(2, 6)}`;

const state = {
    name, urls,
    node: null,             // the node holding this tab's socket now (null while not connected)
    url: null,              // its URL
    sessionId: null,
    connection: "nosession",
    connections: [],        // {url, node, at, lostAt}: every session established, in order
    sent: 0,                // lines handed to the client
    acked: [],              // ids of the lines the server took
    pending: new Map(),     // id -> attempts, for lines not taken yet
    refused: 0,             // NACKs (each followed by a resend)
    failed: [],             // ids given up on after MAX_ATTEMPTS refusals
    received: new Map(),    // id -> times it arrived
    lines: [],              // the last KEEP_LINES lines, for the page
    nodes: new Map(),       // node -> its last status, with seenAt
    errors: [],
};

const ms = new MatsSocket(APP, "1.0", urls);
ms.setCurrentAuthorization(`Demo:${name}`, -1);
ms.addErrorEventListener(event => {
    state.errors.push(`${event.type}: ${event.message}`);
    schedule();
});
ms.addConnectionEventListener(event => {
    state.connection = ms.state;
    const last = state.connections[state.connections.length - 1];
    if (event.type === ConnectionEventType.SESSION_ESTABLISHED) {
        const entry = {url: event.webSocketUrl, node: null, at: Date.now(), lostAt: null};
        state.connections.push(entry);
        state.url = entry.url;
        state.sessionId = ms.sessionId;
        state.node = null;
        askWhoami(entry);
    } else if (event.type === ConnectionEventType.LOST_CONNECTION) {
        if (last && last.lostAt === null) last.lostAt = Date.now();
        state.node = null;
    }
    schedule();
});

// The node that answers is the one holding the socket the request went out on.
function askWhoami(entry) {
    ms.request(WHOAMI, `whoami_${ms.randomId(6)}`, {}).then(reply => {
        entry.node = reply.data.node;
        if (state.connections[state.connections.length - 1] === entry && entry.lostAt === null) {
            state.node = entry.node;
        }
        schedule();
    }, event => {
        state.errors.push(`whoami: ${event && event.type}`);
        schedule();
    });
}

ms.terminator(LINES, event => {
    const line = event.data;
    state.received.set(line.id, (state.received.get(line.id) || 0) + 1);
    state.lines.push(line);
    if (state.lines.length > KEEP_LINES) state.lines.splice(0, state.lines.length - KEEP_LINES);
    schedule();
});

ms.subscribe(CLUSTER, event => {   // also opens the socket: a subscription starts the session
    state.nodes.set(event.data.node, {...event.data, seenAt: Date.now()});
    schedule();
});

let seq = 0;

function say(text) {
    const id = `${name}:${seq++}`;
    state.sent++;
    state.pending.set(id, 0);
    attempt(id, String(text));
    schedule();
    return id;
}

function attempt(id, text) {
    const attempts = state.pending.get(id) + 1;
    state.pending.set(id, attempts);
    ms.send(SAY, `say_${id}_${attempts}`, {id, text}).then(() => {
        state.pending.delete(id);
        state.acked.push(id);
        schedule();
    }, event => {   // NACK: the server stored nothing of it
        state.refused++;
        state.errors.push(`line ${id} refused: ${event && event.description}`);
        if (attempts >= MAX_ATTEMPTS) {
            state.pending.delete(id);
            state.failed.push(id);
        } else {
            setTimeout(() => attempt(id, text), RESEND_MS);
        }
        schedule();
    });
}

let tickerTimer = null, tickerCount = 0;

function ticker(everyMs) {
    clearInterval(tickerTimer);
    tickerTimer = null;
    if (everyMs > 0) tickerTimer = setInterval(() => say(`tick ${++tickerCount} from ${name}`), everyMs);
    document.getElementById("ticker").checked = tickerTimer !== null;
    if (everyMs > 0) document.getElementById("every").value = everyMs;
}

// :: What the page saw

function parseId(id) {
    const at = id.lastIndexOf(":");
    return [id.slice(0, at), Number(id.slice(at + 1))];
}

// Per sender, the sequence numbers below the highest one seen that never arrived.
function gaps() {
    const seen = new Map();
    for (const id of state.received.keys()) {
        const [sender, n] = parseId(id);
        if (!seen.has(sender)) seen.set(sender, new Set());
        seen.get(sender).add(n);
    }
    const out = {};
    for (const [sender, numbers] of seen) {
        const missing = [];
        const top = Math.max(...numbers);
        for (let n = 0; n < top; n++) if (!numbers.has(n)) missing.push(n);
        if (missing.length) out[sender] = missing;
    }
    return out;
}

function liveNodes() {
    const now = Date.now();
    return [...state.nodes.values()].filter(s => now - s.seenAt <= NODE_GONE_MS)
        .sort((a, b) => a.node.localeCompare(b.node));
}

function unowned(live) {
    if (!live.length) return [];
    const owned = new Set(live.flatMap(s => s.owned));
    return [...Array(live[0].partitions).keys()].filter(p => !owned.has(p));
}

function snapshot() {
    const live = liveNodes();
    return {
        name, urls, node: state.node, url: state.url, sessionId: state.sessionId, connection: state.connection,
        connections: state.connections, sent: state.sent, acked: state.acked, pending: [...state.pending.keys()],
        refused: state.refused, failed: state.failed, received: Object.fromEntries(state.received),
        doubles: [...state.received].filter(([, n]) => n > 1).map(([id]) => id), gaps: gaps(),
        liveNodes: live, unowned: unowned(live), errors: state.errors,
    };
}

// :: The page

let scheduled = false;

function schedule() {
    if (!scheduled) {
        scheduled = true;
        setTimeout(render, 50);   // (not requestAnimationFrame: a tab in the background would not draw)
    }
}

// [0, 1, 2, 5] -> "0-2, 5"
function ranges(numbers) {
    const out = [];
    for (const n of [...numbers].sort((a, b) => a - b)) {
        const last = out[out.length - 1];
        if (last && n === last[1] + 1) last[1] = n; else out.push([n, n]);
    }
    return out.map(([a, b]) => a === b ? `${a}` : `${a}-${b}`).join(", ");
}

const esc = s => String(s).replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`);
const clock = ms => new Date(ms).toLocaleTimeString([], {hour12: false});

function render() {
    scheduled = false;
    const s = snapshot();
    document.getElementById("me").innerHTML = `You are <b>${esc(name)}</b>, on ` +
        (s.node ? `node <b>${esc(s.node)}</b>` : `<span class="bad">no node (${esc(s.connection)})</span>`);
    const doubles = s.doubles.length, missing = Object.values(s.gaps).reduce((n, g) => n + g.length, 0);
    document.getElementById("tab").innerHTML = [
        ["session", s.sessionId || "-"], ["socket", s.url || "-"], ["state", s.connection],
        ["lines sent", `${s.sent} (${s.acked.length} taken, ${s.pending.length} waiting, ${s.refused} refused` +
            `${s.failed.length ? `, <span class="bad">${s.failed.length} given up</span>` : ""})`],
        ["lines received", `${state.received.size}`],
        ["doubles", `<span class="${doubles ? "bad" : "ok"}">${doubles}</span>`],
        ["missing", `<span class="${missing ? "bad" : "ok"}">${missing}</span>`],
    ].map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
    const now = Date.now();
    const rows = [...state.nodes.values()].sort((a, b) => a.node.localeCompare(b.node)).map(n => {
        const gone = now - n.seenAt > NODE_GONE_MS;
        const cls = [n.node === s.node ? "here" : "", gone ? "gone" : ""].join(" ");
        const status = gone ? "gone" : n.status;
        return `<tr class="${cls}"><td>${esc(n.node)}</td><td class="${status === "ok" ? "ok" : "bad"}">` +
            `${esc(status)}</td><td>${esc(ranges(n.owned) || "-")}</td><td>${n.sockets}</td>` +
            `<td>${n.linesPerS.toFixed(1)}</td><td>${n.deliveriesPerS.toFixed(1)}</td></tr>`;
    });
    document.querySelector("#nodes tbody").innerHTML = rows.join("");
    const total = s.liveNodes.reduce((sum, n) => sum + n.linesPerS, 0);
    const room = s.liveNodes.length ? s.liveNodes[0].room : "-";
    document.getElementById("cluster").innerHTML = `${s.liveNodes.length} node(s) up, ${room} session(s) in ` +
        `the room, ${total.toFixed(1)} lines/s; ` + (s.unowned.length
            ? `<span class="bad">partitions ${esc(ranges(s.unowned))} not owned (taking over)</span>`
            : "every partition owned");
    document.getElementById("history").innerHTML = s.connections.map(c =>
        `<li>${clock(c.at)} ${esc(c.node || "?")} <small>${esc(c.url)}</small>` +
        `${c.lostAt ? ` - lost at ${clock(c.lostAt)}` : ""}</li>`).join("");
    const list = document.getElementById("lines");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
    list.innerHTML = state.lines.map(l =>
        `<li class="${l.from === name ? "mine" : ""}"><span class="at">${clock(l.at)}</span>` +
        `<span class="from">${esc(l.from)}</span><span>${esc(l.text)}</span>` +
        `<span class="via">via ${esc(l.via)}</span></li>`).join("");
    if (atBottom) list.scrollTop = list.scrollHeight;
}

document.getElementById("say").addEventListener("submit", event => {
    event.preventDefault();
    const input = document.getElementById("text");
    if (input.value.trim()) say(input.value.trim());
    input.value = "";
});
document.getElementById("ticker").addEventListener("change", event => {
    ticker(event.target.checked ? Number(document.getElementById("every").value) || 500 : 0);
});
document.getElementById("leave").addEventListener("click", () => leave());

function leave() {
    ticker(0);
    ms.close("left the room");
    state.node = null;
    state.connection = ms.state;
    schedule();
}

setInterval(schedule, 1000);   // nodes that stopped publishing turn "gone"
if (Number(params.get("ticker")) > 0) ticker(Number(params.get("ticker")));
window.demo = {snapshot, say, ticker, leave};
schedule();
