//! Peers (`qmgr/qmgr_peer.c`): one nqmgr job's work for one destination,
//! the entries of that job waiting for that queue. A job's peers are served
//! round robin.

use super::list::List;
use super::{Core, EntryId, JobId, PeerId, QueueId, Trace};
use std::collections::HashMap;

/// Peers a job may have before it keeps a table of them: a walk of up to
/// 8 costs less than hashing, and most jobs have one.
pub(super) const PEER_SCAN_MAX: usize = 8;

/// One job's entries for one destination (`QMGR_PEER`).
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) job: JobId,
    pub(super) queue: QueueId,
    /// Entries not yet selected.
    pub(super) entries: List<EntryId>,
    /// Live entries (selected or not).
    pub(super) refcount: u32,
}

impl<R> Core<R> {
    /// The peer of `job` for queue `q`, created if new (`qmgr_peer_obtain`).
    pub(super) fn peer_obtain(&mut self, job: JobId, q: QueueId) -> PeerId {
        if let Some(p) = self.peer_find(job, q) {
            return p;
        }
        let p = self.peers.insert(Peer {
            job,
            queue: q,
            entries: List::default(),
            refcount: 0,
        });
        let j = &mut self.jobs[job];
        j.peers.push_back(&mut self.peer_links, p);
        if let Some(index) = &mut j.peer_by_queue {
            index.insert(q, p);
        } else if j.peers.len() > PEER_SCAN_MAX {
            let mut index = HashMap::with_capacity(j.peers.len() * 2);
            let mut cur = j.peers.first();
            while let Some(p) = cur {
                index.insert(self.peers[p].queue, p);
                cur = self.peer_links.next(p);
            }
            j.peer_by_queue = Some(Box::new(index));
        }
        p
    }

    /// The peer of `job` for queue `q`, if any (`qmgr_peer_find`).
    fn peer_find(&self, job: JobId, q: QueueId) -> Option<PeerId> {
        let j = &self.jobs[job];
        if let Some(index) = &j.peer_by_queue {
            return index.get(&q).copied();
        }
        let mut cur = j.peers.first();
        while let Some(p) = cur {
            if self.peers[p].queue == q {
                return Some(p);
            }
            cur = self.peer_links.next(p);
        }
        None
    }

    /// Releases a peer with no entries left (`qmgr_peer_free`).
    pub(super) fn peer_free(&mut self, p: PeerId) {
        let peer = self.peers.remove(p);
        if let Some(job) = self.jobs.get_mut(peer.job) {
            job.peers.remove(&mut self.peer_links, p);
            if let Some(index) = &mut job.peer_by_queue {
                index.remove(&peer.queue);
            }
        }
    }

    /// The first peer of `job` whose destination can take another delivery,
    /// rotated to the end (`qmgr_peer_select`).
    pub(super) fn peer_select(&mut self, job: JobId) -> Option<PeerId> {
        let mut cur = self.jobs[job].peers.first();
        while let Some(p) = cur {
            cur = self.peer_links.next(p);
            let queue = &self.queues[self.peers[p].queue];
            if queue.window > queue.busy && !self.peers[p].entries.is_empty() {
                self.jobs[job].peers.rotate_to_back(&mut self.peer_links, p);
                self.trace(|c| {
                    let queue = &c.queues[c.peers[p].queue];
                    Trace::PeerSelect {
                        msg: c.jobs[job].msg,
                        transport: c.transports[queue.transport].name.clone(),
                        queue: queue.name.clone(),
                        busy: queue.busy + 1,
                        window: queue.window,
                    }
                });
                return Some(p);
            }
        }
        None
    }
}
