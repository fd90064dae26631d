// One room: a session with one gathering, kept alive across dropped
// connections, server restarts and page reloads. It sends each op under an
// id that never changes once it may have been applied, so that the
// server's session table applies it exactly once (docs/PROTOCOL.md,
// "Sessions"), and delivers every op of the gathering's history once, in
// seq order, from the state it was given.

import { Backoff, closeAction } from "./policy.js";
import type { ClientMsg, ServerMsg } from "./messages.js";
import { GatheringError, RETRY_AFTER_RESTART, RETRY_LATER } from "./messages.js";
import type { Connection } from "./transport.js";
import type { RoomContext, RoomEvents, RoomStatus, Status } from "./types.js";

/** An op not yet settled. */
interface Pending {
  id: number;
  op: unknown;
  /** Sent on the current connection, awaiting its answer. */
  sent: boolean;
  /** Ever sent (or restored from storage): its id may be applied, so it never changes. */
  mayBeApplied: boolean;
  /** The welcome said its id was applied; its ack (with its seq) is awaited. */
  applied: boolean;
  resolve: (seq: number) => void;
  reject: (error: GatheringError) => void;
}

/** How long an ack of forwards waits to cover more of them (far below the server's 1 s retry). */
const ACK_DELAY_MS = 20;
/** Forwards one ack covers at most before it goes. */
const ACK_EVERY = 32;
/** The server takes one presence update per 50 ms at most (it coalesces, too). */
const PRESENCE_INTERVAL_MS = 50;
/** The wait before an op refused for a rate or window is sent again. */
const RETRY_LATER_MS = 250;
/** How long a room waits for another to say it holds the session. */
const ASK_HOLDERS_MS = 200;

const ignore = () => {};

/**
 * A room: the client's side of one session with one gathering.
 *
 * Contract: `op()` settles exactly once: it resolves with the op's seq
 * once the op is durable, or rejects with a {@link GatheringError}; an op
 * is applied at most once, however often the connection drops or the
 * server restarts, and at least once unless it is refused or the room
 * closes for good. `op` events cover every seq after the last `state`
 * event exactly once, in order. Events are never emitted during a call of
 * the room's own methods.
 */
export class Room<Op = unknown, State = unknown, Presence = unknown> {
  /** The gathering's id. */
  readonly id: string;
  /** This room's session (kept per tab in sessionStorage, so a reload resumes it). */
  readonly session: string;
  private current: RoomStatus = { status: "connecting", code: null, reason: "" };
  private whoAmI: string | null = null;
  private members: Record<string, Presence | null> = {};

  private readonly handlers: { [K in keyof RoomEvents<Op, State, Presence>]: Set<RoomEvents<Op, State, Presence>[K]> } = {
    status: new Set(),
    state: new Set(),
    op: new Set(),
    presence: new Set(),
    error: new Set(),
  };

  // The connection.
  private conn: Connection | null = null;
  /** Bumped for every connection opened or dropped by this side: events of older ones are ignored. */
  private generation = 0;
  private welcomed = false;
  private token: string | null = null;
  private tokenFresh = false;
  private readonly backoff: Backoff;
  private timer: unknown = null;
  /** Set by the `dispersed` message; the close that follows says what to do. */
  private dispersedReason: string | null = null;
  /** The last close was answered with an attempt at once; the next is backed off. */
  private hurried = false;
  /** The cluster node a 4001 named, for the next attempt (see `connect`). */
  private nodeHint: string | null = null;

  // The history this room has delivered.
  private epoch: number | null = null;
  private connEpoch: number | null = null;
  private hasState = false;
  private delivered = 0;
  private readonly buffer = new Map<number, { op: unknown; own: boolean }>();
  private readonly ownSeqs = new Set<number>();

  // Ops.
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private unsent: Pending[] = [];
  private inFlight = 0;
  private unresolved = 0;
  /** Ops refused for a while, with whether they take a new id when sent again. */
  private retrying: { p: Pending; newId: boolean }[] = [];
  private retryTimer: unknown = null;
  private persistQueued = false;

