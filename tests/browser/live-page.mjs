// Drives the live page of a hubmesh node (GET /_hubmesh/) in headless Chromium (Debian's /usr/bin/chromium,
// through playwright-core from tests/node), for tests/live_page.rs, which runs a three-node cluster in process:
// 1. the page renders every node of the cluster as serving, with a row, a chart line and a legend entry each;
// 2. it updates: after the test connects clients to node-2 and broadcasts (it is told so on stdin), node-2's row
//    shows the connections and its deliveries, and the page keeps polling;
// 3. after the test kills node-3 (told on stdin), node-3's row shows it dead and a membership event says so.
//
// Protocol with the test: the script prints `WAIT <step>` and reads one line from stdin before checking that step;
// it prints `PASS <what>` or `FAIL <what>: <why>` per check and exits 0 only when every check passed. Every wait
// is bounded.
//
// Environment:
// * HUBMESH_LIVE_URL   base URL of the node whose page is opened (required)
// * HUBMESH_CHROMIUM   the browser executable (default /usr/bin/chromium)
// * HUBMESH_LIVE_SCREENSHOT   optional: a PNG file to save the page to at the end, to look at it

import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const RUN_TIMEOUT_MS = 240000;
const STEP_TIMEOUT_MS = 45000;
const STDIN_TIMEOUT_MS = 60000;
const LAUNCH_TIMEOUT_MS = 30000;

const base = (process.env.HUBMESH_LIVE_URL || "").replace(/\/+$/, "");
if (!base) {
    console.error("HUBMESH_LIVE_URL is not set: point it at a running hubmesh node");
    process.exit(2);
}
const executablePath = process.env.HUBMESH_CHROMIUM || "/usr/bin/chromium";

let browser;
const watchdog = setTimeout(async () => {
    console.error(`live page: gave up after ${RUN_TIMEOUT_MS} ms`);
    await Promise.race([browser?.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
    process.exit(3);
}, RUN_TIMEOUT_MS);

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// Asks the test to do `step` and waits until it says it is done.
async function waitFor(step) {
    console.log(`WAIT ${step}`);
    let timer;
    const next = await Promise.race([
        lines.next(),
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`the test did not answer WAIT ${step}`)), STDIN_TIMEOUT_MS);
        }),
    ]).finally(() => clearTimeout(timer));
    if (next.done || next.value.trim() !== step) throw new Error(`expected "${step}" from the test, got ${JSON.stringify(next.value)}`);
}

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

// What the page shows of each node, by name.
function rows(page) {
    return page.evaluate(() =>
        Object.fromEntries(
            [...document.querySelectorAll("#nodes tbody tr")].map((row) => [
                row.dataset.node,
                {
                    state: row.dataset.state,
                    connections: row.querySelector("td.connections")?.textContent,
                    deliveries: Number(row.dataset.deliveries ?? "NaN"),
                    rate: row.querySelector("td.rate")?.textContent,
                },
            ]),
        ),
    );
}

function polls(page) {
    return page.evaluate(() => Number(document.getElementById("summary").dataset.polls ?? "0"));
}

// Waits until `predicate(rows)` holds; fails with the last rows seen.
async function until(page, what, predicate) {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    let last;
    while (Date.now() < deadline) {
        last = await rows(page);
        if (predicate(last)) return last;
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`${what}: not within ${STEP_TIMEOUT_MS} ms; the page shows ${JSON.stringify(last)}`);
}

try {
    browser = await chromium.launch({ executablePath, headless: true, timeout: LAUNCH_TIMEOUT_MS, args: ["--no-sandbox"] });
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(error.message));
    const outside = [];
    page.on("request", (request) => {
        if (!request.url().startsWith(base)) outside.push(request.url());
    });
    await page.goto(`${base}/_hubmesh/?interval=250`, { timeout: STEP_TIMEOUT_MS });

    await check("the page renders every node as serving", async () => {
        await until(page, "three serving nodes", (shown) =>
            ["node-1", "node-2", "node-3"].every((name) => shown[name]?.state === "serving"),
        );
        const title = await page.title();
        if (!title.includes("hubmesh")) throw new Error(`title ${title}`);
        const lines = await page.evaluate(() => document.querySelectorAll("#chart-connections polyline").length);
        if (lines !== 3) throw new Error(`${lines} lines in the connections chart`);
        const legend = await page.evaluate(() => document.querySelectorAll("#legend div").length);
        if (legend !== 3) throw new Error(`${legend} legend entries`);
    });

    await waitFor("connect");
    await check("the page updates with connections and deliveries", async () => {
        const before = await polls(page);
        await until(page, "node-2 shows its two connections and their deliveries", (shown) =>
            shown["node-2"]?.connections === "2" && shown["node-2"].deliveries >= 2 && shown["node-1"]?.connections === "0",
        );
        const deadline = Date.now() + STEP_TIMEOUT_MS;
        while ((await polls(page)) < before + 3) {
            if (Date.now() > deadline) throw new Error("the page stopped polling");
            await new Promise((resolve) => setTimeout(resolve, 100));
        }
        const points = await page.evaluate(
            () => document.querySelector('#chart-deliveries polyline[data-node="node-2"]')?.getAttribute("points") ?? "",
        );
        if (points.split(" ").length < 2) throw new Error(`node-2's deliveries line has points "${points}"`);
    });

    await waitFor("kill");
    await check("the page shows the killed node as dead", async () => {
        await until(page, "node-3 dead, the others serving", (shown) =>
            shown["node-3"]?.state === "dead" && shown["node-1"]?.state === "serving" && shown["node-2"]?.state === "serving",
        );
        const events = await page.evaluate(() => [...document.querySelectorAll("#events li")].map((item) => item.textContent));
        if (!events.some((text) => text.includes("node-3") && /dead|left/.test(text))) {
            throw new Error(`no membership event for node-3: ${JSON.stringify(events)}`);
        }
        const cell = await page.evaluate(() => document.querySelector('#nodes tr[data-node="node-3"] td.state')?.textContent);
        if (cell !== "dead") throw new Error(`node-3's state cell reads ${cell}`);
    });

    if (process.env.HUBMESH_LIVE_SCREENSHOT) await page.screenshot({ path: process.env.HUBMESH_LIVE_SCREENSHOT, fullPage: true });
    await check("the page ran without errors and loaded nothing from elsewhere", async () => {
        if (errors.length > 0) throw new Error(`page errors: ${errors.join("; ")}`);
        if (outside.length > 0) throw new Error(`requests elsewhere: ${outside.join(", ")}`);
    });
} catch (error) {
    failures += 1;
    console.log(`FAIL live page: ${error.message}`);
} finally {
    clearTimeout(watchdog);
    await Promise.race([browser?.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
}
console.log(failures === 0 ? "live page: every check passed" : `live page: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
