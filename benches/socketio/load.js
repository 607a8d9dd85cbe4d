// The Socket.IO side of benches/compare.sh: the fanout, echo and idle scenarios of `hubmesh bench`, against
// Socket.IO servers (server.js). Receivers and echo clients speak the Engine.IO 4 / Socket.IO 5 wire protocol over
// raw `ws` WebSockets (no polling, no client library per connection), as `hubmesh bench` speaks SignalR over raw
// WebSockets; the fanout publisher is a socket.io-client. One JSON line per run on stdout, like `hubmesh bench`.
//   node load.js fanout --urls http://127.0.0.1:P1,... --pids A,B,C --redis-pid R --clients 1000 --rate 50000 --seconds 10
//   node load.js echo   --urls ... --pids ... --redis-pid R --clients 10 --rate 1000 --seconds 10   (rate 0: as fast as possible)
//   node load.js idle   --urls ... --pids ... --redis-pid R --clients 10000 --seconds 10
//   node load.js rooms  --urls ... --pids ... --redis-pid R --groups 10000 --group-size 10 --rate 100000 --seconds 10
//     (as `hubmesh bench rooms`: member i in room i / group-size on server i % servers, every member sending to its
//     own room; --rate is deliveries/s, so rate / group-size sends/s in all, on one shared schedule)
// Only loopback URLs are accepted. Every phase is bounded in time.
"use strict";
const fs = require("node:fs");
const { performance } = require("node:perf_hooks");
const WebSocket = require("ws");
const { io } = require("socket.io-client");

const argv = process.argv.slice(2);
const scenario = argv[0];
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : dflt;
};
const urls = opt("urls", "").split(",").filter(Boolean);
const pids = opt("pids", "").split(",").filter(Boolean).map(Number);
const redisPid = Number(opt("redis-pid", "0"));
const clients = Number(opt("clients", scenario === "echo" ? "10" : "1000"));
const rate = Number(opt("rate", scenario === "echo" ? "0" : "50000"));
const seconds = Number(opt("seconds", "10"));
const drainSeconds = Number(opt("drain-seconds", "10"));
const payloadBytes = Number(opt("payload-bytes", "64"));
const concurrency = Number(opt("connect-concurrency", "64"));
const groups = Number(opt("groups", "10000"));
const groupSize = Number(opt("group-size", "10"));
const stepTimeout = 10000;
for (const u of urls) {
  const host = new URL(u).hostname;
  if (host !== "127.0.0.1" && host !== "localhost") throw new Error(`not a loopback URL: ${u}`);
}
if (!urls.length) throw new Error("--urls is required");

// ---- /proc
const TICK = 100; // USER_HZ
const cpuTicks = (pid) => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]); // utime + stime (fields 14, 15)
  } catch {
    return 0;
  }
};
const rss = (pid) => {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
};
const sum = (xs, f) => xs.reduce((a, x) => a + f(x), 0);
const cpuNow = () => ({ nodes: sum(pids, cpuTicks), redis: redisPid ? cpuTicks(redisPid) : 0 });
const ownCpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

// ---- latency
const pct = (sorted, q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0);
const latencyJson = (lat) => {
  const s = Float64Array.from(lat).sort();
  const r3 = (x) => Math.round(x * 1000) / 1000;
  return {
    count: s.length,
    p50_ms: r3(pct(s, 0.5)),
    p90_ms: r3(pct(s, 0.9)),
    p99_ms: r3(pct(s, 0.99)),
    max_ms: r3(s.length ? s[s.length - 1] : 0),
  };
};

