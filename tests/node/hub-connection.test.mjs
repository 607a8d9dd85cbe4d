// HubConnection scenarios of the official functional test suite (HubConnectionTests), written for hubmesh's
// /testhub, for every transport in HUBMESH_TEST_TRANSPORTS and both hub protocols.

import assert from "node:assert/strict";
import { describe } from "node:test";

import {
    BASE_URL,
    HTTPS_TESTHUB_URL,
    IS_BROWSER,
    REDIRECT_URL,
    TESTHUB_URL,
    TRANSPORTS,
    collectStream,
    deferred,
    delay,
    expectCalls,
    getUserAgentHeader,
    httpGetText,
    protocolsFor,
    quietLogger,
    recordingProtocol,
    rejectionMessage,
    scenario,
    signalR,
    withTimeout,
} from "./common.mjs";

const STEP = 10000;

/** Starts `connection` with a bounded wait. */
function start(connection) {
    return withTimeout(connection.start(), STEP, "start()");
}

function invoke(connection, method, ...args) {
    return withTimeout(connection.invoke(method, ...args), STEP, `invoke("${method}")`);
}

/** A client-side transport loss, as upstream induces it: the client's own server-timeout handler. */
function killTransport(connection) {
    connection.serverTimeout();
}

function asBytes(value) {
    return value instanceof Uint8Array ? new Uint8Array(value) : value;
}

