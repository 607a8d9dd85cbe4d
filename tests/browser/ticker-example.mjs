// Drives the `ticker` example's page (examples/ticker/index.html) in headless Chromium (Debian's
// /usr/bin/chromium, through playwright-core from tests/node), for tests/examples_ticker.rs, which starts the
// example's cluster (two front nodes and a backend that runs the price feed):
// 1. the page on a front node loads the official client from that node and connects;
// 2. after ticking ACME, ACME's prices from the backend arrive with rising sequence numbers, and no other
//    symbol's;
// 3. nothing was loaded from anywhere but the node, and the page raised no errors.
//
// Prints `PASS <what>` or `FAIL <what>: <why>` per check and exits 0 only when every check passed. Every wait is
// bounded.
//
// Environment:
// * HUBMESH_TICKER_URL   a front node's base URL (required)
// * HUBMESH_CHROMIUM     the browser executable (default /usr/bin/chromium)

import { createRequire } from "node:module";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const RUN_TIMEOUT_MS = 90000;
const STEP_TIMEOUT_MS = 20000;
const LAUNCH_TIMEOUT_MS = 30000;

const base = (process.env.HUBMESH_TICKER_URL || "").replace(/\/+$/, "");
if (!base) {
    console.error("HUBMESH_TICKER_URL is not set");
    process.exit(2);
}
const executablePath = process.env.HUBMESH_CHROMIUM || "/usr/bin/chromium";

let browser;
const watchdog = setTimeout(async () => {
    console.error(`ticker: gave up after ${RUN_TIMEOUT_MS} ms`);
    await Promise.race([browser?.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
    process.exit(3);
}, RUN_TIMEOUT_MS);

let failures = 0;
async function check(what, body) {
    try {
        await body();
        console.log(`PASS ${what}`);
    } catch (error) {
        failures += 1;
        console.log(`FAIL ${what}: ${error.message}`);
    }
}

// The rows of the price table, by symbol.
function rows(page) {
    return page.evaluate(() =>
        Object.fromEntries(
            [...document.querySelectorAll("#prices tr")].map((row) => [
                row.dataset.symbol,
                { count: Number(row.dataset.count), sequence: Number(row.querySelector(".sequence").textContent || "0") },
            ]),
        ),
    );
}

try {
    browser = await chromium.launch({ executablePath, headless: true, timeout: LAUNCH_TIMEOUT_MS, args: ["--no-sandbox"] });
    const page = await browser.newPage();
    const errors = [];
    const outside = [];
    page.on("pageerror", (error) => errors.push(error.message));
    page.on("request", (request) => {
        if (!request.url().startsWith(base)) outside.push(request.url());
    });
    await page.goto(`${base}/`, { timeout: STEP_TIMEOUT_MS });

    await check("the page loads the official client from its node and connects", async () => {
        await page.waitForFunction(() => document.getElementById("status").textContent === "connected", null, {
            timeout: STEP_TIMEOUT_MS,
        });
    });

    await check("ACME's prices arrive in order from the backend, and only ACME's", async () => {
        await page.check('#symbols input[value="ACME"]');
        const deadline = Date.now() + STEP_TIMEOUT_MS;
        let last = 0;
        let shown;
        for (;;) {
            shown = await rows(page);
            const acme = shown.ACME;
            if (acme && acme.sequence < last) throw new Error(`the sequence went back from ${last} to ${acme.sequence}`);
            if (acme) last = acme.sequence;
            if (acme && acme.count >= 3) break;
            if (Date.now() > deadline) throw new Error(`not three prices within ${STEP_TIMEOUT_MS} ms: ${JSON.stringify(shown)}`);
            await new Promise((resolve) => setTimeout(resolve, 50));
        }
        const symbols = Object.keys(shown);
        if (symbols.join() !== "ACME") throw new Error(`rows for ${symbols.join(", ")}`);
    });

    await check("the page loaded nothing from elsewhere and raised no errors", async () => {
        if (errors.length > 0) throw new Error(`page errors: ${errors.join("; ")}`);
        if (outside.length > 0) throw new Error(`requests elsewhere: ${outside.join(", ")}`);
    });
} catch (error) {
    failures += 1;
    console.log(`FAIL ticker: ${error.message}`);
} finally {
    clearTimeout(watchdog);
    await Promise.race([browser?.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
}
console.log(failures === 0 ? "ticker: every check passed" : `ticker: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
