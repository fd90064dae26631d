//! Cluster mode: several servers share one PostgreSQL database, which
//! holds every gathering's snapshot and log, each node's lease, and one
//! owner row per gathering with an epoch. A node claims a gathering (next
//! epoch) in the transaction that reads its state, only if no node with a
//! live lease owns it; every commit is conditional on that epoch, so a
//! node that lost a gathering can never commit for it again (it is
//! fenced). See docs/CLUSTER.md.

mod lease;
mod sql;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gathering_core::{GatheringId, Loaded, LogEntry, Snapshot};
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use crate::storage::{Fenced, Store, StoreError, Write};
pub(crate) use lease::Lease;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// How a server joins a cluster ([`crate::Builder::cluster`]).
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The PostgreSQL connection string (`postgres://user@host:port/db`).
    pub url: String,
    /// This node's name, unique in the cluster and stable across its
    /// restarts (its gatherings' rows name it).
    pub node: String,
    /// The WebSocket base URL clients reach this node at, told to clients
    /// sent here (`ws://10.0.0.5:8080`).
    pub advertise: String,
    /// How long a renewed lease lasts; renewed every third of it. Another
    /// node may claim this node's gatherings once it has run out.
    pub lease: Duration,
    /// Gatherings handed off per second while draining.
    pub drain_rate: u32,
}

/// Where a gathering lives now, as a join for it is told (close 4001).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The owning node's name.
    pub node: String,
    /// Its advertised WebSocket base URL.
    pub url: String,
}

impl Owner {
    /// The reason of the 4001 close that sends a client there:
    /// `node N at URL`.
    pub fn close_reason(&self) -> String {
        format!("node {} at {}", self.node, self.url)
    }
}

fn err(doing: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{doing}: {e}"))
}

/// The cluster's store and this node's place in it: loads claim, commits
/// are fenced, dispersals release; a thread of its own keeps the node's
/// lease ([`Cluster::start_lease`]).
///
/// Contract: as [`Store`], and a gathering this node loaded is committed
/// only while no other node has claimed it since; a write of one that was
/// claimed is left out and reported fenced.
pub struct Cluster {
    options: ClusterOptions,
    app: String,
    /// `None` only while dropping (see `Drop`).
    pool: Option<Pool>,
    /// The writer's own connection, with its statements prepared; `None`
    /// after a failure until the next commit reconnects.
    writer: Mutex<Option<Writer>>,
    /// The epoch of each gathering this node claimed and has not let go.
    /// Looked up by id, and iterated only by the fence check after a pause,
    /// whose answer is sorted.
    epochs: Mutex<HashMap<GatheringId, i64>>,
    /// Until when this node's lease surely holds, by this machine's clock.
    lease: Lease,
    draining: AtomicBool,
    releases: std::sync::mpsc::Sender<lease::Task>,
    tasks: Mutex<Option<std::sync::mpsc::Receiver<lease::Task>>>,
}

/// What one group commit does to one gathering.
#[derive(Default)]
struct Change<'a> {
    /// The op number it makes durable.
    last: u64,
    /// A snapshot that replaces its state, with its op number.
    snapshot: Option<(u64, &'a Vec<u8>)>,
    /// Entries logged after any snapshot of the batch.
    entries: Vec<&'a LogEntry>,
}

struct Writer {
    client: postgres::Client,
    fence: postgres::Statement,
    append: postgres::Statement,
    put_snapshot: postgres::Statement,
    trim: postgres::Statement,
}

impl Writer {
    fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = connect(url)?;
        let mut prepare = |q: &str| {
            client
                .prepare(q)
                .map_err(|e| err("cannot prepare a statement", e))
        };
        Ok(Writer {
            fence: prepare(sql::FENCE)?,
            append: prepare(sql::APPEND)?,
            put_snapshot: prepare(sql::PUT_SNAPSHOT)?,
            trim: prepare(sql::TRIM)?,
            client,
        })
    }
}

