//! Startup recovery (`qmgr/qmgr_move.c`): mail an earlier queue manager
//! held in the active queue is delivered again by this one.
//!
//! Postfix's qmgr renames every such file back to incoming, time-stamped
//! now, before it reads the first one; its incoming scan then renames each
//! into active again. With 50 000 files left behind its first delivery
//! waits for 50 000 renames, and every file makes two renames and a
//! `utime` more than a message that arrived normally. rqmgr lists the names
//! first (before it feeds anything into active, so the list holds only what
//! the earlier queue manager left) and feeds each file where it is, as if
//! its incoming scan had just moved it there: delivery starts at once, and
//! the files never leave active (a crash meanwhile leaves them where the
//! next start finds them again). The list takes turns with the incoming
//! scan, so new mail does not wait behind it (see `shell/feed.rs`).

use super::scan::DirWalk;
use super::{queue_id_ok, ACTIVE};

/// The files left in active at start-up that are still to be fed.
#[derive(Debug)]
pub struct ActiveRecovery {
    /// The queue ids, each followed by `\n` (one allocation, about 12
    /// bytes per file); `next` is the offset of the first one not handed
    /// out.
    ids: String,
    next: usize,
}

impl ActiveRecovery {
    /// Lists every valid name in `active` (recursively); an invalid one is
    /// a warning, as `qmgr_move`'s. Call it before anything is fed.
    pub fn list() -> ActiveRecovery {
        tracing::debug!("start feeding queue {ACTIVE} as left at start-up");
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
        ActiveRecovery { ids, next: 0 }
    }

    /// True when every listed file was handed out.
    pub fn is_done(&self) -> bool {
        self.next >= self.ids.len()
    }

    /// The next listed queue id, or `None` once all were handed out.
    pub fn next_id(&mut self) -> Option<String> {
        let len = self.ids[self.next..].find('\n')?;
        let id = self.ids[self.next..self.next + len].to_string();
        self.next += len + 1;
        if self.is_done() {
            tracing::debug!("end feeding queue {ACTIVE} as left at start-up");
            self.ids = String::new();
            self.next = 0;
        }
        Some(id)
    }
}
