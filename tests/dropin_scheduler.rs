//! Scheduler acceptance test: the same mix of mail goes through a private
//! Postfix once with Postfix's qmgr and once with rqmgr, and what matters
//! about scheduling is computed from each maillog (and smtp-sink's dumps)
//! and compared.
//!
//! The mix (see [`run_mix`]):
//! * a list message with [`LIST_RCPTS`] recipients at `slow.example`, an
//!   smtp-sink that waits [`SLOW_DATA_DELAY`] s before it answers DATA;
//!   `smtp_destination_recipient_limit` = [`RCPT_LIMIT`] makes it
//!   [`LIST_REQUESTS`] delivery requests;
//! * while the list is being delivered, a burst of [`SINGLES`]
//!   single-recipient messages to the same slow destination, [`FAILING`]
//!   messages to `closed.example` (a closed port; they arrive on hold and
//!   are released together) and [`RATED`] messages to
//!   `rated.example` (master.cf service `rated`, a clone of smtp, with
//!   `rated_destination_rate_delay = 1s`).
//!
//! What is compared (see [`Mix`]):
//! 1. everything is delivered exactly once, and only the failing mail is
//!    left, deferred;
//! 2. the singles are not starved behind the list (nqmgr's preemption);
//! 3. the closed destination is declared dead after the same feedback
//!    (identical `qmgr_queue_throttle` lines) and about the same number of
//!    smtp attempts;
//! 4. the same concurrency: the windows of
//!    `destination_concurrency_feedback_debug`, the transactions in
//!    parallel at the slow sink, and the rate delay's spacing.
//!
//! `side_by_side_postfix_qmgr_and_rqmgr` runs both in parallel and compares;
//! `side_by_side_postfix_oqmgr_and_rqmgr_oqmgr` does the same for oqmgr's
//! strategy (`rqmgr --scheduler oqmgr`);
//! `postfix_qmgr_and_postfix_oqmgr_differ_only_in_starvation` proves the
//! comparison against Postfix itself. `rqmgr::scheduler_mix`,
//! `postfix_qmgr::scheduler_mix` and `postfix_oqmgr::scheduler_mix` check one
//! queue manager against the absolute expectations alone. Each run takes
//! about 16 s; the pairs run their two instances in parallel.
//!
//! Observed with Postfix 3.7.11 (and what the expectations rest on):
//! * qmgr: a single preempts the list about every 5 list requests
//!   (delivery_slot_cost 5): the singles go out 1-6 s after arrival, with
//!   ~1000 of the list's 2000 recipients still to go after the last one.
//! * oqmgr: no preemption and first come, first served per destination
//!   (oqmgr/qmgr.h names its list macros the other way round from
//!   qmgr/qmgr.h: QMGR_LIST_APPEND inserts at `next`, and
//!   qmgr_entry_select takes `prev`, the oldest entry). The list goes out
//!   l0000 first, the singles wait 10-12 s, after ~1950 list recipients.
//! * both: the closed destination is dead after 3 (sequential) to 5
//!   attempts, the throttle lines identical; the slow destination's window
//!   reaches 20, the rated one's limit and window are 1.
//! * the rate delay's timer has whole-second resolution in Postfix
//!   (util/events.c: `when = time() + delay`, fired once time() reaches
//!   it): a "1 s" delay ends at the next whole second of time(2), so the
//!   real gap between two rated deliveries at the sink was 0.04-1.75 s,
//!   while their log time stamps are always >= 1 s apart. The test checks
//!   only that (whole seconds); rqmgr's gaps are 1.00-1.03 s.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Instance, LogLine, Opts, Qmgr};

dropin_tests!(scheduler_mix);

/// Recipients of the list message.
const LIST_RCPTS: usize = 2000;
/// `smtp_destination_recipient_limit`.
const RCPT_LIMIT: usize = 10;
/// Delivery requests the list takes.
const LIST_REQUESTS: usize = LIST_RCPTS / RCPT_LIMIT;
/// smtp-sink `-w`: seconds before the slow sink answers DATA.
const SLOW_DATA_DELAY: u32 = 1;
/// Single-recipient messages to the slow destination, sent in the burst.
const SINGLES: usize = 20;
/// Messages to the closed port.
const FAILING: usize = 8;
/// Messages to the rate-delayed destination.
const RATED: usize = 4;
/// The burst goes out once this many list recipients are delivered.
const LIST_SENT_BEFORE_BURST: usize = 100;
/// Postfix's default smtp_destination_concurrency_limit.
const CONCURRENCY_LIMIT: i64 = 20;
/// With the default feedback (1, hysteresis 1, cohort limit 1, initial
/// concurrency 5) the window goes 5 -> 3 -> 2 -> dead: 1/5 + 1/3 + 1/2 >= 1.
const SEQUENTIAL_FAILURES_TO_DEAD: usize = 3;
/// The most smtp attempts the closed destination can get: without a
/// success the window never exceeds the initial 5 and each failure shrinks
/// it (5 -> 3 -> 2), so at most 5 deliveries can have started before the
/// third failure declares it dead. Those still in flight then are logged
/// by smtp too (qmgr does not cancel them): 3 attempts when every failure
/// came back before the next delivery started, 4 or 5 with overlap.
const MAX_ATTEMPTS_TO_DEAD: usize = 5;
/// FIFO without preemption: list recipients that are delivered before the
/// first single at least (all but the requests in flight).
const FIFO_MIN_BEFORE: usize = LIST_RCPTS - CONCURRENCY_LIMIT as usize * RCPT_LIMIT;
/// How far a file time stamp may lag behind time(2): the kernel stamps
/// files from its coarse clock (one tick, 1-10 ms).
const FILE_CLOCK_SLACK: f64 = 0.02;
/// How much the two runs may differ in list recipients delivered between
/// the burst and the last single (nqmgr): the list's accrued slots at the
/// burst (up to ~25 selected requests, 5 singles' worth at slot cost 5)
/// and timing.
const BETWEEN_TOLERANCE: usize = 300;
/// Bound on a single's `delay=` (arrival to delivery), as a share of the
/// time the list still took after the burst. Without preemption (FIFO) the
/// last single would wait for all of it (share >= 1). With nqmgr's
/// defaults (delivery_slot_cost 5, loan 3, discount 50) a single preempts
/// the list about every 5 list requests, so the last of 20 singles goes
/// after ~100 of the ~186 requests left: share ~0.55 (qmgr: 0.5-0.6).
const SINGLE_DELAY_SHARE: f64 = 0.8;

