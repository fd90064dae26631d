//! Which rows of the journal are still needed, and when the rest goes.
//!
//! The journal is keyed by commit number, so a commit's rows land at its
//! end. A snapshot covers its gathering's older rows, which are scattered
//! over every commit since its last snapshot: deleting them one by one
//! rewrote a B-tree leaf per row (about two thirds of the bytes a commit
//! wrote; BENCHMARKS.md, "Tried and not kept"). So covered rows stay where they are,
//! unread (a load skips entries its snapshot holds), until every row of
//! the commits before them is covered too; then one range deletion takes
//! that prefix of the journal, whole leaves at a time. A gathering that
//! logs and then goes quiet would hold the prefix back for ever, so once
//! it pins too many covered rows, its entries are copied forward into the
//! current commit ([`Index::pinning`]) and the rows they came from are
//! covered like the rest. Deleting those rows then would scatter the
//! writes again; a load drops the copies' duplicates by seq instead.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use gathering_core::GatheringId;

/// How much covered rows may accumulate before something is done.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// Covered rows at the head of the journal deleted together: a range
    /// deletion frees whole leaves when it spans several.
    pub reclaim_rows: usize,
    /// Covered rows held back by older live ones that are tolerated (also
    /// while they are fewer than twice the live rows) before the oldest
    /// are moved forward.
    pub pinned_rows: usize,
    /// Commits a live row must be behind the next before it is moved
    /// forward: when gatherings snapshot about together, the last few of a
    /// wave pin the rest for a moment, and waiting is cheaper than moving.
    pub pinned_commits: u64,
    /// Gatherings moved forward by one commit at most, and the bytes read
    /// (their rows and snapshots) past which it takes no more (it takes at
    /// least one), so that the quiet ones a restart finds cost no single
    /// commit much.
    pub carried_per_commit: usize,
    pub carried_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            reclaim_rows: 1024,
            pinned_rows: 16384,
            pinned_commits: 4096,
            carried_per_commit: 64,
            carried_bytes: 1 << 20,
        }
    }
}

/// The rows of one commit number.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Rows of this commit in the journal.
    rows: u32,
    /// Of those, the rows still in some gathering's tail.
    live: u32,
}

/// The journal as the store keeps it in memory: each gathering's rows
/// after its snapshot, and how many rows of each commit are still needed.
/// Changed only together with the commit that changes the journal, under
/// the same lock ([`Index::committed`]).
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Each gathering's rows after its snapshot, oldest first. After a
    /// reopen, also rows its snapshot covers: the journal alone does not
    /// tell them apart (loads skip their entries, and moving a gathering
    /// forward drops them).
    tails: HashMap<GatheringId, Vec<u64>>,
    /// Rows of each commit from `first` to `next`, in order; the first has
    /// live rows (commits before it are covered whole).
    slots: VecDeque<Slot>,
    first: u64,
    next: u64,
    /// Commits from `deleted` to `first` are covered whole, and their
    /// `covered_prefix` rows are still in the journal.
    deleted: u64,
    covered_prefix: usize,
    /// Rows in the journal, and live ones among them.
    rows: usize,
    live: usize,
    bounds: Bounds,
}

/// What one commit did to the journal, for [`Index::committed`].
#[derive(Debug, Default)]
pub(super) struct Committed {
    /// Gatherings whose earlier rows are covered from this commit on: by
    /// a snapshot, or by a copy of their entries in it.
    pub covered: Vec<GatheringId>,
    /// Gatherings this commit wrote a row for.
    pub logged: Vec<GatheringId>,
    /// The covered commits whose rows it deleted ([`Index::reclaimable`]).
    pub reclaimed: Option<Range<u64>>,
}

impl Index {
    pub fn new(bounds: Bounds) -> Self {
        Index {
            bounds,
            ..Index::default()
        }
    }

    /// The index of a journal holding `rows` (commit number, gathering),
    /// in key order; every row counts as live.
    pub fn rebuilt(bounds: Bounds, rows: impl IntoIterator<Item = (u64, GatheringId)>) -> Self {
        let mut index = Index::new(bounds);
        for (commit, id) in rows {
            if index.rows == 0 {
                index.first = commit;
                index.deleted = commit;
                index.next = commit;
            }
            while index.next <= commit {
                index.slots.push_back(Slot::default());
                index.next += 1;
            }
            if let Some(slot) = index.slots.back_mut() {
                slot.rows += 1;
                slot.live += 1;
            }
            index.rows += 1;
            index.live += 1;
            index.tails.entry(id).or_default().push(commit);
        }
        index
    }

    /// What it was made with.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The number the next commit gets.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The rows holding `id`'s entries after its snapshot, oldest first.
    pub fn tail(&self, id: &GatheringId) -> &[u64] {
        self.tails.get(id).map_or(&[], Vec::as_slice)
    }

    /// Rows in the journal, covered ones included.
    #[cfg(test)]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The oldest commit with live rows, when it is old and the covered
    /// rows after it (which wait for it) outnumber twice both the live rows
    /// and the tolerated bound: its gatherings' rows should move forward.
    pub fn pinning(&self) -> Option<u64> {
        let pinned = self
            .rows
            .saturating_sub(self.live)
            .saturating_sub(self.covered_prefix);
        let old = self.next.saturating_sub(self.first) > self.bounds.pinned_commits;
        (old && pinned > 2 * self.live.max(self.bounds.pinned_rows) && !self.slots.is_empty())
            .then_some(self.first)
    }

