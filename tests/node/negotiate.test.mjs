// The client's failed-negotiate path: the test server's /bad-negotiate answers every request with 400 and the text
// "Some response from server", as upstream's functional-test app does; the official client must fail start() with
// that text and the status code in its error, and end Disconnected, for every transport in HUBMESH_TEST_TRANSPORTS.

import assert from "node:assert/strict";
import { describe } from "node:test";

import { BASE_URL, HttpConnection, TRANSPORTS, quietLogger, rejectionMessage, scenario, signalR, withTimeout } from "./common.mjs";

const STEP = 10000;
const BAD_NEGOTIATE_URL = `${BASE_URL}/bad-negotiate`;
const FAILED_NEGOTIATE =
    "Failed to complete negotiation with the server: Error: Some response from server: Status code '400'";

describe("negotiate", () => {
    for (const transport of TRANSPORTS) {
        const transportType = signalR.HttpTransportType[transport];

        describe(`over ${transport}`, () => {
            scenario("HttpConnection.start() rejects with the failed negotiate's text and status", async (resources) => {
                const connection = resources.http(
                    new HttpConnection(BAD_NEGOTIATE_URL, { logger: quietLogger, transport: transportType }),
                );
                const message = await rejectionMessage(
                    withTimeout(connection.start(signalR.TransferFormat.Text), STEP, "HttpConnection.start()"),
                    "HttpConnection.start()",
                );
                assert.equal(message, FAILED_NEGOTIATE);
            });

            scenario("HubConnection.start() rejects with the failed negotiate's text and status", async (resources) => {
                const connection = resources.hub(
                    new signalR.HubConnectionBuilder()
                        .withUrl(BAD_NEGOTIATE_URL, { transport: transportType, logger: quietLogger })
                        .configureLogging(quietLogger)
                        .build(),
                );
                const message = await rejectionMessage(
                    withTimeout(connection.start(), STEP, "HubConnection.start()"),
                    "HubConnection.start()",
                );
                assert.equal(message, FAILED_NEGOTIATE);
                assert.equal(connection.state, signalR.HubConnectionState.Disconnected);
            });
        });
    }
});
