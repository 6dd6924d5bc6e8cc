// musicsteer's control surface. The engine's first message ("hello") carries the parameter table's live
// rows; every control below is drawn from it, so a knob added to the table appears here at once.
// Protocol: controllers/web.py's docstring. Plain browser JavaScript: no framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { table: [], vectors: [], values: {}, status: {}, presets: [], layers: 0 };
const active = new Set();  // params the performer is touching: echoes must not pull them back meanwhile
const inputs = {};         // param -> {set(value)} for echoes
let ws = null, retry = 0;
const DISPLACED = 4001;  // controllers/web.py: closed to make room for a newer page

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);  // the token travels as the page's cookie
  ws.onopen = () => { retry = 0; chip("connection", "connected", "on"); };
  ws.onclose = (event) => {
    if (event.code === DISPLACED) {  // a newer page took this one's place: reconnecting would take it back
      chip("connection", "closed: " + event.reason, "off");
      return;
    }
    chip("connection", "disconnected", "off");
    setTimeout(connect, Math.min(5000, 500 * ++retry));
  };
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (e) { return; }
    (handlers[message.type] || (() => {}))(message);
  };
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

// A control sends at most one message per frame interval while dragged, and always its last value.
function throttled(fn, ms) {
  let last = 0, timer = null, pending = null;
  return (...args) => {
    pending = args;
    const wait = last + ms - Date.now();
    if (wait <= 0) { last = Date.now(); fn(...pending); pending = null; return; }
    if (!timer) timer = setTimeout(() => { timer = null; last = Date.now(); if (pending) fn(...pending); pending = null; }, wait);
  };
}

function chip(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.className = "chip" + (cls ? " " + cls : "");
}

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function touching(param, node) {
  node.addEventListener("pointerdown", () => active.add(param));
  node.addEventListener("blur", () => active.delete(param));
}
// A finger may leave its control before it lifts: any release ends every touch (the pad keeps its own),
// a moment later: echoes of the values sent while dragging are still on their way and must not pull
// the control back through them after the finger lifts.
const SETTLE_MS = 300;
const release = () => setTimeout(() => { for (const param of active) if (param !== "mix") active.delete(param); },
  SETTLE_MS);
window.addEventListener("pointerup", release);
window.addEventListener("pointercancel", release);

const fmt = (x, whole) => (x === null || x === undefined) ? "–" : whole ? String(Math.round(x)) : Number(x).toFixed(2);

// -- controls drawn from the table --------------------------------------------------------------
function buildControls() {
  const box = $("controls");
  box.replaceChildren();
  for (const row of state.table) {
    if (row.name === "mix" || row.name === "prompt") continue;  // the pad and the prompt box have their own cards
    const id = `param-${row.name}`;
    const label = el("label", { htmlFor: id, textContent: row.name, title: row.help });
    let control, out = el("output", { id: `${id}-out` });
    if (row.kind === "choice") {
      control = el("div", { className: "segmented", id });
      for (const choice of row.choices) {
        control.append(el("button", { type: "button", textContent: choice, id: `${id}-${choice}`,
          onclick: () => send({ type: "set", param: row.name, value: choice }) }));
      }
      inputs[row.name] = { set: (v) => { for (const b of control.children) b.classList.toggle("active", b.textContent === v); out.textContent = ""; } };
    } else if (row.span || row.name === "layer") {
      const whole = row.kind === "whole";
      const [low, high] = row.name === "layer" ? [0, state.layers - 1] : row.span;
      control = el("input", { type: "range", id, min: low, max: high, step: whole ? 1 : "any" });
      const value = () => whole ? Math.round(Number(control.value)) : Number(control.value);
      const sendValue = throttled(() => send({ type: "set", param: row.name, value: row.many ? [value()] : value() }), 30);
      control.addEventListener("input", () => { out.textContent = fmt(value(), whole); sendValue(); });
      touching(row.name, control);
      inputs[row.name] = { set: (v) => {
        const x = Array.isArray(v) ? v[0] : v;
        out.textContent = row.many && Array.isArray(v) ? v.join(",") : fmt(x, whole);
        if (!active.has(row.name) && x !== null && x !== undefined) control.value = x;
      } };
    } else {  // no span (seed): a number box, sent on change
      control = el("input", { type: "number", id, min: row.low ?? "", max: row.high ?? "", step: row.kind === "whole" ? 1 : "any" });
      control.addEventListener("change", () => send({ type: "set", param: row.name, value: Number(control.value) }));
      touching(row.name, control);
      inputs[row.name] = { set: (v) => { if (document.activeElement !== control) control.value = v; out.textContent = ""; } };
    }
    box.append(el("div", { className: "control" }, [label, control, out]));
  }
}

