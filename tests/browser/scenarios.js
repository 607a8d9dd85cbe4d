// Browser-side scenarios, loaded by index.html after the official client's browser builds (window.signalR and
// window.signalR.protocols.msgpack). run.mjs calls window.hubmesh.runCombination / runWithoutCredentials /
// runWorker through Playwright; each resolves to { steps: [{ name, ok, detail }], logs } and never rejects.
//
// Which HTTP client the official client uses is decided by DefaultHttpClient when a connection is built:
// FetchHttpClient when a global `fetch` exists, XhrHttpClient otherwise (FetchHttpClient and XhrHttpClient are not
// exported by the browser build). run.mjs removes `fetch` from the page before any script runs to get XHR, and
// the counters below check which one actually carried the requests to the hub.

(function () {
    "use strict";

    const STEP_TIMEOUT_MS = 10000;

    // Requests to other origins (the hub), counted per HTTP API.
    const calls = { fetch: 0, xhr: 0 };
    const pageOrigin = location.origin;
    const isCrossOrigin = (url) => {
        try {
            return new URL(String(url), location.href).origin !== pageOrigin;
        } catch {
            return false;
        }
    };
    if (typeof fetch !== "undefined") {
        const originalFetch = window.fetch;
        window.fetch = function (input, init) {
            if (isCrossOrigin(input && input.url ? input.url : input)) {
                calls.fetch += 1;
            }
            return originalFetch.call(this, input, init);
        };
    }
    const originalOpen = XMLHttpRequest.prototype.open;
    XMLHttpRequest.prototype.open = function (method, url, ...rest) {
        if (isCrossOrigin(url)) {
            calls.xhr += 1;
        }
        return originalOpen.call(this, method, url, ...rest);
    };

    function withTimeout(promise, ms, what) {
        let timer;
        const timeout = new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
        });
        return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
    }

    function expectEqual(actual, expected, what) {
        const a = JSON.stringify(actual);
        const e = JSON.stringify(expected);
        if (a !== e) {
            throw new Error(`${what}: expected ${e}, got ${a}`);
        }
        return a;
    }

    function recorder() {
        const steps = [];
        const logs = [];
        const logger = {
            log(level, message) {
                if (level >= signalR.LogLevel.Information) {
                    logs.push(`[${signalR.LogLevel[level]}] ${message}`);
                }
            },
        };
        async function step(name, body) {
            try {
                const detail = await withTimeout(Promise.resolve().then(body), STEP_TIMEOUT_MS, name);
                steps.push({ name, ok: true, detail: detail === undefined ? "" : String(detail) });
                return true;
            } catch (error) {
                steps.push({ name, ok: false, detail: String(error && error.message ? error.message : error) });
                return false;
            }
        }
        return { steps, logs, logger, step };
    }

    function createProtocol(name) {
        if (name === "messagepack") {
            return new signalR.protocols.msgpack.MessagePackHubProtocol();
        }
        return new signalR.JsonHubProtocol();
    }

    function build(url, transport, protocol, logger, options) {
        return new signalR.HubConnectionBuilder()
            .withUrl(url, { transport: signalR.HttpTransportType[transport], ...options })
            .withHubProtocol(createProtocol(protocol))
            .configureLogging(logger)
            .build();
    }

    /** The HubConnectionTests subset over one transport × protocol, with the page's HTTP client. */
    async function runCombination({ hubBase, transport, protocol, httpClient }) {
        const { steps, logs, logger, step } = recorder();
        const before = { ...calls };
        const connection = build(`${hubBase}/testhub`, transport, protocol, logger, {});
        const message = `Hello from ${httpClient}/${transport}/${protocol} \u00fc\u4e16`;
        let receivedMessage;
        const received = new Promise((resolve) => {
            receivedMessage = resolve;
        });
        connection.on("Message", (value) => receivedMessage(value));
        if (!(await step("start", () => connection.start()))) {
            return { steps, logs };
        }
        await step("GetActiveTransportName", async () =>
            expectEqual(await connection.invoke("GetActiveTransportName"), transport, "active transport"),
        );
        await step("invoke Echo", async () => expectEqual(await connection.invoke("Echo", message), message, "Echo"));
        await step("stream Stream", async () => {
            const items = await new Promise((resolve, reject) => {
                const got = [];
                connection.stream("Stream").subscribe({
                    next: (item) => got.push(item),
                    complete: () => resolve(got),
                    error: reject,
                });
            });
            return expectEqual(items, ["a", "b", "c"], "Stream items");
        });
        await step("InvokeWithString -> Message", async () => {
            await connection.invoke("InvokeWithString", message);
            return expectEqual(await received, message, "Message argument");
        });
        await step("client-to-server stream StreamingConcat", async () => {
            const subject = new signalR.Subject();
            const result = connection.invoke("StreamingConcat", subject);
            subject.next("Hello ");
            subject.next("World");
            subject.next("!");
            subject.complete();
            return expectEqual(await result, "Hello World!", "StreamingConcat");
        });
        await step("GetHeader(X-SignalR-User-Agent)", async () => {
            const header = await connection.invoke("GetHeader", "X-SignalR-User-Agent");
            if (transport === "LongPolling") {
                // The first request of a long-polling connection is an XHR/fetch poll, which carries the header.
                if (typeof header !== "string" || !header.startsWith("Microsoft SignalR/")) {
                    throw new Error(`expected the client's user agent over LongPolling, got ${JSON.stringify(header)}`);
                }
                return JSON.stringify(header);
            }
            // WebSocket and EventSource requests cannot carry custom headers in browsers.
            return expectEqual(header, null, "X-SignalR-User-Agent over WS/SSE");
        });
        await step("GetCookie (withCredentials default true)", async () => {
            const cookies = {};
            for (const name of ["testCookie", "testCookie2", "expiredCookie"]) {
                cookies[name] = await connection.invoke("GetCookie", name);
            }
            return expectEqual(
                cookies,
                { testCookie: "testValue", testCookie2: "testValue2", expiredCookie: null },
                "cookies the hub received",
            );
        });
        await step("stop", () => connection.stop());
        await step(`requests went through ${httpClient}`, () => {
            const used = { fetch: calls.fetch - before.fetch, xhr: calls.xhr - before.xhr };
            const other = httpClient === "fetch" ? "xhr" : "fetch";
            if (used[httpClient] === 0 || used[other] !== 0) {
                throw new Error(`expected only ${httpClient} requests to the hub, counted ${JSON.stringify(used)}`);
            }
            return JSON.stringify(used);
        });
        return { steps, logs };
    }

    /**
     * withCredentials: false on a transport whose requests honour it (SSE, long polling; a WebSocket always sends
     * cookies): the hub sees no cookie although the browser holds testCookie for the hub's host.
     */
    async function runWithoutCredentials({ hubBase, transport }) {
        const { steps, logs, logger, step } = recorder();
        const connection = build(`${hubBase}/testhub`, transport, "json", logger, { withCredentials: false });
        if (!(await step("start (withCredentials false)", () => connection.start()))) {
            return { steps, logs };
        }
        await step("invoke Echo", async () => expectEqual(await connection.invoke("Echo", "x"), "x", "Echo"));
        await step("GetCookie is null", async () =>
            expectEqual(await connection.invoke("GetCookie", "testCookie"), null, "testCookie without credentials"),
        );
        await step("stop", () => connection.stop());
        return { steps, logs };
    }

    /** upstream WebWorkerTests "can use SignalR client": the web-worker build inside a dedicated worker. */
    async function runWorker({ hubBase, transport }) {
        const { steps, logs, step } = recorder();
        const worker = new Worker("/worker.js");
        const message = `Hello from a worker over ${transport}`;
        try {
            await step("worker loads the client from the hub's server, invokes Echo and gets Message", async () => {
                const answer = await new Promise((resolve, reject) => {
                    worker.onmessage = (event) => resolve(event.data);
                    worker.onerror = (event) => reject(new Error(`worker error: ${event.message}`));
                    worker.postMessage({
                        // From the hub's server, as upstream's worker loads it (the test app serves the bundles).
                        libUrl: `${hubBase}/lib/signalr-webworker/signalr.js`,
                        hubUrl: `${hubBase}/testhub`,
                        transport,
                        message,
                    });
                });
                if (!answer.ok) {
                    throw new Error(answer.error);
                }
                expectEqual(answer.transport, transport, "worker's active transport");
                expectEqual(answer.pushed, message, "the Message the hub sent the worker");
                return expectEqual(answer.result, message, "worker's Echo");
            });
        } finally {
            worker.terminate();
        }
        return { steps, logs };
    }

    window.hubmesh = { runCombination, runWithoutCredentials, runWorker, calls, hasFetch: typeof fetch !== "undefined" };
})();
