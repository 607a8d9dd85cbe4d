// Authorization scenarios of the official functional test suite (HubConnectionTests, "over <Transport> transport"),
// written for hubmesh's /authorizedhub and GET /generateJwtToken, for every transport in HUBMESH_TEST_TRANSPORTS.

import assert from "node:assert/strict";
import { describe } from "node:test";

import {
    BASE_URL,
    TRANSPORTS,
    base64Url,
    consoleLogger,
    delay,
    httpGetText,
    quietLogger,
    rejectionMessage,
    scenario,
    signalR,
    withTimeout,
} from "./common.mjs";

const STEP = 10000;
const AUTHORIZED_HUB_URL = `${BASE_URL}/authorizedhub`;

/** A fresh token from the test server (HS256, user "testuser", valid for a few seconds). */
async function getJwtToken() {
    const response = await withTimeout(httpGetText(`${BASE_URL}/generateJwtToken`), STEP, "GET /generateJwtToken");
    assert.equal(response.status, 200, "GET /generateJwtToken");
    const token = response.text;
    assert.equal(token.split(".").length, 3, `a JWT: ${token}`);
    return token;
}

/** A tracked HubConnection to /authorizedhub over `transport` with the given extra HTTP options. */
function connectAuthorized(resources, transport, options = {}, logger = consoleLogger) {
    const connection = new signalR.HubConnectionBuilder()
        .withUrl(AUTHORIZED_HUB_URL, {
            transport: signalR.HttpTransportType[transport],
            logger,
            ...options,
        })
        .configureLogging(logger)
        .build();
    return resources.hub(connection);
}

/** Starts, echoes, stops; checks that the connection closes without an error. */
async function echoRoundTrip(connection) {
    const closed = new Promise((resolve) => connection.onclose((error) => resolve(error)));
    await withTimeout(connection.start(), STEP, "start()");
    assert.equal(await withTimeout(connection.invoke("Echo", "message"), STEP, 'invoke("Echo")'), "message");
    await withTimeout(connection.stop(), STEP, "stop()");
    assert.equal(await withTimeout(closed, STEP, "onclose"), undefined, "closed without an error");
}

for (const transport of TRANSPORTS) {
    describe(`hubConnection over ${transport} transport`, () => {
        scenario("can connect to hub with authorization", async (resources) => {
            const token = await getJwtToken();
            const connection = connectAuthorized(resources, transport, { accessTokenFactory: () => token });
            await echoRoundTrip(connection);
        });

        scenario("the hub reads the user and the claims of the token", async (resources) => {
            // HubWithAuthorization's GetUserNameIdentifier and GetUserClaim: the token's name identifier, its
            // issuer and audience (upstream's), and "" for a claim it does not carry.
            const token = await getJwtToken();
            const connection = connectAuthorized(resources, transport, { accessTokenFactory: () => token });
            await withTimeout(connection.start(), STEP, "start()");
            const invoke = (...args) => withTimeout(connection.invoke(...args), STEP, `invoke("${args[0]}")`);
            assert.equal(await invoke("GetUserNameIdentifier"), "testuser");
            assert.equal(await invoke("GetUserClaim", "iss"), "SignalRTestServer");
            assert.equal(await invoke("GetUserClaim", "aud"), "SignalRTests");
            assert.equal(await invoke("GetUserClaim", "no-such-claim"), "");
            await withTimeout(connection.stop(), STEP, "stop()");
        });

        scenario("can connect to hub with authorization using async token factory", async (resources) => {
            let calls = 0;
            const connection = connectAuthorized(resources, transport, {
                accessTokenFactory: async () => {
                    calls += 1;
                    await delay(10);
                    return getJwtToken();
                },
            });
            await echoRoundTrip(connection);
            assert.ok(calls >= 1, "the token factory was called");
        });

        scenario("can get error from unauthorized hub connection", async (resources) => {
            const connection = connectAuthorized(resources, transport, {}, quietLogger);
            let closedWith = "not closed";
            connection.onclose((error) => {
                closedWith = error;
            });
            const message = await rejectionMessage(withTimeout(connection.start(), STEP, "start()"), "start()");
            assert.equal(message, "Failed to complete negotiation with the server: Error: Unauthorized: Status code '401'");
            assert.equal(connection.state, signalR.HubConnectionState.Disconnected);
            // A start that failed never connected, so there is nothing to close.
            assert.equal(closedWith, "not closed");
        });

        scenario("rejects a token signed with another key", async (resources) => {
            // Well-formed, but not signed by this server: {"alg":"HS256"} . {"sub":"testuser","exp":<far future>} . junk
            const header = base64Url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
            const payload = base64Url(JSON.stringify({ sub: "testuser", exp: 4102444800 }));
            const forged = `${header}.${payload}.${base64Url("not a signature")}`;
            const connection = connectAuthorized(resources, transport, { accessTokenFactory: () => forged }, quietLogger);
            const message = await rejectionMessage(withTimeout(connection.start(), STEP, "start()"), "start()");
            assert.match(message, /Unauthorized: Status code '401'/);
        });
    });
}
