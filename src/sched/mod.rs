//! The scheduling core: transports, queues (destinations) and entries, with
//! per-destination concurrency windows, positive/negative feedback, dead
//! destinations and dead transports. It does no I/O: the shell tells it what
//! happened (recipients assigned, agent ready, delivery done, time passed)
//! and drains the actions it asks for (connect an agent, a message is
//! finished, defer recipients). Time is always a parameter.
//!
//! Follows `qmgr/qmgr_transport.c` (agent allocation, dead transports),
//! `qmgr/qmgr_queue.c` (windows, feedback, dead destinations),
//! `qmgr/qmgr_entry.c` (entries), `qmgr/qmgr_defer.c` and
//! `qmgr/qmgr_error.c` (moving work to the `retry` transport) and
//! `qmgr/qmgr_enable.c`. Entry selection is round robin over a transport's
//! ready queues, first in first out within a queue.

mod feedback;

pub use feedback::Feedback;

use crate::config::TransportParams;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most agent connections a transport may have pending (`QMGR_TRANSPORT_MAX_PEND`).
const MAX_PENDING: u32 = 2;

/// Name of the transport that defers recipients via error(8) (`MAIL_SERVICE_RETRY`).
pub const RETRY: &str = "retry";
/// Name of the transport that bounces recipients via error(8) (`MAIL_SERVICE_ERROR`).
pub const ERROR: &str = "error";

/// A delivery status as the core needs it: code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// `4.x.y`.
    pub status: String,
    pub text: String,
}

impl Reason {
    /// A status code and text.
    pub fn new(status: &str, text: &str) -> Reason {
        Reason {
            status: status.into(),
            text: text.into(),
        }
    }
    /// `"<status> <text>"`, the nexthop of a retry queue (`qmgr_error_nexthop`).
    pub fn nexthop(&self) -> String {
        format!("{} {}", self.status, self.text)
    }
}

/// A message known to the core (the shell owns its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// A delivery request to be (an entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId(pub usize);

/// A destination queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(pub usize);

/// What the core asks the shell to do.
#[derive(Debug, PartialEq)]
pub enum Action<R> {
    /// Open a connection to `private/<transport>`; report readiness with
    /// [`Scheduler::agent_ready`] or failure with [`Scheduler::agent_failed`].
    Connect { transport: String },
    /// No entries of this message remain: run completion.
    MessageDone { msg: MessageId },
    /// Defer these recipients synchronously (the retry transport is dead):
    /// defer_append each with `reason`.
    Defer {
        msg: MessageId,
        recipients: Vec<R>,
        reason: Reason,
    },
}

/// How a delivery ended, from the agent's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent replied; `hop` is set when the destination itself failed
    /// (the reply's DSN status was non-empty). `retry` is true when some
    /// recipient must be retried.
    Replied { retry: bool, hop: Option<Reason> },
    /// No usable reply (the agent died or spoke nonsense).
    Crashed,
}

/// Core-wide settings (seconds).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `minimal_backoff_time`: how long a dead destination stays dead.
    pub minimal_backoff_time: u64,
    /// `transport_retry_time`: how long a dead transport stays dead.
    pub transport_retry_time: u64,
    /// `destination_concurrency_feedback_debug`.
    pub feedback_debug: bool,
    /// `recipient_delimiter` (for per-recipient queue names).
    pub recipient_delimiter: String,
}

/// Where the shell wants a recipient to go.
#[derive(Debug)]
pub struct Assignment<'a, R> {
    pub transport: &'a str,
    pub nexthop: &'a str,
    /// The resolved recipient address (for per-recipient queue names).
    pub address: &'a [u8],
    /// Revive a dead transport or queue first (the g+r file bit).
    pub flush_each: bool,
    pub rcpt: R,
}