/// Which scheduler a side of the comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduler {
    /// nqmgr: preemptive job scheduler.
    Nqmgr,
    /// oqmgr: no jobs, no preemption; a destination's entries FIFO.
    Oqmgr,
}

fn scheduler_of(q: &Qmgr, opts: &Opts) -> Scheduler {
    let rqmgr_oqmgr = opts.qmgr_args.windows(2).any(|w| w[1] == "oqmgr");
    match q {
        Qmgr::PostfixOqmgr => Scheduler::Oqmgr,
        _ if rqmgr_oqmgr => Scheduler::Oqmgr,
        _ => Scheduler::Nqmgr,
    }
}

/// The instance options of the mix.
fn mix_opts(name: &str, q: Qmgr) -> Opts {
    Opts::new(name, q)
        .slow_sink(SLOW_DATA_DELAY)
        .main_cf("smtp_destination_recipient_limit", &RCPT_LIMIT.to_string())
        .main_cf("destination_concurrency_feedback_debug", "yes")
        .main_cf("rated_destination_rate_delay", "1s")
        .main_cf(
            "smtpd_recipient_restrictions",
            "check_recipient_access inline:{closed.example=HOLD}",
        )
        .service("rated     unix  -       -       n       -       -       smtp")
        .transport("rated.example", "rated:[127.0.0.1]:{sink_port}")
        .timeout(Duration::from_secs(90))
}

/// What one run of the mix showed.
#[derive(Debug, Clone)]
struct Mix {
    /// e.g. `qmgr` or `rqmgr --scheduler oqmgr`.
    label: String,
    scheduler: Scheduler,
    /// Wall clock of the run (start of the instance to all settled).
    elapsed: Duration,

    // ---- 1. delivery -----------------------------------------------------
    /// List recipients with exactly one `status=sent` line from smtp.
    list_rcpts_sent_once: usize,
    /// All `status=sent` lines for the list.
    list_sent_lines: usize,
    /// Singles with exactly one `status=sent` line, and all their lines.
    singles_sent_once: usize,
    singles_sent_lines: usize,
    /// Rated messages with exactly one `status=sent` line.
    rated_sent_once: usize,
    rated_sent_lines: usize,
    /// Transactions at the slow sink (list requests + singles) and at the
    /// normal sink (the rated messages).
    slow_sink_transactions: usize,
    sink_transactions: usize,
    /// Transactions at the slow sink that carry the list / a single.
    slow_sink_list: usize,
    slow_sink_singles: usize,
    /// The queue at the end: the failing messages, all in deferred?
    leftover_is_failing_deferred: bool,
    leftover: BTreeMap<String, Vec<String>>,

    // ---- 2. starvation ---------------------------------------------------
    /// List recipients delivered when the burst went out.
    list_sent_at_burst: usize,
    /// `delay=` of each single's delivery (arrival to delivery), in order
    /// of the singles.
    single_delays: Vec<f64>,
    /// `delay=` of the list's last delivery (its arrival to its end).
    list_last_delay: f64,
    /// List recipients whose delivery was logged after the last single's.
    list_sent_after_last_single: usize,
    /// List recipients whose delivery was logged before the first single's.
    list_sent_before_first_single: usize,
    /// For each single (in log order): list recipients delivered before it.
    list_sent_before_each_single: Vec<usize>,
    /// `delay=` of the list's last delivery logged before the burst: how
    /// long the list had been in the queue when the burst went out.
    list_delay_at_burst: f64,

    // ---- 3. dead destination ---------------------------------------------
    /// `status=deferred (... Connection refused)` lines from smtp.
    closed_refused_by_smtp: usize,
    /// `status=deferred (delivery temporarily suspended: ...)` lines from
    /// the retry service (error(8)).
    closed_suspended_by_retry: usize,
    /// Failing messages with a deferred line.
    closed_ids_deferred: usize,
    /// `qmgr_queue_throttle` lines of the closed queue:
    /// `window W ... fail_cohorts C`.
    closed_throttle: Vec<(i64, String)>,

