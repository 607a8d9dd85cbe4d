// Drives the `chat` example (examples/chat) in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core from tests/node), for tests/examples_chat.rs, which starts the example's three-node cluster:
// 1. two pages, on two different nodes, load the page and the official client from their own node and connect;
// 2. both join one room; a message typed and sent in the first page appears in the second (and in the first);
// 3. a page that left the room gets no more of its messages, while the other page still does;
// 4. a room name the hub refuses shows the hub's error on the page;
// 5. nothing was loaded from anywhere but the nodes, and the pages raised no errors.
//
// Prints `PASS <what>` or `FAIL <what>: <why>` per check and exits 0 only when every check passed. Every wait is
// bounded.
//
// Environment:
// * HUBMESH_CHAT_URLS   the nodes' base URLs, comma-separated (at least two, required)
// * HUBMESH_CHROMIUM    the browser executable (default /usr/bin/chromium)

import { createRequire } from "node:module";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const RUN_TIMEOUT_MS = 120000;
const STEP_TIMEOUT_MS = 30000;
const LAUNCH_TIMEOUT_MS = 30000;

const urls = (process.env.HUBMESH_CHAT_URLS || "").split(",").map((url) => url.trim().replace(/\/+$/, "")).filter(Boolean);
if (urls.length < 2) {
    console.error("HUBMESH_CHAT_URLS needs two node URLs at least");
    process.exit(2);
}
const executablePath = process.env.HUBMESH_CHROMIUM || "/usr/bin/chromium";

let browser;
const watchdog = setTimeout(async () => {
    console.error(`chat: gave up after ${RUN_TIMEOUT_MS} ms`);
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

// The lines of a page's log, as shown.
function log(page) {
    return page.evaluate(() => [...document.querySelectorAll("#log li")].map((item) => item.textContent));
}

async function until(page, what, predicate) {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    let last;
    while (Date.now() < deadline) {
        last = await log(page);
        if (predicate(last)) return last;
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`${what}: not within ${STEP_TIMEOUT_MS} ms; the log shows ${JSON.stringify(last)}`);
}

async function status(page, expected) {
    await page.waitForFunction((text) => document.getElementById("status").textContent === text, expected, {
        timeout: STEP_TIMEOUT_MS,
    });
}

async function join(page, user, room) {
    await page.fill("#user", user);
    await page.fill("#room", room);
    await page.click("#join-button");
    await status(page, `in room ${room}`);
}

async function say(page, text) {
    await page.fill("#text", text);
    await page.click("#send-button");
}

try {
    browser = await chromium.launch({ executablePath, headless: true, timeout: LAUNCH_TIMEOUT_MS, args: ["--no-sandbox"] });
    const errors = [];
    const outside = [];
    const open = async (base) => {
        const page = await browser.newPage();
        page.on("pageerror", (error) => errors.push(`${base}: ${error.message}`));
        page.on("request", (request) => {
            if (!request.url().startsWith(base)) outside.push(request.url());
        });
        await page.goto(`${base}/`, { timeout: STEP_TIMEOUT_MS });
        return page;
    };
    const [alice, bob] = [await open(urls[0]), await open(urls[1])];

    await check("two pages on two nodes load the official client from their node and connect", async () => {
        await status(alice, "connected");
        await status(bob, "connected");
        const loaded = await alice.evaluate(() => typeof window.signalR?.HubConnectionBuilder);
        if (loaded !== "function") throw new Error(`window.signalR.HubConnectionBuilder is ${loaded}`);
    });

    await check("a message typed on one node's page appears on the other node's page", async () => {
        await join(alice, "alice", "rust");
        await join(bob, "bob", "rust");
        await until(alice, "alice sees bob join", (lines) => lines.includes("bob joined"));
        await say(alice, "hello from the first node");
        await until(bob, "bob sees alice's message", (lines) => lines.includes("alice: hello from the first node"));
        await until(alice, "alice sees her own message", (lines) => lines.includes("alice: hello from the first node"));
        await say(bob, "and back from the second");
        await until(alice, "alice sees bob's answer", (lines) => lines.includes("bob: and back from the second"));
    });

    await check("a page that left the room gets none of its messages", async () => {
        await bob.click("#leave-button");
        await status(bob, "connected");
        await until(alice, "alice sees bob leave", (lines) => lines.includes("bob left"));
        await say(alice, "only alice is here");
        await until(alice, "alice sees her message", (lines) => lines.includes("alice: only alice is here"));
        // Alice's own copy came through the same group after bob left: bob's page must not have it.
        const bobs = await log(bob);
        if (bobs.some((line) => line.includes("only alice is here"))) throw new Error(`bob got it: ${JSON.stringify(bobs)}`);
    });

    await check("a room name the hub refuses shows the hub's error on the page", async () => {
        // Set by script: the input's maxlength stops a user typing it, not a client that skips the page.
        await bob.evaluate(() => (document.getElementById("room").value = "r".repeat(65)));
        await bob.click("#join-button");
        await bob.waitForFunction(() => document.getElementById("status").textContent.startsWith("error:"), null, {
            timeout: STEP_TIMEOUT_MS,
        });
        const text = await bob.evaluate(() => document.getElementById("status").textContent);
        if (!text.includes("room must be 1 to 64 characters")) throw new Error(`the status reads ${JSON.stringify(text)}`);
    });

    await check("the pages loaded nothing from elsewhere and raised no errors", async () => {
        if (errors.length > 0) throw new Error(`page errors: ${errors.join("; ")}`);
        if (outside.length > 0) throw new Error(`requests elsewhere: ${outside.join(", ")}`);
    });
} catch (error) {
    failures += 1;
    console.log(`FAIL chat: ${error.message}`);
} finally {
    clearTimeout(watchdog);
    await Promise.race([browser?.close(), new Promise((resolve) => setTimeout(resolve, 5000))]);
}
console.log(failures === 0 ? "chat: every check passed" : `chat: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
