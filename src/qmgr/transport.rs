//! Transports (`qmgr/qmgr_transport.c`, `qmgr/qmgr_enable.c`): one per
//! master.cf delivery service name, created with its main.cf parameters the
//! first time a recipient needs it; agent allocation (which transport gets
//! the next connection, `qmgr_transport_select` + `qmgr_active_drain`); and
//! dead transports, revived after `transport_retry_time`.

use super::event::{Event, Trace};
use super::feedback::Feedback;
use super::list::List;
use super::{Action, Core, EntryId, JobId, QueueId, Reason, Timer, TimerKey, TransportId};
use crate::config::{ConfigError, FeedbackParam, TransportParams};
use crate::proto::service;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Most agent connections a transport may have pending (`QMGR_TRANSPORT_MAX_PEND`).
const MAX_PENDING: u32 = 2;

/// Where the core gets a transport's parameters the first time it meets the
/// transport's name: main.cf's `<transport>_...` parameters with the
/// `default_...` fallbacks (`qmgr_transport_create`). The lookup is pure (it
/// reads main.cf as it was loaded); the core reports warnings as
/// [`Event::TransportWarning`] and errors as [`Event::BadParameter`].
pub trait TransportConfig {
    /// The parameters of `transport`, and warnings about them.
    ///
    /// Errors: a value Postfix's qmgr ends on.
    fn lookup(&mut self, transport: &str) -> Result<(TransportParams, Vec<String>), ConfigError>;
}

/// Tests and the simulator give parameters with a closure.
impl<F: FnMut(&str) -> TransportParams> TransportConfig for F {
    fn lookup(&mut self, transport: &str) -> Result<(TransportParams, Vec<String>), ConfigError> {
        Ok((self(transport), Vec::new()))
    }
}

/// One transport (`QMGR_TRANSPORT`).
#[derive(Debug)]
pub(super) struct Transport {
    pub(super) name: Rc<str>,
    pub(super) params: TransportParams,
    pub(super) pos_feedback: Feedback,
    pub(super) neg_feedback: Feedback,
    /// Agent connections asked for and not yet ready.
    pub(super) pending: u32,
    /// Why the transport is dead (`transport->dsn`), if it is.
    pub(super) dead: Option<Reason>,
    pub(super) dead_timer: Option<TimerKey>,
    /// A transport rate delay is running (`QMGR_TRANSPORT_STAT_RATE_LOCK`).
    pub(super) rate_locked: bool,
    pub(super) queues: List<QueueId>,
    pub(super) queue_by_name: HashMap<Rc<str>, QueueId>,
    /// Σ over ready queues of min(window - busy, todo), at least 0 each.
    pub(super) deliverable: i64,
    // nqmgr job scheduler state (qmgr_transport.c, qmgr_job.c).
    pub(super) job_list: List<JobId>,
    pub(super) job_bytime: List<JobId>,
    pub(super) job_current: Option<JobId>,
    pub(super) job_next_unread: Option<JobId>,
    pub(super) candidate_cache: Option<JobId>,
    pub(super) candidate_cache_current: Option<JobId>,
    pub(super) candidate_cache_time: u64,
    pub(super) blocker_tag: u32,
    /// Unused in-core recipient slots of the transport's pool.
    pub(super) rcpt_unused: i64,
    /// Its delivery requests' times so far (all its queues, also those
    /// since freed).
    pub(super) times: super::DeliveryTimes,
}

