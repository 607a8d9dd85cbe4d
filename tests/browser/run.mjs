// Drives headless Chromium (Debian's /usr/bin/chromium, through playwright-core from tests/node), with the
// official client's browser build served by server.mjs from one origin, against the test hub server on another
// (HUBMESH_TEST_URL), once with each HTTP client the client can pick (fetch, XHR):
// 1. the browser scenarios in scenarios.js: every transport × protocol (SSE JSON only), withCredentials: false,
//    and the Web Worker build;
// 2. the whole conformance suite: the Node test files of tests/node, unchanged, in suite.html (every transport,
//    both protocols, and the HTTPS rows against HUBMESH_TEST_HTTPS_URL).
//
// Environment:
// * HUBMESH_TEST_URL         base URL of a running test hub server (required)
// * HUBMESH_TEST_HTTPS_URL   the same server over HTTPS (optional; its certificate is self-signed and accepted)
// * HUBMESH_CHROMIUM         the browser executable (default /usr/bin/chromium)
// * HUBMESH_BROWSER_ONLY     optional substring filter on scenario and test names, e.g. "xhr/LongPolling"
// * HUBMESH_BROWSER_SUITE    comma-separated test files of tests/node to run in the page (default SUITE_FILES)
//
// Prints one line per scenario step and exits 0 only when every step passed. Every wait is bounded; the whole run
// gives up after RUN_TIMEOUT_MS.

import { createRequire } from "node:module";
import { startStaticServer } from "./server.mjs";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const RUN_TIMEOUT_MS = 900000;
const SCENARIO_TIMEOUT_MS = 60000;
const SUITE_TIMEOUT_MS = 400000;
const LAUNCH_TIMEOUT_MS = 30000;

const TRANSPORTS = ["WebSockets", "ServerSentEvents", "LongPolling"];
const PROTOCOLS = ["json", "messagepack"];
const HTTP_CLIENTS = ["fetch", "xhr"];
// The files that hold the official suite's scenarios (HubConnectionTests, ConnectionTests, WebSocketTests) and
// ours about negotiate and the test app's routes; the demo hub and the stateful-reconnect proxy tests are Node only.
const SUITE_FILES = [
    "connection.test.mjs",
    "hub-connection.test.mjs",
    "auth.test.mjs",
    "negotiate.test.mjs",
    "test-app.test.mjs",
    "transport-selection.test.mjs",
    "websocket.test.mjs",
];

const hubBase = (process.env.HUBMESH_TEST_URL || "").replace(/\/+$/, "");
if (!hubBase) {
    console.error("HUBMESH_TEST_URL is not set: point it at a running hubmesh test hub server");
    process.exit(2);
}
const httpsHubBase = (process.env.HUBMESH_TEST_HTTPS_URL || "").replace(/\/+$/, "");
const suiteFiles = (process.env.HUBMESH_BROWSER_SUITE || SUITE_FILES.join(","))
    .split(",")
    .map((file) => file.trim())
    .filter((file) => file.length > 0);
const executablePath = process.env.HUBMESH_CHROMIUM || "/usr/bin/chromium";
const only = process.env.HUBMESH_BROWSER_ONLY || "";

let browser;
let staticServer;
async function cleanup() {
    await Promise.race([
        Promise.allSettled([browser?.close(), staticServer?.close()]),
        new Promise((resolve) => setTimeout(resolve, 5000)),
    ]);
}

const watchdog = setTimeout(async () => {
    console.error(`browser tests: gave up after ${RUN_TIMEOUT_MS} ms`);
    await cleanup();
    process.exit(3);
}, RUN_TIMEOUT_MS);

function bounded(promise, ms, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
        }),
    ]).finally(() => clearTimeout(timer));
}

const results = [];
// Messages from the page (HTTP errors, console errors), printed with the scenario they happened in.
let pageErrors = [];
async function scenario(page, name, fn, args) {
    if (only && !name.includes(only)) {
        return;
    }
    pageErrors = [];
    let outcome;
    const started = Date.now();
    try {
        outcome = await bounded(page.evaluate(fn, args), SCENARIO_TIMEOUT_MS, name);
    } catch (error) {
        outcome = { steps: [{ name: "run", ok: false, detail: String(error.message || error) }], logs: [] };
    }
    const ok = outcome.steps.length > 0 && outcome.steps.every((step) => step.ok);
    results.push({ name, ok });
    console.log(`${ok ? "PASS" : "FAIL"} ${name} (${Date.now() - started} ms)`);
    for (const step of outcome.steps) {
        console.log(`    ${step.ok ? "ok  " : "FAIL"} ${step.name}${step.detail ? `: ${step.detail}` : ""}`);
    }
    if (!ok) {
        for (const line of outcome.logs) {
            console.log(`    log ${line}`);
        }
    }
    await new Promise((resolve) => setTimeout(resolve, 50)); // late requests such as the DELETE after stop
    for (const line of pageErrors) {
        console.log(`    page ${line}`);
    }
}

