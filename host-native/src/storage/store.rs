//! Durable storage of gathering snapshots.

use std::fmt;
use std::path::Path;

use gathering_core::GatheringId;
pub use gathering_driver::Stored;
use redb::{Database, ReadableDatabase, TableDefinition};

/// One snapshot to write.
#[derive(Clone, Debug)]
pub struct Write {
    /// The gathering.
    pub id: GatheringId,
    /// Its snapshot.
    pub stored: Stored,
}

/// A storage failure, with what was being done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Where one application's gatherings live between spawns.
///
/// Contract: [`Store::commit`] writes all of `writes` or none, and when it
/// returns `Ok` they survive a crash of the process or the machine. Both
/// methods block; the server calls them off its async threads. A store
/// serves one application (see [`RedbStore::open`]): gatherings of another
/// app with the same id are not its business.
pub trait Store: Send + Sync + 'static {
    /// The latest snapshot of `id`, or `None` if it was never persisted.
    fn load(&self, id: &GatheringId) -> Result<Option<Stored>, StoreError>;

    /// Writes a batch atomically and durably.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;
}

/// A table of one app's gatherings: id -> (seq, snapshot).
type Table<'a> = TableDefinition<'a, &'static str, (u64, &'static [u8])>;

/// The embedded store: one redb file, `gatherings.redb`, in the data
/// directory, with one table per application, named by [`gathering_core::App::NAME`],
/// so apps sharing a data directory never read each other's snapshots.
/// Every commit is fsynced before it returns.
pub struct RedbStore {
    db: Database,
    table: Table<'static>,
}

fn err(doing: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("{doing}: {e}"))
}

impl RedbStore {
    /// Opens (creating if needed) the store in directory `dir`, for the
    /// application named `app`.
    pub fn open(dir: &Path, app: &'static str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(
                &format!("cannot create data directory {}", dir.display()),
                e,
            )
        })?;
        let path = dir.join("gatherings.redb");
        let db = Database::create(&path)
            .map_err(|e| err(&format!("cannot open database {}", path.display()), e))?;
        let tx = db
            .begin_write()
            .map_err(|e| err("cannot start a write", e))?;
        let table = TableDefinition::new(app);
        tx.open_table(table)
            .map_err(|e| err(&format!("cannot create the table of {app}"), e))?;
        tx.commit().map_err(|e| err("cannot commit", e))?;
        Ok(RedbStore { db, table })
    }
}

impl Store for RedbStore {
    fn load(&self, id: &GatheringId) -> Result<Option<Stored>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| err("cannot start a read", e))?;
        let table = tx
            .open_table(self.table)
            .map_err(|e| err("cannot open the gatherings table", e))?;
        let row = table
            .get(id.as_str())
            .map_err(|e| err(&format!("cannot read gathering {id}"), e))?;
        Ok(row.map(|guard| {
            let (seq, snapshot) = guard.value();
            Stored {
                seq,
                snapshot: snapshot.to_vec(),
            }
        }))
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| err("cannot start a write", e))?;
        {
            let mut table = tx
                .open_table(self.table)
                .map_err(|e| err("cannot open the gatherings table", e))?;
            for w in writes {
                table
                    .insert(w.id.as_str(), (w.stored.seq, w.stored.snapshot.as_slice()))
                    .map_err(|e| err(&format!("cannot write gathering {}", w.id), e))?;
            }
        }
        tx.commit().map_err(|e| err("cannot commit", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = GatheringId::parse("a").unwrap();
        {
            let store = RedbStore::open(dir.path(), "one").unwrap();
            assert_eq!(store.load(&id).unwrap(), None);
            let stored = Stored {
                seq: 3,
                snapshot: vec![1, 2, 3],
            };
            store
                .commit(&[Write {
                    id: id.clone(),
                    stored,
                }])
                .unwrap();
        }
        let store = RedbStore::open(dir.path(), "one").unwrap();
        assert_eq!(store.load(&id).unwrap().unwrap().seq, 3);
        drop(store);
        // Another app in the same directory sees none of it.
        let other = RedbStore::open(dir.path(), "two").unwrap();
        assert_eq!(other.load(&id).unwrap(), None);
    }
}
