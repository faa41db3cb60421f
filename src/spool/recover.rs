//! Startup recovery (`qmgr/qmgr_move.c`): mail an earlier queue manager
//! held in the active queue goes back to incoming, time-stamped now, so
//! that this one delivers it again.

use super::scan::DirWalk;
use super::{must, queue_id_ok, IfVanished, Spool, ACTIVE, INCOMING};

/// Moves every valid name in `active` (recursively) to `incoming`,
/// time-stamped `now` (seconds since the epoch). A vanished file is a
/// warning; any other failure is fatal. Returns how many files moved.
pub fn recover_active(spool: &Spool, now: i64) -> usize {
    let mut moved = 0;
    tracing::debug!("start move queue {ACTIVE} -> {INCOMING}");
    let mut walk = DirWalk::new(ACTIVE);
    while let Some((_, id)) = walk.next_file() {
        if !queue_id_ok(&id) {
            tracing::warn!("qmgr_move: ignored: queue {ACTIVE} id {id}");
            continue;
        }
        let path = spool.path(ACTIVE, &id);
        if must(spool.set_times(ACTIVE, &id, now), IfVanished::Warn, || {
            format!("qmgr_move: update {} time stamps", path.display())
        })
        .is_none()
        {
            continue;
        }
        if spool.move_file(&id, ACTIVE, INCOMING, IfVanished::Warn, || {
            format!("qmgr_move: rename {id} from {ACTIVE} to {INCOMING}")
        }) {
            moved += 1;
            tracing::debug!("qmgr_move: moved {id} from {ACTIVE} to {INCOMING}");
        }
    }
    tracing::debug!("end move queue {ACTIVE} -> {INCOMING}");
    moved
}
