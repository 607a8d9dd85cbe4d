// The routes of upstream's functional-test app (its Startup.cs) besides the hubs, as a client sees them on the test
// server: the official client's bundles served as static files, /echoredirect (307 to /echo), the uncreatable hub,
// and /deployment. /bad-negotiate is in negotiate.test.mjs, /redirect in hub-connection.test.mjs.

import assert from "node:assert/strict";
import { describe } from "node:test";

import {
    BASE_URL,
    HttpConnection,
    IS_BROWSER,
    TRANSPORTS,
    consoleLogger,
    deferred,
    httpGetText,
    quietLogger,
    scenario,
    signalR,
    withTimeout,
} from "./common.mjs";

const STEP = 10000;
const MESSAGE = "Hello World!";

/** URL path on the test server -> the npm package file upstream's build copies there (under node_modules). */
const BUNDLES = {
    "/lib/signalr/signalr.js": "@microsoft/signalr/dist/browser/signalr.js",
    "/lib/signalr/signalr.min.js": "@microsoft/signalr/dist/browser/signalr.min.js",
    "/lib/signalr/signalr-protocol-msgpack.js": "@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.js",
    "/lib/signalr/signalr-protocol-msgpack.min.js":
        "@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.min.js",
    "/lib/signalr-webworker/signalr.js": "@microsoft/signalr/dist/webworker/signalr.js",
    "/lib/signalr-webworker/signalr.min.js": "@microsoft/signalr/dist/webworker/signalr.min.js",
};

/** The text of an installed package file: read from disk in Node, from the page's own server in a browser. */
async function installedText(file) {
    const url = new URL(`./node_modules/${file}`, import.meta.url);
    if (IS_BROWSER) {
        const response = await httpGetText(url.href);
        assert.equal(response.status, 200, `the page's server has ${url.pathname}`);
        return response.text;
    }
    const { readFile } = await import("node:fs/promises");
    return readFile(url, "utf8");
}

describe("the functional-test app's routes", () => {
    scenario("serves the client bundles where upstream's app does", async () => {
        for (const [path, file] of Object.entries(BUNDLES)) {
            const served = await withTimeout(httpGetText(`${BASE_URL}${path}`), STEP, `GET ${path}`);
            assert.equal(served.status, 200, `GET ${path}`);
            assert.ok(served.text === (await installedText(file)), `${path} is not ${file}`);
        }
        for (const path of ["/lib/signalr/package.json", "/lib/signalr/..%2Fpackage.json", "/lib/esm/Utils.js"]) {
            const response = await withTimeout(httpGetText(`${BASE_URL}${path}`), STEP, `GET ${path}`);
            assert.equal(response.status, 404, `GET ${path}`);
        }
    });

    scenario("serves /deployment as a JSON object", async () => {
        const response = await withTimeout(httpGetText(`${BASE_URL}/deployment`), STEP, "GET /deployment");
        assert.equal(response.status, 200);
        const about = JSON.parse(response.text);
        assert.equal(typeof about, "object");
        assert.equal(typeof about.Version, "string");
    });

    if (!IS_BROWSER) {
        // A page cannot see a redirect's status (fetch gives an opaque one, XHR follows it), so Node only.
        scenario("/echoredirect answers 307 to the /echo equivalent, query kept", async () => {
            const response = await withTimeout(
                fetch(`${BASE_URL}/echoredirect/negotiate?negotiateVersion=1`, { method: "POST", redirect: "manual" }),
                STEP,
                "POST /echoredirect/negotiate",
            );
            assert.equal(response.status, 307);
            assert.equal(response.headers.get("location"), "/echo/negotiate?negotiateVersion=1");
            assert.equal(response.headers.get("set-cookie"), null, "the redirect sets no cookie, as upstream's");
        });
    }

    for (const transport of TRANSPORTS) {
        const transportType = signalR.HttpTransportType[transport];

        describe(`over ${transport}`, () => {
            // A WebSocket does not follow redirects, so only the HTTP transports can go through /echoredirect; and in
            // Node, SSE neither: the `eventsource` package the client uses there cannot resolve the relative
            // Location that upstream's app (and so this one) sends ("Invalid URL"). A browser's EventSource can.
            if (transport === "LongPolling" || (transport === "ServerSentEvents" && IS_BROWSER)) {
                scenario("a connection to /echoredirect is redirected to /echo and echoes", async (resources) => {
                    const connection = resources.http(
                        new HttpConnection(`${BASE_URL}/echoredirect`, { logger: consoleLogger, transport: transportType }),
                    );
                    const received = deferred();
                    connection.onreceive = (data) => {
                        if (data === MESSAGE) {
                            received.resolve(data);
                        }
                    };
                    await withTimeout(connection.start(signalR.TransferFormat.Text), STEP, "start()");
                    await withTimeout(connection.send(MESSAGE), STEP, "send()");
                    assert.equal(await withTimeout(received.promise, STEP, "the echo"), MESSAGE);
                    await withTimeout(connection.stop(), STEP, "stop()");
                });
            }

            scenario("a hub that cannot be created closes the connection with an error", async (resources) => {
                // Upstream's UncreatableHub (its test is skipped there): the handshake succeeds, then the hub
                // cannot be created for OnConnectedAsync; start() fails, or the connection closes, with that error.
                const connection = resources.connect({ url: `${BASE_URL}/uncreatable`, transport, logger: quietLogger });
                const closed = deferred();
                connection.onclose((error) => closed.resolve(error));
                let error;
                try {
                    await withTimeout(connection.start(), STEP, "start()");
                    error = await withTimeout(closed.promise, STEP, "onclose");
                } catch (startError) {
                    error = startError;
                }
                assert.ok(error instanceof Error, `an error, not ${error}`);
                if (transport !== "WebSockets" && error.message === "No Connection with that ID: Status code '404'") {
                    // Over SSE and long polling the client POSTs a Ping right after the handshake; when the
                    // server's Close has not reached it yet, that POST finds the connection gone (ASP.NET answers
                    // the same 404 there) and start() fails with it instead of the Close's error.
                    assert.equal(connection.state, signalR.HubConnectionState.Disconnected);
                    return;
                }
                assert.match(error.message, /^Server returned an error on close: /);
                assert.match(
                    error.message,
                    /InvalidOperationException: Unable to resolve service for type 'System\.Object' while attempting to activate 'FunctionalTests\.UncreatableHub'\.$/,
                );
                assert.equal(connection.state, signalR.HubConnectionState.Disconnected);
            });
        });
    }
});
