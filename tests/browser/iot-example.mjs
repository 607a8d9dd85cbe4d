// Drives the `iot` example's dashboard page (examples/iot/dashboard.html) in headless Chromium (Debian's
// /usr/bin/chromium, through playwright-core from tests/node), for tests/examples_iot.rs, which starts the
// example's cluster and keeps devices reporting readings of site plant-a on both devices nodes meanwhile:
// 1. the page on the dashboard node loads the official client from that node and connects;
// 2. after watching plant-a, it shows a summary row from each devices node;
// 3. an alert pushed by examples/iot/push_alert.py (Python, the REST API) appears on the page;
// 4. nothing was loaded from anywhere but the node, and the page raised no errors.
//
// Prints `PASS <what>` or `FAIL <what>: <why>` per check and exits 0 only when every check passed. Every wait is
// bounded.
//
// Environment:
// * HUBMESH_IOT_URL          the dashboard node's base URL (required)
// * HUBMESH_IOT_ACCESS_KEY   the REST API's access key (required)
// * HUBMESH_CHROMIUM         the browser executable (default /usr/bin/chromium)

import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const RUN_TIMEOUT_MS = 90000;
const STEP_TIMEOUT_MS = 20000;
const LAUNCH_TIMEOUT_MS = 30000;

const base = (process.env.HUBMESH_IOT_URL || "").replace(/\/+$/, "");
const key = process.env.HUBMESH_IOT_ACCESS_KEY || "";
if (!base || !key) {
    console.error("HUBMESH_IOT_URL and HUBMESH_IOT_ACCESS_KEY must be set");
    process.exit(2);
}
const executablePath = process.env.HUBMESH_CHROMIUM || "/usr/bin/chromium";
const pushScript = fileURLToPath(new URL("../../examples/iot/push_alert.py", import.meta.url));

let browser;
const watchdog = setTimeout(async () => {
    console.error(`iot: gave up after ${RUN_TIMEOUT_MS} ms`);
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
    const statusIs = (text) =>
        page.waitForFunction((expected) => document.getElementById("status").textContent === expected, text, {
            timeout: STEP_TIMEOUT_MS,
        });

    await check("the page loads the official client from its node and connects", () => statusIs("connected"));

    await check("watching plant-a shows a summary from each devices node", async () => {
        await page.fill("#site", "plant-a");
        await page.click("#watch-button");
        await statusIs("watching plant-a");
        await page.waitForFunction(
            () =>
                ["devices-1", "devices-2"].every(
                    (node) => Number(document.querySelector(`#summaries tr[data-node="${node}"]`)?.dataset.count ?? "0") > 0,
                ),
            null,
            { timeout: STEP_TIMEOUT_MS },
        );
    });

    await check("an alert pushed from Python through the REST API appears on the page", async () => {
        const output = execFileSync("python3", [pushScript, base, key, "plant-a", "pressure drop"], {
            timeout: STEP_TIMEOUT_MS,
            encoding: "utf8",
        });
        if (!output.includes("-> 202")) throw new Error(`push_alert.py printed ${output}`);
        await page.waitForFunction(
            () => [...document.querySelectorAll("#alerts li")].some((item) => item.textContent === "plant-a: pressure drop"),
            null,
            { timeout: STEP_TIMEOUT_MS },
        );
    });

    await check("the page loaded nothing from elsewhere and raised no errors", async () => {
        if (errors.length > 0) throw new Error(`page errors: ${errors.join("; ")}`);
        if (outside.length > 0) throw new Error(`requests elsewhere: ${outside.join(", ")}`);
    });
} catch (error) {
    failures += 1;
    console.log(`FAIL iot: ${error.message}`);
} finally {
    clearTimeout(watchdog);
    await Promise.race([browser?.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
}
console.log(failures === 0 ? "iot: every check passed" : `iot: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
