// dellm dashboard: one event stream from the node (fetch + ReadableStream, so an API key can travel in a
// header), rendered with DOM calls only. Every text from peers or models goes through textContent, never
// innerHTML. No timers: the page redraws when the node pushes something.
"use strict";

const KEY_ITEM = "dellm-api-key";
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#3563e9", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#f08c00", "#c2255c", "#5c940d", "#6741d9", "#0b7285"];

const view = {
  node: null,
  peers: [],
  names: {},
  fitness: {}, // node id -> [[t ms, fitness, reward or null]]
  questions: new Map(), // id -> question, insertion order = oldest first
  open: new Set(), // ids of expanded questions
  colors: {},
  liveId: null, // the ask box's question id
  now: Date.now(),
};

// ---- DOM helpers (text only) ----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

const $ = (id) => document.getElementById(id);
const fmt = {
  ms: (v) => (v === null || v === undefined ? "–" : v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms"),
  rtt: (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms"),
  pct: (v) => (v === null || v === undefined ? "–" : Math.round(v * 100) + " %"),
  num: (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d)),
  signed: (v) => (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(2),
  clock: (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }),
  short: (id) => (id || "").slice(0, 12),
};

function nameOf(id) {
  return view.names[id] || fmt.short(id);
}

function colorOf(id) {
  if (!(id in view.colors)) view.colors[id] = PALETTE[Object.keys(view.colors).length % PALETTE.length];
  return view.colors[id];
}

// ---- the key ----

function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

const KEY_HINT = $("key-msg").textContent;

function askForKey(refused) {
  // The form's label already says the node needs its key: the line under it says where the key is kept,
  // or that the one given was refused (one prompt on screen, not the same sentence twice).
  const form = $("keyform");
  form.hidden = false;
  $("main").hidden = true;
  const msg = $("key-msg");
  msg.textContent = refused ? "That key was refused; try again." : KEY_HINT;
  msg.className = refused ? "hint error" : "hint";
  setConn("locked", "key needed");
  $("key").focus();
}

$("keyform").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("key").value = "";
  $("keyform").hidden = true;
  $("main").hidden = false;
  connect();
});

// ---- server-sent events over fetch ----

async function* sseEvents(response) {
  // Yields {event, data} per SSE message of a fetch response body.
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

function setConn(state, text) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
}

let retryMs = 1000;
let streamAbort = null;

