// The JSON messages of docs/PROTOCOL.md that the client sends and reads.

/** A message to the server. */
export type ClientMsg =
  | { type: "op"; id: number; op: unknown }
  | { type: "ack"; seq: number }
  | { type: "presence"; data: unknown };

/** A message from the server. */
export type ServerMsg =
  | { type: "ack"; id: number; seq: number }
  | { type: "error"; id: number | null; code: string; message: string }
  | { type: "forward"; seq: number; op: unknown }
  | { type: "state"; id: number; seq: number; state: unknown }
  | { type: "dispersed"; reason: string }
  | { type: "welcome"; member: string; epoch: number; seq: number; last_op: number | null }
  | { type: "resync"; seq: number; state: unknown }
  | { type: "presence"; members: Record<string, unknown> }
  | { type: "presence_diff"; joins: Record<string, unknown>; leaves: string[] };

/** A refusal: an op the gathering did not apply, or a room that cannot go on. */
export class GatheringError extends Error {
  /**
   * The server's error code (`forbidden`, `duplicate_player`, ...), or one
   * of the client's own: `queue_full` (too many ops unsettled), `closed`
   * (the room closed for good; the op may or may not have applied), `left`
   * (the same, after `leave()`).
   */
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = "GatheringError";
    this.code = code;
  }
}

/** Error codes after which the op was not applied and is sent again, under a new id, later. */
export const RETRY_LATER = new Set(["rate_limited", "too_many_in_flight"]);

/** Error codes after which the op is sent again under the same id once the gathering is back. */
export const RETRY_AFTER_RESTART = new Set(["not_durable", "storage_failed"]);