#[derive(Debug)]
struct Transport {
    name: String,
    params: TransportParams,
    pos_feedback: Feedback,
    neg_feedback: Feedback,
    pending: u32,
    dead: Option<Reason>,
    queues: VecDeque<QueueId>,
    queue_by_name: HashMap<String, QueueId>,
}

#[derive(Debug)]
struct Queue {
    transport: usize,
    name: String,
    nexthop: String,
    /// > 0: ready, the concurrency limit; 0: dead.
    window: i32,
    todo: VecDeque<EntryId>,
    busy: i32,
    success: f64,
    failure: f64,
    fail_cohorts: f64,
    dead: Option<Reason>,
    last_done: Option<Instant>,
    dflags: u32,
}

/// One future delivery request.
#[derive(Debug)]
pub struct Entry<R> {
    pub msg: MessageId,
    pub queue: QueueId,
    pub recipients: Vec<R>,
    busy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ReviveTransport(usize),
    ReviveQueue(usize),
}

/// The scheduler. `R` is the shell's recipient type.
pub struct Scheduler<R> {
    settings: Settings,
    transport_params: Box<dyn FnMut(&str) -> TransportParams>,
    transports: Vec<Transport>,
    transport_by_name: HashMap<String, usize>,
    /// Round-robin order for agent allocation.
    transport_order: VecDeque<usize>,
    queues: Vec<Option<Queue>>,
    free_queues: Vec<usize>,
    entries: Vec<Option<Entry<R>>>,
    free_entries: Vec<usize>,
    refcount: HashMap<MessageId, u32>,
    actions: VecDeque<Action<R>>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
}

/// Connection-cache request flags (`DEL_REQ_FLAG_CONN_LOAD|CONN_STORE`).
const CONN_LOAD: u32 = 2048;
const CONN_STORE: u32 = 4096;

impl<R> Scheduler<R> {
    /// A core with no transports; `transport_params` is asked once per new
    /// transport name.
    pub fn new(
        settings: Settings,
        transport_params: Box<dyn FnMut(&str) -> TransportParams>,
    ) -> Scheduler<R> {
        Scheduler {
            settings,
            transport_params,
            transports: Vec::new(),
            transport_by_name: HashMap::new(),
            transport_order: VecDeque::new(),
            queues: Vec::new(),
            free_queues: Vec::new(),
            entries: Vec::new(),
            free_entries: Vec::new(),
            refcount: HashMap::new(),
            actions: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
        }
    }

    fn transport_index(&mut self, name: &str) -> usize {
        if let Some(&t) = self.transport_by_name.get(name) {
            return t;
        }
        let params = (self.transport_params)(name);
        let pos = Feedback::parse(
            &params.pos_feedback,
            &format!("{name}_destination_concurrency_positive_feedback"),
        );
        let neg = Feedback::parse(
            &params.neg_feedback,
            &format!("{name}_destination_concurrency_negative_feedback"),
        );
        let t = self.transports.len();
        self.transports.push(Transport {
            name: name.to_string(),
            params,
            pos_feedback: pos,
            neg_feedback: neg,
            pending: 0,
            dead: None,
            queues: VecDeque::new(),
            queue_by_name: HashMap::new(),
        });
        self.transport_by_name.insert(name.to_string(), t);
        // New transports go first (qmgr_transport_create prepends).
        self.transport_order.push_front(t);
        t
    }

    fn queue(&self, q: QueueId) -> &Queue {
        self.queues[q.0].as_ref().expect("live queue")
    }

    fn queue_mut(&mut self, q: QueueId) -> &mut Queue {
        self.queues[q.0].as_mut().expect("live queue")
    }

    /// The entry `e` (its message, queue and recipients).
    ///
    /// Panics if `e` was already finished (a shell bug, not outside input).
    pub fn entry(&self, e: EntryId) -> &Entry<R> {
        self.entries[e.0].as_ref().expect("live entry")
    }

    /// The nexthop of queue `q`.
    pub fn nexthop(&self, q: QueueId) -> &str {
        &self.queue(q).nexthop
    }

