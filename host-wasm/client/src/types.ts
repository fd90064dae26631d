// What a room shows and needs: its status, events and context, and the
// clock it runs on.

import type { GatheringError } from "./messages.js";
import type { BackoffOptions } from "./policy.js";
import type { RoomStore } from "./persist.js";
import type { Transport } from "./transport.js";

/** Where a room is. */
export type Status = "connecting" | "open" | "reconnecting" | "dispersed" | "closed";

/** A room's status and why it is there (the close code and reason that led to it). */
export interface RoomStatus {
  status: Status;
  /** The close code that led here, `null` when none did. */
  code: number | null;
  /** Why, for people: the close reason, or the dispersal's (`idle`, `empty`, `evicted`). */
  reason: string;
}

/** How an op event came. */
export interface OpInfo {
  /** Its number in the gathering's history. */
  seq: number;
  /** Whether this room sent it (then `op()` resolved, or will, with `seq`). */
  own: boolean;
}

/** The events of a room and what each handler receives. */
export interface RoomEvents<Op, State, Presence> {
  /** The status changed. */
  status: (status: RoomStatus) => void;
  /** The whole state as of op `seq`: on the first join, and whenever the room was resynced. */
  state: (state: State, seq: number) => void;
  /** The op numbered `info.seq`; every op after the last `state`, once each, in seq order. */
  op: (op: Op, info: OpInfo) => void;
  /** Who is here, after every change: each member's data (`null` if it set none). */
  presence: (members: Record<string, Presence | null>) => void;
  /** A frame the server could not read (`bad_frame`): a bug, not a refusal of an op. */
  error: (error: GatheringError) => void;
}

/** A clock with timers; tests give a fake one. */
export interface Clock {
  now(): number;
  setTimeout(run: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The clock of the page or process. */
export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (run, ms) => setTimeout(run, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** What a room needs from its client. */
export interface RoomContext {
  transport: Transport;
  store: RoomStore;
  getToken: (() => string | null | Promise<string | null>) | null;
  backoff: BackoffOptions;
  maxQueued: number;
  maxInFlight: number;
  hiddenPauseMs: number;
  connectTimeoutMs: number;
  stallTimeoutMs: number;
  clock: Clock;
  random: () => number;
}
