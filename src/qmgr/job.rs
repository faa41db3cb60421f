//! nqmgr's preemptive job scheduler (`qmgr/qmgr_job.c`, the job parts of
//! `qmgr_entry.c` and `qmgr_message.c`).
//!
//! A job is one message's work for one transport. Each transport keeps its
//! jobs in arrival order (`job_bytime`) and in scheduling order
//! (`job_list`), where a preempting job sits in front of the job it
//! preempted. A job earns one delivery slot per delivery; a large job that
//! has earned enough slots (with a loan) lets a smaller, longer-waiting job
//! jump ahead and spend them. In-core recipients are budgeted per transport
//! (`_recipient_limit`) and handed from job to job as the exact needs become
//! known.

use super::list::List;
use super::{Action, Core, EntryId, JobId, MessageId, PeerId, QueueId, Trace, TransportId};
use std::collections::HashMap;
use std::time::Instant;

/// One message's work for one transport (`QMGR_JOB`).
#[derive(Debug)]
pub(super) struct Job {
    pub(super) msg: MessageId,
    pub(super) transport: TransportId,
    pub(super) stack_parent: Option<JobId>,
    pub(super) stack_children: Children,
    /// -1: retired (not on the job lists); 0: top level; > 0: preempting.
    pub(super) stack_level: i32,
    pub(super) blocker_tag: u32,
    pub(super) peers: List<PeerId>,
    /// The peers by queue once there are more than [`PEER_SCAN_MAX`](super::peer::PEER_SCAN_MAX)
    /// (`job->peer_byname`); below that `peer_find` walks `peers`, so that
    /// the common job (one or a few destinations) has no table at all.
    /// Boxed: 8 bytes in every job instead of a 48-byte table header.
    #[allow(clippy::box_collection)]
    pub(super) peer_by_queue: Option<Box<HashMap<QueueId, PeerId>>>,
    pub(super) slots_used: i64,
    pub(super) slots_available: i64,
    pub(super) selected_entries: i64,
    pub(super) read_entries: i64,
    pub(super) rcpt_count: i64,
    pub(super) rcpt_limit: i64,
}

/// A job's children on the job stack (`stack_children`): none for nearly
/// every job, so 8 bytes in each job and a table only for a preempting
/// one's parent.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // 8 bytes in every job instead of 24
pub(super) struct Children(Option<Box<Vec<JobId>>>);

impl Children {
    pub(super) fn push(&mut self, job: JobId) {
        self.0.get_or_insert_with(Default::default).push(job);
    }

