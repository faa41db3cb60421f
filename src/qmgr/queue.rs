//! Destination queues (`qmgr/qmgr_queue.c`): creation and release, the
//! concurrency window with positive and negative feedback, dead
//! destinations (the failed-cohort rule), and rate-delay suspension.

use super::event::{Event, FeedbackFn, Trace};
use super::list::List;
use super::{Core, EntryId, QueueId, Reason, Strategy, Timer, TimerKey, TransportId};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One destination of one transport (`QMGR_QUEUE`).
#[derive(Debug)]
pub(super) struct Queue {
    pub(super) transport: TransportId,
    /// The queue name: the nexthop, or `user@nexthop` for per-recipient
    /// queues; lower case.
    pub(super) name: Rc<str>,
    pub(super) nexthop: Rc<str>,
    /// > 0: ready (the concurrency limit); 0: dead; -1: suspended (rate delay).
    pub(super) window: i32,
    pub(super) todo: List<EntryId>,
    pub(super) busy: i32,
    pub(super) success: f64,
    pub(super) failure: f64,
    pub(super) fail_cohorts: f64,
    /// Why the destination is dead (`queue->dsn`), if it is.
    pub(super) dead: Option<Reason>,
    /// The revive or resume timer, and when it fires.
    pub(super) timer: Option<TimerKey>,
    /// Seconds of the last finished delivery (for back-to-back detection).
    pub(super) last_done: Option<u64>,
    pub(super) dflags: u32,
    pub(super) blocker_tag: u32,
    pub(super) clog_time_to_warn: u64,
    /// This queue's share of its transport's `deliverable`.
    pub(super) contrib: i64,
    /// Its delivery requests' times so far.
    pub(super) times: super::DeliveryTimes,
}

impl<R> Core<R> {
    /// The queue `name` of transport `t`, created if new (`qmgr_queue_find`
    /// / `qmgr_queue_create`).
    pub(super) fn find_or_create_queue(
        &mut self,
        t: TransportId,
        name: &str,
        nexthop: &str,
    ) -> QueueId {
        if let Some(&q) = self.transports[t].queue_by_name.get(name) {
            return q;
        }
        // A negative concurrency limit makes this negative too, and the
        // queue never ready, as in Postfix (config warns about it).
        let init = self.transports[t].params.init_dest_concurrency as i32;
        let name: Rc<str> = name.into();
        let q = self.queues.insert(Queue {
            transport: t,
            name: name.clone(),
            nexthop: nexthop.into(),
            window: init,
            todo: List::default(),
            busy: 0,
            success: 0.0,
            failure: 0.0,
            fail_cohorts: 0.0,
            dead: None,
            timer: None,
            last_done: None,
            dflags: 0,
            blocker_tag: 0,
            clog_time_to_warn: 0,
            contrib: 0,
            times: super::DeliveryTimes::default(),
        });
        let tr = &mut self.transports[t];
        // New queues go last (both qmgr_queue_create; oqmgr's PREPEND macro
        // inserts at the tail).
        tr.queues.push_back(&mut self.queue_links, q);
        tr.queue_by_name.insert(name, q);
        q
    }

    /// Recomputes queue `q`'s share of its transport's deliverable count.
    pub(super) fn update_contrib(&mut self, q: QueueId) {
        let queue = &self.queues[q];
        let new = if queue.window > 0 {
            i64::from(queue.window - queue.busy)
                .min(queue.todo.len() as i64)
                .max(0)
        } else {
            0
        };
        let old = queue.contrib;
        if new != old {
            let t = queue.transport;
            self.queues[q].contrib = new;
            self.transports[t].deliverable += new - old;
        }
    }

    /// Frees a ready queue with no entries (`qmgr_queue_done`).
    pub(super) fn queue_done(&mut self, q: QueueId) {
        debug_assert!(
            self.queues[q].todo.is_empty() && self.queues[q].busy == 0 && self.queues[q].window > 0
        );
        if let Some(key) = self.queues[q].timer.take() {
            self.timers.remove(&key);
        }
        self.update_contrib(q);
        let t = self.queues[q].transport;
        let queue = self.queues.remove(q);
        let tr = &mut self.transports[t];
        tr.queues.remove(&mut self.queue_links, q);
        tr.queue_by_name.remove(&queue.name);
        tr.deliverable -= queue.contrib;
    }

    /// Frees `q` if it is ready and has nothing left to do.
    pub(super) fn queue_done_if_idle(&mut self, q: QueueId) {
        let queue = &self.queues[q];
        if queue.window > 0 && queue.todo.is_empty() && queue.busy == 0 {
            self.queue_done(q);
        }
    }

