// The live status page of txturn's sessions API.  Served with a
// Content-Security-Policy that allows no inline script: everything the
// page does is here.  Every value from the server is put in the page as
// text (textContent), never as markup, so a username such as
// "<script>" stays a username.
"use strict";

const API = "api/v1/";
const EVERY = 2000;

function token() {
  // A token in the fragment (#token=...) is never sent to the server in
  // the URL; it is moved to this tab's storage and wiped from the bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("txturn-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("txturn-token");
}

async function get(path) {
  const answer = await fetch(API + path, {
    headers: {Authorization: "Bearer " + token()},
    cache: "no-store",
    credentials: "omit",
  });
  if (answer.status === 401) {
    sessionStorage.removeItem("txturn-token");
    throw new Error("token refused");
  }
  if (!answer.ok) {
    throw new Error("HTTP " + answer.status);
  }
  return answer.json();
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = String(value);
  row.appendChild(td);
}

function rate(pps, bps) {
  return pps.toFixed(0) + " pkt/s, " + (bps * 8 / 1e6).toFixed(2) + " Mbit/s";
}

function draw(history) {
  const canvas = document.getElementById("chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (history.length < 2) {
    return;
  }
  const top = Math.max(1, ...history.map((h) => Math.max(h.to_peers_pps, h.to_client_pps)));
  for (const [key, colour] of [["to_peers_pps", "#2563eb"], ["to_client_pps", "#c2410c"]]) {
    g.strokeStyle = colour;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((h, i) => {
      const x = (i / (history.length - 1)) * (canvas.width - 4) + 2;
      const y = canvas.height - 4 - (h[key] / top) * (canvas.height - 8);
      if (i === 0) {
        g.moveTo(x, y);
      } else {
        g.lineTo(x, y);
      }
    });
    g.stroke();
  }
  g.fillStyle = "#57606a";
  g.fillText(top.toFixed(0) + " pkt/s", 6, 12);
}

function show(status, sessions) {
  const state = document.getElementById("state");
  const condition = status.draining ? "draining" : status.degraded ? "degraded" : "ok";
  state.textContent = condition === "ok" ? "serving" : condition;
  state.className = "badge " + condition;
  text("allocations", status.allocations);
  text("users", status.users);
  const last = status.history[status.history.length - 1] ||
    {to_peers_pps: 0, to_peers_bps: 0, to_client_pps: 0, to_client_bps: 0};
  text("up", rate(last.to_peers_pps, last.to_peers_bps));
  text("down", rate(last.to_client_pps, last.to_client_bps));
  draw(status.history);
  const server = document.getElementById("server");
  server.replaceChildren();
  const facts = [
    ["version", status.version],
    ["realm", status.realm],
    ["up for", Math.round(status.uptime) + " s"],
    ["state", status.draining ? "draining" : "taking new allocations"],
    ["workers", status.workers],
    ["fleet", status.degraded || status.fleet],
  ];
  for (const [name, value] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    server.append(dt, dd);
  }
  const nodes = document.querySelector("#nodes tbody");
  nodes.replaceChildren();
  document.getElementById("fleet").hidden = !status.nodes;
  for (const n of status.nodes || []) {
    const row = document.createElement("tr");
    for (const value of [n.name, n.node, n.allocations, n.users, n.workers,
      n.draining ? "draining" : n.degraded ? "degraded" : "serving"]) {
      cell(row, value);
    }
    nodes.appendChild(row);
  }
  const counters = document.querySelector("#counters tbody");
  counters.replaceChildren();
  for (const [name, value] of Object.entries(status.counters)) {
    const row = document.createElement("tr");
    cell(row, name);
    cell(row, value);
    counters.appendChild(row);
  }
  if (!counters.children.length) {
    const row = document.createElement("tr");
    cell(row, "none yet");
    counters.appendChild(row);
  }
  const rows = document.querySelector("#sessions tbody");
  rows.replaceChildren();
  for (const s of sessions.sessions) {
    const row = document.createElement("tr");
    const peers = [...new Set([...s.permissions, ...Object.values(s.channels)])];
    for (const value of [s.ref || s.id, s.user, s.client, s.transport, s.relays.join(" "),
      Math.round(s.age) + " s", peers.join(" ") || "-",
      s.to_peers.packets + " pkt", s.to_client.packets + " pkt"]) {
      cell(row, value);
    }
    rows.appendChild(row);
  }
  text("shown", "(" + sessions.sessions.length + " of " + sessions.total + ")");
}

async function refresh() {
  try {
    const [status, sessions] = await Promise.all([get("status"), get("sessions?limit=200")]);
    document.getElementById("login").hidden = true;
    document.getElementById("status").hidden = false;
    show(status, sessions);
  } catch (error) {
    const state = document.getElementById("state");
    state.textContent = String(error.message);
    state.className = "badge error";
    if (!token()) {
      document.getElementById("login").hidden = false;
      document.getElementById("status").hidden = true;
    }
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("txturn-token", document.getElementById("token").value);
  refresh();
});
if (!token()) {
  document.getElementById("login").hidden = false;
}
refresh();
setInterval(refresh, EVERY);