impl<R> Core<R> {
    /// The transport named `name`, created with its parameters if new
    /// (`qmgr_transport_find` / `qmgr_transport_create`).
    pub(super) fn transport_index(&mut self, name: &str) -> TransportId {
        if let Some(&t) = self.transport_by_name.get(name) {
            return t;
        }
        let (params, dead) = match self.config.lookup(name) {
            Ok((params, warnings)) => {
                for text in warnings {
                    self.emit(Event::TransportWarning { text });
                }
                (params, None)
            }
            Err(e) => {
                // Postfix's qmgr ends here (msg_fatal); so does the daemon,
                // on this event. Whoever carries on (the simulator) finds the
                // transport dead.
                self.emit(Event::BadParameter {
                    text: e.to_string(),
                });
                let reason = Reason::new("4.3.5", &format!("bad configuration: {e}"));
                (TransportParams::default(), Some(reason))
            }
        };
        let pos = self.feedback(&params.pos_feedback, name);
        let neg = self.feedback(&params.neg_feedback, name);
        let name: Rc<str> = name.into();
        let t = self.transports.insert(Transport {
            name: name.clone(),
            rcpt_unused: params.rcpt_unused,
            times: super::DeliveryTimes::default(),
            params,
            pos_feedback: pos,
            neg_feedback: neg,
            pending: 0,
            dead,
            dead_timer: None,
            rate_locked: false,
            queues: List::default(),
            queue_by_name: HashMap::new(),
            deliverable: 0,
            job_list: List::default(),
            job_bytime: List::default(),
            job_current: None,
            job_next_unread: None,
            candidate_cache: None,
            candidate_cache_current: None,
            candidate_cache_time: 0,
            blocker_tag: 1,
        });
        self.transport_by_name.insert(name.clone(), t);
        self.trace(|c| Trace::TransportCreate {
            transport: name,
            concurrency: c.transports[t].params.dest_concurrency_limit,
            recipients: c.transports[t].params.recipient_limit,
        });
        // New transports go first (qmgr_transport_create; oqmgr's list
        // macros are named the other way round but do the same).
        self.transport_order.push_front(t);
        t
    }

    /// Parses a feedback value (`qmgr_feedback_init`); a malformed one is
    /// reported and replaced by 1, as Postfix does.
    fn feedback(&mut self, param: &FeedbackParam, transport: &str) -> Feedback {
        let fb = Feedback::parse(&param.value).unwrap_or_else(|_| {
            self.emit(Event::MalformedFeedback {
                parameter: param.name.clone(),
                value: param.value.clone(),
            });
            Feedback::ONE
        });
        let at = self.settings.initial_concurrency;
        self.emit(Event::FeedbackInit {
            transport: transport.into(),
            parameter: param.name.clone(),
            per_concurrency: fb.per_concurrency(),
            initial_concurrency: at,
            value: fb.value(at),
        });
        fb
    }

    /// True for the `error` and `retry` transports, which qmgr itself uses to
    /// bounce and defer.
    pub(super) fn is_error_transport(&self, t: TransportId) -> bool {
        let name = &*self.transports[t].name;
        name == service::ERROR || name == service::RETRY
    }

