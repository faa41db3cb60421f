//! The queue manager's core: every decision Postfix's qmgr makes, with no
//! I/O. The shell tells it what happened (a message was read, recipients
//! were resolved, an agent is ready, an agent replied, a bounce service
//! answered, time passed), then drains the actions it asks for
//! ([`Core::poll_action`]), the events it reports ([`Core::poll_event`]) and
//! the time it wants to be woken ([`Core::poll_timeout`]). Time is always a
//! parameter, so a test or the simulator can run a day of mail in
//! milliseconds, and the same events always give the same actions.
//!
//! One room per Postfix concept, named after `src/qmgr/qmgr_*.c`:
//! - [`transport`]: transports, their parameters, agent allocation, dead
//!   transports (`qmgr_transport.c`, `qmgr_enable.c`);
//! - [`queue`]: destinations, concurrency windows, dead and rate-delayed
//!   destinations (`qmgr_queue.c`), with [`feedback`] (`qmgr_feedback.c`);
//! - [`entry`]: delivery requests to be, clog warnings (`qmgr_entry.c`);
//! - [`job`] and [`peer`]: nqmgr's preemptive job scheduler (`qmgr_job.c`,
//!   `qmgr_peer.c`);
//! - [`message`]: admission, reading limits, the routing overrides and the
//!   assignment of recipients to queues (`qmgr_message.c`);
//! - [`deliver`]: an agent's reply read into an outcome and feedback
//!   (`qmgr_deliver.c`);
//! - [`defer`]: work moved to the `retry` transport or handed back to be
//!   deferred (`qmgr_defer.c`, `qmgr_error.c`);
//! - [`active`]: message completion as a state machine (`qmgr_active.c`);
//! - [`scan`]: trigger requests, scan flags and the feed order (`qmgr.c`,
//!   `qmgr_scan.c`);
//! - [`event`]: what happened, for log lines and observers;
//!   [`snapshot`]: a read-only picture of the whole state.
//!
//! Two strategies, chosen per [`Strategy`]: nqmgr (Postfix's `qmgr`: jobs,
//! peers, preemption) and oqmgr (Postfix's old queue manager: round robin
//! over destinations, a global in-core recipient budget,
//! `oqmgr/qmgr_queue.c`, `oqmgr/qmgr_entry.c`).

pub mod active;
pub mod defer;
pub mod deliver;
pub mod entry;
pub mod event;
pub mod feedback;
pub mod job;
mod list;
pub mod message;
pub mod peer;
pub mod queue;
pub mod scan;
pub mod snapshot;
pub mod transport;

pub use active::{BounceLog, Fact, Step};
pub use deliver::{AgentReply, DeliveryTimes, Outcome};
pub use entry::Entry;
pub use event::{ClogAdvice, Disposition, Event, FeedbackFn, Trace};
pub use feedback::Feedback;
pub use list::SideTable;
pub use message::{resolve_order, Assigned, Lookup, MessageFacts, Resolution};
pub use scan::ScanFlags;
pub use snapshot::Snapshot;
pub use transport::TransportConfig;

use crate::config::{Params, TransportParams};
use list::{key, Links, Slab};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

key!(
    /// A message in the core (`QMGR_MESSAGE`); the shell keeps its data.
    MessageId
);
key!(
    /// A delivery request to be (`QMGR_ENTRY`).
    EntryId
);
key!(
    /// A destination queue (`QMGR_QUEUE`).
    QueueId
);
key!(
    /// A transport (`QMGR_TRANSPORT`).
    TransportId
);
key!(
    /// One message's work for one transport (`QMGR_JOB`).
    JobId
);
key!(
    /// One job's work for one destination (`QMGR_PEER`).
    PeerId
);

/// Which queue manager's scheduling to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Postfix's `qmgr` (nqmgr): jobs, peers and preemption.
    Nqmgr,
    /// Postfix's `oqmgr`: round robin over destinations only.
    Oqmgr,
}

/// A delivery status as the core needs it: code and text (`DSN` status and
/// reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// `4.x.y` or `5.x.y`.
    pub status: String,
    /// Human-readable text.
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

