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
}