for (const transport of TRANSPORTS) {
    for (const protocol of protocolsFor(transport)) {
        const isJson = protocol.name === "json";

        describe(`hubConnection using ${protocol.name} over ${transport} transport`, () => {
            const connect = (resources, options = {}) =>
                resources.connect({ transport, protocol: protocol.create(), ...options });

            scenario("can invoke server method and receive result", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                assert.equal(await invoke(connection, "Echo", "Hello World!"), "Hello World!");
                assert.equal(await invoke(connection, "GetActiveTransportName"), transport);
            });

            if (HTTPS_TESTHUB_URL) {
                scenario("using https, can invoke server method and receive result", async (resources) => {
                    const connection = connect(resources, { url: HTTPS_TESTHUB_URL });
                    await start(connection);
                    assert.equal(await invoke(connection, "Echo", "Hello World!"), "Hello World!");
                    assert.equal(await invoke(connection, "GetActiveTransportName"), transport);
                    assert.ok(connection.baseUrl.startsWith("https://"), `connected to ${connection.baseUrl}`);
                });
            }

            scenario("can invoke server method non-blocking and not receive result", async (resources) => {
                const recorder = recordingProtocol(protocol.create());
                const connection = connect(resources, { protocol: recorder });
                const closed = deferred();
                connection.onclose((error) => closed.resolve(error));
                await start(connection);
                await withTimeout(connection.send("Echo", "fire and forget"), STEP, 'send("Echo")');
                // An invocation on the same connection is processed after the send; its Completion arrives after
                // anything the server could have wrongly sent for the send.
                assert.equal(await invoke(connection, "Echo", "after send"), "after send");
                await delay(100);
                const completions = recorder.received.filter((m) => m.type === signalR.MessageType.Completion);
                assert.equal(completions.length, 1, `expected one Completion, got ${JSON.stringify(completions)}`);
                assert.equal(connection.state, signalR.HubConnectionState.Connected);
            });

            scenario("can invoke server method structural object and receive structural result", async (resources) => {
                const connection = connect(resources);
                const calls = expectCalls(connection, "CustomObject");
                await start(connection);
                await withTimeout(
                    connection.send("SendCustomObject", { Name: "test", Value: 42 }),
                    STEP,
                    'send("SendCustomObject")',
                );
                const [[customObject]] = await withTimeout(calls.promise, STEP, "CustomObject call");
                assert.deepEqual(customObject, { Name: "test", Value: 42 });
            });

            scenario("can stream server method and receive result", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const stream = collectStream(connection.stream("Stream"));
                assert.deepEqual(await withTimeout(stream.promise, STEP, "stream completion"), ["a", "b", "c"]);
            });

            scenario("can stream server method and receive empty stream", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const stream = collectStream(connection.stream("EmptyStream"));
                assert.deepEqual(await withTimeout(stream.promise, STEP, "stream completion"), []);
            });

            scenario("can stream server method and cancel stream", async (resources) => {
                const connection = connect(resources);
                const canceled = expectCalls(connection, "StreamCanceled");
                await start(connection);
                // Cancelled at once, as upstream's test does: the StreamInvocation and its CancelInvocation leave
                // back to back, and the server must still run the method before cancelling its token.
                const stream = collectStream(connection.stream("InfiniteStream"));
                stream.subscription.dispose();
                await withTimeout(canceled.promise, STEP, "StreamCanceled call");
                assert.deepEqual(stream.items, []);
                // The connection is still usable.
                assert.equal(await invoke(connection, "Echo", "still alive"), "still alive");
            });

            scenario("rethrows an exception from the server when invoking", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const message = await rejectionMessage(
                    invoke(connection, "ThrowException", "An error occurred."),
                    "ThrowException",
                );
                assert.equal(
                    message,
                    "An unexpected error occurred invoking 'ThrowException' on the server. " +
                        "InvalidOperationException: An error occurred.",
                );
            });

            scenario("throws an exception when invoking streaming method with invoke", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const message = await rejectionMessage(invoke(connection, "EmptyStream"), "invoke(EmptyStream)");
                assert.equal(
                    message,
                    "The client attempted to invoke the streaming 'EmptyStream' method with a non-streaming " +
                        "invocation.",
                );
            });

            const streamingWithInvoke =
                "throws an exception when receiving a streaming result for method called with invoke";
            scenario(streamingWithInvoke, async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const message = await rejectionMessage(invoke(connection, "Stream"), "invoke(Stream)");
                assert.equal(
                    message,
                    "The client attempted to invoke the streaming 'Stream' method with a non-streaming invocation.",
                );
            });

            scenario("rethrows an exception from the server when streaming", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const stream = collectStream(connection.stream("StreamThrowException", "An error occurred."));
                const message = await rejectionMessage(
                    withTimeout(stream.promise, STEP, "stream error"),
                    "stream(StreamThrowException)",
                );
                assert.equal(
                    message,
                    "An unexpected error occurred invoking 'StreamThrowException' on the server. " +
                        "InvalidOperationException: An error occurred.",
                );
            });

            scenario("throws an exception when invoking hub method with stream", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const stream = collectStream(connection.stream("Echo", "42"));
                const message = await rejectionMessage(
                    withTimeout(stream.promise, STEP, "stream error"),
                    "stream(Echo)",
                );
                assert.equal(
                    message,
                    "The client attempted to invoke the non-streaming 'Echo' method with a streaming invocation.",
                );
            });

            scenario("can receive server calls", async (resources) => {
                const connection = connect(resources);
                const calls = expectCalls(connection, "Message");
                await start(connection);
                await invoke(connection, "InvokeWithString", "Hello World!");
                const [[message]] = await withTimeout(calls.promise, STEP, "Message call");
                assert.equal(message, "Hello World!");
            });

            scenario("can receive server calls without rebinding handler when restarted", async (resources) => {
                const connection = connect(resources);
                const received = [];
                let waiter = deferred();
                connection.on("Message", (message) => {
                    received.push(message);
                    waiter.resolve(message);
                });
                await start(connection);
                await invoke(connection, "InvokeWithString", "first");
                assert.equal(await withTimeout(waiter.promise, STEP, "first Message call"), "first");

                await withTimeout(connection.stop(), STEP, "stop()");
                waiter = deferred();
                await start(connection);
                await invoke(connection, "InvokeWithString", "second");
                assert.equal(await withTimeout(waiter.promise, STEP, "second Message call"), "second");
                assert.deepEqual(received, ["first", "second"]);
            });

            scenario("can handle different types", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const complexObject = {
                    ByteArray: isJson ? "aGVsbG8=" : new Uint8Array([0x68, 0x65, 0x6c, 0x6c, 0x6f]),
                    DateTime: isJson ? "2002-04-01T10:20:15Z" : new Date(Date.UTC(2002, 3, 1, 10, 20, 15)),
                    Guid: "00010203-0405-0607-0706-050403020100",
                    IntArray: [0x01, 0x02, 0x03, 0xff],
                    String: "hello world",
                };
                const value = await invoke(connection, "EchoComplexObject", complexObject);
                value.ByteArray = asBytes(value.ByteArray);
                assert.deepEqual(value, complexObject);
            });

            scenario("can receive different types", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const value = await invoke(connection, "SendComplexObject");
                value.ByteArray = asBytes(value.ByteArray);
                assert.deepEqual(value, {
                    ByteArray: isJson ? "AQID" : new Uint8Array([0x1, 0x2, 0x3]),
                    DateTime: isJson ? "2000-01-01T00:00:00Z" : new Date(Date.UTC(2000, 0, 1)),
                    Guid: "00010203-0405-0607-0706-050403020100",
                    IntArray: [0x01, 0x02, 0x03],
                    String: "hello world",
                });
            });

            scenario("can be restarted", async (resources) => {
                const connection = connect(resources);
                const closes = [];
                connection.onclose((error) => closes.push(error));
                await start(connection);
                assert.equal(await invoke(connection, "Echo", "one"), "one");
                await withTimeout(connection.stop(), STEP, "stop()");
                assert.deepEqual(closes, [undefined]);
                assert.equal(connection.connectionId, null);

                await start(connection);
                assert.equal(await invoke(connection, "Echo", "two"), "two");
                await withTimeout(connection.stop(), STEP, "second stop()");
                assert.deepEqual(closes, [undefined, undefined]);
            });

            scenario("can stream from client to server", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const subject = new signalR.Subject();
                const result = invoke(connection, "StreamingConcat", subject);
                subject.next("a");
                subject.next("b");
                subject.next("c");
                subject.complete();
                assert.equal(await result, "abc");
            });

            scenario("can stream from client to server with delayed items", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const subject = new signalR.Subject();
                const result = invoke(connection, "StreamingConcat", subject);
                for (const item of ["x", "y", "z"]) {
                    await delay(50);
                    subject.next(item);
                }
                subject.complete();
                assert.equal(await result, "xyz");
            });

            scenario("can stream from client to server and close with error", async (resources) => {
                const connection = connect(resources);
                await start(connection);
                const subject = new signalR.Subject();
                const result = invoke(connection, "StreamingConcat", subject);
                subject.next("a");
                subject.next("b");
                subject.error(new Error("Something bad"));
                const message = await rejectionMessage(result, "StreamingConcat with a failed upload");
                assert.equal(
                    message,
                    "An unexpected error occurred invoking 'StreamingConcat' on the server. " +
                        "HubException: Something bad",
                );
                assert.equal(await invoke(connection, "Echo", "still alive"), "still alive");
            });

            const clientResult = async (connection) => {
                const response = await withTimeout(
                    httpGetText(`${BASE_URL}/clientresult/${encodeURIComponent(connection.connectionId)}`),
                    STEP,
                    "GET /clientresult",
                );
                return response.text;
            };

            scenario("can return result to server", async (resources) => {
                const connection = connect(resources);
                connection.on("Result", () => 10);
                await start(connection);
                assert.equal(await clientResult(connection), "10");
            });

            scenario("can return async result to server", async (resources) => {
                const connection = connect(resources);
                connection.on("Result", async () => {
                    await delay(50);
                    return 11;
                });
                await start(connection);
                assert.equal(await clientResult(connection), "11");
            });

            scenario("can throw result to server", async (resources) => {
                const connection = connect(resources, { logger: quietLogger });
                connection.on("Result", () => {
                    throw new Error("from callback");
                });
                await start(connection);
                assert.equal(await clientResult(connection), "Error: from callback");
            });

            scenario("returns result error to server when no result given", async (resources) => {
                const connection = connect(resources, { logger: quietLogger });
                connection.on("Result", () => {});
                await start(connection);
                assert.equal(await clientResult(connection), "Client didn't provide a result.");
            });

            scenario("connection id matches server side connection id", async (resources) => {
                const connection = connect(resources);
                assert.equal(connection.connectionId, null);
                await start(connection);
                assert.equal(typeof connection.connectionId, "string");
                assert.ok(connection.connectionId.length > 0);
                assert.equal(await invoke(connection, "GetCallerConnectionId"), connection.connectionId);
                await withTimeout(connection.stop(), STEP, "stop()");
                assert.equal(connection.connectionId, null);
            });

            scenario("two connections get distinct connection ids", async (resources) => {
                const first = connect(resources);
                const second = connect(resources);
                await Promise.all([start(first), start(second)]);
                assert.notEqual(first.connectionId, second.connectionId);
                assert.equal(await invoke(first, "GetCallerConnectionId"), first.connectionId);
                assert.equal(await invoke(second, "GetCallerConnectionId"), second.connectionId);
            });
        });
    }

    describe(`hubConnection over ${transport} transport`, () => {
        const connect = (resources, options = {}) => resources.connect({ transport, ...options });

        if (transport !== "LongPolling") {
            scenario("terminates if no messages received within timeout interval", async (resources) => {
                const connection = connect(resources, { logger: quietLogger });
                connection.serverTimeoutInMilliseconds = 100;
                const closed = deferred();
                connection.onclose((error) => closed.resolve(error));
                await start(connection);
                const error = await withTimeout(closed.promise, STEP, "onclose");
                assert.ok(error instanceof Error, `expected an Error, got ${error}`);
                assert.equal(error.message, "Server timeout elapsed without receiving a message from the server.");
            });
        }

        scenario("expired cookies are not preserved", async (resources) => {
            const connection = connect(resources);
            await start(connection);
            assert.equal(await invoke(connection, "GetCookie", "expiredCookie"), null);
        });

        if (HTTPS_TESTHUB_URL) {
            scenario("preserves cookies between requests", async (resources) => {
                // Upstream's HTTPS-only row: over HTTPS negotiate's cookies are SameSite=None; Secure; Partitioned,
                // which a browser page on another site keeps and sends back.
                const connection = connect(resources, { url: HTTPS_TESTHUB_URL });
                await start(connection);
                assert.equal(await invoke(connection, "GetCookie", "testCookie"), "testValue");
                assert.equal(await invoke(connection, "GetCookie", "testCookie2"), "testValue2");
                assert.equal(await invoke(connection, "GetCookie", "expiredCookie"), null);
            });
        }

        scenario("preserves cookies between requests over plain HTTP", async (resources) => {
            // Over plain HTTP the cookies have no SameSite attribute: Node's cookie jar forwards them, and so does a
            // browser whose page is on the same site (127.0.0.1, another port).
            const connection = connect(resources);
            await start(connection);
            assert.equal(await invoke(connection, "GetCookie", "testCookie"), "testValue");
            assert.equal(await invoke(connection, "GetCookie", "testCookie2"), "testValue2");
        });

        scenario("can reconnect", async (resources) => {
            const reconnecting = deferred();
            const reconnected = deferred();
            const connection = connect(resources, { reconnect: true, logger: quietLogger });
            connection.onreconnecting((error) => reconnecting.resolve(error));
            connection.onreconnected((connectionId) => reconnected.resolve(connectionId));
            await start(connection);
            const initialConnectionId = connection.connectionId;
            assert.equal(await invoke(connection, "Echo", "before"), "before");

            killTransport(connection);
            await withTimeout(reconnecting.promise, STEP, "onreconnecting");
            const newConnectionId = await withTimeout(reconnected.promise, STEP, "onreconnected");
            assert.notEqual(newConnectionId, initialConnectionId);
            assert.equal(newConnectionId, connection.connectionId);
            assert.equal(await invoke(connection, "GetCallerConnectionId"), newConnectionId);
            assert.equal(await invoke(connection, "Echo", "after"), "after");
        });

        scenario("can change url in reconnecting state", async (resources) => {
            const reconnecting = deferred();
            const reconnected = deferred();
            const connection = connect(resources, {
                url: `${TESTHUB_URL}?numRedirects=3`,
                reconnect: true,
                logger: quietLogger,
            });
            const newUrl = `${TESTHUB_URL}?numRedirects=7`;
            connection.onreconnecting(() => {
                connection.baseUrl = newUrl;
                reconnecting.resolve();
            });
            connection.onreconnected((connectionId) => reconnected.resolve(connectionId));
            await start(connection);
            assert.equal(await invoke(connection, "GetNumRedirects"), 3);

            killTransport(connection);
            await withTimeout(reconnecting.promise, STEP, "onreconnecting");
            assert.equal(connection.baseUrl, newUrl);
            await withTimeout(reconnected.promise, STEP, "onreconnected");
            // The new connection was made with the new URL, whose query string hub code sees.
            assert.equal(await invoke(connection, "GetNumRedirects"), 7);
        });

        // A browser cannot put headers on a WebSocket or an EventSource request: there the hub sees none of the
        // client's headers (upstream's tests expect null too); long polling's requests carry them.
        const headersReachHub = !IS_BROWSER || transport === "LongPolling";

        scenario("sets the user agent header", async (resources) => {
            const connection = connect(resources, { protocol: new signalR.JsonHubProtocol() });
            await start(connection);
            const [name, value] = getUserAgentHeader();
            // Browsers forbid setting User-Agent, so the client sends its own header there.
            assert.equal(name, IS_BROWSER ? "X-SignalR-User-Agent" : "User-Agent");
            assert.match(value, /^Microsoft SignalR\/\d+\.\d+ \(/);
            assert.equal(await invoke(connection, "GetHeader", name), headersReachHub ? value : null);
        });

        scenario("overwrites library headers with user headers", async (resources) => {
            const [name] = getUserAgentHeader();
            const headers = { [name]: "Custom Agent", "X-HEADER": "VALUE" };
            const connection = connect(resources, { headers });
            await start(connection);
            assert.equal(await invoke(connection, "GetHeader", "X-HEADER"), headersReachHub ? "VALUE" : null);
            assert.equal(await invoke(connection, "GetHeader", name), headersReachHub ? "Custom Agent" : null);
            assert.equal(await invoke(connection, "GetHeader", "X-Header-That-Nobody-Sent"), null);
        });

        scenario("reads the number of redirects after a negotiate redirect", async (resources) => {
            const connection = connect(resources, { url: REDIRECT_URL });
            await start(connection);
            const redirects = await invoke(connection, "GetNumRedirects");
            assert.equal(typeof redirects, "number");
            assert.ok(redirects >= 1, `expected at least one redirect, got ${redirects}`);
            assert.equal(await invoke(connection, "GetCallerConnectionId"), connection.connectionId);
            assert.equal(await invoke(connection, "GetActiveTransportName"), transport);
        });
    });
}