async function connect() {
  if (streamAbort) streamAbort.abort();
  const ctrl = new AbortController();
  streamAbort = ctrl;
  try {
    const response = await fetch("/dashboard/api/events", { headers: authHeaders(), signal: ctrl.signal, cache: "no-store" });
    if (response.status === 401) {
      askForKey(Boolean(apiKey()));
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    setConn("live", "live");
    retryMs = 1000;
    for await (const message of sseEvents(response)) {
      handle(message.event, JSON.parse(message.data));
    }
  } catch (err) {
    if (ctrl.signal.aborted) return;
  }
  if (ctrl.signal.aborted) return;
  // The node went away (restart, network): reconnect with backoff; each try is one request.
  setConn("reconnecting", "reconnecting");
  setTimeout(connect, retryMs);
  retryMs = Math.min(retryMs * 2, 10000);
}

function handle(kind, data) {
  if (kind === "state") {
    view.node = data.node;
    view.now = data.node.now;
    view.peers = data.peers;
    view.names = Object.assign({}, view.names, data.names);
    view.fitness = data.fitness;
    view.questions = new Map();
    for (const q of data.questions.slice().reverse()) view.questions.set(q.id, q);
    renderQueue(data.queue);
    renderModels(data.models);
    renderNode();
    renderPeers();
    renderQuestions();
  } else if (kind === "peers") {
    view.peers = data.peers;
    Object.assign(view.names, data.names);
    for (const p of data.peers) {
      if (!view.fitness[p.node_id]) view.fitness[p.node_id] = [[Date.now(), p.fitness, null]];
    }
    renderPeers();
  } else if (kind === "queue") {
    renderQueue(data);
  } else if (kind === "models") {
    renderModels(data.models);
  } else if (kind === "fitness") {
    view.now = data.now;
    for (const [id, t, f, r] of data.points) (view.fitness[id] = view.fitness[id] || []).push([t, f, r]);
  } else if (kind === "question") {
    view.questions.delete(data.id);
    view.questions.set(data.id, data);
    while (view.questions.size > 20) view.questions.delete(view.questions.keys().next().value);
    renderQuestions();
    if (data.id === view.liveId) renderLive(data);
  }
  scheduleChart();
}

// ---- rendering ----

function renderQueue(q) {
  if (!q) return;
  const ks = Object.entries(q.k_used || {}).map(([k, n]) => "k=" + k + ": " + n).join(", ");
  const wait = q.wait_p50_s == null ? "" : " · wait p50 " + q.wait_p50_s + " s, max " + q.wait_max_s + " s";
  $("queue").textContent = " · queue " + q.queued_questions + " questions (" + q.queued_chunks + " chunks) · " +
    q.free_slots + " free slots" + wait + (ks ? " · " + ks : "");
}

function renderModels(models) {
  const rows = (models || []).map((m) => {
    const bar = el("span");
    bar.style.setProperty("width", Math.round(m.reliability * 100) + "%");
    return el("tr", { "data-model": m.model, "data-kind": m.kind },
      el("td", { text: m.kind }),
      el("td", { class: "model", text: m.model }),
      el("td", { class: "num", text: m.agreed + " / " + m.rewards }),
      el("td", { class: "fitness" },
        el("div", { class: "fit" }, el("div", { class: "bar" }, bar), el("span", { text: fmt.num(m.reliability, 3) }))));
  });
  document.querySelector("#models tbody").replaceChildren(...rows);
  $("models-wrap").hidden = rows.length === 0;
}

function renderNode() {
  const n = view.node;
  const label = (n.name || "this node") + " · " + fmt.short(n.node_id) + (n.model ? " · " + n.model : " · no model");
  $("node").textContent = label;
  $("node").title = n.node_id;
}

function renderPeers() {
  const body = document.querySelector("#peers tbody");
  const rows = view.peers.map((p) => {
    const name = el("td", { class: "name" },
      el("span", { class: "swatch" }),
      el("span", { class: "peer-name", text: p.name || fmt.short(p.node_id) }),
      p.role === "self" ? el("span", { class: "tag", text: "this node" }) : null,
      p.role === "coordinator" ? el("span", { class: "tag", text: "coordinator" }) : null);
    name.querySelector(".swatch").style.setProperty("background", colorOf(p.node_id));
    const bar = el("span");
    bar.style.setProperty("width", Math.round(p.fitness * 100) + "%");
    const silent = (p.state === "suspect" || p.state === "dead") && p.silent_s !== null && p.silent_s !== undefined;
    const state = p.state + (silent ? " " + p.silent_s + " s" : "");
    return el("tr", { "data-node-id": p.node_id, "data-state": p.state },
      name,
      el("td", { class: "id", title: p.node_id, text: fmt.short(p.node_id) }),
      el("td", { class: "model", text: p.model || "–" }),
      el("td", {}, el("span", { class: "state state-" + p.state, text: state })),
      el("td", { class: "num rtt", text: p.role === "self" ? "self" : fmt.rtt(p.rtt_ms) }),
      el("td", { class: "fitness", title: p.rewards + " rewards, " + p.agreed + " agreeing" },
        el("div", { class: "fit" }, el("div", { class: "bar" }, bar), el("span", { text: fmt.num(p.fitness, 3) }))),
      el("td", { class: "num load", text: p.capacity ? p.in_flight + " / " + p.capacity : "–" }));
  });
  body.replaceChildren(...rows);
  const alive = view.peers.filter((p) => p.state === "alive").length;
  $("peer-count").textContent = alive + " alive of " + view.peers.length;
}

let chartPending = false;
function scheduleChart() {
  if (chartPending) return;
  chartPending = true;
  requestAnimationFrame(() => {
    chartPending = false;
    renderChart();
  });
}

function renderChart() {
  const box = $("chart");
  const W = Math.max(box.clientWidth || 600, 280);
  const H = 240;
  const pad = { l: 40, r: 12, t: 10, b: 24 };
  const ids = Object.keys(view.fitness).filter((id) => view.fitness[id].length);
  const end = Math.max(view.now, Date.now());
  let t0 = view.node ? view.node.started : end;
  let lo = 1, hi = 0;
  for (const id of ids) {
    for (const [t, f] of view.fitness[id]) {
      t0 = Math.min(t0, t);
      lo = Math.min(lo, f);
      hi = Math.max(hi, f);
    }
  }
  if (lo > hi) { lo = 0.4; hi = 0.6; }
  // At least 0.2 of fitness tall, inside [0, 1]: small moves are visible, not exaggerated.
  const mid = (lo + hi) / 2, half = Math.max((hi - lo) / 2 + 0.03, 0.1);
  lo = Math.max(0, mid - half); hi = Math.min(1, mid + half);
  const span = Math.max(end - t0, 1000);
  const x = (t) => pad.l + ((t - t0) / span) * (W - pad.l - pad.r);
  const y = (f) => pad.t + (1 - (f - lo) / (hi - lo)) * (H - pad.t - pad.b);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "fitness of each peer over time" });
  for (let i = 0; i <= 4; i++) {
    const f = lo + ((hi - lo) * i) / 4;
    root.append(svg("line", { class: "grid", x1: pad.l, x2: W - pad.r, y1: y(f), y2: y(f) }));
    const label = svg("text", { class: "axis", x: pad.l - 6, y: y(f) + 4, "text-anchor": "end" });
    label.textContent = f.toFixed(2);
    root.append(label);
  }
  // Time labels only under lines, and the start one only where it cannot run into the end one
  // (an empty chart spans a second: both clocks fell on the same spot).
  const times = !ids.length ? [] : x(end) - x(t0) >= 140 ? [[t0, "start"], [end, "end"]] : [[end, "end"]];
  for (const [t, anchor] of times) {
    const label = svg("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": anchor });
    label.textContent = fmt.clock(t);
    root.append(label);
  }
  const rewarded = ids.some((id) => view.fitness[id].some((p) => p[2] !== null && p[2] !== undefined));
  if (!rewarded) {
    const empty = svg("text", { class: "axis empty", x: (pad.l + W - pad.r) / 2, y: H / 2, "text-anchor": "middle" });
    empty.textContent = "no rewards yet: a line per peer after the first question";
    root.append(empty);
  }
  const legend = [];
  for (const id of ids) {
    const points = view.fitness[id];
    const color = colorOf(id);
    // Fitness holds between rewards: a step line, carried on to now.
    let d = `M${x(points[0][0]).toFixed(1)},${y(points[0][1]).toFixed(1)}`;
    for (let i = 1; i < points.length; i++) d += `H${x(points[i][0]).toFixed(1)}V${y(points[i][1]).toFixed(1)}`;
    d += `H${x(end).toFixed(1)}`;
    const line = svg("path", { class: "line", d, stroke: color });
    root.append(line);
    for (const [t, f, r] of points) {
      if (r === null || r === undefined) continue;
      const mark = svg("circle", { class: "mark " + (r >= 0 ? "pos" : "neg"), cx: x(t), cy: y(f), r: 3.5 });
      const title = svg("title");
      title.textContent = `${nameOf(id)}: reward ${fmt.signed(r)} → fitness ${f.toFixed(3)} at ${fmt.clock(t)}`;
      mark.append(title);
      root.append(mark);
    }
    const last = points[points.length - 1][1];
    const sw = el("span", { class: "swatch" });
    sw.style.setProperty("background", color);
    legend.push(el("li", { "data-node-id": id }, sw, el("span", { text: nameOf(id) + " " + last.toFixed(3) })));
  }
  box.replaceChildren(root);
  $("legend").replaceChildren(...legend);
}

