//! Scenario tests of the core in virtual time.

use super::*;
use crate::config::TransportParams;
use crate::sim::{Destination, Fate, Sim, SimMessage};

pub(crate) fn params_for(name: &str) -> TransportParams {
    let mut p = TransportParams::default();
    if name == "local" {
        p.recipient_limit = 1;
        p.dest_concurrency_limit = 2;
        p.init_dest_concurrency = 2;
    }
    if name == "slow" {
        p.rate_delay = 1;
        p.dest_concurrency_limit = 1;
        p.init_dest_concurrency = 1;
    }
    p
}

fn core_with(strategy: Strategy, now: Instant) -> Core<u32> {
    let mut settings = Settings::postfix_defaults(strategy);
    settings.recipient_delimiter = "+".into();
    Core::new(settings, Box::new(params_for), now)
}

pub(crate) fn core(now: Instant) -> Core<u32> {
    core_with(Strategy::Nqmgr, now)
}

fn resolved(transport: &str, nexthop: &str, address: &str) -> Resolution {
    Resolution {
        transport: transport.into(),
        nexthop: nexthop.into(),
        address: address.as_bytes().to_vec(),
        flags: 0,
    }
}

/// Assigns one batch of `(transport, nexthop, address, recipient)`.
fn assign(
    c: &mut Core<u32>,
    m: MessageId,
    now: Instant,
    rcpts: &[(&str, &str, &str, u32)],
) -> Assigned<u32> {
    let batch = rcpts
        .iter()
        .map(|&(t, n, a, r)| (resolved(t, n, a), r))
        .collect();
    c.assign_batch(m, batch, now)
}

/// A message with all its recipients read at once.
pub(crate) fn message(
    c: &mut Core<u32>,
    now: Instant,
    rcpts: &[(&str, &str, &str, u32)],
) -> MessageId {
    let m = c.message_new(ScanFlags::START, now);
    c.batch_read(m, MessageFacts::default(), now);
    let out = assign(c, m, now, rcpts);
    assert_eq!(
        out,
        Assigned {
            discard: vec![],
            defer: vec![]
        }
    );
    m
}

/// `n` messages of one recipient each (numbered 0..n) to `dest` over smtp.
fn singles(c: &mut Core<u32>, now: Instant, n: u32, dest: &str) {
    let address = format!("a@{dest}");
    for i in 0..n {
        message(c, now, &[("smtp", dest, &address, i)]);
    }
}

fn actions(c: &mut Core<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn events(c: &mut Core<u32>) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn connect(t: &str) -> Action<u32> {
    Action::Connect {
        transport: t.into(),
        rate_delay: Duration::ZERO,
    }
}

fn done(msg: MessageId) -> Action<u32> {
    Action::Complete {
        msg,
        step: Step::CheckBounceLog,
    }
}

pub(crate) fn hop_failure(status: &'static str, text: &'static str) -> AgentReply<'static> {
    AgentReply::Final {
        status: -1,
        hop_status: status.as_bytes(),
        hop_reason: text.as_bytes(),
    }
}

#[test]
fn one_message_one_delivery() {
    let now = Instant::now();
    let mut c = core(now);
    let m = message(
        &mut c,
        now,
        &[
            ("smtp", "example.com", "a@example.com", 10),
            ("smtp", "example.com", "b@example.com", 11),
        ],
    );
    assert_eq!(actions(&mut c), vec![connect("smtp")]);
    let e = c.agent_ready("smtp", now).unwrap();
    assert_eq!(c.entry(e).recipients, vec![10, 11]);
    assert_eq!(c.nexthop(c.entry(e).queue), "example.com");
    assert_eq!(c.agent_ready("smtp", now), None);
    let (msg, rcpts) = c.delivery_done(e, AgentReply::OK, now);
    assert_eq!((msg, rcpts), (m, vec![10, 11]));
    assert_eq!(actions(&mut c), vec![done(m)]);
    assert_eq!(c.entry_count(), 0);
    c.check_invariants().unwrap();
}

