// Loads the test files named in ?files= (from tests/node, served at /node/) and exposes window.hubmeshSuite.run(),
// which run.mjs calls: it runs every registered test in order, reports each through window.hubmeshReport (exposed
// by run.mjs) when present, and resolves to the results. A file that fails to load is reported as a failure.

import { runRegistered } from "node:test";

const params = new URLSearchParams(location.search);
const files = (params.get("files") || "").split(",").filter((file) => /^[\w.-]+\.test\.mjs$/.test(file));

async function run({ filter = "" } = {}) {
    const report = async (result) => {
        if (typeof window.hubmeshReport === "function") {
            await window.hubmeshReport(result);
        }
    };
    const loadFailures = [];
    for (const file of files) {
        try {
            await import(`/node/${file}`);
        } catch (error) {
            const result = { name: `load ${file}`, ok: false, ms: 0, error: String(error && error.stack ? error.stack : error) };
            loadFailures.push(result);
            await report(result);
        }
    }
    return loadFailures.concat(await runRegistered({ filter, report }));
}

window.hubmeshSuite = { run, files };
