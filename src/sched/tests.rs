//! Scenario tests of the core in virtual time.

use super::*;

fn params() -> TransportParams {
    TransportParams {
        dest_concurrency_limit: 20,
        recipient_limit: 50,
        init_dest_concurrency: 5,
        xport_rate_delay: 0,
        rate_delay: 0,
        slot_cost: 5,
        slot_loan: 3,
        slot_loan_factor: 50,
        min_slots: 3,
        rcpt_unused: 20000,
        rcpt_per_stack: 1000,
        refill_limit: 100,
        refill_delay: 5,
        pos_feedback: "1".into(),
        neg_feedback: "1".into(),
        fail_cohort_limit: 1,
    }
}

fn core() -> Scheduler<u32> {
    let settings = Settings {
        minimal_backoff_time: 300,
        transport_retry_time: 60,
        feedback_debug: false,
        recipient_delimiter: "+".into(),
    };
    Scheduler::new(
        settings,
        Box::new(|name: &str| {
            let mut p = params();
            if name == "local" {
                p.recipient_limit = 1;
                p.dest_concurrency_limit = 2;
                p.init_dest_concurrency = 2;
            }
            p
        }),
    )
}

fn add(
    c: &mut Scheduler<u32>,
    msg: u64,
    transport: &str,
    nexthop: &str,
    addr: &str,
    rcpt: u32,
    now: Instant,
) {
    c.assign(
        MessageId(msg),
        Assignment {
            transport,
            nexthop,
            address: addr.as_bytes(),
            flush_each: false,
            rcpt,
        },
        now,
    )
    .unwrap();
}

fn actions(c: &mut Scheduler<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

#[test]
fn one_message_one_delivery() {
    let now = Instant::now();
    let mut c = core();
    add(&mut c, 1, "smtp", "example.com", "a@example.com", 10, now);
    add(&mut c, 1, "smtp", "example.com", "b@example.com", 11, now);
    c.assigned(MessageId(1));
    assert_eq!(
        actions(&mut c),
        vec![Action::Connect {
            transport: "smtp".into()
        }]
    );
    let e = c.agent_ready("smtp", now).unwrap();
    assert_eq!(c.entry(e).recipients, vec![10, 11]);
    assert_eq!(c.nexthop(c.entry(e).queue), "example.com");
    assert_eq!(c.agent_ready("smtp", now), None);
    let (msg, retry) = c.delivery_done(
        e,
        Outcome::Replied {
            retry: false,
            hop: None,
        },
        now,
    );
    assert_eq!((msg, retry), (MessageId(1), false));
    assert_eq!(
        actions(&mut c),
        vec![Action::MessageDone { msg: MessageId(1) }]
    );
    assert_eq!(c.entry_count(), 0);
}

#[test]
fn recipient_limit_splits_entries_and_local_queues_per_user() {
    let now = Instant::now();
    let mut c = core();
    for i in 0..120 {
        add(&mut c, 1, "smtp", "example.com", "x@example.com", i, now);
    }
    add(
        &mut c,
        1,
        "local",
        "host.example",
        "Joe+list@host.example",
        500,
        now,
    );
    add(
        &mut c,
        1,
        "local",
        "host.example",
        "joe@host.example",
        501,
        now,
    );
    c.assigned(MessageId(1));
    // 120 recipients / 50 per request = 3 entries; local: 1 per entry.
    assert_eq!(c.entry_count(), 5);
    assert_eq!(c.refcount(MessageId(1)), 5);
    assert!(c.window("local", "joe@host.example").is_some());
}

#[test]
fn message_without_entries_is_done_at_once() {
    let mut c = core();
    c.assigned(MessageId(7));
    assert_eq!(
        actions(&mut c),
        vec![Action::MessageDone { msg: MessageId(7) }]
    );
}

#[test]
fn window_grows_by_one_per_success_up_to_the_limit() {
    let now = Instant::now();
    let mut c = core();
    for m in 0..100 {
        add(&mut c, m, "smtp", "d.example", "a@d.example", m as u32, now);
        c.assigned(MessageId(m));
    }
    assert_eq!(c.window("smtp", "d.example"), Some(5));
    // Keep 5 busy, complete one at a time.
    let mut busy: VecDeque<EntryId> = (0..5)
        .map(|_| c.agent_ready("smtp", now).unwrap())
        .collect();
    for step in 0..30 {
        let e = busy.pop_front().unwrap();
        c.delivery_done(
            e,
            Outcome::Replied {
                retry: false,
                hop: None,
            },
            now,
        );
        let w = c.window("smtp", "d.example").unwrap();
        assert!(w <= 20, "window {w} over the limit at step {step}");
        while let Some(e) = c.agent_ready("smtp", now) {
            busy.push_back(e);
            if busy.len() as i32 >= c.window("smtp", "d.example").unwrap() {
                break;
            }
        }
    }
    assert_eq!(c.window("smtp", "d.example"), Some(20));
}

#[test]
fn four_hop_failures_kill_a_destination_then_it_revives() {
    let now = Instant::now();
    let mut c = core();
    for m in 0..8 {
        add(
            &mut c,
            m,
            "smtp",
            "dead.example",
            "a@dead.example",
            m as u32,
            now,
        );
        c.assigned(MessageId(m));
    }
    let hop = || Outcome::Replied {
        retry: true,
        hop: Some(Reason::new("4.4.1", "connect refused")),
    };
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
    // The remaining entries moved to the retry transport.
    assert_eq!(
        c.window(
            "retry",
            "4.4.1 delivery temporarily suspended: connect refused"
        ),
        Some(5)
    );
    let acts = actions(&mut c);
    assert!(acts.contains(&Action::Connect {
        transport: "retry".into()
    }));
    // New mail for the dead destination goes to retry too.
    add(
        &mut c,
        99,
        "smtp",
        "dead.example",
        "b@dead.example",
        99,
        now,
    );
    assert_eq!(c.window("smtp", "dead.example"), Some(0));
    // Revived after minimal_backoff_time.
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(300)));
    c.handle_timeout(now + Duration::from_secs(300));
    assert_eq!(
        c.window("smtp", "dead.example"),
        None,
        "empty revived queue is freed"
    );
}

