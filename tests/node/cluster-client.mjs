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
//           {"cmd":"peers","tag":t,"count":n,"interval":ms,"userOffset":u,"directOffset":d,"direct":b}
//                                                          start sending in the background from every client i: n
//                                                          messages with SendToUser to the user of client i+u, and
//                                                          (unless b is false) n with SendToConnection to client i+d's
//                                                          connection (indices modulo the number of clients; needs
//                                                          HUBMESH_USERS=1)
//           {"cmd":"collect-peers","tag":t}              wait until every client has each of its senders' user and
//                                                          direct messages of tag t; the figures per kind
//           {"cmd":"count","via":i}                       GroupCount("chaos") through client i
//           {"cmd":"expect","clients":[...]}              which clients must receive from now on
//           {"cmd":"targets"}                             Echo, Broadcast and SendToGroup across nodes
//           {"cmd":"closed","index":i,"ms":m}             wait up to m ms until client i's connection closed; its error
//           {"cmd":"restart","index":i}                   start client i again and join the group (what an app
//                                                          does on close)
//           {"cmd":"ids"}                                  each client's connection id now (WhoAmI), and how many
//                                                          times it joined again after a reconnect (HUBMESH_REJOIN)
//           {"cmd":"received","tag":t}                    each client's numbers of tag t in arrival order, and when
//           {"cmd":"quit"}
//
// With HUBMESH_STATEFUL=1 in the environment, the clients use stateful reconnect (`withStatefulReconnect()`);
// with HUBMESH_AUTOMATIC=1, automatic reconnect too (`withAutomaticReconnect()`: a client whose stateful reconnect
// failed comes back as a new connection, which "ids" shows); with HUBMESH_CLIENT_LOG=1 they log to standard error,
// with timestamps; with HUBMESH_USERS=1, client i asks for user `user-<i>` in the `user` query parameter (which
// a hub whose user id provider reads it gives it); with HUBMESH_JWT_SECRET set instead, client i is user
// `user-<i>` by an HS256 bearer token (`sub`) signed with that secret, as for a node whose `auth.secret` it is.
// HUBMESH_TRANSPORT names the transport (`WebSockets`, the default, `ServerSentEvents` or `LongPolling`; over
// Server-Sent Events every client speaks JSON, the only protocol it carries); with HUBMESH_REJOIN=1 a client that
// automatic reconnect brought back as a new connection joins the group again, as an app does in `onreconnected`
// ("ids" gives how many times each one did).

import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const signalR = require("@microsoft/signalr");
const { MessagePackHubProtocol } = require("@microsoft/signalr-protocol-msgpack");

const urls = process.argv.slice(2);
const GROUP = "chaos";
const out = (object) => process.stdout.write(JSON.stringify(object) + "\n");

const jwtSecret = process.env.HUBMESH_JWT_SECRET || "";
const byQuery = process.env.HUBMESH_USERS === "1" && jwtSecret === "";
const userOf = (index) => `user-${index}`;

