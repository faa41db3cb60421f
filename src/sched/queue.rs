//! Destination queues (`qmgr/qmgr_queue.c`): creation and release, the
//! concurrency window with positive and negative feedback, dead
//! destinations (the failed-cohort rule), and rate-delay suspension.

use super::list::List;
use super::{Queue, Reason, Scheduler, Timer};
use std::time::{Duration, Instant};

/// C's `%g`: six significant digits, trailing zeros dropped, exponent form
/// for very small or large values (for `feedback_debug` lines).
pub fn fmt_g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v.is_infinite() {
            if v > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            }
        } else {
            "0".into()
        };
    }
    let exp = v.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..6).contains(&exp) {
        let s = format!("{:.5e}", v);
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        format!(
            "{}e{}{:02}",
            trim(mant.to_string()),
            if e < 0 { '-' } else { '+' },
            e.abs()
        )
    } else {
        let decimals = (5 - exp).max(0) as usize;
        trim(format!("{:.*}", decimals, v))
    }
}

impl<R> Scheduler<R> {
    pub(super) fn find_or_create_queue(&mut self, t: u32, name: &str, nexthop: &str) -> u32 {
        if let Some(&q) = self.transports[t as usize].queue_by_name.get(name) {
            return q;
        }
        let init = self.transports[t as usize]
            .params
            .init_dest_concurrency
            .max(1) as i32;
        let q = self.queues.insert(Queue {
            transport: t,
            name: name.to_string(),
            nexthop: nexthop.to_string(),
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
        });
        let tr = &mut self.transports[t as usize];
        // New queues go last (both qmgr_queue_create; oqmgr's PREPEND macro
        // inserts at the tail).
        tr.queues.push_back(&mut self.queue_links, q);
        tr.queue_by_name.insert(name.to_string(), q);
        q
    }

    /// Recomputes queue `q`'s share of its transport's deliverable count.
    pub(super) fn update_contrib(&mut self, q: u32) {
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
            let t = queue.transport as usize;
            self.queues[q].contrib = new;
            self.transports[t].deliverable += new - old;
        }
    }

    /// Frees a ready queue with no entries (`qmgr_queue_done`).
    pub(super) fn queue_done(&mut self, q: u32) {
        debug_assert!(
            self.queues[q].todo.is_empty() && self.queues[q].busy == 0 && self.queues[q].window > 0
        );
        if let Some(key) = self.queues[q].timer.take() {
            self.timers.remove(&key);
        }
        self.update_contrib(q);
        let t = self.queues[q].transport as usize;
        let queue = self.queues.remove(q);
        let tr = &mut self.transports[t];
        tr.queues.remove(&mut self.queue_links, q);
        tr.queue_by_name.remove(&queue.name);
        tr.deliverable -= queue.contrib;
    }

    fn log_window(&self, q: u32, func: &str) {
        let queue = &self.queues[q];
        let tr = &self.transports[queue.transport as usize];
        if self.settings.feedback_debug && tr.name != super::ERROR && tr.name != super::RETRY {
            tracing::info!(
                "{func}: queue {}: limit {} window {} success {} failure {} fail_cohorts {}",
                queue.name,
                tr.params.dest_concurrency_limit,
                queue.window,
                fmt_g(queue.success),
                fmt_g(queue.failure),
                fmt_g(queue.fail_cohorts)
            );
        }
    }

    fn log_feedback(&self, q: u32, func: &str, feedback: f64) {
        let tr = &self.transports[self.queues[q].transport as usize];
        if self.settings.feedback_debug && tr.name != super::ERROR && tr.name != super::RETRY {
            tracing::info!("{func}: feedback {}", fmt_g(feedback));
        }
    }

    /// Positive feedback (`qmgr_queue_unthrottle`): revive a dead queue, or
    /// grow the window toward the concurrency limit.
    pub(super) fn unthrottle_queue(&mut self, q: u32) {
        const FN: &str = "qmgr_queue_unthrottle";
        let t = self.queues[q].transport as usize;
        let limit = self.transports[t].params.dest_concurrency_limit as i32;
        let init = self.transports[t].params.init_dest_concurrency.max(1) as i32;
        let pos = self.transports[t].pos_feedback;
        if self.queues[q].window < 0 {
            return; // suspended: the resume timer decides
        }
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
            self.log_window(q, FN);
            self.update_contrib(q);
            return;
        }
        let queue = &self.queues[q];
        if (limit == 0 || limit > queue.window) && queue.window < queue.busy + init {
            let fb = pos.value(queue.window);
            self.log_feedback(q, FN, fb);
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
        self.log_window(q, FN);
        self.update_contrib(q);
    }

    /// Negative feedback (`qmgr_queue_throttle`): shrink the window; once a
    /// cohort's worth of deliveries failed, the destination is dead for
    /// `minimal_backoff_time`.
    pub(super) fn throttle_queue(&mut self, q: u32, reason: &Reason, now: Instant) {
        const FN: &str = "qmgr_queue_throttle";
        let t = self.queues[q].transport as usize;
        let cohort_limit = self.transports[t].params.fail_cohort_limit as f64;
        let neg = self.transports[t].neg_feedback;
        let queue = &mut self.queues[q];
        queue.fail_cohorts += 1.0 / f64::from(queue.window);
        if cohort_limit > 0.0 && queue.fail_cohorts >= cohort_limit {
            queue.window = 0;
        }
        if queue.window > 0 {
            let fb = neg.value(queue.window);
            self.log_feedback(q, FN, fb);
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
            let at = now + Duration::from_secs(self.settings.minimal_backoff_time);
            let key = self.add_timer(at, Timer::ReviveQueue(q));
            self.queues[q].timer = Some(key);
        }
        self.log_window(q, FN);
        self.update_contrib(q);
    }

    /// Rate delay (`qmgr_queue_suspend`): no deliveries until the timer.
    pub(super) fn suspend_queue(&mut self, q: u32, now: Instant) {
        let t = self.queues[q].transport as usize;
        let delay = self.transports[t].params.rate_delay.max(0) as u64;
        self.queues[q].window = -1;
        let key = self.add_timer(now + Duration::from_secs(delay), Timer::ResumeQueue(q));
        self.queues[q].timer = Some(key);
        self.update_contrib(q);
    }

    /// End of a rate delay (`qmgr_queue_resume`).
    pub(super) fn resume_queue(&mut self, q: u32) {
        self.queues[q].window = 1;
        self.update_contrib(q);
        if self.queues[q].todo.is_empty() && self.queues[q].busy == 0 {
            self.queue_done(q);
        } else if self.settings.strategy == super::Strategy::Nqmgr {
            self.job_blocker_update(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_g;

    #[test]
    fn percent_g() {
        assert_eq!(fmt_g(0.0), "0");
        assert_eq!(fmt_g(1.0), "1");
        assert_eq!(fmt_g(0.2), "0.2");
        assert_eq!(fmt_g(1.0 / 3.0), "0.333333");
        assert_eq!(fmt_g(1.0333333333), "1.03333");
        assert_eq!(fmt_g(-1.0), "-1");
        assert_eq!(fmt_g(0.00001), "1e-05");
        assert_eq!(fmt_g(1234567.0), "1.23457e+06");
    }
}
