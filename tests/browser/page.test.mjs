// End-to-end test of the demo page in real headless Chromium: the page is
// served by a real gathering-server, driven by clicks, in both modes:
//   offline: the in-page host (wasm) with IndexedDB, idle timeout 3 s;
//   server:  WebSocket to gathering-server, idle timeout 3 s.
// For each: create -> register -> wait for dispersal -> notice shown ->
// rejoin shows the player. Offline also survives a page reload. Then the
// client's guarantees through the page: a server killed and restarted, a
// page reloaded with ops queued, who is here, and the same results
// offline and online.
//
// Usage: node page.test.mjs [path/to/gathering-server]
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const serverBin = process.argv[2] ?? join(root, "target/debug/gathering-server");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PATIENCE = 15_000; // ms any single expectation may take

function startServer(dataDir, extra = [], listen = "127.0.0.1:0") {
  const child = spawn(serverBin, [
    "--listen", listen,
    "--admin-listen", "off",
    "--idle-timeout", "3s",
    "--data-dir", dataDir,
    "--web-dir", join(root, "host-wasm/www"),
    ...extra,
  ], { env: { ...process.env, RUST_LOG: "info" }, stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not print its address")), PATIENCE);
    child.on("exit", (code) => reject(new Error(`server exited early (${code})`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = line.match(/addr=(\S+)/);
      if (m) { clearTimeout(timer); resolvePromise({ child, addr: m[1] }); }
    });
  });
}

async function flow(page, base, mode, tournament) {
  await page.goto(`${base}/?mode=${mode}&idle=3`);
  await page.waitForSelector("body[data-ready=true]");
  await page.fill("#tournament", tournament);
  await page.click("#join");
  await page.waitForSelector("#room:not([hidden])");
  await page.fill("#player", "Ada");
  await page.click("#register");
  await page.waitForSelector("#standings td:text-is('Ada')", { timeout: PATIENCE });

  // The live list shows it with a countdown while it lives.
  await page.waitForSelector(`#gatherings td:text-is('${tournament}')`, { timeout: PATIENCE });
  const left = await page.locator(`#gatherings tr:has(td:text-is('${tournament}')) td`).nth(2).textContent();
  assert.match(left, /^\d+\.\d s$/, `countdown shown: ${left}`);

  // Idle for 3 s: the notice appears, naming the cause.
  await page.waitForSelector("#notice:not([hidden])", { timeout: PATIENCE });
  const notice = await page.textContent("#notice-text");
  assert.match(notice, /dispersed: nobody touched it/, `notice: ${notice}`);
  await page.waitForFunction(() => document.querySelector("#room-status").textContent.includes("4000"),
    null, { timeout: PATIENCE });
  // Gone from the live list.
  await page.waitForFunction((id) => ![...document.querySelectorAll("#gatherings td")]
    .some((td) => td.textContent === id), tournament, { timeout: PATIENCE });

  // Rejoin respawns it from storage: Ada is still registered.
  await page.evaluate(() => document.querySelector("#standings tbody").replaceChildren());
  await page.click("#rejoin");
  await page.waitForSelector("#notice", { state: "hidden" });
  await page.waitForSelector("#standings td:text-is('Ada')", { timeout: PATIENCE });
}

// A page following a busy room, on a server allowing 20 ops a second per
// connection after a burst of 40: five other connections send 40 ops each
// at once, so the page receives 200 forwards in a moment. It must show
// them all, with nothing refused: it applies the forwarded ops itself and
// acknowledges them in batches, sending no request of its own.
const SENDERS = 5;
const OPS_EACH = 40;
async function busyRoom(page, base, tournament) {
  await page.goto(`${base}/?mode=server`);
  await page.waitForSelector("body[data-ready=true]");
  await page.fill("#tournament", tournament);
  await page.click("#join");
  await page.waitForSelector("#room:not([hidden])");
  const acked = await page.evaluate(async ({ id, senders, n }) => {
    const sender = (from) => new Promise((done, fail) => {
      const ws = new WebSocket(`ws://${location.host}/gatherings/${id}`);
      let acks = 0;
      ws.onopen = () => {
        for (let i = 0; i < n; i++) {
          const name = `p${from + i}`;
          ws.send(JSON.stringify({ type: "op", id: i + 1, op: { type: "register_player", name } }));
        }
      };
      ws.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        if (msg.type === "error") fail(new Error(msg.message));
        if (msg.type === "ack" && ++acks === n) { ws.close(); done(acks); }
      };
      ws.onerror = () => fail(new Error("sender's connection failed"));
    });
    const all = Array.from({ length: senders }, (_, s) => sender(s * n));
    return (await Promise.all(all)).reduce((a, b) => a + b);
  }, { id: tournament, senders: SENDERS, n: OPS_EACH });
  assert.equal(acked, SENDERS * OPS_EACH);
  await page.waitForFunction((rows) => document.querySelectorAll("#standings tbody tr").length === rows,
    SENDERS * OPS_EACH, { timeout: PATIENCE });
  const error = await page.textContent("#room-error");
  assert.equal(error, "", `the page was refused: ${error}`);
}

