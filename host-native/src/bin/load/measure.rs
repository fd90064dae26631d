//! Figures from samples and from `/proc`: quantiles, memory, CPU time;
//! and the tournament clients and op every load sends.

use std::time::{Duration, Instant};

use gathering_core::tournament::{Tournament, TournamentOp};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gathering_core::{Encoding, GatheringId, SessionId};
use gathering_native::client::Client;

pub(crate) fn id(s: &str) -> GatheringId {
    GatheringId::parse(s).unwrap()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p` quantile (0..=1) of sorted `v`.
pub(crate) fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Resident memory of this process, bytes.
pub(crate) fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU time this process has used, seconds (user + system).
pub(crate) fn cpu_secs() -> f64 {
    let (user, system) = cpu_split_of("self");
    user + system
}

/// CPU time process `pid` (or `self`) has used, seconds: in user space, and
/// in the kernel on its behalf (its syscalls, and on loopback the TCP
/// receive work of whatever it sends to).
pub(crate) fn cpu_split_of(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in clock ticks of 1/100 s on Linux.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

pub(crate) async fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not done within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resident memory of process `pid`, bytes.
pub(crate) fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The op every load of this file sends: `a` beat `b` (the tournament keeps
/// every result, so the state grows with each).
pub(crate) fn a_beats_b() -> TournamentOp {
    TournamentOp::RecordResult {
        a: "a".into(),
        b: "b".into(),
        winner: Some("a".into()),
    }
}

/// `g` tournaments named `{prefix}{i}` with `c` postcard clients each, the
/// first of which registers players `a` and `b`; returns once the
/// registrations' forwards have settled.
pub(crate) async fn tournament_clients(
    url: &str,
    prefix: &str,
    g: usize,
    c: usize,
) -> Vec<Client<Tournament>> {
    let mut clients = Vec::new();
    for gi in 0..g {
        let gid = id(&format!("{prefix}{gi}"));
        for ci in 0..c {
            let mut client = join(url, &gid).await;
            if ci == 0 {
                for name in ["a", "b"] {
                    client
                        .op(TournamentOp::RegisterPlayer { name: name.into() })
                        .await
                        .unwrap();
                }
            }
            clients.push(client);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    clients
}

/// Whether clients join with a session (`--sessions`).
pub(crate) static SESSIONS: AtomicBool = AtomicBool::new(false);

/// A postcard client of gathering `gid`; with `--sessions`, joined with a
/// session of its own.
pub(crate) async fn join(url: &str, gid: &GatheringId) -> Client<Tournament> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if SESSIONS.load(Ordering::Relaxed) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let session = SessionId::parse(&format!("k{n}")).unwrap();
        return Client::connect_session(url, gid, Encoding::Postcard, &session)
            .await
            .unwrap();
    }
    Client::connect(url, gid, Encoding::Postcard).await.unwrap()
}