#[test]
fn dead_transport_sends_work_to_retry_and_revives() {
    let now = Instant::now();
    let mut c = core();
    add(&mut c, 1, "nosuch", "x.example", "a@x.example", 1, now);
    c.assigned(MessageId(1));
    assert_eq!(
        actions(&mut c),
        vec![Action::Connect {
            transport: "nosuch".into()
        }]
    );
    c.agent_failed(
        "nosuch",
        Reason::new("4.3.0", "mail transport unavailable"),
        now,
    );
    assert!(c.transport_dead("nosuch"));
    assert_eq!(
        actions(&mut c),
        vec![Action::Connect {
            transport: "retry".into()
        }]
    );
    let e = c.agent_ready("retry", now).unwrap();
    assert_eq!(
        c.nexthop(c.entry(e).queue),
        "4.3.0 mail transport unavailable"
    );
    c.handle_timeout(now + Duration::from_secs(60));
    assert!(!c.transport_dead("nosuch"));
}

#[test]
fn retry_dead_too_hands_recipients_back() {
    let now = Instant::now();
    let mut c = core();
    add(&mut c, 1, "retry", "4.3.0 x", "a@x.example", 1, now);
    c.assigned(MessageId(1));
    actions(&mut c);
    c.agent_failed(
        "retry",
        Reason::new("4.3.0", "mail transport unavailable"),
        now,
    );
    let acts = actions(&mut c);
    assert!(acts.contains(&Action::Defer {
        msg: MessageId(1),
        recipients: vec![1],
        reason: Reason::new("4.3.0", "mail transport unavailable")
    }));
    assert!(acts.contains(&Action::MessageDone { msg: MessageId(1) }));
    let err = c
        .assign(
            MessageId(2),
            Assignment {
                transport: "retry",
                nexthop: "4.3.0 y",
                address: b"b@y",
                flush_each: false,
                rcpt: 2,
            },
            now,
        )
        .unwrap_err();
    assert_eq!(err.0, 2);
}

#[test]
fn enable_all_revives_everything() {
    let now = Instant::now();
    let mut c = core();
    add(&mut c, 1, "smtp", "d.example", "a@d.example", 1, now);
    c.assigned(MessageId(1));
    actions(&mut c);
    c.agent_failed(
        "smtp",
        Reason::new("4.3.0", "mail transport unavailable"),
        now,
    );
    assert!(c.transport_dead("smtp"));
    c.enable_all(now);
    assert!(!c.transport_dead("smtp"));
}
