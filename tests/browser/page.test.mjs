// End-to-end test of the demo page in real headless Chromium: the page is
// served by a real gathering-server, driven by clicks, in both modes:
//   offline: the in-page host (wasm) with IndexedDB, idle timeout 3 s;
//   server:  WebSocket to gathering-server, idle timeout 3 s.
// For each: create -> register -> wait for dispersal -> notice shown ->
// rejoin shows the player. Offline also survives a page reload.
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

function startServer(dataDir, extra = []) {
  const child = spawn(serverBin, [
    "--listen", "127.0.0.1:0",
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
// connection after a burst of 40 (fetches count): five other connections
// send 40 ops each at once, so the page receives 200 forwards in a moment.
// It must show them all without its own fetches going over the rate: it
// redraws from at most one fetch on its way and one every 100 ms, not one
// per forward.
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
  assert.equal(error, "", `the page's fetches were refused: ${error}`);
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
  const register = async (page, name) => {
    await page.fill("#player", name);
    await page.click("#register");
  };
  await register(a, "Ada");
  await register(b, "Bob");
  // Each op acked (its tab fetches after the ack) and forwarded to the other tab.
  for (const page of [a, b]) {
    for (const name of ["Ada", "Bob"]) {
      await page.waitForSelector(`#standings td:text-is('${name}')`, { timeout: PATIENCE });
    }
    assert.equal(await page.textContent("#room-error"), "", "no error in either tab");
  }

  // The owner reloads: the other tab takes over; its connection closed (1012).
  await a.reload();
  await a.waitForSelector("body[data-ready=true]");
  await b.waitForFunction(() => document.querySelector("#room-status").textContent.includes("1012"),
    null, { timeout: PATIENCE });
  await b.click("#rejoin");
  await b.waitForSelector("#notice", { state: "hidden" });
  assert.match(await b.textContent("#room-status"), /in this page/);
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
  console.log("ok - server: a page following a busy room shows every op, its fetches within the rate");

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