    /// Reports the window after feedback (`QMGR_LOG_WINDOW`).
    fn report_window(&mut self, q: QueueId, func: FeedbackFn) {
        let queue = &self.queues[q];
        let tr = &self.transports[queue.transport];
        let event = Event::Window {
            func,
            transport: tr.name.clone(),
            queue: queue.name.clone(),
            limit: tr.params.dest_concurrency_limit,
            window: queue.window,
            success: queue.success,
            failure: queue.failure,
            fail_cohorts: queue.fail_cohorts,
        };
        self.emit(event);
    }

    /// Reports a feedback amount (`QMGR_LOG_FEEDBACK`).
    fn report_feedback(&mut self, q: QueueId, func: FeedbackFn, value: f64) {
        let transport = self.transports[self.queues[q].transport].name.clone();
        self.emit(Event::Feedback {
            func,
            transport,
            value,
        });
    }

    /// Positive feedback (`qmgr_queue_unthrottle`): revive a dead queue, or
    /// grow the window toward the concurrency limit.
    pub(super) fn unthrottle_queue(&mut self, q: QueueId) {
        const FN: FeedbackFn = FeedbackFn::Unthrottle;
        let t = self.queues[q].transport;
        let limit = self.transports[t].params.dest_concurrency_limit as i32;
        let init = self.transports[t].params.init_dest_concurrency as i32;
        let pos = self.transports[t].pos_feedback;
        if self.queues[q].window < 0 {
            return; // suspended: the resume timer decides
        }
        self.trace(|c| Trace::QueueUnthrottle {
            queue: c.queues[q].name.clone(),
        });
        self.queues[q].fail_cohorts = 0.0;
        if self.queues[q].window == 0 {
            if let Some(key) = self.queues[q].timer.take() {
                self.timers.remove(&key);
            }
            let queue = &mut self.queues[q];
            queue.dead = None;
            queue.window = if queue.busy > 0 { queue.busy } else { init };
            queue.success = 0.0;
            queue.failure = 0.0;
            let (transport, name) = (self.transports[t].name.clone(), queue.name.clone());
            self.emit(Event::QueueRevived {
                transport,
                queue: name,
            });
            self.report_window(q, FN);
            self.update_contrib(q);
            return;
        }
        let queue = &self.queues[q];
        if (limit == 0 || limit > queue.window) && queue.window < queue.busy + init {
            let fb = pos.value(queue.window);
            self.report_feedback(q, FN, fb);
            let queue = &mut self.queues[q];
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
        self.report_window(q, FN);
        self.update_contrib(q);
    }

    /// Negative feedback (`qmgr_queue_throttle`): shrink the window; once a
    /// cohort's worth of deliveries failed, the destination is dead for
    /// `minimal_backoff_time`.
    pub(super) fn throttle_queue(&mut self, q: QueueId, reason: &Reason, now: Instant) {
        const FN: FeedbackFn = FeedbackFn::Throttle;
        let t = self.queues[q].transport;
        let cohort_limit = self.transports[t].params.fail_cohort_limit as f64;
        let neg = self.transports[t].neg_feedback;
        self.trace(|c| Trace::QueueThrottle {
            queue: c.queues[q].name.clone(),
            reason: reason.clone(),
        });
        let queue = &mut self.queues[q];
        queue.fail_cohorts += 1.0 / f64::from(queue.window);
        if cohort_limit > 0.0 && queue.fail_cohorts >= cohort_limit {
            queue.window = 0;
        }
        if queue.window > 0 {
            let fb = neg.value(queue.window);
            self.report_feedback(q, FN, fb);
            let queue = &mut self.queues[q];
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
            let until = now + Duration::from_secs(self.settings.minimal_backoff_time);
            let key = self.add_timer(until, Timer::ReviveQueue(q));
            self.queues[q].timer = Some(key);
            let (transport, name) = (self.transports[t].name.clone(), self.queues[q].name.clone());
            self.emit(Event::QueueDead {
                transport,
                queue: name,
                reason: reason.clone(),
                until,
            });
        }
        self.report_window(q, FN);
        self.update_contrib(q);
    }

    /// Rate delay (`qmgr_queue_suspend`): no deliveries until the timer.
    pub(super) fn suspend_queue(&mut self, q: QueueId, now: Instant) {
        let t = self.queues[q].transport;
        let delay = self.transports[t].params.rate_delay.max(0) as u64;
        self.queues[q].window = -1;
        let key = self.add_timer(now + Duration::from_secs(delay), Timer::ResumeQueue(q));
        self.queues[q].timer = Some(key);
        self.update_contrib(q);
    }

    /// End of a rate delay (`qmgr_queue_resume`).
    pub(super) fn resume_queue(&mut self, q: QueueId) {
        self.queues[q].window = 1;
        self.update_contrib(q);
        if self.queues[q].todo.is_empty() && self.queues[q].busy == 0 {
            self.queue_done(q);
        } else if self.settings.strategy == Strategy::Nqmgr {
            self.job_blocker_update(q);
        }
    }
}
