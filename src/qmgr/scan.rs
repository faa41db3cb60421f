//! Scans (`qmgr/qmgr.c:qmgr_trigger_event`, `qmgr_loop`,
//! `qmgr/qmgr_scan.c`): what a trigger asks of the incoming and deferred
//! scans, the flags a scan carries into the messages it feeds, and which
//! queue is scanned first. The directory walks themselves are the shell's
//! (`spool::Scanner`).

use super::Core;
use crate::proto::trigger;

/// Scan request flags (`qmgr/qmgr.h`, `QMGR_SCAN_*`, `QMGR_FLUSH_*`,
/// `QMGR_FORCE_EXPIRE`), OR-ed into a scanner's current and next run and
/// carried by the messages it feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanFlags(u32);

impl ScanFlags {
    /// Start a scan (or one more pass after the current one).
    pub const START: ScanFlags = ScanFlags(1);
    /// Ignore file time stamps ("not yet" files are fed too).
    pub const ALL: ScanFlags = ScanFlags(2);
    /// Revive dead transports and destinations before scanning (`F` trigger).
    pub const FLUSH_ONCE: ScanFlags = ScanFlags(4);
    /// Ignore `defer_transports` for messages of this scan.
    pub const FLUSH_DFXP: ScanFlags = ScanFlags(8);
    /// Revive dead destinations per message (the g+r file bit).
    pub const FLUSH_EACH: ScanFlags = ScanFlags(16);
    /// Expire the message now (the g+x file bit).
    pub const FORCE_EXPIRE: ScanFlags = ScanFlags(32);

    /// True if every bit of `other` is set.
    pub fn contains(self, other: ScanFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// True if no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// These flags without those of `other`.
    pub fn without(self, other: ScanFlags) -> ScanFlags {
        ScanFlags(self.0 & !other.0)
    }
    /// The flags both have.
    pub fn intersection(self, other: ScanFlags) -> ScanFlags {
        ScanFlags(self.0 & other.0)
    }
}

impl std::ops::BitOr for ScanFlags {
    type Output = ScanFlags;
    fn bitor(self, rhs: ScanFlags) -> ScanFlags {
        ScanFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ScanFlags {
    fn bitor_assign(&mut self, rhs: ScanFlags) {
        self.0 |= rhs.0;
    }
}

/// The two queues qmgr scans, in `qmgr_scans[]` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanQueue {
    Incoming,
    Deferred,
}

impl ScanQueue {
    /// The other queue.
    pub fn other(self) -> ScanQueue {
        match self {
            ScanQueue::Incoming => ScanQueue::Deferred,
            ScanQueue::Deferred => ScanQueue::Incoming,
        }
    }
}

/// What one trigger asks of the two scans (`qmgr_trigger_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanRequests {
    /// Flags for the incoming scan (empty: no request).
    pub incoming: ScanFlags,
    /// Flags for the deferred scan (empty: no request).
    pub deferred: ScanFlags,
    /// Bytes that mean nothing to qmgr (ignored).
    pub ignored: usize,
}

/// Which queue is scanned first (`qmgr_loop`): incoming and deferred take
/// turns while the active queue has room; once it is full, incoming goes
/// first the next time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedOrder {
    first: ScanQueue,
}

impl Default for FeedOrder {
    fn default() -> Self {
        FeedOrder {
            first: ScanQueue::Incoming,
        }
    }
}

impl FeedOrder {
    /// The queues in the order to try them this round.
    pub fn order(&self) -> [ScanQueue; 2] {
        [self.first, self.first.other()]
    }

    /// After a round: `last` is the queue tried last (if any), `has_room`
    /// whether the active queue still has room.
    pub fn advance(&mut self, last: Option<ScanQueue>, has_room: bool) {
        self.first = match last {
            Some(q) if has_room => q.other(),
            _ => ScanQueue::Incoming,
        };
    }
}

impl<R> Core<R> {
    /// Reads a trigger (`qmgr_trigger_event`): W and I request an incoming
    /// scan, D a deferred scan, F revives dead transports and destinations
    /// (now, `qmgr_enable_all`) and has both scans ignore
    /// `defer_transports`, A has both ignore time stamps.
    pub fn trigger(&mut self, bytes: &[u8]) -> ScanRequests {
        let mut r = ScanRequests::default();
        for &b in bytes {
            match b {
                trigger::WAKEUP | trigger::SCAN_INCOMING => r.incoming |= ScanFlags::START,
                trigger::SCAN_DEFERRED => r.deferred |= ScanFlags::START,
                trigger::FLUSH_DEAD => {
                    r.incoming |= ScanFlags::FLUSH_ONCE | ScanFlags::FLUSH_DFXP;
                    r.deferred |= ScanFlags::FLUSH_ONCE | ScanFlags::FLUSH_DFXP;
                }
                trigger::SCAN_ALL => {
                    r.incoming |= ScanFlags::ALL;
                    r.deferred |= ScanFlags::ALL;
                }
                _ => r.ignored += 1,
            }
        }
        if r.incoming.contains(ScanFlags::FLUSH_ONCE) {
            self.enable_all();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_order_alternates_while_there_is_room() {
        let mut f = FeedOrder::default();
        assert_eq!(f.order(), [ScanQueue::Incoming, ScanQueue::Deferred]);
        f.advance(Some(ScanQueue::Incoming), true);
        assert_eq!(f.order()[0], ScanQueue::Deferred);
        f.advance(Some(ScanQueue::Deferred), false);
        assert_eq!(f.order()[0], ScanQueue::Incoming);
        f.advance(None, false);
        assert_eq!(f.order()[0], ScanQueue::Incoming);
    }

    #[test]
    fn triggers() {
        let now = std::time::Instant::now();
        let mut c = super::super::tests::core(now);
        let r = c.trigger(b"WxD");
        assert_eq!(
            (r.incoming, r.deferred, r.ignored),
            (ScanFlags::START, ScanFlags::START, 1)
        );
        let r = c.trigger(b"FA");
        assert!(r
            .deferred
            .contains(ScanFlags::FLUSH_ONCE | ScanFlags::FLUSH_DFXP | ScanFlags::ALL));
        assert!(!r.incoming.contains(ScanFlags::START));
    }
}
