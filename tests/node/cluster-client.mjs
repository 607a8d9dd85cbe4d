// Official @microsoft/signalr clients, one per hubmesh node, driven by tests/processes.rs over stdin/stdout
// (one JSON object per line each way). Clients alternate JSON and MessagePack and all join group "chaos" on the
// demo hub, so every group send crosses nodes and protocols.
//
//   node cluster-client.mjs http://127.0.0.1:A http://127.0.0.1:B http://127.0.0.1:C
//
// Commands: {"cmd":"send","from":i,"count":n,"tag":t}   send n group messages from client i and wait until every
//                                                          expected client has them all, in order
//           {"cmd":"stream","from":i,"count":n,"tag":t,"interval":ms}  start sending in the background
//           {"cmd":"collect","tag":t,"count":n}          wait until every expected client has n messages tagged t
//           {"cmd":"count","via":i}                       GroupCount("chaos") through client i
//           {"cmd":"expect","clients":[...]}              which clients must receive from now on
//           {"cmd":"targets"}                             Echo, Broadcast and SendToGroup across nodes
//           {"cmd":"closed","index":i,"ms":m}             wait up to m ms until client i's connection closed; its error
//           {"cmd":"restart","index":i}                   start client i again and join the group (what an app
//                                                          does on close)
//           {"cmd":"ids"}                                  each client's connection id now (WhoAmI)
//           {"cmd":"received","tag":t}                    each client's numbers of tag t in arrival order, and when
//           {"cmd":"quit"}
//
// With HUBMESH_STATEFUL=1 in the environment, the clients use stateful reconnect (`withStatefulReconnect()`);
// with HUBMESH_AUTOMATIC=1, automatic reconnect too (`withAutomaticReconnect()`: a client whose stateful reconnect
// failed comes back as a new connection, which "ids" shows); with HUBMESH_CLIENT_LOG=1 they log to standard error,
// with timestamps.

import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const signalR = require("@microsoft/signalr");
const { MessagePackHubProtocol } = require("@microsoft/signalr-protocol-msgpack");

const urls = process.argv.slice(2);
const GROUP = "chaos";
const out = (object) => process.stdout.write(JSON.stringify(object) + "\n");

const clients = urls.map((url, index) => {
  const builder = new signalR.HubConnectionBuilder()
    .withUrl(`${url}/hub`, { transport: signalR.HttpTransportType.WebSockets })
    .configureLogging(
      process.env.HUBMESH_CLIENT_LOG === "1"
        ? { log: (level, message) => process.stderr.write(`${new Date().toISOString()} [client ${index}] ${level} ${message}\n`) }
        : signalR.LogLevel.None,
    );
  if (process.env.HUBMESH_STATEFUL === "1") builder.withStatefulReconnect();
  if (process.env.HUBMESH_AUTOMATIC === "1") builder.withAutomaticReconnect();
  if (index % 2 === 1) builder.withHubProtocol(new MessagePackHubProtocol());
  const connection = builder.build();
  const client = { index, connection, received: new Map(), arrived: new Map(), other: [], closed: null };
  connection.onclose((error) => {
    client.closed = error ? String(error) : "closed without an error";
  });
  connection.on("msg", (payload) => {
    if (Array.isArray(payload) && payload.length === 2 && typeof payload[0] === "string") {
      const [tag, n] = payload;
      if (!client.received.has(tag)) client.received.set(tag, []);
      if (!client.arrived.has(tag)) client.arrived.set(tag, []);
      client.received.get(tag).push(Number(n));
      client.arrived.get(tag).push(Date.now());
    } else {
      client.other.push(payload);
    }
  });
  return client;
});
let expected = clients.map((client) => client.index);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check, ms, interval = 20) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return true;
    await sleep(interval);
  }
  return check();
}

function verdict(tag, count) {
  const per = {};
  let ok = true;
  // Over every expected client: what arrived, what of 0..count never did, and what arrived more than once.
  const totals = { clients: expected.length, expected: expected.length * count, received: 0, missing: 0, duplicates: 0 };
  for (const index of expected) {
    const seen = clients[index].received.get(tag) ?? [];
    const inOrder = seen.every((n, i) => n === i);
    const distinct = new Set(seen.filter((n) => n >= 0 && n < count)).size;
    totals.received += seen.length;
    totals.missing += count - distinct;
    totals.duplicates += seen.length - distinct;
    per[index] = { received: seen.length, inOrder, state: clients[index].connection.state };
    if (!inOrder) {
      // Where it went wrong: the first position that is off, and what came around it.
      const at = seen.findIndex((n, i) => n !== i);
      per[index].firstWrong = at;
      per[index].around = seen.slice(Math.max(0, at - 2), at + 3);
    }
    if (seen.length !== count || !inOrder) ok = false;
  }
  return { ok, totals, per };
}

