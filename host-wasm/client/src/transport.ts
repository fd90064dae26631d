// The two ways to reach a gathering behind one small interface: a WebSocket
// to a server, or a connection of an in-page host (gathering-wasm), which
// already speaks as a WebSocket does.

/** Where a join goes, and who it is. */
export interface JoinTarget {
  /** The gathering's id. */
  id: string;
  /** The session, resumed with `since` and `epoch` when given. */
  session: string;
  since: number;
  epoch: number | null;
  /** A token for a server with `--auth-secret`, sent as `?token=`. */
  token: string | null;
  /**
   * The cluster node the last close (4001) named as the gathering's owner,
   * sent as `?node=` so that the cluster's front (HAProxy) pins the join to it.
   */
  node: string | null;
}

/** What a transport tells its room. Each is called on a later task, never during `open`. */
export interface TransportEvents {
  message(text: string): void;
  /** Called once, whoever closed, with the code (1006 when none arrived). */
  close(code: number, reason: string): void;
}

/** One connection; `send` of a closed one is ignored. */
export interface Connection {
  send(text: string): void;
  close(code: number, reason: string): void;
}

/** Opens connections to gatherings. */
export interface Transport {
  open(target: JoinTarget, events: TransportEvents): Connection;
}

/** The constructor of a WHATWG WebSocket (the global one, or `ws`'s). */
export type WebSocketConstructor = new (url: string) => WebSocket;

/** Opens WebSockets to the server at `url` (`ws://host:port` or `http(s)://`). */
export function webSocketTransport(url: string, Ctor?: WebSocketConstructor): Transport {
  const base = url.replace(/^http/, "ws").replace(/\/+$/, "");
  return {
    open(target, events) {
      const WS = Ctor ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      const query = new URLSearchParams({ session: target.session, since: String(target.since) });
      if (target.epoch !== null) query.set("epoch", String(target.epoch));
      if (target.token !== null) query.set("token", target.token);
      if (target.node !== null) query.set("node", target.node);
      const address = `${base}/gatherings/${encodeURIComponent(target.id)}?${query}`;
      let ws: WebSocket;
      try {
        if (!WS) throw new Error("no WebSocket here: pass createClient({WebSocket}) (e.g. from the ws package)");
        ws = new WS(address);
      } catch (e) {
        // Told on a later task, like any failed connection.
        setTimeout(() => events.close(1006, errorText(e)), 0);
        return { send() {}, close() {} };
      }
      let closed = false;
      ws.onmessage = (event: MessageEvent) => {
        if (typeof event.data === "string") events.message(event.data);
      };
      ws.onclose = (event: CloseEvent) => {
        if (closed) return;
        closed = true;
        events.close(event.code || 1006, event.reason || "");
      };
      // A browser follows every error with a close. Node's WebSocket
      // (undici, Node 22) fires only the error when the upgrade is answered
      // with another status (a 503 from a proxy with no server up), and
      // the close never comes: the error alone counts as the close.
      ws.onerror = () => {
        setTimeout(() => {
          if (closed) return;
          closed = true;
          events.close(1006, "connection failed");
        }, 0);
      };
      return {
        send(text) {
          if (ws.readyState === 1) ws.send(text);
        },
        close(code, reason) {
          if (closed) return;
          closed = true;
          try {
            ws.close(code, reason);
          } catch {
            ws.close();
          }
          setTimeout(() => events.close(code, reason), 0);
        },
      };
    },
  };
}

/**
 * An in-page host: `TournamentHost`, `ChatHost`, or any class of
 * `export_host!` (host-wasm), opened by the page.
 */
export interface InPageHost {
  join(id: string, options: Record<string, unknown>): InPageConnection;
}

/** A connection of an in-page host (docs/PROTOCOL.md, first section). */
export interface InPageConnection {
  send(frame: string): void;
  close(): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((code: number, reason: string) => void) | null;
}

/** Joins through an in-page host, as `member` (`{sub, role}`) if given. */
export function hostTransport(host: InPageHost, member?: { sub?: string; role?: string }): Transport {
  return {
    open(target, events) {
      let closed = false;
      const end = (code: number, reason: string) => {
        if (closed) return;
        closed = true;
        events.close(code, reason);
      };
      let conn: InPageConnection;
      try {
        const options: Record<string, unknown> = { ...member, session: target.session, since: target.since };
        if (target.epoch !== null) options.epoch = target.epoch;
        conn = host.join(target.id, options);
      } catch (e) {
        // A host shut down, or options it refuses: as a failed connection.
        setTimeout(() => end(1006, errorText(e)), 0);
        return { send() {}, close() {} };
      }
      conn.onmessage = (event) => {
        if (typeof event.data === "string") events.message(event.data);
      };
      conn.onclose = (code, reason) => setTimeout(() => end(code, reason), 0);
      return {
        send(text) {
          if (closed) return;
          try {
            conn.send(text);
          } catch {
            // Closed meanwhile: its close is on its way.
          }
        },
        close(code, reason) {
          conn.onclose = null;
          conn.close();
          setTimeout(() => end(code, reason), 0);
        },
      };
    },
  };
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
