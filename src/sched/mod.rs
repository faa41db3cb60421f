//! The scheduling core. It does no I/O: the shell tells it what happened
//! (a message was read, recipients were resolved, an agent is ready, a
//! delivery finished, time passed) and drains the actions it asks for
//! (connect an agent, read more recipients, a message is finished, defer
//! recipients). Time is always a parameter, so a test or the simulator can
//! run a day of mail in milliseconds, and the same events always give the
//! same actions.
//!
//! Two strategies, chosen per [`Strategy`]:
//! - **nqmgr** (Postfix's default `qmgr`): transports, queues
//!   (destinations), entries, jobs and peers with the preemptive job
//!   scheduler (`qmgr/qmgr_transport.c`, `qmgr_queue.c`, `qmgr_entry.c`,
//!   `qmgr_job.c`, `qmgr_peer.c`, `qmgr_message.c:qmgr_message_assign`);
//! - **oqmgr** (Postfix's old queue manager): no jobs or peers; round robin
//!   over destinations, last entry first, a global in-core recipient budget
//!   (`oqmgr/qmgr_queue.c`, `oqmgr/qmgr_entry.c`).
//!
//! Both share the per-destination concurrency windows with positive and
//! negative feedback, dead destinations and transports, rate delays, and the
//! moves to the `retry` transport (`qmgr_feedback.c`, `qmgr_defer.c`,
//! `qmgr_error.c`, `qmgr_enable.c`).

mod feedback;
mod job;
mod list;
mod queue;

pub use feedback::Feedback;

use crate::config::TransportParams;
use list::{Links, List, Slab, NIL};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most agent connections a transport may have pending (`QMGR_TRANSPORT_MAX_PEND`).
const MAX_PENDING: u32 = 2;
/// Most recipients read from a queue file at once (nqmgr, `qmgr_message_read`).
const MAX_READ_BATCH: i64 = 5000;

/// Name of the transport that defers recipients via error(8) (`MAIL_SERVICE_RETRY`).
pub const RETRY: &str = "retry";
/// Name of the transport that bounces recipients via error(8) (`MAIL_SERVICE_ERROR`).
pub const ERROR: &str = "error";

/// Connection-cache request flags (`DEL_REQ_FLAG_CONN_LOAD|CONN_STORE`).
const CONN_LOAD: u32 = 2048;
const CONN_STORE: u32 = 4096;

/// Which queue manager's scheduling to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Postfix's `qmgr` (nqmgr): jobs, peers and preemption.
    Nqmgr,
    /// Postfix's `oqmgr`: round robin over destinations only.
    Oqmgr,
}

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
pub struct MessageId(pub u32);

/// A delivery request to be (an entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId(pub u32);

/// A destination queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(pub u32);

/// What the core asks the shell to do.
#[derive(Debug, PartialEq)]
pub enum Action<R> {
    /// Open a connection to `private/<transport>`. Once the agent has
    /// announced itself, wait `rate_delay` (the transport rate delay), then
    /// call [`Scheduler::agent_ready`]; on failure call
    /// [`Scheduler::agent_failed`].
    Connect {
        transport: String,
        rate_delay: Duration,
    },
    /// Read the next batch of this message's recipients (at most
    /// [`Scheduler::read_limit`]), then [`Scheduler::batch_read`],
    /// [`Scheduler::assign`] each, and [`Scheduler::assigned`].
    Refill { msg: MessageId },
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
    /// The agent replied. `retry`: some recipient must be retried. `hop`:
    /// the destination itself failed (the reply's DSN status was set).
    /// `reason_empty`: the reply's DSN reason was empty (positive feedback).
    Replied {
        retry: bool,
        hop: Option<Reason>,
        reason_empty: bool,
    },
    /// No usable reply (the agent died or spoke nonsense).
    Crashed,
}

impl Outcome {
    /// A plain success.
    pub const OK: Outcome = Outcome::Replied {
        retry: false,
        hop: None,
        reason_empty: true,
    };
}

/// Core-wide settings (times in seconds).
#[derive(Debug, Clone)]
pub struct Settings {
    pub strategy: Strategy,
    /// `minimal_backoff_time`: how long a dead destination stays dead.
    pub minimal_backoff_time: u64,
    /// `transport_retry_time`: how long a dead transport stays dead.
    pub transport_retry_time: u64,
    /// `destination_concurrency_feedback_debug`.
    pub feedback_debug: bool,
    /// `recipient_delimiter` (for per-recipient queue names).
    pub recipient_delimiter: String,
    /// `qmgr_message_active_limit`.
    pub active_limit: i64,
    /// `qmgr_message_recipient_limit`.
    pub recipient_limit: i64,
    /// `qmgr_message_recipient_minimum`.
    pub recipient_minimum: i64,
    /// `qmgr_fudge_factor` (oqmgr), percent.
    pub fudge_factor: i64,
    /// `helpful_warnings`.
    pub helpful_warnings: bool,
    /// `qmgr_clog_warn_time` (0 = off).
    pub clog_warn_time: u64,
}