    /// The name of the transport of queue `q`.
    pub fn transport_of(&self, q: QueueId) -> &str {
        &self.transports[self.queue(q).transport].name
    }

    /// The parameters of transport `name` (read on first use).
    pub fn transport_params(&mut self, name: &str) -> &TransportParams {
        let t = self.transport_index(name);
        &self.transports[t].params
    }

    /// Connection-cache flags to add to a request for queue `q`.
    pub fn queue_dflags(&self, q: QueueId) -> u32 {
        self.queue(q).dflags
    }

    /// Number of entries not yet finished for `msg`.
    pub fn refcount(&self, msg: MessageId) -> u32 {
        self.refcount.get(&msg).copied().unwrap_or(0)
    }

    fn find_or_create_queue(&mut self, t: usize, name: &str, nexthop: &str) -> QueueId {
        if let Some(&q) = self.transports[t].queue_by_name.get(name) {
            return q;
        }
        let queue = Queue {
            transport: t,
            name: name.to_string(),
            nexthop: nexthop.to_string(),
            window: self.transports[t].params.init_dest_concurrency.max(1) as i32,
            todo: VecDeque::new(),
            busy: 0,
            success: 0.0,
            failure: 0.0,
            fail_cohorts: 0.0,
            dead: None,
            last_done: None,
            dflags: 0,
        };
        let idx = match self.free_queues.pop() {
            Some(i) => {
                self.queues[i] = Some(queue);
                i
            }
            None => {
                self.queues.push(Some(queue));
                self.queues.len() - 1
            }
        };
        let q = QueueId(idx);
        self.transports[t].queues.push_back(q);
        self.transports[t].queue_by_name.insert(name.to_string(), q);
        q
    }

    /// The queue name for a recipient (`qmgr_message_resolve`): the nexthop,
    /// or `localpart@nexthop` when the transport delivers one recipient per
    /// request; always lower-cased.
    fn queue_name(&self, t: usize, nexthop: &str, address: &[u8]) -> String {
        let tr = &self.transports[t];
        let mut name = if tr.name != ERROR && tr.name != RETRY && tr.params.recipient_limit == 1 {
            let local = match address.iter().rposition(|&c| c == b'@') {
                Some(at) => &address[..at],
                None => address,
            };
            let mut local = String::from_utf8_lossy(local).into_owned();
            if !self.settings.recipient_delimiter.is_empty() {
                if let Some(pos) = local.find(|c| self.settings.recipient_delimiter.contains(c)) {
                    if pos > 0 {
                        local.truncate(pos);
                    }
                }
            }
            format!("{local}@{nexthop}")
        } else {
            nexthop.to_string()
        };
        name.make_ascii_lowercase();
        name
    }

    /// Binds one recipient of `msg` to a queue, creating transports, queues
    /// and entries as needed (`qmgr_message_resolve` steps 9-16 and
    /// `qmgr_message_assign`). A dead transport or queue sends the recipient
    /// to the `retry` transport instead; if that is dead too, the recipient is
    /// handed back with the reason, for the shell to defer.
    ///
    /// Errors: `(recipient, reason)` when nothing can take the recipient.
    pub fn assign(
        &mut self,
        msg: MessageId,
        a: Assignment<'_, R>,
        now: Instant,
    ) -> Result<(), (R, Reason)> {
        let mut t = self.transport_index(a.transport);
        if a.flush_each && self.transports[t].dead.is_some() {
            self.revive_transport(t);
        }
        let mut nexthop = a.nexthop.to_string();
        if let Some(reason) = self.transports[t].dead.clone() {
            let r = self.transport_index(RETRY);
            if self.transports[r].dead.is_some() {
                return Err((a.rcpt, reason));
            }
            t = r;
            nexthop = reason.nexthop();
        }
        let name = self.queue_name(t, &nexthop, a.address);
        let mut q = self.find_or_create_queue(t, &name, &nexthop);
        if a.flush_each && self.queue(q).window == 0 {
            self.revive_queue(q, now);
        }
        if let Some(reason) = self.queue(q).dead.clone() {
            match self.retry_queue(&reason) {
                Some(rq) => q = rq,
                None => return Err((a.rcpt, reason)),
            }
        }
        self.add_to_queue(msg, q, a.rcpt);
        Ok(())
    }