// ---- a raw Socket.IO connection over one WebSocket
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function wsUrl(u) {
  const url = new URL(u);
  return `ws://${url.host}/socket.io/?EIO=4&transport=websocket`;
}
function connectRaw(u, onEvent) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(u), { perMessageDeflate: false });
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`connect timeout ${u}`));
    }, stepTimeout);
    const conn = { ws, acks: new Map(), nextAck: 0 };
    ws.on("message", (data) => {
      const s = data.toString();
      const c = s.charCodeAt(0);
      if (c === 50 /* 2: ping */) return ws.send("3");
      if (c !== 52 /* 4: message */) return;
      const t = s.charCodeAt(1);
      if (t === 48 /* 0: connect */) {
        clearTimeout(timer);
        return resolve(conn);
      }
      if (t === 50 /* 2: event */) return onEvent(s);
      if (t === 51 /* 3: ack */) {
        const b = s.indexOf("[");
        const id = Number(s.slice(2, b));
        const cb = conn.acks.get(id);
        if (cb) {
          conn.acks.delete(id);
          cb(s.slice(b));
        }
      }
    });
    ws.on("open", () => ws.send("40"));
    ws.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    ws.on("close", () => {
      conn.closed = true;
    });
  });
}
function emitAck(conn, event, args) {
  return new Promise((resolve, reject) => {
    const id = conn.nextAck++;
    const timer = setTimeout(() => reject(new Error(`no ack for ${event}`)), stepTimeout);
    conn.acks.set(id, (body) => {
      clearTimeout(timer);
      resolve(body);
    });
    conn.ws.send(`42${id}${JSON.stringify([event, ...args])}`);
  });
}
async function openMany(n, room, onEventFor) {
  const conns = new Array(n);
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      const conn = await connectRaw(urls[i % urls.length], onEventFor ? onEventFor(i) : () => {});
      const joining = typeof room === "function" ? room(i) : room;
      if (joining !== null) await emitAck(conn, "join", [joining]);
      conns[i] = conn;
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return conns;
}
const closeAll = (conns) => conns.forEach((c) => c && c.ws.terminate());

function payload(seq, ts) {
  const head = `${seq}:${ts.toFixed(3)}:`;
  return head.length >= payloadBytes ? head : head + "x".repeat(payloadBytes - head.length);
}

function report(parameters, results) {
  const out = { scenario, implementation: "socket.io", parameters: { urls, pids, redis_pid: redisPid, payload_bytes: payloadBytes, ...parameters }, results };
  console.log(JSON.stringify(out));
}

async function fanout() {
  const publishRate = rate / clients;
  const total = Math.max(1, Math.round(publishRate * seconds));
  const seen = Array.from({ length: clients }, () => new Uint8Array(total));
  let delivered = 0,
    duplicated = 0,
    unexpected = 0;
  const lat = [];
  const onEventFor = (i) => (s) => {
    // 42["msg","SEQ:TS:xxx"]
    const start = s.indexOf(",\"") + 2;
    const c1 = s.indexOf(":", start);
    const c2 = s.indexOf(":", c1 + 1);
    const seq = Number(s.slice(start, c1));
    const ts = Number(s.slice(c1 + 1, c2));
    if (!(seq >= 0 && seq < total)) return void unexpected++;
    if (seen[i][seq]) return void duplicated++;
    seen[i][seq] = 1;
    delivered++;
    lat.push(performance.now() - ts);
  };
  const conns = await openMany(clients, "bench", onEventFor);
  const publisher = io(urls[0], { transports: ["websocket"], reconnection: false });
  await new Promise((resolve, reject) => {
    publisher.on("connect", resolve);
    publisher.on("connect_error", reject);
  });
  await sleep(200);
  const cpu0 = cpuNow();
  const own0 = ownCpu();
  const started = performance.now();
  const interval = 1000 / publishRate;
  let seq = 0;
  while (seq < total) {
    const now = performance.now();
    while (seq < total && started + seq * interval <= now) {
      publisher.emit("send", "bench", payload(seq, performance.now()));
      seq++;
    }
    const due = started + seq * interval - performance.now();
    await sleep(Math.max(0, Math.floor(due)));
  }
  const publishSeconds = (performance.now() - started) / 1000;
  const expected = total * clients;
  const drainUntil = performance.now() + drainSeconds * 1000;
  let lastDelivered = -1,
    lastChange = performance.now();
  while (delivered < expected && performance.now() < drainUntil) {
    await sleep(5);
    if (delivered !== lastDelivered) {
      lastDelivered = delivered;
      lastChange = performance.now();
    }
  }
  const deliverySeconds = ((delivered < expected ? lastChange : performance.now()) - started) / 1000;
  const cpu1 = cpuNow();
  const own = ownCpu() - own0;
  publisher.close();
  closeAll(conns);
  const nodeCpu = (cpu1.nodes - cpu0.nodes) / TICK;
  const redisCpu = (cpu1.redis - cpu0.redis) / TICK;
  const r = (x) => Math.round(x);
  report(
    { clients, rate, publish_rate: publishRate, seconds, drain_seconds: drainSeconds },
    {
      published: total,
      expected_deliveries: expected,
      delivered,
      lost: expected - delivered,
      duplicated,
      unexpected,
      publish_seconds: publishSeconds,
      delivery_seconds: deliverySeconds,
      delivered_per_sec: r(delivered / deliverySeconds),
      latency: latencyJson(lat),
      server_cpu_seconds: nodeCpu,
      redis_cpu_seconds: redisCpu,
      deliveries_per_server_cpu_second: nodeCpu > 0 ? r(delivered / nodeCpu) : null,
      deliveries_per_server_and_redis_cpu_second: nodeCpu + redisCpu > 0 ? r(delivered / (nodeCpu + redisCpu)) : null,
      bench_cpu_seconds: own,
    }
  );
}