impl Settings {
    /// Postfix's defaults, for tests and the simulator.
    pub fn postfix_defaults(strategy: Strategy) -> Settings {
        Settings {
            strategy,
            minimal_backoff_time: 300,
            transport_retry_time: 60,
            feedback_debug: false,
            recipient_delimiter: String::new(),
            active_limit: 20000,
            recipient_limit: 20000,
            recipient_minimum: 10,
            fudge_factor: 100,
            helpful_warnings: true,
            clog_warn_time: 300,
        }
    }
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
    dead_timer: Option<(Instant, u64)>,
    rate_locked: bool,
    queues: List,
    queue_by_name: HashMap<String, u32>,
    /// Σ over ready queues of min(window - busy, todo), at least 0 each.
    deliverable: i64,
    // nqmgr job scheduler state (qmgr_transport.c, qmgr_job.c).
    job_list: List,
    job_bytime: List,
    job_current: u32,
    job_next_unread: u32,
    candidate_cache: u32,
    candidate_cache_current: u32,
    candidate_cache_time: u64,
    blocker_tag: u32,
    rcpt_unused: i64,
}

#[derive(Debug)]
struct Queue {
    transport: u32,
    name: String,
    nexthop: String,
    /// > 0: ready (the concurrency limit); 0: dead; -1: suspended (rate delay).
    window: i32,
    todo: List,
    busy: i32,
    success: f64,
    failure: f64,
    fail_cohorts: f64,
    dead: Option<Reason>,
    timer: Option<(Instant, u64)>,
    /// Seconds of the last finished delivery (for back-to-back detection).
    last_done: Option<u64>,
    dflags: u32,
    blocker_tag: u32,
    clog_time_to_warn: u64,
    /// This queue's share of its transport's `deliverable`.
    contrib: i64,
}

/// One future delivery request.
#[derive(Debug)]
pub struct Entry<R> {
    pub msg: MessageId,
    pub queue: QueueId,
    pub recipients: Vec<R>,
    peer: u32,
    busy: bool,
}

#[derive(Debug)]
struct Peer {
    job: u32,
    queue: u32,
    entries: List,
    refcount: u32,
}

#[derive(Debug)]
struct Job {
    msg: u32,
    transport: u32,
    stack_parent: u32,
    stack_children: Vec<u32>,
    /// -1: retired (not on the job lists); 0: top level; > 0: preempting.
    stack_level: i32,
    blocker_tag: u32,
    peers: List,
    peer_by_queue: HashMap<u32, u32>,
    slots_used: i64,
    slots_available: i64,
    selected_entries: i64,
    read_entries: i64,
    rcpt_count: i64,
    rcpt_limit: i64,
}

#[derive(Debug)]
struct Message {
    refcount: u32,
    rcpt_count: i64,
    rcpt_limit: i64,
    rcpt_unread: i64,
    /// More recipients to read from the file (`rcpt_offset != 0`).
    more: bool,
    /// Never read yet (the first read has its own budget).
    fresh: bool,
    /// Seconds when the message entered the core (`queued_time`).
    queued_time: u64,
    /// Seconds of the last read (`refill_time`).
    refill_time: u64,
    jobs: Vec<u32>,
    refill_pending: bool,
    single_rcpt: bool,
    /// oqmgr: the entry the previous recipient went into.
    last_entry: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ReviveTransport(u32),
    ReviveQueue(u32),
    ResumeQueue(u32),
}

/// The scheduler. `R` is the shell's recipient type.
pub struct Scheduler<R> {
    settings: Settings,
    epoch: Instant,
    transport_params: Box<dyn FnMut(&str) -> TransportParams>,
    transports: Vec<Transport>,
    transport_by_name: HashMap<String, u32>,
    /// Round-robin order for agent allocation (new transports first).
    transport_order: VecDeque<u32>,
    queues: Slab<Queue>,
    queue_links: Links,
    entries: Slab<Entry<R>>,
    entry_queue_links: Links,
    entry_peer_links: Links,
    peers: Slab<Peer>,
    peer_links: Links,
    jobs: Slab<Job>,
    job_list_links: Links,
    job_time_links: Links,
    job_by_key: HashMap<(u32, u32), u32>,
    messages: Slab<Message>,
    recipient_count: i64,
    actions: VecDeque<Action<R>>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    /// The last assignment's (transport, nexthop, queue), to skip lookups for
    /// runs of recipients with the same destination (`qmgr_message_resolve`).
    last_assign: Option<(u32, String, u32)>,
}

impl<R> Scheduler<R> {
    /// A core with no transports; `transport_params` is asked once per new
    /// transport name; `now` anchors the core's clock.
    pub fn new(
        settings: Settings,
        transport_params: Box<dyn FnMut(&str) -> TransportParams>,
        now: Instant,
    ) -> Scheduler<R> {
        Scheduler {
            settings,
            epoch: now,
            transport_params,
            transports: Vec::new(),
            transport_by_name: HashMap::new(),
            transport_order: VecDeque::new(),
            queues: Slab::default(),
            queue_links: Links::default(),
            entries: Slab::default(),
            entry_queue_links: Links::default(),
            entry_peer_links: Links::default(),
            peers: Slab::default(),
            peer_links: Links::default(),
            jobs: Slab::default(),
            job_list_links: Links::default(),
            job_time_links: Links::default(),
            job_by_key: HashMap::new(),
            messages: Slab::default(),
            recipient_count: 0,
            actions: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            last_assign: None,
        }
    }

