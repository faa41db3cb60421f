//! Faults of the peers a queue manager talks to, staged with the real
//! Postfix programs where possible: a delivery agent killed by pid in the
//! middle of a delivery. Each test also runs against Postfix's qmgr and
//! oqmgr, which shows what Postfix does.

#[macro_use]
mod support;

use std::time::Duration;
use support::{sys, Instance, Opts, Qmgr};

dropin_tests!(killed_agent_is_not_news_about_the_destination);

/// Seconds the slow sink waits before it answers DATA.
const SLOW: u32 = 3;

/// A delivery agent killed in the middle of a delivery: Postfix 3.7
/// throttles neither the destination nor the transport (the next entry
/// goes to a fresh agent; HISTORY 20240209), so at a concurrency limit of 1
/// the messages behind go out at once instead of through `retry` for
/// minutes. The killed delivery's message is deferred; rqmgr also logs its
/// recipient as deferred with "unknown mail transport error", so that
/// `postqueue -p` says why (Postfix gives no reason).
fn killed_agent_is_not_news_about_the_destination(q: Qmgr) {
    let rqmgr = q == Qmgr::Rqmgr;
    let inst = Instance::start(
        Opts::new("agentkill", q)
            .slow_sink(SLOW)
            .main_cf("smtp_destination_concurrency_limit", "1")
            .main_cf("destination_concurrency_feedback_debug", "yes")
            // master(8) throttles the smtp service when its first process
            // dies ("bad command startup"): for a second, not a minute.
            .main_cf("service_throttle_time", "1s")
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let ids: Vec<(String, String)> = (0..3)
        .map(|i| {
            let rcpt = format!("k{i}@slow.example");
            let token = inst.unique_token("kill");
            (inst.sendmail(&from, &[&rcpt], "kill", &token), rcpt)
        })
        .collect();
    let sink = inst.slow_sink.as_ref().expect("slow sink");
    inst.wait_until("a delivery in progress at the slow sink", || {
        sink.message_count() >= 1
    });
    let agents: Vec<u32> = sys::instance_processes(&inst.etc())
        .into_iter()
        .filter(|p| p.cmdline.split(' ').next() == Some("smtp"))
        .map(|p| p.pid)
        .collect();
    inst.check(!agents.is_empty(), "an smtp agent process to kill");
    for pid in &agents {
        sys::signal_pid(*pid, "KILL");
    }
    // The two others are delivered, by fresh agents, without a detour.
    inst.wait_progress("two messages delivered after the kill", || {
        let sent = ids
            .iter()
            .filter(|(id, _)| {
                inst.lines_for(id)
                    .iter()
                    .any(|l| l.status() == Some("sent"))
            })
            .count();
        (sent == 2).then_some(()).ok_or(format!("{sent} sent"))
    });
    let (killed, rcpt) = ids
        .iter()
        .find(|(id, _)| {
            !inst
                .lines_for(id)
                .iter()
                .any(|l| l.status() == Some("sent"))
        })
        .expect("the killed delivery's message");
    inst.wait_until("the killed delivery's message in deferred", || {
        inst.queue_ids("deferred").contains(killed)
    });
    let lines = inst.log_lines();
    inst.check(
        !lines
            .iter()
            .any(|l| l.body().starts_with("qmgr_queue_throttle:")),
        "the destination was not throttled",
    );
    inst.check(
        !lines.iter().any(|l| {
            l.reason()
                .is_some_and(|r| r.contains("temporarily suspended"))
        }),
        "no recipient deferred as \"delivery temporarily suspended\"",
    );
    let deferred: Vec<_> = inst
        .lines_for(killed)
        .into_iter()
        .filter(|l| l.status() == Some("deferred"))
        .collect();
    if rqmgr {
        let ok = deferred.len() == 1
            && deferred[0].field("to") == Some(format!("<{rcpt}>").as_str())
            && deferred[0].field("dsn") == Some("4.3.0")
            && deferred[0].reason() == Some("unknown mail transport error");
        inst.check(
            ok,
            &format!("one deferred line with the reason: {deferred:?}"),
        );
        let queue = inst.postqueue_p();
        inst.check(
            queue.contains("unknown mail transport error"),
            &format!("postqueue -p says why:\n{queue}"),
        );
    } else {
        inst.check(
            deferred.is_empty(),
            &format!("Postfix logs no reason for a crashed delivery: {deferred:?}"),
        );
    }
}
