//! The embedded store on a disk that fills up: a tiny tmpfs (mounting needs
//! root, which CI has; elsewhere the test says it did not run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::Path;
use std::process::Command;

use gathering_core::{Commit, GatheringId, LogEntry};
use gathering_native::{RedbStore, Store, Write};

/// A tmpfs of `size` mounted on `dir` for the guard's life.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Option<Self> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        match (mounted, root) {
            (true, _) => Some(Tmpfs(dir)),
            (false, true) => panic!("root could not mount a tmpfs on {}", dir.display()),
            (false, false) => {
                eprintln!("not root: the full-disk test needs to mount a tmpfs, skipped");
                None
            }
        }
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn log(seqs: std::ops::RangeInclusive<u64>, bytes: usize) -> Commit {
    Commit {
        seq: *seqs.end(),
        log: seqs
            .map(|seq| LogEntry {
                seq,
                bytes: vec![seq as u8; bytes],
            })
            .collect(),
        snapshot: None,
    }
}

#[test]
fn the_store_recovers_once_a_full_disk_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_disk) = Tmpfs::mount(dir.path(), "8m") else {
        return;
    };
    let id = GatheringId::parse("full").unwrap();
    let write = |commit| Write {
        id: id.clone(),
        commit,
    };
    let store = RedbStore::open(dir.path(), "tournament").unwrap();
    store.commit(&[write(log(1..=1, 10))]).unwrap();

    // Fill the disk.
    let filler = dir.path().join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let failed = store.commit(&[write(log(2..=9, 256 << 10))]);
    assert!(failed.is_err(), "a 2 MiB commit fit on a full disk");

    // Room again: the next commit (a gathering's successor's) is written.
    std::fs::remove_file(&filler).unwrap();
    store.commit(&[write(log(2..=2, 10))]).unwrap();
    let seqs: Vec<u64> = store.load(&id).unwrap().log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
    drop(store);
    let store = RedbStore::open(dir.path(), "tournament").unwrap();
    let seqs: Vec<u64> = store.load(&id).unwrap().log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2], "and it is all there after a restart");
}
