// Browser benchmark of the in-page host (BENCHMARKS.md, "The in-browser host"): ops/s with
// and without IndexedDB, and dispersal lateness, in headless Chromium.
// The page is served by gathering-server (it only hosts the files here).
//
// Usage: node bench.mjs [--smoke] [path/to/gathering-server]
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const smoke = process.argv.includes("--smoke");
const serverBin = process.argv.slice(2).find((a) => !a.startsWith("--"))
  ?? join(root, "target/release/gathering-server");

const dataDir = mkdtempSync(join(tmpdir(), "gathering-bench-"));
const child = spawn(serverBin, ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--data-dir", dataDir,
  "--web-dir", join(root, "host-wasm/www")], { stdio: ["ignore", "pipe", "inherit"] });
const addr = await new Promise((ok, fail) => {
  setTimeout(() => fail(new Error("server did not start")), 15_000);
  createInterface({ input: child.stdout }).on("line", (l) => {
    const m = l.match(/addr=(\S+)/);
    if (m) ok(m[1]);
  });
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
try {
  const page = await browser.newPage();
  await page.goto(`http://${addr}/`);
  const sizes = smoke
    ? { ops: 500, window: 32, rounds: 1, gatherings: 50, idleMs: 300, spreadMs: 200 }
    : { ops: 20000, window: 64, rounds: 5, gatherings: 1000, idleMs: 1000, spreadMs: 1000 };
  const result = await page.evaluate(async (sizes) => {
    const wasm = await import("/pkg/gathering_wasm.js");
    await wasm.default();
    const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
    const q = (v, p) => { const s = [...v].sort((a, b) => a - b); return s[Math.round((s.length - 1) * p)]; };

    // One writer with `window` ops in flight, one follower acking forwards.
    async function opsPerSecond(database, round) {
      const host = await wasm.TournamentHost.open({ database });
      const id = `bench-${round}-${Math.random().toString(36).slice(2)}`;
      const writer = host.join(id);
      const follower = host.join(id);
      let forwards = 0;
      follower.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.type === "forward") { forwards++; follower.send(`{"type":"ack","seq":${m.seq}}`); }
      };
      let acked = 0, sent = 0, next = 1, done, start;
      const finished = new Promise((r) => { done = r; });
      const op = (o) => writer.send(JSON.stringify({ type: "op", id: next++, op: o }));
      const result = { type: "record_result", a: "a", b: "b", winner: "a" };
      let setup = 2;
      writer.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.type !== "ack") throw new Error(JSON.stringify(m));
        if (setup > 0) {
          if (--setup === 0) {
            start = performance.now();
            while (sent < sizes.window) { op(result); sent++; }
          }
          return;
        }
        acked++;
        if (sent < sizes.ops) { op(result); sent++; }
        if (acked === sizes.ops) done();
      };
      op({ type: "register_player", name: "a" });
      op({ type: "register_player", name: "b" });
      await finished;
      const secs = (performance.now() - start) / 1000;
      await host.shutdown();
      return { opsPerSec: sizes.ops / secs, forwardsPerSec: forwards / secs };
    }

    const out = {};
    for (const [name, db] of [["memory", null], ["indexeddb", "gathering-bench"]]) {
      const runs = [];
      for (let r = 0; r < sizes.rounds; r++) runs.push(await opsPerSecond(db, r));
      out[name] = {
        opsPerSec: median(runs.map((r) => r.opsPerSec)),
        forwardsPerSec: median(runs.map((r) => r.forwardsPerSec)),
      };
    }

    // Lateness: gatherings touched (join + close) over `spreadMs`, falling
    // due over the same spread `idleMs` later.
    const late = [];
    const onDispersed = ({ reason, lateMs }) => { if (reason !== "shutdown") late.push(lateMs); };
    const host = await wasm.TournamentHost.open({ database: null, idleTimeoutMs: sizes.idleMs, onDispersed });
    const t0 = performance.now();
    for (let i = 0; i < sizes.gatherings; i++) {
      const wait = t0 + (sizes.spreadMs * i) / sizes.gatherings - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const c = host.join(`late-${i}`);
      c.close();
    }
    while (host.gatherings().length > 0) await new Promise((r) => setTimeout(r, 20));
    await host.shutdown();
    out.lateness = { count: late.length, p50: q(late, 0.5), p99: q(late, 0.99), max: q(late, 1) };
    return out;
  }, sizes);

  const f = (n) => n.toFixed(0).padStart(10);
  console.log(`browser: ${await browser.version()}; ${sizes.ops} ops, ${sizes.window} in flight, median of ${sizes.rounds}`);
  console.log(`${"storage".padEnd(10)} ${"ops/s".padStart(10)} ${"forwards/s".padStart(10)}`);
  for (const k of ["memory", "indexeddb"]) {
    console.log(`${k.padEnd(10)} ${f(result[k].opsPerSec)} ${f(result[k].forwardsPerSec)}`);
  }
  const l = result.lateness;
  console.log(`dispersal lateness, ${l.count} gatherings due over ${sizes.spreadMs} ms: ` +
    `p50 ${l.p50.toFixed(2)} ms, p99 ${l.p99.toFixed(2)} ms, max ${l.max.toFixed(2)} ms`);
} finally {
  await browser.close();
  child.kill("SIGTERM");
  rmSync(dataDir, { recursive: true, force: true });
}
