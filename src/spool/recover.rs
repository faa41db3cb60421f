//! Startup recovery (`qmgr/qmgr_move.c`): mail an earlier queue manager
//! held in the active queue goes back to incoming, time-stamped now, so
//! that this one delivers it again.
//!
//! Postfix's qmgr moves every file before it reads the first one, so with
//! 50 000 files left behind its first delivery waits for 50 000 renames.
//! rqmgr lists the names first (before it feeds anything into active, so
//! the list holds only what the earlier queue manager left), then moves
//! them a batch at a time between feeds: delivery starts after the first
//! batch. Each file makes the same trip as in Postfix.

use super::scan::DirWalk;
use super::{must, queue_id_ok, IfVanished, Spool, ACTIVE, INCOMING};

/// The files left in active at start-up that are still to go back to
/// incoming (`qmgr_move`, in steps).
#[derive(Debug)]
pub struct ActiveRecovery {
    /// The queue ids, each followed by `\n` (one allocation, about 12
    /// bytes per file); `next` is the offset of the first one not moved.
    ids: String,
    next: usize,
    /// The time stamp every moved file gets, seconds since the epoch.
    now: i64,
}

impl ActiveRecovery {
    /// Lists every valid name in `active` (recursively); an invalid one is
    /// a warning, as `qmgr_move`'s. `now`: the time stamp for the moved
    /// files, seconds since the epoch. Call it before anything is fed.
    pub fn list(now: i64) -> ActiveRecovery {
        tracing::debug!("start move queue {ACTIVE} -> {INCOMING}");
        let mut ids = String::new();
        let mut walk = DirWalk::new(ACTIVE);
        while let Some((_, id)) = walk.next_file() {
            if queue_id_ok(&id) {
                ids.push_str(&id);
                ids.push('\n');
            } else {
                tracing::warn!("qmgr_move: ignored: queue {ACTIVE} id {id}");
            }
        }
        ActiveRecovery { ids, next: 0, now }
    }

    /// True when every listed file was moved (or vanished).
    pub fn is_done(&self) -> bool {
        self.next >= self.ids.len()
    }

    /// Moves up to `batch` listed files to `incoming`, time-stamped as
    /// listed. A vanished file is a warning; any other failure is fatal.
    /// Returns how many files moved.
    pub fn move_batch(&mut self, spool: &Spool, batch: usize) -> usize {
        let mut moved = 0;
        for _ in 0..batch {
            let Some(len) = self.ids[self.next..].find('\n') else {
                break;
            };
            let id = &self.ids[self.next..self.next + len];
            self.next += len + 1;
            if move_one(spool, id, self.now) {
                moved += 1;
            }
        }
        if self.is_done() {
            tracing::debug!("end move queue {ACTIVE} -> {INCOMING}");
            self.ids = String::new();
            self.next = 0;
        }
        moved
    }
}

fn move_one(spool: &Spool, id: &str, now: i64) -> bool {
    let path = spool.path(ACTIVE, id);
    if must(spool.set_times(ACTIVE, id, now), IfVanished::Warn, || {
        format!("qmgr_move: update {} time stamps", path.display())
    })
    .is_none()
    {
        return false;
    }
    let moved = spool.move_file(id, ACTIVE, INCOMING, IfVanished::Warn, || {
        format!("qmgr_move: rename {id} from {ACTIVE} to {INCOMING}")
    });
    if moved {
        tracing::debug!("qmgr_move: moved {id} from {ACTIVE} to {INCOMING}");
    }
    moved
}