    fn nqmgr(&self) -> bool {
        self.settings.strategy == Strategy::Nqmgr
    }

    /// Whole seconds since the core's epoch (Postfix's integer time).
    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn transport_index(&mut self, name: &str) -> u32 {
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
        let t = self.transports.len() as u32;
        self.transports.push(Transport {
            name: name.to_string(),
            rcpt_unused: params.rcpt_unused,
            params,
            pos_feedback: pos,
            neg_feedback: neg,
            pending: 0,
            dead: None,
            dead_timer: None,
            rate_locked: false,
            queues: List::default(),
            queue_by_name: HashMap::new(),
            deliverable: 0,
            job_list: List::default(),
            job_bytime: List::default(),
            job_current: NIL,
            job_next_unread: NIL,
            candidate_cache: NIL,
            candidate_cache_current: NIL,
            candidate_cache_time: 0,
            blocker_tag: 1,
        });
        self.transport_by_name.insert(name.to_string(), t);
        // New transports go first (qmgr_transport_create; oqmgr's list
        // macros are named the other way round but do the same).
        self.transport_order.push_front(t);
        t
    }

    // ----- messages -------------------------------------------------------

    /// A new message enters the core (`qmgr_message_create`).
    pub fn message_new(&mut self, now: Instant) -> MessageId {
        let secs = self.secs(now);
        let m = Message {
            refcount: 0,
            rcpt_count: 0,
            rcpt_limit: self.settings.recipient_minimum,
            rcpt_unread: 0,
            more: false,
            fresh: true,
            queued_time: secs,
            refill_time: 0,
            jobs: Vec::new(),
            refill_pending: false,
            single_rcpt: false,
            last_entry: NIL,
        };
        MessageId(self.messages.insert(m))
    }

    /// How many recipients the next read of `msg` may take
    /// (`qmgr_message_read`; oqmgr: `qmgr_message_recipient_limit` times the
    /// fudge factor).
    pub fn read_limit(&self, msg: MessageId) -> usize {
        let m = &self.messages[msg.0];
        let limit = if !self.nqmgr() {
            self.settings.recipient_limit * self.settings.fudge_factor / 100
        } else if m.fresh {
            (self.settings.recipient_limit - self.recipient_count)
                .max(m.rcpt_limit)
                .min(MAX_READ_BATCH)
        } else {
            (m.rcpt_limit - m.rcpt_count).min(MAX_READ_BATCH)
        };
        limit.max(1) as usize
    }

    /// A batch of `msg` was read: `rcpt_unread` recipients remain unread
    /// in the file (the `C` count minus those seen), `more` says whether
    /// another batch follows, `single_rcpt` is set for VERP mail (one
    /// recipient per delivery).
    pub fn batch_read(
        &mut self,
        msg: MessageId,
        rcpt_unread: i64,
        more: bool,
        single_rcpt: bool,
        now: Instant,
    ) {
        let secs = self.secs(now);
        let m = &mut self.messages[msg.0];
        m.rcpt_unread = rcpt_unread.max(0);
        m.more = more;
        m.fresh = false;
        m.refill_time = secs;
        m.single_rcpt = single_rcpt;
    }

    /// True when oqmgr's admission rule lets another message in (the global
    /// in-core recipient count is below `qmgr_message_recipient_limit`);
    /// nqmgr admits on the message count alone (checked by the shell).
    pub fn admits_more(&self) -> bool {
        self.nqmgr() || self.recipient_count < self.settings.recipient_limit
    }

    /// Number of messages in the core.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Number of recipients in the core (`qmgr_recipient_count`).
    pub fn recipient_count(&self) -> i64 {
        self.recipient_count
    }

    /// Number of entries not yet finished for `msg`.
    pub fn refcount(&self, msg: MessageId) -> u32 {
        self.messages.get(msg.0).map_or(0, |m| m.refcount)
    }

