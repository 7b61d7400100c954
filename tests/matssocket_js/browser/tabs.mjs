// Browser tabs in headless Chromium (puppeteer-core, the machine's browser), driven over
// stdin/stdout with JSON lines, so that a test can act between two looks at a page (kill a
// node, then read the page again). Usage: node tabs.mjs; CHROMIUM names the browser (default
// /usr/bin/chromium). First line out: {"ready": true, "browser": VERSION}. Then, per line in,
// one line out, {"id", "value"} or {"id", "error"}:
//   {"id", "op": "open", "url"}                      -> the new tab's number, once the page loaded
//   {"id", "op": "eval", "tab", "js"}                -> the value of the expression js in the tab
//   {"id", "op": "screenshot", "tab", "path"}        -> null, a PNG of the tab written to path
//   {"id", "op": "close", "tab"}                     -> null
// End of input closes the browser. The pages' console errors and failures go to stderr.

import readline from "node:readline";
import puppeteer from "puppeteer-core";

const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"],
});
const tabs = new Map();
let nextTab = 0;

function reply(line) {
    process.stdout.write(JSON.stringify(line) + "\n");
}

async function open(url) {
    const tab = nextTab++;
    const page = await browser.newPage();
    await page.setViewport({width: 1280, height: 760});
    page.on("console", msg => {
        if (msg.type() === "error") console.error(`[tab ${tab}] ${msg.text()}`);
    });
    page.on("pageerror", err => console.error(`[tab ${tab} error] ${err.message}`));
    page.on("requestfailed", req => console.error(`[tab ${tab} request failed] ${req.url()}: ${req.failure()?.errorText}`));
    await page.goto(url, {waitUntil: "load"});
    tabs.set(tab, page);
    return tab;
}

function page(tab) {
    const p = tabs.get(tab);
    if (!p) throw new Error(`no tab ${tab}`);
    return p;
}

reply({ready: true, browser: await browser.version()});
try {
    for await (const line of readline.createInterface({input: process.stdin})) {
        if (!line.trim()) continue;
        const req = JSON.parse(line);
        try {
            let value = null;
            if (req.op === "open") {
                value = await open(req.url);
            } else if (req.op === "eval") {
                value = await page(req.tab).evaluate(req.js);
            } else if (req.op === "screenshot") {
                await page(req.tab).bringToFront();
                await page(req.tab).screenshot({path: req.path});
            } else if (req.op === "close") {
                await page(req.tab).close();
                tabs.delete(req.tab);
            } else {
                throw new Error(`unknown op ${req.op}`);
            }
            reply({id: req.id, value: value === undefined ? null : value});
        } catch (e) {
            reply({id: req.id, error: String(e && e.stack || e)});
        }
    }
} finally {
    await browser.close();
}
