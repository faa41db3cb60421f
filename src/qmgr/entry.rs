//! Entries (`qmgr/qmgr_entry.c`): one future delivery request, a group of
//! one message's recipients for one destination. Creation (with the
//! `qmgr_clog_warn_time` warnings), selection for a ready agent (with
//! opportunistic session caching), and release when the agent is done, which
//! frees idle queues and peers, starts rate delays, and starts the
//! message's completion when its last entry goes.

use super::event::{ClogAdvice, Event, Trace};
use super::{Action, Core, EntryId, MessageId, PeerId, QueueId, TransportId};
use crate::proto::deliver_flag::{CONN_LOAD, CONN_STORE};
use std::time::Instant;

/// One future delivery request (`QMGR_ENTRY`).
#[derive(Debug)]
pub struct Entry<R> {
    /// The message the recipients belong to.
    pub msg: MessageId,
    /// The destination.
    pub queue: QueueId,
    /// The recipients of this request.
    pub recipients: Vec<R>,
    /// nqmgr: the peer (job × destination) the entry belongs to.
    pub(super) peer: Option<PeerId>,
    /// Handed to an agent (on the queue's busy count, off its todo list).
    pub(super) busy: bool,
}

impl<R> Core<R> {
    /// A new entry of `msg` for queue `q` (`qmgr_entry_create`).
    pub(super) fn entry_create(
        &mut self,
        msg: MessageId,
        q: QueueId,
        peer: Option<PeerId>,
        now: Instant,
    ) -> EntryId {
        let e = self.entries.insert(Entry {
            msg,
            queue: q,
            recipients: Vec::new(),
            peer,
            busy: false,
        });
        self.messages[msg].refcount += 1;
        if let Some(p) = peer {
            self.peers[p]
                .entries
                .push_back(&mut self.entry_peer_links, e);
            self.peers[p].refcount += 1;
            let job = self.peers[p].job;
            self.jobs[job].read_entries += 1;
        }
        self.queues[q]
            .todo
            .push_back(&mut self.entry_queue_links, e);
        self.update_contrib(q);
        self.clog_warning(q, now);
        e
    }

    /// Warns when one destination fills the active queue
    /// (`qmgr_entry_create`), at most once per `qmgr_clog_warn_time`.
    fn clog_warning(&mut self, q: QueueId, now: Instant) {
        if !self.settings.helpful_warnings || self.settings.clog_warn_time == 0 {
            return;
        }
        let secs = self.secs(now);
        let queue = &self.queues[q];
        let length = queue.todo.len() as i64 + i64::from(queue.busy);
        if length <= self.settings.active_limit / 5 || secs < queue.clog_time_to_warn {
            return;
        }
        let count = self.messages.len().max(1) as i64;
        let share = length as f64 / count as f64;
        let tr = &self.transports[queue.transport];
        let limit = tr.params.dest_concurrency_limit;
        let advice = if limit > 0 && limit <= i64::from(queue.busy) + 1 {
            ClogAdvice::ConcurrencyLimit { limit }
        } else if f64::from(queue.window) > self.settings.active_limit as f64 * share {
            ClogAdvice::ActiveLimit {
                limit: self.settings.active_limit,
            }
        } else if self.transport_has_several_queues(queue.transport) {
            ClogAdvice::SeparateTransport
        } else {
            ClogAdvice::Timeouts
        };
        let event = Event::Clogged {
            transport: tr.name.clone(),
            nexthop: queue.nexthop.clone(),
            length,
            count,
            slows_others: share < 0.9,
            advice,
        };
        self.emit(event);
        self.queues[q].clog_time_to_warn = secs + self.settings.clog_warn_time;
    }

    /// Postfix's test is "the transport has other queues" (`queue->peers`
    /// are the transport's queue list links).
    fn transport_has_several_queues(&self, t: TransportId) -> bool {
        self.transports[t].queues.len() > 1
    }

    /// oqmgr: the first ready queue with work, round robin; its oldest entry
    /// (`oqmgr/qmgr_queue.c:qmgr_queue_select`, `oqmgr/qmgr_entry.c`: its
    /// QMGR_LIST_APPEND inserts at the head, and selection takes the tail).
    pub(super) fn oqmgr_entry_select(&mut self, t: TransportId, now: Instant) -> Option<EntryId> {
        let mut cur = self.transports[t].queues.first();
        while let Some(q) = cur {
            cur = self.queue_links.next(q);
            let queue = &self.queues[q];
            if queue.window > queue.busy && !queue.todo.is_empty() {
                let e = queue.todo.first().expect("non-empty todo");
                self.transports[t]
                    .queues
                    .rotate_to_back(&mut self.queue_links, q);
                self.trace(|c| Trace::QueueSelect {
                    queue: c.queues[q].name.clone(),
                });
                self.select_entry(e, now);
                return Some(e);
            }
        }
        None
    }

