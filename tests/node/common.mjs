// Shared helpers for the hubmesh conformance tests that drive the unmodified official SignalR client.
//
// Environment:
// * HUBMESH_TEST_URL         base URL of a running test hub server, e.g. http://127.0.0.1:5000 (required)
// * HUBMESH_TEST_TRANSPORTS  comma-separated transports to cover (default "WebSockets"); names as in
//                            HttpTransportType: WebSockets, ServerSentEvents, LongPolling
// * HUBMESH_TEST_LOG_LEVEL   client log level (default "Warning"); one of the signalR.LogLevel names

import { createRequire } from "node:module";
import { it } from "node:test";

const require = createRequire(import.meta.url);

// The CommonJS build everywhere, so that internal modules (HttpConnection, Utils) share state with the public API.
export const signalR = require("@microsoft/signalr");
export const { MessagePackHubProtocol } = require("@microsoft/signalr-protocol-msgpack");
export const { HttpConnection } = require("@microsoft/signalr/dist/cjs/HttpConnection.js");
export const { getUserAgentHeader } = require("@microsoft/signalr/dist/cjs/Utils.js");
// The `ws` package the client itself uses in Node (Node 20 has no global WebSocket).
export const WebSocket = createRequire(require.resolve("@microsoft/signalr"))("ws");

function baseUrl() {
    const url = process.env.HUBMESH_TEST_URL;
    if (!url) {
        throw new Error("HUBMESH_TEST_URL is not set: point it at a running hubmesh test hub server");
    }
    return url.replace(/\/+$/, "");
}

export const BASE_URL = baseUrl();
export const TESTHUB_URL = `${BASE_URL}/testhub`;
export const ECHO_URL = `${BASE_URL}/echo`;
export const DEMO_HUB_URL = `${BASE_URL}/hub`;
export const REDIRECT_URL = `${BASE_URL}/redirect?numRedirects=0&baseUrl=${BASE_URL}`;

export const DEFAULT_TIMEOUT = 20000;

function transports() {
    const names = (process.env.HUBMESH_TEST_TRANSPORTS || "WebSockets")
        .split(",")
        .map((name) => name.trim())
        .filter((name) => name.length > 0);
    for (const name of names) {
        if (signalR.HttpTransportType[name] === undefined) {
            throw new Error(`HUBMESH_TEST_TRANSPORTS: unknown transport '${name}'`);
        }
    }
    return names;
}

/** Transport names to cover, e.g. ["WebSockets"]. */
export const TRANSPORTS = transports();

export const PROTOCOLS = [
    { name: "json", create: () => new signalR.JsonHubProtocol() },
    { name: "messagepack", create: () => new MessagePackHubProtocol() },
];

/** The protocols a transport can carry: SSE is text only, so MessagePack skips it (as upstream does). */
export function protocolsFor(transport) {
    return PROTOCOLS.filter((protocol) => !(protocol.name === "messagepack" && transport === "ServerSentEvents"));
}

function logLevel() {
    const name = process.env.HUBMESH_TEST_LOG_LEVEL || "Warning";
    const level = signalR.LogLevel[name];
    if (level === undefined) {
        throw new Error(`HUBMESH_TEST_LOG_LEVEL: unknown level '${name}'`);
    }
    return level;
}

export const LOG_LEVEL = logLevel();

/** A logger printing to stderr from LOG_LEVEL up. */
export const consoleLogger = {
    log(level, message) {
        if (level >= LOG_LEVEL && level !== signalR.LogLevel.None) {
            console.error(`[signalr ${signalR.LogLevel[level]}] ${message}`);
        }
    },
};

/** A logger for tests that provoke errors on purpose: prints only at Trace/Debug when asked for explicitly. */
export const quietLogger = {
    log(level, message) {
        if (LOG_LEVEL <= signalR.LogLevel.Debug && level >= LOG_LEVEL) {
            console.error(`[signalr ${signalR.LogLevel[level]}] ${message}`);
        }
    },
};

/** A logger that keeps every message, for tests that inspect what the client logged. */
export function recordingLogger() {
    const messages = [];
    return {
        messages,
        log(level, message) {
            messages.push({ level, message });
            consoleLogger.log(level, message);
        },
    };
}

/** A promise with its resolve/reject exposed. */
export function deferred() {
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
        resolve = res;
        reject = rej;
    });
    return { promise, resolve, reject };
}

