// Opens a page in headless Chromium (puppeteer-core, the machine's browser) and prints, as one
// JSON line, what the page leaves in window.__mochaResult; the page's console errors and
// failed requests go to stderr. Usage: node drive_browser.mjs URL [TIMEOUT_SECONDS]
// CHROMIUM names the browser (default /usr/bin/chromium).

import puppeteer from "puppeteer-core";

const [url, timeoutSeconds = "240"] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
    const page = await browser.newPage();
    page.on("console", msg => {
        if (msg.type() === "error") console.error(`[page] ${msg.text()}`);
    });
    page.on("pageerror", err => console.error(`[page error] ${err.message}`));
    page.on("requestfailed", req => console.error(`[request failed] ${req.url()}: ${req.failure()?.errorText}`));
    await page.goto(url, {waitUntil: "load"});
    await page.waitForFunction(() => window.__mochaResult !== undefined,
        {timeout: Number(timeoutSeconds) * 1000, polling: 250});
    const result = await page.evaluate(() => JSON.parse(JSON.stringify(window.__mochaResult)));
    console.log(JSON.stringify({browser: await browser.version(), ...result}));
} finally {
    await browser.close();
}
