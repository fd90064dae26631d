// The close-code policy against a real server: an expired token is
// replaced, an idle dispersal is not undone until the next op, and
// refusals no retry can fix are final.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "../dist/index.js";
import { Server, until, record } from "./support.mjs";

const SECRET = "client-test-secret";

/** The global WebSocket, counting the connections opened. */
function countingWebSocket() {
  const counter = { opened: 0 };
  counter.WebSocket = class extends WebSocket {
    constructor(url) {
      super(url);
      counter.opened++;
    }
  };
  return counter;
}

test("4003: getToken is asked again, the room reconnects and nothing is lost", { timeout: 60_000 }, async () => {
  const server = await new Server(["--auth-secret", SECRET]).start();
  try {
    let asked = 0;
    const getToken = () => {
      asked++;
      return server.token({ sub: "Ada", role: "organizer", gathering: "tokens", secret: SECRET }, "2s");
    };
    const room = createClient({ url: server.url, getToken, persistence: null }).join("tokens");
    const log = record(room);
    const seqs = [];
    const started = Date.now();
    // Ops across at least two expiries (the token lives 2 s).
    for (let k = 0; Date.now() - started < 4_500; k++) {
      seqs.push(await room.op({ type: "register_player", name: `p${k}` }));
      await new Promise((ok) => setTimeout(ok, 25));
    }
    assert.ok(asked >= 3, `getToken asked ${asked} times`);
    const expired = log.statuses.filter((s) => s.status === "reconnecting" && s.code === 4003);
    assert.ok(expired.length >= 2, `reconnected after 4003: ${JSON.stringify(log.statuses)}`);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "every op applied once, in order");
    assert.equal(room.member, "Ada");
    room.leave();
  } finally {
    await server.stop();
  }
});

test("4000: an idle dispersal stays dispersed until the next op, which rejoins", { timeout: 60_000 }, async () => {
  const server = await new Server(["--idle-timeout", "1s"]).start();
  try {
    const counter = countingWebSocket();
    const room = createClient({ url: server.url, WebSocket: counter.WebSocket, persistence: null }).join("idle");
    const log = record(room);
    assert.equal(await room.op({ type: "register_player", name: "Ada" }), 1);
    await until(() => room.status.status === "dispersed", "the idle dispersal");
    assert.deepEqual(room.status, { status: "dispersed", code: 4000, reason: "idle" });
    await new Promise((ok) => setTimeout(ok, 2_500));
    assert.equal(counter.opened, 1, "no reconnect while dispersed");
    const status = await (await fetch(`http://${server.listen}/gatherings/idle/status`)).json();
    assert.equal(status.live, false, "the gathering stayed dispersed");
    assert.equal(await room.op({ type: "register_player", name: "Bob" }), 2, "the next op rejoins");
    assert.equal(counter.opened, 2);
    assert.equal(room.status.status, "open");
    assert.equal(log.ops.map((o) => o.seq).join(), "1,2", "its ops delivered once across the dispersal");
    room.leave();
  } finally {
    await server.stop();
  }
});

for (const [code, claims] of [
  [4401, null],
  [4403, { sub: "Ada", role: "organizer", gathering: "elsewhere" }],
]) {
  test(`${code}: refused, the room closes and never reconnects`, { timeout: 30_000 }, async () => {
    const server = await new Server(["--auth-secret", SECRET]).start();
    try {
      const counter = countingWebSocket();
      const getToken = () => (claims ? server.token({ ...claims, secret: SECRET }) : "not-a-token");
      const room = createClient({ url: server.url, getToken, WebSocket: counter.WebSocket, persistence: null }).join("refused");
      const op = room.op({ type: "register_player", name: "Ada" });
      await assert.rejects(op, { code: "closed" });
      assert.equal(room.status.status, "closed");
      assert.equal(room.status.code, code);
      assert.ok(room.status.reason.length > 0, "with the reason");
      await new Promise((ok) => setTimeout(ok, 1_500));
      assert.equal(counter.opened, 1, "never tried again");
    } finally {
      await server.stop();
    }
  });
}

test("presence: each room sees the others, and a leave clears them", { timeout: 30_000 }, async () => {
  const server = await new Server().start();
  try {
    const client = createClient({ url: server.url, persistence: null });
    const ada = client.join("presence", { presence: { looking_at: "Ada" } });
    const bob = client.join("presence", { presence: { looking_at: null } });
    await until(() => Object.keys(ada.presence).length === 2 && Object.keys(bob.presence).length === 2, "both see both");
    assert.deepEqual(bob.presence[ada.session], { looking_at: "Ada" });
    ada.setPresence({ looking_at: "Bob" });
    await until(() => bob.presence[ada.session]?.looking_at === "Bob", "the update");
    ada.leave();
    await until(() => !(ada.session in bob.presence), "the leave");
    bob.leave();
  } finally {
    await server.stop();
  }
});

test("an upgrade answered with another status (a proxy's 503) is a lost connection at once, not a hang", { timeout: 10_000 }, async () => {
  const http = await import("node:http");
  let requests = 0;
  const front = http.createServer((req, res) => {
    requests++;
    res.writeHead(503, { "content-type": "text/plain" });
    res.end("no server is available\n");
  });
  await new Promise((ok) => front.listen(0, "127.0.0.1", ok));
  try {
    const url = `ws://127.0.0.1:${front.address().port}`;
    const room = createClient({ url, persistence: null, backoff: { baseMs: 20, capMs: 50 }, connectTimeoutMs: 60_000 }).join("g");
    const log = record(room);
    await until(() => requests >= 3, "three attempts, well within the 60 s connect timeout", 5_000);
    assert.deepEqual(log.statuses[log.statuses.length - 1], { status: "reconnecting", code: 1006, reason: "connection failed" });
    room.leave();
  } finally {
    front.close();
  }
});