    /// Agent allocation (`qmgr_transport_select` + `qmgr_active_drain`): ask
    /// for connections while some transport has more deliverable entries than
    /// pending connections.
    pub(super) fn drain(&mut self) {
        loop {
            let pos = self.transport_order.iter().position(|&t| {
                let tr = &self.transports[t];
                tr.dead.is_none()
                    && !tr.rate_locked
                    && tr.pending < MAX_PENDING
                    && tr.deliverable > i64::from(tr.pending)
            });
            let Some(pos) = pos else { return };
            let t = self.transport_order.remove(pos).expect("position in list");
            self.transport_order.push_back(t);
            self.trace(|c| Trace::TransportSelect {
                transport: c.transports[t].name.clone(),
            });
            self.trace(|c| Trace::Allocate {
                transport: c.transports[t].name.clone(),
            });
            let tr = &mut self.transports[t];
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

    /// A connection to `transport` is ready (after its rate delay): pick the
    /// entry to deliver (`qmgr_transport_event` → `qmgr_job_entry_select` /
    /// oqmgr's `qmgr_queue_select`), or `None` to close the connection.
    pub fn agent_ready(&mut self, transport: &str, now: Instant) -> Option<EntryId> {
        let t = *self.transport_by_name.get(transport)?;
        self.transports[t].pending = self.transports[t].pending.saturating_sub(1);
        self.trace_transport_event(t);
        let e = if self.nqmgr() {
            self.job_entry_select(t, now)
        } else {
            self.oqmgr_entry_select(t, now)
        };
        if e.is_none() {
            // Postfix leaves the rate lock set here and the transport stalls
            // until restart; nothing is in flight, so release it.
            self.transports[t].rate_locked = false;
        }
        e
    }

    /// A connection to `transport` failed before it was ready: the transport
    /// is dead for `transport_retry_time` and its waiting entries move to the
    /// `retry` transport (`qmgr_transport_event`: `qmgr_transport_throttle` +
    /// `qmgr_defer_transport`, with "4.3.0 mail transport unavailable").
    pub fn agent_failed(&mut self, transport: &str, now: Instant) {
        let Some(&t) = self.transport_by_name.get(transport) else {
            return;
        };
        self.transports[t].pending = self.transports[t].pending.saturating_sub(1);
        self.trace_transport_event(t);
        self.throttle_transport(t, Reason::new("4.3.0", "mail transport unavailable"), now);
    }

    fn trace_transport_event(&mut self, t: TransportId) {
        self.trace(|c| Trace::TransportEvent {
            transport: c.transports[t].name.clone(),
        });
    }

    /// Negative feedback for a transport (`qmgr_transport_throttle` +
    /// `qmgr_defer_transport`): dead until `transport_retry_time` passes,
    /// and its waiting work moves to `retry`.
    pub(super) fn throttle_transport(&mut self, t: TransportId, reason: Reason, now: Instant) {
        if self.transports[t].dead.is_none() {
            self.trace(|c| Trace::TransportThrottle {
                transport: c.transports[t].name.clone(),
                reason: reason.clone(),
            });
            let until = now + Duration::from_secs(self.settings.transport_retry_time);
            let key = self.add_timer(until, Timer::ReviveTransport(t));
            let tr = &mut self.transports[t];
            tr.dead = Some(reason.clone());
            tr.dead_timer = Some(key);
            let transport = tr.name.clone();
            self.emit(Event::TransportDead {
                transport,
                reason: reason.clone(),
                until,
            });
        }
        self.trace(|c| Trace::DeferTransport {
            transport: c.transports[t].name.clone(),
            reason: reason.clone(),
        });
        for q in self.transports[t].queues.items(&self.queue_links) {
            self.defer_todo(q, &reason, now);
        }
    }

    /// Positive feedback for a transport (`qmgr_transport_unthrottle`).
    pub(super) fn unthrottle_transport(&mut self, t: TransportId) {
        self.revive_transport(t);
        self.transports[t].rate_locked = false;
    }

    pub(super) fn revive_transport(&mut self, t: TransportId) {
        if self.transports[t].dead.is_some() {
            self.trace(|c| Trace::TransportUnthrottle {
                transport: c.transports[t].name.clone(),
            });
        }
        if self.transports[t].dead.take().is_some() {
            if let Some(key) = self.transports[t].dead_timer.take() {
                self.timers.remove(&key);
            }
            let transport = self.transports[t].name.clone();
            self.emit(Event::TransportRevived { transport });
        }
    }

    /// Revives every dead transport and destination (`qmgr_enable_all`, the
    /// `F` trigger); frees empty queues.
    pub fn enable_all(&mut self) {
        self.trace(|_| Trace::EnableAll);
        for t in self.transports.keys().collect::<Vec<_>>() {
            if self.transports[t].dead.is_some() {
                self.trace(|c| Trace::EnableTransport {
                    transport: c.transports[t].name.clone(),
                });
            }
            self.revive_transport(t);
        }
        for q in self.queues.keys().collect::<Vec<_>>() {
            if self.queues[q].window == 0 {
                self.trace(|c| Trace::EnableSite {
                    transport: c.transports[c.queues[q].transport].name.clone(),
                    queue: c.queues[q].name.clone(),
                });
                self.unthrottle_queue(q);
            }
            self.queue_done_if_idle(q);
        }
    }
}
