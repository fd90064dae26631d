//! Durable storage of gathering snapshots.

use std::fmt;
use std::path::Path;

use gathering_core::{Commit, GatheringId, Loaded, LogEntry, Snapshot};
pub use gathering_driver::StoreError;
use redb::{Database, ReadableDatabase, TableDefinition};

/// One gathering's commit, in a group written together.
#[derive(Clone, Debug)]
pub struct Write {
    /// The gathering.
    pub id: GatheringId,
    /// What it asked to make durable.
    pub commit: Commit,
}

/// Where one application's gatherings live between spawns: each one's
/// latest snapshot and the log of ops after it.
///
/// Contract: [`Store::commit`] writes all of `writes` or none (each as
/// [`Commit`] says: log entries appended, or a snapshot that replaces the
/// snapshot and deletes the entries it covers), and when it returns `Ok`
/// they survive a crash of the process or the machine. Both methods block;
/// the server calls them off its async threads. A store serves one
/// application (see [`RedbStore::open`]): gatherings of another app with
/// the same id are not its business.
pub trait Store: Send + Sync + 'static {
    /// What is kept of `id` (`Loaded::default()` if it was never persisted).
    fn load(&self, id: &GatheringId) -> Result<Loaded, StoreError>;

    /// Writes a batch atomically and durably.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;
}

/// Snapshots of one app's gatherings: id -> (seq, state).
type Snapshots<'a> = TableDefinition<'a, &'static str, (u64, &'static [u8])>;
/// The log of one app's gatherings: (id, seq) -> entry.
type Log<'a> = TableDefinition<'a, (&'static str, u64), &'static [u8]>;

/// The embedded store: one redb file, `gatherings.redb`, in the data
/// directory, with two tables per application, named by
/// [`gathering_core::App::NAME`] (snapshots) and `NAME.log` (the op log),
/// so apps sharing a data directory never read each other's gatherings.
/// Every commit is one write transaction, fsynced before it returns: the
/// group's log entries, snapshots and the deletion of the entries they
/// cover land together or not at all.
pub struct RedbStore {
    db: Database,
    snapshots: String,
    log: String,
}

fn err(doing: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("{doing}: {e}"))
}

impl RedbStore {
    /// Opens (creating if needed) the store in directory `dir`, for the
    /// application named `app`.
    pub fn open(dir: &Path, app: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(
                &format!("cannot create data directory {}", dir.display()),
                e,
            )
        })?;
        let path = dir.join("gatherings.redb");
        let db = Database::create(&path)
            .map_err(|e| err(&format!("cannot open database {}", path.display()), e))?;
        let store = RedbStore {
            db,
            snapshots: app.to_owned(),
            log: format!("{app}.log"),
        };
        let tx = store
            .db
            .begin_write()
            .map_err(|e| err("cannot start a write", e))?;
        tx.open_table(store.snapshots())
            .map_err(|e| err(&format!("cannot create the table of {app}"), e))?;
        tx.open_table(store.log())
            .map_err(|e| err(&format!("cannot create the log of {app}"), e))?;
        tx.commit().map_err(|e| err("cannot commit", e))?;
        Ok(store)
    }

    fn snapshots(&self) -> Snapshots<'_> {
        TableDefinition::new(&self.snapshots)
    }

    fn log(&self) -> Log<'_> {
        TableDefinition::new(&self.log)
    }
}

impl Store for RedbStore {
    fn load(&self, id: &GatheringId) -> Result<Loaded, StoreError> {
        let doing = || format!("cannot read gathering {id}");
        let tx = self
            .db
            .begin_read()
            .map_err(|e| err("cannot start a read", e))?;
        let snapshots = tx
            .open_table(self.snapshots())
            .map_err(|e| err("cannot open the snapshot table", e))?;
        let snapshot = snapshots
            .get(id.as_str())
            .map_err(|e| err(&doing(), e))?
            .map(|guard| {
                let (seq, bytes) = guard.value();
                Snapshot {
                    seq,
                    bytes: bytes.to_vec(),
                }
            });
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let log = tx
            .open_table(self.log())
            .map_err(|e| err("cannot open the log table", e))?;
        let mut entries = Vec::new();
        let from = (id.as_str(), after.saturating_add(1));
        let to = (id.as_str(), u64::MAX);
        for row in log.range(from..=to).map_err(|e| err(&doing(), e))? {
            let (key, value) = row.map_err(|e| err(&doing(), e))?;
            entries.push(LogEntry {
                seq: key.value().1,
                bytes: value.value().to_vec(),
            });
        }
        Ok(Loaded {
            snapshot,
            log: entries,
        })
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| err("cannot start a write", e))?;
        {
            let mut snapshots = tx
                .open_table(self.snapshots())
                .map_err(|e| err("cannot open the snapshot table", e))?;
            let mut log = tx
                .open_table(self.log())
                .map_err(|e| err("cannot open the log table", e))?;
            for w in writes {
                let id = w.id.as_str();
                let doing = || format!("cannot write gathering {}", w.id);
                match &w.commit.snapshot {
                    Some(bytes) => {
                        snapshots
                            .insert(id, (w.commit.seq, bytes.as_slice()))
                            .map_err(|e| err(&doing(), e))?;
                        // The entries the snapshot covers go in the same
                        // transaction: a crash leaves both or neither.
                        log.retain_in((id, 0)..=(id, w.commit.seq), |_, _| false)
                            .map_err(|e| err(&doing(), e))?;
                    }
                    None => {
                        for entry in &w.commit.log {
                            log.insert((id, entry.seq), entry.bytes.as_slice())
                                .map_err(|e| err(&doing(), e))?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(|e| err("cannot commit", e))
    }
}

#[cfg(test)]
mod tests {
    use gathering_core::LogEntry;

    use super::*;

    fn log(seqs: std::ops::RangeInclusive<u64>) -> Commit {
        Commit {
            seq: *seqs.end(),
            log: seqs
                .map(|seq| LogEntry {
                    seq,
                    bytes: vec![seq as u8],
                })
                .collect(),
            snapshot: None,
        }
    }

    #[test]
    fn log_and_snapshots_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = GatheringId::parse("a").unwrap();
        let other = GatheringId::parse("b").unwrap();
        let write = |id: &GatheringId, commit| Write {
            id: id.clone(),
            commit,
        };
        {
            let store = RedbStore::open(dir.path(), "one").unwrap();
            assert_eq!(store.load(&id).unwrap(), Loaded::default());
            store
                .commit(&[write(&id, log(1..=3)), write(&other, log(1..=2))])
                .unwrap();
            let snapshot = Commit {
                seq: 3,
                log: Vec::new(),
                snapshot: Some(vec![9]),
            };
            store.commit(&[write(&id, snapshot)]).unwrap();
            store.commit(&[write(&id, log(4..=5))]).unwrap();
        }
        let store = RedbStore::open(dir.path(), "one").unwrap();
        let loaded = store.load(&id).unwrap();
        assert_eq!(
            loaded.snapshot,
            Some(Snapshot {
                seq: 3,
                bytes: vec![9]
            })
        );
        // The covered entries went with the snapshot; the later ones stay.
        let seqs: Vec<u64> = loaded.log.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 5]);
        // Another gathering's log is its own.
        assert_eq!(store.load(&other).unwrap().log.len(), 2);
        drop(store);
        // Another app in the same directory sees none of it.
        let stranger = RedbStore::open(dir.path(), "two").unwrap();
        assert_eq!(stranger.load(&id).unwrap(), Loaded::default());
    }
}