/** The conformance suite in suite.html, one line per test; every test counts as a result. */
async function runSuite(page, httpClient) {
    const params = new URLSearchParams({ hub: hubBase, transports: TRANSPORTS.join(","), files: suiteFiles.join(",") });
    if (httpsHubBase) {
        params.set("https", httpsHubBase);
    }
    pageErrors = [];
    await page.goto(`${staticServer.url}/suite.html?${params}`, { timeout: SCENARIO_TIMEOUT_MS });
    await page.waitForFunction(() => window.hubmeshSuite !== undefined, null, { timeout: SCENARIO_TIMEOUT_MS });
    const started = Date.now();
    let outcome;
    try {
        outcome = await bounded(
            page.evaluate((filter) => window.hubmeshSuite.run({ filter }), only),
            SUITE_TIMEOUT_MS,
            `the suite with ${httpClient}`,
        );
    } catch (error) {
        outcome = [{ name: "run", ok: false, ms: Date.now() - started, error: String(error.message || error) }];
    }
    for (const result of outcome) {
        results.push({ name: `${httpClient} suite > ${result.name}`, ok: result.ok });
    }
    const failed = outcome.filter((result) => !result.ok).length;
    console.log(
        `suite with ${httpClient}: ${outcome.length - failed} passed, ${failed} failed in ${Date.now() - started} ms`,
    );
    if (failed > 0) {
        for (const line of pageErrors) {
            console.log(`    page ${line}`);
        }
    }
}

try {
    staticServer = await startStaticServer();
    console.log(`browser tests: page origin ${staticServer.url}, hub ${hubBase}, browser ${executablePath}`);
    // launch() runs Chromium on a fresh temporary profile (--user-data-dir) that Playwright deletes on close.
    browser = await chromium.launch({
        executablePath,
        headless: true,
        timeout: LAUNCH_TIMEOUT_MS,
        chromiumSandbox: false,
        args: [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    });
    console.log(`browser tests: Chromium ${browser.version()}`);

    for (const httpClient of HTTP_CLIENTS) {
        // A fresh context per HTTP client: its own cookie jar, so each run sees negotiate set the cookies.
        // The HTTPS test hub's certificate is self-signed (upstream's runner accepts its dev certificate too).
        const context = await browser.newContext({ ignoreHTTPSErrors: true });
        context.setDefaultTimeout(SCENARIO_TIMEOUT_MS);
        if (httpClient === "xhr") {
            // Without a global fetch, DefaultHttpClient picks XhrHttpClient.
            await context.addInitScript(() => {
                Object.defineProperty(window, "fetch", { value: undefined, configurable: true, writable: true });
            });
        }
        const page = await context.newPage();
        await page.exposeFunction("hubmeshReport", (result) => {
            console.log(`${result.ok ? "PASS" : "FAIL"} ${httpClient} suite > ${result.name} (${result.ms} ms)`);
            if (!result.ok) {
                console.log(`    ${result.error}`);
            }
        });
        page.on("pageerror", (error) => pageErrors.push(String(error)));
        page.on("response", (response) => {
            if (response.status() >= 400) {
                pageErrors.push(`HTTP ${response.status()} for ${response.request().method()} ${response.url()}`);
            }
        });
        page.on("console", (message) => {
            if (message.type() === "error") {
                pageErrors.push(`console: ${message.text()}`);
            }
        });
        await page.goto(`${staticServer.url}/index.html`, { timeout: SCENARIO_TIMEOUT_MS });
        const hasFetch = await page.evaluate(() => window.hubmesh.hasFetch);
        if (hasFetch !== (httpClient === "fetch")) {
            throw new Error(`the ${httpClient} page ${hasFetch ? "has" : "lacks"} a global fetch`);
        }
        for (const transport of TRANSPORTS) {
            for (const protocol of PROTOCOLS) {
                if (transport === "ServerSentEvents" && protocol === "messagepack") {
                    continue;
                }
                await scenario(
                    page,
                    `${httpClient}/${transport}/${protocol}`,
                    (args) => window.hubmesh.runCombination(args),
                    { hubBase, transport, protocol, httpClient },
                );
            }
        }
        for (const transport of ["ServerSentEvents", "LongPolling"]) {
            await scenario(
                page,
                `${httpClient}/${transport}/withCredentials=false`,
                (args) => window.hubmesh.runWithoutCredentials(args),
                { hubBase, transport },
            );
        }
        if (httpClient === "fetch") {
            for (const transport of TRANSPORTS) {
                await scenario(page, `webworker/${transport}/json`, (args) => window.hubmesh.runWorker(args), {
                    hubBase,
                    transport,
                });
            }
        }
        if (suiteFiles.length > 0) {
            await runSuite(page, httpClient);
        }
        await context.close();
    }
} catch (error) {
    results.push({ name: "setup", ok: false });
    console.log(`FAIL setup: ${error.stack || error}`);
}

clearTimeout(watchdog);
await cleanup();
const failed = results.filter((result) => !result.ok);
console.log(
    `browser tests: ${results.length - failed.length} passed, ${failed.length} failed` +
        (failed.length ? ` (${failed.map((result) => result.name).join(", ")})` : ""),
);
process.exit(failed.length === 0 && results.length > 0 ? 0 : 1);