    // ---- 4. concurrency --------------------------------------------------
    /// Per destination (slow, rated, closed): (limit, max window) over the
    /// `qmgr_queue_unthrottle` lines.
    max_window: BTreeMap<&'static str, (i64, i64)>,
    /// Most transactions in progress at once at the slow sink.
    slow_max_parallel: usize,
    /// Gaps between the end of one rated transaction at the sink and the
    /// start of the next (seconds, precise).
    rated_gaps: Vec<f64>,
    /// Whether each rated transaction started in a later wall-clock second
    /// than the previous one ended (what a 1 s timer of Postfix's
    /// second-resolution event loop guarantees; it may fire less than 1 s
    /// after the previous delivery), give or take [`FILE_CLOCK_SLACK`].
    rated_whole_seconds_apart: bool,
    /// Differences of the log time stamps (s) of consecutive rated
    /// deliveries.
    rated_log_gaps: Vec<i64>,
}

/// Runs the mix through a fresh instance; returns what it showed.
fn run_mix(opts: Opts, label: &str) -> Mix {
    let started = Instant::now();
    let scheduler = scheduler_of(&opts.qmgr, &opts);
    let inst = Instance::start(opts);
    let slow = inst.slow_sink.as_ref().expect("the mix has a slow sink");
    let from = inst.local_addr("sender");

    // The list: one message, LIST_RCPTS recipients at the slow destination.
    let list_rcpts: Vec<String> = (0..LIST_RCPTS)
        .map(|i| format!("l{i:04}@slow.example"))
        .collect();
    let list_rcpt_refs: Vec<&str> = list_rcpts.iter().map(String::as_str).collect();
    let list_token = inst.unique_token("list");
    let list_text = format!(
        "From: <{from}>\nTo: list-members:;\nSubject: the list\n\
         Message-ID: <{list_token}@{}>\n\nA list message.\ntoken: {list_token}\n",
        support::HOSTNAME
    );
    let list_id = inst.sendmail_text(&from, &list_rcpt_refs, &list_text, &list_token);

    // Wait until the list is well under way, then the burst.
    let is_list_sent = |l: &LogLine| {
        l.queue_id() == Some(&list_id[..]) && l.is_from("smtp") && l.status() == Some("sent")
    };
    let lines = inst.wait_for_lines(
        &format!("{LIST_SENT_BEFORE_BURST} list recipients to be delivered"),
        LIST_SENT_BEFORE_BURST,
        is_list_sent,
    );
    let list_sent_at_burst = lines.len();
    let list_delay_at_burst = lines
        .iter()
        .filter_map(|l| l.field("delay").and_then(|d| d.parse::<f64>().ok()))
        .fold(0.0, f64::max);

    let mut singles = Vec::new();
    let mut failing = Vec::new();
    let mut rated = Vec::new();
    let mut s = inst.smtp();
    let mut submit = |what: &str, rcpt: String, out: &mut Vec<(String, String, String)>| {
        let token = inst.unique_token(what);
        let text = inst.message_text(&from, &[&rcpt], what, &token);
        let id = s
            .send(&from, &[&rcpt], &text)
            .unwrap_or_else(|e| inst.fail(&format!("SMTP submission of {what}: {e}")));
        out.push((id, rcpt, token));
    };
    for i in 0..SINGLES {
        submit("single", format!("s{i:02}@slow.example"), &mut singles);
    }
    for i in 0..FAILING {
        submit("failing", format!("f{i}@closed.example"), &mut failing);
    }
    for i in 0..RATED {
        submit("rated", format!("r{i}@rated.example"), &mut rated);
    }
    s.quit();
    // The failing messages arrived on hold (smtpd's HOLD action). Release
    // them together and have the queue manager scan deferred: then all 8
    // are in core within a few milliseconds and share one queue, so the
    // feedback sees consecutive failures. Fed one by one, 10-20 ms apart
    // as SMTP delivers them, each would fail before the next arrives, its
    // empty queue would be freed and the next one would start afresh at
    // window 5 (seen with Postfix's oqmgr: 8 attempts, never dead).
    inst.wait_progress("the failing messages to be on hold", || {
        let held = inst.queue_ids("hold");
        if held.len() == FAILING {
            Ok(())
        } else {
            Err(format!("on hold: {held:?}"))
        }
    });
    inst.postsuper(&["-H", "ALL"]);
    inst.postkick_qmgr("D");

    let single_ids: BTreeSet<&str> = singles.iter().map(|m| m.0.as_str()).collect();
    let failing_ids: BTreeSet<&str> = failing.iter().map(|m| m.0.as_str()).collect();
    let rated_ids: BTreeSet<&str> = rated.iter().map(|m| m.0.as_str()).collect();
    let is_sent = |l: &LogLine, ids: &BTreeSet<&str>| {
        l.is_from("smtp")
            && l.status() == Some("sent")
            && l.queue_id().is_some_and(|id| ids.contains(id))
    };
    let is_deferred = |l: &LogLine| {
        l.status() == Some("deferred") && l.queue_id().is_some_and(|id| failing_ids.contains(id))
    };

    // Wait until everything settled: all delivered, the failing mail
    // deferred, nothing else in the queue.
    inst.wait_progress("the mix to be delivered and the queue to settle", || {
        let lines = inst.log_lines();
        let list = lines.iter().filter(|l| is_list_sent(l)).count();
        let single = lines.iter().filter(|l| is_sent(l, &single_ids)).count();
        let rate = lines.iter().filter(|l| is_sent(l, &rated_ids)).count();
        let deferred = support::distinct_ids(&lines, |l| is_deferred(l)).len();
        let listing = inst.queue_listing();
        let settled = listing.len() == 1
            && listing
                .get("deferred")
                .is_some_and(|ids| ids.len() == FAILING);
        if list >= LIST_RCPTS
            && single >= SINGLES
            && rate >= RATED
            && deferred >= FAILING
            && settled
        {
            Ok(())
        } else {
            Err(format!(
                "list {list}/{LIST_RCPTS}, singles {single}/{SINGLES}, rated {rate}/{RATED}, \
                 failing deferred {deferred}/{FAILING}, queue {listing:?}"
            ))
        }
    });
    // Let stragglers (a late duplicate, the sink's last writes) show up.
    std::thread::sleep(Duration::from_millis(500));
    let lines = inst.log_lines();
    let elapsed = started.elapsed();

    // ---- 1 ----
    let count_once = |ids_rcpts: &[(String, String, String)]| {
        ids_rcpts
            .iter()
            .filter(|(id, rcpt, _)| {
                let to = format!("<{rcpt}>");
                lines
                    .iter()
                    .filter(|l| {
                        l.queue_id() == Some(&id[..])
                            && l.is_delivery()
                            && l.field("to") == Some(&to[..])
                    })
                    .map(|l| l.is_from("smtp") && l.status() == Some("sent"))
                    .collect::<Vec<bool>>()
                    == [true]
            })
            .count()
    };
    let mut per_list_rcpt: BTreeMap<&str, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| is_list_sent(l)) {
        if let Some(to) = l.field("to") {
            *per_list_rcpt.entry(to).or_default() += 1;
        }
    }
    let list_rcpts_sent_once = list_rcpts
        .iter()
        .filter(|r| per_list_rcpt.get(&format!("<{r}>")[..]) == Some(&1))
        .count();
    let list_sent_lines = lines.iter().filter(|l| is_list_sent(l)).count();
    let slow_tx = slow.transactions();
    let sink_tx = inst.sink.transactions();
    let leftover = inst.queue_listing();
    let leftover_is_failing_deferred = leftover.len() == 1
        && leftover.get("deferred").is_some_and(|ids| {
            ids.iter().map(String::as_str).collect::<BTreeSet<&str>>() == failing_ids
        });

    // ---- 2 ----
    let delay_of = |l: &LogLine| -> f64 {
        l.field("delay")
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| inst.fail(&format!("no delay= in {l}")))
    };
    let single_delays: Vec<f64> = singles
        .iter()
        .map(|(id, _, _)| {
            lines
                .iter()
                .find(|l| {
                    l.queue_id() == Some(&id[..]) && l.is_from("smtp") && l.status() == Some("sent")
                })
                .map(delay_of)
                .unwrap_or(f64::NAN)
        })
        .collect();
    let list_last = lines
        .iter()
        .rfind(|l| is_list_sent(l))
        .expect("list deliveries");
    let list_last_delay = delay_of(list_last);
    let single_idx: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| is_sent(l, &single_ids))
        .map(|(i, _)| i)
        .collect();
    let first_single = *single_idx.first().expect("single deliveries");
    let last_single = *single_idx.last().expect("single deliveries");
    let list_sent_after_last_single = lines[last_single..]
        .iter()
        .filter(|l| is_list_sent(l))
        .count();
    let list_sent_before_first_single = lines[..first_single]
        .iter()
        .filter(|l| is_list_sent(l))
        .count();
    let list_sent_before_each_single: Vec<usize> = single_idx
        .iter()
        .map(|&i| lines[..i].iter().filter(|l| is_list_sent(l)).count())
        .collect();

    // ---- 3 ----
    let closed_refused_by_smtp = lines
        .iter()
        .filter(|l| {
            is_deferred(l)
                && l.is_from("smtp")
                && l.reason().is_some_and(|r| r.contains("Connection refused"))
        })
        .count();
    let closed_suspended_by_retry = lines
        .iter()
        .filter(|l| {
            is_deferred(l)
                && (l.is_from("error") || l.is_from("retry"))
                && l.reason()
                    .is_some_and(|r| r.starts_with("delivery temporarily suspended"))
        })
        .count();
    let closed_ids_deferred = support::distinct_ids(&lines, |l| is_deferred(l)).len();

    // ---- 4 ----
    let roles: [(&'static str, u16); 3] = [
        ("slow", slow.port),
        ("rated", inst.sink.port),
        ("closed", inst.closed_port),
    ];
    let role_of = |queue: &str| {
        roles
            .iter()
            .find(|(_, port)| queue.ends_with(&format!("]:{port}")))
            .map(|(r, _)| *r)
    };
    let mut max_window: BTreeMap<&'static str, (i64, i64)> = BTreeMap::new();
    let mut closed_throttle = Vec::new();
    for l in lines.iter().filter(|l| l.is_from("qmgr")) {
        if let Some(w) = parse_window_line(&l.text, "qmgr_queue_unthrottle") {
            if let Some(role) = role_of(&w.queue) {
                let e = max_window.entry(role).or_insert((w.limit, w.window));
                e.0 = e.0.max(w.limit);
                e.1 = e.1.max(w.window);
            }
        } else if let Some(w) = parse_window_line(&l.text, "qmgr_queue_throttle") {
            if role_of(&w.queue) == Some("closed") {
                closed_throttle.push((w.window, w.fail_cohorts));
            }
        }
    }
    let slow_max_parallel = max_parallel(&slow_tx);
    let rated_tx: Vec<&support::sink::Transaction> = sink_tx
        .iter()
        .filter(|t| rated.iter().any(|(_, _, token)| t.text.contains(token)))
        .collect();
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let rated_gaps: Vec<f64> = rated_tx
        .windows(2)
        .map(|w| secs(w[1].started) - secs(w[0].finished))
        .collect();
    let rated_whole_seconds_apart = rated_tx
        .windows(2)
        .all(|w| secs(w[1].started) >= secs(w[0].finished).floor() + 1.0 - FILE_CLOCK_SLACK);
    let rated_times: Vec<i64> = lines
        .iter()
        .filter(|l| is_sent(l, &rated_ids))
        .map(log_time)
        .collect();
    let rated_log_gaps = rated_times.windows(2).map(|w| w[1] - w[0]).collect();

    Mix {
        label: label.to_string(),
        scheduler,
        elapsed,
        list_rcpts_sent_once,
        list_sent_lines,
        singles_sent_once: count_once(&singles),
        singles_sent_lines: lines.iter().filter(|l| is_sent(l, &single_ids)).count(),
        rated_sent_once: count_once(&rated),
        rated_sent_lines: lines.iter().filter(|l| is_sent(l, &rated_ids)).count(),
        slow_sink_transactions: slow_tx.len(),
        sink_transactions: sink_tx.len(),
        slow_sink_list: slow_tx
            .iter()
            .filter(|t| t.text.contains(&list_token))
            .count(),
        slow_sink_singles: slow_tx
            .iter()
            .filter(|t| singles.iter().any(|(_, _, token)| t.text.contains(token)))
            .count(),
        leftover_is_failing_deferred,
        leftover,
        list_sent_at_burst,
        single_delays,
        list_last_delay,
        list_sent_after_last_single,
        list_sent_before_first_single,
        list_sent_before_each_single,
        list_delay_at_burst,
        closed_refused_by_smtp,
        closed_suspended_by_retry,
        closed_ids_deferred,
        closed_throttle,
        max_window,
        slow_max_parallel,
        rated_gaps,
        rated_whole_seconds_apart,
        rated_log_gaps,
    }
}