async function echo() {
  const conns = await openMany(clients, null, null);
  const lat = [];
  let roundTrips = 0;
  const body = "x".repeat(payloadBytes);
  const cpu0 = cpuNow();
  const own0 = ownCpu();
  const started = performance.now();
  const end = started + seconds * 1000;
  const perClient = rate > 0 ? rate / clients : 0;
  await Promise.all(
    conns.map(async (conn, i) => {
      let n = 0;
      while (performance.now() < end) {
        if (perClient > 0) {
          const due = started + (i / clients + n) * (1000 / perClient);
          const wait = due - performance.now();
          if (wait > 0) await sleep(wait);
          if (performance.now() >= end) break;
        }
        const t0 = performance.now();
        await emitAck(conn, "echo", [body]);
        lat.push(performance.now() - t0);
        roundTrips++;
        n++;
      }
    })
  );
  const elapsed = (performance.now() - started) / 1000;
  const cpu1 = cpuNow();
  const own = ownCpu() - own0;
  closeAll(conns);
  const nodeCpu = (cpu1.nodes - cpu0.nodes) / TICK;
  const redisCpu = (cpu1.redis - cpu0.redis) / TICK;
  report(
    { clients, rate, seconds },
    {
      round_trips: roundTrips,
      measured_seconds: elapsed,
      round_trips_per_sec: Math.round(roundTrips / elapsed),
      latency: latencyJson(lat),
      server_cpu_seconds: nodeCpu,
      redis_cpu_seconds: redisCpu,
      round_trips_per_server_cpu_second: nodeCpu > 0 ? Math.round(roundTrips / nodeCpu) : null,
      bench_cpu_seconds: own,
    }
  );
}

async function idle() {
  const before = sum(pids, rss);
  const t0 = performance.now();
  const conns = await openMany(clients, "idle", null);
  const setupSeconds = (performance.now() - t0) / 1000;
  await sleep(seconds * 1000);
  const after = sum(pids, rss);
  closeAll(conns);
  report(
    { clients, seconds },
    {
      connections: clients,
      setup_seconds: setupSeconds,
      connects_per_sec_during_setup: Math.round(clients / setupSeconds),
      server_rss_before_bytes: before,
      server_rss_after_bytes: after,
      server_rss_per_connection_bytes: Math.round((after - before) / clients),
      redis_rss_bytes: redisPid ? rss(redisPid) : null,
    }
  );
}

