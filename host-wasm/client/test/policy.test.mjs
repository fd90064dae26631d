// The reconnect policy under a fake clock: which close codes retry, when,
// and with what jitter; all without a server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, closeAction, createClient } from "../dist/index.js";
import { FakeClock, seeded, until } from "./support.mjs";

test("each close code has its documented action", () => {
  const table = {
    backoff: [1001, 1006, 1011, 1013, 1014, 4999],
    now: [1012, 4001],
    token: [4003],
    dispersed: [4000],
    never: [1000, 1002, 1007, 1008, 1009, 4002, 4401, 4403],
  };
  for (const [action, codes] of Object.entries(table)) {
    for (const code of codes) assert.equal(closeAction(code), action, `close ${code}`);
  }
});

test("full jitter: each delay is below its doubling ceiling, capped, and varies", () => {
  const backoff = new Backoff({ baseMs: 100, capMs: 3_000 }, seeded(7));
  const ceilings = [];
  const delays = [];
  for (let i = 0; i < 12; i++) {
    ceilings.push(backoff.ceiling());
    delays.push(backoff.next());
  }
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1600, 3000, 3000, 3000, 3000, 3000, 3000, 3000]);
  delays.forEach((d, i) => assert.ok(d >= 0 && d < ceilings[i], `delay ${i}: ${d} < ${ceilings[i]}`));
  assert.ok(new Set(delays.slice(5)).size > 3, `capped delays still vary: ${delays}`);
});

test("the count resets only after a connection stayed open long enough", () => {
  const backoff = new Backoff({ baseMs: 100, capMs: 10_000, resetAfterMs: 5_000 }, () => 0.5);
  backoff.next();
  backoff.next();
  backoff.opened(1_000);
  backoff.closed(3_000); // two seconds up: not enough
  assert.equal(backoff.ceiling(), 400);
  backoff.opened(10_000);
  backoff.closed(15_000);
  assert.equal(backoff.ceiling(), 100);
});

/** A transport whose connections the test opens, welcomes and closes by hand. */
function fakeTransport() {
  const conns = [];
  return {
    conns,
    open(target, events) {
      const conn = { target, events, sent: [], closedWith: null };
      conns.push(conn);
      return {
        send: (text) => conn.sent.push(JSON.parse(text)),
        close: (code) => { conn.closedWith = code; },
      };
    },
  };
}

const welcome = (conn, lastOp = null) =>
  conn.events.message(JSON.stringify({ type: "welcome", member: "m", epoch: 5, seq: 0, last_op: lastOp }));

test("a lost connection is retried after jittered, growing delays under a fake clock", () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, random: seeded(3), persistence: null, backoff: { baseMs: 100, capMs: 1_000 } })
    .join("r");
  const gaps = [];
  for (let i = 0; i < 8; i++) {
    const conn = transport.conns.at(-1);
    conn.events.close(1006, "");
    assert.equal(room.status.status, "reconnecting");
    const before = clock.now();
    const count = transport.conns.length;
    clock.advance(clock.due() - clock.now());
    assert.equal(transport.conns.length, count + 1, "one attempt per delay");
    gaps.push(clock.now() - before);
  }
  const ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
  gaps.forEach((g, i) => assert.ok(g < ceilings[i], `gap ${i}: ${g} < ${ceilings[i]}`));
  assert.ok(new Set(gaps).size > 4, `gaps vary: ${gaps}`);
  room.leave();
});

for (const code of [1002, 1007, 1008, 1009, 4401, 4403]) {
  test(`close ${code} is final: no reconnect, ops rejected`, async () => {
    const clock = new FakeClock();
    const transport = fakeTransport();
    const room = createClient({ transport, clock, persistence: null }).join("r");
    welcome(transport.conns[0]);
    const op = room.op({ n: 1 });
    transport.conns[0].events.close(code, "because");
    assert.deepEqual(room.status, { status: "closed", code, reason: "because" });
    clock.advance(600_000);
    assert.equal(transport.conns.length, 1, "never tried again");
    await assert.rejects(op, { code: "closed" });
    await assert.rejects(room.op({ n: 2 }), { code: "closed" });
  });
}