/// A `destination_concurrency_feedback_debug` line:
/// `<func>: queue <name>: limit N window W success S failure F fail_cohorts C`.
struct WindowLine {
    queue: String,
    limit: i64,
    window: i64,
    fail_cohorts: String,
}

fn parse_window_line(text: &str, func: &str) -> Option<WindowLine> {
    let rest = text.strip_prefix(func)?.strip_prefix(": queue ")?;
    let (queue, numbers) = rest.rsplit_once(": limit ")?;
    let words: Vec<&str> = numbers.split(' ').collect();
    // N window W success S failure F fail_cohorts C
    if words.len() != 9 || words[1] != "window" || words[7] != "fail_cohorts" {
        return None;
    }
    Some(WindowLine {
        queue: queue.to_string(),
        limit: words[0].parse().ok()?,
        window: words[2].parse().ok()?,
        fail_cohorts: words[8].to_string(),
    })
}

/// Seconds since the start of the month of a maillog line's time stamp
/// (`Mon dd hh:mm:ss`).
fn log_time(l: &LogLine) -> i64 {
    let raw = &l.raw;
    let num = |r: std::ops::Range<usize>| -> i64 {
        raw.get(r)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no time stamp in {raw}"))
    };
    ((num(4..6) * 24 + num(7..9)) * 60 + num(10..12)) * 60 + num(13..15)
}

