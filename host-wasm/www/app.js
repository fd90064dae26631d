// The demo page: one tournament at a time, run by the in-page host (offline)
// or by the gathering-server that served the page, over the same JSON
// protocol (docs/PROTOCOL.md).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

let wasm = null;       // the gathering_wasm module, once loaded
let host = null;       // the in-page TournamentHost, opened on first offline join
let hostIdleMs = null; // the idle timeout `host` was opened with
let conn = null;       // the current connection
let nextId = 1;        // request ids
let tournament = { players: {}, matches: [] };

// The page redraws from a fetched state, with at most one fetch on its way
// and one every REFRESH_MS: a busy room forwards far more ops than a page
// needs to redraw, and the server counts fetches against the connection's
// op rate (--max-ops-per-sec).
const REFRESH_MS = 100;
let fetching = null;   // the id of the fetch on its way
let wanted = false;    // a newer state is wanted once it answers
let lastFetch = -Infinity;
let refreshTimer = null;

function refresh() {
  wanted = true;
  if (fetching !== null || refreshTimer !== null) return;
  const wait = lastFetch + REFRESH_MS - performance.now();
  if (wait > 0) {
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, wait);
    return;
  }
  wanted = false;
  fetching = nextId++;
  lastFetch = performance.now();
  send({ type: "fetch", id: fetching });
}

function fetched() {
  fetching = null;
  if (wanted) refresh();
}
// Gatherings this page joined, latest first: in server mode the page shows
// these, since only the server's admin listener lists every live one.
const joined = [];
const MAX_SHOWN = 10;

// ?idle=SECONDS presets the idle timeout (the browser test uses it).
if (params.has("idle")) $("idle").value = params.get("idle");
if (params.get("mode") === "server") document.querySelector('input[value="server"]').checked = true;

const mode = () => document.querySelector('input[name="mode"]:checked').value;

async function loadWasm() {
  if (wasm) return wasm;
  try {
    const module = await import("./pkg/gathering_wasm.js");
    await module.default();
    wasm = module;
    return wasm;
  } catch (e) {
    throw new Error("the in-page host is not built (run ./scripts/build-web.sh): " + e.message);
  }
}

