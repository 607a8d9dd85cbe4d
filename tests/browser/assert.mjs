// A browser stand-in for the part of `node:assert/strict` the conformance test files use: ok, equal, notEqual,
// deepEqual (strict: same types, same prototypes, typed arrays by content) and match. suite.html maps
// `node:assert/strict` here.

export class AssertionError extends Error {
    constructor(message) {
        super(message);
        this.name = "AssertionError";
    }
}

function show(value) {
    if (ArrayBuffer.isView(value)) {
        return `${value.constructor.name}[${Array.from(value).join(", ")}]`;
    }
    try {
        const text = JSON.stringify(value);
        return text === undefined ? String(value) : text;
    } catch {
        return String(value);
    }
}

function fail(message, fallback) {
    throw new AssertionError(message ? `${message} (${fallback})` : fallback);
}

function deepStrictEqual(actual, expected) {
    if (Object.is(actual, expected)) {
        return true;
    }
    if (typeof actual !== "object" || typeof expected !== "object" || actual === null || expected === null) {
        return false;
    }
    if (Object.getPrototypeOf(actual) !== Object.getPrototypeOf(expected)) {
        return false;
    }
    if (actual instanceof Date) {
        return actual.getTime() === expected.getTime();
    }
    if (ArrayBuffer.isView(actual)) {
        return actual.length === expected.length && actual.every((byte, index) => Object.is(byte, expected[index]));
    }
    if (actual instanceof ArrayBuffer) {
        return deepStrictEqual(new Uint8Array(actual), new Uint8Array(expected));
    }
    const actualKeys = Object.keys(actual);
    const expectedKeys = Object.keys(expected);
    if (actualKeys.length !== expectedKeys.length) {
        return false;
    }
    return actualKeys.every(
        (key) => Object.prototype.hasOwnProperty.call(expected, key) && deepStrictEqual(actual[key], expected[key]),
    );
}

function ok(value, message) {
    if (!value) {
        fail(message, `expected a truthy value, got ${show(value)}`);
    }
}

const assert = Object.assign(ok, {
    AssertionError,
    ok,
    equal(actual, expected, message) {
        if (!Object.is(actual, expected)) {
            fail(message, `expected ${show(expected)}, got ${show(actual)}`);
        }
    },
    notEqual(actual, expected, message) {
        if (Object.is(actual, expected)) {
            fail(message, `expected anything but ${show(expected)}`);
        }
    },
    deepEqual(actual, expected, message) {
        if (!deepStrictEqual(actual, expected)) {
            fail(message, `expected ${show(expected)}, got ${show(actual)}`);
        }
    },
    match(text, pattern, message) {
        if (typeof text !== "string" || !pattern.test(text)) {
            fail(message, `expected ${show(text)} to match ${pattern}`);
        }
    },
});

export default assert;
export const { equal, notEqual, deepEqual, match } = assert;
export { ok };