/// The most transactions in progress at the same time.
fn max_parallel(tx: &[support::sink::Transaction]) -> usize {
    let mut events: Vec<(SystemTime, i32)> = Vec::new();
    for t in tx {
        events.push((t.started, 1));
        events.push((t.finished, -1));
    }
    // At equal times an end comes before a start.
    events.sort();
    let mut now = 0i32;
    let mut max = 0i32;
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

// ---- the checks ----------------------------------------------------------------

/// Failed expectations, collected so that a run reports all of them.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, cond: bool, what: String) {
        if !cond {
            self.0.push(what);
        }
    }
}

/// What must hold for one run by itself.
fn check_absolute(m: &Mix, f: &mut Failures) {
    let who = &m.label;
    // 1.
    f.check(
        m.list_rcpts_sent_once == LIST_RCPTS && m.list_sent_lines == LIST_RCPTS,
        format!(
            "{who}: every list recipient delivered once: {} once, {} lines, want {LIST_RCPTS}",
            m.list_rcpts_sent_once, m.list_sent_lines
        ),
    );
    f.check(
        m.singles_sent_once == SINGLES && m.singles_sent_lines == SINGLES,
        format!(
            "{who}: every single delivered once: {} once, {} lines, want {SINGLES}",
            m.singles_sent_once, m.singles_sent_lines
        ),
    );
    f.check(
        m.rated_sent_once == RATED && m.rated_sent_lines == RATED,
        format!(
            "{who}: every rated message delivered once: {} once, {} lines, want {RATED}",
            m.rated_sent_once, m.rated_sent_lines
        ),
    );
    f.check(
        m.slow_sink_transactions == LIST_REQUESTS + SINGLES
            && m.slow_sink_list == LIST_REQUESTS
            && m.slow_sink_singles == SINGLES,
        format!(
            "{who}: the slow sink got {LIST_REQUESTS} list requests and {SINGLES} singles: \
             {} transactions, {} of the list, {} singles",
            m.slow_sink_transactions, m.slow_sink_list, m.slow_sink_singles
        ),
    );
    f.check(
        m.sink_transactions == RATED,
        format!(
            "{who}: the sink got the {RATED} rated messages: {} transactions",
            m.sink_transactions
        ),
    );
    f.check(
        m.leftover_is_failing_deferred,
        format!(
            "{who}: only the {FAILING} failing messages are left, deferred: {:?}",
            m.leftover
        ),
    );
    // 2.
    f.check(
        m.list_sent_at_burst < LIST_RCPTS / 2,
        format!(
            "{who}: the burst went out early in the list: {} of {LIST_RCPTS} delivered",
            m.list_sent_at_burst
        ),
    );
    let max_single_delay = m.single_delays.iter().copied().fold(0.0, f64::max);
    match m.scheduler {
        Scheduler::Nqmgr => {
            f.check(
                m.list_sent_after_last_single >= LIST_RCPTS / 4,
                format!(
                    "{who}: the singles are not starved: at least {} list recipients are \
                     delivered after the last single, saw {}",
                    LIST_RCPTS / 4,
                    m.list_sent_after_last_single
                ),
            );
            let bound = SINGLE_DELAY_SHARE * (m.list_last_delay - m.list_delay_at_burst);
            f.check(
                max_single_delay <= bound,
                format!(
                    "{who}: every single is delivered within {bound:.2} s of its arrival \
                     ({SINGLE_DELAY_SHARE} of the list's {:.2} - {:.2} s after the burst): \
                     delays {:?}",
                    m.list_last_delay, m.list_delay_at_burst, m.single_delays
                ),
            );
        }
        Scheduler::Oqmgr => {
            // No preemption, and a queue's todo list is FIFO: oqmgr's
            // QMGR_LIST_APPEND puts a new entry at `todo.next` and
            // qmgr_entry_select takes `todo.prev`, the oldest (oqmgr/qmgr.h
            // has APPEND and PREPEND the other way round from qmgr/qmgr.h).
            // All the list's entries were in core before the burst, so
            // every single waits for all of them to be selected; only the
            // list deliveries in flight then can end after a single.
            let min_before = FIFO_MIN_BEFORE;
            f.check(
                m.list_sent_before_first_single >= min_before,
                format!(
                    "{who}: (FIFO, no preemption) the singles wait for the list: at least \
                     {min_before} list recipients delivered before the first single, saw {}",
                    m.list_sent_before_first_single
                ),
            );
        }
    }
    // 3.
    f.check(
        m.closed_ids_deferred == FAILING
            && m.closed_refused_by_smtp + m.closed_suspended_by_retry == FAILING,
        format!(
            "{who}: each failing message deferred once, by smtp or by retry: {} ids, \
             {} refused by smtp + {} suspended by retry",
            m.closed_ids_deferred, m.closed_refused_by_smtp, m.closed_suspended_by_retry
        ),
    );
    f.check(
        (SEQUENTIAL_FAILURES_TO_DEAD..=MAX_ATTEMPTS_TO_DEAD).contains(&m.closed_refused_by_smtp),
        format!(
            "{who}: the closed destination is dead after {SEQUENTIAL_FAILURES_TO_DEAD} \
             failures plus those in flight (at most {MAX_ATTEMPTS_TO_DEAD} attempts): {}",
            m.closed_refused_by_smtp
        ),
    );
    let want_throttle: Vec<(i64, String)> = vec![
        (3, "0.2".to_string()),
        (2, "0.533333".to_string()),
        (0, "1.03333".to_string()),
    ];
    f.check(
        m.closed_throttle == want_throttle,
        format!(
            "{who}: the closed queue's negative feedback goes window 5 -> 3 -> 2 -> dead \
             (fail_cohorts 0.2, 0.533333, 1.03333): {:?}",
            m.closed_throttle
        ),
    );
    // 4.
    f.check(
        m.max_window.get("slow") == Some(&(CONCURRENCY_LIMIT, CONCURRENCY_LIMIT)),
        format!(
            "{who}: the slow destination's window reaches the limit {CONCURRENCY_LIMIT}: {:?}",
            m.max_window
        ),
    );
    f.check(
        m.max_window.get("rated") == Some(&(1, 1)),
        format!(
            "{who}: the rate-delayed destination has limit 1, window 1: {:?}",
            m.max_window
        ),
    );
    f.check(
        !m.max_window.contains_key("closed"),
        format!(
            "{who}: the closed destination gets no positive feedback: {:?}",
            m.max_window
        ),
    );
    f.check(
        m.slow_max_parallel as i64 == CONCURRENCY_LIMIT,
        format!(
            "{who}: at most (and at some point exactly) {CONCURRENCY_LIMIT} transactions at \
             once at the slow sink: {}",
            m.slow_max_parallel
        ),
    );
    f.check(
        m.rated_gaps.len() == RATED - 1 && m.rated_whole_seconds_apart,
        format!(
            "{who}: each rated delivery starts in a later second than the previous one ended: \
             gaps {:?} s",
            m.rated_gaps
        ),
    );
    f.check(
        m.rated_log_gaps.len() == RATED - 1 && m.rated_log_gaps.iter().all(|&g| g >= 1),
        format!(
            "{who}: the rated deliveries are logged >= 1 s apart: {:?}",
            m.rated_log_gaps
        ),
    );
}

