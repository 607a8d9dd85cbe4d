// What Node provides to the conformance tests (common.mjs); a browser page uses ../browser/env.mjs instead.
//
// Environment:
// * HUBMESH_TEST_URL         base URL of a running test hub server, e.g. http://127.0.0.1:5000 (required)
// * HUBMESH_TEST_HTTPS_URL   the same server over HTTPS (optional; the HTTPS-only rows run when it is set; the
//                            certificate is self-signed, so set NODE_TLS_REJECT_UNAUTHORIZED=0 as upstream does)
// * HUBMESH_TEST_TRANSPORTS  comma-separated transports to cover (default "WebSockets"); names as in
//                            HttpTransportType: WebSockets, ServerSentEvents, LongPolling
// * HUBMESH_TEST_LOG_LEVEL   client log level (default "Warning"); one of the signalR.LogLevel names

import { createRequire } from "node:module";
const require = createRequire(import.meta.url);

const baseUrl = process.env.HUBMESH_TEST_URL;
if (!baseUrl) {
    throw new Error("HUBMESH_TEST_URL is not set: point it at a running hubmesh test hub server");
}

export const env = {
    // The CommonJS build everywhere, so that internal modules (HttpConnection, Utils) share state with the public API.
    signalR: require("@microsoft/signalr"),
    MessagePackHubProtocol: require("@microsoft/signalr-protocol-msgpack").MessagePackHubProtocol,
    HttpConnection: require("@microsoft/signalr/dist/cjs/HttpConnection.js").HttpConnection,
    getUserAgentHeader: require("@microsoft/signalr/dist/cjs/Utils.js").getUserAgentHeader,
    // The `ws` package the client itself uses in Node (Node 20 has no global WebSocket).
    WebSocket: createRequire(require.resolve("@microsoft/signalr"))("ws"),
    baseUrl,
    httpsBaseUrl: process.env.HUBMESH_TEST_HTTPS_URL || undefined,
    transports: (process.env.HUBMESH_TEST_TRANSPORTS || "WebSockets")
        .split(",")
        .map((name) => name.trim())
        .filter((name) => name.length > 0),
    logLevelName: process.env.HUBMESH_TEST_LOG_LEVEL || "Warning",
    isBrowser: false,
    // In Node the client's DefaultHttpClient is FetchHttpClient.
    httpClientName: "FetchHttpClient",
    httpGetText: async (url) => {
        const response = await fetch(url);
        return { status: response.status, text: await response.text() };
    },
    base64Url: (text) => Buffer.from(text).toString("base64url"),
    log: (line) => console.error(line),
};
