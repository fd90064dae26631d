// Three clients, 2,000 ops each with 16 in flight, against a real server
// killed with -9 and restarted twice mid-stream: every op() settles once,
// the state holds each op once, and each client's op events cover every
// seq once, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "../dist/index.js";
import { Server, until, record, checkHistory } from "./support.mjs";

const CLIENTS = 3;
const OPS = 2000;
const IN_FLIGHT = 16;

/** Op k of client i: two players, then results between them, the winner by k. */
function opOf(i, k) {
  if (k === 0) return { type: "register_player", name: `a${i}` };
  if (k === 1) return { type: "register_player", name: `b${i}` };
  const winner = [`a${i}`, `b${i}`, null][k % 3];
  return { type: "record_result", a: `a${i}`, b: `b${i}`, winner };
}

test("kill -9 twice mid-stream: each op applied and delivered exactly once", { timeout: 240_000 }, async () => {
  const server = await new Server().start();
  try {
    const client = createClient({ url: server.url, persistence: null, backoff: { baseMs: 50, capMs: 500 }, connectTimeoutMs: 2000 });
    const rooms = [];
    const logs = [];
    for (let i = 0; i < CLIENTS; i++) {
      const room = client.join("kill9");
      rooms.push(room);
      logs.push(record(room));
    }
    const settled = Array.from({ length: CLIENTS }, () => new Array(OPS).fill(0));
    const seqs = Array.from({ length: CLIENTS }, () => new Array(OPS).fill(null));
    const failures = [];
    let done = 0;
    const run = async (i) => {
      let next = 0;
      const worker = async () => {
        while (next < OPS) {
          const k = next++;
          try {
            seqs[i][k] = await rooms[i].op(opOf(i, k));
          } catch (e) {
            failures.push(`client ${i} op ${k}: ${e.code} ${e.message}`);
          }
          settled[i][k]++;
          done++;
        }
      };
      await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    };
    const restarts = [];
    const running = Promise.all(rooms.map((_, i) => run(i)));
    for (const at of [0.3, 0.65]) {
      await until(() => done >= at * CLIENTS * OPS, `${at * 100}% of the ops`, 120_000);
      await server.restart();
      restarts.push(done);
    }
    await running;
    assert.equal(restarts.length, 2);
    assert.ok(restarts.every((d) => d < CLIENTS * OPS), `restarted mid-stream, after ${restarts} settled ops`);
    console.log(`restarted after ${restarts} settled ops; statuses of client 0: ${logs[0].statuses.map((s) => `${s.status}${s.code ? " " + s.code : ""}`).join(", ")}; states at ${logs[0].states.map((s) => s.seq)}`);
    assert.deepEqual(failures, []);
    for (const counts of settled) assert.ok(counts.every((c) => c === 1), "every op() settled exactly once");
    const all = seqs.flat();
    assert.equal(new Set(all).size, CLIENTS * OPS, "each op has a seq of its own");
    assert.equal(Math.max(...all), CLIENTS * OPS, "seqs run 1..N: nothing else was applied");

    // Each client's events reach the last op, in order, once each; its own
    // ops are flagged as its own.
    const last = CLIENTS * OPS;
    await until(() => logs.every((log) => rooms[logs.indexOf(log)].seq === last), "every client to see every op", 60_000);
    for (let i = 0; i < CLIENTS; i++) {
      assert.equal(checkHistory(logs[i]), last);
      const mine = new Set(seqs[i]);
      for (const e of logs[i].ops) assert.equal(e.own, mine.has(e.seq), `client ${i} seq ${e.seq} own flag`);
      assert.ok(logs[i].statuses.some((s) => s.status === "reconnecting"), "it reconnected");
    }

    // The state holds each op exactly once: the results add up.
    const fresh = client.join("kill9");
    const state = await new Promise((ok) => fresh.on("state", ok));
    for (let i = 0; i < CLIENTS; i++) {
      const results = OPS - 2;
      const a = state.players[`a${i}`];
      const b = state.players[`b${i}`];
      const wins = (r) => Array.from({ length: results }, (_, j) => j + 2).filter((k) => k % 3 === r).length;
      assert.deepEqual([a.wins, a.losses, a.draws], [wins(0), wins(1), wins(2)], `a${i}`);
      assert.deepEqual([b.wins, b.losses, b.draws], [wins(1), wins(0), wins(2)], `b${i}`);
    }
    assert.equal(state.matches.length, CLIENTS * (OPS - 2));
    for (const room of [...rooms, fresh]) room.leave();
  } finally {
    await server.stop();
  }
});