// A WebSocket to the server, behind the in-page connection's interface:
// send(text), onmessage({data}), onclose(code, reason), close().
function serverConnection(id) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/gatherings/${encodeURIComponent(id)}`);
  const queued = [];
  const c = { onmessage: null, onclose: null };
  ws.onopen = () => { while (queued.length) ws.send(queued.shift()); };
  ws.onmessage = (event) => c.onmessage && c.onmessage(event);
  ws.onclose = (event) => c.onclose && c.onclose(event.code, event.reason);
  c.send = (text) => {
    if (ws.readyState === WebSocket.CONNECTING) queued.push(text);
    else if (ws.readyState === WebSocket.OPEN) ws.send(text);
    else throw new Error("this connection is closed; join again to reach the gathering");
  };
  c.close = () => ws.close();
  return c;
}

async function connect(id) {
  if (mode() === "server") return serverConnection(id);
  await loadWasm();
  const idleMs = Math.max(1, Number($("idle").value) || 60) * 1000;
  if (!host || hostIdleMs !== idleMs) {
    if (host) await host.shutdown();
    host = await wasm.TournamentHost.open({ idleTimeoutMs: idleMs });
    hostIdleMs = idleMs;
  }
  return host.join(id);
}

function send(msg) {
  try {
    conn.send(JSON.stringify(msg));
  } catch (e) {
    $("room-error").textContent = e.message;
  }
}

async function join(id) {
  joined.splice(0, joined.length, id, ...joined.filter((j) => j !== id).slice(0, MAX_SHOWN - 1));
  $("setup-error").textContent = "";
  $("room-error").textContent = "";
  if (conn && !conn.closed) { conn.onclose = null; conn.close(); }
  try {
    conn = await connect(id);
  } catch (e) {
    $("setup-error").textContent = e.message;
    return;
  }
  const mine = conn;
  $("room").hidden = false;
  $("notice").hidden = true;
  $("room-id").textContent = id;
  $("room-status").textContent = mode() === "server" ? "(on the server)"
    : host.role === "follower" ? "(run by another tab of this page)" : "(in this page)";
  mine.onmessage = (event) => { if (mine === conn) onMessage(JSON.parse(event.data)); };
  mine.onclose = (code, reason) => { if (mine === conn) onClose(code, reason); };
  clearTimeout(refreshTimer);
  refreshTimer = null;
  fetching = null;
  lastFetch = -Infinity;
  refresh();
}

function onMessage(msg) {
  switch (msg.type) {
    case "state":
      tournament = msg.state;
      render();
      if (msg.id === fetching) fetched();
      break;
    case "ack":
      refresh();
      break;
    case "forward":
      // Acknowledge, or the gathering sends it again.
      send({ type: "ack", seq: msg.seq });
      refresh();
      break;
    case "error":
      $("room-error").textContent = msg.message;
      // A refused fetch (over the rate, say) is tried again, later.
      if (msg.id === fetching) { wanted = true; fetched(); }
      break;
    case "dispersed":
      $("notice-text").textContent = dispersedText(msg.reason);
      $("notice").hidden = false;
      break;
  }
}

function dispersedText(reason) {
  switch (reason) {
    case "idle": return "This tournament dispersed: nobody touched it for the whole idle timeout. Its state is saved.";
    case "empty": return "This tournament dispersed: everybody left. Its state is saved.";
    case "shutdown": return "This tournament dispersed: the host is shutting down. Its state is saved.";
    default: return `This tournament dispersed (${reason}).`;
  }
}

function onClose(code, reason) {
  $("room-status").textContent = `(closed: ${code} ${reason})`;
  if ($("notice").hidden) {
    $("notice-text").textContent = `The connection closed (${code}${reason ? ": " + reason : ""}).`;
    $("notice").hidden = false;
  }
}

function standings() {
  return Object.entries(tournament.players)
    .map(([name, p]) => ({ name, points: p.wins * 3 + p.draws, ...p }))
    .sort((x, y) => y.points - x.points || y.wins - x.wins || x.name.localeCompare(y.name));
}

function render() {
  const body = $("standings").tBodies[0];
  body.replaceChildren();
  standings().forEach((p, i) => {
    const row = body.insertRow();
    if (p.dropped) row.className = "dropped";
    for (const cell of [i + 1, p.name, p.points, p.wins, p.draws, p.losses]) {
      row.insertCell().textContent = cell;
    }
    const drop = document.createElement("button");
    drop.textContent = "Drop";
    drop.disabled = p.dropped;
    drop.onclick = () => send({ type: "op", id: nextId++, op: { type: "drop_player", name: p.name } });
    row.insertCell().append(drop);
  });
  const active = Object.keys(tournament.players).filter((n) => !tournament.players[n].dropped);
  const fill = (select, names, extra) => {
    const keep = select.value;
    select.replaceChildren(...[...extra, ...names].map(([v, t]) => new Option(t, v)));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  };
  const pairs = active.map((n) => [n, n]);
  fill($("result-a"), pairs, []);
  fill($("result-b"), pairs, []);
  if ($("result-b").selectedIndex === 0 && pairs.length > 1) $("result-b").selectedIndex = 1;
  fill($("result-winner"), pairs, [["", "draw"]]);
}

async function refreshLive() {
  const body = $("gatherings").tBodies[0];
  let rows = [];
  if (mode() === "server") {
    const statuses = await Promise.all(joined.map(async (id) => {
      try {
        return await (await fetch(`/gatherings/${encodeURIComponent(id)}/status`)).json();
      } catch { return { live: false }; }
    }));
    rows = statuses.filter((g) => g.live).map((g) => [g.id, g.connections, g.seconds_left]);
  } else if (host) {
    rows = host.gatherings().map((g) => [g.id, g.connections, g.dispersesInMs / 1000]);
  }
  body.replaceChildren();
  for (const [id, connections, left] of rows) {
    const row = body.insertRow();
    row.insertCell().textContent = id;
    row.insertCell().textContent = connections;
    row.insertCell().textContent = `${left.toFixed(1)} s`;
  }
}

$("join-form").onsubmit = (e) => { e.preventDefault(); join($("tournament").value.trim()); };
$("rejoin").onclick = () => join($("room-id").textContent);
$("register-form").onsubmit = (e) => {
  e.preventDefault();
  send({ type: "op", id: nextId++, op: { type: "register_player", name: $("player").value.trim() } });
  $("player").value = "";
};
$("result-form").onsubmit = (e) => {
  e.preventDefault();
  const winner = $("result-winner").value || null;
  send({ type: "op", id: nextId++, op: { type: "record_result", a: $("result-a").value, b: $("result-b").value, winner } });
};
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.onchange = () => { $("idle-row").hidden = mode() === "server"; };
}
$("idle-row").hidden = mode() === "server";
setInterval(refreshLive, 250);
document.body.dataset.ready = "true";