  // Acks and presence owed to the server.
  private owedAck: number | null = null;
  private owedCount = 0;
  private ackTimer: unknown = null;
  private myPresence: { data: Presence } | null = null;
  private presenceDirty = false;
  private presenceTimer: unknown = null;
  private lastPresenceAt = -Infinity;

  // A server that stops answering (a paused process, a dead path that
  // TCP has not noticed): ops in flight and nothing heard for a while.
  private heard = 0;
  private stallTimer: unknown = null;

  // The page.
  private hiddenSince: number | null = null;
  private suspended = false;
  private readonly unlisten: (() => void)[] = [];
  /** Where the rooms of this origin (or process) say which sessions they hold. */
  private holders: BroadcastChannel | null = null;
  /** When this room last joined again after a 4002, to do so at most once a minute. */
  private lastReplacedRetry = -Infinity;

  constructor(id: string, session: string, presence: Presence | undefined, private readonly ctx: RoomContext) {
    this.id = id;
    this.session = session;
    this.backoff = new Backoff(ctx.backoff, ctx.random);
    if (presence !== undefined) this.setPresence(presence);
    this.restore();
    this.listenToPage();
    this.answerHolders();
    this.connect();
  }

  /** Where the room is, and why. */
  get status(): RoomStatus {
    return this.current;
  }

  /** The member this room acts as, once welcomed. */
  get member(): string | null {
    return this.whoAmI;
  }

  /** The seq of the last op delivered (by a `state` or an `op` event). */
  get seq(): number {
    return this.delivered;
  }

  /** Who is here, as the last `presence` event said. */
  get presence(): Record<string, Presence | null> {
    return { ...this.members };
  }

  /** Ops not yet settled (sent or queued). */
  get queued(): number {
    return this.pending.size;
  }

  /** Calls `handler` on each `event` until the returned function is called. */
  on<K extends keyof RoomEvents<Op, State, Presence>>(event: K, handler: RoomEvents<Op, State, Presence>[K]): () => void {
    const set = this.handlers[event] as Set<RoomEvents<Op, State, Presence>[K]>;
    set.add(handler);
    return () => set.delete(handler);
  }

  /**
   * Applies `op`: resolves with its seq once durable, rejects with
   * {@link GatheringError} when refused (nothing changed) or when the room
   * closes for good. Queued while disconnected (at most `maxQueued`
   * unsettled ops, past which it rejects with `queue_full`), kept across a
   * reload, and sent again under the same id until answered. On a
   * dispersed room it joins again.
   */
  op(op: Op): Promise<number> {
    if (this.current.status === "closed") {
      return Promise.reject(new GatheringError("closed", `the room is closed (${this.describe()})`));
    }
    if (this.pending.size >= this.ctx.maxQueued) {
      return Promise.reject(
        new GatheringError("queue_full", `${this.pending.size} ops are waiting to be sent (maxQueued); wait for some to settle`),
      );
    }
    return new Promise((resolve, reject) => {
      const p: Pending = { id: this.nextId++, op, sent: false, mayBeApplied: false, applied: false, resolve, reject };
      this.pending.set(p.id, p);
      this.unsent.push(p);
      this.schedulePersist();
      if (this.current.status === "dispersed") this.connect();
      else this.pump();
    });
  }

  /** Shows `data` to everyone here (the latest wins; sent at most every 50 ms, again after each reconnect). */
  setPresence(data: Presence): void {
    this.myPresence = { data };
    this.presenceDirty = true;
    this.sendPresence();
  }

  /** Joins again now: a dispersed room, a closed one (not left), or one waiting to reconnect. */
  rejoin(): void {
    if (this.current.reason === "left" && this.current.status === "closed") return;
    if (this.current.status === "open" || this.current.status === "connecting") return;
    if (this.current.status === "closed") {
      this.listenToPage();
      this.answerHolders();
    }
    this.connect();
  }

  /**
   * Leaves for good: closes with 1000 (others see this member leave at
   * once), rejects unsettled ops with `left` (each may or may not have
   * applied) and forgets the session and its stored ops.
   */
  leave(): void {
    if (this.current.status === "closed" && this.current.reason === "left") return;
    this.drop(1000, "left");
    this.ctx.store.forget(this.session);
    this.end(1000, "left", "left");
  }

