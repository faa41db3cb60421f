//! A read-only picture of the core ([`Core::snapshot`]): per transport and
//! destination, per job, per message and entry, with the reasons and times
//! that say why mail waits. Taking one walks every transport, queue, job
//! and entry once (O(size of the active queue)) and changes nothing, so
//! status and explain requests can never alter what the core decides.

use super::active::Stage;
use super::{Core, DeliveryTimes, MessageId, Reason, Strategy};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The whole core at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot<R> {
    /// When it was taken.
    pub taken: Instant,
    pub strategy: Strategy,
    /// Messages in the active queue, and `qmgr_message_active_limit`.
    pub messages: usize,
    pub active_limit: i64,
    /// In-core recipients, and `qmgr_message_recipient_limit`.
    pub recipients: i64,
    pub recipient_limit: i64,
    pub transports: Vec<TransportView>,
    pub jobs: Vec<JobView>,
    /// Per message, in core order.
    pub message_views: Vec<MessageView<R>>,
}

/// Why something is dead, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    pub reason: Reason,
    pub until: Option<Instant>,
}

/// One transport.
#[derive(Debug, Clone)]
pub struct TransportView {
    pub name: Rc<str>,
    /// Agent connections asked for, not yet ready.
    pub pending: u32,
    pub dead: Option<Dead>,
    /// `_transport_rate_delay` and whether it is running now.
    pub rate_delay: Duration,
    pub rate_locked: bool,
    /// `_destination_concurrency_limit` (0 = none) and
    /// `_destination_recipient_limit`.
    pub concurrency_limit: i64,
    pub recipient_limit: i64,
    /// Entries an agent could take right now.
    pub deliverable: i64,
    /// Unused slots of the transport's in-core recipient pool.
    pub rcpt_unused: i64,
    /// Its delivery requests' times so far.
    pub times: DeliveryTimes,
    pub queues: Vec<QueueView>,
}

/// One destination queue.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub name: Rc<str>,
    pub nexthop: Rc<str>,
    /// Waiting entries and their recipients.
    pub todo: usize,
    pub todo_recipients: usize,
    /// Entries with an agent.
    pub busy: i32,
    /// The concurrency window (> 0 ready, 0 dead, -1 rate-delayed) and the
    /// feedback state.
    pub window: i32,
    pub success: f64,
    pub failure: f64,
    pub fail_cohorts: f64,
    pub dead: Option<Dead>,
    /// The next rate-delay slot, while suspended.
    pub resumes: Option<Instant>,
    /// nqmgr: this queue blocks jobs (its window is full).
    pub blocker: bool,
    /// When the oldest message with an entry here entered the core.
    pub oldest: Option<Instant>,
    /// Its delivery requests' times so far.
    pub times: DeliveryTimes,
}

/// One nqmgr job (a message's work for a transport).
#[derive(Debug, Clone)]
pub struct JobView {
    pub msg: MessageId,
    pub transport: Rc<str>,
    /// 0 top level, > 0 preempting (stack depth), -1 retired.
    pub stack_level: i32,
    /// The job it preempted (its parent on the stack), by message.
    pub preempted: Option<MessageId>,
    pub slots_used: i64,
    pub slots_available: i64,
    pub selected_entries: i64,
    pub read_entries: i64,
    pub rcpt_count: i64,
    pub rcpt_limit: i64,
    /// Blocked by its destinations' windows.
    pub blocker: bool,
    /// The transport's current job.
    pub current: bool,
}

/// One message.
#[derive(Debug, Clone)]
pub struct MessageView<R> {
    pub msg: MessageId,
    /// When it entered the core.
    pub queued: Instant,
    /// Recipients in entries, and still to be read from the file.
    pub rcpt_count: i64,
    pub rcpt_unread: i64,
    pub more: bool,
    /// Something must be retried.
    pub retry: bool,
    /// "open" while it has entries, else the completion step it waits on.
    pub stage: &'static str,
    pub entries: Vec<EntryView<R>>,
}

/// One entry: where a group of recipients stands.
#[derive(Debug, Clone)]
pub struct EntryView<R> {
    pub transport: Rc<str>,
    pub queue: Rc<str>,
    pub nexthop: Rc<str>,
    /// With an agent now.
    pub busy: bool,
    /// Waiting: how many entries are ahead of it in the queue's todo list.
    pub ahead: usize,
    pub recipients: Vec<R>,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::BounceLog => "checking the bounce log",
            Stage::RemovingBounceLog => "removing an empty bounce log",
            Stage::BounceFlush => "sending the bounce notice",
            Stage::FileCheck => "checking the queue file",
            Stage::Reading => "reading more recipients",
            Stage::TraceFlush => "sending the trace notice",
            Stage::KillingTrace => "updating the queue file",
            Stage::DeferFlush => "returning it to the sender",
            Stage::Warning => "sending a delay warning",
            Stage::MarkingWarned => "updating the queue file",
            Stage::Disposing(_) => "leaving the active queue",
        }
    }
}

impl<R: Clone> Core<R> {
    /// The transports, their queues and the totals only, at `now`: what
    /// `rqmgr status` shows. Leaves out the jobs and the per-message and
    /// per-entry views (no recipient is copied), so that it costs one walk
    /// of the todo lists and few allocations.
    pub fn summary(&self, now: Instant) -> Snapshot<R> {
        self.picture(now, false)
    }