// -- the pad: up to four vectors at its corners, mixed bilinearly by the puck's position ------------
function corners() { return [0, 1, 2, 3].map((i) => $(`corner-${i}`).value); }

function padMix(x, y) {
  const weights = [(1 - x) * (1 - y), x * (1 - y), (1 - x) * y, x * y];  // TL, TR, BL, BR
  const mix = {};
  corners().forEach((name, i) => { if (name) mix[name] = (mix[name] || 0) + weights[i]; });
  for (const name of Object.keys(mix)) {
    mix[name] = Math.round(mix[name] * 1000) / 1000;
    if (mix[name] < 0.005) delete mix[name];
  }
  return mix;
}

// The puck's centre travels a radius inside the pad's edges, so it stays whole in every corner.
const INSET = 18;
function placePuck(x, y) {
  $("puck").style.left = `calc(${INSET}px + (100% - ${2 * INSET}px) * ${x})`;
  $("puck").style.top = `calc(${INSET}px + (100% - ${2 * INSET}px) * ${y})`;
}

function buildPad() {
  const labels = state.vectors;
  for (let i = 0; i < 4; i++) {
    const select = $(`corner-${i}`);
    select.replaceChildren(el("option", { value: "", textContent: "–" }), ...labels.map((l) => el("option", { value: l, textContent: l })));
    select.value = labels.length ? labels[i % labels.length] : "";
    if (labels.length < 4 && i >= labels.length) select.value = "";
  }
  const pad = $("pad");
  const sendMix = throttled((mix) => send({ type: "set", param: "mix", value: mix, seconds: Number($("morph").value) }), 50);
  const move = (event) => {
    const r = pad.getBoundingClientRect();
    const x = Math.min(1, Math.max(0, (event.clientX - r.left - INSET) / (r.width - 2 * INSET)));
    const y = Math.min(1, Math.max(0, (event.clientY - r.top - INSET) / (r.height - 2 * INSET)));
    placePuck(x, y);
    const mix = padMix(x, y);
    if (Object.keys(mix).length) sendMix(mix);
  };
  pad.onpointerdown = (event) => {
    active.add("mix"); pad.setPointerCapture(event.pointerId); move(event);
  };
  pad.onpointermove = (event) => { if (active.has("mix")) move(event); };
  pad.onpointerup = pad.onpointercancel = (event) => {
    if (active.has("mix")) move(event);
    setTimeout(() => active.delete("mix"), SETTLE_MS);  // late echoes of the drag must not move the puck back
  };
  $("vectors").replaceChildren(...labels.map((label) => el("button", { type: "button", textContent: label,
    id: `vector-${label}`, onclick: () => send({ type: "set", param: "mix", value: { [label]: 1 }, seconds: Number($("morph").value) }) })));
  inputs.mix = { set: showMix };
}

function showMix(mix) {
  mix = mix || {};
  $("mix-out").textContent = Object.entries(mix).map(([n, w]) => `${n} ${Number(w).toFixed(2)}`).join(" · ") || "no steering";
  for (const button of $("vectors").children) {
    const only = Object.keys(mix).length === 1 && mix[button.textContent] !== undefined;
    button.classList.toggle("active", only);
  }
  if (active.has("mix")) return;
  const names = corners(), total = Object.values(mix).reduce((a, b) => a + b, 0);
  if (!total || Object.keys(mix).some((n) => !names.includes(n))) return;  // not a mix of these corners
  const w = (i) => (names[i] && names.indexOf(names[i]) === i ? (mix[names[i]] || 0) : 0) / total;
  placePuck(w(1) + w(3), w(2) + w(3));
}

// -- presets, prompt, record ----------------------------------------------------------------------
function showPresets(names) {
  state.presets = names;
  const box = $("presets");
  if (names === null) { box.replaceChildren(el("span", { className: "small", textContent: "presets are off: start with --presets FILE" })); return; }
  box.replaceChildren(...names.map((name) => el("button", { type: "button", textContent: name,
    onclick: () => send({ type: "preset", name }) })));
  for (const button of box.children) button.dataset.name = button.textContent;
}