/** Resolves when a room posts `message` on the channel of session holders (within 5 s). */
function posted(message) {
  const channel = new BroadcastChannel("gathering-client:sessions");
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => { channel.close(); fail(new Error(`nothing posted ${JSON.stringify(message)}`)); }, 5_000);
    channel.onmessage = (e) => {
      if (JSON.stringify(e.data) !== JSON.stringify(message)) return;
      clearTimeout(timer);
      channel.close();
      ok();
    };
  });
}

test("4002 with another live room of the session: closed for good", async () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const client = createClient({ transport, clock, persistence: null });
  const tab = client.join("r", { session: "dup" });
  const duplicate = createClient({ transport: fakeTransport(), clock: new FakeClock(), persistence: null }).join("r", { session: "dup" });
  welcome(transport.conns[0]);
  transport.conns[0].events.close(4002, "session resumed elsewhere");
  assert.equal(tab.status.status, "reconnecting", "asking who holds the session");
  await until(() => tab.status.status === "closed", "the other room's answer", 5_000);
  clock.advance(600_000);
  assert.deepEqual(tab.status, { status: "closed", code: 4002, reason: "session resumed elsewhere" });
  assert.equal(transport.conns.length, 1, "never tried again");
  duplicate.leave();
});

test("4002 with no room holding the session (a late join of this tab's page before a reload): joins again, once a minute at most", async () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r", { session: "mine" });
  welcome(transport.conns[0]);
  const asked = posted({ ask: "mine" });
  transport.conns[0].events.close(4002, "session resumed elsewhere");
  await asked;
  clock.advance(clock.due() - clock.now()); // nobody answered
  clock.advance(clock.due() - clock.now()); // the backoff
  assert.equal(transport.conns.length, 2, "joined again");
  welcome(transport.conns[1]);
  assert.equal(room.status.status, "open");
  transport.conns[1].events.close(4002, "session resumed elsewhere");
  assert.equal(room.status.status, "closed", "a second time within a minute: closed");
  room.leave();
});

test("4000 stays dispersed until the next op, which rejoins and is sent", async () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r");
  welcome(transport.conns[0]);
  transport.conns[0].events.message(JSON.stringify({ type: "dispersed", reason: "idle" }));
  transport.conns[0].events.close(4000, "gathering dispersed: idle");
  assert.deepEqual(room.status, { status: "dispersed", code: 4000, reason: "idle" });
  clock.advance(3_600_000);
  assert.equal(transport.conns.length, 1, "no rejoin by itself");
  const op = room.op({ n: 1 });
  assert.equal(transport.conns.length, 2, "the op rejoins");
  welcome(transport.conns[1]);
  assert.deepEqual(transport.conns[1].sent, [{ type: "op", id: 1, op: { n: 1 } }]);
  transport.conns[1].events.message(JSON.stringify({ type: "ack", id: 1, seq: 1 }));
  assert.equal(await op, 1);
  room.leave();
});

test("1012 and 4001 retry at once; a second in a row without a welcome backs off", () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r");
  welcome(transport.conns[0]);
  transport.conns[0].events.close(1012, "tab gone");
  assert.equal(transport.conns.length, 2, "at once");
  transport.conns[1].events.close(4001, "moved");
  assert.equal(transport.conns.length, 2, "not at once again");
  clock.advance(clock.due() - clock.now());
  assert.equal(transport.conns.length, 3);
  room.leave();
});

test("4001 naming a cluster node pins the next attempt to it (?node=), and only that one", () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r");
  welcome(transport.conns[0]);
  assert.equal(transport.conns[0].target.node, null);
  transport.conns[0].events.close(4001, "node n2 at ws://10.0.0.2:8080");
  assert.equal(transport.conns[1].target.node, "n2", "at once, to the owner");
  transport.conns[1].events.close(1006, "");
  clock.advance(clock.due() - clock.now());
  assert.equal(transport.conns[2].target.node, null, "a later attempt lets the front choose");
  transport.conns[2].events.close(4001, "draining");
  clock.advance(clock.due() - clock.now());
  assert.equal(transport.conns[3].target.node, null, "a 4001 naming nobody pins nothing");
  room.leave();
});

