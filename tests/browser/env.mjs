// What a browser page provides to the conformance tests (tests/node/common.mjs), so that the Node test files run
// unchanged in Chromium. suite.html maps /node/env.mjs here (an import map), `node:test` to node-test.mjs and
// `node:assert/strict` to assert.mjs.
//
// The public API is the official client's browser build (window.signalR, window.signalR.protocols.msgpack), as an
// application loads it. HttpConnection and getUserAgentHeader are internal, so, as upstream's browser tests do
// (they compile the client's sources into their bundle), they come from the same package's ES module build.
//
// Page parameters (query string): hub (HTTP base URL, required), https (HTTPS base URL, optional), transports
// (comma-separated), logLevel.

import { HttpConnection as EsmHttpConnection } from "/lib/esm/HttpConnection.js";
import { getUserAgentHeader as esmGetUserAgentHeader } from "/lib/esm/Utils.js";

const params = new URLSearchParams(location.search);
const baseUrl = params.get("hub");
if (!baseUrl) {
    throw new Error("suite.html needs ?hub=<test hub base URL>");
}

/** GET with XMLHttpRequest, which exists whichever HTTP client the page lets the SignalR client use. */
function httpGetText(url) {
    return new Promise((resolve, reject) => {
        const request = new XMLHttpRequest();
        request.open("GET", url);
        request.onload = () => resolve({ status: request.status, text: request.responseText });
        request.onerror = () => reject(new Error(`GET ${url} failed`));
        request.send();
    });
}

function base64Url(text) {
    const bytes = new TextEncoder().encode(text);
    return btoa(String.fromCharCode(...bytes))
        .replace(/\+/g, "-")
        .replace(/\//g, "_")
        .replace(/=+$/, "");
}

export const env = {
    signalR: window.signalR,
    MessagePackHubProtocol: window.signalR.protocols.msgpack.MessagePackHubProtocol,
    HttpConnection: EsmHttpConnection,
    getUserAgentHeader: esmGetUserAgentHeader,
    WebSocket: window.WebSocket,
    baseUrl,
    httpsBaseUrl: params.get("https") || undefined,
    transports: (params.get("transports") || "WebSockets")
        .split(",")
        .map((name) => name.trim())
        .filter((name) => name.length > 0),
    logLevelName: params.get("logLevel") || "Warning",
    isBrowser: true,
    // DefaultHttpClient's own choice: fetch when the page has it, XMLHttpRequest otherwise.
    httpClientName: typeof fetch === "function" ? "FetchHttpClient" : "XhrHttpClient",
    httpGetText,
    base64Url,
    log: (line) => console.warn(line),
};