    /// Binds one recipient of `msg` to a queue (`qmgr_message_resolve`
    /// steps 9-16 and `qmgr_message_assign`). A dead transport or queue sends
    /// the recipient to the `retry` transport instead; if that is dead too,
    /// the recipient is handed back with the reason, for the shell to defer.
    ///
    /// Errors: `(recipient, reason)` when nothing can take the recipient.
    pub fn assign(
        &mut self,
        msg: MessageId,
        a: Assignment<'_, R>,
        now: Instant,
    ) -> Result<(), (R, Reason)> {
        let cached = self.last_assign.as_ref().and_then(|(lt, nexthop, lq)| {
            let queue = self.queues.get(*lq)?;
            let tr = &self.transports[*lt as usize];
            (!a.flush_each
                && tr.name == a.transport
                && tr.dead.is_none()
                && nexthop == a.nexthop
                && queue.transport == *lt
                && queue.nexthop == a.nexthop
                && queue.window > 0)
                .then_some(*lq)
        });
        let q = match cached {
            Some(q) => q,
            None => {
                let mut t = self.transport_index(a.transport);
                if a.flush_each && self.transports[t as usize].dead.is_some() {
                    self.revive_transport(t);
                }
                let mut nexthop = a.nexthop.to_string();
                if let Some(reason) = self.transports[t as usize].dead.clone() {
                    let r = self.transport_index(RETRY);
                    if self.transports[r as usize].dead.is_some() {
                        return Err((a.rcpt, reason));
                    }
                    t = r;
                    nexthop = reason.nexthop();
                }
                let name = self.queue_name(t, &nexthop, a.address);
                let mut q = self.find_or_create_queue(t, &name, &nexthop);
                if a.flush_each && self.queues[q].window == 0 {
                    self.unthrottle_queue(q);
                }
                if let Some(reason) = self.queues[q].dead.clone() {
                    match self.retry_queue(&reason) {
                        Some(rq) => q = rq,
                        None => return Err((a.rcpt, reason)),
                    }
                }
                // Per-recipient queue names depend on the address: not cached.
                let own = self.queues[q].transport == t && self.queues[q].nexthop == a.nexthop;
                self.last_assign =
                    (own && !self.per_recipient_queues(t)).then(|| (t, a.nexthop.to_string(), q));
                q
            }
        };
        self.add_recipient(msg.0, q, a.rcpt, now);
        Ok(())
    }

    fn per_recipient_queues(&self, t: u32) -> bool {
        let tr = &self.transports[t as usize];
        tr.name != ERROR && tr.name != RETRY && tr.params.recipient_limit == 1
    }

