//! The answers built from the core's snapshot, in virtual time.

use super::*;
use crate::qmgr::tests::{core, hop_failure, message};
use crate::qmgr::AgentReply;
use proptest::prelude::*;
use std::time::Duration;

fn clock(now: Instant) -> Clock {
    Clock {
        now,
        wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

fn addr(r: &u32) -> String {
    format!("r{r}@x")
}

#[test]
fn requests() {
    assert_eq!(Request::parse(b"status\n"), Ok(Request::Status));
    assert_eq!(
        Request::parse(b"explain 4ABCDEF12\n"),
        Ok(Request::Explain("4ABCDEF12".into()))
    );
    assert!(Request::parse(b"explain ../../etc\n").is_err());
    assert!(Request::parse(b"explain\n").is_err());
    assert!(Request::parse(b"status now\n").is_err());
    assert!(Request::parse(b"\xff\xfe").is_err());
    assert_eq!(Request::parse(b"backlog\n"), Ok(Request::Backlog));
    for r in [
        Request::Status,
        Request::Explain("ABC".into()),
        Request::Backlog,
    ] {
        assert_eq!(Request::parse(r.line().as_bytes()), Ok(r));
    }
}

proptest! {
    #[test]
    fn garbage_requests_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Request::parse(&data);
    }
}

#[test]
fn dead_destination_with_its_reason_and_time() {
    let now = Instant::now();
    let mut c = core(now);
    for i in 0..3 {
        message(
            &mut c,
            now,
            &[("smtp", "dead.example", "a@dead.example", i)],
        );
    }
    for _ in 0..3 {
        let e = c.agent_ready("smtp", now).unwrap();
        c.delivery_done(e, hop_failure("4.4.1", "refused"), now);
    }
    let clk = clock(now);
    let snap = c.snapshot(now);
    let st = Status::from_snapshot(&snap, &clk, ScanView::default(), ScanView::default());
    let smtp = &st.transports[0];
    assert_eq!(smtp.name, "smtp");
    let d = &smtp.destinations[0];
    assert_eq!(
        (d.name.as_str(), d.state.as_str()),
        ("dead.example", "dead")
    );
    let dead = d.dead.as_ref().unwrap();
    assert_eq!(dead.status, "4.4.1");
    assert_eq!(dead.reason, "delivery temporarily suspended: refused");
    assert_eq!(dead.until, Some(clk.unix_now() + 300));
    let text = text::status(&st);
    assert!(
        text.contains("smtp:dead.example")
            && text.contains("dead until ")
            && text.contains("(in 5m00s)"),
        "{text}"
    );
    // JSON round trip keeps the documented fields.
    let json = serde_json::to_string(&Answer::Status(st)).unwrap();
    assert!(json.contains("\"state\":\"dead\""), "{json}");
    let back: Answer = serde_json::from_str(&json).unwrap();
    assert!(matches!(back, Answer::Status(_)));
}

#[test]
fn explain_window_full_and_rate_delay() {
    let now = Instant::now();
    let mut c = core(now);
    // "slow": window 1, rate delay 1 s (see qmgr::tests::params_for).
    let m1 = message(&mut c, now, &[("slow", "s.example", "a@s.example", 1)]);
    let m2 = message(&mut c, now, &[("slow", "s.example", "b@s.example", 2)]);
    let m3 = message(&mut c, now, &[("slow", "s.example", "c@s.example", 3)]);
    let e = c.agent_ready("slow", now).unwrap();
    let clk = clock(now);
    let ids = |m: MessageId| {
        Some(
            if m == m1 {
                "M1"
            } else if m == m2 {
                "M2"
            } else {
                "M3"
            }
            .to_string(),
        )
    };
    let snap = c.snapshot(now);
    let x1 = Explain::in_core(&snap, m1, "M1", &clk, &addr, &ids);
    assert_eq!(x1.recipients[0].state, "delivering");
    let x3 = Explain::in_core(&snap, m3, "M3", &clk, &addr, &ids);
    let r = &x3.recipients[0];
    assert_eq!(r.address, "r3@x");
    assert_eq!(r.state, "window_full");
    assert_eq!((r.busy, r.window, r.ahead), (Some(1), Some(1), Some(1)));
    assert!(
        r.text.contains("behind 1 entry") && r.text.contains("window full (1 busy of 1)"),
        "{}",
        r.text
    );
    c.delivery_done(e, AgentReply::OK, now);
    let snap = c.snapshot(now);
    let x2 = Explain::in_core(&snap, m2, "M2", &clk, &addr, &ids);
    let r = &x2.recipients[0];
    assert_eq!(r.state, "rate_delay");
    assert_eq!(r.until, Some(clk.unix_now() + 1));
    let st = Status::from_snapshot(&snap, &clk, ScanView::default(), ScanView::default());
    // The summary (what the daemon answers status from) says the same.
    let summary = c.summary(now);
    assert!(summary.message_views.is_empty() && summary.jobs.is_empty());
    let from_summary =
        Status::from_snapshot(&summary, &clk, ScanView::default(), ScanView::default());
    assert_eq!(
        serde_json::to_string(&from_summary).unwrap(),
        serde_json::to_string(&st).unwrap()
    );
    let d = &st.transports[0].destinations[0];
    assert_eq!(d.state, "suspended");
    assert_eq!(d.next_slot, Some(clk.unix_now() + 1));
    assert!(text::status(&st).contains("next slot at"));
}

#[test]
fn utc_and_durations() {
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(1_800_000_000), "2027-01-15 08:00:00 UTC");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(short_duration(42), "42s");
    assert_eq!(short_duration(300), "5m00s");
    assert_eq!(short_duration(7260), "2h01m");
    assert_eq!(short_duration(-61), "-1m01s");
}

