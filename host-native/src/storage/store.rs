//! Durable storage of gatherings: snapshots, and a journal of the ops
//! logged after them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use gathering_core::{Commit, GatheringId, Loaded, LogEntry, Snapshot};
pub use gathering_driver::StoreError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::journal::{Bounds, Committed, Index};

/// One gathering's commit, in a group written together.
#[derive(Clone, Debug)]
pub struct Write {
    /// The gathering.
    pub id: GatheringId,
    /// What it asked to make durable.
    pub commit: Commit,
}

/// The writes of a batch that a store refused because another node owns
/// their gathering now (a cluster's fence), each gathering with why. The
/// rest of the batch was written.
pub type Fenced = Vec<(GatheringId, String)>;

/// Where one application's gatherings live between spawns: each one's
/// latest snapshot and the log of ops after it.
///
/// Contract: [`Store::commit`] writes all of `writes` or none (each as
/// [`Commit`] says: log entries appended, or a snapshot that replaces the
/// snapshot and covers the entries before it), and when it returns `Ok`
/// they survive a crash of the process or the machine. Both methods block;
/// the server calls them off its async threads. A store serves one
/// application (see [`RedbStore::open`]): gatherings of another app with
/// the same id are not its business.
pub trait Store: Send + Sync + 'static {
    /// What is kept of `id` (`Loaded::default()` if it was never persisted).
    fn load(&self, id: &GatheringId) -> Result<Loaded, StoreError>;

    /// Writes a batch atomically and durably, but for the writes of
    /// gatherings this node no longer owns (only a cluster's store has
    /// any), which it leaves out and returns.
    fn commit(&self, writes: &[Write]) -> Result<Fenced, StoreError>;

    /// Gathering `id` dispersed here, its final state durable: a cluster's
    /// store lets another node claim it. Must not block.
    fn released(&self, _id: &GatheringId) {}
}

