// The live page of a hubmesh node (GET /_hubmesh/): polls the node's status report (/_hubmesh/status) and shows
// every node it knows (its own view: live members with the load they publish, dead members), connections and
// deliveries per second per node as small SVG charts, and membership events derived from the changes between
// polls. No dependencies, no build step. `?interval=MS` sets the poll interval (default 1000 ms).
"use strict";

const STATUS_URL = "/_hubmesh/status";
const POINTS = 60;
const MAX_EVENTS = 100;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

const interval = Math.max(100, Number(new URLSearchParams(location.search).get("interval")) || 1000);
// By node name: { generation, state, connections, deliveries, messages, rate, messageRate, link, uptimeMs,
// color, series: { connections: [], rate: [] }, last: { at, deliveries, messages } }
const nodes = new Map();
let polls = 0;
let firstReport = true;

function text(value) {
    return value === null || value === undefined ? "–" : String(value);
}

function uptime(ms) {
    if (ms === null || ms === undefined) return "–";
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function event(message) {
    const list = document.getElementById("events");
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.append(time, document.createTextNode(message));
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function push(series, value) {
    series.push(value);
    if (series.length > POINTS) series.shift();
}

function nodeFor(name) {
    let node = nodes.get(name);
    if (!node) {
        node = {
            generation: null, state: null, connections: null, deliveries: null, messages: null, rate: null,
            messageRate: null, link: null, uptimeMs: null, color: COLORS[nodes.size % COLORS.length],
            series: { connections: [], rate: [] }, last: null,
        };
        nodes.set(name, node);
    }
    return node;
}

// Folds one status report into `nodes`, noting membership events.
function apply(report, at) {
    const seen = new Set();
    for (const member of report.members || []) {
        seen.add(member.name);
        const known = nodes.has(member.name);
        const node = nodeFor(member.name);
        const state = member.status || "serving";
        if (!known) {
            if (!firstReport) event(`${member.name} joined (generation ${text(member.generation)})`);
        } else if (node.generation !== null && member.generation !== null && member.generation !== node.generation) {
            event(`${member.name} restarted (generation ${node.generation} → ${member.generation})`);
            node.last = null;
        } else if (node.state === "dead") {
            event(`${member.name} is live again`);
        } else if (node.state !== state) {
            event(`${member.name}: ${node.state} → ${state}`);
        }
        node.generation = member.generation;
        node.state = state;
        node.uptimeMs = member.uptime_ms;
        node.link = member.local ? "self" : member.link_up === true ? "up" : member.link_up === false ? "down" : null;
        node.connections = member.connections ?? null;
        if (member.deliveries !== null && member.deliveries !== undefined) {
            if (node.last && at > node.last.at) {
                const seconds = (at - node.last.at) / 1000;
                node.rate = Math.max(0, (member.deliveries - node.last.deliveries) / seconds);
                node.messageRate = Math.max(0, ((member.messages_received ?? 0) - node.last.messages) / seconds);
            }
            node.last = { at, deliveries: member.deliveries, messages: member.messages_received ?? 0 };
            node.deliveries = member.deliveries;
        }
    }
    const dead = new Map((report.dead || []).map((ref) => [ref.name, ref.generation]));
    for (const [name, node] of nodes) {
        if (seen.has(name)) continue;
        // A dead incarnation of a node that is live again under a newer generation is not news.
        if (node.state !== "dead") {
            const why = dead.has(name) ? "declared dead" : "left the view";
            event(`${name} ${why}`);
            node.state = "dead";
            node.link = null;
            node.connections = 0;
            node.rate = 0;
            node.messageRate = 0;
        }
    }
    for (const [name, generation] of dead) {
        if (!nodes.has(name)) {
            const node = nodeFor(name);
            node.state = "dead";
            node.generation = generation;
            if (!firstReport) event(`${name} declared dead`);
        }
    }
    for (const node of nodes.values()) {
        push(node.series.connections, node.connections ?? 0);
        push(node.series.rate, node.rate ?? 0);
    }
    if (firstReport) event(`watching ${[...nodes.keys()].sort().join(", ")}`);
    firstReport = false;
}

function renderTable() {
    const body = document.querySelector("#nodes tbody");
    const rows = [];
    for (const name of [...nodes.keys()].sort()) {
        const node = nodes.get(name);
        const row = document.createElement("tr");
        row.dataset.node = name;
        row.dataset.state = node.state;
        const cells = [
            [name, "name"],
            [node.state, `state state-${node.state}`],
            [text(node.generation), "generation"],
            [node.state === "dead" ? "–" : uptime(node.uptimeMs), "uptime"],
            [text(node.connections), "connections number"],
            [node.rate === null ? "–" : node.rate.toFixed(1), "rate number"],
            [node.messageRate === null ? "–" : node.messageRate.toFixed(1), "messages number"],
            [text(node.link), "link"],
        ];
        for (const [value, className] of cells) {
            const cell = document.createElement("td");
            cell.className = className;
            if (className === "name") {
                const swatch = document.createElement("span");
                swatch.className = "swatch";
                swatch.style.background = node.color;
                cell.append(swatch);
            }
            cell.append(document.createTextNode(value));
            row.append(cell);
        }
        if (node.deliveries !== null) row.dataset.deliveries = String(node.deliveries);
        rows.push(row);
    }
    body.replaceChildren(...rows);
}

const SVG = "http://www.w3.org/2000/svg";

function renderChart(id, pick) {
    const svg = document.getElementById(id);
    const width = 400;
    const height = 140;
    const top = 14;
    let max = 1;
    for (const node of nodes.values()) for (const value of pick(node)) max = Math.max(max, value);
    const parts = [];
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "2");
    label.setAttribute("y", "10");
    label.textContent = `max ${Number.isInteger(max) ? max : max.toFixed(1)}`;
    parts.push(label);
    for (const [name, node] of nodes) {
        const values = pick(node);
        if (values.length === 0) continue;
        const step = width / (POINTS - 1);
        const offset = (POINTS - values.length) * step;
        const points = values
            .map((value, index) => `${(offset + index * step).toFixed(1)},${(height - (value / max) * (height - top)).toFixed(1)}`)
            .join(" ");
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", points);
        line.setAttribute("stroke", node.color);
        line.dataset.node = name;
        parts.push(line);
    }
    svg.replaceChildren(...parts);
}

function renderLegend() {
    const legend = document.getElementById("legend");
    legend.replaceChildren(
        ...[...nodes.keys()].sort().map((name) => {
            const item = document.createElement("div");
            const swatch = document.createElement("span");
            swatch.className = "swatch";
            swatch.style.background = nodes.get(name).color;
            item.append(swatch, document.createTextNode(name));
            return item;
        }),
    );
}

function render(report) {
    document.getElementById("node").textContent = `as ${report.node} sees it`;
    const live = [...nodes.values()].filter((node) => node.state !== "dead").length;
    const summary = document.getElementById("summary");
    summary.textContent =
        `${live} live, ${nodes.size - live} dead · ${report.ready ? "ready" : "not ready"} · ` +
        `updated ${new Date().toLocaleTimeString()} (poll ${polls})`;
    summary.dataset.polls = String(polls);
    renderTable();
    renderChart("chart-connections", (node) => node.series.connections);
    renderChart("chart-deliveries", (node) => node.series.rate);
    renderLegend();
}

async function poll() {
    try {
        const response = await fetch(STATUS_URL, { cache: "no-store" });
        if (!response.ok) throw new Error(`status ${response.status}`);
        const report = await response.json();
        polls += 1;
        apply(report, performance.now());
        render(report);
    } catch (error) {
        document.getElementById("summary").textContent = `Could not read ${STATUS_URL}: ${error.message}`;
    } finally {
        setTimeout(poll, interval);
    }
}

poll();