// The page's room on a server killed with -9: an op made while it is down
// is queued, the room reconnects by itself once the server is back, and
// the op applies, without a reload.
async function serverRestart(page, tournament) {
  const dir = mkdtempSync(join(tmpdir(), "gathering-page-restart-"));
  let target = await startServer(dir, ["--allowed-origins", "*"]);
  try {
    await page.goto(`${pageBase}/?mode=server&server=ws://${target.addr}&join=${tournament}`);
    await page.waitForSelector("body[data-ready=true]");
    await register(page, "Ada");
    await page.waitForSelector("#standings td:text-is('Ada')", { timeout: PATIENCE });
    target.child.kill("SIGKILL");
    await page.waitForSelector("#room-status[data-status=reconnecting]", { timeout: PATIENCE });
    await register(page, "Bob");
    target = await startServer(dir, ["--allowed-origins", "*"], target.addr);
    await page.waitForSelector("#standings td:text-is('Bob')", { timeout: PATIENCE });
    await page.waitForSelector("#room-status[data-status=open]", { timeout: PATIENCE });
    assert.equal(await page.textContent("#room-error"), "");
  } finally {
    target.child.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  }
}

// Ops sent to a server that stopped (SIGSTOP: they may or may not be
// applied), then the page reloaded: the reloaded page resumes the same
// session and sends them again under the same ids; once the server goes
// on, it applies those it had read, and acknowledges the copies without
// applying them again. Each player appears once, and no op is refused as
// a duplicate.
async function reloadWithQueuedOps(page, tournament) {
  const dir = mkdtempSync(join(tmpdir(), "gathering-page-reload-"));
  const target = await startServer(dir, ["--allowed-origins", "*"]);
  try {
    const url = `${pageBase}/?mode=server&server=ws://${target.addr}&join=${tournament}`;
    await page.goto(url);
    await page.waitForSelector("body[data-ready=true]");
    await register(page, "Ada");
    await page.waitForSelector("#standings td:text-is('Ada')", { timeout: PATIENCE });
    target.child.kill("SIGSTOP");
    for (const name of ["Cy", "Dee", "Eve"]) await register(page, name);
    await page.reload();
    await page.waitForSelector("body[data-ready=true]");
    await page.reload(); // twice: the ops stay queued
    await page.waitForSelector("body[data-ready=true]");
    target.child.kill("SIGCONT");
    try {
      for (const name of ["Ada", "Cy", "Dee", "Eve"]) {
        await page.waitForSelector(`#standings td:text-is('${name}')`, { timeout: PATIENCE });
      }
    } catch (e) {
      const statuses = await page.evaluate(() => JSON.stringify(window.gatheringStatuses));
      throw new Error(`${e.message}; the room's statuses: ${statuses}`);
    }
    await page.waitForFunction(() => window.gatheringStatuses.at(-1)?.status === "open", null, { timeout: PATIENCE });
    const names = await page.$$eval("#standings tbody tr td:nth-child(2)", (tds) => tds.map((td) => td.textContent));
    assert.deepEqual(names.sort(), ["Ada", "Cy", "Dee", "Eve"]);
    assert.equal(await page.textContent("#room-error"), "", "no op refused as a duplicate");
  } finally {
    target.child.kill("SIGCONT");
    target.child.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  }
}