    /// Whether `id`'s oldest row is in `commit`.
    pub fn starts_at(&self, id: &GatheringId, commit: u64) -> bool {
        self.tail(id).first() == Some(&commit)
    }

    /// How many gatherings, and bytes of their entries, one commit moves
    /// forward at most.
    pub fn carried_per_commit(&self) -> (usize, usize) {
        (self.bounds.carried_per_commit, self.bounds.carried_bytes)
    }

    /// The commits at the head of the journal that are covered whole, once
    /// they hold enough rows to delete together.
    pub fn reclaimable(&self) -> Option<Range<u64>> {
        (self.covered_prefix >= self.bounds.reclaim_rows).then_some(self.deleted..self.first)
    }

    /// Records commit number [`Index::next`] as durable, with what it did.
    pub fn committed(&mut self, done: Committed) {
        let logged = done.logged.len() as u32;
        self.slots.push_back(Slot {
            rows: logged,
            live: logged,
        });
        self.next += 1;
        if let Some(range) = done.reclaimed {
            // Everything before `range.end` was covered when it was planned.
            self.rows = self.rows.saturating_sub(self.covered_prefix);
            self.covered_prefix = 0;
            self.deleted = range.end;
        }
        for id in &done.covered {
            for row in self.tails.remove(id).unwrap_or_default() {
                self.forget(row);
            }
        }
        let commit = self.next - 1;
        for id in done.logged {
            self.tails.entry(id).or_default().push(commit);
        }
        self.rows += logged as usize;
        self.live += logged as usize;
        // The head of the journal, covered whole, joins the prefix that a
        // range deletion takes.
        while self.slots.front().is_some_and(|slot| slot.live == 0) {
            if let Some(slot) = self.slots.pop_front() {
                self.covered_prefix += slot.rows as usize;
            }
            self.first += 1;
        }
        if self.covered_prefix == 0 {
            // Nothing of the commits before `first` is left.
            self.deleted = self.first;
        }
    }

    /// One row of `commit` is no longer live.
    fn forget(&mut self, commit: u64) {
        let Some(slot) = commit
            .checked_sub(self.first)
            .and_then(|i| self.slots.get_mut(i as usize))
        else {
            return;
        };
        slot.live = slot.live.saturating_sub(1);
        self.live = self.live.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> GatheringId {
        GatheringId::parse(name).unwrap()
    }

    fn small() -> Bounds {
        Bounds {
            reclaim_rows: 3,
            pinned_rows: 4,
            pinned_commits: 6,
            carried_per_commit: 8,
            carried_bytes: 64,
        }
    }

    fn logged(ids: &[&str]) -> Committed {
        Committed {
            logged: ids.iter().map(|n| id(n)).collect(),
            ..Committed::default()
        }
    }

    #[test]
    fn covered_rows_are_reclaimed_once_the_head_of_the_journal_is_covered_whole() {
        let mut index = Index::new(small());
        for _ in 0..3 {
            index.committed(logged(&["a", "b"]));
        }
        assert_eq!(index.tail(&id("a")), [0, 1, 2]);
        // a's snapshot covers its rows, but b's still need commits 0-2.
        index.committed(Committed {
            covered: vec![id("a")],
            ..Committed::default()
        });
        assert_eq!(index.tail(&id("a")), [] as [u64; 0]);
        assert_eq!(index.reclaimable(), None);
        // b's covers the rest: commits 0-3 go in one deletion.
        index.committed(Committed {
            covered: vec![id("b")],
            ..Committed::default()
        });
        assert_eq!(index.reclaimable(), Some(0..5));
        index.committed(Committed {
            reclaimed: Some(0..5),
            ..logged(&["a"])
        });
        assert_eq!(index.rows(), 1);
        assert_eq!(index.tail(&id("a")), [5]);
        assert_eq!(index.reclaimable(), None);
    }

    #[test]
    fn a_quiet_gathering_is_moved_forward_once_it_pins_more_than_is_live() {
        let mut index = Index::new(small());
        index.committed(logged(&["quiet", "busy"]));
        let mut pinned_at = None;
        for _ in 0..20 {
            if let Some(commit) = index.pinning() {
                pinned_at = Some(commit);
                break;
            }
            // The busy gathering logs and snapshots every commit.
            index.committed(Committed {
                covered: vec![id("busy")],
                ..logged(&["busy"])
            });
        }
        assert_eq!(pinned_at, Some(0), "the quiet gathering's row pins them");
        assert!(index.starts_at(&id("quiet"), 0));
        assert!(!index.starts_at(&id("busy"), 0));
        // Copied into this commit: its old row is covered too.
        index.committed(Committed {
            covered: vec![id("quiet")],
            ..logged(&["quiet"])
        });
        assert_eq!(index.pinning(), None);
        // Everything before the busy gathering's live row can go.
        assert_eq!(index.reclaimable(), Some(0..index.tail(&id("busy"))[0]));
        assert_eq!(index.tail(&id("quiet")), [index.next() - 1]);
    }

    #[test]
    fn a_rebuilt_index_counts_every_row_as_live() {
        let rows = [(3, id("a")), (3, id("b")), (5, id("a"))];
        let mut index = Index::rebuilt(small(), rows);
        assert_eq!(index.next(), 6);
        assert_eq!(index.tail(&id("a")), [3, 5]);
        assert_eq!(index.rows(), 3);
        index.committed(Committed {
            covered: vec![id("a"), id("b")],
            ..Committed::default()
        });
        assert_eq!(index.reclaimable(), Some(3..7));
    }
}