    /// The queue of the `retry` transport for `reason`, unless the retry
    /// transport or that queue is dead (`qmgr_error_queue`).
    fn retry_queue(&mut self, reason: &Reason) -> Option<QueueId> {
        let r = self.transport_index(RETRY);
        if self.transports[r].dead.is_some() {
            return None;
        }
        let nexthop = reason.nexthop();
        let q = self.find_or_create_queue(r, &nexthop, &nexthop);
        (self.queue(q).window > 0).then_some(q)
    }

    fn add_to_queue(&mut self, msg: MessageId, q: QueueId, rcpt: R) {
        let limit = self.transports[self.queue(q).transport]
            .params
            .recipient_limit;
        // Reuse the queue's last entry if it is this message's and has room.
        if let Some(&last) = self.queue(q).todo.back() {
            let e = self.entries[last.0].as_mut().expect("live entry");
            if e.msg == msg && (limit <= 0 || (e.recipients.len() as i64) < limit) {
                e.recipients.push(rcpt);
                return;
            }
        }
        let entry = Entry {
            msg,
            queue: q,
            recipients: vec![rcpt],
            busy: false,
        };
        let idx = match self.free_entries.pop() {
            Some(i) => {
                self.entries[i] = Some(entry);
                i
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        };
        self.queue_mut(q).todo.push_back(EntryId(idx));
        *self.refcount.entry(msg).or_insert(0) += 1;
    }

    /// All recipients of this read of `msg` have been assigned; if none
    /// produced an entry, the message is done right away.
    pub fn assigned(&mut self, msg: MessageId) {
        if self.refcount(msg) == 0 {
            self.refcount.remove(&msg);
            self.actions.push_back(Action::MessageDone { msg });
        }
    }

    /// Agent allocation (`qmgr_transport_select` + `qmgr_active_drain`): ask
    /// for connections while some transport has more deliverable entries than
    /// pending connections.
    fn drain(&mut self) {
        loop {
            let mut chosen = None;
            for (pos, &t) in self.transport_order.iter().enumerate() {
                let tr = &self.transports[t];
                if tr.dead.is_some() || tr.pending >= MAX_PENDING {
                    continue;
                }
                let mut need = tr.pending as i64 + 1;
                for &q in &tr.queues {
                    let queue = self.queues[q.0].as_ref().expect("live queue");
                    if queue.window > queue.busy {
                        need -= i64::from(queue.window - queue.busy).min(queue.todo.len() as i64);
                        if need <= 0 {
                            break;
                        }
                    }
                }
                if need <= 0 {
                    chosen = Some(pos);
                    break;
                }
            }
            let Some(pos) = chosen else { return };
            let t = self.transport_order.remove(pos).expect("position in list");
            self.transport_order.push_back(t);
            self.transports[t].pending += 1;
            self.actions.push_back(Action::Connect {
                transport: self.transports[t].name.clone(),
            });
        }
    }

    /// The next action for the shell, if any.
    pub fn poll_action(&mut self) -> Option<Action<R>> {
        if self.actions.is_empty() {
            self.drain();
        }
        self.actions.pop_front()
    }

    /// When [`Scheduler::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    fn add_timer(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    fn cancel_timer(&mut self, timer: Timer) {
        self.timers.retain(|_, t| *t != timer);
    }

