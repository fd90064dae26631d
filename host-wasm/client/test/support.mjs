// Helpers of the client's tests: a real gathering-server process (killed
// with -9 and restarted on the same port), and a fake clock.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const serverBin = process.env.GATHERING_SERVER ?? join(root, "target/debug/gathering-server");

/** A server process on a data dir of its own; `restart` keeps dir and port. */
export class Server {
  constructor(args = []) {
    this.args = args;
    this.dir = mkdtempSync(join(tmpdir(), "gathering-client-"));
    this.listen = "127.0.0.1:0";
    this.child = null;
  }

  async start() {
    const child = spawn(serverBin, [
      "--listen", this.listen, "--admin-listen", "off", "--data-dir", this.dir,
      "--max-ops-per-sec", "0", ...this.args,
    ], { env: { ...process.env, RUST_LOG: "info" }, stdio: ["ignore", "pipe", "inherit"] });
    this.child = child;
    const addr = await new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error("the server did not print its address")), 20_000);
      child.once("exit", (code) => fail(new Error(`the server exited early (${code})`)));
      createInterface({ input: child.stdout }).on("line", (line) => {
        const m = line.match(/addr=(\S+)/);
        if (m) { clearTimeout(timer); ok(m[1]); }
      });
    });
    this.listen = addr;
    this.url = `ws://${addr}`;
    return this;
  }

  /** kill -9, then start again on the same port and data. */
  async restart() {
    await this.kill("SIGKILL");
    await this.start();
  }

  async kill(signal = "SIGTERM") {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    const gone = new Promise((ok) => child.once("exit", ok));
    child.kill(signal);
    await gone;
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  token(claims, ttl = "1h") {
    return execFileSync(serverBin, ["token", "--sub", claims.sub, "--role", claims.role,
      "--gathering", claims.gathering, "--ttl", ttl, "--auth-secret", claims.secret]).toString().trim();
  }
}

/** Resolves once `predicate()` holds, checking every 10 ms, or fails after `ms`. */
export async function until(predicate, what, ms = 20_000) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 10));
  }
}

/** A clock whose time moves only when told; timers run in due order. */
export class FakeClock {
  constructor() { this.t = 0; this.timers = new Map(); this.next = 1; }
  now() { return this.t; }
  setTimeout(run, ms) { const h = this.next++; this.timers.set(h, { at: this.t + Math.max(0, ms), run }); return h; }
  clearTimeout(h) { this.timers.delete(h); }
  /** Runs every timer due within `ms`, in order, moving time to each. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let first = null;
      for (const [h, timer] of this.timers) if (timer.at <= end && (!first || timer.at < first[1].at)) first = [h, timer];
      if (!first) break;
      this.timers.delete(first[0]);
      this.t = first[1].at;
      first[1].run();
    }
    this.t = end;
  }
  /** When the earliest timer is due, or null. */
  due() { let at = null; for (const t of this.timers.values()) if (at === null || t.at < at) at = t.at; return at; }
}

/** A seeded uniform source in [0, 1) (mulberry32). */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Records a room's events: statuses, states and ops, with the checks every test makes. */
export function record(room) {
  const log = { statuses: [], ops: [], states: [], presence: [], errors: [] };
  room.on("status", (s) => log.statuses.push(s));
  room.on("state", (state, seq) => log.states.push({ state, seq, at: log.ops.length }));
  room.on("op", (op, info) => log.ops.push({ op, ...info }));
  room.on("presence", (m) => log.presence.push(m));
  room.on("error", (e) => log.errors.push(e));
  return log;
}

/** Every op event follows the last state in seq order with no gap or repeat; returns the last seq. */
export function checkHistory(log) {
  let expected = null;
  let stateAt = 0;
  for (let i = 0; i <= log.ops.length; i++) {
    while (stateAt < log.states.length && log.states[stateAt].at === i) {
      expected = log.states[stateAt].seq + 1;
      stateAt++;
    }
    if (i === log.ops.length) break;
    if (expected === null) throw new Error("an op event came before any state");
    if (log.ops[i].seq !== expected) throw new Error(`op event ${i} has seq ${log.ops[i].seq}, expected ${expected}`);
    expected++;
  }
  return expected === null ? null : expected - 1;
}