/// A connection with the bounds every one of ours has: a connect timeout,
/// so that an unreachable database fails a commit instead of hanging it.
fn config(url: &str) -> Result<postgres::Config, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| err("the --cluster URL is not a PostgreSQL connection string", e))?;
    config.connect_timeout(Duration::from_secs(2));
    config.application_name("gathering");
    // A node stopped mid-transaction (a pause, a stalled VM) holds its
    // gatherings' row locks, and so blocks the claims of the nodes that
    // take over; the database ends such a transaction after this long.
    config.options("-c idle_in_transaction_session_timeout=2000 -c client_min_messages=warning");
    Ok(config)
}

fn connect(url: &str) -> Result<postgres::Client, StoreError> {
    config(url)?
        .connect(NoTls)
        .map_err(|e| err("cannot connect to PostgreSQL", e))
}

impl Cluster {
    /// Connects, creates the tables if missing and takes this node's
    /// lease. Fails if the database cannot be reached.
    pub fn open(options: ClusterOptions, app: &str) -> Result<Self, StoreError> {
        let mut client = connect(&options.url)?;
        // Several nodes starting at once may race to create the same
        // table; the loser's statement fails, and its retry finds it.
        for attempt in 0.. {
            let created = sql::SCHEMA
                .iter()
                .try_for_each(|q| client.batch_execute(q).map(drop));
            match created {
                Ok(()) => break,
                Err(_) if attempt < 5 => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(err("cannot create the cluster's tables", e)),
            }
        }
        let manager = PostgresConnectionManager::new(config(&options.url)?, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(2))
            .build(manager)
            .map_err(|e| err("cannot open connections to PostgreSQL", e))?;
        let (releases, tasks) = std::sync::mpsc::channel();
        let cluster = Cluster {
            lease: Lease::new(options.lease),
            options,
            app: app.to_owned(),
            pool: Some(pool),
            writer: Mutex::new(None),
            epochs: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            releases,
            tasks: Mutex::new(Some(tasks)),
        };
        cluster.lease.renew(&mut client, &cluster.options)?;
        Ok(cluster)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.options.node
    }

    /// Gatherings handed off per second while draining.
    pub fn drain_rate(&self) -> u32 {
        self.options.drain_rate
    }

    /// Why this node should take no traffic, if it should not: it drains,
    /// or its lease is not known to hold.
    pub fn unhealthy(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if !self.lease.holds() {
            Some("lease not held")
        } else {
            None
        }
    }

    /// Stops claiming gatherings: joins are sent elsewhere from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether it drains.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The live node other than this one that owns gathering `id`, if any
    /// (none: it is here, or free to claim here).
    pub fn owner_elsewhere(&self, id: &GatheringId) -> Result<Option<Owner>, StoreError> {
        Ok(self.owner(id)?.filter(|o| o.node != self.options.node))
    }

    /// The live node that owns gathering `id`, if any.
    pub fn owner(&self, id: &GatheringId) -> Result<Option<Owner>, StoreError> {
        let mut client = self.pool()?;
        let row = client
            .query_opt(sql::OWNER, &[&self.app, &id.as_str()])
            .map_err(|e| err(&format!("cannot look up the owner of {id}"), e))?;
        Ok(row.map(|row| Owner {
            node: row.get(0),
            url: row.get(1),
        }))
    }

    fn pool(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        self.pool
            .as_ref()
            .ok_or_else(|| StoreError("the cluster's connections are closed".into()))?
            .get()
            .map_err(|e| err("no connection to PostgreSQL", e))
    }