#[test]
fn recipient_limit_splits_entries_and_local_queues_per_user() {
    let now = Instant::now();
    for strategy in [Strategy::Nqmgr, Strategy::Oqmgr] {
        let mut c = core_with(strategy, now);
        let mut rcpts: Vec<(&str, &str, &str, u32)> = (0..120)
            .map(|i| ("smtp", "example.com", "x@example.com", i))
            .collect();
        rcpts.push(("local", "host.example", "Joe+list@host.example", 500));
        rcpts.push(("local", "host.example", "joe@host.example", 501));
        let m = message(&mut c, now, &rcpts);
        // 120 recipients / 50 per request = 3 entries; local: 1 per entry.
        assert_eq!(c.entry_count(), 5, "{strategy:?}");
        assert_eq!(c.refcount(m), 5);
        assert!(c.window("local", "joe@host.example").is_some());
        c.check_invariants().unwrap();
    }
}

#[test]
fn message_without_entries_is_done_at_once() {
    let now = Instant::now();
    let mut c = core(now);
    let m = message(&mut c, now, &[]);
    assert_eq!(actions(&mut c), vec![done(m)]);
}

#[test]
fn window_grows_by_one_per_success_up_to_the_limit() {
    let now = Instant::now();
    let mut c = core(now);
    for i in 0..100 {
        message(&mut c, now, &[("smtp", "d.example", "a@d.example", i)]);
    }
    assert_eq!(c.window("smtp", "d.example"), Some(5));
    let mut busy: VecDeque<EntryId> = (0..5)
        .map(|_| c.agent_ready("smtp", now).unwrap())
        .collect();
    let mut windows = vec![];
    for _ in 0..30 {
        let e = busy.pop_front().unwrap();
        c.delivery_done(e, AgentReply::OK, now);
        let w = c.window("smtp", "d.example").unwrap();
        windows.push(w);
        assert!(w <= 20);
        while (busy.len() as i32) < c.window("smtp", "d.example").unwrap() {
            match c.agent_ready("smtp", now) {
                Some(e) => busy.push_back(e),
                None => break,
            }
        }
        c.check_invariants().unwrap();
    }
    assert_eq!(&windows[..3], &[6, 7, 8], "+1 per success");
    assert_eq!(c.window("smtp", "d.example"), Some(20));
}

#[test]
fn three_sequential_hop_failures_kill_a_destination_then_it_revives() {
    let now = Instant::now();
    let mut c = core(now);
    singles(&mut c, now, 8, "dead.example");
    let hop = || hop_failure("4.4.1", "connect refused");
    let mut failures = 0;
    while c.window("smtp", "dead.example").unwrap_or(0) > 0 {
        let e = c
            .agent_ready("smtp", now)
            .expect("an entry while the destination is alive");
        c.delivery_done(e, hop(), now);
        failures += 1;
    }
    // qmgr_queue_throttle: the failure accumulator starts at 0, so the first
    // failure drops the window by two (5 -> 3), later ones by one (3 -> 2);
    // cohorts 1/5 + 1/3 + 1/2 >= 1: dead after the 3rd consecutive failure.
    assert_eq!(failures, 3);
    assert_eq!(
        c.window(
            "retry",
            "4.4.1 delivery temporarily suspended: connect refused"
        ),
        Some(5)
    );
    assert!(actions(&mut c).contains(&connect("retry")));
    // New mail for the dead destination goes to retry too.
    message(
        &mut c,
        now,
        &[("smtp", "dead.example", "b@dead.example", 99)],
    );
    assert_eq!(c.window("smtp", "dead.example"), Some(0));
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(300)));
    c.handle_timeout(now + Duration::from_secs(300));
    assert_eq!(
        c.window("smtp", "dead.example"),
        None,
        "an empty revived queue is freed"
    );
    c.check_invariants().unwrap();
}

#[test]
fn concurrent_failures_count_once_the_destination_is_dead() {
    let now = Instant::now();
    let mut c = core(now);
    singles(&mut c, now, 8, "dead.example");
    let busy: Vec<EntryId> = (0..5)
        .map(|_| c.agent_ready("smtp", now).unwrap())
        .collect();
    assert_eq!(c.agent_ready("smtp", now), None, "window 5");
    let hop = || hop_failure("4.4.1", "refused");
    for e in busy {
        c.delivery_done(e, hop(), now);
    }
    assert_eq!(c.window("smtp", "dead.example"), Some(0));
    c.check_invariants().unwrap();
}