#[test]
fn explain_names_the_job_served_first() {
    let now = Instant::now();
    let mut c = core(now);
    let m1 = message(
        &mut c,
        now,
        &[
            ("smtp", "a.example", "x@a.example", 1),
            ("smtp", "b.example", "y@b.example", 2),
        ],
    );
    let m2 = message(&mut c, now, &[("smtp", "c.example", "z@c.example", 3)]);
    let _ = c.agent_ready("smtp", now).unwrap();
    let clk = clock(now);
    let ids = |m: MessageId| Some(if m == m1 { "M1" } else { "M2" }.to_string());
    let snap = c.snapshot(now);
    let x2 = Explain::in_core(&snap, m2, "M2", &clk, &addr, &ids);
    let r = &x2.recipients[0];
    assert_eq!(
        (r.state.as_str(), r.job.as_deref()),
        ("blocked", Some("M1")),
        "{r:?}"
    );
    assert!(
        r.text.contains("transport smtp serves job M1 first"),
        "{}",
        r.text
    );
    let text = text::explain(&x2, clk.unix_now());
    assert!(
        text.starts_with(
            "M2: active\n  r3@x: in active, in the todo list of smtp:c.example behind 0 entries"
        ),
        "{text}"
    );
}

#[test]
fn labels_qmgr_queues() {
    assert_eq!(
        destination_label("retry", "4.4.1 connect to x: refused"),
        "(deferred by qmgr: 4.4.1 connect to x: refused)"
    );
    assert_eq!(
        destination_label("error", "5.1.3 bad address syntax"),
        "(bounced by qmgr: 5.1.3 bad address syntax)"
    );
    assert_eq!(destination_label("error", "error.example"), "error.example");
    assert_eq!(destination_label("smtp", "4.4.1 x"), "4.4.1 x");
}

#[test]
fn retry_queues_are_labelled_for_what_they_are() {
    let now = Instant::now();
    let mut c = core(now);
    message(
        &mut c,
        now,
        &[("retry", "4.4.1 connect refused", "a@dead.example", 0)],
    );
    let snap = c.summary(now);
    let st = Status::from_snapshot(&snap, &clock(now), ScanView::default(), ScanView::default());
    let text = text::status(&st);
    assert!(
        text.contains("retry:(deferred by qmgr: 4.4.1 connec..."),
        "{text}"
    );
    // The JSON keeps the queue's name.
    assert_eq!(
        st.transports[0].destinations[0].name,
        "4.4.1 connect refused"
    );
}