    fn epochs(&self) -> MutexGuard<'_, HashMap<GatheringId, i64>> {
        // Each change leaves the map whole; a panic elsewhere cannot break it.
        self.epochs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `id` and reads its state, in one transaction.
    fn claim(&self, id: &GatheringId) -> Result<(i64, Loaded), StoreError> {
        let doing = || format!("cannot load gathering {id}");
        let mut client = self.pool()?;
        let mut tx = client.transaction().map_err(|e| err(&doing(), e))?;
        let key: [&(dyn postgres::types::ToSql + Sync); 2] = [&self.app, &id.as_str()];
        tx.execute(sql::ENSURE_OWNER_ROW, &key)
            .map_err(|e| err(&doing(), e))?;
        let claimed = tx
            .query_opt(sql::CLAIM, &[&self.app, &id.as_str(), &self.options.node])
            .map_err(|e| err(&doing(), e))?;
        let Some(row) = claimed else {
            drop(tx);
            return Err(match self.owner(id)? {
                Some(owner) => StoreError(format!(
                    "gathering {id} is owned by {}",
                    owner.close_reason()
                )),
                None => StoreError(format!(
                    "gathering {id} cannot be claimed: this node's lease is not live"
                )),
            });
        };
        let epoch: i64 = row.get(0);
        let snapshot = tx
            .query_opt(sql::SNAPSHOT, &key)
            .map_err(|e| err(&doing(), e))?
            .map(|row| Snapshot {
                seq: seq_of(row.get(0)),
                bytes: row.get(1),
            });
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let log = tx
            .query(sql::LOG, &[&self.app, &id.as_str(), &sql_seq(after)])
            .map_err(|e| err(&doing(), e))?
            .into_iter()
            .map(|row| LogEntry {
                seq: seq_of(row.get(0)),
                bytes: row.get(1),
            })
            .collect();
        tx.commit().map_err(|e| err(&doing(), e))?;
        Ok((epoch, Loaded { snapshot, log }))
    }

    /// One group commit in one transaction of four statements or so,
    /// whatever the number of gatherings: the fence of all of them, then
    /// the log entries of those it let through; snapshots (one per 1,024
    /// ops or so) go one by one.
    fn write(&self, writer: &mut Writer, writes: &[Write]) -> Result<Fenced, StoreError> {
        // Each gathering's changes as the embedded store makes them: a
        // snapshot covers the entries before it in the same batch.
        let mut changes: BTreeMap<&GatheringId, Change<'_>> = BTreeMap::new();
        for w in writes {
            let change = changes.entry(&w.id).or_default();
            change.last = change.last.max(w.commit.seq);
            match &w.commit.snapshot {
                Some(state) => {
                    change.snapshot = Some((w.commit.seq, state));
                    change.entries.clear();
                }
                None => change.entries.extend(&w.commit.log),
            }
        }
        let held: Vec<(&GatheringId, i64, u64)> = {
            let epochs = self.epochs();
            changes
                .iter()
                .filter_map(|(id, change)| Some((*id, *epochs.get(*id)?, change.last)))
                .collect()
        };
        let doing = "cannot commit to PostgreSQL";
        let mut tx = writer.client.transaction().map_err(|e| err(doing, e))?;
        let passed = self
            .fence(&mut tx, &writer.fence, &held)
            .map_err(|e| err(doing, e))?;
        let mut fenced = Fenced::new();
        let (mut log_ids, mut log_seqs, mut log_entries) = (Vec::new(), Vec::new(), Vec::new());
        for (id, change) in &changes {
            if !passed.contains(id.as_str()) {
                fenced.push((
                    (*id).clone(),
                    format!(
                        "gathering {id} was claimed by another node, or this node's lease ran out"
                    ),
                ));
                continue;
            }
            if let Some((seq, state)) = change.snapshot {
                let seq = sql_seq(seq);
                tx.execute(
                    &writer.put_snapshot,
                    &[&self.app, &id.as_str(), &seq, &state],
                )
                .map_err(|e| err(doing, e))?;
                tx.execute(&writer.trim, &[&self.app, &id.as_str(), &seq])
                    .map_err(|e| err(doing, e))?;
            }
            for entry in &change.entries {
                log_ids.push(id.as_str());
                log_seqs.push(sql_seq(entry.seq));
                log_entries.push(entry.bytes.as_slice());
            }
        }
        if !log_ids.is_empty() {
            tx.execute(
                &writer.append,
                &[&self.app, &log_ids, &log_seqs, &log_entries],
            )
            .map_err(|e| err(doing, e))?;
        }
        tx.commit().map_err(|e| err(doing, e))?;
        Ok(fenced)
    }