#[test]
fn dead_transport_sends_work_to_retry_and_revives() {
    let now = Instant::now();
    let mut c = core(now);
    message(&mut c, now, &[("nosuch", "x.example", "a@x.example", 1)]);
    assert_eq!(actions(&mut c), vec![connect("nosuch")]);
    c.agent_failed("nosuch", now);
    assert!(c.transport_dead("nosuch"));
    assert_eq!(actions(&mut c), vec![connect("retry")]);
    let e = c.agent_ready("retry", now).unwrap();
    assert_eq!(
        c.nexthop(c.entry(e).queue),
        "4.3.0 mail transport unavailable"
    );
    c.handle_timeout(now + Duration::from_secs(60));
    assert!(!c.transport_dead("nosuch"));
    c.check_invariants().unwrap();
}

#[test]
fn retry_dead_too_hands_recipients_back() {
    let now = Instant::now();
    let mut c = core(now);
    let m1 = message(&mut c, now, &[("retry", "4.3.0 x", "a@x.example", 1)]);
    actions(&mut c);
    c.agent_failed("retry", now);
    let acts = actions(&mut c);
    assert!(acts.contains(&Action::Defer {
        msg: m1,
        recipients: vec![1],
        reason: Reason::new("4.3.0", "mail transport unavailable")
    }));
    assert!(acts.contains(&done(m1)));
    let m2 = c.message_new(ScanFlags::START, now);
    let out = assign(&mut c, m2, now, &[("retry", "4.3.0 y", "b@y", 2)]);
    assert_eq!(
        out.defer,
        vec![(2, Reason::new("4.3.0", "mail transport unavailable"))]
    );
    c.check_invariants().unwrap();
}

#[test]
fn enable_all_revives_everything() {
    let now = Instant::now();
    let mut c = core(now);
    message(&mut c, now, &[("smtp", "d.example", "a@d.example", 1)]);
    actions(&mut c);
    c.agent_failed("smtp", now);
    assert!(c.transport_dead("smtp"));
    c.enable_all();
    assert!(!c.transport_dead("smtp"));
}

/// A job past `PEER_SCAN_MAX` destinations keeps a table of its peers:
/// recipients for a destination it has seen join that destination's peer,
/// before and after the table exists and after a peer left.
#[test]
fn a_job_with_many_destinations_finds_each_peer_again() {
    let now = Instant::now();
    let mut c = core(now);
    let m = c.message_new(ScanFlags::START, now);
    c.batch_read(m, MessageFacts::default(), now);
    let dests: Vec<String> = (0..20).map(|i| format!("d{i}.example")).collect();
    let addrs: Vec<String> = dests.iter().map(|d| format!("a@{d}")).collect();
    let peers_of_job = |c: &Core<u32>| {
        let mut queues: Vec<QueueId> = c.peers.iter().map(|(_, p)| p.queue).collect();
        let n = queues.len();
        queues.sort_by_key(|q| format!("{q:?}"));
        queues.dedup();
        assert_eq!(queues.len(), n, "one peer per destination");
        n
    };
    for (round, take) in [3usize, 20, 20].into_iter().enumerate() {
        let rcpts: Vec<(&str, &str, &str, u32)> = dests
            .iter()
            .zip(&addrs)
            .take(take)
            .enumerate()
            .map(|(i, (d, a))| ("smtp", d.as_str(), a.as_str(), (round * 100 + i) as u32))
            .collect();
        assign(&mut c, m, now, &rcpts);
        assert_eq!(peers_of_job(&c), take);
    }
    assert_eq!(c.jobs.len(), 1);
    // Deliver everything: each delivery frees its peer once it is empty.
    while let Some(e) = c.agent_ready("smtp", now) {
        c.delivery_done(e, AgentReply::OK, now);
        c.check_invariants().unwrap();
    }
    assert_eq!(peers_of_job(&c), 0);
}