/// Core-wide settings from main.cf (times in seconds).
#[derive(Debug, Clone)]
pub struct Settings {
    pub strategy: Strategy,
    /// `minimal_backoff_time`: how long a dead destination stays dead, and
    /// the shortest wait before a deferred message is retried.
    pub minimal_backoff_time: u64,
    /// `maximal_backoff_time`: the longest wait before a retry.
    pub maximal_backoff_time: u64,
    /// `maximal_queue_lifetime`: mail with a sender expires after this.
    pub maximal_queue_lifetime: i64,
    /// `bounce_queue_lifetime`: null-sender mail expires after this.
    pub bounce_queue_lifetime: i64,
    /// `transport_retry_time`: how long a dead transport stays dead.
    pub transport_retry_time: u64,
    /// `destination_concurrency_feedback_debug`.
    pub feedback_debug: bool,
    /// `initial_destination_concurrency` (the global one, at which the
    /// feedback debug lines show each feedback value).
    pub initial_concurrency: i32,
    /// `recipient_delimiter` (for per-recipient queue names).
    pub recipient_delimiter: String,
    /// `qmgr_message_active_limit`: messages in the core at once.
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
    /// `defer_transports`: transports whose mail is deferred unless flushed.
    pub defer_transports: Vec<String>,
    /// `double_bounce_sender`: local mail to it is discarded.
    pub double_bounce_sender: String,
    /// `default_filter_nexthop`.
    pub default_filter_nexthop: String,
    /// `myhostname` (the last-resort content filter nexthop).
    pub myhostname: String,
    /// `disable_verp_bounces`.
    pub disable_verp_bounces: bool,
    /// `address_verify_pending_request_limit`: probes in core beyond this
    /// are deferred.
    pub probe_limit: i64,
    /// `-v`: report [`Event::Trace`] events (Postfix's `msg_verbose`).
    pub verbose: bool,
}

impl Settings {
    /// Postfix's defaults, for tests and the simulator.
    pub fn postfix_defaults(strategy: Strategy) -> Settings {
        Settings {
            strategy,
            minimal_backoff_time: 300,
            maximal_backoff_time: 4000,
            maximal_queue_lifetime: 5 * 86400,
            bounce_queue_lifetime: 5 * 86400,
            transport_retry_time: 60,
            feedback_debug: false,
            initial_concurrency: 5,
            recipient_delimiter: String::new(),
            active_limit: 20000,
            recipient_limit: 20000,
            recipient_minimum: 10,
            fudge_factor: 100,
            helpful_warnings: true,
            clog_warn_time: 300,
            defer_transports: Vec::new(),
            double_bounce_sender: "double-bounce".into(),
            default_filter_nexthop: String::new(),
            myhostname: "localhost".into(),
            disable_verp_bounces: false,
            probe_limit: 5000,
            verbose: false,
        }
    }

    /// The settings main.cf gives (`qmgr/qmgr.c` tables, read by
    /// [`Params::read`]); the daemon and the simulator share this.
    pub fn from_params(p: &Params, strategy: Strategy) -> Settings {
        Settings {
            strategy,
            minimal_backoff_time: p.minimal_backoff_time.max(0) as u64,
            maximal_backoff_time: p.maximal_backoff_time.max(0) as u64,
            maximal_queue_lifetime: p.maximal_queue_lifetime,
            bounce_queue_lifetime: p.bounce_queue_lifetime,
            transport_retry_time: p.transport_retry_time.max(0) as u64,
            feedback_debug: p.destination_concurrency_feedback_debug,
            initial_concurrency: p.initial_destination_concurrency as i32,
            recipient_delimiter: p.recipient_delimiter.clone(),
            active_limit: p.qmgr_message_active_limit,
            recipient_limit: p.qmgr_message_recipient_limit,
            recipient_minimum: p.qmgr_message_recipient_minimum,
            fudge_factor: p.qmgr_fudge_factor,
            helpful_warnings: p.helpful_warnings,
            clog_warn_time: p.qmgr_clog_warn_time.max(0) as u64,
            defer_transports: p.defer_transports.clone(),
            double_bounce_sender: p.double_bounce_sender.clone(),
            default_filter_nexthop: p.default_filter_nexthop.clone(),
            myhostname: p.myhostname.clone(),
            disable_verp_bounces: p.disable_verp_bounces,
            probe_limit: p.address_verify_pending_request_limit,
            verbose: false,
        }
    }
}

