// WebSocketTests of the official functional test suite: a raw WebSocket straight to /echo (no negotiate, no hub
// protocol) must echo what it gets and close cleanly with 1000.

import assert from "node:assert/strict";
import { describe } from "node:test";

import { ECHO_URL, IS_BROWSER, TESTHUB_URL, WebSocket, deferred, scenario, withTimeout } from "./common.mjs";

const STEP = 10000;
const WS_ECHO_URL = ECHO_URL.replace(/^http/, "ws");

/** Opens a raw WebSocket and records its messages and its close event. */
function open(resources, url = WS_ECHO_URL) {
    const socket = resources.ws(new WebSocket(url));
    const opened = deferred();
    const closed = deferred();
    const messages = [];
    let onMessage = () => {};
    socket.onopen = () => opened.resolve();
    socket.onerror = (event) => opened.reject(event.error || new Error(event.message || "WebSocket error"));
    socket.onmessage = (event) => {
        messages.push(event);
        onMessage(event);
    };
    socket.onclose = (event) => closed.resolve({ code: event.code, reason: event.reason, wasClean: event.wasClean });
    return {
        socket,
        opened: withTimeout(opened.promise, STEP, "the WebSocket to open"),
        closed: closed.promise,
        messages,
        onMessage: (callback) => {
            onMessage = callback;
        },
    };
}

describe("WebSockets", () => {
    scenario("can be used to connect to SignalR", async (resources) => {
        const message = "message";
        const ws = open(resources);
        let received = "";
        ws.onMessage((event) => {
            received += event.data.toString();
            if (received === message) {
                ws.socket.close();
            }
        });
        await ws.opened;
        ws.socket.send(message);
        const close = await withTimeout(ws.closed, STEP, "the WebSocket to close");
        assert.equal(received, message);
        assert.equal(close.wasClean, true, `close was not clean: ${JSON.stringify(close)}`);
        assert.equal(close.code, 1000, `close: ${JSON.stringify(close)}`);
    });

    scenario("echoes text frames as text and binary frames as binary", async (resources) => {
        const ws = open(resources);
        ws.socket.binaryType = "arraybuffer";
        let waiter = deferred();
        ws.onMessage(() => waiter.resolve());
        await ws.opened;

        ws.socket.send("text frame");
        await withTimeout(waiter.promise, STEP, "the text echo");
        waiter = deferred();
        ws.socket.send(new Uint8Array([1, 2, 3, 0xff]));
        await withTimeout(waiter.promise, STEP, "the binary echo");

        assert.equal(ws.messages.length, 2);
        assert.equal(ws.messages[0].data, "text frame");
        assert.ok(ws.messages[1].data instanceof ArrayBuffer, "the binary frame was not echoed as binary");
        assert.deepEqual(new Uint8Array(ws.messages[1].data), new Uint8Array([1, 2, 3, 0xff]));
        ws.socket.close(1000);
        const close = await withTimeout(ws.closed, STEP, "the WebSocket to close");
        assert.equal(close.code, 1000);
        assert.equal(close.wasClean, true);
    });

    scenario("a hub refuses a WebSocket with an unknown connection id", async (resources) => {
        const ws = open(resources, `${TESTHUB_URL.replace(/^http/, "ws")}?id=no-such-connection`);
        const failure = await ws.opened.then(
            () => "opened",
            (error) => String(error && error.message),
        );
        assert.notEqual(failure, "opened", "a WebSocket with an unknown id was accepted");
        if (!IS_BROWSER) {
            // A browser's WebSocket error event says nothing about the HTTP status it got.
            assert.match(failure, /404/);
        }
    });
});
