//! Work qmgr moves aside itself (`qmgr/qmgr_defer.c`, `qmgr/qmgr_error.c`):
//! when a destination or transport dies, its waiting entries move to the
//! `retry` transport's queue for the reason (named `"<status> <text>"`), so
//! that error(8) defers them with that reason; if `retry` itself is dead,
//! the recipients go back to the shell to be deferred directly.

use super::{Action, Core, QueueId, Reason, Trace};
use crate::proto::service;
use std::time::Instant;

impl<R> Core<R> {
    /// The queue of the `retry` transport for `reason`, unless the retry
    /// transport or that queue is dead (`qmgr_error_queue`).
    pub(super) fn retry_queue(&mut self, reason: &Reason) -> Option<QueueId> {
        let r = self.transport_index(service::RETRY);
        if self.transports[r].dead.is_some() {
            return None;
        }
        let nexthop = reason.nexthop();
        let q = self.find_or_create_queue(r, &nexthop, &nexthop);
        (self.queues[q].window != 0).then_some(q)
    }

    /// Moves every waiting entry of queue `q` to the retry queue for `reason`,
    /// or hands its recipients to the shell if retry is unavailable
    /// (`qmgr_defer_todo`, `qmgr_entry_move_todo`).
    pub(super) fn defer_todo(&mut self, q: QueueId, reason: &Reason, now: Instant) {
        self.trace(|c| Trace::DeferSite {
            queue: c.queues[q].name.clone(),
            reason: reason.clone(),
        });
        let retry = self.retry_queue(reason);
        for e in self.queues[q].todo.items(&self.entry_queue_links) {
            let msg = self.entries[e].msg;
            let recipients = std::mem::take(&mut self.entries[e].recipients);
            let n = recipients.len() as i64;
            let src_job = self.entries[e].peer.map(|p| self.peers[p].job);
            match retry {
                Some(rq) if rq != q => {
                    let peer = if self.nqmgr() {
                        let rt = self.queues[rq].transport;
                        let job = self.job_obtain(msg, rt);
                        let peer = self.peer_obtain(job, rq);
                        self.jobs[job].rcpt_count += n;
                        Some(peer)
                    } else {
                        None
                    };
                    if let Some(job) = src_job {
                        self.jobs[job].rcpt_count -= n;
                    }
                    let new = self.entry_create(msg, rq, peer, now);
                    // The recipients move; the message's counts stay the same
                    // (the old entry leaves empty).
                    self.entries[new].recipients = recipients;
                }
                _ => {
                    // Count them off here: the entry leaves with no recipients.
                    self.messages[msg].rcpt_count -= n;
                    self.recipient_count -= n;
                    if let Some(job) = src_job {
                        self.jobs[job].rcpt_count -= n;
                    }
                    self.actions.push_back(Action::Defer {
                        msg,
                        recipients,
                        reason: reason.clone(),
                    });
                }
            }
            self.entry_done(e, false, now);
        }
    }
}