/// What must agree between two runs. Starvation (2) is compared only when
/// both run the same scheduler: nqmgr preempts, oqmgr does not.
fn check_same(a: &Mix, b: &Mix, f: &mut Failures) {
    let (x, y) = (&a.label, &b.label);
    let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let mut same: Vec<(&str, String, String)> = vec![
        // 1.
        (
            "list recipients delivered once",
            show(&a.list_rcpts_sent_once),
            show(&b.list_rcpts_sent_once),
        ),
        (
            "singles delivered once",
            show(&a.singles_sent_once),
            show(&b.singles_sent_once),
        ),
        (
            "rated delivered once",
            show(&a.rated_sent_once),
            show(&b.rated_sent_once),
        ),
        (
            "slow sink transactions",
            show(&a.slow_sink_transactions),
            show(&b.slow_sink_transactions),
        ),
        (
            "sink transactions",
            show(&a.sink_transactions),
            show(&b.sink_transactions),
        ),
        (
            "leftover is the failing mail, deferred",
            show(&a.leftover_is_failing_deferred),
            show(&b.leftover_is_failing_deferred),
        ),
        // 3. The feedback is deterministic; the attempts differ only by
        // the deliveries in flight when the third failure came back
        // (checked below).
        (
            "closed queue's throttle lines",
            show(&a.closed_throttle),
            show(&b.closed_throttle),
        ),
        (
            "failing messages deferred",
            show(&a.closed_ids_deferred),
            show(&b.closed_ids_deferred),
        ),
        // 4.
        (
            "(limit, max window) per destination",
            show(&a.max_window),
            show(&b.max_window),
        ),
        (
            "most transactions at once at the slow sink",
            show(&a.slow_max_parallel),
            show(&b.slow_max_parallel),
        ),
        (
            "rated deliveries in distinct seconds",
            show(&a.rated_whole_seconds_apart),
            show(&b.rated_whole_seconds_apart),
        ),
    ];
    if a.scheduler == b.scheduler {
        // 2. The numbers depend on timing; the verdicts must agree.
        same.push((
            "at least a quarter of the list delivered after the last single",
            show(&(a.list_sent_after_last_single >= LIST_RCPTS / 4)),
            show(&(b.list_sent_after_last_single >= LIST_RCPTS / 4)),
        ));
        same.push((
            "no single delivered before the list's entries were all selected",
            show(&(a.list_sent_before_first_single >= FIFO_MIN_BEFORE)),
            show(&(b.list_sent_before_first_single >= FIFO_MIN_BEFORE)),
        ));
        if a.scheduler == Scheduler::Nqmgr {
            let between = |m: &Mix| {
                m.list_sent_before_each_single
                    .last()
                    .map_or(0, |&n| n.saturating_sub(m.list_sent_at_burst))
            };
            let (ba, bb) = (between(a), between(b));
            f.check(
                ba.abs_diff(bb) <= BETWEEN_TOLERANCE,
                format!(
                    "list recipients delivered between the burst and the last single \
                     (preemption rate): {x} {ba} vs {y} {bb} (tolerance {BETWEEN_TOLERANCE})"
                ),
            );
        }
    }
    for (what, va, vb) in same {
        f.check(va == vb, format!("{what}: {x} {va} vs {y} {vb}"));
    }
    let diff = a.closed_refused_by_smtp.abs_diff(b.closed_refused_by_smtp);
    f.check(
        diff <= MAX_ATTEMPTS_TO_DEAD - SEQUENTIAL_FAILURES_TO_DEAD,
        format!(
            "smtp attempts before the closed destination is dead: {x} {} vs {y} {} \
             (tolerance {}: the deliveries in flight)",
            a.closed_refused_by_smtp,
            b.closed_refused_by_smtp,
            MAX_ATTEMPTS_TO_DEAD - SEQUENTIAL_FAILURES_TO_DEAD
        ),
    );
}

