// gathering-client: join a gathering over a WebSocket or an in-page host,
// with sessions, reconnects, resume, exactly-once ops and presence.

import { defaultPersistence, RoomStore } from "./persist.js";
import type { Persistence } from "./persist.js";
import type { BackoffOptions } from "./policy.js";
import { Room } from "./room.js";
import { realClock } from "./types.js";
import type { Clock } from "./types.js";
import { hostTransport, webSocketTransport } from "./transport.js";
import type { InPageHost, Transport, WebSocketConstructor } from "./transport.js";

export { Backoff, closeAction } from "./policy.js";
export type { BackoffOptions, CloseAction } from "./policy.js";
export { GatheringError } from "./messages.js";
export { Room } from "./room.js";
export { realClock } from "./types.js";
export type { Clock, OpInfo, RoomEvents, RoomStatus, Status } from "./types.js";
export type { KeyValue, Persistence } from "./persist.js";
export { hostTransport, webSocketTransport } from "./transport.js";
export type { Connection, InPageConnection, InPageHost, JoinTarget, Transport, TransportEvents, WebSocketConstructor } from "./transport.js";

/** How a client reaches its gatherings, and its bounds. Give `url` or `host`. */
export interface ClientOptions {
  /** A gathering server (`ws://127.0.0.1:8080`, or `http(s)://`, made `ws(s)://`). */
  url?: string;
  /** Or an in-page host (`await TournamentHost.open()`), for the same page code offline. */
  host?: InPageHost;
  /** With `host`: who joins (`{sub, role}`), as the host's `join` takes it. */
  member?: { sub?: string; role?: string };
  /** Or any transport (tests). */
  transport?: Transport;
  /** A token for a server with `--auth-secret`: called before the first join and after each 4003 (token expired). */
  getToken?: () => string | null | Promise<string | null>;
  /** The WebSocket class where there is no global one (Node 20: `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** Where sessions and queued ops survive a reload (browsers: sessionStorage and localStorage); `null` for nowhere. */
  persistence?: Persistence | null;
  /** Reconnect delays: full jitter, from `baseMs` (500) doubling up to `capMs` (30,000), reset after `resetAfterMs` (10,000) open. */
  backoff?: BackoffOptions;
  /** Unsettled ops a room holds at most (1,000); past it `op()` rejects with `queue_full`. */
  maxQueued?: number;
  /** Ops a room keeps sent and unanswered at most (64; a server takes 256 per connection). */
  maxInFlight?: number;
  /** A page hidden this long (ms, 300,000) stops reconnecting until it is visible again. */
  hiddenPauseMs?: number;
  /** A join not welcomed this long (ms, 10,000) is given up and tried again, as a lost connection. */
  connectTimeoutMs?: number;
  /** Ops in flight and nothing heard from the server this long (ms, 15,000): the connection is counted lost and joined again. */
  stallTimeoutMs?: number;
  /** The clock and timers (tests give a fake one). */
  clock?: Clock;
  /** Uniform in [0, 1): the backoff's jitter (tests give a seeded one). */
  random?: () => number;
}

/** What `join` takes. */
export interface JoinOptions<Presence> {
  /** What this member shows everyone from the start. */
  presence?: Presence;
  /** The session to use; by default the one this tab used for this room before, else a new one. */
  session?: string;
}

/** Makes rooms; one per page or process is enough. */
export interface Client {
  /**
   * Joins gathering `id` (1 to 64 of `A-Z a-z 0-9 _ -`) and keeps it
   * joined: the returned room reconnects, resumes and sends its ops again
   * by itself until `leave()`.
   */
  join<Op = unknown, State = unknown, Presence = unknown>(id: string, options?: JoinOptions<Presence>): Room<Op, State, Presence>;
}

const ID = /^[A-Za-z0-9_-]{1,64}$/;

/** A client for `options.url` (a server) or `options.host` (an in-page host). */
export function createClient(options: ClientOptions): Client {
  const transport =
    options.transport ??
    (options.url !== undefined
      ? webSocketTransport(options.url, options.WebSocket)
      : options.host !== undefined
        ? hostTransport(options.host, options.member)
        : null);
  if (!transport) throw new TypeError("createClient needs a url (a gathering server) or a host (an in-page host)");
  const persistence = options.persistence === undefined ? defaultPersistence() : options.persistence ?? { sessions: null, ops: null };
  const scope = options.url ?? "in-page";
  const clock = options.clock ?? realClock;
  return {
    join<Op, State, Presence>(id: string, joinOptions: JoinOptions<Presence> = {}) {
      if (!ID.test(id)) throw new TypeError(`a gathering id is 1 to 64 of A-Z a-z 0-9 _ -, not ${JSON.stringify(id)}`);
      if (joinOptions.session !== undefined && !ID.test(joinOptions.session)) {
        throw new TypeError(`a session is 1 to 64 of A-Z a-z 0-9 _ -, not ${JSON.stringify(joinOptions.session)}`);
      }
      const store = new RoomStore(persistence, scope, id);
      const session = joinOptions.session ?? store.session() ?? newSession();
      store.saveSession(session);
      return new Room<Op, State, Presence>(id, session, joinOptions.presence, {
        transport,
        store,
        getToken: options.getToken ?? null,
        backoff: options.backoff ?? {},
        maxQueued: options.maxQueued ?? 1000,
        maxInFlight: Math.max(1, Math.min(options.maxInFlight ?? 64, 256)),
        hiddenPauseMs: options.hiddenPauseMs ?? 300_000,
        connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
        stallTimeoutMs: options.stallTimeoutMs ?? 15_000,
        clock,
        random: options.random ?? Math.random,
      });
    },
  };
}

/** 128 random bits, base64url: 22 characters of the session alphabet. */
function newSession(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