    /// Fires every timer due at `now`: dead transports and destinations come
    /// back to life.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&key, &timer)) = self.timers.iter().next() {
            if key.0 > now {
                break;
            }
            self.timers.remove(&key);
            match timer {
                Timer::ReviveTransport(t) => self.revive_transport(t),
                Timer::ReviveQueue(q) => {
                    if self.queues.get(q).is_some_and(Option::is_some) {
                        let qid = QueueId(q);
                        self.revive_queue(qid, now);
                        self.maybe_free_queue(qid);
                    }
                }
            }
        }
    }

    /// A connection to `transport` is ready: pick the entry to deliver
    /// (`qmgr_entry_select`), or `None` to close the connection.
    pub fn agent_ready(&mut self, transport: &str, now: Instant) -> Option<EntryId> {
        let t = *self.transport_by_name.get(transport)?;
        self.transports[t].pending = self.transports[t].pending.saturating_sub(1);
        let n = self.transports[t].queues.len();
        for _ in 0..n {
            let q = self.transports[t].queues.pop_front()?;
            self.transports[t].queues.push_back(q);
            let queue = self.queue(q);
            if queue.window > queue.busy && !queue.todo.is_empty() {
                return Some(self.select_from(q, now));
            }
        }
        None
    }

    fn select_from(&mut self, q: QueueId, now: Instant) -> EntryId {
        let queue = self.queue_mut(q);
        let e = queue.todo.pop_front().expect("non-empty todo");
        queue.busy += 1;
        // Opportunistic session caching (qmgr_entry_select).
        let back_to_back = queue
            .last_done
            .is_some_and(|d| now.duration_since(d) <= Duration::from_secs(1));
        if queue.dflags == 0 {
            if back_to_back {
                queue.dflags = CONN_LOAD | CONN_STORE;
            }
        } else if queue.busy <= 1 && !back_to_back {
            queue.dflags &= !CONN_STORE;
        }
        self.entries[e.0].as_mut().expect("live entry").busy = true;
        e
    }

    /// A connection to `transport` failed before it was ready: the transport
    /// is dead for `transport_retry_time` and its waiting entries move to the
    /// `retry` transport (`qmgr_transport_throttle` + `qmgr_defer_transport`).
    pub fn agent_failed(&mut self, transport: &str, reason: Reason, now: Instant) {
        let Some(&t) = self.transport_by_name.get(transport) else {
            return;
        };
        self.transports[t].pending = self.transports[t].pending.saturating_sub(1);
        if self.transports[t].dead.is_none() {
            self.transports[t].dead = Some(reason.clone());
            let at = now + Duration::from_secs(self.settings.transport_retry_time);
            self.add_timer(at, Timer::ReviveTransport(t));
        }
        let queues: Vec<QueueId> = self.transports[t].queues.iter().copied().collect();
        for q in queues {
            self.defer_todo(q, &reason, now);
        }
    }

    /// Moves every waiting entry of queue `q` to the retry queue for `reason`,
    /// or hands its recipients to the shell if retry is unavailable
    /// (`qmgr_defer_todo`).
    fn defer_todo(&mut self, q: QueueId, reason: &Reason, now: Instant) {
        let todo: Vec<EntryId> = self.queue_mut(q).todo.drain(..).collect();
        for e in todo {
            let entry = self.entries[e.0].take().expect("live entry");
            self.free_entries.push(e.0);
            let target = if self.transport_of(q) == RETRY {
                None
            } else {
                self.retry_queue(reason)
            };
            match target {
                Some(rq) => {
                    for r in entry.recipients {
                        self.add_to_queue(entry.msg, rq, r);
                    }
                }
                None => self.actions.push_back(Action::Defer {
                    msg: entry.msg,
                    recipients: entry.recipients,
                    reason: reason.clone(),
                }),
            }
            self.release(entry.msg);
        }
        self.maybe_free_queue(q);
        let _ = now;
    }

    fn release(&mut self, msg: MessageId) {
        let count = self.refcount.get_mut(&msg).expect("message with entries");
        *count -= 1;
        if *count == 0 {
            self.refcount.remove(&msg);
            self.actions.push_back(Action::MessageDone { msg });
        }
    }

    /// The request for `e` could not be written: the entry goes back to the
    /// head of its queue and the transport is throttled like a failed
    /// connection.
    pub fn write_failed(&mut self, e: EntryId, reason: Reason, now: Instant) {
        let q = self.entry(e).queue;
        self.entries[e.0].as_mut().expect("live entry").busy = false;
        let queue = self.queue_mut(q);
        queue.busy -= 1;
        queue.todo.push_front(e);
        let transport = self.transport_of(q).to_string();
        // agent_failed decrements pending; this connection was already counted off.
        let t = self.transport_by_name[&transport];
        self.transports[t].pending += 1;
        self.agent_failed(&transport, reason, now);
    }

    /// A delivery finished (`qmgr_deliver_update` + `qmgr_entry_done`):
    /// feedback for the destination, then the entry is released. Returns the
    /// entry's message and recipients; `true` in the second field when the
    /// message must be retried.
    pub fn delivery_done(
        &mut self,
        e: EntryId,
        outcome: Outcome,
        now: Instant,
    ) -> (MessageId, bool) {
        let entry = self.entries[e.0].take().expect("live entry");
        self.free_entries.push(e.0);
        debug_assert!(entry.busy);
        let q = entry.queue;
        let t = self.queue(q).transport;
        let crashed = outcome == Outcome::Crashed;
        let (retry, hop) = match outcome {
            Outcome::Crashed => (
                true,
                Some(Reason::new("4.3.0", "unknown mail transport error")),
            ),
            Outcome::Replied { retry, hop } => (retry, hop),
        };
        if retry {
            if let Some(h) = &hop {
                let reason = Reason::new(
                    &h.status,
                    &format!("delivery temporarily suspended: {}", h.text),
                );
                if self.queue(q).window > 0 {
                    self.throttle_queue(q, &reason, now);
                    if self.queue(q).window == 0 {
                        self.defer_todo(q, &reason, now);
                    }
                }
            }
        }
        if !crashed {
            if self.transports[t].dead.is_some() {
                self.revive_transport(t);
            }
            if hop.is_none() {
                self.unthrottle_queue(q);
            }
        }
        let queue = self.queue_mut(q);
        queue.busy -= 1;
        queue.last_done = Some(now);
        self.maybe_free_queue(q);
        self.release(entry.msg);
        (entry.msg, retry)
    }

    fn log_window(&self, q: QueueId, func: &str) {
        let queue = self.queue(q);
        let tr = &self.transports[queue.transport];
        if self.settings.feedback_debug && tr.name != ERROR && tr.name != RETRY {
            tracing::info!(
                "{func}: queue {}: limit {} window {} success {} failure {} fail_cohorts {}",
                queue.name,
                tr.params.dest_concurrency_limit,
                queue.window,
                queue.success,
                queue.failure,
                queue.fail_cohorts
            );
        }
    }

    /// Positive feedback (`qmgr_queue_unthrottle`): revive a dead queue, or
    /// grow the window toward the concurrency limit.
    fn unthrottle_queue(&mut self, q: QueueId) {
        let t = self.queue(q).transport;
        let limit = self.transports[t].params.dest_concurrency_limit as i32;
        let init = self.transports[t].params.init_dest_concurrency as i32;
        let fb_kind = self.transports[t].pos_feedback;
        let queue = self.queue_mut(q);
        queue.fail_cohorts = 0.0;
        if queue.window == 0 {
            queue.dead = None;
            queue.window = if queue.busy > 0 {
                queue.busy
            } else {
                init.max(1)
            };
            queue.success = 0.0;
            queue.failure = 0.0;
            self.cancel_timer(Timer::ReviveQueue(q.0));
            self.log_window(q, "qmgr_queue_unthrottle");
            return;
        }
        if (limit == 0 || limit > queue.window) && queue.window < queue.busy + init {
            let fb = fb_kind.value(queue.window);
            queue.success += fb;
            while queue.success + fb / 2.0 >= 1.0 {
                queue.window += 1;
                queue.success -= 1.0;
                queue.failure = 0.0;
            }
            if limit > 0 && queue.window > limit {
                queue.window = limit;
            }
        }
        self.log_window(q, "qmgr_queue_unthrottle");
    }

    /// Negative feedback (`qmgr_queue_throttle`): shrink the window; after a
    /// cohort's worth of failures the destination is dead for
    /// `minimal_backoff_time`.
    fn throttle_queue(&mut self, q: QueueId, reason: &Reason, now: Instant) {
        let t = self.queue(q).transport;
        let cohort_limit = self.transports[t].params.fail_cohort_limit as f64;
        let fb_kind = self.transports[t].neg_feedback;
        let backoff = Duration::from_secs(self.settings.minimal_backoff_time);
        let queue = self.queue_mut(q);
        queue.fail_cohorts += 1.0 / f64::from(queue.window);
        if cohort_limit > 0.0 && queue.fail_cohorts >= cohort_limit {
            queue.window = 0;
        }
        if queue.window > 0 {
            let fb = fb_kind.value(queue.window);
            queue.failure -= fb;
            while queue.failure - fb / 2.0 < 0.0 {
                queue.window -= 1;
                queue.success = 0.0;
                queue.failure += 1.0;
            }
            if queue.window < 1 {
                queue.window = 1;
            }
        } else {
            queue.dead = Some(reason.clone());
            queue.dflags = 0;
            self.add_timer(now + backoff, Timer::ReviveQueue(q.0));
        }
        self.log_window(q, "qmgr_queue_throttle");
    }

    fn revive_queue(&mut self, q: QueueId, _now: Instant) {
        if self.queue(q).window == 0 {
            self.unthrottle_queue(q);
        }
    }

    fn revive_transport(&mut self, t: usize) {
        if self.transports[t].dead.take().is_some() {
            self.cancel_timer(Timer::ReviveTransport(t));
        }
    }

    /// Frees a ready queue with no entries (`qmgr_queue_done`).
    fn maybe_free_queue(&mut self, q: QueueId) {
        let queue = self.queue(q);
        if queue.window > 0 && queue.busy == 0 && queue.todo.is_empty() {
            let t = queue.transport;
            let name = queue.name.clone();
            self.transports[t].queue_by_name.remove(&name);
            self.transports[t].queues.retain(|&x| x != q);
            self.queues[q.0] = None;
            self.free_queues.push(q.0);
        }
    }

    /// Revives every dead transport and destination (`qmgr_enable_all`, the
    /// `F` trigger).
    pub fn enable_all(&mut self, now: Instant) {
        for t in 0..self.transports.len() {
            self.revive_transport(t);
        }
        for i in 0..self.queues.len() {
            if self.queues[i].as_ref().is_some_and(|q| q.window == 0) {
                let q = QueueId(i);
                self.revive_queue(q, now);
                self.maybe_free_queue(q);
            }
        }
    }

    /// Number of live entries (waiting and busy), for tests and statistics.
    pub fn entry_count(&self) -> usize {
        self.entries.len() - self.free_entries.len()
    }

    /// Window (concurrency limit, 0 = dead) of the queue named `name` of
    /// `transport`, if it exists.
    pub fn window(&self, transport: &str, name: &str) -> Option<i32> {
        let t = *self.transport_by_name.get(transport)?;
        let q = *self.transports[t].queue_by_name.get(name)?;
        Some(self.queue(q).window)
    }

    /// True if `transport` is dead.
    pub fn transport_dead(&self, transport: &str) -> bool {
        self.transport_by_name
            .get(transport)
            .is_some_and(|&t| self.transports[t].dead.is_some())
    }
}

#[cfg(test)]
mod tests;