/// Snapshots of one app's gatherings: id -> (seq, state).
type Snapshots<'a> = TableDefinition<'a, &'static str, (u64, &'static [u8])>;
/// The journal of one app: (commit number, id) -> the entries of gathering
/// `id` that commit logged, as postcard `[(seq, bytes)]`.
type Journal<'a> = TableDefinition<'a, (u64, &'static str), &'static [u8]>;
/// The log of an earlier layout, (id, seq) -> entry: moved into the
/// journal when a store opens.
type OldLog<'a> = TableDefinition<'a, (&'static str, u64), &'static [u8]>;

/// The embedded store: one redb file, `gatherings.redb`, in the data
/// directory, with two tables per application, named by
/// [`gathering_core::App::NAME`] (snapshots) and `NAME.journal`, so apps
/// sharing a data directory never read each other's gatherings.
///
/// The journal is keyed by commit number first, so a commit's rows all go
/// at the end of the table: a group commit rewrites the few pages there,
/// however many gatherings it spans. (Keyed by gathering, one commit's
/// entries landed on as many B-tree leaves as gatherings, each copied
/// whole: 114 KB written per commit for 19 B of log per op; BENCHMARKS.md,
/// "Tried and not kept".) Which rows hold a gathering's entries is kept in memory,
/// rebuilt from the journal at open; rows a snapshot covers are deleted
/// later, a prefix of the journal at a time (see [`super::journal`]).
/// Every commit is one write transaction, fsynced before it returns: the
/// group's rows, snapshots and deletions land together or not at all.
pub struct RedbStore {
    path: PathBuf,
    /// `None` after a failed commit until reopened: redb refuses every
    /// write after an I/O error until the database is opened again.
    db: RwLock<Option<Database>>,
    snapshots: String,
    journal: String,
    index: Mutex<Index>,
}

/// Entries taken out of the rows that pinned the head of the journal, by
/// gathering, to be written again.
type Moved = BTreeMap<GatheringId, Vec<(u64, Vec<u8>)>>;

/// What one batch does to one gathering.
#[derive(Default)]
struct Change<'a> {
    /// A snapshot replaces its state: the rows of its tail go.
    snapshot: Option<(u64, &'a [u8])>,
    /// Entries this commit logs after any snapshot of the same batch.
    entries: Vec<(u64, &'a [u8])>,
}

fn err(doing: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("{doing}: {e}"))
}

impl RedbStore {
    /// Opens (creating if needed) the store in directory `dir`, for the
    /// application named `app`.
    pub fn open(dir: &Path, app: &str) -> Result<Self, StoreError> {
        Self::open_with(dir, app, Bounds::default())
    }

    fn open_with(dir: &Path, app: &str, bounds: Bounds) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(
                &format!("cannot create data directory {}", dir.display()),
                e,
            )
        })?;
        let store = RedbStore {
            path: dir.join("gatherings.redb"),
            db: RwLock::new(None),
            snapshots: app.to_owned(),
            journal: format!("{app}.journal"),
            index: Mutex::new(Index::new(bounds)),
        };
        store.with_db(|db| {
            let tx = db
                .begin_write()
                .map_err(|e| err("cannot start a write", e))?;
            tx.open_table(store.snapshots())
                .map_err(|e| err(&format!("cannot create the table of {app}"), e))?;
            store.migrate(&tx, app)?;
            tx.commit().map_err(|e| err("cannot commit", e))?;
            // Now with the journal (and what was moved into it).
            store.rebuild(db)
        })?;
        Ok(store)
    }

    /// Runs `f` on the database, opening it first if it is closed (at
    /// start, or after a failed commit); opening reads the index anew.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(db) = db.as_ref() {
                return f(db);
            }
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let db = Database::create(&self.path)
                .map_err(|e| err(&format!("cannot open database {}", self.path.display()), e))?;
            self.rebuild(&db)?;
            *slot = Some(db);
        }
        let db = std::sync::RwLockWriteGuard::downgrade(slot);
        match db.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError("the database is closed".into())),
        }
    }

    /// Closes the database after a failed commit; the next use reopens it.
    fn close(&self) {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        *slot = None;
    }

    /// Moves the log of the earlier layout, one entry per row, into the
    /// journal: each gathering's entries become one row.
    fn migrate(&self, tx: &WriteTransaction, app: &str) -> Result<(), StoreError> {
        let doing = format!("cannot move the log of {app} into its journal");
        let old_name = format!("{app}.log");
        let old = OldLog::new(&old_name);
        let mut journal = tx
            .open_table(self.journal())
            .map_err(|e| err(&format!("cannot create the journal of {app}"), e))?;
        let next = journal
            .last()
            .map_err(|e| err(&doing, e))?
            .map_or(0, |(key, _)| key.value().0 + 1);
        let mut moved: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        {
            // Opening creates it when absent; either way it is deleted.
            let table = tx.open_table(old).map_err(|e| err(&doing, e))?;
            for row in table.iter().map_err(|e| err(&doing, e))? {
                let (key, value) = row.map_err(|e| err(&doing, e))?;
                let (id, seq) = key.value();
                moved
                    .entry(id.to_owned())
                    .or_default()
                    .push((seq, value.value().to_vec()));
            }
        }
        for (id, entries) in &moved {
            let row = postcard::to_allocvec(entries).map_err(|e| err(&doing, e))?;
            journal
                .insert((next, id.as_str()), row.as_slice())
                .map_err(|e| err(&doing, e))?;
        }
        tx.delete_table(old).map_err(|e| err(&doing, e))?;
        Ok(())
    }

    /// Reads which rows hold whose entries from the journal.
    fn rebuild(&self, db: &Database) -> Result<(), StoreError> {
        let doing = "cannot read the journal";
        let tx = db.begin_read().map_err(|e| err(doing, e))?;
        let journal = match tx.open_table(self.journal()) {
            Ok(journal) => journal,
            // Not created yet: `open` creates it.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(err(doing, e)),
        };
        let mut rows = Vec::new();
        for row in journal.iter().map_err(|e| err(doing, e))? {
            let (key, _) = row.map_err(|e| err(doing, e))?;
            let (commit, id) = key.value();
            let id = GatheringId::parse(id)
                .map_err(|e| err(doing, format!("row of gathering {id:?}: {e}")))?;
            rows.push((commit, id));
        }
        let mut index = self.index();
        *index = Index::rebuilt(index.bounds(), rows);
        Ok(())
    }

    fn snapshots(&self) -> Snapshots<'_> {
        TableDefinition::new(&self.snapshots)
    }

    fn journal(&self) -> Journal<'_> {
        TableDefinition::new(&self.journal)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Each change under the lock is whole before the lock is let go.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Decodes a journal row: the entries one commit logged for one gathering.
