// The helpers of the conformance tests that drive the unmodified official SignalR client. They are free of any
// environment: what an environment provides comes from ./env.mjs, which is Node's (env.mjs here) or, in a browser page
// that runs the same test files, ../browser/env.mjs (suite.html maps one onto the other with an import map).

import { it } from "node:test";

import { env } from "./env.mjs";

export const { MessagePackHubProtocol, HttpConnection, getUserAgentHeader, WebSocket, httpGetText, base64Url } = env;
/** Whether the tests run in a browser page (some rows differ there, as upstream's do). */
export const IS_BROWSER = env.isBrowser;
/** The HTTP client the official client picks here: "FetchHttpClient" or "XhrHttpClient". */
export const HTTP_CLIENT_NAME = env.httpClientName;

export const { signalR } = env;

export const BASE_URL = env.baseUrl.replace(/\/+$/, "");
export const TESTHUB_URL = `${BASE_URL}/testhub`;
export const ECHO_URL = `${BASE_URL}/echo`;
export const DEMO_HUB_URL = `${BASE_URL}/hub`;
export const REDIRECT_URL = `${BASE_URL}/redirect?numRedirects=0&baseUrl=${BASE_URL}`;
/** The same test server over HTTPS (self-signed), or undefined when it was not given: HTTPS rows are skipped. */
export const HTTPS_BASE_URL = env.httpsBaseUrl ? env.httpsBaseUrl.replace(/\/+$/, "") : undefined;
export const HTTPS_TESTHUB_URL = HTTPS_BASE_URL && `${HTTPS_BASE_URL}/testhub`;

export const DEFAULT_TIMEOUT = 20000;

for (const name of env.transports) {
    if (signalR.HttpTransportType[name] === undefined) {
        throw new Error(`HUBMESH_TEST_TRANSPORTS: unknown transport '${name}'`);
    }
}
/** Transport names to cover, e.g. ["WebSockets"]. */
export const TRANSPORTS = env.transports;

export const PROTOCOLS = [
    { name: "json", create: () => new signalR.JsonHubProtocol() },
    { name: "messagepack", create: () => new env.MessagePackHubProtocol() },
];

/** The protocols a transport can carry: SSE is text only, so MessagePack skips it (as upstream does). */
export function protocolsFor(transport) {
    return PROTOCOLS.filter((protocol) => !(protocol.name === "messagepack" && transport === "ServerSentEvents"));
}

export const LOG_LEVEL = signalR.LogLevel[env.logLevelName];
if (LOG_LEVEL === undefined) {
    throw new Error(`HUBMESH_TEST_LOG_LEVEL: unknown level '${env.logLevelName}'`);
}

/** A logger printing to stderr from LOG_LEVEL up. */
export const consoleLogger = {
    log(level, message) {
        if (level >= LOG_LEVEL && level !== signalR.LogLevel.None) {
            env.log(`[signalr ${signalR.LogLevel[level]}] ${message}`);
        }
    },
};

/** A logger for tests that provoke errors on purpose: prints only at Trace/Debug when asked for explicitly. */
export const quietLogger = {
    log(level, message) {
        if (LOG_LEVEL <= signalR.LogLevel.Debug && level >= LOG_LEVEL) {
            env.log(`[signalr ${signalR.LogLevel[level]}] ${message}`);
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
                // `ws` in Node can drop a socket at once; a browser WebSocket can only be closed.
                if (typeof socket.terminate === "function") {
                    socket.terminate();
                } else {
                    socket.close();
                }
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