#[test]
fn large_message_is_read_in_slices() {
    let now = Instant::now();
    let mut c = core(now);
    let m = c.message_new(ScanFlags::START, now);
    // First read: qmgr_message_recipient_limit - in core, capped at 5000.
    assert_eq!(c.read_limit(m), 5000);
    let facts = MessageFacts {
        rcpt_unread: 15000,
        more: true,
        ..MessageFacts::default()
    };
    c.batch_read(m, facts, now);
    let batch: Vec<(&str, &str, &str, u32)> = (0..5000)
        .map(|i| ("smtp", "big.example", "a@big.example", i))
        .collect();
    assign(&mut c, m, now, &batch);
    assert_eq!(c.recipient_count(), 5000);
    // The job got the transport's whole pool: more may be read at once.
    let e = c.agent_ready("smtp", now).unwrap();
    let acts = actions(&mut c);
    assert!(acts.contains(&Action::Refill { msg: m }), "{acts:?}");
    assert!(c.read_limit(m) > 0);
    c.delivery_done(e, AgentReply::OK, now);
    c.check_invariants().unwrap();
}

fn sim_params(limit: i64) -> impl FnMut(&str) -> TransportParams {
    move |name| {
        let mut p = params_for(name);
        if name == "smtp" {
            p.dest_concurrency_limit = limit;
            p.init_dest_concurrency = p.init_dest_concurrency.min(limit);
        }
        p
    }
}

fn dests(list: &[(&str, u64, Option<Reason>)]) -> HashMap<String, Destination> {
    list.iter()
        .map(|(d, ms, f)| {
            (
                d.to_string(),
                Destination {
                    delivery_time: Duration::from_millis(*ms),
                    failure: f.clone(),
                },
            )
        })
        .collect()
}

fn msg(label: &str, at_ms: u64, n: usize, transport: &str, dest: &str) -> SimMessage {
    SimMessage {
        label: label.into(),
        arrival: Duration::from_millis(at_ms),
        recipients: (0..n)
            .map(|_| (transport.to_string(), dest.to_string()))
            .collect(),
    }
}

fn delivered_at(f: &Option<Fate>) -> Option<Duration> {
    match f {
        Some(Fate::Delivered(t)) => Some(*t),
        _ => None,
    }
}

#[test]
fn preemption_lets_a_small_message_overtake_a_big_list() {
    // 20 000 recipients of one list message to one slow destination
    // (concurrency 1, 50 recipients per request, 1 s each: 400 s of work),
    // then one small message to the same destination 10 s later.
    let make = |strategy: Strategy, slot_cost: i64| {
        let mut settings = Settings::postfix_defaults(strategy);
        settings.clog_warn_time = 0;
        let workload = vec![
            msg("list", 0, 20000, "smtp", "slow.example"),
            msg("small", 10_000, 1, "smtp", "slow.example"),
        ];
        let mut p = sim_params(1);
        let sim = Sim::new(
            settings,
            Box::new(move |n: &str| TransportParams { slot_cost, ..p(n) }),
            workload,
            dests(&[("slow.example", 1000, None)]),
            HashMap::new(),
            100,
        );
        sim.run(Duration::from_secs(100))
    };
    let report = make(Strategy::Nqmgr, 5);
    let small =
        delivered_at(&report.fates[1][0]).expect("the small message is delivered within 100 s");
    // Preemption needs min_slots * cost = 15 slots earned by the list first;
    // then the small message goes at the next slot: well under 30 s.
    assert!(
        small < Duration::from_secs(30),
        "small delivered at {small:?}"
    );
    let list_done = report.fates[0]
        .iter()
        .filter(|f| delivered_at(f).is_some())
        .count();
    assert!(list_done > 80 * 50, "the list keeps going too: {list_done}");
    assert_eq!(report.max_busy["slow.example"], 1);

    // Without preemption (a slot cost below 2 disables it) the small message
    // waits behind the whole list.
    let report = make(Strategy::Nqmgr, 1);
    assert_eq!(delivered_at(&report.fates[1][0]), None);

    // oqmgr has no preemption and serves a destination first come, first
    // served: the small message waits behind the list.
    let report = make(Strategy::Oqmgr, 5);
    assert_eq!(delivered_at(&report.fates[1][0]), None);
}

#[test]
fn rate_delay_spaces_deliveries() {
    let workload: Vec<SimMessage> = (0..5)
        .map(|i| msg(&format!("m{i}"), 0, 1, "slow", "r.example"))
        .collect();
    let settings = Settings::postfix_defaults(Strategy::Nqmgr);
    let sim = Sim::new(
        settings,
        Box::new(params_for),
        workload,
        dests(&[("r.example", 10, None)]),
        HashMap::new(),
        100,
    );
    let report = sim.run(Duration::from_secs(60));
    let starts: Vec<Duration> = report.requests.iter().map(|r| r.0).collect();
    assert_eq!(starts.len(), 5, "{report:?}");
    for w in starts.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_secs(1) && gap < Duration::from_millis(1100),
            "gap {gap:?}"
        );
    }
}