    /// Moves entry `e` from its queue's todo list to busy
    /// (`qmgr_entry_select`), with opportunistic session caching.
    pub(super) fn select_entry(&mut self, e: EntryId, now: Instant) {
        let secs = self.secs(now);
        let q = self.entries[e].queue;
        self.queues[q].todo.remove(&mut self.entry_queue_links, e);
        self.queues[q].busy += 1;
        if let Some(p) = self.entries[e].peer {
            self.peers[p].entries.remove(&mut self.entry_peer_links, e);
            let job = self.peers[p].job;
            self.jobs[job].selected_entries += 1;
        }
        self.entries[e].busy = true;
        let queue = &mut self.queues[q];
        let back_to_back = queue.last_done.is_some_and(|d| d + 1 >= secs);
        let caching = if queue.dflags & CONN_STORE == 0 {
            back_to_back.then(|| {
                queue.dflags |= CONN_LOAD | CONN_STORE;
                true
            })
        } else if !(queue.busy > 1 || back_to_back) {
            queue.dflags &= !CONN_STORE;
            Some(false)
        } else {
            None
        };
        if let Some(allow) = caching {
            self.trace(|c| Trace::SessionCaching {
                queue: c.queues[q].name.clone(),
                allow,
            });
        }
        self.update_contrib(q);
    }

    /// Puts a selected entry back (`qmgr_entry_unselect`).
    pub(super) fn unselect_entry(&mut self, e: EntryId) {
        let q = self.entries[e].queue;
        self.entries[e].busy = false;
        self.queues[q].busy -= 1;
        self.queues[q]
            .todo
            .push_back(&mut self.entry_queue_links, e);
        if let Some(p) = self.entries[e].peer {
            self.peers[p]
                .entries
                .push_front(&mut self.entry_peer_links, e);
            let job = self.peers[p].job;
            self.jobs[job].selected_entries -= 1;
        }
        self.update_contrib(q);
    }

    /// Releases entry `e` (`qmgr_entry_done`): `busy` says whether an agent
    /// had it. Returns its message and recipients.
    pub(super) fn entry_done(
        &mut self,
        e: EntryId,
        busy: bool,
        now: Instant,
    ) -> (MessageId, Vec<R>) {
        let entry = self.entries.remove(e);
        let q = entry.queue;
        let msg = entry.msg;
        let t = self.queues[q].transport;
        if busy {
            self.queues[q].busy -= 1;
        } else {
            self.queues[q].todo.remove(&mut self.entry_queue_links, e);
            if let Some(p) = entry.peer {
                self.peers[p].entries.remove(&mut self.entry_peer_links, e);
                let job = self.peers[p].job;
                self.jobs[job].selected_entries += 1;
            }
        }
        let n = entry.recipients.len() as i64;
        self.messages[msg].rcpt_count -= n;
        self.recipient_count -= n;
        if let Some(p) = entry.peer {
            let job = self.peers[p].job;
            self.jobs[job].rcpt_count -= n;
            self.return_sponsored_slots(msg, job);
        }
        let rate_delay = self.transports[t].params.rate_delay;
        if busy && rate_delay > 0 {
            if self.queues[q].window == 0 {
                self.unthrottle_queue(q);
            }
            if self.queues[q].window > 0 {
                self.suspend_queue(q, now);
            }
        }
        if self.nqmgr()
            && self.queues[q].window != -1
            && self.queues[q].blocker_tag == self.transports[t].blocker_tag
        {
            self.job_blocker_update(q);
        }
        if let Some(p) = entry.peer {
            self.peers[p].refcount -= 1;
            if self.peers[p].refcount == 0 {
                self.peer_free(p);
            }
        }
        if busy {
            self.queues[q].last_done = Some(self.secs(now));
        }
        self.update_contrib(q);
        if self.queues[q].todo.is_empty() && self.queues[q].busy == 0 {
            if self.queues[q].window == 0
                && self.queues.len() as i64 > 2 * self.settings.recipient_limit
            {
                self.unthrottle_queue(q);
            }
            self.queue_done_if_idle(q);
        }
        let oqmgr_budget = self.settings.recipient_limit * self.settings.fudge_factor / 100 - 100;
        let oqmgr = !self.nqmgr();
        let below_budget = self.recipient_count < oqmgr_budget;
        let m = &mut self.messages[msg];
        m.refcount -= 1;
        // oqmgr reads more recipients as soon as the in-core count drops
        // well below its budget (oqmgr/qmgr_entry.c).
        if oqmgr && m.more && !m.refill_pending && below_budget {
            m.refill_pending = true;
            self.actions.push_back(Action::Refill { msg });
        }
        self.start_completion_if_done(msg);
        (msg, entry.recipients)
    }
}