/// What the core asks the shell to do.
#[derive(Debug, PartialEq)]
pub enum Action<R> {
    /// Open a connection to `private/<transport>`. Once the agent has
    /// announced itself, wait `rate_delay` (the transport rate delay), then
    /// call [`Core::agent_ready`]; on failure call [`Core::agent_failed`].
    Connect {
        transport: Rc<str>,
        rate_delay: Duration,
    },
    /// Read the next batch of this message's recipients (at most
    /// [`Core::read_limit`]), then [`Core::batch_read`], [`Core::assign`]
    /// each, and [`Core::assigned`].
    Refill { msg: MessageId },
    /// Defer these recipients (qmgr defers them itself: defer_append each
    /// with `reason`), then tell [`Core::message_failed`] for each one that
    /// must be retried.
    Defer {
        msg: MessageId,
        recipients: Vec<R>,
        reason: Reason,
    },
    /// Carry out one step of the message's completion, then answer with
    /// [`Core::complete`] (at once, or when an asynchronous request ends).
    Complete { msg: MessageId, step: Step },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ReviveTransport(TransportId),
    ReviveQueue(QueueId),
    ResumeQueue(QueueId),
}

/// A timer's key: when, and a sequence number for ties.
type TimerKey = (Instant, u64);

/// The core. `R` is the shell's recipient type.
pub struct Core<R> {
    settings: Settings,
    epoch: Instant,
    config: Box<dyn TransportConfig>,
    transports: Slab<TransportId, transport::Transport>,
    transport_by_name: HashMap<Rc<str>, TransportId>,
    /// Round-robin order for agent allocation (new transports first).
    transport_order: VecDeque<TransportId>,
    queues: Slab<QueueId, queue::Queue>,
    queue_links: Links<QueueId>,
    entries: Slab<EntryId, Entry<R>>,
    entry_queue_links: Links<EntryId>,
    entry_peer_links: Links<EntryId>,
    peers: Slab<PeerId, peer::Peer>,
    peer_links: Links<PeerId>,
    jobs: Slab<JobId, job::Job>,
    job_list_links: Links<JobId>,
    job_time_links: Links<JobId>,
    messages: Slab<MessageId, message::Message>,
    /// Recipients in the core (`qmgr_recipient_count`).
    recipient_count: i64,
    /// Address verification probes in the core (`qmgr_vrfy_pend_count`).
    probes: i64,
    actions: VecDeque<Action<R>>,
    events: VecDeque<Event>,
    timers: BTreeMap<TimerKey, Timer>,
    timer_seq: u64,
    /// The last assignment's (transport, nexthop, queue), to skip lookups for
    /// runs of recipients with the same destination (`qmgr_message_resolve`).
    last_assign: Option<(TransportId, Rc<str>, QueueId)>,
}

impl<R> Core<R> {
    /// A core with no transports; `config` gives each transport's
    /// parameters the first time its name comes up; `now` anchors the core's
    /// clock.
    pub fn new(settings: Settings, config: Box<dyn TransportConfig>, now: Instant) -> Core<R> {
        Core {
            settings,
            epoch: now,
            config,
            transports: Slab::default(),
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
            messages: Slab::default(),
            recipient_count: 0,
            probes: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            last_assign: None,
        }
    }

