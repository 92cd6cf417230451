// ferry's status page: polls the admin API once a second and draws the
// pipelines, a plot of records/s (plain SVG) and one pipeline's partitions.
"use strict";

const COLORS = ["#2b6cb0", "#d9480f", "#2f9e44", "#ae3ec9", "#e8590c", "#1098ad", "#5c940d", "#c2255c"];
const state = { selected: null, token: sessionStorage.getItem("ferry-token"), colors: {} };

async function api(method, path) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const res = await fetch(path, { method, headers });
  if (res.status === 401) {
    const token = prompt("This ferry's admin API wants its token:");
    if (token) {
      state.token = token.trim();
      sessionStorage.setItem("ferry-token", state.token);
      return api(method, path);
    }
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || res.status + " " + res.statusText);
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function number(n, digits = 0) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function lagText(lag) {
  if (!lag) return "–";
  return (lag.estimate ? "~" : "") + number(lag.amount) + " " + lag.unit;
}

function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 60) return Math.round(secs) + " s";
  if (secs < 3600) return Math.round(secs / 60) + " min";
  return (secs / 3600).toFixed(1) + " h";
}

function colorOf(name) {
  if (!state.colors[name]) {
    state.colors[name] = COLORS[Object.keys(state.colors).length % COLORS.length];
  }
  return state.colors[name];
}

// What can be done to a pipeline in its state.
function actions(p) {
  const s = p.state.name;
  const steer = (what) => async () => {
    try { await api("POST", `/pipelines/${encodeURIComponent(p.name)}/${what}`); }
    catch (e) { showProblem(`${what} ${p.name}: ${e.message}`); }
    refresh();
  };
  const out = [];
  if (s === "running" || s === "retrying" || s === "starting") out.push(el("button", { onclick: steer("pause"), "data-action": "pause" }, "pause"));
  if (s === "paused") out.push(el("button", { onclick: steer("resume"), "data-action": "resume" }, "resume"));
  out.push(el("button", { onclick: steer("restart"), "data-action": "restart" }, "restart"));
  return out;
}

function row(p) {
  const error = p.state.error || p.pending_config_error || (p.last_error && p.last_error.error) || "";
  const name = el("a", { href: "#" + encodeURIComponent(p.name), onclick: (e) => { e.preventDefault(); select(p.name); } },
    el("span", { class: "swatch", style: "background:" + colorOf(p.name) }), p.name);
  return el("tr", { "data-pipeline": p.name },
    el("td", {}, name),
    el("td", {}, el("span", { class: "state " + p.state.name }, p.state.name)),
    el("td", { class: "n" }, number(p.rate.records_per_second, 1)),
    el("td", { class: "n" }, number(p.records_in)),
    el("td", { class: "n" }, number(p.records_out)),
    el("td", { class: "n" }, lagText(p.lag)),
    el("td", { class: "error" }, error.split("\n")[0]),
    el("td", {}, ...actions(p)));
}

function drawPipelines(list) {
  const body = document.querySelector("#pipelines tbody");
  body.replaceChildren(...list.map(row));
  if (list.length === 0) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no pipelines: add a pipeline file to the folder ferry watches")));
  const failed = list.filter((p) => p.state.name === "failed").length;
  const running = list.filter((p) => p.state.name === "running").length;
  document.getElementById("summary").textContent =
    `${list.length} pipelines: ${running} running` + (failed ? `, ${failed} failed` : "");
}

// One polyline per pipeline: records/s over the last 10 minutes (or the
// minutes there are, when ferry started less than 10 minutes ago: a few
// seconds squeezed into the right edge of 10 minutes read as nothing).
function drawPlot(series) {
  const W = 1000, H = 220, L = 56, B = 24, T = 8, R = 24;
  let max = 1, oldest = 0;
  for (const s of series) for (const p of s.points) {
    max = Math.max(max, p.records_per_second);
    oldest = Math.max(oldest, p.seconds_ago);
  }
  const minutes = Math.min(10, Math.max(1, Math.ceil(oldest / 60)));
  const span = minutes * 60;
  document.getElementById("plot-title").textContent = `Records per second, last ${minutes === 1 ? "minute" : minutes + " minutes"}`;
  max = niceMax(max);
  const x = (ago) => L + (W - L - R) * (1 - ago / span);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    add("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e5e8ec" });
    add("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#6a7380" }, number(v));
  }
  const ticks = minutes === 1 ? [60, 45, 30, 15, 0] : Array.from({ length: minutes + 1 }, (_, i) => (minutes - i) * 60);
  for (const t of ticks) {
    const label = t === 0 ? "now" : t < 60 || t % 60 ? `-${t} s` : `-${t / 60} min`;
    add("text", { x: x(t), y: H - 6, "text-anchor": t === 0 ? "end" : "middle", "font-size": 11, fill: "#6a7380" }, label);
  }
  for (const s of series) {
    const pts = s.points.filter((p) => p.seconds_ago <= span).map((p) => `${x(p.seconds_ago).toFixed(1)},${y(p.records_per_second).toFixed(1)}`);
    if (pts.length) add("polyline", { points: pts.join(" "), fill: "none", stroke: colorOf(s.pipeline), "stroke-width": 2, "data-pipeline": s.pipeline, "data-points": pts.length });
  }
  document.getElementById("plot").replaceChildren(svg);
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawDetail(p) {
  const section = document.getElementById("detail");
  section.hidden = false;
  document.getElementById("detail-title").textContent = p.name;
  const facts = [
    ["state", p.state.name + (p.state.next_attempt ? ` (next attempt ${p.state.next_attempt})` : "")],
    ["file", p.file], ["source", p.source], ["sink", p.sink], ["delivery", p.delivery],
    ["records/s (10 s, 1 min)", `${number(p.rates["10s"].records_per_second, 1)}, ${number(p.rates["1m"].records_per_second, 1)}`],
    ["dead-lettered, retries, restarts", `${number(p.dead_lettered)}, ${number(p.retries)}, ${number(p.restarts)}`],
    ["last commit", p.last_commit || "none yet"],
    ["last error", p.last_error ? `${p.last_error.at}: ${p.last_error.error}` : "none"],
  ];
  if (p.pending_config_error) facts.push(["pending config error", p.pending_config_error]);
  if (p.lag_error) facts.push(["lag", p.lag_error]);
  document.getElementById("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const offset = (o) => (o === null || o === undefined ? "–" : typeof o === "object" ? JSON.stringify(o) : String(o));
  document.querySelector("#partitions tbody").replaceChildren(...p.partitions.map((q) => el("tr", {},
    el("td", {}, q.label || q.partition), el("td", {}, offset(q.committed)), el("td", {}, offset(q.read)),
    el("td", { class: "n" }, lagText(q.lag)), el("td", { class: "n" }, duration(q.eta_seconds)))));
}

function select(name) {
  state.selected = name;
  history.replaceState(null, "", "#" + encodeURIComponent(name));
  refresh();
}

function showProblem(text) {
  const p = document.getElementById("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

async function refresh() {
  try {
    const list = await api("GET", "/pipelines");
    drawPipelines(list);
    const series = await Promise.all(list.map((p) => api("GET", `/pipelines/${encodeURIComponent(p.name)}/history`)));
    drawPlot(series);
    if (state.selected && list.some((p) => p.name === state.selected)) {
      drawDetail(await api("GET", `/pipelines/${encodeURIComponent(state.selected)}`));
    }
    showProblem(null);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    showProblem("ferry's API does not answer: " + e.message);
  }
}

state.selected = decodeURIComponent(location.hash.slice(1)) || null;
refresh();
setInterval(refresh, 1000);