/** Rejects with a descriptive error if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function delay(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The message of whatever `promise` rejects with; fails if it resolves. */
export async function rejectionMessage(promise, what) {
    let value;
    try {
        value = await promise;
    } catch (error) {
        return error instanceof Error ? error.message : String(error);
    }
    throw new Error(`expected ${what} to fail, but it resolved with ${JSON.stringify(value)}`);
}

/**
 * Wraps a hub protocol and records every message the client parses, so that tests can assert what the server
 * sent (for example that a non-blocking send got no Completion).
 */
export function recordingProtocol(inner) {
    const received = [];
    return {
        received,
        get name() {
            return inner.name;
        },
        get version() {
            return inner.version;
        },
        get transferFormat() {
            return inner.transferFormat;
        },
        parseMessages(input, logger) {
            const messages = inner.parseMessages(input, logger);
            received.push(...messages);
            return messages;
        },
        writeMessage(message) {
            return inner.writeMessage(message);
        },
    };
}

/** Collects the connections a test opens and closes them all at the end, whatever happened. */
export class Resources {
    constructor() {
        this.hubConnections = [];
        this.httpConnections = [];
        this.webSockets = [];
    }

    /** Tracks a HubConnection (stopped at the end). */
    hub(connection) {
        this.hubConnections.push(connection);
        return connection;
    }

    /** Tracks an HttpConnection (stopped at the end). */
    http(connection) {
        this.httpConnections.push(connection);
        return connection;
    }

    /** Tracks a raw WebSocket (terminated at the end). */
    ws(socket) {
        this.webSockets.push(socket);
        return socket;
    }

    /**
     * Builds and tracks a HubConnection.
     * options: { url, transport (name), protocol (instance), logger, skipNegotiation, headers, reconnect,
     *            serverTimeout, configure(builder) }
     */
    connect(options = {}) {
        const httpOptions = {
            logger: options.logger || consoleLogger,
        };
        if (options.transport) {
            httpOptions.transport = signalR.HttpTransportType[options.transport];
        }
        if (options.skipNegotiation) {
            httpOptions.skipNegotiation = true;
        }
        if (options.headers) {
            httpOptions.headers = options.headers;
        }
        let builder = new signalR.HubConnectionBuilder()
            .withUrl(options.url || TESTHUB_URL, httpOptions)
            .configureLogging(options.logger || consoleLogger);
        if (options.protocol) {
            builder = builder.withHubProtocol(options.protocol);
        }
        if (options.reconnect) {
            builder = builder.withAutomaticReconnect(options.reconnect === true ? undefined : options.reconnect);
        }
        if (options.configure) {
            builder = options.configure(builder) || builder;
        }
        return this.hub(builder.build());
    }

    async dispose() {
        const stops = [];
        for (const connection of this.hubConnections) {
            stops.push(withTimeout(connection.stop(), 5000, "HubConnection.stop()").catch(() => {}));
        }
        for (const connection of this.httpConnections) {
            stops.push(withTimeout(connection.stop(), 5000, "HttpConnection.stop()").catch(() => {}));
        }
        for (const socket of this.webSockets) {
            try {
                socket.terminate();
            } catch {
                // already closed
            }
        }
        await Promise.all(stops);
    }
}

/**
 * Declares a test whose body gets a fresh `Resources`; the body is bounded by `timeout` and every connection it
 * tracked is stopped afterwards, even when it failed or hung.
 */
export function scenario(name, body, { timeout = DEFAULT_TIMEOUT } = {}) {
    it(name, { timeout: timeout + 10000 }, async (t) => {
        const resources = new Resources();
        try {
            await withTimeout(Promise.resolve().then(() => body(resources, t)), timeout, `test "${name}"`);
        } finally {
            await resources.dispose();
        }
    });
}

/** Resolves with the first `count` calls of client method `method` on `connection` (each call's arguments). */
export function expectCalls(connection, method, count = 1) {
    const calls = [];
    const done = deferred();
    connection.on(method, (...args) => {
        calls.push(args);
        if (calls.length === count) {
            done.resolve(calls);
        }
    });
    return { calls, promise: done.promise };
}

/** Subscribes to a stream: `promise` resolves with all items on completion and rejects on error. */
export function collectStream(streamResult) {
    const items = [];
    const done = deferred();
    const subscription = streamResult.subscribe({
        next: (item) => items.push(item),
        complete: () => done.resolve(items),
        error: (error) => done.reject(error),
    });
    return { items, promise: done.promise, subscription };
}
