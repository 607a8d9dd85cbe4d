// Scenarios of the official suite about which transport negotiation picks, and how long polling ends:
// "allows Server-Sent Events when negotiating for JSON protocol", "skips Server-Sent Events when negotiating for
// MessagePack protocol" (both against /testhub-nowebsockets, which offers SSE and long polling only) and "over
// LongPolling it sends DELETE request and waits for poll to terminate".

import { describe } from "node:test";
import assert from "node:assert/strict";

import { BASE_URL, IS_BROWSER, MessagePackHubProtocol, signalR, quietLogger, scenario } from "./common.mjs";

const NO_WEBSOCKETS_URL = `${BASE_URL}/testhub-nowebsockets`;

/** An HTTP client that records every request and when each one finished. */
class RecordingHttpClient extends signalR.DefaultHttpClient {
    constructor() {
        super(quietLogger);
        this.requests = [];
    }

    async send(request) {
        const entry = { method: request.method, url: request.url, done: false };
        this.requests.push(entry);
        try {
            return await super.send(request);
        } finally {
            entry.done = true;
        }
    }
}

describe("transport selection and long polling shutdown", () => {
    scenario("allows Server-Sent Events when negotiating for JSON protocol", async (resources) => {
        const connection = resources.hub(
            new signalR.HubConnectionBuilder()
                .withUrl(NO_WEBSOCKETS_URL)
                .configureLogging(quietLogger)
                .build(),
        );
        await connection.start();
        assert.equal(await connection.invoke("GetActiveTransportName"), "ServerSentEvents");
    });

    scenario("skips Server-Sent Events when negotiating for MessagePack protocol", async (resources) => {
        const connection = resources.hub(
            new signalR.HubConnectionBuilder()
                .withUrl(NO_WEBSOCKETS_URL)
                .withHubProtocol(new MessagePackHubProtocol())
                .configureLogging(quietLogger)
                .build(),
        );
        await connection.start();
        assert.equal(await connection.invoke("GetActiveTransportName"), "LongPolling");
    });

    // In Node there is always a WebSocket implementation (upstream's test is a no-op there); in a browser the page's
    // WebSocket is replaced by one that throws, and the client must fall back to another transport.
    if (IS_BROWSER) {
        scenario("transport falls back from WebSockets to SSE or LongPolling", async (resources) => {
            const original = globalThis.WebSocket;
            globalThis.WebSocket = function () {
                throw new Error("WebSockets are switched off for this test");
            };
            try {
                const connection = resources.hub(
                    new signalR.HubConnectionBuilder()
                        .withUrl(`${BASE_URL}/testhub`)
                        .configureLogging(quietLogger)
                        .build(),
                );
                await connection.start();
                const transport = await connection.invoke("GetActiveTransportName");
                assert.notEqual(transport, "WebSockets");
                assert.ok(["ServerSentEvents", "LongPolling"].includes(transport), transport);
                assert.equal(await connection.invoke("Echo", "after fallback"), "after fallback");
            } finally {
                globalThis.WebSocket = original;
            }
        });
    }

    scenario("over LongPolling it sends DELETE request and waits for poll to terminate", async (resources) => {
        const httpClient = new RecordingHttpClient();
        const connection = resources.hub(
            new signalR.HubConnectionBuilder()
                .withUrl(`${BASE_URL}/testhub`, { transport: signalR.HttpTransportType.LongPolling, httpClient })
                .configureLogging(quietLogger)
                .build(),
        );
        await connection.start();
        assert.equal(await connection.invoke("Echo", "before stop"), "before stop");
        await connection.stop();
        const deletes = httpClient.requests.filter((request) => request.method === "DELETE");
        assert.equal(deletes.length, 1, "exactly one DELETE");
        const polls = httpClient.requests.filter((request) => request.method === "GET");
        assert.ok(polls.length >= 2, "the first poll and at least one more");
        assert.ok(
            polls.every((poll) => poll.done),
            "every poll had terminated when stop() resolved",
        );
    });
});
