// Uses a running hubmesh node's demo hub with the official @microsoft/signalr client, over JSON and MessagePack:
// invoke, send, streams both ways, a server call, group and direct sends and a client result. (SendToUser needs
// connections with a user, from a token: tests/drain_moves.rs and tests/cluster.rs try it.)
//
//   cargo run --release -- node            # in one terminal
//   (cd tests/node && npm ci)              # once, installs the pinned official client
//   node examples/demo-client.mjs http://127.0.0.1:5000
//
// Prints one line per check and exits non-zero on the first failure.

import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";
import assert from "node:assert/strict";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "tests", "node", "package.json"));
const signalR = require("@microsoft/signalr");
const { MessagePackHubProtocol } = require("@microsoft/signalr-protocol-msgpack");

const baseUrl = (process.argv[2] ?? "http://127.0.0.1:5000").replace(/\/$/, "");
const hubUrl = `${baseUrl}/hub`;

function connect(protocol) {
  const builder = new signalR.HubConnectionBuilder()
    .withUrl(hubUrl, { transport: signalR.HttpTransportType.WebSockets })
    .configureLogging(signalR.LogLevel.Warning);
  if (protocol === "messagepack") builder.withHubProtocol(new MessagePackHubProtocol());
  return builder.build();
}

// Resolves with the next `msg` payload a connection receives, or rejects after `ms`.
function nextMessage(connection, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      connection.off("msg", handler);
      reject(new Error("no msg within " + ms + " ms"));
    }, ms);
    const handler = (payload) => {
      clearTimeout(timer);
      connection.off("msg", handler);
      resolve(payload);
    };
    connection.on("msg", handler);
  });
}

async function check(name, body) {
  await body();
  console.log(`ok   ${name}`);
}

async function run(protocol) {
  const alice = connect(protocol);
  const bob = connect(protocol);
  await Promise.all([alice.start(), bob.start()]);
  try {
    await check(`${protocol}: Echo is sent back to the caller only`, async () => {
      const received = nextMessage(alice);
      await alice.send("Echo", { text: "hello", n: 1 });
      assert.deepEqual(await received, { text: "hello", n: 1 });
    });
    await check(`${protocol}: JoinGroup completes, SendToGroup reaches every member`, async () => {
      await alice.invoke("JoinGroup", "room");
      await bob.invoke("JoinGroup", "room");
      assert.equal(await alice.invoke("GroupCount", "room"), 2);
      const atAlice = nextMessage(alice);
      const atBob = nextMessage(bob);
      await bob.send("SendToGroup", "room", [1, "two", 3]);
      assert.deepEqual(await atAlice, [1, "two", 3]);
      assert.deepEqual(await atBob, [1, "two", 3]);
    });
    await check(`${protocol}: SendToConnection reaches that connection only`, async () => {
      const aliceId = await alice.invoke("WhoAmI");
      const atBob = nextMessage(bob, 500).then(
        () => "delivered",
        () => "none",
      );
      const atAlice = nextMessage(alice);
      await bob.send("SendToConnection", aliceId, { to: "alice" });
      assert.deepEqual(await atAlice, { to: "alice" });
      assert.equal(await atBob, "none");
    });
    await check(`${protocol}: Broadcast reaches every connection`, async () => {
      const atAlice = nextMessage(alice);
      const atBob = nextMessage(bob);
      await alice.send("Broadcast", "to all");
      assert.equal(await atAlice, "to all");
      assert.equal(await atBob, "to all");
    });
    await check(`${protocol}: LeaveGroup stops group delivery`, async () => {
      await bob.invoke("LeaveGroup", "room");
      assert.equal(await alice.invoke("GroupCount", "room"), 1);
      const atBob = nextMessage(bob, 500).then(
        () => "delivered",
        () => "none",
      );
      const atAlice = nextMessage(alice);
      await alice.send("SendToGroup", "room", "members only");
      assert.equal(await atAlice, "members only");
      assert.equal(await atBob, "none");
    });
    await check(`${protocol}: a server-to-client stream`, async () => {
      const items = [];
      await new Promise((resolve, reject) => {
        alice.stream("Count", 5).subscribe({ next: (item) => items.push(item), complete: resolve, error: reject });
      });
      assert.deepEqual(items, [1, 2, 3, 4, 5]);
    });
    await check(`${protocol}: a client-to-server stream`, async () => {
      const subject = new signalR.Subject();
      const total = alice.invoke("Sum", subject);
      for (const n of [1, 2, 3.5]) subject.next(n);
      subject.complete();
      assert.equal(await total, 6.5);
    });
    await check(`${protocol}: a client result`, async () => {
      alice.on("ask", (question) => `answer to ${question}`);
      assert.equal(await alice.invoke("AskClient", "life"), "answer to life");
    });
    await check(`${protocol}: a hub error reaches the client with ASP.NET's text`, async () => {
      await assert.rejects(alice.invoke("NoSuchMethod"), /Failed to invoke 'NoSuchMethod' due to an error on the server. HubException: Method does not exist./);
    });
  } finally {
    await Promise.allSettled([alice.stop(), bob.stop()]);
  }
}

for (const protocol of ["json", "messagepack"]) {
  await run(protocol);
}
console.log("demo-client: all checks passed");