    /// The settings the core was made with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn nqmgr(&self) -> bool {
        self.settings.strategy == Strategy::Nqmgr
    }

    /// Whole seconds since the core's epoch (Postfix's integer time).
    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Reports a `-v` step; `f` builds it only when verbose.
    fn trace(&mut self, f: impl FnOnce(&Self) -> Trace) {
        if self.settings.verbose {
            let t = f(self);
            self.events.push_back(Event::Trace(t));
        }
    }

    /// The next action for the shell, if any. When none is queued, agent
    /// allocation runs first (`qmgr_active_drain`).
    pub fn poll_action(&mut self) -> Option<Action<R>> {
        if self.actions.is_empty() {
            self.drain();
        }
        self.actions.pop_front()
    }

    /// The next event (what happened), oldest first. The shell drains them
    /// after each call into the core, so that log lines keep their order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Core::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    fn add_timer(&mut self, at: Instant, timer: Timer) -> TimerKey {
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
                    self.transports[t].dead_timer = None;
                    self.revive_transport(t);
                }
                Timer::ReviveQueue(q) => {
                    self.queues[q].timer = None;
                    self.unthrottle_queue(q);
                    self.queue_done_if_idle(q);
                }
                Timer::ResumeQueue(q) => {
                    self.queues[q].timer = None;
                    self.resume_queue(q);
                }
            }
        }
    }

    // ----- observation (tests, simulator, status) --------------------------

    /// Number of live entries (waiting and busy).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The entry `e` (its message, queue and recipients).
    ///
    /// Panics if `e` was already finished (a shell bug, not outside input).
    pub fn entry(&self, e: EntryId) -> &Entry<R> {
        &self.entries[e]
    }

    /// The nexthop of queue `q`.
    pub fn nexthop(&self, q: QueueId) -> &str {
        &self.queues[q].nexthop
    }

    /// The name of queue `q` (the nexthop, or `user@nexthop` for
    /// per-recipient queues).
    pub fn site(&self, q: QueueId) -> &Rc<str> {
        &self.queues[q].name
    }

    /// The name of the transport of queue `q`.
    pub fn transport_of(&self, q: QueueId) -> &str {
        &self.transports[self.queues[q].transport].name
    }

    /// Connection-cache flags to add to a request for queue `q`
    /// (`DEL_REQ_FLAG_CONN_LOAD|CONN_STORE`).
    pub fn queue_dflags(&self, q: QueueId) -> u32 {
        self.queues[q].dflags
    }

    fn find_queue(&self, transport: &str, name: &str) -> Option<&queue::Queue> {
        let t = *self.transport_by_name.get(transport)?;
        let q = *self.transports[t].queue_by_name.get(name)?;
        Some(&self.queues[q])
    }

    /// Window (concurrency limit; 0 = dead, -1 = suspended) of the queue
    /// named `name` of `transport`, if it exists.
    pub fn window(&self, transport: &str, name: &str) -> Option<i32> {
        self.find_queue(transport, name).map(|q| q.window)
    }

    /// Busy entries of the queue named `name` of `transport`.
    pub fn busy(&self, transport: &str, name: &str) -> Option<i32> {
        self.find_queue(transport, name).map(|q| q.busy)
    }

    /// True if `transport` is dead.
    pub fn transport_dead(&self, transport: &str) -> bool {
        self.transport_by_name
            .get(transport)
            .is_some_and(|&t| self.transports[t].dead.is_some())
    }

    /// The parameters of transport `name` (looked up on first use).
    pub fn transport_params(&mut self, name: &str) -> &TransportParams {
        let t = self.transport_index(name);
        &self.transports[t].params
    }

    /// Checks internal invariants (for tests): counters agree with lists.
    ///
    /// Errors: a description of the first broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut rcpts = 0i64;
        let mut per_msg: HashMap<MessageId, (u32, i64)> = HashMap::new();
        for (_, entry) in self.entries.iter() {
            rcpts += entry.recipients.len() as i64;
            let c = per_msg.entry(entry.msg).or_default();
            c.0 += 1;
            c.1 += entry.recipients.len() as i64;
        }
        if rcpts != self.recipient_count {
            return Err(format!(
                "recipient_count {} but entries hold {rcpts}",
                self.recipient_count
            ));
        }
        for (m, msg) in self.messages.iter() {
            let (refs, n) = per_msg.get(&m).copied().unwrap_or((0, 0));
            if msg.refcount != refs || msg.rcpt_count != n {
                return Err(format!(
                    "message {m:?}: refcount {} rcpt_count {} but entries say {refs}/{n}",
                    msg.refcount, msg.rcpt_count
                ));
            }
        }
        for (ti, tr) in self.transports.iter() {
            let mut sum = 0;
            for q in tr.queues.items(&self.queue_links) {
                let queue = &self.queues[q];
                if queue.transport != ti {
                    return Err(format!("queue {} on the wrong transport", queue.name));
                }
                let busy = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.queue == q && e.busy)
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
pub(crate) mod tests;
