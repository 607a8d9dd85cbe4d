// ConnectionTests of the official functional test suite: the client's (internal) HttpConnection against the raw
// /echo endpoint, which has no hub protocol and echoes every message back.

import assert from "node:assert/strict";
import { describe } from "node:test";

import {
    ECHO_URL,
    HTTP_CLIENT_NAME,
    HttpConnection,
    IS_BROWSER,
    TESTHUB_URL,
    TRANSPORTS,
    consoleLogger,
    deferred,
    recordingLogger,
    scenario,
    signalR,
    withTimeout,
} from "./common.mjs";

const STEP = 10000;
const MESSAGE = "Hello World!";

/** Sends `payload` over a started connection and resolves when it is echoed back; then stops it cleanly. */
async function echoOnce(connection, format, payload, matches) {
    const received = deferred();
    const closed = deferred();
    connection.onreceive = (data) => {
        if (matches(data)) {
            received.resolve(data);
        }
    };
    connection.onclose = (error) => closed.resolve(error);
    await withTimeout(connection.start(format), STEP, "HttpConnection.start()");
    await withTimeout(connection.send(payload), STEP, "HttpConnection.send()");
    const data = await withTimeout(received.promise, STEP, "the echo");
    await withTimeout(connection.stop(), STEP, "HttpConnection.stop()");
    const error = await withTimeout(closed.promise, STEP, "onclose");
    assert.equal(error, undefined, `onclose got an error: ${error}`);
    return data;
}

describe("connection", () => {
    scenario("can connect to the server without specifying transport explicitly", async (resources) => {
        const connection = resources.http(new HttpConnection(ECHO_URL, { logger: consoleLogger }));
        const data = await echoOnce(connection, signalR.TransferFormat.Text, MESSAGE, (data) => data === MESSAGE);
        assert.equal(data, MESSAGE);
    });

    for (const transport of TRANSPORTS) {
        const transportType = signalR.HttpTransportType[transport];

        describe(`over ${transport} with ${HTTP_CLIENT_NAME}`, () => {
            scenario("can send and receive messages", async (resources) => {
                const connection = resources.http(
                    new HttpConnection(ECHO_URL, { logger: consoleLogger, transport: transportType }),
                );
                const data = await echoOnce(connection, signalR.TransferFormat.Text, MESSAGE, (d) => d === MESSAGE);
                assert.equal(data, MESSAGE);
            });

            scenario("can send and receive many messages in order", async (resources) => {
                const connection = resources.http(
                    new HttpConnection(ECHO_URL, { logger: consoleLogger, transport: transportType }),
                );
                let received = "";
                const all = deferred();
                const expected = Array.from({ length: 50 }, (_, i) => `<${i}>`).join("");
                connection.onreceive = (data) => {
                    received += data;
                    if (received.length >= expected.length) {
                        all.resolve(received);
                    }
                };
                await withTimeout(connection.start(signalR.TransferFormat.Text), STEP, "start()");
                // Unawaited sends are batched by the client; the echo must keep the bytes and their order.
                const sends = [];
                for (let i = 0; i < 50; i++) {
                    sends.push(connection.send(`<${i}>`));
                }
                await withTimeout(Promise.all(sends), STEP, "the sends");
                assert.equal(await withTimeout(all.promise, STEP, "every echo"), expected);
            });

            if (transport !== "ServerSentEvents") {
                scenario("can send and receive binary messages", async (resources) => {
                    const connection = resources.http(
                        new HttpConnection(ECHO_URL, { logger: consoleLogger, transport: transportType }),
                    );
                    const payload = new Uint8Array([0, 1, 2, 0x1e, 0x7f, 0x80, 0xfe, 0xff]);
                    const data = await echoOnce(connection, signalR.TransferFormat.Binary, payload, () => true);
                    const kind = Object.prototype.toString.call(data);
                    assert.ok(data instanceof ArrayBuffer, `expected an ArrayBuffer, got ${kind}`);
                    assert.deepEqual(new Uint8Array(data), payload);
                });
            }

            scenario("does not log content of messages sent or received by default", async (resources) => {
                const logger = recordingLogger();
                const connection = resources.http(
                    new HttpConnection(ECHO_URL, { logger, transport: transportType }),
                );
                await echoOnce(connection, signalR.TransferFormat.Text, MESSAGE, (d) => d === MESSAGE);
                const leaks = logger.messages.filter(({ message }) => message.includes(MESSAGE));
                assert.deepEqual(leaks, []);
                assert.ok(logger.messages.length > 0, "the client logged nothing at all");
            });

            scenario("does log content of messages sent or received when enabled", async (resources) => {
                const logger = recordingLogger();
                const connection = resources.http(
                    new HttpConnection(ECHO_URL, { logger, transport: transportType, logMessageContent: true }),
                );
                await echoOnce(connection, signalR.TransferFormat.Text, MESSAGE, (d) => d === MESSAGE);
                const logged = logger.messages.filter(({ message }) => message.includes(`'${MESSAGE}'`));
                assert.ok(logged.length > 0, "the message content was not logged");
            });

            // Browser only, and only where the page is on another origin than the hub (as here); a WebSocket always
            // carries cookies, so only SSE and long polling can honour the flag.
            if (IS_BROWSER && transport !== "WebSockets") {
                scenario("honors withCredentials flag", async (resources) => {
                    const cookieSeen = async (withCredentials) => {
                        const connection = resources.hub(
                            new signalR.HubConnectionBuilder()
                                .withUrl(TESTHUB_URL, { transport: transportType, withCredentials })
                                .configureLogging(consoleLogger)
                                .build(),
                        );
                        await withTimeout(connection.start(), STEP, "start()");
                        const cookie = await withTimeout(connection.invoke("GetCookie", "testCookie"), STEP, "GetCookie");
                        await withTimeout(connection.stop(), STEP, "stop()");
                        return cookie;
                    };
                    // The first negotiate (with credentials) stores the cookie; then it is sent, or withheld.
                    await cookieSeen(true);
                    assert.equal(await cookieSeen(true), "testValue", "withCredentials: true");
                    assert.equal(await cookieSeen(false), null, "withCredentials: false");
                });

                scenario("an echo connection without credentials closes without an echo", async (resources) => {
                    // Upstream's row: /echo ends at once an SSE or long-polling connection whose request carries no
                    // testCookie, which a cross-site request with withCredentials: false never does.
                    const connection = resources.http(
                        new HttpConnection(ECHO_URL, { logger: consoleLogger, transport: transportType, withCredentials: false }),
                    );
                    const received = [];
                    const closed = deferred();
                    connection.onreceive = (data) => received.push(data);
                    connection.onclose = (error) => closed.resolve(error);
                    await withTimeout(connection.start(signalR.TransferFormat.Text), STEP, "HttpConnection.start()");
                    // The connection may be gone already: then the send fails, which is as good.
                    await withTimeout(connection.send(MESSAGE), STEP, "HttpConnection.send()").catch(() => {});
                    await withTimeout(closed.promise, STEP, "onclose");
                    assert.deepEqual(received, [], "nothing was echoed");
                });
            }
        });
    }
});