fn decode_row(bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, postcard::Error> {
    postcard::from_bytes(bytes)
}

impl Store for RedbStore {
    fn load(&self, id: &GatheringId) -> Result<Loaded, StoreError> {
        let doing = || format!("cannot read gathering {id}");
        // The read begins under the lock, so it sees exactly the rows the
        // index names (a commit updates both under it).
        let (rows, tx) = self.with_db(|db| {
            let index = self.index();
            let rows = index.tail(id).to_vec();
            let tx = db.begin_read().map_err(|e| err("cannot start a read", e))?;
            Ok((rows, tx))
        })?;
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
        let journal = tx
            .open_table(self.journal())
            .map_err(|e| err("cannot open the journal", e))?;
        let mut log = Vec::new();
        for commit in rows {
            let Some(row) = journal
                .get((commit, id.as_str()))
                .map_err(|e| err(&doing(), e))?
            else {
                continue;
            };
            let entries = decode_row(row.value()).map_err(|e| err(&doing(), e))?;
            log.extend(
                entries
                    .into_iter()
                    .filter(|(seq, _)| *seq > after)
                    .map(|(seq, bytes)| LogEntry { seq, bytes }),
            );
        }
        // Entries copied forward (see `carry`) are also still in the rows
        // they came from until those are deleted: one of each seq, in
        // order. Sorting is linear on runs already sorted.
        log.sort_by_key(|e| e.seq);
        log.dedup_by_key(|e| e.seq);
        Ok(Loaded { snapshot, log })
    }

    fn commit(&self, writes: &[Write]) -> Result<Fenced, StoreError> {
        // Each gathering's writes, in the order given.
        let mut changes: BTreeMap<&GatheringId, Change<'_>> = BTreeMap::new();
        for w in writes {
            let change = changes.entry(&w.id).or_default();
            match &w.commit.snapshot {
                Some(bytes) => {
                    change.snapshot = Some((w.commit.seq, bytes));
                    change.entries.clear();
                }
                None => change.entries.extend(
                    w.commit
                        .log
                        .iter()
                        .map(|entry| (entry.seq, entry.bytes.as_slice())),
                ),
            }
        }
        let written = self.with_db(|db| self.write(db, changes));
        if written.is_err() {
            // redb refuses every write after an I/O error until reopened;
            // the next load or commit reopens it (and reads the journal
            // anew, in case the failed commit was durable after all).
            self.close();
        }
        written.map(|()| Fenced::new())
    }
}

impl RedbStore {
    /// One commit's changes in one write transaction, and the index after it.
    fn write(
        &self,
        db: &Database,
        changes: BTreeMap<&GatheringId, Change<'_>>,
    ) -> Result<(), StoreError> {
        // redb admits one write transaction at a time; the index lock is
        // held from its start, so the commit number and tails it reads stay
        // true until its commit, and a load never sees one without the other.
        // The index changes only once the commit is durable.
        let tx = db
            .begin_write()
            .map_err(|e| err("cannot start a write", e))?;
        let mut index = self.index();
        let commit = index.next();
        let mut done = Committed {
            reclaimed: index.reclaimable(),
            ..Committed::default()
        };
        {
            let mut snapshots = tx
                .open_table(self.snapshots())
                .map_err(|e| err("cannot open the snapshot table", e))?;
            let mut journal = tx
                .open_table(self.journal())
                .map_err(|e| err("cannot open the journal", e))?;
            let mut carried = Self::carry(&journal, &snapshots, &index, &changes)?;
            for (id, change) in &changes {
                let doing = || format!("cannot write gathering {id}");
                let key = id.as_str();
                if let Some(snapshot) = change.snapshot {
                    snapshots
                        .insert(key, snapshot)
                        .map_err(|e| err(&doing(), e))?;
                    // Its older rows are covered: a load skips them, and
                    // they go with the head of the journal.
                    done.covered.push((*id).clone());
                }
                let row = match carried.remove(*id) {
                    // The usual case: this commit's entries alone.
                    None if change.entries.is_empty() => continue,
                    None => postcard::to_allocvec(&change.entries),
                    Some(moved) => {
                        done.covered.push((*id).clone());
                        let entries: Vec<(u64, &[u8])> = moved
                            .iter()
                            .map(|(seq, bytes)| (*seq, bytes.as_slice()))
                            .chain(change.entries.iter().copied())
                            .collect();
                        if entries.is_empty() {
                            continue;
                        }
                        postcard::to_allocvec(&entries)
                    }
                };
                let row = row.map_err(|e| err(&doing(), e))?;
                journal
                    .insert((commit, key), row.as_slice())
                    .map_err(|e| err(&doing(), e))?;
                done.logged.push((*id).clone());
            }
            // Moved forward with nothing new of their own.
            for (id, moved) in carried {
                done.covered.push(id.clone());
                if moved.is_empty() {
                    continue;
                }
                let doing = || format!("cannot move the journal of gathering {id}");
                let row = postcard::to_allocvec(&moved).map_err(|e| err(&doing(), e))?;
                journal
                    .insert((commit, id.as_str()), row.as_slice())
                    .map_err(|e| err(&doing(), e))?;
                done.logged.push(id);
            }
            if let Some(range) = &done.reclaimed {
                let lower: (u64, &str) = (range.start, "");
                let upper: (u64, &str) = (range.end, "");
                journal
                    .retain_in(lower..upper, |_, _| false)
                    .map_err(|e| err("cannot delete covered journal rows", e))?;
            }
        }
        tx.commit().map_err(|e| err("cannot commit", e))?;
        index.committed(done);
        Ok(())
    }

    /// Reads the rows of the gatherings that pin the head of the journal
    /// (see [`Index::pinning`]), except those a snapshot in `changes`
    /// covers anyway: their entries after their snapshot, in order, for
    /// this commit to write again. The rows stay, covered, until the head
    /// of the journal goes; until then (also across a crash) a load finds
    /// those entries twice and keeps one of each seq. (After a reopen, a
    /// gathering's tail may include rows its snapshot covers, such as a
    /// dispersed gathering's: those entries are dropped here.)
    fn carry(
        journal: &redb::Table<'_, (u64, &'static str), &'static [u8]>,
        snapshots: &redb::Table<'_, &'static str, (u64, &'static [u8])>,
        index: &Index,
        changes: &BTreeMap<&GatheringId, Change<'_>>,
    ) -> Result<Moved, StoreError> {
        let mut carried = BTreeMap::new();
        let Some(oldest) = index.pinning() else {
            return Ok(carried);
        };
        let doing = "cannot move the oldest journal rows forward";
        let lower: (u64, &str) = (oldest, "");
        let upper: (u64, &str) = (oldest + 1, "");
        let (most, bytes) = index.carried_per_commit();
        let mut ids = Vec::new();
        for row in journal.range(lower..upper).map_err(|e| err(doing, e))? {
            let (key, _) = row.map_err(|e| err(doing, e))?;
            let id = GatheringId::parse(key.value().1).map_err(|e| err(doing, e))?;
            let covered = changes.get(&id).is_some_and(|c| c.snapshot.is_some());
            if index.starts_at(&id, oldest) && !covered {
                ids.push(id);
            }
            if ids.len() == most {
                break;
            }
        }
        let mut read = 0;
        for id in ids {
            if read >= bytes {
                break;
            }
            // Reading the snapshot's seq reads its pages too: counted.
            let after = match snapshots.get(id.as_str()).map_err(|e| err(doing, e))? {
                Some(guard) => {
                    let (seq, state) = guard.value();
                    read += state.len();
                    seq
                }
                None => 0,
            };
            let mut entries = Vec::new();
            for &row in index.tail(&id) {
                if let Some(guard) = journal.get((row, id.as_str())).map_err(|e| err(doing, e))? {
                    read += guard.value().len();
                    let row = decode_row(guard.value()).map_err(|e| err(doing, e))?;
                    entries.extend(row.into_iter().filter(|(seq, _)| *seq > after));
                }
            }
            // One of each, as a load keeps them: rows copied before and not
            // yet deleted hold the same entries (after a reopen, also in
            // its tail).
            entries.sort_by_key(|(seq, _)| *seq);
            entries.dedup_by_key(|(seq, _)| *seq);
            carried.insert(id, entries);
        }
        Ok(carried)
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

    fn seqs(loaded: &Loaded) -> Vec<u64> {
        loaded.log.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_batch_applies_each_gatherings_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let id = GatheringId::parse("a").unwrap();
        let write = |commit| Write {
            id: id.clone(),
            commit,
        };
        let snapshot = |seq| Commit {
            seq,
            log: Vec::new(),
            snapshot: Some(vec![seq as u8]),
        };
        {
            let store = RedbStore::open(dir.path(), "one").unwrap();
            store.commit(&[write(log(1..=2))]).unwrap();
            // Entries, a snapshot covering them and older rows, entries after.
            store
                .commit(&[write(log(3..=4)), write(snapshot(4)), write(log(5..=6))])
                .unwrap();
            let loaded = store.load(&id).unwrap();
            assert_eq!(loaded.snapshot.as_ref().map(|s| s.seq), Some(4));
            assert_eq!(seqs(&loaded), [5, 6]);
            store.commit(&[write(log(7..=7))]).unwrap();
        }
        // The index rebuilt from the journal says the same.
        let store = RedbStore::open(dir.path(), "one").unwrap();
        let loaded = store.load(&id).unwrap();
        assert_eq!(loaded.snapshot.as_ref().map(|s| s.seq), Some(4));
        assert_eq!(seqs(&loaded), [5, 6, 7]);
        // A snapshot at the end of a batch leaves no entries behind.
        store
            .commit(&[write(log(8..=9)), write(snapshot(9))])
            .unwrap();
        drop(store);
        let store = RedbStore::open(dir.path(), "one").unwrap();
        let loaded = store.load(&id).unwrap();
        assert_eq!(loaded.snapshot.as_ref().map(|s| s.seq), Some(9));
        assert!(loaded.log.is_empty());
    }

    #[test]
    fn the_log_of_the_earlier_layout_moves_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join("gatherings.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut old = tx.open_table(OldLog::new("one.log")).unwrap();
                for seq in 1..=3u64 {
                    old.insert(("a", seq), [seq as u8].as_slice()).unwrap();
                }
                old.insert(("b", 1), [7].as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let a = GatheringId::parse("a").unwrap();
        let b = GatheringId::parse("b").unwrap();
        // Moved once: opening again finds them in the journal alone.
        for _ in 0..2 {
            let store = RedbStore::open(dir.path(), "one").unwrap();
            let loaded = store.load(&a).unwrap();
            assert_eq!(seqs(&loaded), [1, 2, 3]);
            assert_eq!(loaded.log[2].bytes, [3]);
            assert_eq!(store.load(&b).unwrap().log[0].bytes, [7]);
        }
        // Later commits go after the moved rows.
        let store = RedbStore::open(dir.path(), "one").unwrap();
        let write = Write {
            id: a.clone(),
            commit: log(4..=4),
        };
        store.commit(&[write]).unwrap();
        drop(store);
        let store = RedbStore::open(dir.path(), "one").unwrap();
        assert_eq!(seqs(&store.load(&a).unwrap()), [1, 2, 3, 4]);
    }

    /// Rows in the journal table itself, and what the index counts.
    fn journal_rows(store: &RedbStore) -> (u64, usize) {
        use redb::ReadableTableMetadata;
        let rows = store
            .with_db(|db| {
                let tx = db.begin_read().unwrap();
                Ok(tx.open_table(store.journal()).unwrap().len().unwrap())
            })
            .unwrap();
        (rows, store.index().rows())
    }

    fn small() -> Bounds {
        Bounds {
            reclaim_rows: 4,
            pinned_rows: 8,
            pinned_commits: 12,
            carried_per_commit: 2,
            carried_bytes: 64,
        }
    }

    #[test]
    fn covered_rows_leave_the_journal_and_quiet_gatherings_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let busy = GatheringId::parse("busy").unwrap();
        let quiet = GatheringId::parse("quiet").unwrap();
        let gone = GatheringId::parse("gone").unwrap();
        let write = |id: &GatheringId, commit| Write {
            id: id.clone(),
            commit,
        };
        let store = RedbStore::open_with(dir.path(), "one", small()).unwrap();
        store.commit(&[write(&gone, log(1..=2))]).unwrap();
        // Dispersed: its final snapshot covers its row, which a reopened
        // store cannot tell from a live one.
        let last = Commit {
            seq: 2,
            log: Vec::new(),
            snapshot: Some(vec![2]),
        };
        store.commit(&[write(&gone, last)]).unwrap();
        drop(store);
        let mut store = RedbStore::open_with(dir.path(), "one", small()).unwrap();
        assert_eq!(store.index().tail(&gone).len(), 1);
        store.commit(&[write(&quiet, log(1..=2))]).unwrap();
        let mut most = 0;
        let mut moved = 0;
        let mut reopened = false;
        for seq in 1..=200 {
            // The busy one logs every commit and snapshots every fourth.
            let commit = if seq % 4 == 0 {
                Commit {
                    seq,
                    log: Vec::new(),
                    snapshot: Some(vec![seq as u8]),
                }
            } else {
                log(seq..=seq)
            };
            let before = store.index().tail(&quiet).to_vec();
            store.commit(&[write(&busy, commit)]).unwrap();
            let (rows, counted) = journal_rows(&store);
            assert_eq!(rows as usize, counted, "the index counts the table's rows");
            if !reopened {
                most = most.max(rows);
            }
            if store.index().tail(&quiet) != before {
                moved += 1;
                if reopened {
                    // Copied again from both rows: each entry once.
                    let tail = store.index().tail(&quiet).to_vec();
                    assert_eq!(tail.len(), 1);
                    let row = store
                        .with_db(|db| {
                            let tx = db.begin_read().unwrap();
                            let journal = tx.open_table(store.journal()).unwrap();
                            let row = journal.get((tail[0], "quiet")).unwrap().unwrap();
                            Ok(decode_row(row.value()).unwrap())
                        })
                        .unwrap();
                    assert_eq!(row.len(), 2);
                }
                if seq > 100 && !reopened {
                    // Just copied forward: reopened now, the store finds
                    // its entries in both rows, and loads them once. (A
                    // reopened store counts every row as live again, so
                    // the bound below is for the commits before.)
                    reopened = true;
                    drop(store);
                    store = RedbStore::open_with(dir.path(), "one", small()).unwrap();
                    assert_eq!(store.index().tail(&quiet).len(), 2);
                }
            }
            assert_eq!(seqs(&store.load(&quiet).unwrap()), [1, 2]);
        }
        // Without deletions it would hold 150 rows and more; the quiet
        // gathering's row is moved forward rather than pinning them all.
        // At most: the live rows (3 here), covered ones pinned behind them
        // up to twice `pinned_rows` (or twice the live), and a covered
        // prefix of up to `reclaim_rows` awaiting its deletion.
        let bound = 3 + 2 * small().pinned_rows + small().reclaim_rows;
        assert!(most <= bound as u64, "the journal held up to {most} rows");
        assert!(
            reopened,
            "the quiet gathering was moved forward {moved} times, too early"
        );
        let (rows, _) = journal_rows(&store);
        assert!(rows <= bound as u64, "after reopening, {rows} rows");
        drop(store);
        let store = RedbStore::open_with(dir.path(), "one", small()).unwrap();
        assert_eq!(seqs(&store.load(&quiet).unwrap()), [1, 2]);
        // Moving the dispersed gathering forward dropped its covered row.
        assert!(store.index().tail(&gone).is_empty());
        let loaded = store.load(&gone).unwrap();
        assert_eq!(loaded.snapshot.map(|s| s.seq), Some(2));
        assert!(loaded.log.is_empty());
        let loaded = store.load(&busy).unwrap();
        assert_eq!(loaded.snapshot.map(|s| s.seq), Some(200));
        assert!(loaded.log.is_empty());
    }

    /// One step of the model test: log `n` ops or snapshot gathering `g`
    /// in the batch being gathered, commit it, or reopen the store.
    #[derive(Clone, Debug)]
    enum Step {
        Log(usize, u64),
        Snapshot(usize),
        Commit,
        Reopen,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..3usize, 1..4u64).prop_map(|(g, n)| Step::Log(g, n)),
            2 => (0..3usize).prop_map(Step::Snapshot),
            6 => Just(Step::Commit),
            1 => Just(Step::Reopen),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the order of logs, snapshots, group commits and
        /// reopenings, each gathering loads as the model of a store says
        /// ([`Loaded::apply`]), and the index counts the journal's rows.
        #[test]
        fn the_store_loads_what_the_model_holds(steps in proptest::collection::vec(step(), 1..160)) {
            let dir = tempfile::tempdir().unwrap();
            let ids: Vec<GatheringId> =
                ["a", "b", "c"].iter().map(|n| GatheringId::parse(n).unwrap()).collect();
            let mut store = RedbStore::open_with(dir.path(), "one", small()).unwrap();
            let mut model = vec![Loaded::default(); 3];
            let mut seq = [0u64; 3];
            let mut batch: Vec<(usize, Commit)> = Vec::new();
            for step in steps {
                match step {
                    Step::Log(g, n) => {
                        batch.push((g, log(seq[g] + 1..=seq[g] + n)));
                        seq[g] += n;
                    }
                    Step::Snapshot(g) => batch.push((g, Commit {
                        seq: seq[g],
                        log: Vec::new(),
                        snapshot: Some(vec![seq[g] as u8]),
                    })),
                    Step::Commit => {
                        let writes: Vec<Write> = batch
                            .iter()
                            .map(|(g, c)| Write { id: ids[*g].clone(), commit: c.clone() })
                            .collect();
                        store.commit(&writes).unwrap();
                        for (g, c) in batch.drain(..) {
                            model[g].apply(c);
                        }
                        let (rows, counted) = journal_rows(&store);
                        proptest::prop_assert_eq!(rows as usize, counted);
                    }
                    Step::Reopen => {
                        drop(store);
                        store = RedbStore::open_with(dir.path(), "one", small()).unwrap();
                    }
                }
                for (g, id) in ids.iter().enumerate() {
                    proptest::prop_assert_eq!(&store.load(id).unwrap(), &model[g]);
                }
            }
        }
    }
}
