// The demo page: one tournament at a time, run by the in-page host (offline)
// or by the gathering-server that served the page, through the same client
// (gathering-client, built into ./sdk/ by scripts/build-web.sh): it
// reconnects, resumes and sends ops again by itself, and shows who is here.

import { createClient } from "./sdk/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

let wasm = null;       // the gathering_wasm module, once loaded
let host = null;       // the in-page TournamentHost, opened on first offline join
let hostIdleMs = null; // the idle timeout `host` was opened with
let room = null;       // the current room
let tournament = { players: {}, matches: [] };
let lookingAt = null;  // the player this page shows the others it looks at

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

/** A client of the server that served the page, or of the in-page host. */
async function client() {
  // ?server=ws://host:port: a gathering server other than the page's own (tests).
  if (mode() === "server") return createClient({ url: params.get("server") ?? location.origin });
  await loadWasm();
  const idleMs = Math.max(1, Number($("idle").value) || 60) * 1000;
  if (!host || hostIdleMs !== idleMs) {
    if (host) await host.shutdown();
    host = await wasm.TournamentHost.open({ idleTimeoutMs: idleMs });
    hostIdleMs = idleMs;
  }
  return createClient({ host });
}

// The tournament's ops, applied here as the server applies them
// (core/src/tournament.rs), so that the page redraws from the op events.
function apply(t, op) {
  const p = t.players;
  switch (op.type) {
    case "register_player":
      p[op.name] = { wins: 0, losses: 0, draws: 0, dropped: false };
      break;
    case "drop_player":
      if (p[op.name]) p[op.name].dropped = true;
      break;
    case "record_result":
      for (const name of [op.a, op.b]) {
        if (!p[name]) continue;
        if (op.winner === null) p[name].draws++;
        else if (op.winner === name) p[name].wins++;
        else p[name].losses++;
      }
      t.matches.push({ a: op.a, b: op.b, winner: op.winner });
      break;
  }
}

async function join(id) {
  joined.splice(0, joined.length, id, ...joined.filter((j) => j !== id).slice(0, MAX_SHOWN - 1));
  $("setup-error").textContent = "";
  $("room-error").textContent = "";
  if (room) room.leave();
  room = null;
  let c;
  try {
    c = await client();
  } catch (e) {
    $("setup-error").textContent = e.message;
    return;
  }
  const mine = c.join(id, { presence: { looking_at: lookingAt } });
  room = mine;
  window.gatheringStatuses = [];
  tournament = { players: {}, matches: [] };
  $("room").hidden = false;
  $("notice").hidden = true;
  $("room-id").textContent = id;
  render();
  renderHere({});
  showStatus(mine.status);
  mine.on("state", (state) => { tournament = state; render(); });
  mine.on("op", (op) => { apply(tournament, op); render(); });
  mine.on("presence", renderHere);
  mine.on("status", showStatus);
}

/** Sends an op; a refusal is shown (the room sends it again by itself across reconnects). */
function send(op) {
  if (!room) return;
  $("room-error").textContent = "";
  room.op(op).catch((e) => { $("room-error").textContent = e.message; });
}

// Every status the room went through, for the page test.
window.gatheringStatuses = [];

function showStatus({ status, code, reason }) {
  const changed = window.gatheringStatuses.at(-1)?.status !== status;
  if (changed) window.gatheringStatuses.push({ status, code, reason });
  const where = mode() === "server" ? "on the server"
    : host && host.role === "follower" ? "run by another tab of this page" : "in this page";
  const why = code === null ? reason : `${code}${reason ? " " + reason : ""}`;
  $("room-status").textContent = status === "open" ? `(${where})` : `(${status}${why ? ": " + why : ""})`;
  $("room-status").dataset.status = status;
  if (status === "dispersed") {
    $("notice-text").textContent = dispersedText(reason);
    $("notice").hidden = false;
  } else if (status === "closed") {
    $("notice-text").textContent = `The connection closed for good (${why}).`;
    $("notice").hidden = false;
  } else if (status === "open") {
    $("notice").hidden = true;
    // Back after a drop: redraw (what was missed came as ops, or a state).
    if (changed) render();
  }
}

function dispersedText(reason) {
  switch (reason) {
    case "idle": return "This tournament dispersed: nobody touched it for the whole idle timeout. Its state is saved; any change, or Rejoin, brings it back.";
    case "empty": return "This tournament dispersed: everybody left. Its state is saved.";
    default: return `This tournament dispersed (${reason}).`;
  }
}

function renderHere(members) {
  const list = $("here");
  list.replaceChildren(...Object.entries(members).sort(([a], [b]) => a.localeCompare(b)).map(([member, data]) => {
    const item = document.createElement("li");
    const you = room && member === room.member ? " (you)" : "";
    item.textContent = data && data.looking_at ? `${member}${you} is looking at ${data.looking_at}` : `${member}${you}`;
    return item;
  }));
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
    if (p.name === lookingAt) row.classList.add("looked-at");
    for (const cell of [i + 1, p.name, p.points, p.wins, p.draws, p.losses]) {
      row.insertCell().textContent = cell;
    }
    row.cells[1].onclick = () => {
      lookingAt = lookingAt === p.name ? null : p.name;
      if (room) room.setPresence({ looking_at: lookingAt });
      render();
    };
    const drop = document.createElement("button");
    drop.textContent = "Drop";
    drop.disabled = p.dropped;
    drop.onclick = () => send({ type: "drop_player", name: p.name });
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
  // A follower tab may have become the owner meanwhile.
  if (room) showStatus(room.status);
}

$("join-form").onsubmit = (e) => { e.preventDefault(); join($("tournament").value.trim()); };
$("rejoin").onclick = () => { if (room) room.rejoin(); };
$("register-form").onsubmit = (e) => {
  e.preventDefault();
  send({ type: "register_player", name: $("player").value.trim() });
  $("player").value = "";
};
$("result-form").onsubmit = (e) => {
  e.preventDefault();
  const winner = $("result-winner").value || null;
  send({ type: "record_result", a: $("result-a").value, b: $("result-b").value, winner });
};
for (const radio of document.querySelectorAll('input[name="mode"]')) {
  radio.onchange = () => { $("idle-row").hidden = mode() === "server"; };
}
$("idle-row").hidden = mode() === "server";
setInterval(refreshLive, 250);
// ?join=ID joins at once (a reloaded page resumes its session and sends its queued ops).
if (params.has("join")) { $("tournament").value = params.get("join"); join(params.get("join")); }
document.body.dataset.ready = "true";
