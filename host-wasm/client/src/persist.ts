// What a room keeps across a page reload: its session (per tab, in
// sessionStorage) and its unsettled ops with the next op id (in
// localStorage, under the session's key), so that a reloaded page sends
// them again under the same ids and each applies exactly once.

/** The part of the Web Storage API a room uses. */
export interface KeyValue {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Where rooms keep what must survive a reload; `null` keeps nothing. */
export interface Persistence {
  /** Per tab: the session of each room (browsers: `sessionStorage`). */
  sessions: KeyValue | null;
  /** Shared: the ops of each session (browsers: `localStorage`). */
  ops: KeyValue | null;
}

/** The browser's storages where they exist (not in Node), else nothing. */
export function defaultPersistence(): Persistence {
  const g = globalThis as { sessionStorage?: KeyValue; localStorage?: KeyValue };
  return { sessions: probe(() => g.sessionStorage), ops: probe(() => g.localStorage) };
}

function probe(get: () => KeyValue | undefined): KeyValue | null {
  try {
    return get() ?? null;
  } catch {
    // A sandboxed frame, or storage disabled: throws on access.
    return null;
  }
}

/** The ops of one session as stored. */
export interface StoredOps {
  nextId: number;
  ops: { id: number; op: unknown }[];
}

/** Reads and writes one room's keys; a full or failing storage is ignored. */
export class RoomStore {
  private readonly sessionKey: string;

  constructor(private readonly persistence: Persistence, scope: string, id: string) {
    this.sessionKey = `gathering:session:${scope}:${id}`;
  }

  /** The session this tab used for the room before, if any. */
  session(): string | null {
    return tryGet(this.persistence.sessions, this.sessionKey);
  }

  saveSession(session: string): void {
    trySet(this.persistence.sessions, this.sessionKey, session);
  }

  load(session: string): StoredOps | null {
    const text = tryGet(this.persistence.ops, opsKey(session));
    if (text === null) return null;
    try {
      const parsed = JSON.parse(text) as StoredOps;
      if (typeof parsed.nextId !== "number" || !Array.isArray(parsed.ops)) return null;
      return parsed;
    } catch {
      return null;
    }
  }

  save(session: string, stored: StoredOps): void {
    const storage = this.persistence.ops;
    if (!storage) return;
    try {
      storage.setItem(opsKey(session), JSON.stringify(stored));
    } catch {
      // Quota exceeded: the ops stay in memory; only a reload loses them.
    }
  }

  forget(session: string): void {
    try {
      this.persistence.ops?.removeItem(opsKey(session));
      this.persistence.sessions?.removeItem(this.sessionKey);
    } catch {
      // Nothing to do: a storage that fails keeps nothing anyway.
    }
  }
}

const opsKey = (session: string) => `gathering:ops:${session}`;

function tryGet(storage: KeyValue | null, key: string): string | null {
  try {
    return storage?.getItem(key) ?? null;
  } catch {
    return null;
  }
}

function trySet(storage: KeyValue | null, key: string, value: string): void {
  try {
    storage?.setItem(key, value);
  } catch {
    // As above: kept in memory only.
  }
}
