//! The kill test, small enough for every CI run: a private Postfix drains a
//! few hundred messages to a slow smtp-sink while the queue manager is
//! SIGKILLed (by pid) at random instants, then while `postfix reload` runs,
//! then while the whole instance is stopped and started again. At the end
//! every message reached smtp-sink, the queue is empty (postqueue -p says
//! so), nothing is in corrupt/, and every duplicate at the sink was in flight
//! at one of the events. The instants come from a seed that the test prints
//! (RQMGR_KILLTEST_SEED=N reruns one). bench/killtest/run is the full-size
//! version (30 000 messages, 100 events per mode). Beside it, one
//! `postfix reload` in the middle of a busy drain: the old process must let
//! go at once.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{sys, Instance, Opts, Qmgr};

dropin_tests!(
    drain_survives_kills_reloads_and_restarts,
    reload_during_a_busy_drain_hands_over_the_queue,
);

/// Messages in the drain.
const N: usize = 200;
/// Events of each kind, at most (the drain may end first; see below).
const KILLS: usize = 10;
const RELOADS: usize = 3;
const RESTARTS: usize = 2;
/// A duplicate is "in flight at an event" if its first SMTP transaction at
/// the sink overlapped [event start - SLACK, event end].
const SLACK: Duration = Duration::from_secs(2);