// Two pages in one room see each other in the "who is here" list, with
// whom each looks at; a page that goes away leaves the list at once.
async function presence(tournament) {
  const context = await browser.newContext();
  const [a, b] = [await context.newPage(), await context.newPage()];
  for (const page of [a, b]) {
    await page.goto(`${pageBase}/?mode=server&join=${tournament}`);
    await page.waitForSelector("body[data-ready=true]");
  }
  await register(a, "Ada");
  await b.waitForSelector("#standings td:text-is('Ada')", { timeout: PATIENCE });
  await b.waitForFunction(() => document.querySelectorAll("#here li").length === 2, null, { timeout: PATIENCE });
  await a.click("#standings td:text-is('Ada')");
  await b.waitForSelector("#here li:has-text('is looking at Ada')", { timeout: PATIENCE });
  await a.close({ runBeforeUnload: true });
  await b.waitForFunction(() => document.querySelectorAll("#here li").length === 1, null, { timeout: PATIENCE });
  assert.match(await b.textContent("#here"), /\(you\)/);
  await context.close();
}

// The same script through the client, offline (in-page host) and online
// (the server): the same op events, seqs, refusals and final state.
async function sameResults(page, suffix) {
  await page.goto(`${pageBase}/?mode=offline`);
  await page.waitForSelector("body[data-ready=true]");
  const script = async ({ mode, id }) => {
    const { createClient } = await import("/sdk/index.js");
    let client;
    if (mode === "server") {
      client = createClient({ url: location.origin, persistence: null });
    } else {
      const wasm = await import("/pkg/gathering_wasm.js");
      await wasm.default();
      const host = await wasm.TournamentHost.open({ database: null });
      client = createClient({ host, persistence: null });
    }
    const room = client.join(id);
    const events = [];
    room.on("state", (state, seq) => events.push(["state", seq, state]));
    room.on("op", (op, info) => events.push(["op", info.seq, info.own, op]));
    const results = [];
    const ops = [
      { type: "register_player", name: "Ada" },
      { type: "register_player", name: "Bob" },
      { type: "register_player", name: "Ada" },
      { type: "record_result", a: "Ada", b: "Bob", winner: "Bob" },
      { type: "drop_player", name: "Cy" },
      { type: "record_result", a: "Ada", b: "Bob", winner: null },
    ];
    for (const op of ops) {
      results.push(await room.op(op).then((seq) => ["ok", seq], (e) => ["refused", e.code]));
    }
    room.leave();
    return { results, events };
  };
  const offline = await page.evaluate(script, { mode: "offline", id: `same-${suffix}` });
  const online = await page.evaluate(script, { mode: "server", id: `same-${suffix}` });
  assert.deepEqual(online, offline);
  assert.deepEqual(offline.results.map((r) => r[0]), ["ok", "ok", "refused", "ok", "refused", "ok"]);
  assert.equal(offline.events.filter((e) => e[0] === "op").length, 4);
}