    pub(super) fn retain(&mut self, keep: impl FnMut(&JobId) -> bool) {
        if let Some(v) = &mut self.0 {
            v.retain(keep);
            if v.is_empty() {
                self.0 = None;
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The children, leaving none.
    pub(super) fn take(&mut self) -> Vec<JobId> {
        self.0.take().map(|v| *v).unwrap_or_default()
    }
}

impl<R> Core<R> {
    /// `MAX_ENTRIES`: an upper bound of the job's entries.
    pub(super) fn max_entries(&self, job: JobId) -> i64 {
        let j = &self.jobs[job];
        j.read_entries + self.messages[j.msg].rcpt_unread
    }

    pub(super) fn has_entries(&self, job: JobId) -> bool {
        let j = &self.jobs[job];
        j.selected_entries < j.read_entries
    }

    pub(super) fn is_blocker(&self, job: JobId) -> bool {
        let j = &self.jobs[job];
        j.blocker_tag == self.transports[j.transport].blocker_tag
    }

    fn reset_candidate_cache(&mut self, t: TransportId) {
        self.transports[t].candidate_cache_current = None;
    }

    /// Finds or creates the job of `msg` on transport `t` and links it onto
    /// the job lists (`qmgr_job_obtain`).
    pub(super) fn job_obtain(&mut self, msg: MessageId, t: TransportId) -> JobId {
        // A message has a job per transport it has mail for: a few at most
        // (`qmgr_job_find` looks in the transport's table by queue id).
        let found = self.messages[msg]
            .jobs
            .iter()
            .copied()
            .find(|&j| self.jobs[j].transport == t);
        let job = match found {
            Some(j) => j,
            None => {
                let j = self.jobs.insert(Job {
                    msg,
                    transport: t,
                    stack_parent: None,
                    stack_children: Children::default(),
                    stack_level: -1,
                    blocker_tag: 0,
                    peers: List::default(),
                    peer_by_queue: None,
                    slots_used: 0,
                    slots_available: 0,
                    selected_entries: 0,
                    read_entries: 0,
                    rcpt_count: 0,
                    rcpt_limit: 0,
                });
                self.messages[msg].jobs.push(j);
                j
            }
        };
        if self.jobs[job].stack_level < 0 {
            self.job_link(job);
        }
        self.reset_candidate_cache(t);
        if self.is_blocker(job) {
            self.jobs[job].blocker_tag = 0;
            self.transports[t].job_current = self.transports[t].job_list.first();
        }
        job
    }

    /// Links a job onto both job lists in arrival order (`qmgr_job_link`),
    /// and gives it the transport's unused recipient slots.
    fn job_link(&mut self, job: JobId) {
        let t = self.jobs[job].transport;
        let msg = self.jobs[job].msg;
        let queued = self.messages[msg].queued_time;
        // Scheduling list: from the end, stop at an older top-level job.
        let mut current = self.transports[t].job_current;
        let (mut prev, mut next) = (self.transports[t].job_list.last(), None);
        while let Some(p) = prev {
            if self.jobs[p].stack_parent.is_none()
                && queued >= self.messages[self.jobs[p].msg].queued_time
            {
                break;
            }
            if current == Some(p) {
                current = None;
            }
            next = Some(p);
            prev = self.job_list_links.prev(p);
        }
        let (list_prev, list_next) = (prev, next);
        // Time list.
        let mut unread = self.transports[t].job_next_unread;
        let (mut prev, mut next) = (self.transports[t].job_bytime.last(), None);
        while let Some(p) = prev {
            if queued >= self.messages[self.jobs[p].msg].queued_time {
                break;
            }
            if unread == Some(p) {
                unread = None;
            }
            next = Some(p);
            prev = self.job_time_links.prev(p);
        }
        self.jobs[job].stack_level = 0;
        let tr = &mut self.transports[t];
        tr.job_list
            .link_between(&mut self.job_list_links, list_prev, job, list_next);
        tr.job_bytime
            .link_between(&mut self.job_time_links, prev, job, next);
        if current.is_none() {
            tr.job_current = Some(job);
        }
        if unread.is_none() {
            let old = tr.job_next_unread.replace(job);
            if let Some(old) = old {
                self.job_move_limits(old);
            }
        }
        let tr = &mut self.transports[t];
        if tr.rcpt_unused > 0 {
            let n = tr.rcpt_unused;
            tr.rcpt_unused = 0;
            self.jobs[job].rcpt_limit += n;
            self.messages[msg].rcpt_limit += n;
        }
    }

    /// Returns a job's unused recipient slots to the transport and hands them
    /// to the next job whose message still has unread recipients
    /// (`qmgr_job_move_limits`).
    pub(super) fn job_move_limits(&mut self, job: JobId) {
        let t = self.jobs[job].transport;
        let msg = self.jobs[job].msg;
        let mut next = self.transports[t].job_next_unread;
        if next == Some(job) {
            let mut cur = self.job_time_links.next(job);
            while let Some(c) = cur {
                if self.messages[self.jobs[c].msg].more {
                    break;
                }
                cur = self.job_time_links.next(c);
            }
            next = cur;
            self.transports[t].job_next_unread = next;
        }
        let j = &self.jobs[job];
        let m = &self.messages[msg];
        let unused = (j.rcpt_limit - j.rcpt_count).min(m.rcpt_limit - m.rcpt_count);
        if unused > 0 {
            self.jobs[job].rcpt_limit -= unused;
            self.messages[msg].rcpt_limit -= unused;
            self.transports[t].rcpt_unused += unused;
            let pool = self.transports[t].rcpt_unused;
            if let Some(next) = next.filter(|_| pool > 0) {
                let nmsg = self.jobs[next].msg;
                self.jobs[next].rcpt_limit += pool;
                self.messages[nmsg].rcpt_limit += pool;
                self.transports[t].rcpt_unused = 0;
            }
        }
    }

    /// When an entry of `job` finishes, sponsors of its message give back
    /// their slots first (`qmgr_entry_done`).
    pub(super) fn return_sponsored_slots(&mut self, msg: MessageId, job: JobId) {
        let more = self.messages[msg].more;
        for sponsor in self.messages[msg].jobs.clone() {
            let s = &self.jobs[sponsor];
            if s.rcpt_count >= s.rcpt_limit || sponsor == job {
                continue;
            }
            if s.stack_level < 0 || !more {
                self.job_move_limits(sponsor);
            }
        }
        if !more {
            self.job_move_limits(job);
        }
    }

    /// Children of `job` get `parent` as their new parent (`qmgr_job_parent_gone`).
    fn job_parent_gone(&mut self, job: JobId, parent: Option<JobId>) {
        let children = self.jobs[job].stack_children.take();
        for child in children {
            if let Some(parent) = parent {
                self.jobs[parent].stack_children.push(child);
            }
            self.jobs[child].stack_parent = parent;
        }
    }

    /// Takes a job off both job lists (`qmgr_job_unlink`).
    fn job_unlink(&mut self, job: JobId) {
        let t = self.jobs[job].transport;
        self.job_parent_gone(job, None);
        if self.transports[t].job_current == Some(job) {
            self.transports[t].job_current = self.job_list_links.next(job);
        }
        let tr = &mut self.transports[t];
        if tr.candidate_cache == Some(job) || tr.candidate_cache_current == Some(job) {
            tr.candidate_cache_current = None;
        }
        tr.job_list.remove(&mut self.job_list_links, job);
        tr.job_bytime.remove(&mut self.job_time_links, job);
        if tr.candidate_cache == Some(job) {
            tr.candidate_cache = None;
        }
        self.jobs[job].stack_level = -1;
    }

    /// Retires a job until it gets more entries (`qmgr_job_retire`).
    fn job_retire(&mut self, job: JobId) {
        self.trace(|c| Trace::JobRetire {
            msg: c.jobs[job].msg,
        });
        if self.jobs[job].stack_level > 0 {
            self.job_pop(job);
        }
        self.job_move_limits(job);
        self.job_unlink(job);
    }

    /// Releases a job with its message (`qmgr_job_free`).
    pub(super) fn job_free(&mut self, job: JobId) {
        self.trace(|c| Trace::JobFree {
            msg: c.jobs[job].msg,
            transport: c.transports[c.jobs[job].transport].name.clone(),
        });
        if self.jobs[job].stack_level > 0 {
            self.job_pop(job);
        }
        self.job_move_limits(job);
        if self.jobs[job].stack_level >= 0 {
            self.job_unlink(job);
        }
        let t = self.jobs[job].transport;
        if self.transports[t].job_next_unread == Some(job) {
            self.transports[t].job_next_unread = None;
        }
        self.jobs.remove(job);
    }

    /// Takes a job off its preemption stack (`qmgr_job_pop`): the parent
    /// gets back the slots the job did not use.
    fn job_pop(&mut self, job: JobId) {
        self.trace(|c| Trace::JobPop {
            msg: c.jobs[job].msg,
        });
        let t = self.jobs[job].transport;
        let cost = self.transports[t].params.slot_cost;
        let parent = self.jobs[job].stack_parent;
        if let Some(parent) = parent {
            if self.jobs[job].stack_level == self.jobs[parent].stack_level + 1 {
                let used = self.jobs[job].slots_used;
                self.jobs[parent].slots_available -= used * cost;
            }
            self.jobs[parent].stack_children.retain(|&c| c != job);
            self.jobs[job].stack_parent = None;
        }
        self.job_parent_gone(job, parent);
        self.jobs[job].stack_level = 0;
        self.reset_candidate_cache(t);
    }

    /// Asks the shell for more recipients of `msg`, once.
    fn request_refill(&mut self, msg: MessageId) {
        let m = &mut self.messages[msg];
        if !m.refill_pending {
            m.refill_pending = true;
            self.actions.push_back(Action::Refill { msg });
        }
    }

    /// `qmgr_job_peer_select`: top up the message's in-core recipients when
    /// enough slots are free (or enough time passed), then pick a peer.
    /// Reading is asynchronous here: a refill requested now shows up as new
    /// entries in a later selection.
    fn job_peer_select(&mut self, job: JobId, now: Instant) -> Option<PeerId> {
        let msg = self.jobs[job].msg;
        let t = self.jobs[job].transport;
        let secs = self.secs(now);
        let m = &self.messages[msg];
        let refill_limit = self.transports[t].params.refill_limit;
        let refill_delay = self.transports[t].params.refill_delay.max(0) as u64;
        if m.more
            && m.refcount > 0
            && (m.rcpt_limit - m.rcpt_count >= refill_limit
                || (m.rcpt_limit > m.rcpt_count
                    && secs.saturating_sub(m.refill_time) >= refill_delay))
        {
            self.request_refill(msg);
        }
        if self.has_entries(job) {
            if let Some(p) = self.peer_select(job) {
                return Some(p);
            }
        }
        let m = &self.messages[msg];
        if m.more && m.refcount > 0 && m.rcpt_limit > m.rcpt_count {
            self.request_refill(msg);
        }
        None
    }

    /// Selects the entry to hand to a ready agent of transport `t`
    /// (`qmgr_job_entry_select`), possibly preempting the current job.
    pub(super) fn job_entry_select(&mut self, t: TransportId, now: Instant) -> Option<EntryId> {
        let mut job = self.transports[t].job_current?;
        if self.transports[t].params.slot_cost >= 2 {
            job = self.job_preempt(job, now);
        }
        let mut cur = Some(job);
        while let Some(job) = cur {
            let next = self.job_list_links.next(job);
            if self.is_blocker(job) {
                cur = next;
                continue;
            }
            if let Some(p) = self.job_peer_select(job, now) {
                let e = self.peers[p].entries.first().expect("peer with entries");
                self.select_entry(e, now);
                self.job_count_slots(job);
                self.transports[t].job_current = Some(job);
                if !self.has_entries(job) && !self.messages[self.jobs[job].msg].more {
                    self.job_retire(job);
                }
                return Some(e);
            } else if self.has_entries(job) {
                // Blocked by concurrency limits: mark the job and its queues.
                let tag = self.transports[t].blocker_tag;
                self.jobs[job].blocker_tag = tag;
                let mut p = self.jobs[job].peers.first();
                while let Some(peer) = p {
                    p = self.peer_links.next(peer);
                    if !self.peers[peer].entries.is_empty() {
                        let q = self.peers[peer].queue;
                        self.queues[q].blocker_tag = tag;
                    }
                }
            } else {
                // Stalled: no entries in core for this transport right now.
                self.job_retire(job);
            }
            cur = next;
        }
        self.transports[t].job_current = None;
        None
    }

    /// One more delivery slot for `job` (`qmgr_job_count_slots`).
    fn job_count_slots(&mut self, job: JobId) {
        self.jobs[job].slots_available += 1;
        self.jobs[job].slots_used += 1;
        let t = self.jobs[job].transport;
        if self.transports[t].candidate_cache_current != Some(job) {
            self.reset_candidate_cache(t);
        }
    }

    /// The best job to preempt `current` with (`qmgr_job_candidate`): the
    /// highest waiting-time-per-recipient score among jobs that fit in the
    /// slots `current` can still accumulate. Cached per second.
    fn job_candidate(&mut self, current: JobId, now: Instant) -> Option<JobId> {
        let t = self.jobs[current].transport;
        let secs = self.secs(now);
        let tr = &self.transports[t];
        if tr.candidate_cache_current == Some(current)
            && (tr.candidate_cache_time == secs || tr.candidate_cache.is_none())
        {
            return tr.candidate_cache;
        }
        let cost = tr.params.slot_cost.max(1);
        let c = &self.jobs[current];
        let max_slots = (c.read_entries - c.selected_entries + c.slots_available) / cost;
        let mut best = None;
        let mut best_score = 0.0f64;
        if max_slots > 0 {
            let mut cur = self.job_list_links.next(current);
            while let Some(job) = cur {
                cur = self.job_list_links.next(job);
                if !self.jobs[job].stack_children.is_empty() || self.is_blocker(job) {
                    continue;
                }
                let max_total = self.max_entries(job);
                let needed = max_total - self.jobs[job].selected_entries;
                let delay = secs as i64 - self.messages[self.jobs[job].msg].queued_time as i64 + 1;
                if needed > 0 && needed <= max_slots {
                    let score = delay as f64 / max_total as f64;
                    if score > best_score {
                        best_score = score;
                        best = Some(job);
                    }
                }
                if delay as f64 <= best_score && self.jobs[job].stack_level == 0 {
                    break;
                }
            }
        }
        let tr = &mut self.transports[t];
        tr.candidate_cache = best;
        tr.candidate_cache_current = Some(current);
        tr.candidate_cache_time = secs;
        best
    }

    /// Preempts `current` with a better candidate if it has accumulated
    /// enough slots (`qmgr_job_preempt`). Returns the job to start with.
    fn job_preempt(&mut self, current: JobId, now: Instant) -> JobId {
        let t = self.jobs[current].transport;
        let p = &self.transports[t].params;
        let (cost, loan, factor, min_slots, per_stack) = (
            p.slot_cost,
            p.slot_loan,
            p.slot_loan_factor,
            p.min_slots,
            p.rcpt_per_stack,
        );
        if self.jobs[current].slots_available <= 0 || self.max_entries(current) < min_slots * cost {
            return current;
        }
        let Some(job) = self.job_candidate(current, now).filter(|&j| j != current) else {
            return current;
        };
        let expected = self.max_entries(job) - self.jobs[job].selected_entries;
        if ((self.jobs[current].slots_available / cost + loan) as f64)
            < expected as f64 * factor as f64 / 100.0
        {
            return current;
        }
        if self.jobs[job].stack_level > 0 {
            self.job_pop(job);
        }
        // Move the candidate in front of the current job.
        let tr = &mut self.transports[t];
        tr.job_list.remove(&mut self.job_list_links, job);
        let prev = self.job_list_links.prev(current);
        tr.job_list
            .link_between(&mut self.job_list_links, prev, job, Some(current));
        self.jobs[job].stack_parent = Some(current);
        self.jobs[current].stack_children.push(job);
        self.jobs[job].stack_level = self.jobs[current].stack_level + 1;
        let tr = &mut self.transports[t];
        tr.job_current = Some(job);
        tr.candidate_cache_current = None;
        self.jobs[current].slots_available -= expected * cost;
        self.jobs[job].slots_used = -expected;
        let msg = self.jobs[job].msg;
        if self.messages[msg].more {
            let tr = &mut self.transports[t];
            let slots = (per_stack + tr.rcpt_unused + 1) / 2;
            tr.rcpt_unused -= slots;
            self.jobs[job].rcpt_limit += slots;
            self.messages[msg].rcpt_limit += slots;
        }
        self.trace(|c| Trace::JobPreempt {
            current: c.jobs[current].msg,
            by: c.jobs[job].msg,
            level: c.jobs[job].stack_level,
        });
        job
    }

    /// A queue that blocked jobs may take deliveries again
    /// (`qmgr_job_blocker_update`): unmark every blocker at once.
    pub(super) fn job_blocker_update(&mut self, q: QueueId) {
        let t = self.queues[q].transport;
        if self.queues[q].blocker_tag != self.transports[t].blocker_tag {
            return;
        }
        let queue = &self.queues[q];
        if queue.window > queue.busy && !queue.todo.is_empty() {
            let tr = &mut self.transports[t];
            tr.blocker_tag += 2;
            tr.job_current = tr.job_list.first();
            tr.candidate_cache_current = None;
        }
        let queue = &mut self.queues[q];
        if queue.window > queue.busy || queue.window == 0 {
            queue.blocker_tag = 0;
        }
    }
}