async function rooms() {
  const members = groups * groupSize;
  const sendsPerSec = rate / groupSize;
  const total = Math.max(1, Math.round(sendsPerSec * seconds));
  const perMember = Math.ceil(total / members);
  const seqs = perMember * groupSize;
  const seen = Array.from({ length: members }, () => new Uint8Array(seqs));
  let delivered = 0,
    received = 0,
    duplicated = 0,
    unexpected = 0,
    lastDelivery = 0;
  const lat = [];
  const onEventFor = (i) => (s) => {
    // 42["msg","SEQ:TS:xxx"]
    received++;
    const start = s.indexOf(",\"") + 2;
    const c1 = s.indexOf(":", start);
    const c2 = s.indexOf(":", c1 + 1);
    const seq = Number(s.slice(start, c1));
    const ts = Number(s.slice(c1 + 1, c2));
    if (!(seq >= 0 && seq < seqs)) return void unexpected++;
    if (seen[i][seq]) return void duplicated++;
    seen[i][seq] = 1;
    delivered++;
    lastDelivery = performance.now();
    lat.push(performance.now() - ts);
  };
  const roomOf = (i) => `room-${Math.floor(i / groupSize)}`;
  const t0 = performance.now();
  const conns = await openMany(members, roomOf, onEventFor);
  const setupSeconds = (performance.now() - t0) / 1000;
  await sleep(200);
  const cpu0 = cpuNow();
  const own0 = ownCpu();
  const started = performance.now();
  let n = 0;
  while (n < total) {
    const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * sendsPerSec) + 1);
    for (; n < due; n++) {
      const i = n % members;
      const k = Math.floor(n / members);
      const seq = k * groupSize + (i % groupSize);
      conns[i].ws.send(`42${JSON.stringify(["send", roomOf(i), payload(seq, performance.now())])}`);
    }
    await sleep(Math.max(0, Math.floor(((n / sendsPerSec) * 1000 + started - performance.now()))));
  }
  const sendSeconds = (performance.now() - started) / 1000;
  const expected = total * groupSize;
  const drainUntil = performance.now() + drainSeconds * 1000;
  while (delivered < expected && performance.now() < drainUntil) await sleep(5);
  const deliverySeconds = Math.max(sendSeconds, (lastDelivery - started) / 1000);
  const cpu1 = cpuNow();
  const own = ownCpu() - own0;
  closeAll(conns);
  const nodeCpu = (cpu1.nodes - cpu0.nodes) / TICK;
  const redisCpu = (cpu1.redis - cpu0.redis) / TICK;
  const r = (x) => Math.round(x);
  report(
    { groups, group_size: groupSize, rate, sends_per_sec: sendsPerSec, seconds, drain_seconds: drainSeconds },
    {
      members,
      setup_seconds: setupSeconds,
      sent: total,
      expected_deliveries: expected,
      delivered,
      received,
      lost: expected - delivered,
      duplicated,
      unexpected,
      send_seconds: sendSeconds,
      delivery_seconds: deliverySeconds,
      delivered_per_sec: r(delivered / deliverySeconds),
      latency: latencyJson(lat),
      server_cpu_seconds: nodeCpu,
      redis_cpu_seconds: redisCpu,
      deliveries_per_server_cpu_second: nodeCpu > 0 ? r(delivered / nodeCpu) : null,
      deliveries_per_server_and_redis_cpu_second: nodeCpu + redisCpu > 0 ? r(delivered / (nodeCpu + redisCpu)) : null,
      bench_cpu_seconds: own,
    }
  );
}

const run = { fanout, echo, idle, rooms }[scenario];
if (!run) {
  console.error("usage: node load.js fanout|echo|idle|rooms --urls URL,... [options]");
  process.exit(2);
}
const hardLimit = setTimeout(() => {
  console.error("load.js: time limit reached");
  process.exit(1);
}, (seconds + drainSeconds + 300) * 1000);
hardLimit.unref();
run()
  .then(() => process.exit(0))
  .catch((e) => {
    console.error(`load.js ${scenario}: ${e.message}`);
    process.exit(1);
  });