  // --- connecting ------------------------------------------------------

  private connect(): void {
    this.cancelTimer();
    const generation = ++this.generation;
    // A hint for this attempt only: if that node is gone by then, the
    // front chooses again.
    const node = this.nodeHint;
    this.nodeHint = null;
    if (this.conn) this.conn.close(1000, "reconnecting");
    this.conn = null;
    this.welcomed = false;
    if (this.current.status !== "reconnecting") this.setStatus("connecting", null, "");
    void this.tokenThen(generation, () => {
      this.conn = this.ctx.transport.open(
        {
          id: this.id,
          session: this.session,
          since: this.hasState ? this.delivered : 0,
          epoch: this.hasState ? this.epoch : null,
          token: this.token,
          node,
        },
        {
          message: (text) => {
            if (generation === this.generation) this.onMessage(text);
          },
          close: (code, reason) => {
            if (generation === this.generation) this.onClose(code, reason);
          },
        },
      );
      // A handshake that neither completes nor fails (a peer gone
      // mid-handshake) is given up on, as a lost connection.
      this.timer = this.ctx.clock.setTimeout(() => {
        this.timer = null;
        if (generation !== this.generation || this.welcomed) return;
        const conn = this.conn;
        this.onClose(1006, `no welcome within ${this.ctx.connectTimeoutMs} ms`);
        conn?.close(1000, "timed out");
      }, this.ctx.connectTimeoutMs);
    });
  }

  /** Runs `open` with a token: the one held, or a fresh one when none or it expired. */
  private async tokenThen(generation: number, open: () => void): Promise<void> {
    if (this.ctx.getToken && !this.tokenFresh) {
      try {
        this.token = await this.ctx.getToken();
        this.tokenFresh = true;
      } catch (e) {
        if (generation !== this.generation) return;
        this.generation++;
        this.retryAfterBackoff(null, `getToken failed: ${e instanceof Error ? e.message : String(e)}`);
        return;
      }
    }
    if (generation === this.generation) open();
  }

  private onClose(code: number, reason: string): void {
    this.generation++;
    this.conn = null;
    const wasWelcomed = this.welcomed;
    this.disconnected();
    const dispersed = this.dispersedReason;
    this.dispersedReason = null;
    const action = closeAction(code);
    // 4001 from a cluster names where the gathering is: `node N at URL`.
    if (code === 4001) this.nodeHint = /^node (\S+) at \S+$/.exec(reason)?.[1] ?? null;
    const hurried = this.hurried;
    this.hurried = false;
    switch (action) {
      case "dispersed":
        this.setMembers({});
        this.setStatus("dispersed", code, dispersed ?? reason);
        // Ops waiting are the next op(): their own reason to join again.
        if (this.pending.size > 0) this.connect();
        return;
      case "never":
        if (code === 4002) return this.replaced(reason);
        this.end(code, reason, "closed");
        return;
      case "token":
        this.tokenFresh = false;
      // falls through
      case "now":
        if (wasWelcomed || !hurried) {
          this.hurried = true;
          this.setStatus("reconnecting", code, reason);
          this.connect();
          return;
        }
        this.retryAfterBackoff(code, reason);
        return;
      case "backoff":
        this.retryAfterBackoff(code, dispersed ?? reason);
        return;
    }
  }

  /**
   * 4002: another connection of this session joined. When it is another
   * live room (a duplicated tab), this one stays closed. When no room here
   * holds the session, the other connection was this tab's own from before
   * a reload, which a slow server let join late: this room joins again,
   * after a backoff, and at most once a minute, so that two holders this
   * channel cannot see do not take the session from each other forever.
   */
  private replaced(reason: string): void {
    const holders = this.holders;
    const now = this.ctx.clock.now();
    if (!holders || now - this.lastReplacedRetry < 60_000) {
      this.end(4002, reason, "closed");
      return;
    }
    const generation = this.generation;
    const answer = (e: MessageEvent) => {
      if (e.data?.held !== this.session || generation !== this.generation) return;
      holders.removeEventListener("message", answer);
      this.end(4002, reason, "closed");
    };
    holders.addEventListener("message", answer);
    holders.postMessage({ ask: this.session });
    this.setStatus("reconnecting", 4002, reason);
    this.cancelTimer();
    this.timer = this.ctx.clock.setTimeout(() => {
      this.timer = null;
      holders.removeEventListener("message", answer);
      this.lastReplacedRetry = this.ctx.clock.now();
      this.retryAfterBackoff(4002, reason);
    }, ASK_HOLDERS_MS);
  }

