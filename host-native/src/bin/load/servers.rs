//! The servers a load runs against: one in this process, or a
//! `gathering-server` process beside this binary (the shape users run).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gathering_core::Config;
use gathering_core::tournament::Tournament;
/// The stale-detection strategies `overhead` compares (`--features bench`).
#[cfg(feature = "bench")]
pub(crate) use gathering_native::Detection;
use gathering_native::Running;

use crate::measure::cpu_split_of;

/// The product's detection, the only one in a build without `bench`.
#[cfg(not(feature = "bench"))]
#[derive(Clone, Copy)]
pub(crate) enum Detection {
    Exact,
}

/// A server on a free loopback port with its own temporary data directory,
/// removed on drop.
pub(crate) struct Server {
    pub(crate) running: Option<Running>,
    pub(crate) dir: PathBuf,
    pub(crate) url: String,
    /// Every idle or empty dispersal's lateness, in seconds (the metrics'
    /// histogram has buckets only; percentiles want every sample).
    pub(crate) lateness: Arc<Mutex<Vec<f64>>>,
}

impl Server {
    pub(crate) async fn start(idle: Duration, detection: Detection) -> Server {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gathering-load-{}-{n}", std::process::id()));
        let lateness = Arc::new(Mutex::new(Vec::new()));
        let samples = lateness.clone();
        let builder = gathering_native::Server::<Tournament>::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .data_dir(&dir)
            // Every client of a load comes from 127.0.0.1.
            .limits(gathering_native::Limits {
                max_connections: 0,
                max_per_address: 0,
                ..gathering_native::Limits::default()
            })
            .gathering(Config {
                idle_timeout: idle,
                ..Config::default()
            })
            .on_dispersed(move |d| {
                if d.reason != gathering_core::DisperseReason::Shutdown {
                    samples.lock().unwrap().push(d.late.as_secs_f64());
                }
            });
        #[cfg(feature = "bench")]
        let builder = builder.detection(detection);
        #[cfg(not(feature = "bench"))]
        let Detection::Exact = detection;
        let running = builder.start().await.expect("server starts");
        let url = format!("ws://{}", running.addr);
        Server {
            running: Some(running),
            dir,
            url,
            lateness,
        }
    }

    pub(crate) fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub(crate) fn live(&self) -> i64 {
        self.running().metrics.gatherings_live.get()
    }

    pub(crate) fn take_lateness(&self) -> Vec<f64> {
        std::mem::take(&mut *self.lateness.lock().unwrap())
    }

    pub(crate) async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The PostgreSQL database of `--cluster`, if given: child servers run as
/// cluster nodes on it.
pub(crate) static CLUSTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Empties the cluster's tables, so that a node starts as on a new
/// database (a killed node's lease would hold its gatherings otherwise).
/// On a thread of its own: the blocking client runs a runtime of its own.
fn empty_cluster(url: &str) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut db =
            postgres::Client::connect(&url, postgres::NoTls).expect("the --cluster database");
        let _ = db.batch_execute(
            "TRUNCATE gathering_owners, gathering_snapshots, gathering_log, gathering_nodes",
        );
    })
    .join()
    .expect("the cluster's tables emptied");
}

/// CPU time of every process named `postgres`, seconds: the database's
/// share of a cluster node's work (a backend that exited takes its share
/// with it; the nodes keep theirs open).
pub(crate) fn database_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|e| {
            let (user, system) = cpu_split_of(&e.file_name().to_string_lossy());
            user + system
        })
        .sum()
}

/// A `gathering-server` process beside this binary, on a free loopback port
/// with its own data directory: the shape users run.
pub(crate) struct ChildServer {
    pub(crate) child: std::process::Child,
    pub(crate) dir: PathBuf,
    pub(crate) url: String,
    pub(crate) admin: String,
}

impl ChildServer {
    pub(crate) fn spawn(what: &str) -> ChildServer {
        use std::io::BufRead;
        let exe = std::env::current_exe()
            .unwrap()
            .with_file_name("gathering-server");
        let dir =
            std::env::temp_dir().join(format!("gathering-load-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut command = std::process::Command::new(&exe);
        if let Some(url) = CLUSTER.get() {
            empty_cluster(url);
            command.args(["--cluster", url, "--node", &format!("load-{what}")]);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&dir)
            // Every client of a load comes from 127.0.0.1.
            .args([
                "--max-connections",
                "0",
                "--max-connections-per-address",
                "0",
                "--max-ops-per-sec",
                "0",
                "--max-connections-per-gathering",
                "0",
                "--max-gatherings",
                "0",
            ])
            .env("RUST_LOG", "warn,gathering_native::server=info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build it: cargo build --release -p gathering-native)",
                    exe.display()
                )
            });
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let field = |line: &str, name: &str| {
            Some(
                line.split(name)
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_string(),
            )
        };
        let (addr, admin) = loop {
            let line = lines.next().expect("server prints its address").unwrap();
            if let (Some(addr), Some(admin)) = (field(&line, " addr="), field(&line, " admin=")) {
                break (addr, admin);
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ChildServer {
            child,
            dir,
            url: format!("ws://{addr}"),
            admin,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its CPU time so far, seconds: user, system.
    pub(crate) fn cpu_split(&self) -> (f64, f64) {
        cpu_split_of(&self.pid().to_string())
    }

    /// Bytes it has sent to storage so far (`write_bytes` of
    /// `/proc/PID/io`: whole pages, as redb rewrites them, not the bytes
    /// it was asked to make durable).
    pub(crate) fn disk_bytes(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap_or_default();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Its `/metrics` text.
    pub(crate) fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.admin) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    pub(crate) fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