function badge(status) {
  return el("span", { class: "badge badge-" + status, text: status });
}

function chunkView(c) {
  const asked = c.asked.map((a) => a.peer + (a.samples > 1 ? " ×" + a.samples : "") + (a.greedy ? " (greedy)" : ""));
  const rows = c.candidates.map((cand) =>
    el("tr", { class: cand.winner ? "winner" : null },
      el("td", { text: cand.peer + (cand.greedy ? " (greedy)" : cand.sample ? " #" + (cand.sample + 1) : "") }),
      cand.answer
        ? el("td", { class: "ans", title: cand.text, text: (cand.expression ? cand.expression + " = " : "") + cand.answer })
        : el("td", { class: "ans muted", title: "commits to no answer", text: snippet(cand.text) || "(empty reply)" }),
      el("td", { class: "num", text: fmt.num(cand.confidence) }),
      el("td", { class: "num lat", text: fmt.ms(cand.latency_ms) })));
  const v = c.vote;
  const parts = [
    el("h3", {}, el("span", { class: "op", text: c.operation }), c.id + ": " + c.text),
    el("p", { class: "asked" }, el("span", { class: "muted", text: "asked: " }), asked.join(", ") || "–"),
  ];
  if (rows.length) {
    parts.push(el("div", { class: "table-wrap" }, el("table", { class: "cands" },
      el("thead", {}, el("tr", {}, el("th", { text: "peer" }), el("th", { text: "answer" }),
        el("th", { class: "num", text: "conf." }), el("th", { class: "num lat", text: "latency" }))),
      el("tbody", {}, ...rows))));
  }
  if (v) {
    parts.push(el("p", { class: "vote" }, el("span", { class: "muted", text: "vote: " }),
      `${v.strategy} → ${v.answer || "(none)"}` + (v.winner_peer ? ` from ${v.winner_peer}` : "") +
      `, agreement ${fmt.pct(v.agreement)}` + (v.anchored ? ", greedy anchor decided" : "")));
  }
  if (c.rewards.length) {
    parts.push(el("p", { class: "rewards" }, el("span", { class: "muted", text: "rewards: " }),
      c.rewards.map(([peer, r]) => `${peer} ${fmt.signed(r)}`).join(", ")));
  }
  for (const [peer, reason] of c.failures) {
    parts.push(el("p", { class: "error-text", text: `${peer} failed: ${reason}` }));
  }
  const timing = [];
  if (c.elapsed_ms !== null && c.elapsed_ms !== undefined) timing.push("chunk time " + fmt.ms(c.elapsed_ms));
  if (c.stragglers_cancelled) timing.push(c.stragglers_cancelled + " unneeded " + (c.stragglers_cancelled === 1 ? "request" : "requests") + " cancelled once the vote was decided");
  if (timing.length) parts.push(el("p", { class: "muted", text: timing.join(" · ") }));
  return el("section", { class: "chunk", "data-chunk": c.id, "data-state": c.state }, ...parts);
}