    /// A read-only picture of everything, at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot<R> {
        self.picture(now, true)
    }

    fn picture(&self, now: Instant, full: bool) -> Snapshot<R> {
        let at = |secs: u64| self.epoch + Duration::from_secs(secs);
        let timer_at = |key: Option<super::TimerKey>| key.map(|k| k.0);
        let mut ahead: HashMap<super::EntryId, usize> = HashMap::new();
        let mut transports = Vec::with_capacity(self.transports.len());
        for (_, tr) in self.transports.iter() {
            let mut queues = Vec::new();
            for q in tr.queues.items(&self.queue_links) {
                let queue = &self.queues[q];
                let todo = queue.todo.items(&self.entry_queue_links);
                let mut todo_recipients = 0;
                let mut oldest: Option<u64> = None;
                for (i, &e) in todo.iter().enumerate() {
                    if full {
                        ahead.insert(e, i);
                    }
                    let entry = &self.entries[e];
                    todo_recipients += entry.recipients.len();
                    let t = self.messages[entry.msg].queued_time;
                    oldest = Some(oldest.map_or(t, |o| o.min(t)));
                }
                queues.push(QueueView {
                    name: queue.name.clone(),
                    nexthop: queue.nexthop.clone(),
                    todo: todo.len(),
                    todo_recipients,
                    busy: queue.busy,
                    window: queue.window,
                    success: queue.success,
                    failure: queue.failure,
                    fail_cohorts: queue.fail_cohorts,
                    dead: queue.dead.clone().map(|reason| Dead {
                        reason,
                        until: timer_at(queue.timer),
                    }),
                    resumes: (queue.window < 0).then(|| timer_at(queue.timer)).flatten(),
                    blocker: queue.blocker_tag == tr.blocker_tag,
                    oldest: oldest.map(at),
                    times: queue.times,
                });
            }
            transports.push(TransportView {
                name: tr.name.clone(),
                pending: tr.pending,
                dead: tr.dead.clone().map(|reason| Dead {
                    reason,
                    until: timer_at(tr.dead_timer),
                }),
                rate_delay: Duration::from_secs(tr.params.xport_rate_delay.max(0) as u64),
                rate_locked: tr.rate_locked,
                concurrency_limit: tr.params.dest_concurrency_limit,
                recipient_limit: tr.params.recipient_limit,
                deliverable: tr.deliverable,
                rcpt_unused: tr.rcpt_unused,
                times: tr.times,
                queues,
            });
        }
        let (jobs, message_views) = if full {
            (self.job_views(), self.message_views(&ahead))
        } else {
            (Vec::new(), Vec::new())
        };
        Snapshot {
            taken: now,
            strategy: self.settings.strategy,
            messages: self.messages.len(),
            active_limit: self.settings.active_limit,
            recipients: self.recipient_count,
            recipient_limit: self.settings.recipient_limit,
            transports,
            jobs,
            message_views,
        }
    }

    /// Every job's view (the full snapshot only).
    fn job_views(&self) -> Vec<JobView> {
        self.jobs
            .iter()
            .map(|(j, job)| {
                let tr = &self.transports[job.transport];
                JobView {
                    msg: job.msg,
                    transport: tr.name.clone(),
                    stack_level: job.stack_level,
                    preempted: job.stack_parent.map(|p| self.jobs[p].msg),
                    slots_used: job.slots_used,
                    slots_available: job.slots_available,
                    selected_entries: job.selected_entries,
                    read_entries: job.read_entries,
                    rcpt_count: job.rcpt_count,
                    rcpt_limit: job.rcpt_limit,
                    blocker: self.is_blocker(j),
                    current: tr.job_current == Some(j),
                }
            })
            .collect()
    }

    /// Every message's view with its entries; `ahead` gives each waiting
    /// entry's place in its todo list (the full snapshot only).
    fn message_views(&self, ahead: &HashMap<super::EntryId, usize>) -> Vec<MessageView<R>> {
        let at = |secs: u64| self.epoch + Duration::from_secs(secs);
        let mut per_msg: HashMap<MessageId, Vec<EntryView<R>>> = HashMap::new();
        for (e, entry) in self.entries.iter() {
            let queue = &self.queues[entry.queue];
            per_msg.entry(entry.msg).or_default().push(EntryView {
                transport: self.transports[queue.transport].name.clone(),
                queue: queue.name.clone(),
                nexthop: queue.nexthop.clone(),
                busy: entry.busy,
                ahead: ahead.get(&e).copied().unwrap_or(0),
                recipients: entry.recipients.clone(),
            });
        }
        self.messages
            .iter()
            .map(|(id, m)| MessageView {
                msg: id,
                queued: at(m.queued_time),
                rcpt_count: m.rcpt_count,
                rcpt_unread: m.rcpt_unread,
                more: m.more,
                retry: m.retry,
                stage: m.stage.name(),
                entries: per_msg.remove(&id).unwrap_or_default(),
            })
            .collect()
    }
}

impl<R> Snapshot<R> {
    /// The transport named `name`.
    pub fn transport(&self, name: &str) -> Option<&TransportView> {
        self.transports.iter().find(|t| &*t.name == name)
    }

    /// The queue `queue` of transport `transport`.
    pub fn queue(&self, transport: &str, queue: &str) -> Option<&QueueView> {
        self.transport(transport)?
            .queues
            .iter()
            .find(|q| &*q.name == queue)
    }

    /// The view of message `msg`.
    pub fn message(&self, msg: MessageId) -> Option<&MessageView<R>> {
        self.message_views.iter().find(|m| m.msg == msg)
    }
}