/// The numbers of the runs side by side.
fn report(runs: &[&Mix]) -> String {
    let mut r = String::new();
    let row = |r: &mut String, what: &str, f: &dyn Fn(&Mix) -> String| {
        let _ = write!(r, "  {what:<44}");
        for m in runs {
            let _ = write!(r, " | {:<28}", f(m));
        }
        r.push('\n');
    };
    row(&mut r, "", &|m| m.label.clone());
    row(&mut r, "run time (s)", &|m| {
        format!("{:.1}", m.elapsed.as_secs_f64())
    });
    row(&mut r, "1 list rcpts sent once / lines", &|m| {
        format!("{} / {}", m.list_rcpts_sent_once, m.list_sent_lines)
    });
    row(&mut r, "1 singles sent once / lines", &|m| {
        format!("{} / {}", m.singles_sent_once, m.singles_sent_lines)
    });
    row(&mut r, "1 rated sent once / lines", &|m| {
        format!("{} / {}", m.rated_sent_once, m.rated_sent_lines)
    });
    row(&mut r, "1 slow sink tx (list + singles)", &|m| {
        format!(
            "{} ({} + {})",
            m.slow_sink_transactions, m.slow_sink_list, m.slow_sink_singles
        )
    });
    row(&mut r, "1 sink tx (rated)", &|m| {
        m.sink_transactions.to_string()
    });
    row(&mut r, "1 leftover = failing, deferred", &|m| {
        m.leftover_is_failing_deferred.to_string()
    });
    row(&mut r, "2 list rcpts sent at the burst", &|m| {
        m.list_sent_at_burst.to_string()
    });
    row(&mut r, "2 list rcpts sent before 1st single", &|m| {
        m.list_sent_before_first_single.to_string()
    });
    row(&mut r, "2 list rcpts sent after last single", &|m| {
        m.list_sent_after_last_single.to_string()
    });
    row(&mut r, "2 single delay min / max (s)", &|m| {
        let min = m
            .single_delays
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = m.single_delays.iter().copied().fold(0.0, f64::max);
        format!("{min:.2} / {max:.2}")
    });
    row(&mut r, "2 list last delivery delay (s)", &|m| {
        format!("{:.2}", m.list_last_delay)
    });
    row(&mut r, "2 list delay at the burst (s)", &|m| {
        format!("{:.2}", m.list_delay_at_burst)
    });
    row(&mut r, "2 list rcpts sent before each single", &|m| {
        format!("{:?}", m.list_sent_before_each_single)
    });
    row(&mut r, "3 smtp refused / retry suspended", &|m| {
        format!(
            "{} / {}",
            m.closed_refused_by_smtp, m.closed_suspended_by_retry
        )
    });
    row(&mut r, "3 closed throttle (window, fail_cohorts)", &|m| {
        format!("{:?}", m.closed_throttle)
    });
    row(&mut r, "4 (limit, max window) per destination", &|m| {
        format!("{:?}", m.max_window)
    });
    row(&mut r, "4 slow sink max tx at once", &|m| {
        m.slow_max_parallel.to_string()
    });
    row(&mut r, "4 rated gaps at the sink (s)", &|m| {
        format!(
            "{:?}",
            m.rated_gaps
                .iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>()
        )
    });
    row(&mut r, "4 rated log time stamp gaps (s)", &|m| {
        format!("{:?}", m.rated_log_gaps)
    });
    r
}