function snippet(text) {
  const flat = (text || "").replace(/\s+/g, " ").trim();
  return flat.length > 160 ? flat.slice(0, 159) + "…" : flat;
}

function agreementOf(q) {
  const votes = q.chunks.filter((c) => c.vote).map((c) => c.vote.agreement);
  return votes.length ? Math.min(...votes) : null;
}

function questionView(q) {
  const details = el("details", { class: "question", "data-qid": q.id, "data-status": q.status, open: view.open.has(q.id) });
  details.addEventListener("toggle", () => (details.open ? view.open.add(q.id) : view.open.delete(q.id)));
  const agreement = agreementOf(q);
  const meta = [fmt.clock(q.started), q.chunks.length + (q.chunks.length === 1 ? " chunk" : " chunks")];
  if (agreement !== null) meta.push("agreement " + fmt.pct(agreement));
  if (q.total_ms !== null) meta.push(fmt.ms(q.total_ms));
  details.append(el("summary", {}, badge(q.status), el("span", { class: "q-text", text: q.question }), el("span", { class: "q-meta", text: meta.join(" · ") })));
  const body = el("div", { class: "q-body" });
  if (q.answer) body.append(el("div", { class: "answer", text: q.answer }));
  if (q.error) body.append(el("p", { class: "error-text", text: q.error }));
  const info = [];
  if (q.synthesizer_name) info.push("synthesized by " + q.synthesizer_name);
  if (q.confidence !== null) info.push("confidence " + fmt.pct(q.confidence));
  if (q.usage && q.usage.completion_tokens) info.push(q.usage.prompt_tokens + " prompt + " + q.usage.completion_tokens + " completion tokens");
  if (info.length) body.append(el("p", { class: "muted", text: info.join(" · ") }));
  for (const note of q.notes || []) body.append(el("p", { class: "muted", text: "note: " + note }));
  for (const [peer, reason] of q.synthesis_failures || []) body.append(el("p", { class: "error-text", text: `synthesis by ${peer} failed: ${reason}` }));
  for (const c of q.chunks) body.append(chunkView(c));
  details.append(body);
  return details;
}

