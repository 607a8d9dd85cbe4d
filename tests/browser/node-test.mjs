// A browser stand-in for the part of `node:test` the conformance test files use (describe, it), so that the same
// *.test.mjs files run in a page (suite.html maps `node:test` here). Tests register while their modules load and
// run one at a time, in order, when `runRegistered` is called; each is bounded by its own timeout.

const root = { name: "", entries: [] };
let current = root;

export function describe(name, body) {
    const suite = { name, entries: [] };
    current.entries.push(suite);
    const parent = current;
    current = suite;
    try {
        body();
    } finally {
        current = parent;
    }
}

export function it(name, options, body) {
    if (typeof options === "function") {
        body = options;
        options = {};
    }
    current.entries.push({ name, body, timeout: (options && options.timeout) || 30000 });
}

export const test = it;

function bounded(promise, ms, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
        }),
    ]).finally(() => clearTimeout(timer));
}

function describeError(error) {
    if (error && typeof error === "object" && "message" in error) {
        return `${error.name || "Error"}: ${error.message}`;
    }
    return String(error);
}

/**
 * Runs every registered test whose full name (describe names and the test name, joined by " > ") contains
 * `filter`, calling `report({ name, ok, ms, error })` after each; resolves to the list of results.
 */
export async function runRegistered({ filter = "", report = () => {} } = {}) {
    const results = [];
    async function walk(suite, path) {
        for (const entry of suite.entries) {
            const name = path ? `${path} > ${entry.name}` : entry.name;
            if (entry.entries) {
                await walk(entry, name);
                continue;
            }
            if (filter && !name.includes(filter)) {
                continue;
            }
            const started = performance.now();
            let result;
            try {
                await bounded(Promise.resolve().then(() => entry.body({ name: entry.name })), entry.timeout, name);
                result = { name, ok: true };
            } catch (error) {
                result = { name, ok: false, error: describeError(error) };
            }
            result.ms = Math.round(performance.now() - started);
            results.push(result);
            await report(result);
        }
    }
    await walk(root, "");
    return results;
}