function wire() {
  $("morph").addEventListener("input", () => { $("morph-out").textContent = `${Number($("morph").value).toFixed(1)} s`; });
  $("prompt-send").onclick = () => send({ type: "set", param: "prompt", value: $("prompt").value });
  $("preset-save").onclick = () => {
    const name = $("preset-name").value.trim();
    if (name) send({ type: "save", name, seconds: Number($("morph").value) });
  };
  $("record").onclick = () => send({ type: "record", action: state.status.recording ? "stop" : "start" });
  for (let i = 0; i < 4; i++) $(`corner-${i}`).addEventListener("change", () => showMix(state.values.mix));
}

function note(level, text) {
  const list = $("messages");
  list.prepend(el("li", { className: level, textContent: `${new Date().toLocaleTimeString()} ${text}` }));
  while (list.children.length > 30) list.lastChild.remove();
}

// -- what the engine says -------------------------------------------------------------------------
function applyValues(values) {
  Object.assign(state.values, values);
  for (const [param, value] of Object.entries(values)) {
    if (inputs[param]) inputs[param].set(value);
    if (param === "prompt" && document.activeElement !== $("prompt")) $("prompt").value = value;
  }
}

function showStatus(s) {
  state.status = s;
  chip("status-rtf", `rtf ${fmt(s.rtf)}`, s.rtf && s.rtf < 1 ? "warn" : "");
  chip("status-buffer", `buffer ${fmt(s.buffer)} s`);
  chip("status-underruns", `underruns ${s.underruns}`, s.underruns ? "warn" : "");
  chip("status-heard", s.heard_median_ms ? `knob→heard ${Math.round(s.heard_median_ms)}/${Math.round(s.heard_p95_ms)} ms` : "knob→heard –");
  const recording = Boolean(s.recording);
  $("record").classList.toggle("on", recording);
  $("record").textContent = recording ? "■ Stop" : "● Record";
  const t = s.recording_seconds || 0;
  $("record-time").textContent = recording ? `${Math.floor(t / 60)}:${String(Math.floor(t % 60)).padStart(2, "0")}` : "–";
  $("record-path").textContent = s.recording_error || s.recording || "";
  $("refusals").textContent = `refused ${s.refused}, clamped ${s.clamped}`;
  if (s.meter && Object.keys(s.meter).length) showMeter(s.meter);
}

function showMeter(scores) {
  const top = Object.entries(scores).sort((a, b) => b[1] - a[1]);
  $("meter").replaceChildren(...top.map(([label, score]) => el("div", { className: "bar" }, [
    el("span", { textContent: label }),
    el("div", { style: `width: ${Math.max(2, Math.min(100, (score + 1) * 50))}%` }),
    el("span", { textContent: score.toFixed(2) })])));
}

function drawLevel(m) {
  const canvas = $("spectrum"), g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, n = m.bands.length, floor = -80;
  g.clearRect(0, 0, w, h);
  const x = (db) => Math.max(0, Math.min(1, (db - floor) / -floor));
  const bw = (w - 24) / n;
  g.fillStyle = "#4fc3f7";
  m.bands.forEach((db, i) => { const bh = x(db) * h; g.fillRect(i * bw + 1, h - bh, bw - 2, bh); });
  g.fillStyle = m.peak_db > -1 ? "#ef5350" : "#66bb6a";  // the level bar at the right: red near clipping
  g.fillRect(w - 18, h - x(m.rms_db) * h, 14, x(m.rms_db) * h);
  $("level").textContent = `RMS ${m.rms_db.toFixed(1)} dBFS · peak ${m.peak_db.toFixed(1)} dBFS`;
}

const handlers = {
  hello(m) {
    Object.assign(state, { table: m.table, vectors: m.vectors, layers: m.layers, values: {} });
    buildControls();
    buildPad();
    showPresets(m.presets);
    applyValues(m.values);
    showStatus(m.status);
  },
  values(m) { applyValues(m.values); },
  status(m) { showStatus(m.status); },
  level(m) { drawLevel(m); },
  meter(m) { showMeter(m.scores); },
  notice(m) { note(m.level, m.text); },
  presets(m) { showPresets(m.names); },
  error(m) { note("error", m.text); },
  clamped(m) { note("clamped", `${m.param} clamped to ${JSON.stringify(m.applied)} (asked ${JSON.stringify(m.asked)})`); },
  saved(m) { note("info", `preset ${m.name} saved`); },
  recording(m) { note("info", m.action === "start" ? `recording ${m.path}` : `stopped ${m.path || "(nothing was recording)"}`); },
};

wire();
connect();