function renderQuestions() {
  const list = [...view.questions.values()].reverse();
  const box = $("questions");
  if (!list.length) return;
  box.replaceChildren(...list.map(questionView));
}

function renderLive(q) {
  const items = q.chunks.map((c) => {
    const got = c.candidates.length;
    const want = c.asked.reduce((n, a) => n + a.samples, 0);
    let text = `${c.id} ${c.operation}: ${c.text} — `;
    if (c.vote) text += `voted ${c.vote.answer || "(none)"} (${fmt.pct(c.vote.agreement)} agree, ${c.vote.strategy})`;
    else if (want) text += `${got} of ${want} answers`;
    else text += "planned";
    return el("li", { "data-state": c.state, text });
  });
  $("live-chunks").replaceChildren(...items);
}

// ---- the ask box ----

let askAbort = null;

$("askform").addEventListener("submit", (e) => {
  e.preventDefault();
  const question = $("question").value.trim();
  if (question && !askAbort) ask(question);
});
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("askform").requestSubmit();
});
$("stop-btn").addEventListener("click", () => askAbort && askAbort.abort());

async function ask(question) {
  const ctrl = new AbortController();
  askAbort = ctrl;
  $("ask-btn").disabled = true;
  $("stop-btn").hidden = false;
  $("live").hidden = false;
  $("live-chunks").replaceChildren();
  const answer = $("answer");
  answer.textContent = "";
  answer.classList.remove("error-text");
  $("answer-meta").textContent = "";
  $("ask-status").textContent = "asking…";
  view.liveId = null;
  const started = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ model: "dellm", stream: true, messages: [{ role: "user", content: question }] }),
      signal: ctrl.signal,
    });
    if (response.status === 401) {
      askForKey(Boolean(apiKey()));
      return;
    }
    if (!response.ok) {
      let message = "HTTP " + response.status;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    $("ask-status").textContent = "streaming…";
    for await (const message of sseEvents(response)) {
      if (message.data === "[DONE]") break;
      const chunk = JSON.parse(message.data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.id && view.liveId !== chunk.id) {
        view.liveId = chunk.id;
        const known = view.questions.get(chunk.id);
        if (known) renderLive(known);
      }
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) answer.append(document.createTextNode(choice.delta.content));
      if (chunk.dellm) {
        const trace = chunk.dellm;
        const agreements = Object.values(trace.agreements || {});
        const parts = [fmt.ms(trace.total_ms), trace.chunks.length + (trace.chunks.length === 1 ? " chunk" : " chunks")];
        if (agreements.length) parts.push("agreement " + fmt.pct(Math.min(...agreements)));
        $("answer-meta").textContent = parts.join(" · ");
      }
    }
    $("ask-status").textContent = "done in " + fmt.ms(performance.now() - started);
  } catch (err) {
    if (ctrl.signal.aborted) {
      $("ask-status").textContent = "stopped";
    } else {
      $("ask-status").textContent = "";
      answer.textContent = "Error: " + err.message;
      answer.classList.add("error-text");
    }
  } finally {
    askAbort = null;
    $("ask-btn").disabled = false;
    $("stop-btn").hidden = true;
  }
}

window.addEventListener("resize", scheduleChart);
connect();