// Two tabs of the page (one browser context: one origin's IndexedDB, Web
// Locks and BroadcastChannel) open the same tournament offline. The first
// runs it; the second's ops reach it. Reloading the owner hands the
// tournament to the other tab, which loads it from IndexedDB.
async function twoTabs(base, tournament, errors) {
  const context = await browser.newContext();
  const [a, b] = [await context.newPage(), await context.newPage()];
  for (const page of [a, b]) {
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${base}/?mode=offline&idle=60`);
    await page.waitForSelector("body[data-ready=true]");
    await page.fill("#tournament", tournament);
    await page.click("#join");
    await page.waitForSelector("#room:not([hidden])");
  }
  assert.match(await a.textContent("#room-status"), /in this page/);
  assert.match(await b.textContent("#room-status"), /another tab/);
  await register(a, "Ada");
  await register(b, "Bob");
  // Each op acked to its tab and forwarded to the other.
  for (const page of [a, b]) {
    for (const name of ["Ada", "Bob"]) {
      await page.waitForSelector(`#standings td:text-is('${name}')`, { timeout: PATIENCE });
    }
    assert.equal(await page.textContent("#room-error"), "", "no error in either tab");
  }

  // The owner reloads: the other tab takes over; its connection closed (1012).
  await a.reload();
  await a.waitForSelector("body[data-ready=true]");
  // The other tab's room reconnects by itself (1012: at once), to itself.
  await b.waitForFunction(() => window.gatheringStatuses.some((s) => s.code === 1012)
    && document.querySelector("#room-status").textContent.includes("in this page"), null, { timeout: PATIENCE });
  await a.fill("#tournament", tournament);
  await a.click("#join");
  await a.waitForSelector("#room:not([hidden])");
  assert.match(await a.textContent("#room-status"), /another tab/);
  await register(a, "Cy");
  for (const page of [a, b]) {
    for (const name of ["Ada", "Bob", "Cy"]) {
      await page.waitForSelector(`#standings td:text-is('${name}')`, { timeout: PATIENCE });
    }
  }
  await context.close();
}

async function register(page, name) {
  await page.fill("#player", name);
  await page.click("#register");
}

let pageBase = null;
const dataDir = mkdtempSync(join(tmpdir(), "gathering-page-"));
const { child, addr } = await startServer(dataDir);
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
let failed = false;
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const base = `http://${addr}`;
  pageBase = base;
  const suffix = Date.now().toString(36);

  await flow(page, base, "offline", `offline-${suffix}`);
  console.log("ok - offline: create, register, disperse, notice, rejoin");

  // A reload drops the in-page host; IndexedDB still has the tournament.
  await page.reload();
  await page.waitForSelector("body[data-ready=true]");
  await page.fill("#tournament", `offline-${suffix}`);
  await page.click("#join");
  await page.waitForSelector("#standings td:text-is('Ada')", { timeout: PATIENCE });
  console.log("ok - offline: the tournament survives a page reload");

  await flow(page, base, "server", `server-${suffix}`);
  console.log("ok - server: the same page over a WebSocket to gathering-server");

  const busyDir = mkdtempSync(join(tmpdir(), "gathering-page-busy-"));
  const busy = await startServer(busyDir, ["--max-ops-per-sec", "20", "--op-burst", "40"]);
  try {
    await busyRoom(page, `http://${busy.addr}`, `busy-${suffix}`);
  } finally {
    busy.child.kill("SIGTERM");
    rmSync(busyDir, { recursive: true, force: true });
  }
  console.log("ok - server: a page following a busy room shows every op, with nothing refused");

  await serverRestart(page, `restart-${suffix}`);
  console.log("ok - server: kill -9 and restart; the room reconnects by itself and sends the op made meanwhile");

  await reloadWithQueuedOps(page, `reload-${suffix}`);
  console.log("ok - server: ops sent to a stopped server, the page reloaded twice: each applied once");

  await presence(`presence-${suffix}`);
  console.log("ok - server: who is here, with whom each looks at; a page gone leaves the list");

  await sameResults(page, suffix);
  console.log("ok - the client gives the same results through the in-page host and the server");

  await twoTabs(base, `tabs-${suffix}`, errors);
  console.log("ok - offline in two tabs: one owner, ops of both acked and forwarded, a reload hands over");

  assert.deepEqual(errors, [], "no uncaught errors in the page");
} catch (e) {
  failed = true;
  console.error("not ok -", e);
} finally {
  await browser.close();
  child.kill("SIGTERM");
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
