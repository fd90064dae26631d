//! The cluster's tables and statements, in the SQL that PostgreSQL and the
//! databases speaking its protocol (CockroachDB, YugabyteDB) share: no
//! advisory locks, no stored procedures, times only from `now()`.

/// The tables, created if missing when a node starts.
///
/// - `gathering_nodes`: one row per node, its address and its lease, which
///   only the database's clock judges.
/// - `gathering_owners`: one row per gathering ever claimed, the node that
///   owns it (`NULL`: released) and the epoch of that claim; every commit
///   of the gathering is conditional on it.
/// - `gathering_snapshots` and `gathering_log`: what a gathering is loaded
///   from, as the embedded store keeps it (its sessions are in them).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS gathering_nodes (
        node text PRIMARY KEY,
        advertise text NOT NULL,
        lease_until timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS gathering_owners (
        app text NOT NULL,
        id text NOT NULL,
        node text,
        epoch bigint NOT NULL,
        seq bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (app, id))",
    "CREATE TABLE IF NOT EXISTS gathering_snapshots (
        app text NOT NULL,
        id text NOT NULL,
        seq bigint NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (app, id))",
    "CREATE TABLE IF NOT EXISTS gathering_log (
        app text NOT NULL,
        id text NOT NULL,
        seq bigint NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY (app, id, seq))",
];

/// Renews (or first takes) the lease of node `$1` at address `$2` for
/// `$3` milliseconds from the database's now.
pub const RENEW: &str = "INSERT INTO gathering_nodes (node, advertise, lease_until)
    VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
    ON CONFLICT (node) DO UPDATE
    SET advertise = EXCLUDED.advertise, lease_until = EXCLUDED.lease_until";

/// A node that leaves: its gatherings may be claimed at once.
pub const LEAVE: &str = "DELETE FROM gathering_nodes WHERE node = $1";

/// The owners row, made if missing, so that the claim below can lock it.
pub const ENSURE_OWNER_ROW: &str = "INSERT INTO gathering_owners (app, id, node, epoch)
    VALUES ($1, $2, NULL, 0) ON CONFLICT (app, id) DO NOTHING";

/// Claims gathering (`$1`, `$2`) for node `$3`, with the next epoch, if no
/// other live node owns it and `$3`'s own lease is live. The row lock it
/// takes is held until the claim's transaction reads the state and commits,
/// so a commit of the previous owner lands wholly before it or is fenced.
pub const CLAIM: &str = "UPDATE gathering_owners AS o SET node = $3, epoch = o.epoch + 1
    WHERE o.app = $1 AND o.id = $2
      AND (o.node IS NULL OR o.node = $3 OR NOT EXISTS (
        SELECT 1 FROM gathering_nodes n WHERE n.node = o.node AND n.lease_until > now()))
      AND EXISTS (
        SELECT 1 FROM gathering_nodes n WHERE n.node = $3 AND n.lease_until > now())
    RETURNING o.epoch";

/// The live owner of gathering (`$1`, `$2`), with its address.
pub const OWNER: &str = "SELECT o.node, n.advertise FROM gathering_owners o
    JOIN gathering_nodes n ON n.node = o.node
    WHERE o.app = $1 AND o.id = $2 AND n.lease_until > now()";

/// The snapshot of gathering (`$1`, `$2`).
pub const SNAPSHOT: &str = "SELECT seq, state FROM gathering_snapshots WHERE app = $1 AND id = $2";

/// Its log after op `$3`, in order.
pub const LOG: &str = "SELECT seq, entry FROM gathering_log
    WHERE app = $1 AND id = $2 AND seq > $3 ORDER BY seq";

/// The fence of a group commit by node `$2` of app `$1`: gatherings `$3`,
/// whose epochs this node holds are `$4`, move their durable op numbers to
/// `$5`. Returns the ids it let through; any other is fenced, because
/// another node claimed it, or because `$2`'s lease ran out (by the
/// database's clock), so that another may claim it any moment.
pub const FENCE: &str = "UPDATE gathering_owners AS o SET seq = t.seq
    FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS t (id, epoch, seq)
    WHERE o.app = $1 AND o.id = t.id AND o.node = $2 AND o.epoch = t.epoch
      AND EXISTS (
        SELECT 1 FROM gathering_nodes n WHERE n.node = $2 AND n.lease_until > now())
    RETURNING o.id";

/// Appends log entries to app `$1`'s gatherings: `$2` ids, `$3` seqs,
/// `$4` bytes, one element per entry.
pub const APPEND: &str = "INSERT INTO gathering_log (app, id, seq, entry)
    SELECT $1, i, s, e FROM unnest($2::text[], $3::bigint[], $4::bytea[]) AS t (i, s, e)";

/// Replaces the snapshot of (`$1`, `$2`) with state `$4` as of op `$3`.
pub const PUT_SNAPSHOT: &str = "INSERT INTO gathering_snapshots (app, id, seq, state)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (app, id) DO UPDATE SET seq = EXCLUDED.seq, state = EXCLUDED.state";

/// Drops the log entries of (`$1`, `$2`) that the snapshot at `$3` covers.
pub const TRIM: &str = "DELETE FROM gathering_log WHERE app = $1 AND id = $2 AND seq <= $3";

/// Lets gathering (`$1`, `$2`) go, if node `$3` still holds it at epoch `$4`.
pub const RELEASE: &str = "UPDATE gathering_owners SET node = NULL
    WHERE app = $1 AND id = $2 AND node = $3 AND epoch = $4";
