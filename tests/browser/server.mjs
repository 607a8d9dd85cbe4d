// A tiny static file server for the browser tests: it serves the test pages, the official client's browser and ES
// module builds, the MessagePack protocol's browser build, the worker script, and the Node conformance test files
// with the browser's stand-ins for their imports, from an origin other than the hub's (another port on 127.0.0.1),
// so that every request the client makes to the hub is cross-origin. The web-worker build comes from the test hub
// itself, as upstream's app serves it.
//
// Run alone with `node server.mjs` (prints `listening http://127.0.0.1:<port>`); run.mjs imports it.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const NODE_TESTS = join(HERE, "..", "node");
const MODULES = join(NODE_TESTS, "node_modules");
const ESM_BUILD = join(MODULES, "@microsoft", "signalr", "dist", "esm");

/** URL path -> file. Nothing else is served. */
export const FILES = {
    "/": join(HERE, "index.html"),
    "/index.html": join(HERE, "index.html"),
    "/scenarios.js": join(HERE, "scenarios.js"),
    "/worker.js": join(HERE, "worker.js"),
    "/suite.html": join(HERE, "suite.html"),
    "/browser/suite.mjs": join(HERE, "suite.mjs"),
    "/browser/env.mjs": join(HERE, "env.mjs"),
    "/browser/node-test.mjs": join(HERE, "node-test.mjs"),
    "/browser/assert.mjs": join(HERE, "assert.mjs"),
    "/lib/signalr/signalr.js": join(MODULES, "@microsoft", "signalr", "dist", "browser", "signalr.js"),
    "/lib/signalr/signalr-protocol-msgpack.js": join(
        MODULES,
        "@microsoft",
        "signalr-protocol-msgpack",
        "dist",
        "browser",
        "signalr-protocol-msgpack.js",
    ),
};

function contentType(file) {
    if (file.endsWith(".html")) {
        return "text/html; charset=utf-8";
    }
    return "text/javascript; charset=utf-8";
}

/**
 * The file for a URL path: a fixed one from FILES, a test module from tests/node (`/node/<name>.mjs`), an installed
 * bundle (`/node/node_modules/@microsoft/<package>/dist/<browser|webworker>/<name>.js`), or a module of the client's
 * ES module build (`/lib/esm/<name>`: its imports name no extension, so `.js` is added).
 */
export function fileFor(path) {
    if (FILES[path]) {
        return FILES[path];
    }
    const testModule = /^\/node\/([\w.-]+\.mjs)$/.exec(path);
    if (testModule) {
        return join(NODE_TESTS, testModule[1]);
    }
    // The installed bundles, for test-app.test.mjs to compare with what the test hub serves.
    const bundle = /^\/node\/node_modules\/@microsoft\/(signalr|signalr-protocol-msgpack)\/dist\/(browser|webworker)\/([\w-]+(\.min)?\.js)$/.exec(
        path,
    );
    if (bundle) {
        return join(MODULES, "@microsoft", bundle[1], "dist", bundle[2], bundle[3]);
    }
    const esmModule = /^\/lib\/esm\/([\w-]+)(\.js)?$/.exec(path);
    if (esmModule) {
        return join(ESM_BUILD, `${esmModule[1]}.js`);
    }
    return undefined;
}

/** Starts serving on 127.0.0.1 (a free port); resolves to `{ url, close() }`. */
export function startStaticServer() {
    const server = createServer(async (request, response) => {
        const path = new URL(request.url, "http://localhost").pathname;
        if (path === "/favicon.ico") {
            response.writeHead(204).end();
            return;
        }
        const file = fileFor(path);
        if (request.method !== "GET" || !file) {
            response.writeHead(404, { "Content-Type": "text/plain" }).end("not found");
            return;
        }
        try {
            const body = await readFile(file);
            response.writeHead(200, { "Content-Type": contentType(file), "Cache-Control": "no-store" }).end(body);
        } catch (error) {
            if (error.code === "ENOENT") {
                response.writeHead(404, { "Content-Type": "text/plain" }).end("not found");
                return;
            }
            response.writeHead(500, { "Content-Type": "text/plain" }).end(String(error));
        }
    });
    return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const { port } = server.address();
            resolve({
                url: `http://127.0.0.1:${port}`,
                close: () => {
                    server.closeAllConnections?.();
                    return new Promise((done) => server.close(() => done()));
                },
            });
        });
    });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
    const { url } = await startStaticServer();
    console.log(`listening ${url}`);
}
