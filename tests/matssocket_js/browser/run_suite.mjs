// Runs MatsSocket's own integration suite (../suite/all_tests.js) with mocha in this page and
// leaves the outcome in window.__mochaResult: {stats, passes, pending, failures}, each test
// by its full title (failures with their message), read by drive_browser.mjs.

const urls = new URLSearchParams(location.search).get("urls");

function finish(result) {
    window.__mochaResult = result;
}

if (!urls) {
    finish({error: "no ?urls= (the nodes' WebSocket URLs, comma separated) in the page's address"});
} else {
    // The suite reads the URLs from process.env.MATS_SOCKET_URLS (its Node.js way); nothing
    // else here looks at 'process' (MatsSocket.js only where there is no global WebSocket).
    globalThis.process = {env: {MATS_SOCKET_URLS: urls}};
    mocha.setup({ui: "bdd", reporter: "html"});
    try {
        await import("../suite/all_tests.js");
    } catch (e) {
        finish({error: `the suite did not load: ${e && e.stack || e}`});
    }
    if (!window.__mochaResult) {
        const passes = [], pending = [], failures = [];
        const runner = mocha.run();
        runner.on("pass", test => passes.push(test.fullTitle()));
        runner.on("pending", test => pending.push(test.fullTitle()));
        runner.on("fail", (test, err) => failures.push({title: test.fullTitle(), message: String(err && err.message || err)}));
        runner.on("end", () => finish({stats: runner.stats, passes, pending, failures}));
    }
}