    /// Runs the fence (`statement`, [`sql::FENCE`] or its prepared form)
    /// over `held`: each gathering with the epoch this node claimed and the
    /// op number its commit makes durable. The ids it let through; the
    /// others are fenced.
    fn fence<T: postgres::ToStatement + ?Sized>(
        &self,
        client: &mut impl postgres::GenericClient,
        statement: &T,
        held: &[(&GatheringId, i64, u64)],
    ) -> Result<std::collections::BTreeSet<String>, postgres::Error> {
        let ids: Vec<&str> = held.iter().map(|(id, _, _)| id.as_str()).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, epoch, _)| *epoch).collect();
        let seqs: Vec<i64> = held.iter().map(|(_, _, seq)| sql_seq(*seq)).collect();
        Ok(client
            .query(
                statement,
                &[&self.app, &self.options.node, &ids, &epochs, &seqs],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    /// Takes this node out of the cluster after a graceful shutdown: the
    /// releases still queued are made, then its lease row goes, so that
    /// anything it still held may be claimed at once.
    pub fn leave(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.releases.send(lease::Task::Leave(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }

    /// An empty commit of every gathering this node holds, through the
    /// fence: the ones another node claimed (fenced), which it forgets.
    /// What a node that was paused past its lease asks once it renewed it.
    fn fenced_since(&self, db: &mut postgres::Client) -> Result<Vec<GatheringId>, StoreError> {
        let held: Vec<(GatheringId, i64)> = self
            .epochs()
            .iter()
            .map(|(id, epoch)| (id.clone(), *epoch))
            .collect();
        // Op number 0: the fence moves nothing.
        let asked: Vec<(&GatheringId, i64, u64)> =
            held.iter().map(|(id, epoch)| (id, *epoch, 0)).collect();
        let passed = self
            .fence(db, sql::FENCE, &asked)
            .map_err(|e| err("cannot ask the fence", e))?;
        let mut fenced: Vec<GatheringId> = held
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !passed.contains(id.as_str()))
            .collect();
        fenced.sort();
        let mut epochs = self.epochs();
        for id in &fenced {
            epochs.remove(id);
        }
        Ok(fenced)
    }

    /// Starts the thread that renews this node's lease (every third of
    /// it) and makes releases. `lost` is called when the node must let
    /// gatherings go: all of them (`None`) once its lease ran out while
    /// renewals fail, or those another node claimed meanwhile (`Some`)
    /// when a renewal finds that the lease had run out (a pause).
    pub fn start_lease(
        self: &std::sync::Arc<Self>,
        lost: impl Fn(Option<Vec<GatheringId>>) + Send + 'static,
    ) -> std::io::Result<()> {
        let Some(tasks) = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        let cluster = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("gathering-lease".into())
            .spawn(move || lease::run(&cluster, &tasks, &lost))
            .map(drop)
    }
}

impl Drop for Cluster {
    /// The blocking client closes a connection by running a runtime of its
    /// own, which panics on a thread of the server's runtime, where the last
    /// handle to the cluster usually goes: the connections are closed on a
    /// thread of their own.
    fn drop(&mut self) {
        let pool = self.pool.take();
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let _ = std::thread::spawn(move || drop((pool, writer))).join();
    }
}

/// Op numbers are `u64` in the core and `bigint` in SQL; no gathering
/// reaches 2^63 ops.
fn sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_of(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

impl Store for Cluster {
    fn load(&self, id: &GatheringId) -> Result<Loaded, StoreError> {
        if self.draining() {
            return Err(StoreError(format!(
                "gathering {id} is not loaded here: this node is draining"
            )));
        }
        let (epoch, loaded) = self.claim(id)?;
        self.epochs().insert(id.clone(), epoch);
        Ok(loaded)
    }

    fn commit(&self, writes: &[Write]) -> Result<Fenced, StoreError> {
        // No check of the lease here: the fence checks it in the commit's
        // own transaction, by the database's clock, which alone judges it.
        let mut slot = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut writer = match slot.take() {
            Some(writer) => writer,
            None => Writer::connect(&self.options.url)?,
        };
        let written = self.write(&mut writer, writes);
        match &written {
            Ok(fenced) => {
                let mut epochs = self.epochs();
                for (id, _) in fenced {
                    epochs.remove(id);
                }
            }
            // A broken connection is replaced at the next commit; a
            // refused statement leaves it usable.
            Err(_) if writer.client.is_closed() => return written,
            Err(_) => {}
        }
        *slot = Some(writer);
        written
    }

    fn released(&self, id: &GatheringId) {
        if let Some(epoch) = self.epochs().remove(id) {
            let _ = self.releases.send(lease::Task::Release(id.clone(), epoch));
        }
    }
}
