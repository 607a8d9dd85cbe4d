// Stateful reconnect (docs/protocol.md#stateful-reconnect) with the client's withStatefulReconnect(): a TCP proxy in
// this test drops the client's socket while group messages stream to it, and every message must still arrive
// exactly once, in order, over the resumed connection. Runs over WebSockets only (stateful reconnect is
// WebSockets-only), for JSON and MessagePack.

import { describe } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";

import { BASE_URL, PROTOCOLS, TRANSPORTS, signalR, quietLogger, delay, scenario, withTimeout } from "./common.mjs";

/** A TCP proxy to the test server whose open sockets can be cut at once, as a broken network would. */
async function startProxy() {
    const target = new URL(BASE_URL);
    const pairs = new Set();
    const server = net.createServer((client) => {
        const upstream = net.connect(Number(target.port), target.hostname);
        const pair = { client, upstream };
        pairs.add(pair);
        client.pipe(upstream);
        upstream.pipe(client);
        const end = () => {
            pairs.delete(pair);
            client.destroy();
            upstream.destroy();
        };
        client.on("error", end);
        upstream.on("error", end);
        client.on("close", end);
        upstream.on("close", end);
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    return {
        url: `http://127.0.0.1:${server.address().port}`,
        cut() {
            const count = pairs.size;
            for (const { client, upstream } of pairs) {
                client.destroy();
                upstream.destroy();
            }
            pairs.clear();
            return count;
        },
        close() {
            this.cut();
            return new Promise((resolve) => server.close(resolve));
        },
    };
}

const MESSAGES = 300;

if (TRANSPORTS.includes("WebSockets")) {
    describe("stateful reconnect over WebSockets", () => {
        for (const protocol of PROTOCOLS) {
            scenario(
                `${protocol.name}: every group message arrives once, in order, across a dropped socket`,
                async (resources) => {
                    const proxy = await startProxy();
                    try {
                        const group = `stateful-${protocol.name}-${Date.now()}`;
                        const resumed = resources.hub(
                            new signalR.HubConnectionBuilder()
                                .withUrl(`${proxy.url}/hub`, { transport: signalR.HttpTransportType.WebSockets })
                                .withHubProtocol(protocol.create())
                                .withStatefulReconnect()
                                .configureLogging(quietLogger)
                                .build(),
                        );
                        const sender = resources.hub(
                            new signalR.HubConnectionBuilder()
                                .withUrl(`${BASE_URL}/hub`, { transport: signalR.HttpTransportType.WebSockets })
                                .configureLogging(quietLogger)
                                .build(),
                        );
                        const received = [];
                        let closed = false;
                        resumed.on("msg", (n) => received.push(Number(n)));
                        resumed.onclose(() => {
                            closed = true;
                        });
                        await resumed.start();
                        await sender.start();
                        await resumed.invoke("JoinGroup", group);
                        const id = await resumed.invoke("WhoAmI");

                        let cuts = 0;
                        for (let n = 0; n < MESSAGES; n++) {
                            await sender.send("SendToGroup", group, n);
                            if (n === 100 || n === 200) {
                                cuts += proxy.cut();
                            }
                            await delay(2);
                        }
                        assert.ok(cuts > 0, "the proxy cut no socket");
                        await withTimeout(
                            (async () => {
                                while (received.length < MESSAGES && !closed) await delay(20);
                            })(),
                            15000,
                            `all ${MESSAGES} messages (got ${received.length})`,
                        );
                        // Anything more would be a duplicate.
                        await delay(300);
                        assert.equal(closed, false, "the connection closed instead of resuming");
                        assert.deepEqual(
                            received,
                            Array.from({ length: MESSAGES }, (_, n) => n),
                            "lost, repeated or reordered messages",
                        );
                        // The same connection, still in its group.
                        assert.equal(await resumed.invoke("WhoAmI"), id);
                        assert.equal(await resumed.invoke("GroupCount", group), 1);
                    } finally {
                        await proxy.close();
                    }
                },
                { timeout: 40000 },
            );
        }
    });
}