test("ops in flight and a silent server: the connection is counted lost after stallTimeoutMs, and the ops go again", async () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null, stallTimeoutMs: 1_000 }).join("r");
  const first = transport.conns[0];
  welcome(first);
  clock.advance(5_000);
  assert.equal(transport.conns.length, 1, "idle and silent is fine: nothing is waited for");
  const op = room.op("a");
  clock.advance(900);
  first.events.message(JSON.stringify({ type: "forward", seq: 1, op: "x" }));
  clock.advance(1_000);
  assert.equal(transport.conns.length, 1, "something was heard in the last interval");
  clock.advance(1_000);
  assert.equal(first.closedWith, 1000, "silent for a whole interval: dropped");
  assert.equal(room.status.reason, "nothing heard for 1000 ms with ops in flight");
  while (transport.conns.length < 2) clock.advance(50);
  const second = transport.conns[1];
  welcome(second);
  assert.deepEqual(second.sent.filter((m) => m.type === "op").map((m) => m.id), [1], "sent again, same id");
  second.events.message(JSON.stringify({ type: "ack", id: 1, seq: 2 }));
  assert.equal(await op, 2);
  room.leave();
});

test("a retried op keeps its id; one the welcome says applied waits for its ack before ops are delivered", async () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r");
  const ops = [];
  room.on("op", (op, info) => ops.push([info.seq, info.own, op]));
  const first = transport.conns[0];
  welcome(first);
  first.events.message(JSON.stringify({ type: "resync", seq: 0, state: {} }));
  const a = room.op("a");
  const b = room.op("b");
  assert.deepEqual(first.sent.map((m) => m.id), [1, 2]);
  first.events.close(1006, "");
  clock.advance(clock.due() - clock.now());
  const second = transport.conns[1];
  assert.deepEqual([second.target.since, second.target.epoch], [0, 5], "resumes from what it saw");
  welcome(second, 1); // op 1 applied (as seq 1), op 2 not
  assert.deepEqual(second.sent.map((m) => [m.id, m.op]), [[1, "a"], [2, "b"]], "both again, same ids");
  second.events.message(JSON.stringify({ type: "forward", seq: 1, op: "a" }));
  assert.deepEqual(ops, [], "held until op 1's ack says whose seq 1 is");
  second.events.message(JSON.stringify({ type: "ack", id: 1, seq: 1 }));
  second.events.message(JSON.stringify({ type: "forward", seq: 2, op: "x" }));
  second.events.message(JSON.stringify({ type: "ack", id: 2, seq: 3 }));
  assert.deepEqual(ops, [[1, true, "a"], [2, false, "x"], [3, true, "b"]]);
  assert.deepEqual([await a, await b], [1, 3]);
  room.leave();
});

test("refused for a rate, an op is sent again later under a new id; refused by the app, it rejects", async () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r");
  const conn = transport.conns[0];
  welcome(conn);
  const a = room.op("a");
  const b = room.op("b");
  conn.events.message(JSON.stringify({ type: "error", id: 1, code: "rate_limited", message: "slow down" }));
  conn.events.message(JSON.stringify({ type: "error", id: 2, code: "forbidden", message: "no" }));
  await assert.rejects(b, { code: "forbidden", message: "no" });
  clock.advance(1_000);
  assert.deepEqual(conn.sent.at(-1), { type: "op", id: 3, op: "a" });
  conn.events.message(JSON.stringify({ type: "ack", id: 3, seq: 1 }));
  assert.equal(await a, 1);
  room.leave();
});