    /// The queue name for a recipient (`qmgr_message_resolve`): the nexthop,
    /// or `localpart@nexthop` when the transport delivers one recipient per
    /// request; always lower-cased.
    fn queue_name(&self, t: u32, nexthop: &str, address: &[u8]) -> String {
        let mut name = if self.per_recipient_queues(t) {
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

    /// The queue of the `retry` transport for `reason`, unless the retry
    /// transport or that queue is dead (`qmgr_error_queue`).
    fn retry_queue(&mut self, reason: &Reason) -> Option<u32> {
        let r = self.transport_index(RETRY);
        if self.transports[r as usize].dead.is_some() {
            return None;
        }
        let nexthop = reason.nexthop();
        let q = self.find_or_create_queue(r, &nexthop, &nexthop);
        (self.queues[q].window != 0).then_some(q)
    }

    fn add_recipient(&mut self, msg: u32, q: u32, rcpt: R, now: Instant) {
        let limit = self.transports[self.queues[q].transport as usize]
            .params
            .recipient_limit;
        let single = self.messages[msg].single_rcpt;
        let limit_ok = |n: usize| limit <= 0 || (n as i64) < limit;
        let entry = if self.nqmgr() {
            let t = self.queues[q].transport;
            let job = self.job_obtain(msg, t);
            let peer = self.peer_obtain(job, q);
            match self.peers[peer].entries.last() {
                Some(e) if !single && limit_ok(self.entries[e].recipients.len()) => e,
                _ => self.entry_create(msg, q, peer, now),
            }
        } else {
            let last = self.messages[msg].last_entry;
            match self.entries.get(last) {
                Some(e)
                    if !single
                        && e.queue.0 == q
                        && e.msg.0 == msg
                        && !e.busy
                        && limit_ok(e.recipients.len()) =>
                {
                    last
                }
                _ => self.entry_create(msg, q, NIL, now),
            }
        };
        self.entries[entry].recipients.push(rcpt);
        if self.nqmgr() {
            let job = self.peers[self.entries[entry].peer].job;
            self.jobs[job].rcpt_count += 1;
        } else {
            self.messages[msg].last_entry = entry;
        }
        self.messages[msg].rcpt_count += 1;
        self.recipient_count += 1;
    }

    /// All recipients of this read of `msg` have been assigned
    /// (`qmgr_message_assign`'s epilogue, `qmgr_message_move_limits`); if
    /// none produced an entry, the message is done.
    pub fn assigned(&mut self, msg: MessageId) {
        let m = msg.0;
        self.messages[m].refill_pending = false;
        self.messages[m].last_entry = NIL;
        if self.nqmgr() {
            for job in self.messages[m].jobs.clone() {
                let t = self.jobs[job].transport as usize;
                if self.jobs[job].selected_entries < self.jobs[job].read_entries
                    && self.jobs[job].blocker_tag != self.transports[t].blocker_tag
                {
                    self.transports[t].candidate_cache_current = NIL;
                }
            }
            if !self.messages[m].more {
                for job in self.messages[m].jobs.clone() {
                    self.job_move_limits(job);
                }
            }
        }
        if self.messages[m].refcount == 0 {
            self.actions.push_back(Action::MessageDone { msg });
        }
    }

    /// The shell is done with `msg` (`qmgr_message_free`): its jobs go, and
    /// their recipient slots return to the transports.
    pub fn message_free(&mut self, msg: MessageId) {
        let Some(m) = self.messages.get(msg.0) else {
            return;
        };
        debug_assert_eq!(m.refcount, 0);
        for job in m.jobs.clone() {
            self.job_free(job);
        }
        self.messages.remove(msg.0);
    }

    // ----- entries --------------------------------------------------------

    /// The entry `e` (its message, queue and recipients).
    ///
    /// Panics if `e` was already finished (a shell bug, not outside input).
    pub fn entry(&self, e: EntryId) -> &Entry<R> {
        &self.entries[e.0]
    }

    /// The nexthop of queue `q`.
    pub fn nexthop(&self, q: QueueId) -> &str {
        &self.queues[q.0].nexthop
    }

    /// The name of the transport of queue `q`.
    pub fn transport_of(&self, q: QueueId) -> &str {
        &self.transports[self.queues[q.0].transport as usize].name
    }

    /// Connection-cache flags to add to a request for queue `q`.
    pub fn queue_dflags(&self, q: QueueId) -> u32 {
        self.queues[q.0].dflags
    }

    fn entry_create(&mut self, msg: u32, q: u32, peer: u32, now: Instant) -> u32 {
        let e = self.entries.insert(Entry {
            msg: MessageId(msg),
            queue: QueueId(q),
            recipients: Vec::new(),
            peer,
            busy: false,
        });
        self.messages[msg].refcount += 1;
        if peer != NIL {
            self.peers[peer]
                .entries
                .push_back(&mut self.entry_peer_links, e);
            self.peers[peer].refcount += 1;
            let job = self.peers[peer].job;
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
    /// (`qmgr_entry_create`).
    fn clog_warning(&mut self, q: u32, now: Instant) {
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
        let tr = &self.transports[queue.transport as usize];
        tracing::warn!(
            "mail for {} is using up {length} of {count} active queue entries",
            queue.nexthop
        );
        if share < 0.9 {
            tracing::warn!("this may slow down other mail deliveries");
        }
        let limit = tr.params.dest_concurrency_limit;
        if limit > 0 && limit <= i64::from(queue.busy) + 1 {
            tracing::warn!("you may need to increase the main.cf {}_destination_concurrency_limit from {limit}", tr.name);
        } else if f64::from(queue.window) > self.settings.active_limit as f64 * share {
            tracing::warn!(
                "you may need to increase the main.cf qmgr_message_active_limit from {}",
                self.settings.active_limit
            );
        } else if self.queue_has_several_peers(q) {
            tracing::warn!(
                "you may need a separate master.cf transport for {}",
                queue.nexthop
            );
        } else {
            tracing::warn!(
                "you may need to reduce {} connect and helo timeouts",
                tr.name
            );
            tracing::warn!("so that Postfix quickly skips unavailable hosts");
            tracing::warn!("you may need to increase the main.cf minimal_backoff_time and maximal_backoff_time");
            tracing::warn!("so that Postfix wastes less time on undeliverable mail");
            tracing::warn!(
                "you may need to increase the master.cf {} process limit",
                tr.name
            );
        }
        tracing::warn!("please avoid flushing the whole queue when you have");
        tracing::warn!("lots of deferred mail, that is bad for performance");
        tracing::warn!("to turn off these warnings specify: qmgr_clog_warn_time = 0");
        self.queues[q].clog_time_to_warn = secs + self.settings.clog_warn_time;
    }

    /// Postfix's test is "the transport has other queues" (`queue->peers`
    /// are the transport's queue list links).
    fn queue_has_several_peers(&self, q: u32) -> bool {
        self.transports[self.queues[q].transport as usize]
            .queues
            .len()
            > 1
    }

    /// Which list an entry is taken off when it is done.
    fn entry_done(&mut self, e: u32, busy: bool, now: Instant) -> (MessageId, Vec<R>) {
        let entry = self.entries.remove(e);
        let q = entry.queue.0;
        let msg = entry.msg.0;
        let t = self.queues[q].transport;
        if busy {
            self.queues[q].busy -= 1;
        } else {
            self.queues[q].todo.remove(&mut self.entry_queue_links, e);
            if entry.peer != NIL {
                self.peers[entry.peer]
                    .entries
                    .remove(&mut self.entry_peer_links, e);
                let job = self.peers[entry.peer].job;
                self.jobs[job].selected_entries += 1;
            }
        }
        let n = entry.recipients.len() as i64;
        self.messages[msg].rcpt_count -= n;
        self.recipient_count -= n;
        if entry.peer != NIL {
            let job = self.peers[entry.peer].job;
            self.jobs[job].rcpt_count -= n;
            self.return_sponsored_slots(msg, job);
        }
        let rate_delay = self.transports[t as usize].params.rate_delay;
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
            && self.queues[q].blocker_tag == self.transports[t as usize].blocker_tag
        {
            self.job_blocker_update(q);
        }
        if entry.peer != NIL {
            let p = entry.peer;
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
            if self.queues[q].window > 0 {
                self.queue_done(q);
            }
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
            self.actions.push_back(Action::Refill {
                msg: MessageId(msg),
            });
        }
        // With a refill under way, completion waits for it (assigned()).
        let m = &self.messages[msg];
        if m.refcount == 0 && !m.refill_pending {
            self.actions.push_back(Action::MessageDone {
                msg: MessageId(msg),
            });
        }
        (MessageId(msg), entry.recipients)
    }

    // ----- agents and deliveries -----------------------------------------

    /// Agent allocation (`qmgr_transport_select` + `qmgr_active_drain`): ask
    /// for connections while some transport has more deliverable entries than
    /// pending connections.
    fn drain(&mut self) {
        loop {
            let pos = self.transport_order.iter().position(|&t| {
                let tr = &self.transports[t as usize];
                tr.dead.is_none()
                    && !tr.rate_locked
                    && tr.pending < MAX_PENDING
                    && tr.deliverable > i64::from(tr.pending)
            });
            let Some(pos) = pos else { return };
            let t = self.transport_order.remove(pos).expect("position in list");
            self.transport_order.push_back(t);
            let tr = &mut self.transports[t as usize];
            tr.pending += 1;
            if tr.params.xport_rate_delay > 0 {
                tr.rate_locked = true;
            }
            self.actions.push_back(Action::Connect {
                transport: tr.name.clone(),
                rate_delay: Duration::from_secs(tr.params.xport_rate_delay.max(0) as u64),
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

    fn add_timer(&mut self, at: Instant, timer: Timer) -> (Instant, u64) {
        self.timer_seq += 1;
        let key = (at, self.timer_seq);
        self.timers.insert(key, timer);
        key
    }

    /// Fires every timer due at `now`: dead transports and destinations come
    /// back to life, rate-delayed destinations resume.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&key, &timer)) = self.timers.iter().next() {
            if key.0 > now {
                break;
            }
            self.timers.remove(&key);
            match timer {
                Timer::ReviveTransport(t) => {
                    self.transports[t as usize].dead_timer = None;
                    self.revive_transport(t);
                }
                Timer::ReviveQueue(q) => {
                    self.queues[q].timer = None;
                    self.unthrottle_queue(q);
                    if self.queues[q].window > 0
                        && self.queues[q].todo.is_empty()
                        && self.queues[q].busy == 0
                    {
                        self.queue_done(q);
                    }
                }
                Timer::ResumeQueue(q) => {
                    self.queues[q].timer = None;
                    self.resume_queue(q);
                }
            }
        }
    }

    /// A connection to `transport` is ready (after its rate delay): pick the
    /// entry to deliver, or `None` to close the connection.
    pub fn agent_ready(&mut self, transport: &str, now: Instant) -> Option<EntryId> {
        let t = *self.transport_by_name.get(transport)?;
        self.transports[t as usize].pending = self.transports[t as usize].pending.saturating_sub(1);
        let e = if self.nqmgr() {
            self.job_entry_select(t, now)
        } else {
            self.oqmgr_entry_select(t, now)
        };
        if e.is_none() {
            // Postfix leaves the rate lock set here and the transport stalls
            // until restart; nothing is in flight, so release it.
            self.transports[t as usize].rate_locked = false;
        }
        e.map(EntryId)
    }

    /// oqmgr: the first ready queue with work, round robin; its oldest entry
    /// (`oqmgr/qmgr_queue.c:qmgr_queue_select`, `oqmgr/qmgr_entry.c`: its
    /// QMGR_LIST_APPEND inserts at the head, and selection takes the tail).
    fn oqmgr_entry_select(&mut self, t: u32, now: Instant) -> Option<u32> {
        let mut cur = self.transports[t as usize].queues.first();
        while let Some(q) = cur {
            cur = self.queue_links.next(q);
            let queue = &self.queues[q];
            if queue.window > queue.busy && !queue.todo.is_empty() {
                self.transports[t as usize]
                    .queues
                    .rotate_to_back(&mut self.queue_links, q);
                let e = queue.todo.first().expect("non-empty todo");
                self.select_entry(e, now);
                return Some(e);
            }
        }
        None
    }

    /// Moves entry `e` from its queue's todo list to busy
    /// (`qmgr_entry_select`), with opportunistic session caching.
    fn select_entry(&mut self, e: u32, now: Instant) {
        let secs = self.secs(now);
        let q = self.entries[e].queue.0;
        let peer = self.entries[e].peer;
        self.queues[q].todo.remove(&mut self.entry_queue_links, e);
        self.queues[q].busy += 1;
        if peer != NIL {
            self.peers[peer]
                .entries
                .remove(&mut self.entry_peer_links, e);
            let job = self.peers[peer].job;
            self.jobs[job].selected_entries += 1;
        }
        self.entries[e].busy = true;
        let queue = &mut self.queues[q];
        let back_to_back = queue.last_done.is_some_and(|d| d + 1 >= secs);
        if queue.dflags & CONN_STORE == 0 {
            if back_to_back {
                queue.dflags |= CONN_LOAD | CONN_STORE;
            }
        } else if !(queue.busy > 1 || back_to_back) {
            queue.dflags &= !CONN_STORE;
        }
        self.update_contrib(q);
    }

    /// Puts a selected entry back (`qmgr_entry_unselect`).
    fn unselect_entry(&mut self, e: u32) {
        let q = self.entries[e].queue.0;
        let peer = self.entries[e].peer;
        self.entries[e].busy = false;
        self.queues[q].busy -= 1;
        self.queues[q]
            .todo
            .push_back(&mut self.entry_queue_links, e);
        if peer != NIL {
            self.peers[peer]
                .entries
                .push_front(&mut self.entry_peer_links, e);
            let job = self.peers[peer].job;
            self.jobs[job].selected_entries -= 1;
        }
        self.update_contrib(q);
    }

    /// A connection to `transport` failed before it was ready: the transport
    /// is dead for `transport_retry_time` and its waiting entries move to the
    /// `retry` transport (`qmgr_transport_throttle` + `qmgr_defer_transport`).
    pub fn agent_failed(&mut self, transport: &str, reason: Reason, now: Instant) {
        let Some(&t) = self.transport_by_name.get(transport) else {
            return;
        };
        self.transports[t as usize].pending = self.transports[t as usize].pending.saturating_sub(1);
        self.throttle_transport(t, reason, now);
    }

    fn throttle_transport(&mut self, t: u32, reason: Reason, now: Instant) {
        if self.transports[t as usize].dead.is_none() {
            self.transports[t as usize].dead = Some(reason.clone());
            let at = now + Duration::from_secs(self.settings.transport_retry_time);
            let key = self.add_timer(at, Timer::ReviveTransport(t));
            self.transports[t as usize].dead_timer = Some(key);
        }
        for q in self.transports[t as usize].queues.items(&self.queue_links) {
            self.defer_todo(q, &reason, now);
        }
    }

    /// Moves every waiting entry of queue `q` to the retry queue for `reason`,
    /// or hands its recipients to the shell if retry is unavailable
    /// (`qmgr_defer_todo`, `qmgr_entry_move_todo`).
    fn defer_todo(&mut self, q: u32, reason: &Reason, now: Instant) {
        let retry = self.retry_queue(reason);
        for e in self.queues[q].todo.items(&self.entry_queue_links) {
            match retry {
                Some(rq) if rq != q => {
                    let msg = self.entries[e].msg.0;
                    let recipients = std::mem::take(&mut self.entries[e].recipients);
                    let n = recipients.len() as i64;
                    let peer = if self.nqmgr() {
                        let rt = self.queues[rq].transport;
                        let job = self.job_obtain(msg, rt);
                        let peer = self.peer_obtain(job, rq);
                        self.jobs[job].rcpt_count += n;
                        let src_job = self.peers[self.entries[e].peer].job;
                        self.jobs[src_job].rcpt_count -= n;
                        peer
                    } else {
                        NIL
                    };
                    let new = self.entry_create(msg, rq, peer, now);
                    // The recipients move; the message's counts stay the same
                    // (the old entry leaves empty).
                    self.entries[new].recipients = recipients;
                    self.entry_done(e, false, now);
                }
                _ => {
                    let msg = self.entries[e].msg;
                    let recipients = std::mem::take(&mut self.entries[e].recipients);
                    let n = recipients.len() as i64;
                    // Count them off here: the entry leaves with no recipients.
                    self.messages[msg.0].rcpt_count -= n;
                    self.recipient_count -= n;
                    if self.entries[e].peer != NIL {
                        let job = self.peers[self.entries[e].peer].job;
                        self.jobs[job].rcpt_count -= n;
                    }
                    self.actions.push_back(Action::Defer {
                        msg,
                        recipients,
                        reason: reason.clone(),
                    });
                    self.entry_done(e, false, now);
                }
            }
        }
    }

    /// The request for `e` could not be written: the entry goes back and the
    /// transport is throttled like a failed connection (`qmgr_deliver`).
    pub fn write_failed(&mut self, e: EntryId, reason: Reason, now: Instant) {
        let t = self.queues[self.entries[e.0].queue.0].transport;
        self.unselect_entry(e.0);
        self.throttle_transport(t, reason, now);
    }

    /// A delivery finished (`qmgr_deliver_update` + `qmgr_entry_done`):
    /// feedback for the destination, then the entry is released. Returns the
    /// entry's message, its recipients, and whether the message must be
    /// retried.
    pub fn delivery_done(
        &mut self,
        e: EntryId,
        outcome: Outcome,
        now: Instant,
    ) -> (MessageId, Vec<R>, bool) {
        let q = self.entries[e.0].queue.0;
        let t = self.queues[q].transport;
        let crashed = outcome == Outcome::Crashed;
        let (retry, hop, reason_empty) = match outcome {
            Outcome::Crashed => (
                true,
                Some(Reason::new("4.3.0", "unknown mail transport error")),
                false,
            ),
            Outcome::Replied {
                retry,
                hop,
                reason_empty,
            } => (retry, hop, reason_empty),
        };
        if retry {
            if let Some(h) = &hop {
                let reason = Reason::new(
                    &h.status,
                    &format!("delivery temporarily suspended: {}", h.text),
                );
                if self.queues[q].window > 0 {
                    self.throttle_queue(q, &reason, now);
                    if self.queues[q].window == 0 {
                        self.defer_todo(q, &reason, now);
                    }
                }
            }
        }
        if !crashed {
            self.unthrottle_transport(t);
            if reason_empty && hop.is_none() {
                self.unthrottle_queue(q);
            }
        } else {
            // Postfix leaves a crashed transport rate-locked until restart.
            self.transports[t as usize].rate_locked = false;
        }
        let (msg, recipients) = self.entry_done(e.0, true, now);
        (msg, recipients, retry)
    }

    fn unthrottle_transport(&mut self, t: u32) {
        self.revive_transport(t);
        self.transports[t as usize].rate_locked = false;
    }

    fn revive_transport(&mut self, t: u32) {
        if self.transports[t as usize].dead.take().is_some() {
            if let Some(key) = self.transports[t as usize].dead_timer.take() {
                self.timers.remove(&key);
            }
        }
    }

    /// Revives every dead transport and destination (`qmgr_enable_all`, the
    /// `F` trigger); frees empty queues.
    pub fn enable_all(&mut self) {
        for t in 0..self.transports.len() as u32 {
            self.revive_transport(t);
        }
        for q in self.queues.ids().collect::<Vec<_>>() {
            if self.queues[q].window == 0 {
                self.unthrottle_queue(q);
            }
            if self.queues[q].window > 0
                && self.queues[q].todo.is_empty()
                && self.queues[q].busy == 0
            {
                self.queue_done(q);
            }
        }
    }

    // ----- observation (tests, simulator, statistics) ----------------------

    /// Number of live entries (waiting and busy).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Window (concurrency limit; 0 = dead, -1 = suspended) of the queue
    /// named `name` of `transport`, if it exists.
    pub fn window(&self, transport: &str, name: &str) -> Option<i32> {
        let t = *self.transport_by_name.get(transport)?;
        let q = *self.transports[t as usize].queue_by_name.get(name)?;
        Some(self.queues[q].window)
    }

    /// Busy entries of the queue named `name` of `transport`.
    pub fn busy(&self, transport: &str, name: &str) -> Option<i32> {
        let t = *self.transport_by_name.get(transport)?;
        let q = *self.transports[t as usize].queue_by_name.get(name)?;
        Some(self.queues[q].busy)
    }

    /// True if `transport` is dead.
    pub fn transport_dead(&self, transport: &str) -> bool {
        self.transport_by_name
            .get(transport)
            .is_some_and(|&t| self.transports[t as usize].dead.is_some())
    }

    /// The parameters of transport `name` (read on first use).
    pub fn transport_params(&mut self, name: &str) -> &TransportParams {
        let t = self.transport_index(name);
        &self.transports[t as usize].params
    }

    /// Checks internal invariants (for tests): counters agree with lists,
    /// busy never exceeds a ready window by more than feedback allows.
    ///
    /// Errors: a description of the first broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut rcpts = 0i64;
        let mut per_msg: HashMap<u32, (u32, i64)> = HashMap::new();
        for e in self.entries.ids() {
            let entry = &self.entries[e];
            rcpts += entry.recipients.len() as i64;
            let c = per_msg.entry(entry.msg.0).or_default();
            c.0 += 1;
            c.1 += entry.recipients.len() as i64;
        }
        if rcpts != self.recipient_count {
            return Err(format!(
                "recipient_count {} but entries hold {rcpts}",
                self.recipient_count
            ));
        }
        for m in self.messages.ids() {
            let (refs, n) = per_msg.get(&m).copied().unwrap_or((0, 0));
            let msg = &self.messages[m];
            if msg.refcount != refs || msg.rcpt_count != n {
                return Err(format!(
                    "message {m}: refcount {} rcpt_count {} but entries say {refs}/{n}",
                    msg.refcount, msg.rcpt_count
                ));
            }
        }
        for (ti, tr) in self.transports.iter().enumerate() {
            let mut sum = 0;
            for q in tr.queues.items(&self.queue_links) {
                let queue = &self.queues[q];
                if queue.transport as usize != ti {
                    return Err(format!("queue {} on the wrong transport", queue.name));
                }
                let busy = self
                    .entries
                    .ids()
                    .filter(|&e| self.entries[e].queue.0 == q && self.entries[e].busy)
                    .count();
                if busy as i32 != queue.busy {
                    return Err(format!(
                        "queue {}: busy {} but {busy} busy entries",
                        queue.name, queue.busy
                    ));
                }
                sum += queue.contrib;
            }
            if sum != tr.deliverable {
                return Err(format!(
                    "transport {}: deliverable {} but queues sum to {sum}",
                    tr.name, tr.deliverable
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