// An HS256 token for user `user`, valid for an hour.
function tokenOf(user) {
  const part = (object) => Buffer.from(JSON.stringify(object)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", jwtSecret).update(body).digest("base64url")}`;
}

const transportName = process.env.HUBMESH_TRANSPORT || "WebSockets";
if (signalR.HttpTransportType[transportName] === undefined) throw new Error(`unknown transport ${transportName}`);

const clients = urls.map((url, index) => {
  const hubUrl = byQuery ? `${url}/hub?user=${userOf(index)}` : `${url}/hub`;
  const options = { transport: signalR.HttpTransportType[transportName] };
  if (jwtSecret !== "") options.accessTokenFactory = () => tokenOf(userOf(index));
  const builder = new signalR.HubConnectionBuilder()
    .withUrl(hubUrl, options)
    .configureLogging(
      process.env.HUBMESH_CLIENT_LOG === "1"
        ? { log: (level, message) => process.stderr.write(`${new Date().toISOString()} [client ${index}] ${level} ${message}\n`) }
        : signalR.LogLevel.None,
    );
  if (process.env.HUBMESH_STATEFUL === "1") builder.withStatefulReconnect();
  if (process.env.HUBMESH_AUTOMATIC === "1") builder.withAutomaticReconnect();
  if (index % 2 === 1 && transportName !== "ServerSentEvents") builder.withHubProtocol(new MessagePackHubProtocol());
  const connection = builder.build();
  // `fromPeers`: per tag, per sender index, the numbers of the messages `[tag, n, sender]` in arrival order.
  const client = { index, connection, received: new Map(), arrived: new Map(), fromPeers: new Map(), other: [], closed: null, rejoined: 0 };
  connection.onclose((error) => {
    client.closed = error ? String(error) : "closed without an error";
  });
  connection.onreconnected(async () => {
    if (process.env.HUBMESH_REJOIN !== "1") return;
    try {
      await connection.invoke("JoinGroup", GROUP);
      client.rejoined += 1;
    } catch (error) {
      process.stderr.write(`client ${index} did not join again: ${error}\n`);
    }
  });
  connection.on("msg", (payload) => {
    if (Array.isArray(payload) && payload.length === 2 && typeof payload[0] === "string") {
      const [tag, n] = payload;
      if (!client.received.has(tag)) client.received.set(tag, []);
      if (!client.arrived.has(tag)) client.arrived.set(tag, []);
      client.received.get(tag).push(Number(n));
      client.arrived.get(tag).push(Date.now());
    } else if (Array.isArray(payload) && payload.length === 3 && typeof payload[0] === "string") {
      const [tag, n, sender] = payload;
      if (!client.fromPeers.has(tag)) client.fromPeers.set(tag, new Map());
      const bySender = client.fromPeers.get(tag);
      if (!bySender.has(sender)) bySender.set(sender, []);
      bySender.get(sender).push(Number(n));
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

// A send made while the client is reconnecting (stateful reconnect) is refused by the client itself, before
// anything goes out; an app sends it again, as here (bounded). The number of refusals.
async function sendRetried(connection, method, ...args) {
  for (let attempt = 0; ; attempt++) {
    try {
      await connection.send(method, ...args);
      return attempt;
    } catch (error) {
      if (attempt >= 500) throw error;
      await sleep(20);
    }
  }
}

// The user and direct traffic of tag `tag`: who sends to whom, and what each sender had refused.
const peerRuns = new Map();

function peerKinds(tag, direct = true) {
  return direct ? { user: `${tag}-user`, direct: `${tag}-direct` } : { user: `${tag}-user` };
}

function startPeers(command, ids) {
  const n = clients.length;
  const withDirect = command.direct !== false;
  const { user, direct } = peerKinds(command.tag, withDirect);
  const targets = clients.map((client) => ({
    user: (client.index + (command.userOffset ?? 1)) % n,
    direct: (client.index + (command.directOffset ?? 2)) % n,
  }));
  const refused = { user: 0, direct: 0 };
  const sending = Promise.all(
    clients.map(async (client) => {
      const target = targets[client.index];
      for (let m = 0; m < command.count; m++) {
        refused.user += await sendRetried(client.connection, "SendToUser", userOf(target.user), [user, m, client.index]);
        if (withDirect) {
          refused.direct += await sendRetried(client.connection, "SendToConnection", ids[target.direct], [direct, m, client.index]);
        }
        await sleep(command.interval ?? 20);
      }
    }),
  );
  // Awaited by collect-peers; a failure must not end the script before that answers with it.
  sending.catch(() => {});
  peerRuns.set(command.tag, { count: command.count, withDirect, targets, refused, sending });
}

// Per kind: every receiver has each of its senders' messages 0..count-1 once and in order, and nothing from anyone
// else; the totals (sent, received, missing, duplicated) and the receivers that are off.
function peerVerdict(tag) {
  const run = peerRuns.get(tag);
  const result = { ok: true };
  for (const [kind, kindTag] of Object.entries(peerKinds(tag, run.withDirect))) {
    const totals = { sent: clients.length * run.count, refusedAndSentAgain: run.refused[kind], received: 0, missing: 0, duplicates: 0, outOfOrder: 0, strays: 0 };
    const wrong = {};
    for (const receiver of clients) {
      const bySender = receiver.fromPeers.get(kindTag) ?? new Map();
      const senders = clients.filter((client) => run.targets[client.index][kind] === receiver.index).map((client) => client.index);
      for (const [sender, seen] of bySender) {
        if (!senders.includes(sender)) {
          totals.strays += seen.length;
          wrong[`${receiver.index}<-${sender}`] = { stray: seen.length };
        }
      }
      for (const sender of senders) {
        const seen = bySender.get(sender) ?? [];
        const distinct = new Set(seen.filter((m) => m >= 0 && m < run.count)).size;
        const inOrder = seen.every((m, i) => m === i);
        totals.received += seen.length;
        totals.missing += run.count - distinct;
        totals.duplicates += seen.length - distinct;
        if (!inOrder) totals.outOfOrder += 1;
        if (seen.length !== run.count || !inOrder) {
          const at = seen.findIndex((m, i) => m !== i);
          wrong[`${receiver.index}<-${sender}`] = {
            received: seen.length,
            firstWrong: at,
            around: at < 0 ? [] : seen.slice(Math.max(0, at - 2), at + 3),
            state: receiver.connection.state,
          };
        }
      }
    }
    const bad = Object.keys(wrong).length > 0;
    if (bad) result.ok = false;
    // At most 20 of the receivers that are off, to keep the answer one readable line.
    result[kind] = { totals, wrong: Object.fromEntries(Object.entries(wrong).slice(0, 20)) };
  }
  return result;
}

async function collectPeers(tag, ms = 15000) {
  await peerRuns.get(tag).sending;
  await waitFor(() => peerVerdict(tag).ok, ms);
  // A little longer, to catch duplicates that would arrive after the count was reached.
  await sleep(300);
  return peerVerdict(tag);
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

// Each client's connection id when it started (stateful reconnect keeps it): where direct traffic goes.
const readyIds = [];
try {
  await Promise.all(clients.map((client) => client.connection.start()));
  for (const client of clients) await client.connection.invoke("JoinGroup", GROUP);
  for (const client of clients) readyIds.push(await client.connection.invoke("WhoAmI"));
  out({ ready: true, ids: readyIds });
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
              await sendRetried(sender, "SendToGroup", GROUP, [command.tag, n]);
              await sleep(command.interval ?? 20);
            }
          })(),
        );
        out({ ok: true });
        break;
      }
      case "peers":
        startPeers(command, readyIds);
        out({ ok: true });
        break;
      case "collect-peers":
        out(await collectPeers(command.tag));
        break;
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
        out({ ok: true, ids, rejoined: clients.map((client) => client.rejoined) });
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