#[test]
fn failing_destination_goes_dead_and_the_rest_is_deferred() {
    let workload: Vec<SimMessage> = (0..8)
        .map(|i| msg(&format!("m{i}"), 0, 1, "smtp", "dead.example"))
        .collect();
    let settings = Settings::postfix_defaults(Strategy::Nqmgr);
    let sim = Sim::new(
        settings,
        Box::new(sim_params(20)),
        workload,
        dests(&[(
            "dead.example",
            100,
            Some(Reason::new("4.4.1", "connect refused")),
        )]),
        HashMap::new(),
        100,
    );
    let report = sim.run(Duration::from_secs(60));
    // Five go out at once (initial concurrency); the queue dies after the
    // 3rd failure; the other three go through retry.
    assert_eq!(report.attempts["dead.example"], 5);
    assert!(report
        .fates
        .iter()
        .all(|f| matches!(f[0], Some(Fate::Deferred(_)))));
    assert!(report.completed.iter().all(Option::is_some));
}

#[test]
fn same_workload_same_schedule() {
    let run = || {
        let workload = vec![
            msg("list", 0, 500, "smtp", "a.example"),
            msg("x", 5, 3, "smtp", "b.example"),
            msg("y", 7, 2, "local", "h"),
        ];
        let sim = Sim::new(
            Settings::postfix_defaults(Strategy::Nqmgr),
            Box::new(sim_params(20)),
            workload,
            dests(&[("a.example", 50, None), ("b.example", 20, None)]),
            HashMap::new(),
            100,
        );
        sim.run(Duration::from_secs(600)).requests
    };
    assert_eq!(run(), run());
}

mod properties {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig};
    use proptest::strategy::Strategy as _;

    fn workload() -> impl proptest::strategy::Strategy<Value = Vec<SimMessage>> {
        let m = (0u64..5000, 1usize..60, 0usize..4).prop_map(|(at, n, d)| {
            let dest = ["a.example", "b.example", "dead.example", "slow.example"][d];
            msg("m", at, n, "smtp", dest)
        });
        proptest::collection::vec(m, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every recipient is delivered or deferred exactly once, every message
        /// completes, and no destination ever has more deliveries in flight
        /// than its concurrency limit.
        #[test]
        fn every_recipient_once_and_limits_hold(w in workload(), limit in 1i64..6, nq in any::<bool>()) {
            let strategy = if nq { super::super::Strategy::Nqmgr } else { super::super::Strategy::Oqmgr };
            let mut settings = Settings::postfix_defaults(strategy);
            settings.clog_warn_time = 0;
            let total: usize = w.iter().map(|m| m.recipients.len()).sum();
            let sim = Sim::new(
                settings,
                Box::new(sim_params(limit)),
                w,
                dests(&[
                    ("a.example", 30, None),
                    ("b.example", 5, None),
                    ("dead.example", 50, Some(Reason::new("4.4.1", "refused"))),
                    ("slow.example", 400, None),
                ]),
                HashMap::new(),
                10,
            );
            let report = sim.run(Duration::from_secs(3600));
            let fates: usize = report.fates.iter().map(|f| f.iter().filter(|x| x.is_some()).count()).sum();
            prop_assert_eq!(fates, total);
            prop_assert!(report.completed.iter().all(Option::is_some));
            // The smtp destinations' limit; retry queues have their own.
            for (d, busy) in report.max_busy.iter().filter(|(d, _)| d.ends_with(".example")) {
                prop_assert!(*busy as i64 <= limit, "{} had {} in flight", d, busy);
            }
        }

        /// The same events give the same actions: two runs of one workload
        /// make the same delivery requests at the same times.
        #[test]
        fn deterministic(w in workload(), nq in any::<bool>()) {
            let strategy = if nq { super::super::Strategy::Nqmgr } else { super::super::Strategy::Oqmgr };
            let run = |w: Vec<SimMessage>| {
                let sim = Sim::new(
                    Settings::postfix_defaults(strategy),
                    Box::new(sim_params(3)),
                    w,
                    dests(&[("a.example", 30, None), ("b.example", 5, None), ("dead.example", 50, Some(Reason::new("4.4.1", "refused")))]),
                    HashMap::new(),
                    10,
                );
                sim.run(Duration::from_secs(3600)).requests
            };
            prop_assert_eq!(run(w.clone()), run(w));
        }
    }
}