  private retryAfterBackoff(code: number | null, reason: string): void {
    this.setStatus("reconnecting", code, reason);
    this.cancelTimer();
    this.timer = this.ctx.clock.setTimeout(() => {
      this.timer = null;
      if (this.pausedWhileHidden()) return;
      this.connect();
    }, this.backoff.next());
  }

  /** Hidden for long: no attempts until the page is visible again. */
  private pausedWhileHidden(): boolean {
    return (
      this.suspended ||
      (this.hiddenSince !== null && this.ctx.clock.now() - this.hiddenSince >= this.ctx.hiddenPauseMs)
    );
  }

  /** What a connection held that ends with it. */
  private disconnected(): void {
    this.backoff.closed(this.ctx.clock.now());
    this.welcomed = false;
    this.inFlight = 0;
    for (const p of this.pending.values()) p.sent = false;
    this.owedAck = null;
    this.owedCount = 0;
    this.clear("ackTimer");
    this.clear("presenceTimer");
    this.clear("stallTimer");
    if (this.myPresence) this.presenceDirty = true;
  }

  /** Closes the current connection from this side; its close event is ignored. */
  private drop(code: number, reason: string): void {
    this.generation++;
    this.cancelTimer();
    const conn = this.conn;
    this.conn = null;
    if (conn) {
      this.flushAck(conn);
      conn.close(code, reason);
    }
    this.disconnected();
  }

  /** Closed for good: rejects what waits. */
  private end(code: number, reason: string, errorCode: string): void {
    this.cancelTimer();
    this.clear("retryTimer");
    for (const stop of this.unlisten.splice(0)) stop();
    const message =
      errorCode === "left"
        ? "the room was left before this op was answered; it may or may not have applied"
        : `the room closed (${code}${reason ? `: ${reason}` : ""}); this op may or may not have applied`;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    this.unsent = [];
    this.retrying = [];
    this.unresolved = 0;
    // Another connection holds this session (4002): its ops are its own.
    if (code !== 4002 && errorCode !== "left") this.schedulePersist();
    this.setMembers({});
    this.setStatus("closed", code, reason);
    for (const p of waiting) p.reject(new GatheringError(errorCode, message));
  }

  // --- messages --------------------------------------------------------

  private onMessage(text: string): void {
    this.heard++;
    let msg: ServerMsg;
    try {
      msg = JSON.parse(text) as ServerMsg;
    } catch {
      return;
    }
    switch (msg.type) {
      case "welcome":
        return this.onWelcome(msg.member, msg.epoch, msg.last_op);
      case "resync":
        return this.onState(msg.seq, msg.state as State);
      case "forward":
        this.oweAck(msg.seq);
        if (msg.seq > this.delivered && !this.buffer.has(msg.seq)) {
          this.buffer.set(msg.seq, { op: msg.op, own: this.ownSeqs.has(msg.seq) });
        }
        return this.deliver();
      case "ack":
        return this.onAck(msg.id, msg.seq);
      case "error":
        return this.onError(msg.id, msg.code, msg.message);
      case "dispersed":
        this.dispersedReason = msg.reason;
        return;
      case "presence":
        return this.setMembers(msg.members as Record<string, Presence | null>);
      case "presence_diff": {
        const members = { ...this.members };
        for (const gone of msg.leaves) delete members[gone];
        Object.assign(members, msg.joins);
        return this.setMembers(members);
      }
      case "state":
        return;
    }
  }

