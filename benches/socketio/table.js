// Prints the comparison table of benches/compare.sh from its JSON lines: medians over runs, per label.
//   node table.js results.jsonl
"use strict";
const fs = require("node:fs");
const lines = fs.readFileSync(process.argv[2], "utf8").split("\n").filter((l) => l.startsWith("{"));
const rows = lines.map((l) => JSON.parse(l));
const median = (xs) => {
  const s = xs.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const get = (impl, label, f) => median(rows.filter((r) => r.implementation === impl && r.label === label).map((r) => f(r.results)));
const runs = (impl, label) => rows.filter((r) => r.implementation === impl && r.label === label).length;
const fmt = (x, digits = 0) => (x === null ? "n/a" : x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }));
const table = [];
const add = (scenario, metric, f, digits = 0, sioF = f) =>
  table.push([scenario, metric, fmt(get("hubmesh", scenarioLabel(scenario), f), digits), fmt(get("socket.io", scenarioLabel(scenario), sioF), digits)]);
const labels = {
  "fanout 50k/s": "fanout50k",
  "fanout 200k/s": "fanout200k",
  "echo 1k/s": "echo1k",
  "echo max": "echomax",
  "idle": "idle",
  "rooms": "rooms",
};
const scenarioLabel = (s) => labels[s];
for (const s of ["fanout 50k/s", "fanout 200k/s"]) {
  add(s, "delivered/s", (r) => r.delivered_per_sec);
  add(s, "deliveries per server CPU-s", (r) => r.deliveries_per_server_cpu_second);
  table.push([s, "… incl. redis-server CPU", "(no Redis)", fmt(get("socket.io", labels[s], (r) => r.deliveries_per_server_and_redis_cpu_second))]);
  add(s, "server CPU-s", (r) => r.server_cpu_seconds, 2);
  add(s, "lost", (r) => r.lost);
  add(s, "duplicated", (r) => r.duplicated);
  add(s, "latency p50 ms", (r) => r.latency.p50_ms, 1);
  add(s, "latency p99 ms", (r) => r.latency.p99_ms, 1);
  add(s, "load tool CPU-s", (r) => r.bench_cpu_seconds, 2);
}
for (const s of ["echo 1k/s", "echo max"]) {
  add(s, "round trips/s", (r) => r.round_trips_per_sec);
  add(s, "round trips per server CPU-s", (r) => r.round_trips_per_server_cpu_second);
  add(s, "latency p50 ms", (r) => r.latency.p50_ms, 2);
  add(s, "latency p99 ms", (r) => r.latency.p99_ms, 2);
}
if (runs("hubmesh", "rooms") + runs("socket.io", "rooms") > 0) {
  add("rooms", "delivered/s", (r) => r.delivered_per_sec);
  add("rooms", "deliveries per server CPU-s", (r) => r.deliveries_per_server_cpu_second);
  table.push(["rooms", "… incl. redis-server CPU", "(no Redis)", fmt(get("socket.io", "rooms", (r) => r.deliveries_per_server_and_redis_cpu_second))]);
  add("rooms", "server CPU-s", (r) => r.server_cpu_seconds, 2);
  add("rooms", "lost", (r) => r.lost);
  add("rooms", "duplicated", (r) => r.duplicated);
  add("rooms", "latency p50 ms", (r) => r.latency.p50_ms, 1);
  add("rooms", "latency p99 ms", (r) => r.latency.p99_ms, 1);
  add("rooms", "load tool CPU-s", (r) => r.bench_cpu_seconds, 2);
  const h = get("hubmesh", "rooms", (r) => r.deliveries_per_server_cpu_second);
  const sio = get("socket.io", "rooms", (r) => r.deliveries_per_server_cpu_second);
  table.push(["rooms", "hubmesh / Socket.IO, per server CPU-s", h && sio ? `${fmt(h / sio, 2)}×` : "n/a", ""]);
}
add("idle", "server RSS per connection, bytes", (r) => r.server_rss_per_connection_bytes);
add("idle", "server RSS after, MiB", (r) => r.server_rss_after_bytes / 1048576, 1);
const n = Math.max(...Object.values(labels).flatMap((l) => [runs("hubmesh", l), runs("socket.io", l)]));
const header = ["Scenario", `Metric (median of up to ${n} run${n === 1 ? "" : "s"})`, "hubmesh (3 nodes)", "Socket.IO 4.8 + Redis adapter (3 nodes)"];
const all = [header, ...table];
const widths = header.map((_, i) => Math.max(...all.map((r) => String(r[i]).length)));
const line = (r) => "| " + r.map((c, i) => String(c).padEnd(widths[i])).join(" | ") + " |";
console.log(line(header));
console.log("| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |");
for (const r of table) console.log(line(r));
