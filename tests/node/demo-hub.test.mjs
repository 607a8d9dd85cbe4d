// The demo hub at /hub (src/demo.rs): JoinGroup/LeaveGroup are invoked and complete once membership is in force;
// SendToGroup/Broadcast/Echo are sent without an invocation id and reach client method `msg` with the payload
// unchanged.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe } from "node:test";

import {
    DEMO_HUB_URL,
    PROTOCOLS,
    TRANSPORTS,
    delay,
    protocolsFor,
    recordingProtocol,
    scenario,
    signalR,
    withTimeout,
} from "./common.mjs";

const STEP = 10000;

/** A started client of the demo hub that records every `msg` it receives. */
async function client(resources, transport, protocol, options = {}) {
    const recorder = recordingProtocol(protocol.create());
    const connection = resources.connect({ url: DEMO_HUB_URL, transport, protocol: recorder, ...options });
    const inbox = [];
    let waiters = [];
    connection.on("msg", (...args) => {
        inbox.push(args.length === 1 ? args[0] : { unexpectedArgumentCount: args.length, args });
        waiters = waiters.filter((waiter) => !waiter());
    });
    await withTimeout(connection.start(), STEP, "start()");
    return {
        connection,
        recorder,
        inbox,
        /** Resolves once `count` messages were received in all. */
        receive(count, what = `${count} msg call(s)`) {
            return withTimeout(
                new Promise((resolve) => {
                    const check = () => {
                        if (inbox.length >= count) {
                            resolve(inbox.slice());
                            return true;
                        }
                        return false;
                    };
                    if (!check()) {
                        waiters.push(check);
                    }
                }),
                STEP,
                what,
            );
        },
        invoke(method, ...args) {
            return withTimeout(connection.invoke(method, ...args), STEP, `invoke("${method}")`);
        },
        send(method, ...args) {
            return withTimeout(connection.send(method, ...args), STEP, `send("${method}")`);
        },
        /** Every Completion the server sent this client. */
        completions() {
            return recorder.received.filter((message) => message.type === signalR.MessageType.Completion);
        },
    };
}

function groupName() {
    return `group-${randomUUID()}`;
}

/** Payloads of every shape the wire carries; MessagePack adds binary. */
function payloads(protocolName) {
    const list = [
        {
            text: "hello",
            number: 42,
            float: 1.5,
            negative: -7,
            yes: true,
            no: false,
            nothing: null,
            list: [1, "two", [3]],
        },
        "a string with unicode: h\u00e9llo \u4e16\u754c \ud83d\ude00",
        "",
        12345,
        -0.25,
        [1, 2, 3, "four", { five: 5 }],
        [],
        {},
        { nested: { deeper: { deepest: ["x", { y: null }] } } },
    ];
    if (protocolName === "messagepack") {
        list.push({ bytes: new Uint8Array([0, 1, 2, 254, 255]) });
    }
    return list;
}

/** Normalises decoded values for comparison (msgpack may hand out Buffer-backed byte arrays). */
function normalise(value) {
    if (value instanceof Uint8Array) {
        return new Uint8Array(value);
    }
    if (Array.isArray(value)) {
        return value.map(normalise);
    }
    if (value && typeof value === "object" && !(value instanceof Date)) {
        return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, normalise(item)]));
    }
    return value;
}