  private onWelcome(member: string, epoch: number, lastOp: number | null): void {
    this.welcomed = true;
    this.cancelTimer();
    this.whoAmI = member;
    this.connEpoch = epoch;
    this.backoff.opened(this.ctx.clock.now());
    // What was missed comes again (forwards after `since`, or a resync).
    this.buffer.clear();
    if (this.epoch !== epoch) this.ownSeqs.clear();
    const applied = lastOp ?? 0;
    this.nextId = Math.max(this.nextId, applied + 1);
    // Ids at or below the highest applied: those that may have been sent
    // were applied, and their acks (with their seqs) will say as what;
    // those never sent take a fresh id, or the server would take them for
    // the op it applied under theirs.
    const fresh: Pending[] = [];
    this.unresolved = 0;
    for (const p of this.pending.values()) {
      p.applied = p.id <= applied && p.mayBeApplied;
      if (p.applied) this.unresolved++;
      else if (p.id <= applied) fresh.push(p);
    }
    for (const p of fresh) {
      this.pending.delete(p.id);
      p.id = this.nextId++;
      this.pending.set(p.id, p);
    }
    this.retrying = [];
    this.clear("retryTimer");
    this.unsent = [...this.pending.values()];
    this.hurried = false;
    this.setStatus("open", null, "");
    this.sendPresence();
    this.pump();
  }

  private onState(seq: number, state: State): void {
    this.hasState = true;
    this.epoch = this.connEpoch;
    this.delivered = seq;
    for (const s of this.buffer.keys()) if (s <= seq) this.buffer.delete(s);
    for (const s of this.ownSeqs) if (s <= seq) this.ownSeqs.delete(s);
    this.emit("state", state, seq);
    this.deliver();
  }

