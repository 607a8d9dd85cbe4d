// The client's negotiate-error path: the test server's /bad-negotiate answers negotiate with HTTP 200 and
// {"error":"Some error"}; the official client must fail start() with the server's text as the error message
// (HttpConnection throws `new Error(negotiateResponse.error)`), for every transport in HUBMESH_TEST_TRANSPORTS.

import assert from "node:assert/strict";
import { describe } from "node:test";

import { BASE_URL, HttpConnection, TRANSPORTS, quietLogger, rejectionMessage, scenario, signalR, withTimeout } from "./common.mjs";

const STEP = 10000;
const BAD_NEGOTIATE_URL = `${BASE_URL}/bad-negotiate`;

describe("negotiate", () => {
    for (const transport of TRANSPORTS) {
        const transportType = signalR.HttpTransportType[transport];

        describe(`over ${transport}`, () => {
            scenario("HttpConnection.start() rejects with the error negotiate returned", async (resources) => {
                const connection = resources.http(
                    new HttpConnection(BAD_NEGOTIATE_URL, { logger: quietLogger, transport: transportType }),
                );
                const message = await rejectionMessage(
                    withTimeout(connection.start(signalR.TransferFormat.Text), STEP, "HttpConnection.start()"),
                    "HttpConnection.start()",
                );
                assert.equal(message, "Some error");
            });

            scenario("HubConnection.start() rejects with the error negotiate returned", async (resources) => {
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
                assert.equal(message, "Some error");
                assert.equal(connection.state, signalR.HubConnectionState.Disconnected);
            });
        });
    }
});