async function collect(tag, count, ms = 15000) {
  await waitFor(() => verdict(tag, count).ok, ms);
  // A little longer, to catch duplicates that would arrive after the count was reached.
  await sleep(300);
  return verdict(tag, count);
}

async function targets() {
  // Echo goes to the caller only; Broadcast to everyone on every node; SendToGroup to members on every node.
  const other = () => clients.map((client) => client.other.length);
  const before = other();
  await clients[0].connection.send("Echo", "echo-0");
  await clients[1].connection.send("Broadcast", "broadcast-1");
  await clients[2 % clients.length].connection.send("SendToGroup", GROUP, "group-2");
  const ok = await waitFor(
    () => clients.every((client, i) => client.other.length - before[i] === (i === 0 ? 3 : 2)),
    10000,
  );
  const seen = clients.map((client, i) => client.other.slice(before[i]));
  return { ok, seen };
}

try {
  await Promise.all(clients.map((client) => client.connection.start()));
  for (const client of clients) await client.connection.invoke("JoinGroup", GROUP);
  const ids = [];
  for (const client of clients) ids.push(await client.connection.invoke("WhoAmI"));
  out({ ready: true, ids });
} catch (error) {
  out({ ready: false, error: String(error) });
  process.exit(1);
}

const streams = new Map();
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  let command;
  try {
    command = JSON.parse(line);
  } catch {
    out({ error: `not JSON: ${line}` });
    continue;
  }
  try {
    switch (command.cmd) {
      case "send": {
        const sender = clients[command.from].connection;
        for (let n = 0; n < command.count; n++) await sender.send("SendToGroup", GROUP, [command.tag, n]);
        out(await collect(command.tag, command.count));
        break;
      }
      case "stream": {
        const sender = clients[command.from].connection;
        streams.set(
          command.tag,
          (async () => {
            for (let n = 0; n < command.count; n++) {
              // A send made while the client is reconnecting (stateful reconnect) is refused by the client itself,
              // before anything goes out; an app sends it again, as here (bounded).
              for (let attempt = 0; ; attempt++) {
                try {
                  await sender.send("SendToGroup", GROUP, [command.tag, n]);
                  break;
                } catch (error) {
                  if (attempt >= 500) throw error;
                  await sleep(20);
                }
              }
              await sleep(command.interval ?? 20);
            }
          })(),
        );
        out({ ok: true });
        break;
      }
      case "collect": {
        await streams.get(command.tag);
        out(await collect(command.tag, command.count));
        break;
      }
      case "latency": {
        // One message at a time from client `from` to the group; the time until client `to` (another node) has it.
        const samples = [];
        const tag = command.tag;
        for (let n = 0; n < command.count; n++) {
          const started = process.hrtime.bigint();
          await clients[command.from].connection.send("SendToGroup", GROUP, [tag, n]);
          const arrived = await waitFor(() => (clients[command.to].received.get(tag) ?? []).length > n, 5000, 1);
          if (!arrived) throw new Error(`message ${n} did not arrive`);
          samples.push(Number(process.hrtime.bigint() - started) / 1e6);
        }
        samples.sort((a, b) => a - b);
        const at = (q) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))];
        out({ ok: true, medianMs: at(0.5), p99Ms: at(0.99), samples: samples.length });
        break;
      }
      case "count":
        out({ count: await clients[command.via].connection.invoke("GroupCount", GROUP) });
        break;
      case "expect":
        expected = command.clients;
        out({ ok: true });
        break;
      case "targets":
        out(await targets());
        break;
      case "closed": {
        const client = clients[command.index];
        await waitFor(() => client.closed !== null, command.ms ?? 10000);
        out({ ok: client.closed !== null, error: client.closed });
        break;
      }
      case "restart": {
        const client = clients[command.index];
        client.closed = null;
        await client.connection.start();
        await client.connection.invoke("JoinGroup", GROUP);
        out({ ok: true });
        break;
      }
      case "received": {
        // What each client got of a tag, in arrival order, and when (milliseconds since the epoch).
        out({
          ok: true,
          received: clients.map((client) => client.received.get(command.tag) ?? []),
          arrived: clients.map((client) => client.arrived.get(command.tag) ?? []),
        });
        break;
      }
      case "ids": {
        const ids = [];
        for (const client of clients) ids.push(await client.connection.invoke("WhoAmI"));
        out({ ok: true, ids });
        break;
      }
      case "quit":
        out({ ok: true });
        process.exit(0);
        break;
      default:
        out({ error: `unknown command ${command.cmd}` });
    }
  } catch (error) {
    out({ ok: false, error: String(error) });
  }
}