/// xorshift64*: the seeded instants (no dependency for eight lines).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pause between `lo` and `hi` milliseconds.
    fn pause(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

fn seed() -> u64 {
    match std::env::var("RQMGR_KILLTEST_SEED") {
        Ok(s) => s.parse().expect("RQMGR_KILLTEST_SEED: a number"),
        Err(_) => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
                % 1_000_000
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Reload,
    StopStart,
}

/// One event: what, when it began and ended, and how many files were in
/// the active queue just before it.
#[derive(Debug)]
struct Event {
    kind: Kind,
    start: SystemTime,
    end: SystemTime,
    in_active: usize,
}

fn count_lines(inst: &Instance, pred: impl Fn(&support::LogLine) -> bool) -> usize {
    inst.log_lines().iter().filter(|l| pred(l)).count()
}

/// Waits (briefly) for the active queue to hold mail, so that the event
/// lands with deliveries in flight; false if the queue drained meanwhile.
fn wait_for_active(inst: &Instance) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !inst.queue_ids("active").is_empty() {
            return true;
        }
        if inst.queue_is_empty() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn event(inst: &Instance, kind: Kind) -> Event {
    match kind {
        Kind::Kill => {
            // The queue manager that runs now: master starts one on the
            // kick that follows each kill, as on any new mail.
            inst.wait_until("a queue manager to run", || inst.qmgr_pids().len() == 1);
            let pid = inst.qmgr_pids()[0];
            let in_active = inst.queue_ids("active").len();
            let start = SystemTime::now();
            sys::signal_pid(pid, "KILL");
            inst.wait_until(&format!("qmgr pid {pid} to die"), || !sys::pid_alive(pid));
            let end = SystemTime::now();
            inst.postkick_qmgr("I");
            Event {
                kind,
                start,
                end,
                in_active,
            }
        }
        Kind::Reload => {
            let in_active = inst.queue_ids("active").len();
            let start = SystemTime::now();
            inst.reload();
            Event {
                kind,
                start,
                end: SystemTime::now(),
                in_active,
            }
        }
        Kind::StopStart => {
            let started = |inst: &Instance| {
                count_lines(inst, |l| {
                    l.is_from("master") && l.text.starts_with("daemon started")
                })
            };
            let before = started(inst);
            let in_active = inst.queue_ids("active").len();
            let start = SystemTime::now();
            let out = inst.postfix(&["stop"]);
            inst.check(out.success(), &format!("postfix stop: {}", out.stderr));
            let etc = inst.etc();
            inst.wait_until("every process of the instance to exit", || {
                sys::instance_processes(&etc).is_empty()
            });
            let end = SystemTime::now();
            let out = inst.postfix(&["start"]);
            inst.check(out.success(), &format!("postfix start: {}", out.stderr));
            inst.wait_until("the master to log `daemon started` again", || {
                started(inst) > before
            });
            Event {
                kind,
                start,
                end,
                in_active,
            }
        }
    }
}

fn drain_survives_kills_reloads_and_restarts(q: Qmgr) {
    let seed = seed();
    eprintln!("dropin_killtest: seed {seed} (rerun with RQMGR_KILLTEST_SEED={seed})");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut inst = Instance::start(
        Opts::new("killtest", q)
            .qmgr_disabled()
            .in_flow_delay_zero()
            // Each delivery takes a second at the sink, so that the active
            // queue is full of requests in flight at the events.
            .slow_sink(1)
            // master throttles a service whose process dies before it took
            // a trigger ("bad command startup"): 60 s by default.
            .main_cf("service_throttle_time", "1s")
            // The master logs every kill: expected here.
            .fail_fast(false)
            .timeout(Duration::from_secs(90)),
    );
    let from = inst.local_addr("sender");
    let mut tokens = Vec::new();
    let mut smtp = inst.smtp();
    for i in 0..N {
        let token = inst.unique_token("kill");
        let rcpt = format!("k{i:04}@slow.example");
        let text = inst.message_text(&from, &[&rcpt], "kill test", &token);
        smtp.send(&from, &[&rcpt], &text)
            .unwrap_or_else(|e| inst.fail(&format!("SMTP submission {i}: {e}")));
        tokens.push(token);
    }
    smtp.quit();
    inst.wait_until("every message in incoming", || {
        inst.queue_ids("incoming").len() == N
    });
    inst.enable_qmgr();

    let plan: Vec<Kind> = std::iter::repeat_n(Kind::Kill, KILLS)
        .chain(std::iter::repeat_n(Kind::Reload, RELOADS))
        .chain(std::iter::repeat_n(Kind::StopStart, RESTARTS))
        .collect();
    let mut events: Vec<Event> = Vec::new();
    for kind in plan {
        std::thread::sleep(rng.pause(100, 900));
        if !wait_for_active(&inst) {
            break;
        }
        events.push(event(&inst, kind));
    }
    let kills = events.iter().filter(|e| e.kind == Kind::Kill).count();
    eprintln!(
        "dropin_killtest: seed {seed}: {} events ({kills} kills), {} with mail in active",
        events.len(),
        events.iter().filter(|e| e.in_active > 0).count()
    );

    inst.kick_until_empty("the queue to be empty after the events");

    // Every message at the sink, complete; duplicates only from requests in
    // flight at an event.
    let slow = inst.slow_sink.as_ref().unwrap();
    inst.wait_until("smtp-sink to hold every message", || {
        let all = slow.messages();
        tokens
            .iter()
            .all(|t| all.iter().any(|m| m.contains(&format!("token: {t}\n"))))
    });
    let transactions = slow.transactions();
    let mut copies: BTreeMap<&str, Vec<&support::sink::Transaction>> = BTreeMap::new();
    for t in &transactions {
        if let Some(token) = tokens
            .iter()
            .find(|tok| t.text.contains(&format!("token: {tok}\n")))
        {
            copies.entry(token.as_str()).or_default().push(t);
        }
    }
    let lost: Vec<&String> = tokens
        .iter()
        .filter(|t| !copies.contains_key(t.as_str()))
        .collect();
    inst.check(lost.is_empty(), &format!("seed {seed}: lost: {lost:?}"));
    let mut dups = 0;
    for (token, ts) in &copies {
        if ts.len() < 2 {
            continue;
        }
        dups += ts.len() - 1;
        let first = ts[0];
        let in_flight = events
            .iter()
            .any(|e| first.started <= e.end && first.finished + SLACK >= e.start);
        inst.check(
            in_flight,
            &format!(
                "seed {seed}: {token} reached the sink {} times, and its first delivery \
                 ({:?}..{:?}) was not in flight at any event: {events:?}",
                ts.len(),
                first.started,
                first.finished
            ),
        );
    }
    eprintln!("dropin_killtest: seed {seed}: {N} delivered, {dups} duplicates at the sink");

    // The queue as an admin sees it.
    inst.check(
        inst.queue_ids("corrupt").is_empty(),
        &format!("seed {seed}: nothing in corrupt/"),
    );
    let listing = inst.postqueue_p();
    inst.check(
        listing.trim() == "Mail queue is empty",
        &format!("seed {seed}: postqueue -p: {listing}"),
    );
    let killed = count_lines(&inst, |l| {
        l.is_from("master") && l.text.contains("killed by signal 9")
    });
    inst.check(
        killed == kills,
        &format!("seed {seed}: master logged {killed} processes killed by signal 9, {kills} kills"),
    );
    inst.check(
        events.iter().filter(|e| e.kind == Kind::Kill).count() >= 3,
        &format!("seed {seed}: at least 3 kills before the drain ended: {events:?}"),
    );
    inst.check(
        count_lines(&inst, |l| {
            l.is_from("qmgr") && (l.text.starts_with("fatal:") || l.text.starts_with("panic:"))
        }) == 0,
        &format!("seed {seed}: no fatal or panic line from qmgr"),
    );
    inst.stop();
}

/// `postfix reload` while the queue manager is busy: 2 000 messages piled
/// up in incoming (to discard(8)) and 10 to a slow smtp-sink, the reload
/// once the drain has begun. The old process exits at once, without
/// finishing its work (Postfix's `trigger_server_abort`: it must not keep
/// the files it has in active locked or in use); a new one takes over the
/// queue; every message is delivered, and after `postqueue -f` (for the
/// files it finds still in delivery) the queue is empty.
fn reload_during_a_busy_drain_hands_over_the_queue(q: Qmgr) {
    const FAST: usize = 2000;
    const SLOW: usize = 10;
    let mut inst = Instance::start(
        Opts::new("reload-busy", q)
            .qmgr_disabled()
            .in_flow_delay_zero()
            .slow_sink(3)
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let fast = FAST.to_string();
    inst.smtp_source(&[
        "-s",
        "5",
        "-m",
        &fast,
        "-f",
        &from,
        "-t",
        "x@discard.example",
    ]);
    let slow = SLOW.to_string();
    inst.smtp_source(&["-s", "2", "-m", &slow, "-f", &from, "-t", "y@slow.example"]);
    inst.wait_until("every message in incoming", || {
        inst.queue_ids("incoming").len() == FAST + SLOW
    });
    inst.enable_qmgr();
    inst.wait_until("the drain to begin", || {
        inst.log_lines().iter().any(|l| l.status() == Some("sent"))
    });
    let old = inst.qmgr_pids();
    inst.check(old.len() == 1, &format!("one queue manager: {old:?}"));
    inst.reload();
    inst.wait_until(
        &format!(
            "the old queue manager (pid {}) to exit after the reload",
            old[0]
        ),
        || !sys::pid_alive(old[0]),
    );
    // master(8) starts the next one on its post-reload wake-up trigger;
    // Postfix's own queue managers sometimes take that trigger on their
    // way out (a race of their event loop), so ask for one, as the
    // administrator would. What is tested is that the old one let go.
    inst.postkick_qmgr("W");
    inst.wait_until("a new queue manager", || {
        let now = inst.qmgr_pids();
        now.len() == 1 && now[0] != old[0]
    });
    inst.wait_progress("every message delivered", || {
        let lines = inst.log_lines();
        let sent: std::collections::HashSet<&str> = lines
            .iter()
            .filter(|l| l.status() == Some("sent"))
            .filter_map(|l| l.queue_id())
            .collect();
        if sent.len() == FAST + SLOW {
            Ok(())
        } else {
            Err(format!("{} of {} delivered", sent.len(), FAST + SLOW))
        }
    });
    // A file the old process still had in delivery when the new one
    // started was "skipped, still being delivered" and waits in incoming
    // for the next scan (master's wake-up, every 300 s): ask for it.
    inst.postqueue_f();
    inst.wait_queue_empty();
    inst.check(
        inst.queue_ids("corrupt").is_empty(),
        "nothing in the corrupt queue",
    );
}