describe("hubConnection", () => {
    scenario("can reconnect after negotiate redirect", async (resources) => {
        const reconnecting = deferred();
        const reconnected = deferred();
        const connection = resources.connect({ url: REDIRECT_URL, reconnect: true, logger: quietLogger });
        connection.onreconnecting((error) => reconnecting.resolve(error));
        connection.onreconnected((connectionId) => reconnected.resolve(connectionId));
        await start(connection);
        const redirectsBefore = await invoke(connection, "GetNumRedirects");
        const initialConnectionId = connection.connectionId;
        assert.equal(await invoke(connection, "GetCallerConnectionId"), initialConnectionId);

        killTransport(connection);
        await withTimeout(reconnecting.promise, STEP, "onreconnecting");
        const newConnectionId = await withTimeout(reconnected.promise, STEP, "onreconnected");
        assert.notEqual(newConnectionId, initialConnectionId);
        assert.equal(await invoke(connection, "GetCallerConnectionId"), newConnectionId);
        const redirectsAfter = await invoke(connection, "GetNumRedirects");
        assert.ok(redirectsAfter > redirectsBefore, `redirects before ${redirectsBefore}, after ${redirectsAfter}`);
    });

    scenario("can reconnect after skipping negotiation", async (resources) => {
        const reconnecting = deferred();
        const reconnected = deferred();
        const connection = resources.connect({
            transport: "WebSockets",
            skipNegotiation: true,
            reconnect: true,
            logger: quietLogger,
        });
        connection.onreconnecting((error) => reconnecting.resolve(error));
        connection.onreconnected((connectionId) => reconnected.resolve(connectionId));
        await start(connection);
        assert.equal(await invoke(connection, "Echo", "before"), "before");

        killTransport(connection);
        await withTimeout(reconnecting.promise, STEP, "onreconnecting");
        const newConnectionId = await withTimeout(reconnected.promise, STEP, "onreconnected");
        assert.equal(newConnectionId, undefined);
        assert.equal(connection.connectionId, null);
        assert.equal(await invoke(connection, "Echo", "after"), "after");
    });

    scenario("connection id matches server side connection id", async (resources) => {
        const connection = resources.connect();
        await start(connection);
        assert.equal(await invoke(connection, "GetCallerConnectionId"), connection.connectionId);
    });

    scenario("connection id is always null if negotiation is skipped", async (resources) => {
        const connection = resources.connect({ transport: "WebSockets", skipNegotiation: true });
        assert.equal(connection.connectionId, null);
        await start(connection);
        assert.equal(connection.connectionId, null);
        // The server still gives the connection an id of its own.
        const serverId = await invoke(connection, "GetCallerConnectionId");
        assert.equal(typeof serverId, "string");
        assert.ok(serverId.length > 0);
        await withTimeout(connection.stop(), STEP, "stop()");
        assert.equal(connection.connectionId, null);
    });

    for (const protocol of protocolsFor("WebSockets")) {
        scenario(`can invoke with skipNegotiation using ${protocol.name}`, async (resources) => {
            const connection = resources.connect({
                transport: "WebSockets",
                skipNegotiation: true,
                protocol: protocol.create(),
            });
            await start(connection);
            assert.equal(await invoke(connection, "Echo", "skip"), "skip");
            const stream = collectStream(connection.stream("Stream"));
            assert.deepEqual(await withTimeout(stream.promise, STEP, "stream completion"), ["a", "b", "c"]);
        });
    }

    scenario("rejects start when the hub does not exist", async (resources) => {
        const connection = resources.connect({ url: `${BASE_URL}/no-such-hub`, logger: quietLogger });
        const message = await rejectionMessage(start(connection), "start() against a missing hub");
        assert.match(message, /404/);
        assert.equal(connection.state, signalR.HubConnectionState.Disconnected);
    });
});