#[test]
fn transport_rate_delay_spaces_all_deliveries_of_the_transport() {
    // Two destinations, one transport with a 1 s transport rate delay: one
    // delivery at a time for the whole transport, each 1 s after the agent
    // was ready.
    let workload: Vec<SimMessage> = (0..6)
        .map(|i| {
            msg(
                &format!("m{i}"),
                0,
                1,
                "smtp",
                if i % 2 == 0 { "a.example" } else { "b.example" },
            )
        })
        .collect();
    let sim = Sim::new(
        Settings::postfix_defaults(Strategy::Nqmgr),
        Box::new(|n: &str| TransportParams {
            xport_rate_delay: 1,
            ..params_for(n)
        }),
        workload,
        dests(&[("a.example", 10, None), ("b.example", 10, None)]),
        HashMap::new(),
        100,
    );
    let report = sim.run(Duration::from_secs(60));
    let starts: Vec<Duration> = report.requests.iter().map(|r| r.0).collect();
    assert_eq!(starts.len(), 6);
    assert_eq!(starts[0], Duration::from_secs(1));
    for w in starts.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_secs(1), "{starts:?}");
    }
}

#[test]
fn clog_event_when_one_destination_fills_the_active_queue() {
    let now = Instant::now();
    let mut settings = Settings::postfix_defaults(Strategy::Nqmgr);
    settings.active_limit = 10;
    let mut c: Core<u32> = Core::new(settings, Box::new(params_for), now);
    for i in 0..4 {
        message(
            &mut c,
            now,
            &[("smtp", "clog.example", "a@clog.example", i)],
        );
    }
    let clogs: Vec<Event> = events(&mut c)
        .into_iter()
        .filter(|e| matches!(e, Event::Clogged { .. }))
        .collect();
    // Once per qmgr_clog_warn_time, at the third entry (3 > 10 / 5).
    assert_eq!(clogs.len(), 1);
    assert!(matches!(
        &clogs[0],
        Event::Clogged { nexthop, length: 3, count: 3, slows_others: false, advice: ClogAdvice::Timeouts, .. }
            if &**nexthop == "clog.example"
    ));
}

#[test]
fn feedback_events() {
    let now = Instant::now();
    let mut c = core(now);
    message(&mut c, now, &[("smtp", "d.example", "a@d.example", 1)]);
    let e = c.agent_ready("smtp", now).unwrap();
    events(&mut c);
    c.delivery_done(e, AgentReply::OK, now);
    let got = events(&mut c);
    assert_eq!(
        got[..1],
        [Event::Feedback {
            func: FeedbackFn::Unthrottle,
            transport: "smtp".into(),
            value: 1.0
        },]
    );
    assert!(
        matches!(&got[1], Event::Window { func: FeedbackFn::Unthrottle, queue, limit: 20, window: 6, .. } if &**queue == "d.example")
    );
    assert!(matches!(got[2], Event::Delivered { recipients: 1, .. }));
}

#[test]
fn dead_destination_and_transport_events_and_snapshot() {
    let now = Instant::now();
    let mut c = core(now);
    for i in 0..3 {
        message(
            &mut c,
            now,
            &[("smtp", "dead.example", "a@dead.example", i)],
        );
    }
    message(&mut c, now, &[("slow", "r.example", "b@r.example", 9)]);
    for _ in 0..3 {
        let e = c.agent_ready("smtp", now).unwrap();
        c.delivery_done(e, hop_failure("4.4.1", "refused"), now);
    }
    let until = now + Duration::from_secs(300);
    assert!(events(&mut c).contains(&Event::QueueDead {
        transport: "smtp".into(),
        queue: "dead.example".into(),
        reason: Reason::new("4.4.1", "delivery temporarily suspended: refused"),
        until,
    }));
    let e = c.agent_ready("slow", now).unwrap();
    c.delivery_done(e, AgentReply::OK, now);
    let snap = c.snapshot(now);
    assert_eq!((snap.messages, snap.recipients), (4, 0));
    let dead = snap.queue("smtp", "dead.example").unwrap();
    assert_eq!(dead.window, 0);
    assert_eq!(dead.dead.as_ref().unwrap().until, Some(until));
    assert_eq!(
        snap.queue("slow", "r.example").unwrap().resumes,
        Some(now + Duration::from_secs(1))
    );
    c.agent_failed("smtp", now);
    assert!(events(&mut c)
        .iter()
        .any(|e| matches!(e, Event::TransportDead { transport, .. } if &**transport == "smtp")));
    let snap = c.snapshot(now);
    assert!(snap.transport("smtp").unwrap().dead.is_some());
    c.handle_timeout(now + Duration::from_secs(60));
    assert!(events(&mut c).contains(&Event::TransportRevived {
        transport: "smtp".into()
    }));
}

