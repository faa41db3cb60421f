//! What happened in the core, as typed events. The shell turns them into
//! Postfix's log lines (`shell::log_event`); observers (status, metrics) can
//! read the same stream without touching the core. Names are shared
//! (`Rc<str>`), so an event costs no allocation.

use super::deliver::Outcome;
use super::{MessageId, Reason};
use std::rc::Rc;
use std::time::Instant;

/// Which feedback function changed a window (the name in Postfix's
/// `destination_concurrency_feedback_debug` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackFn {
    /// Negative feedback (`qmgr_queue_throttle`).
    Throttle,
    /// Positive feedback (`qmgr_queue_unthrottle`).
    Unthrottle,
}

impl FeedbackFn {
    /// Postfix's function name.
    pub fn name(self) -> &'static str {
        match self {
            FeedbackFn::Throttle => "qmgr_queue_throttle",
            FeedbackFn::Unthrottle => "qmgr_queue_unthrottle",
        }
    }
}

/// The advice of a clog warning (`qmgr_entry_create`), most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClogAdvice {
    /// The destination runs at its concurrency limit: raise
    /// `<transport>_destination_concurrency_limit` from `limit`.
    ConcurrencyLimit { limit: i64 },
    /// The window is larger than its share: raise
    /// `qmgr_message_active_limit` from `limit`.
    ActiveLimit { limit: i64 },
    /// The transport has other destinations: give this one its own
    /// master.cf transport.
    SeparateTransport,
    /// Shorter timeouts, longer backoff, more processes.
    Timeouts,
}

/// How a message left the active queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered (or bounced) to the last recipient: the file was removed.
    Removed,
    /// Moved to deferred, to be retried in `delay` seconds.
    Deferred { delay: i64 },
    /// Moved to the corrupt queue.
    Corrupt,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Something about a transport's parameters worth a `warning:` line.
    TransportWarning { text: String },
    /// A transport's parameter is one Postfix's qmgr ends on (`fatal:
    /// bad numerical configuration: ...`): the daemon must end now, with
    /// this text; the transport is dead for whoever carries on.
    BadParameter { text: String },
    /// A concurrency feedback parameter was malformed; 1 is used.
    MalformedFeedback { parameter: String, value: String },
    /// A transport's feedback value, as read (`qmgr_feedback_init`'s
    /// debug line): the value at the global initial concurrency.
    FeedbackInit {
        transport: Rc<str>,
        parameter: String,
        /// `N/concurrency` (Postfix's feedback type 1; else 0).
        per_concurrency: bool,
        initial_concurrency: i32,
        value: f64,
    },
    /// A feedback amount was applied to a destination (`QMGR_LOG_FEEDBACK`).
    Feedback {
        func: FeedbackFn,
        transport: Rc<str>,
        value: f64,
    },
    /// A destination's window after feedback (`QMGR_LOG_WINDOW`).
    Window {
        func: FeedbackFn,
        transport: Rc<str>,
        queue: Rc<str>,
        /// `_destination_concurrency_limit` (0 = none).
        limit: i64,
        window: i32,
        success: f64,
        failure: f64,
        fail_cohorts: f64,
    },
    /// A destination is dead until `until` (the failed-cohort rule).
    QueueDead {
        transport: Rc<str>,
        queue: Rc<str>,
        reason: Reason,
        until: Instant,
    },
    /// A dead destination is alive again.
    QueueRevived { transport: Rc<str>, queue: Rc<str> },
    /// A transport is dead until `until` (its agents are unreachable).
    TransportDead {
        transport: Rc<str>,
        reason: Reason,
        until: Instant,
    },
    /// A dead transport is alive again.
    TransportRevived { transport: Rc<str> },
    /// One destination holds a large share of the active queue
    /// (`qmgr_clog_warn_time`): `length` of `count` entries.
    Clogged {
        transport: Rc<str>,
        nexthop: Rc<str>,
        length: i64,
        count: i64,
        /// Less than 90% of the queue: other mail is slowed down.
        slows_others: bool,
        advice: ClogAdvice,
    },
    /// An agent finished a delivery request of `recipients` recipients.
    Delivered {
        transport: Rc<str>,
        queue: Rc<str>,
        recipients: usize,
        outcome: Outcome,
    },
    /// A message left the core.
    MessageFinished {
        msg: MessageId,
        disposition: Disposition,
    },
    /// A step Postfix's qmgr reports with `-v` (reported only when
    /// [`super::Settings::verbose`] is set).
    Trace(Trace),
}

/// The scheduling steps Postfix's qmgr logs under `msg_verbose`, one per
/// `msg_info` of `qmgr/qmgr_*.c`; the shell prints them in Postfix's words
/// (`shell::logging::trace_line`). Messages are named by the core's id: the
/// shell knows their queue ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Trace {
    /// `qmgr_transport_create`: a transport met for the first time, with
    /// its destination concurrency and recipient limits.
    TransportCreate {
        transport: Rc<str>,
        concurrency: i64,
        recipients: i64,
    },
    /// `qmgr_transport_select`: the transport that gets the next agent.
    TransportSelect { transport: Rc<str> },
    /// `qmgr_active_drain`: an agent connection is asked for.
    Allocate { transport: Rc<str> },
    /// `qmgr_transport_event`: the connection request completed.
    TransportEvent { transport: Rc<str> },
    /// `qmgr_transport_throttle`: the transport is now dead.
    TransportThrottle { transport: Rc<str>, reason: Reason },
    /// `qmgr_transport_unthrottle`: a dead transport lives again.
    TransportUnthrottle { transport: Rc<str> },
    /// `qmgr_queue_throttle`: negative feedback for a destination.
    QueueThrottle { queue: Rc<str>, reason: Reason },
    /// `qmgr_queue_unthrottle`: positive feedback for a destination.
    QueueUnthrottle { queue: Rc<str> },
    /// `qmgr_defer_transport`: a dead transport's waiting work moves aside.
    DeferTransport { transport: Rc<str>, reason: Reason },
    /// `qmgr_defer_todo`: a destination's waiting work moves aside.
    DeferSite { queue: Rc<str>, reason: Reason },
    /// `qmgr_enable_all` (the flush trigger).
    EnableAll,
    /// `qmgr_enable_transport`: a dead transport is revived by a flush.
    EnableTransport { transport: Rc<str> },
    /// `qmgr_enable_queue`: a dead destination is revived by a flush.
    EnableSite { transport: Rc<str>, queue: Rc<str> },
    /// `qmgr_entry_select`: on-demand session caching turned on (`true`)
    /// or off for a destination.
    SessionCaching { queue: Rc<str>, allow: bool },
    /// oqmgr's `qmgr_queue_select`: the destination that gets the next
    /// delivery.
    QueueSelect { queue: Rc<str> },
    /// `qmgr_peer_select`: message `msg`'s next delivery goes to `queue`,
    /// as its `busy`-th of `window` concurrent ones.
    PeerSelect {
        msg: MessageId,
        transport: Rc<str>,
        queue: Rc<str>,
        busy: i32,
        window: i32,
    },
    /// `qmgr_job_retire`: the job has no more entries in memory.
    JobRetire { msg: MessageId },
    /// `qmgr_job_free`: the job leaves with its message.
    JobFree { msg: MessageId, transport: Rc<str> },
    /// `qmgr_job_preempt`: `by` preempts `current`, at stack `level`.
    JobPreempt {
        current: MessageId,
        by: MessageId,
        level: i32,
    },
    /// `qmgr_job_pop`: the job leaves its preemption stack.
    JobPop { msg: MessageId },
}