fn finish(runs: &[&Mix], failures: Failures) {
    let table = report(runs);
    eprintln!("scheduler mix:\n{table}");
    if !failures.0.is_empty() {
        panic!(
            "{} expectation(s) failed:\n  {}\n{table}",
            failures.0.len(),
            failures.0.join("\n  ")
        );
    }
}

/// Runs two configurations of the mix at the same time (each in its own
/// instance) and returns both.
fn run_pair(a: (Opts, &str), b: (Opts, &str)) -> (Mix, Mix) {
    std::thread::scope(|s| {
        let ha = s.spawn(move || run_mix(a.0, a.1));
        let hb = s.spawn(move || run_mix(b.0, b.1));
        let ra = ha.join();
        let rb = hb.join();
        match (ra, rb) {
            (Ok(ma), Ok(mb)) => (ma, mb),
            (Err(e), _) | (_, Err(e)) => std::panic::resume_unwind(e),
        }
    })
}

/// The mix through Postfix's qmgr and through rqmgr, compared.
#[test]
fn side_by_side_postfix_qmgr_and_rqmgr() {
    let (q, r) = run_pair(
        (mix_opts("sched-side", Qmgr::PostfixQmgr), "qmgr"),
        (mix_opts("sched-side", Qmgr::Rqmgr), "rqmgr"),
    );
    let mut f = Failures::default();
    check_absolute(&q, &mut f);
    check_absolute(&r, &mut f);
    check_same(&q, &r, &mut f);
    finish(&[&q, &r], f);
}

/// The mix through Postfix's oqmgr and through `rqmgr --scheduler oqmgr`,
/// compared.
#[test]
fn side_by_side_postfix_oqmgr_and_rqmgr_oqmgr() {
    let (q, r) = run_pair(
        (mix_opts("sched-side-o", Qmgr::PostfixOqmgr), "oqmgr"),
        (
            mix_opts("sched-side-o", Qmgr::Rqmgr).qmgr_args(&["--scheduler", "oqmgr"]),
            "rqmgr --scheduler oqmgr",
        ),
    );
    let mut f = Failures::default();
    check_absolute(&q, &mut f);
    check_absolute(&r, &mut f);
    check_same(&q, &r, &mut f);
    finish(&[&q, &r], f);
}

/// The mix through one queue manager, against the absolute expectations.
fn scheduler_mix(q: Qmgr) {
    let label = q.tag().to_string();
    let m = run_mix(mix_opts("sched-mix", q), &label);
    let mut f = Failures::default();
    check_absolute(&m, &mut f);
    finish(&[&m], f);
}

/// Postfix's qmgr against Postfix's oqmgr: they agree on delivery, the dead
/// destination and concurrency (1, 3, 4), and differ on starvation (2):
/// qmgr preempts the list for the singles, oqmgr serves the destination's
/// entries first come, first served. This proves the comparison against
/// Postfix itself, both ways.
#[test]
fn postfix_qmgr_and_postfix_oqmgr_differ_only_in_starvation() {
    let (q, o) = run_pair(
        (mix_opts("sched-q-o", Qmgr::PostfixQmgr), "qmgr"),
        (mix_opts("sched-q-o", Qmgr::PostfixOqmgr), "oqmgr"),
    );
    let mut f = Failures::default();
    check_absolute(&q, &mut f);
    check_absolute(&o, &mut f);
    check_same(&q, &o, &mut f);
    f.check(
        q.list_sent_before_first_single < FIFO_MIN_BEFORE
            && o.list_sent_before_first_single >= FIFO_MIN_BEFORE,
        format!(
            "qmgr delivers singles while the list is under way ({} list recipients before \
             the first single), oqmgr only once all of it was selected ({}, at least \
             {FIFO_MIN_BEFORE})",
            q.list_sent_before_first_single, o.list_sent_before_first_single
        ),
    );
    finish(&[&q, &o], f);
}