#[test]
fn snapshot_shows_where_each_recipient_stands() {
    let now = Instant::now();
    let mut c = core(now);
    let m1 = message(&mut c, now, &[("smtp", "a.example", "x@a.example", 1)]);
    let m2 = message(
        &mut c,
        now,
        &[
            ("smtp", "a.example", "y@a.example", 2),
            ("smtp", "b.example", "z@b.example", 3),
        ],
    );
    let e = c.agent_ready("smtp", now).unwrap();
    assert_eq!(c.entry(e).msg, m1);
    let snap = c.snapshot(now);
    let v1 = snap.message(m1).unwrap();
    assert!(v1.entries[0].busy);
    let v2 = snap.message(m2).unwrap();
    let a = v2
        .entries
        .iter()
        .find(|e| &*e.queue == "a.example")
        .unwrap();
    assert_eq!((a.busy, a.ahead, a.recipients.clone()), (false, 0, vec![2]));
    assert_eq!(snap.queue("smtp", "a.example").unwrap().busy, 1);
    assert_eq!(snap.jobs.len(), 2);
    // m1's job has nothing left in core: retired; m2's is current.
    assert!(snap.jobs.iter().any(|j| j.msg == m1 && j.stack_level == -1));
    assert!(snap.jobs.iter().any(|j| j.msg == m2 && j.current));
}

#[test]
fn a_crashed_agent_is_not_news_about_the_destination() {
    let now = Instant::now();
    let mut c = core(now);
    singles(&mut c, now, 3, "d.example");
    actions(&mut c);
    let e = c.agent_ready("smtp", now).unwrap();
    let m = c.entry(e).msg;
    let (_, rcpts) = c.delivery_done(e, AgentReply::Crashed, now);
    assert!(rcpts.is_empty(), "the recipients come as a Defer action");
    let acts = actions(&mut c);
    assert!(acts.contains(&Action::Defer {
        msg: m,
        recipients: vec![0],
        reason: Reason::new("4.3.0", "unknown mail transport error"),
    }));
    assert!(acts.contains(&done(m)));
    // Neither the destination nor the transport is throttled: the next
    // entry goes to a fresh agent at the same window.
    assert_eq!(c.window("smtp", "d.example"), Some(5));
    assert!(!c.transport_dead("smtp"));
    assert!(c.agent_ready("smtp", now).is_some());
    c.check_invariants().unwrap();
}

#[test]
fn probes_beyond_the_pending_limit_go_to_retry() {
    let now = Instant::now();
    let mut settings = Settings::postfix_defaults(Strategy::Nqmgr);
    settings.probe_limit = 1;
    let mut c: Core<u32> = Core::new(settings, Box::new(params_for), now);
    let probe = MessageFacts {
        tflags: crate::proto::deliver_flag::MTA_VRFY,
        ..MessageFacts::default()
    };
    for i in 0..2 {
        let m = c.message_new(ScanFlags::START, now);
        c.batch_read(m, probe.clone(), now);
        assign(&mut c, m, now, &[("smtp", "v.example", "p@v.example", i)]);
    }
    assert!(c.window("smtp", "v.example").is_some());
    assert!(c
        .window("retry", "4.3.2 too many address verification requests")
        .is_some());
    // An ordinary message is not affected.
    message(&mut c, now, &[("smtp", "w.example", "x@w.example", 9)]);
    assert!(c.window("smtp", "w.example").is_some());
}
