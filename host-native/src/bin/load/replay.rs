//! `replay`: loading a gathering from redb with the longest log tail
//! the default compaction leaves.

use std::time::Instant;

use crate::measure::{a_beats_b, id, median};
use gathering_core::Config;
use gathering_core::tournament::{Tournament, TournamentOp};

/// How long loading a gathering takes when its log tail is as long as the
/// default compaction allows (one op short of a snapshot), over a snapshot
/// of a state with `matches` results, from redb on disk.
pub(crate) fn replay(smoke: bool) {
    use gathering_core::{Commit, DEFAULT_SNAPSHOT_OPS, Gathering, LogEntry, commit::encode_entry};
    use gathering_native::{RedbStore, Store, Write};
    let sizes: &[usize] = if smoke {
        &[0, 100]
    } else {
        // The largest stays below the 65,536 results a tournament holds, tail included.
        &[0, 5_000, 20_000]
    };
    let rounds = if smoke { 3 } else { 21 };
    println!(
        "\n== replay: load a gathering from redb = its snapshot + the longest log tail the default compaction leaves (1,023 ops, or as many as the snapshot's bytes), one commit per op, replayed; median of {rounds}"
    );
    println!(
        "{:>10} {:>14} {:>10} {:>12} {:>12} {:>12}",
        "results", "snapshot B", "log ops", "log B", "load ms", "restore ms"
    );
    for &matches in sizes {
        let dir =
            std::env::temp_dir().join(format!("gathering-load-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = RedbStore::open(&dir, "tournament").unwrap();
        let gid = id("replayed");
        let mut state = Tournament::default();
        let by = &gathering_core::Member::open(gathering_core::ConnId(1));
        use gathering_core::App;
        for name in ["a", "b"] {
            state
                .apply(by, &TournamentOp::RegisterPlayer { name: name.into() })
                .unwrap();
        }
        let result = a_beats_b();
        for _ in 0..matches {
            state.apply(by, &result).unwrap();
        }
        let seq = 2 + matches as u64;
        let snapshot = postcard::to_allocvec(&state).unwrap();
        let snapshot_bytes = snapshot.len();
        let write = |commit| Write {
            id: gid.clone(),
            commit,
        };
        store
            .commit(&[write(Commit {
                seq,
                log: Vec::new(),
                snapshot: Some(snapshot),
            })])
            .unwrap();
        // A snapshot is written once both bounds are passed: 1,024 ops,
        // and as many log bytes as the last snapshot.
        let entry_len = encode_entry(by, &result).unwrap().len() as u64;
        let tail = (u64::from(DEFAULT_SNAPSHOT_OPS) - 1).max(
            (snapshot_bytes as u64)
                .div_ceil(entry_len)
                .saturating_sub(1),
        );
        let log: Vec<LogEntry> = (1..=tail)
            .map(|i| LogEntry {
                seq: seq + i,
                bytes: encode_entry(by, &result).unwrap(),
            })
            .collect();
        let log_bytes: usize = log.iter().map(|e| e.bytes.len()).sum();
        // One commit per op, as one op in flight makes them: the most
        // journal rows a tail of this length can take.
        for entry in log {
            let seq = entry.seq;
            store
                .commit(&[write(Commit {
                    seq,
                    log: vec![entry],
                    snapshot: None,
                })])
                .unwrap();
        }
        let (mut loads, mut restores) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            let loaded = store.load(&gid).unwrap();
            loads.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let g = Gathering::<Tournament>::restore(
                gid.clone(),
                Config::default(),
                gathering_core::Instant::ZERO,
                &loaded,
            )
            .unwrap();
            restores.push(t.elapsed().as_secs_f64());
            assert_eq!(g.seq(), seq + tail);
        }
        println!(
            "{matches:>10} {snapshot_bytes:>14} {tail:>10} {log_bytes:>12} {:>12.3} {:>12.3}",
            median(loads) * 1e3,
            median(restores) * 1e3
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
