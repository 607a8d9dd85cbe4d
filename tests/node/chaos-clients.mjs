// Official `@microsoft/signalr` clients for the chaos harness (`tests/cli/chaos/official.rs`), one per entry of the
// JSON array given as the only argument: `{"name", "url", "token", "groups", "msgpack"}`. Each connects to its node
// (negotiate, then WebSockets) with its user's bearer token, asks WhoAmI, joins its groups, and sends to them in
// turn every 250 ms, as the harness's raw clients do; a connection that ends is started again, as a new
// connection, after 300 ms. Every event is one JSON line on standard output, with `t` in milliseconds since the
// epoch:
//   {"ev":"open","label","id","t"}            a connection of `name` (label `<name>.<incarnation>`) is up
//   {"ev":"joined","label","t"}               it joined every group
//   {"ev":"sent","label","seq","target","at","done","ok"}   a group send, started at `at`, handed off at `done`
//   {"ev":"got","label","text","t"}           a message for client method "msg"
//   {"ev":"closed","label","reason","t"}      the connection ended
// Standard input: "stop" ends the sending, "quit" stops everything and exits.

import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const signalR = require("@microsoft/signalr");
const { MessagePackHubProtocol } = require("@microsoft/signalr-protocol-msgpack");

const entries = JSON.parse(process.argv[2] ?? "[]");
const out = (object) => process.stdout.write(JSON.stringify(object) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const SEND_EVERY = 250;

let sending = true;
let quitting = false;

async function session(entry, label) {
  const builder = new signalR.HubConnectionBuilder()
    .withUrl(`${entry.url}/hub`, { accessTokenFactory: () => entry.token })
    .configureLogging(signalR.LogLevel.None);
  if (entry.msgpack) builder.withHubProtocol(new MessagePackHubProtocol());
  const connection = builder.build();
  let reason = null;
  const ended = new Promise((resolve) => {
    connection.onclose((error) => {
      reason = error ? String(error) : "closed without an error";
      resolve();
    });
  });
  connection.on("msg", (text) => out({ ev: "got", label, text: String(text), t: Date.now() }));
  try {
    await connection.start();
  } catch (error) {
    return;
  }
  try {
    const id = await connection.invoke("WhoAmI");
    out({ ev: "open", label, id, t: Date.now() });
    for (const group of entry.groups) await connection.invoke("JoinGroup", group);
    out({ ev: "joined", label, t: Date.now() });
  } catch (error) {
    out({ ev: "closed", label, reason: `setup failed: ${error}`, t: Date.now() });
    await connection.stop().catch(() => {});
    return;
  }
  let seq = 0;
  let next = Date.now();
  while (reason === null && !quitting) {
    if (sending) {
      seq += 1;
      const target = entry.groups[seq % entry.groups.length];
      const at = Date.now();
      let ok = true;
      try {
        await connection.send("SendToGroup", target, `g|${label}|${seq}|${target}|${at}`);
      } catch (error) {
        ok = false;
      }
      out({ ev: "sent", label, seq, target, at, done: Date.now(), ok });
    }
    next += SEND_EVERY;
    await Promise.race([ended, sleep(Math.max(5, next - Date.now()))]);
  }
  if (reason === null) {
    await connection.stop().catch(() => {});
    reason = "the harness stopped";
  }
  out({ ev: "closed", label, reason, t: Date.now() });
}

async function client(entry) {
  let incarnation = 0;
  while (!quitting) {
    incarnation += 1;
    await session(entry, `${entry.name}.${incarnation}`);
    if (!quitting) await sleep(300);
  }
}

const running = entries.map(client);
readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  if (line.trim() === "stop") sending = false;
  if (line.trim() === "quit") {
    quitting = true;
    await Promise.race([Promise.all(running), sleep(5000)]);
    process.exit(0);
  }
});