test("past maxQueued unsettled ops, op() rejects with queue_full", async () => {
  const transport = fakeTransport();
  const room = createClient({ transport, clock: new FakeClock(), persistence: null, maxQueued: 3 }).join("r");
  const held = [room.op(1), room.op(2), room.op(3)];
  await assert.rejects(room.op(4), { code: "queue_full" });
  room.leave();
  for (const p of held) await assert.rejects(p, { code: "left" });
});

test("acks of forwards are cumulative: one for a burst, with the next op or after 20 ms", () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r");
  const conn = transport.conns[0];
  welcome(conn);
  conn.events.message(JSON.stringify({ type: "resync", seq: 0, state: {} }));
  for (let seq = 1; seq <= 70; seq++) conn.events.message(JSON.stringify({ type: "forward", seq, op: seq }));
  assert.deepEqual(conn.sent, [{ type: "ack", seq: 32 }, { type: "ack", seq: 64 }]);
  room.op("x").catch(() => {});
  assert.deepEqual(conn.sent.slice(2), [{ type: "ack", seq: 70 }, { type: "op", id: 1, op: "x" }]);
  conn.events.message(JSON.stringify({ type: "forward", seq: 71, op: 71 }));
  clock.advance(19);
  assert.equal(conn.sent.length, 4);
  clock.advance(1);
  assert.deepEqual(conn.sent.at(-1), { type: "ack", seq: 71 });
  room.leave();
});

test("ops queued in storage are sent again by the next instance under their ids", async () => {
  const memory = new Map();
  const kv = { getItem: (k) => memory.get(k) ?? null, setItem: (k, v) => memory.set(k, v), removeItem: (k) => memory.delete(k) };
  const persistence = { sessions: kv, ops: kv };
  const first = fakeTransport();
  const room = createClient({ transport: first, clock: new FakeClock(), persistence }).join("r");
  welcome(first.conns[0]);
  void room.op("a");
  void room.op("b");
  await Promise.resolve(); // the write happens once per task
  // The page goes away without a word; a new one in the same tab:
  const second = fakeTransport();
  const again = createClient({ transport: second, clock: new FakeClock(), persistence }).join("r");
  assert.equal(again.session, room.session, "the same session");
  assert.equal(again.queued, 2);
  welcome(second.conns[0], 1);
  assert.deepEqual(second.conns[0].sent.map((m) => [m.id, m.op]), [[1, "a"], [2, "b"]]);
  const c = again.op("c");
  assert.deepEqual(second.conns[0].sent.at(-1), { type: "op", id: 3, op: "c" });
  second.conns[0].events.message(JSON.stringify({ type: "ack", id: 3, seq: 9 }));
  assert.equal(await c, 9);
  again.leave();
  assert.equal(memory.size, 0, "leave forgets the session and its ops");
});

test("presence: sent after the welcome, the latest at most every 50 ms; the map follows diffs", () => {
  const clock = new FakeClock();
  const transport = fakeTransport();
  const room = createClient({ transport, clock, persistence: null }).join("r", { presence: { at: 1 } });
  const seen = [];
  room.on("presence", (m) => seen.push(m));
  const conn = transport.conns[0];
  assert.deepEqual(conn.sent, []);
  welcome(conn);
  assert.deepEqual(conn.sent, [{ type: "presence", data: { at: 1 } }]);
  room.setPresence({ at: 2 });
  room.setPresence({ at: 3 });
  assert.equal(conn.sent.length, 1);
  clock.advance(50);
  assert.deepEqual(conn.sent.at(-1), { type: "presence", data: { at: 3 } });
  conn.events.message(JSON.stringify({ type: "presence", members: { m: { at: 3 }, o: null } }));
  conn.events.message(JSON.stringify({ type: "presence_diff", joins: { p: { at: 0 } }, leaves: ["o"] }));
  assert.deepEqual(seen, [{ m: { at: 3 }, o: null }, { m: { at: 3 }, p: { at: 0 } }]);
  conn.events.message(JSON.stringify({ type: "dispersed", reason: "empty" }));
  conn.events.close(4000, "");
  assert.deepEqual(seen.at(-1), {}, "cleared when dispersed");
  room.leave();
});