for (const transport of TRANSPORTS) {
    for (const protocol of protocolsFor(transport)) {
        describe(`demo hub using ${protocol.name} over ${transport} transport`, () => {
            scenario("JoinGroup and LeaveGroup complete without a result", async (resources) => {
                const a = await client(resources, transport, protocol);
                const group = groupName();
                assert.equal(await a.invoke("JoinGroup", group), undefined);
                assert.equal(await a.invoke("LeaveGroup", group), undefined);
                assert.equal(a.completions().length, 2);
                for (const completion of a.completions()) {
                    assert.equal(completion.error, undefined);
                    assert.equal(completion.result, undefined, `a void method returned ${completion.result}`);
                }
            });

            scenario("Echo sends the payload back to the caller unchanged", async (resources) => {
                const a = await client(resources, transport, protocol);
                const b = await client(resources, transport, protocol);
                const sent = payloads(protocol.name);
                for (const payload of sent) {
                    await a.send("Echo", payload);
                }
                const received = await a.receive(sent.length);
                assert.deepEqual(normalise(received), normalise(sent));
                // Non-blocking sends get no Completion at all.
                assert.deepEqual(a.completions(), []);
                await delay(100);
                assert.deepEqual(b.inbox, []);
            });

            scenario("SendToGroup reaches every member and only members", async (resources) => {
                const [a, b, c] = await Promise.all([1, 2, 3].map(() => client(resources, transport, protocol)));
                const group = groupName();
                await a.invoke("JoinGroup", group);
                await b.invoke("JoinGroup", group);

                const sent = payloads(protocol.name);
                for (const payload of sent) {
                    await c.send("SendToGroup", group, payload);
                }
                assert.deepEqual(normalise(await a.receive(sent.length)), normalise(sent));
                assert.deepEqual(normalise(await b.receive(sent.length)), normalise(sent));

                // A member sending to its own group gets its message too.
                await a.send("SendToGroup", group, "from a");
                assert.equal((await a.receive(sent.length + 1))[sent.length], "from a");
                assert.equal((await b.receive(sent.length + 1))[sent.length], "from a");

                await delay(100);
                assert.deepEqual(c.inbox, []);
                assert.deepEqual(c.completions(), []);
            });

            scenario("LeaveGroup stops delivery", async (resources) => {
                const [a, b, c] = await Promise.all([1, 2, 3].map(() => client(resources, transport, protocol)));
                const group = groupName();
                await a.invoke("JoinGroup", group);
                await b.invoke("JoinGroup", group);
                await c.send("SendToGroup", group, "first");
                await a.receive(1);
                await b.receive(1);

                await a.invoke("LeaveGroup", group);
                await c.send("SendToGroup", group, "second");
                assert.deepEqual(await b.receive(2), ["first", "second"]);
                // Anything wrongly routed to `a` would have been dispatched by now; Echo is a barrier on `a`'s own
                // connection.
                await delay(200);
                await a.send("Echo", "barrier");
                assert.deepEqual(await a.receive(2), ["first", "barrier"]);
            });

            scenario("Broadcast reaches every connection", async (resources) => {
                const [a, b, c] = await Promise.all([1, 2, 3].map(() => client(resources, transport, protocol)));
                const payload = { kind: "broadcast", values: [1, 2.5, "three"], at: 1700000000000 };
                await b.send("Broadcast", payload);
                for (const member of [a, b, c]) {
                    const [received] = await member.receive(1);
                    assert.deepEqual(received, payload);
                }
                assert.deepEqual(b.completions(), []);
            });

            scenario("messages from one sender arrive in order", async (resources) => {
                const [a, b] = await Promise.all([1, 2].map(() => client(resources, transport, protocol)));
                const group = groupName();
                await b.invoke("JoinGroup", group);
                const count = 200;
                const sends = [];
                for (let i = 0; i < count; i++) {
                    sends.push(a.connection.send("SendToGroup", group, i));
                }
                await withTimeout(Promise.all(sends), STEP, "the sends");
                const received = await b.receive(count);
                assert.deepEqual(received, Array.from({ length: count }, (_, i) => i));
            });
        });
    }
}

describe("demo hub", () => {
    for (const protocol of protocolsFor("WebSockets")) {
        scenario(`works over a skipNegotiation WebSocket using ${protocol.name}`, async (resources) => {
            const a = await client(resources, "WebSockets", protocol, { skipNegotiation: true });
            const b = await client(resources, "WebSockets", protocol, { skipNegotiation: true });
            assert.equal(a.connection.connectionId, null);
            const group = groupName();
            await a.invoke("JoinGroup", group);
            await b.send("SendToGroup", group, { hello: "world" });
            assert.deepEqual(await a.receive(1), [{ hello: "world" }]);
            await a.send("Echo", [1, 2, 3]);
            assert.deepEqual(await a.receive(2), [{ hello: "world" }, [1, 2, 3]]);
        });
    }

    scenario("delivers between JSON and MessagePack clients", async (resources) => {
        const transport = TRANSPORTS.includes("WebSockets") ? "WebSockets" : TRANSPORTS[0];
        const [jsonProtocol, msgpackProtocol] = PROTOCOLS;
        const json = await client(resources, transport, jsonProtocol);
        const msgpack = await client(resources, transport, msgpackProtocol);
        const group = groupName();
        await json.invoke("JoinGroup", group);
        await msgpack.invoke("JoinGroup", group);

        const fromJson = { from: "json", n: 1, f: 0.5, list: ["a", null, true], nested: { k: -3 } };
        await json.send("SendToGroup", group, fromJson);
        assert.deepEqual(await msgpack.receive(1), [fromJson]);
        assert.deepEqual(await json.receive(1), [fromJson]);

        const fromMsgpack = { from: "msgpack", n: 300, f: 2.25, list: [70000, "b"], nested: { k: false } };
        await msgpack.send("SendToGroup", group, fromMsgpack);
        assert.deepEqual(await json.receive(2), [fromJson, fromMsgpack]);
        assert.deepEqual(await msgpack.receive(2), [fromJson, fromMsgpack]);
    });
});