  private onAck(id: number, seq: number): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.sent) this.inFlight--;
    if (p.applied) this.unresolved--;
    if (seq > this.delivered) {
      this.ownSeqs.add(seq);
      this.buffer.set(seq, { op: p.op, own: true });
    }
    this.schedulePersist();
    p.resolve(seq);
    this.deliver();
    this.pump();
  }

  private onError(id: number | null, code: string, message: string): void {
    const p = id === null ? undefined : this.pending.get(id);
    if (!p) {
      if (id === null) this.emit("error", new GatheringError(code, message));
      return;
    }
    if (p.sent) this.inFlight--;
    p.sent = false;
    if (RETRY_LATER.has(code) || RETRY_AFTER_RESTART.has(code)) {
      // Refused for a rate or a window: not applied, so a new id (the
      // server answers a lower id than its highest applied with stale_op).
      // Not durable: it may yet be, so the same id.
      this.retrying.push({ p, newId: RETRY_LATER.has(code) });
      if (this.retryTimer === null) {
        this.retryTimer = this.ctx.clock.setTimeout(() => this.retryHeld(), RETRY_LATER_MS);
      }
      this.pump();
      return;
    }
    this.pending.delete(p.id);
    if (p.applied) this.unresolved--;
    this.schedulePersist();
    p.reject(new GatheringError(code, message));
    this.deliver();
    this.pump();
  }

  /** Sends again the ops refused for a while. */
  private retryHeld(): void {
    this.retryTimer = null;
    const held = this.retrying.filter(({ p }) => this.pending.get(p.id) === p && !p.sent);
    this.retrying = [];
    for (const { p, newId } of held) {
      if (newId) {
        this.pending.delete(p.id);
        p.id = this.nextId++;
        p.mayBeApplied = false;
        this.pending.set(p.id, p);
      }
      this.unsent.push(p);
    }
    this.schedulePersist();
    this.pump();
  }

  // --- sending ---------------------------------------------------------

  /** Sends queued ops while the window has room. */
  private pump(): void {
    const conn = this.conn;
    if (!conn || !this.welcomed) return;
    let i = 0;
    while (this.inFlight < this.ctx.maxInFlight && i < this.unsent.length) {
      const p = this.unsent[i++];
      if (this.pending.get(p.id) !== p || p.sent) continue;
      this.flushAck(conn);
      p.sent = true;
      p.mayBeApplied = true;
      this.inFlight++;
      this.send(conn, { type: "op", id: p.id, op: p.op });
    }
    this.unsent = this.unsent.slice(i);
    this.watchStall();
  }

  /**
   * While ops are in flight, checks every `stallTimeoutMs` that something
   * arrived since the last check; when nothing did, the connection is
   * counted lost and the room joins again (with a cluster, possibly on
   * the node that took the gathering over).
   */
  private watchStall(): void {
    if (this.stallTimer !== null || this.inFlight === 0 || !this.welcomed) return;
    const generation = this.generation;
    const heard = this.heard;
    this.stallTimer = this.ctx.clock.setTimeout(() => {
      this.stallTimer = null;
      if (generation !== this.generation || !this.welcomed || this.inFlight === 0) return;
      if (this.heard !== heard) return this.watchStall();
      const conn = this.conn;
      this.onClose(1006, `nothing heard for ${this.ctx.stallTimeoutMs} ms with ops in flight`);
      conn?.close(1000, "stalled");
    }, this.ctx.stallTimeoutMs);
  }

  private send(conn: Connection, msg: ClientMsg): void {
    conn.send(JSON.stringify(msg));
  }

  /** Notes forward `seq`: one cumulative ack covers it, sent with the next op, after 20 ms, or once 32 are owed. */
  private oweAck(seq: number): void {
    this.owedAck = Math.max(this.owedAck ?? 0, seq);
    this.owedCount++;
    if (this.owedCount >= ACK_EVERY) {
      if (this.conn) this.flushAck(this.conn);
    } else if (this.ackTimer === null) {
      this.ackTimer = this.ctx.clock.setTimeout(() => {
        this.ackTimer = null;
        if (this.conn) this.flushAck(this.conn);
      }, ACK_DELAY_MS);
    }
  }

  private flushAck(conn: Connection): void {
    if (this.owedAck === null) return;
    this.send(conn, { type: "ack", seq: this.owedAck });
    this.owedAck = null;
    this.owedCount = 0;
    this.clear("ackTimer");
  }

  private sendPresence(): void {
    const conn = this.conn;
    if (!conn || !this.welcomed || !this.presenceDirty || !this.myPresence || this.presenceTimer !== null) return;
    const wait = this.lastPresenceAt + PRESENCE_INTERVAL_MS - this.ctx.clock.now();
    if (wait > 0) {
      this.presenceTimer = this.ctx.clock.setTimeout(() => {
        this.presenceTimer = null;
        this.sendPresence();
      }, wait);
      return;
    }
    this.presenceDirty = false;
    this.lastPresenceAt = this.ctx.clock.now();
    this.send(conn, { type: "presence", data: this.myPresence.data });
  }

  // --- delivering ------------------------------------------------------

  /**
   * Emits buffered ops in seq order. Held while an op the welcome said was
   * applied waits for its ack: until then a forward could be this room's own.
   */
  private deliver(): void {
    if (!this.hasState || this.unresolved > 0) return;
    for (;;) {
      const next = this.buffer.get(this.delivered + 1);
      if (!next) return;
      this.buffer.delete(this.delivered + 1);
      this.delivered++;
      this.ownSeqs.delete(this.delivered);
      this.emit("op", next.op as Op, { seq: this.delivered, own: next.own });
    }
  }

  private setMembers(members: Record<string, Presence | null>): void {
    const was = Object.keys(this.members).length;
    this.members = members;
    if (was > 0 || Object.keys(members).length > 0) this.emit("presence", { ...members });
  }

  private setStatus(status: Status, code: number | null, reason: string): void {
    if (this.current.status === status && this.current.code === code && this.current.reason === reason) return;
    this.current = { status, code, reason };
    this.emit("status", this.current);
  }

  private emit<K extends keyof RoomEvents<Op, State, Presence>>(
    event: K,
    ...args: Parameters<RoomEvents<Op, State, Presence>[K]>
  ): void {
    for (const handler of this.handlers[event]) {
      try {
        (handler as (...a: unknown[]) => void)(...args);
      } catch (e) {
        console.error(`gathering-client: a ${event} handler threw`, e);
      }
    }
  }

  private describe(): string {
    const { code, reason } = this.current;
    return code === null ? reason : `${code}${reason ? `: ${reason}` : ""}`;
  }

  // --- storage ---------------------------------------------------------

  private restore(): void {
    const stored = this.ctx.store.load(this.session);
    if (!stored) return;
    this.nextId = Math.max(this.nextId, stored.nextId);
    for (const { id, op } of stored.ops.slice(0, this.ctx.maxQueued)) {
      if (typeof id !== "number" || this.pending.has(id)) continue;
      const p: Pending = { id, op, sent: false, mayBeApplied: true, applied: false, resolve: ignore, reject: ignore };
      this.pending.set(id, p);
      this.unsent.push(p);
      this.nextId = Math.max(this.nextId, id + 1);
    }
  }

  /** Writes the unsettled ops once per task, however many changed. */
  private schedulePersist(): void {
    if (this.persistQueued) return;
    this.persistQueued = true;
    queueMicrotask(() => this.persistNow());
  }

  private persistNow(): void {
    this.persistQueued = false;
    const ops = [...this.pending.values()].map((p) => ({ id: p.id, op: p.op }));
    this.ctx.store.save(this.session, { nextId: this.nextId, ops });
  }

  // --- the page --------------------------------------------------------

  /** Reconnects at once when the page comes back online or visible; leaves cleanly on pagehide. */
  private listenToPage(): void {
    const target = globalThis as unknown as {
      addEventListener?: (type: string, f: (e: Event) => void) => void;
      removeEventListener?: (type: string, f: (e: Event) => void) => void;
      document?: { visibilityState: string; addEventListener: (t: string, f: () => void) => void; removeEventListener: (t: string, f: () => void) => void };
    };
    if (!target.addEventListener || !target.removeEventListener || !target.document) return;
    const doc = target.document;
    const now = () => this.ctx.clock.now();
    if (doc.visibilityState === "hidden") this.hiddenSince = now();
    const back = () => {
      if (this.current.status === "reconnecting" && this.conn === null && !this.suspended) this.connect();
    };
    const visibility = () => {
      if (doc.visibilityState === "hidden") {
        this.hiddenSince ??= now();
      } else {
        this.hiddenSince = null;
        back();
      }
    };
    const pagehide = () => {
      this.persistNow();
      if (this.current.status === "closed") return;
      this.suspended = true;
      // A clean leave: others see this member go at once.
      this.drop(1000, "page hidden");
      if (this.current.status !== "dispersed") this.setStatus("reconnecting", 1000, "page hidden");
    };
    const pageshow = (e: Event) => {
      if (!this.suspended) return;
      this.suspended = false;
      if ((e as { persisted?: boolean }).persisted && this.current.status === "reconnecting") this.connect();
    };
    const add = (type: string, f: (e: Event) => void) => {
      target.addEventListener!(type, f);
      this.unlisten.push(() => target.removeEventListener!(type, f));
    };
    add("online", back);
    add("pagehide", pagehide);
    add("pageshow", pageshow);
    doc.addEventListener("visibilitychange", visibility);
    this.unlisten.push(() => doc.removeEventListener("visibilitychange", visibility));
  }

  /** Answers rooms asking whether this one holds its session (see `replaced`). */
  private answerHolders(): void {
    const Channel = (globalThis as { BroadcastChannel?: typeof BroadcastChannel }).BroadcastChannel;
    if (!Channel || this.holders) return;
    const holders = new Channel("gathering-client:sessions");
    holders.onmessage = (e: MessageEvent) => {
      if (e.data?.ask === this.session && this.current.status !== "closed") holders.postMessage({ held: this.session });
    };
    // In Node, an open channel would keep the process alive.
    (holders as unknown as { unref?: () => void }).unref?.();
    this.holders = holders;
    this.unlisten.push(() => {
      holders.close();
      this.holders = null;
    });
  }

  private cancelTimer(): void {
    this.clear("timer");
  }

  private clear(name: "timer" | "ackTimer" | "presenceTimer" | "retryTimer" | "stallTimer"): void {
    if (this[name] !== null) {
      this.ctx.clock.clearTimeout(this[name]);
      this[name] = null;
    }
  }
}
