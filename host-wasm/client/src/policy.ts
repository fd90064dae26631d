// What the client does after each close code, and how long it waits before
// trying again. Pure functions and one small class: the tests drive them
// with a fake clock and a seeded random source.

/** What a room does after its connection closed with some code. */
export type CloseAction =
  /** Try again after a backoff delay. */
  | "backoff"
  /** Try again at once. */
  | "now"
  /** Ask `getToken()` for a fresh token, then try again. */
  | "token"
  /** Stay dispersed; join again only on the next `op()` or `rejoin()`. */
  | "dispersed"
  /** Never try again: status `closed`, with the reason. */
  | "never";

/**
 * The policy per close code (docs/PROTOCOL.md, "Closing"). Codes it does
 * not name are treated like a lost connection (1006): back off and retry.
 */
export function closeAction(code: number): CloseAction {
  switch (code) {
    case 4000: // dispersed: idle, empty, evicted
      return "dispersed";
    case 1012: // the tab that ran the in-page gathering went away
    case 4001: // the gathering moved to another server
      return "now";
    case 4003: // token expired
      return "token";
    case 1000: // closed on purpose (by this client)
    case 1002: // protocol error
    case 1007: // invalid UTF-8
    case 1008: // policy: flood, lagging, too many unacknowledged forwards
    case 1009: // frame too large
    case 4002: // this session was resumed by another connection
    case 4401: // no valid token
    case 4403: // token for another gathering, or a session of another member
      return "never";
    default: // 1001 going away, 1006 lost, 1011 storage failed, 1013 full, ...
      return "backoff";
  }
}

/** How the delay before a reconnect grows. */
export interface BackoffOptions {
  /** The first attempt's ceiling, in ms (default 500). */
  baseMs?: number;
  /** The largest ceiling, in ms (default 30,000). */
  capMs?: number;
  /**
   * A connection that stayed open this long (ms, default 10,000) resets the
   * count of attempts: the next drop starts from `baseMs` again.
   */
  resetAfterMs?: number;
}

/**
 * Full-jitter exponential backoff: attempt n waits a uniformly random time
 * in [0, min(cap, base * 2^n)), so that clients dropped together do not
 * come back together.
 */
export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  readonly resetAfterMs: number;
  private attempts = 0;
  private openedAt: number | null = null;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.baseMs = options.baseMs ?? 500;
    this.capMs = options.capMs ?? 30_000;
    this.resetAfterMs = options.resetAfterMs ?? 10_000;
  }

  /** The ceiling of the next delay. */
  ceiling(): number {
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempts, 30));
  }

  /** The delay before the next attempt, counting it. */
  next(): number {
    const delay = Math.floor(this.random() * this.ceiling());
    this.attempts += 1;
    return delay;
  }

  /** The connection opened (welcomed) at `now`. */
  opened(now: number): void {
    this.openedAt = now;
  }

  /** The connection closed at `now`: resets the count if it lasted. */
  closed(now: number): void {
    if (this.openedAt !== null && now - this.openedAt >= this.resetAfterMs) this.attempts = 0;
    this.openedAt = null;
  }

  /** Attempts counted since the last reset. */
  get count(): number {
    return this.attempts;
  }
}
