//! Faults of the peers a queue manager talks to, staged with the real
//! Postfix programs where possible (a delivery agent killed by pid in the
//! middle of a delivery), and with fakes served by the test where a real
//! Postfix cannot misbehave (tests/support/fake.rs: an agent that hangs
//! up, never announces itself, never reads, never answers, answers
//! garbage, half an answer, or slowly). Also trivial-rewrite down, slow
//! or answering garbage; bounce, defer and trace down; bounce answering
//! garbage or slowly (a fake that passes requests on to the real bounce
//! service); verify(8) down when qmgr records a probe's result itself,
//! and flush(8) down when it defers a fast_flush_domains recipient
//! itself; 2000 messages stuck behind a silent agent. Each test also runs
//! against Postfix's qmgr and oqmgr, which shows what Postfix does.

#[macro_use]
mod support;

use std::time::Duration;
use support::fake::{Behaviour, DELIVER_HELLO, DELIVER_OK};
use support::{sys, Instance, LogLine, Opts, Qmgr};

dropin_tests!(
    killed_agent_is_not_news_about_the_destination,
    agent_that_hangs_up_before_the_first_byte,
    agent_that_never_announces_itself,
    stalled_agent_that_never_reads,
    agent_that_never_answers,
    agent_that_closes_mid_reply,
    agent_that_stalls_mid_reply,
    agent_that_answers_garbage,
    agent_that_answers_slowly,
    trivial_rewrite_down,
    trivial_rewrite_down_longer_than_the_watchdog,
    trivial_rewrite_answers_garbage,
    trivial_rewrite_answers_slowly,
    bounce_service_down,
    defer_service_down,
    trace_service_down,
    bounce_service_answers_garbage,
    bounce_service_answers_slowly,
    verify_service_down,
    flush_service_down,
    memory_bounded_with_2000_stuck_messages,
);

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
    inst.log_caught_up();
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

// ---- fake delivery agents --------------------------------------------------

/// `qmgr_ipc_timeout` in the fake-agent tests, seconds.
const IPC: u64 = 2;

/// An instance whose route `fake.example` goes to transport `fake`, served
/// by the test (see tests/support/fake.rs), with qmgr_ipc_timeout = IPC.
fn fake_opts(name: &str, q: &Qmgr) -> Opts {
    Opts::new(name, q.clone())
        .transport("fake.example", "fake:")
        .main_cf("qmgr_ipc_timeout", &format!("{IPC}s"))
        .timeout(Duration::from_secs(60))
}

/// The queue manager's warnings, without the `warning: ` prefix.
fn qmgr_warnings(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.is_from("qmgr"))
        .filter_map(|l| l.text.strip_prefix("warning: ").map(str::to_string))
        .collect()
}

/// Other transports keep delivering: a message to discard.example is
/// delivered and removed.
fn others_keep_delivering(inst: &Instance) {
    let from = inst.local_addr("sender");
    let token = inst.unique_token("other");
    let id = inst.sendmail(&from, &["d@discard.example"], "other", &token);
    inst.wait_removed(&id);
}

/// Nothing is lost: `id` is still in the queue (deferred, or on its way).
fn still_queued(inst: &Instance, id: &str) {
    let listing = inst.queue_listing();
    inst.check(
        ["deferred", "active", "incoming"].iter().any(|q| {
            listing
                .get(*q)
                .is_some_and(|ids| ids.iter().any(|i| i == id))
        }),
        &format!("{id} still queued: {listing:?}"),
    );
}

/// Sends one message to the fake transport; returns its queue id.
fn send_to_fake(inst: &Instance, rcpts: &[&str]) -> String {
    let from = inst.local_addr("sender");
    let token = inst.unique_token("fake");
    inst.sendmail(&from, rcpts, "fake", &token)
}

/// Waits until `id` is in the deferred queue and returns the deferred
/// lines logged for it.
fn wait_deferred(inst: &Instance, id: &str) -> Vec<LogLine> {
    inst.wait_until(&format!("{id} in the deferred queue"), || {
        inst.queue_ids("deferred").iter().any(|i| i == id)
    });
    inst.log_caught_up();
    inst.lines_for(id)
        .into_iter()
        .filter(|l| l.status() == Some("deferred"))
        .collect()
}

/// Checks that the recipients of `id` were deferred with `reason` (each
/// once; dsn=4.3.0), by qmgr or by the `retry` transport Postfix routes a
/// dead transport's mail through.
fn check_deferred_with(inst: &Instance, id: &str, deferred: &[LogLine], n: usize, reason: &str) {
    let ok = deferred.len() == n
        && deferred
            .iter()
            .all(|l| l.field("dsn") == Some("4.3.0") && l.reason() == Some(reason));
    inst.check(
        ok,
        &format!(
            "{n} deferred lines for {id} with ({reason}), saw {}: first {:?}",
            deferred.len(),
            deferred.first().map(|l| &l.raw)
        ),
    );
}

/// An agent that hangs up before the first byte: Postfix reads that as an
/// empty announcement (attr_scan0 returns quietly) and its request's write
/// fails, which throttles the transport: the recipient is deferred with
/// "mail transport unavailable". No warning about the announcement.
fn agent_that_hangs_up_before_the_first_byte(q: Qmgr) {
    let inst = Instance::start(fake_opts("fakehangup", &q));
    let fake = inst.fake_peer("fake", Behaviour::HangUp);
    let id = send_to_fake(&inst, &["f@fake.example"]);
    let deferred = wait_deferred(&inst, &id);
    check_deferred_with(&inst, &id, &deferred, 1, "mail transport unavailable");
    let warnings = qmgr_warnings(&inst.log_lines());
    inst.check(
        warnings == ["write to process (fake): Broken pipe"],
        &format!("one warning, the failed write: {warnings:?}"),
    );
    inst.check(fake.connections() >= 1, "the fake was connected to");
    // The transport is throttled (transport_retry_time, 60 s): the next
    // message is deferred the same way without a new connection.
    let before = fake.connections();
    let next = send_to_fake(&inst, &["g@fake.example"]);
    let deferred = wait_deferred(&inst, &next);
    check_deferred_with(&inst, &next, &deferred, 1, "mail transport unavailable");
    inst.check(
        fake.connections() == before,
        &format!(
            "no new connection to a throttled transport: {} then {}",
            before,
            fake.connections()
        ),
    );
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

/// An agent that accepts the connection and never announces itself:
/// Postfix's qmgr waits daemon_timeout, then ends with `fatal: timeout
/// connecting to transport: fake` (master starts a new one, the message
/// stays queued). rqmgr logs the same words as a warning and carries on:
/// the transport is throttled, the recipient deferred with "mail transport
/// unavailable".
fn agent_that_never_announces_itself(q: Qmgr) {
    let rqmgr = q == Qmgr::Rqmgr;
    let inst = Instance::start(
        fake_opts("fakesilent", &q)
            .qmgr_args(&["-o", "daemon_timeout=3s"])
            .main_cf("service_throttle_time", "1s")
            .fail_fast(rqmgr),
    );
    let fake = inst.fake_peer("fake", Behaviour::Silent);
    let id = send_to_fake(&inst, &["f@fake.example"]);
    if rqmgr {
        let deferred = wait_deferred(&inst, &id);
        check_deferred_with(&inst, &id, &deferred, 1, "mail transport unavailable");
        let warnings = qmgr_warnings(&inst.log_lines());
        inst.check(
            warnings == ["timeout connecting to transport: fake"],
            &format!("one warning, the timeout: {warnings:?}"),
        );
    } else {
        inst.wait_for_line("qmgr's fatal timeout", |l| {
            l.is_from("qmgr") && l.text == "fatal: timeout connecting to transport: fake"
        });
    }
    inst.check(fake.connections() >= 1, "the fake was connected to");
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

/// Recipients with long addresses, so that one delivery request is larger
/// than a socket buffer holds (about 330 kB).
fn long_recipients(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("r{i:04}-{}@fake.example", "x".repeat(240)))
        .collect()
}

/// A stalled agent: it announces itself, then never reads (nor answers).
/// A request larger than the socket buffer cannot be written; each write
/// times out after qmgr_ipc_timeout, the transport is throttled and the
/// recipients are deferred with "mail transport unavailable".
fn stalled_agent_that_never_reads(q: Qmgr) {
    const N: usize = 400;
    let inst = Instance::start(
        fake_opts("fakestall", &q).main_cf("fake_destination_recipient_limit", "1000"),
    );
    let fake = inst.fake_peer(
        "fake",
        Behaviour::NeverRead {
            hello: DELIVER_HELLO.to_vec(),
        },
    );
    let rcpts = long_recipients(N);
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let id = send_to_fake(&inst, &rcpts);
    inst.wait_progress("every recipient deferred", || {
        let n = inst
            .lines_for(&id)
            .iter()
            .filter(|l| l.status() == Some("deferred"))
            .count();
        (n >= N).then_some(()).ok_or(format!("{n} deferred"))
    });
    let deferred = wait_deferred(&inst, &id);
    check_deferred_with(&inst, &id, &deferred, N, "mail transport unavailable");
    let warnings = qmgr_warnings(&inst.log_lines());
    inst.check(
        warnings == ["write to process (fake): Connection timed out"],
        &format!("one warning, the timed-out write: {warnings:?}"),
    );
    inst.check(fake.connections() >= 1, "the fake was connected to");
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

/// An agent that reads the request and never answers: Postfix's qmgr
/// waits daemon_timeout, then ends with `fatal: ID: timeout receiving
/// delivery status from transport: fake`. rqmgr logs the same words as a
/// warning and defers the recipient as for a crashed agent ("unknown mail
/// transport error").
fn agent_that_never_answers(q: Qmgr) {
    let rqmgr = q == Qmgr::Rqmgr;
    let inst = Instance::start(
        fake_opts("fakemute", &q)
            .qmgr_args(&["-o", "daemon_timeout=3s"])
            .main_cf("service_throttle_time", "1s")
            .fail_fast(rqmgr),
    );
    let fake = inst.fake_peer(
        "fake",
        Behaviour::Reply {
            hello: DELIVER_HELLO.to_vec(),
            delay: Duration::ZERO,
            reply: Vec::new(),
            close: false,
        },
    );
    let id = send_to_fake(&inst, &["f@fake.example"]);
    let timeout = format!("{id}: timeout receiving delivery status from transport: fake");
    if rqmgr {
        let deferred = wait_deferred(&inst, &id);
        check_deferred_with(&inst, &id, &deferred, 1, "unknown mail transport error");
        let warnings = qmgr_warnings(&inst.log_lines());
        inst.check(
            warnings == [timeout.clone()],
            &format!("one warning, the timeout: {warnings:?}"),
        );
    } else {
        let fatal = format!("fatal: {timeout}");
        inst.wait_for_line("qmgr's fatal timeout", |l| {
            l.is_from("qmgr") && l.text == fatal
        });
    }
    inst.check(!fake.requests().is_empty(), "the fake read a request");
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

/// The first attributes of a reply, cut inside the hop status.
const HALF_REPLY: &[u8] = b"status\0\0diag_type\0";

/// Checks a delivery whose reply was unusable: Postfix's words for it
/// (`warning`, then `private/fake socket: malformed response`), the
/// message deferred; rqmgr also logs the recipient deferred with "unknown
/// mail transport error" (Postfix gives no reason).
fn check_malformed(q: &Qmgr, inst: &Instance, id: &str, warning: &str) {
    let deferred = wait_deferred(inst, id);
    if *q == Qmgr::Rqmgr {
        check_deferred_with(inst, id, &deferred, 1, "unknown mail transport error");
    } else {
        inst.check(
            deferred.is_empty(),
            &format!("Postfix logs no reason for a failed reply: {deferred:?}"),
        );
    }
    let warnings = qmgr_warnings(&inst.log_lines());
    inst.check(
        warnings
            == [
                warning.to_string(),
                "private/fake socket: malformed response".to_string(),
            ],
        &format!("Postfix's warnings: {warnings:?}"),
    );
}

/// An agent that hangs up in the middle of its reply.
fn agent_that_closes_mid_reply(q: Qmgr) {
    let inst = Instance::start(fake_opts("fakecut", &q));
    let _fake = inst.fake_peer("fake", Behaviour::agent_reply(HALF_REPLY));
    let id = send_to_fake(&inst, &["f@fake.example"]);
    check_malformed(
        &q,
        &inst,
        &id,
        "premature end-of-input on private/fake socket while reading input attribute value",
    );
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

/// An agent that sends half its reply and then nothing: the next read
/// times out after qmgr_ipc_timeout (not daemon_timeout).
fn agent_that_stalls_mid_reply(q: Qmgr) {
    let inst = Instance::start(fake_opts("fakehalf", &q));
    let _fake = inst.fake_peer(
        "fake",
        Behaviour::Reply {
            hello: DELIVER_HELLO.to_vec(),
            delay: Duration::ZERO,
            reply: HALF_REPLY.to_vec(),
            close: false,
        },
    );
    let id = send_to_fake(&inst, &["f@fake.example"]);
    check_malformed(
        &q,
        &inst,
        &id,
        "timeout on private/fake socket while reading input attribute value",
    );
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

/// An agent that answers with an attribute list of another protocol.
fn agent_that_answers_garbage(q: Qmgr) {
    let inst = Instance::start(fake_opts("fakegarbage", &q));
    let fake = inst.fake_peer("fake", Behaviour::agent_reply(b"garbage\0x\0\0"));
    let id = send_to_fake(&inst, &["f@fake.example"]);
    let bad = "unexpected attribute garbage from private/fake socket (expecting: status)";
    check_malformed(&q, &inst, &id, bad);
    // Neither the transport nor the destination is throttled for it: the
    // next message goes to a new agent connection at once.
    let next = send_to_fake(&inst, &["g@fake.example"]);
    wait_deferred(&inst, &next);
    inst.check(
        fake.requests().len() == 2,
        "a second request, to a new agent",
    );
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

/// An agent that answers after more than qmgr_ipc_timeout: the reply is
/// waited for (up to daemon_timeout), the message is done, no warning.
fn agent_that_answers_slowly(q: Qmgr) {
    let inst = Instance::start(fake_opts("fakeslow", &q));
    let fake = inst.fake_peer(
        "fake",
        Behaviour::Reply {
            hello: DELIVER_HELLO.to_vec(),
            delay: Duration::from_secs(2 * IPC),
            reply: DELIVER_OK.to_vec(),
            close: true,
        },
    );
    let id = send_to_fake(&inst, &["f@fake.example"]);
    inst.wait_removed(&id);
    let warnings = qmgr_warnings(&inst.log_lines());
    inst.check(warnings.is_empty(), &format!("no warning: {warnings:?}"));
    inst.check(fake.requests().len() == 1, "one request");
    inst.wait_queue_empty();
}

// ---- trivial-rewrite -------------------------------------------------------

/// trivial-rewrite is down (qmgr's rewrite_service_name names a socket
/// that does not exist): the queue manager says so in Postfix's words
/// (`connect #N to subsystem private/rwdown: No such file or directory`,
/// every 10 s) and the mail waits; once the service is back (a symlink to
/// the real one), the message is delivered.
fn trivial_rewrite_down(q: Qmgr) {
    let inst = Instance::start(
        Opts::new("rwdown", q)
            .qmgr_args(&["-o", "rewrite_service_name=rwdown"])
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("rwdown");
    let id = inst.sendmail(&from, &["d@discard.example"], "rwdown", &token);
    let first = "connect #1 to subsystem private/rwdown: No such file or directory";
    inst.wait_for_line("the first failed connect", |l| {
        l.is_from("qmgr") && l.text.strip_prefix("warning: ") == Some(first)
    });
    still_queued(&inst, &id);
    std::os::unix::fs::symlink("rewrite", inst.spool().join("private/rwdown"))
        .expect("symlink private/rwdown");
    inst.wait_removed(&id);
    let warnings = qmgr_warnings(&inst.log_lines());
    let expected: Vec<String> = (1..=warnings.len())
        .map(|n| format!("connect #{n} to subsystem private/rwdown: No such file or directory"))
        .collect();
    inst.check(
        warnings == expected,
        &format!("only the numbered connect warnings: {warnings:?}"),
    );
}

/// trivial-rewrite stays down longer than qmgr_daemon_timeout (3 s here,
/// against 10 s between connects): Postfix's qmgr blocks in
/// mail_connect_wait (the watchdog's alarms cut its sleeps short) and its
/// watchdog ends it (`fatal: watchdog timeout`; master starts another at
/// the next trigger, here `postqueue -f`). rqmgr keeps trying, 10 s
/// apart, and stays up: no refused connection is fatal to it. Either way
/// the message waits and is delivered once the service is back.
fn trivial_rewrite_down_longer_than_the_watchdog(q: Qmgr) {
    let rqmgr = q == Qmgr::Rqmgr;
    let inst = Instance::start(
        Opts::new("rwwatchdog", q)
            .qmgr_args(&[
                "-o",
                "rewrite_service_name=rwdown",
                "-o",
                "qmgr_daemon_timeout=3s",
            ])
            .main_cf("service_throttle_time", "1s")
            .fail_fast(rqmgr)
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("rwwatchdog");
    let id = inst.sendmail(&from, &["d@discard.example"], "rwwatchdog", &token);
    if rqmgr {
        let second = "connect #2 to subsystem private/rwdown: No such file or directory";
        inst.wait_for_line("the second failed connect, 10 s after the first", |l| {
            l.is_from("qmgr") && l.text.strip_prefix("warning: ") == Some(second)
        });
        let lines = inst.log_lines();
        inst.check(
            !lines
                .iter()
                .any(|l| l.is_from("qmgr") && l.text.starts_with("fatal:")),
            "rqmgr did not end",
        );
    } else {
        inst.wait_for_line("Postfix's watchdog", |l| {
            l.is_from("qmgr") && l.text == "fatal: watchdog timeout"
        });
    }
    still_queued(&inst, &id);
    std::os::unix::fs::symlink("rewrite", inst.spool().join("private/rwdown"))
        .expect("symlink private/rwdown");
    inst.postqueue_f();
    inst.wait_removed(&id);
}

/// A trivial-rewrite served by the test (resolving everything to
/// `discard`), as qmgr's rewrite_service_name `fakerw`.
fn fake_rewrite(inst: &Instance, garbage_replies: usize, slow: usize) -> support::fake::FakePeer {
    inst.fake_peer(
        "fakerw",
        Behaviour::Rewrite {
            garbage_replies,
            garbage: b"garbage\0x\0\0".to_vec(),
            slow,
            delay: Duration::from_secs(2 * IPC),
        },
    )
}

fn rewrite_opts(name: &str, q: &Qmgr) -> Opts {
    Opts::new(name, q.clone())
        .qmgr_args(&["-o", "rewrite_service_name=fakerw"])
        .main_cf("qmgr_ipc_timeout", &format!("{IPC}s"))
        .timeout(Duration::from_secs(60))
}

/// trivial-rewrite answers garbage twice: attr_scan0's warning each time,
/// `problem talking to service` for the second failure in a row (the
/// first could be a stale connection), a retry a second later, then the
/// message is resolved and delivered.
fn trivial_rewrite_answers_garbage(q: Qmgr) {
    let inst = Instance::start(rewrite_opts("rwgarbage", &q));
    let fake = fake_rewrite(&inst, 2, 0);
    let from = inst.local_addr("sender");
    let token = inst.unique_token("rwgarbage");
    let id = inst.sendmail(&from, &["g@elsewhere.example"], "rwgarbage", &token);
    inst.wait_removed(&id);
    let warnings = qmgr_warnings(&inst.log_lines());
    let bad = "unexpected attribute garbage from private/fakerw socket (expecting: flags)";
    inst.check(
        warnings
            == [
                bad.to_string(),
                bad.to_string(),
                // The second failure in a row is reported, with Postfix's
                // %m for "no error number".
                "problem talking to service fakerw: Application error".to_string(),
            ],
        &format!("Postfix's warnings: {warnings:?}"),
    );
    inst.check(fake.requests().len() >= 3, "three requests");
}

/// trivial-rewrite answers the first request after more than
/// qmgr_ipc_timeout: the read times out before the first byte (no
/// attr_scan0 warning, but a timeout is always reported), the request is
/// retried, the message delivered.
fn trivial_rewrite_answers_slowly(q: Qmgr) {
    let inst = Instance::start(rewrite_opts("rwslow", &q));
    let fake = fake_rewrite(&inst, 0, 1);
    let from = inst.local_addr("sender");
    let token = inst.unique_token("rwslow");
    let id = inst.sendmail(&from, &["s@elsewhere.example"], "rwslow", &token);
    inst.wait_removed(&id);
    let warnings = qmgr_warnings(&inst.log_lines());
    inst.check(
        warnings == ["problem talking to service fakerw: Connection timed out"],
        &format!("Postfix's warnings: {warnings:?}"),
    );
    inst.check(fake.requests().len() >= 2, "two requests");
}

// ---- bounce, defer, trace ----------------------------------------------------

/// An instance whose queue manager (only) talks to `service` as its
/// `param` (e.g. bounce_service_name): the agents still use the real one.
fn qmgr_service_opts(name: &str, q: &Qmgr, param: &str, service: &str) -> Opts {
    Opts::new(name, q.clone())
        .qmgr_args(&["-o", &format!("{param}={service}")])
        .timeout(Duration::from_secs(60))
}

/// An instance whose queue manager (only) talks to a service that does
/// not exist, `gone`, as its `param`.
fn service_down_opts(name: &str, q: &Qmgr, param: &str) -> Opts {
    qmgr_service_opts(name, q, param, "gone")
}

/// Checks what an admin sees when qmgr's `what` request failed: Postfix's
/// `ID: status=deferred (WHAT failed)`, the message kept in deferred, and
/// other mail still delivered; the queue manager's only warnings are
/// `warnings`.
fn check_notice_failed(inst: &Instance, id: &str, what: &str, warnings: &[&str]) {
    let want = format!("status=deferred ({what} failed)");
    inst.wait_for_line(&format!("qmgr to log `{id}: {want}`"), |l| {
        l.is_from("qmgr") && l.queue_id() == Some(id) && l.body() == want
    });
    inst.wait_until(&format!("{id} in the deferred queue"), || {
        inst.queue_ids("deferred").iter().any(|i| i == id)
    });
    inst.log_caught_up();
    inst.check(
        !inst.lines_for(id).iter().any(|l| l.is_removed()),
        "the message was not removed",
    );
    let seen = qmgr_warnings(&inst.log_lines());
    inst.check(
        seen == warnings,
        &format!("Postfix's warnings {warnings:?}, saw {seen:?}"),
    );
    others_keep_delivering(inst);
    still_queued(inst, id);
}

/// The bounce service is down for qmgr when a message has bounced: the
/// non-delivery notice cannot be sent, so the message is deferred (its
/// bounce log kept) instead of removed.
fn bounce_service_down(q: Qmgr) {
    let inst = Instance::start(service_down_opts("bouncedown", &q, "bounce_service_name"));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("bouncedown");
    let id = inst.sendmail(&from, &["x@error.example"], "bouncedown", &token);
    check_notice_failed(&inst, &id, "bounce", &[]);
    inst.check(
        inst.queue_ids("bounce").iter().any(|i| i == &id),
        "the bounce log is kept",
    );
}

/// The defer service is down for qmgr when a deferred message expires
/// (maximal_queue_lifetime = 0): the notice cannot be sent, the message
/// stays deferred.
fn defer_service_down(q: Qmgr) {
    let inst = Instance::start(
        service_down_opts("deferdown", &q, "defer_service_name")
            .main_cf("maximal_queue_lifetime", "0")
            .main_cf("bounce_queue_lifetime", "0"),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("deferdown");
    let id = inst.sendmail(&from, &["x@closed.example"], "deferdown", &token);
    check_notice_failed(&inst, &id, "bounce", &[]);
}

/// The trace service is down for qmgr when a message asked for a delivery
/// report (sendmail -v): the report cannot be sent, the message is
/// deferred although its recipient was delivered.
fn trace_service_down(q: Qmgr) {
    let inst = Instance::start(service_down_opts("tracedown", &q, "trace_service_name"));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("tracedown");
    let text = inst.message_text(&from, &["d@discard.example"], "tracedown", &token);
    let id = inst.sendmail_with(&["-v"], &from, &["d@discard.example"], &text, &token);
    check_notice_failed(&inst, &id, "trace", &[]);
}

/// A bounce(8) served by the test as qmgr's bounce_service_name
/// `fakebounce`: it passes requests on to the real bounce service, except
/// that the first `garbage_replies` are answered with garbage, and the
/// others `delay` late.
fn fake_bounce(
    inst: &Instance,
    garbage_replies: usize,
    delay: Duration,
) -> support::fake::FakePeer {
    inst.fake_peer(
        "fakebounce",
        Behaviour::Bounce {
            upstream: inst.spool().join("private/bounce"),
            garbage_replies,
            garbage: b"garbage\0x\0\0".to_vec(),
            delay,
        },
    )
}

/// Sends a message to error.example, which the error agent bounces (with
/// the real bounce service); returns its queue id and token.
fn send_bouncing(inst: &Instance, what: &str) -> (String, String) {
    let from = inst.local_addr("sender");
    let token = inst.unique_token(what);
    (
        inst.sendmail(&from, &["x@error.example"], what, &token),
        token,
    )
}

/// The message is gone with its bounce log, and the sender has the
/// non-delivery notice for the message marked `token`.
fn check_notice_returned(inst: &Instance, id: &str, token: &str) {
    inst.wait_removed(id);
    inst.wait_until("the non-delivery notice in the sender's mailbox", || {
        let mbox = inst.mailbox("sender");
        mbox.contains("Undelivered Mail Returned to Sender") && mbox.contains(token)
    });
    inst.check(
        !inst.queue_ids("bounce").iter().any(|i| i == id),
        "the bounce log is gone",
    );
    inst.wait_queue_empty();
}

/// The bounce service answers qmgr's request for the non-delivery notice
/// with garbage: attr_scan0's warning, the message deferred with its
/// bounce log kept (`bounce failed`), as for a service that is down. On
/// the next try (`postqueue -f`) the service answers and the notice goes
/// out.
fn bounce_service_answers_garbage(q: Qmgr) {
    let inst = Instance::start(qmgr_service_opts(
        "bouncegarbage",
        &q,
        "bounce_service_name",
        "fakebounce",
    ));
    let fake = fake_bounce(&inst, 1, Duration::ZERO);
    let (id, token) = send_bouncing(&inst, "bouncegarbage");
    let bad = "unexpected attribute garbage from private/fakebounce socket (expecting: status)";
    check_notice_failed(&inst, &id, "bounce", &[bad]);
    inst.check(
        inst.queue_ids("bounce").iter().any(|i| i == &id),
        "the bounce log is kept",
    );
    inst.postqueue_f();
    check_notice_returned(&inst, &id, &token);
    inst.check(fake.requests().len() == 2, "two requests to the fake");
    let warnings = qmgr_warnings(&inst.log_lines());
    inst.check(warnings == [bad], &format!("no new warning: {warnings:?}"));
}

/// How late the slow bounce service answers: longer than ipc_timeout
/// (IPC here) and qmgr_ipc_timeout.
const BOUNCE_DELAY: Duration = Duration::from_secs(4 * IPC);

/// The bounce service answers late (longer than ipc_timeout): the queue
/// manager waits for it (abounce's own 1000 s limit) without blocking
/// other mail, then removes the message; no warning, nothing deferred.
fn bounce_service_answers_slowly(q: Qmgr) {
    let inst = Instance::start(
        qmgr_service_opts("bounceslow", &q, "bounce_service_name", "fakebounce")
            .qmgr_args(&["-o", &format!("ipc_timeout={IPC}s")])
            .main_cf("qmgr_ipc_timeout", &format!("{IPC}s")),
    );
    let fake = fake_bounce(&inst, 0, BOUNCE_DELAY);
    let (id, token) = send_bouncing(&inst, "bounceslow");
    inst.wait_until("the request at the fake bounce service", || {
        !fake.requests().is_empty()
    });
    others_keep_delivering(&inst);
    inst.check(
        !inst.lines_for(&id).iter().any(|l| l.is_removed()),
        "the message waits for the late answer",
    );
    still_queued(&inst, &id);
    check_notice_returned(&inst, &id, &token);
    inst.check(
        !inst
            .lines_for(&id)
            .iter()
            .any(|l| l.body().starts_with("status=deferred")),
        "the message was not deferred",
    );
    let warnings = qmgr_warnings(&inst.log_lines());
    inst.check(warnings.is_empty(), &format!("no warning: {warnings:?}"));
    inst.check(fake.requests().len() == 1, "one request");
}

// ---- verify, flush -------------------------------------------------------------

/// Route `nosuch.example` goes to a transport without an agent, and
/// there is no `retry` service, so the queue manager defers its mail
/// itself (`qmgr_defer_recipient` -> `defer_append`, which reports a
/// probe to verify(8) and other mail's domain to flush(8)); the queue
/// manager's `param` names a service that does not exist.
fn own_deferral_opts(name: &str, q: &Qmgr, param: &str) -> Opts {
    service_down_opts(name, q, param)
        .omit_service("retry")
        .transport("nosuch.example", "nosuch:")
}

/// The queue manager's warnings for the missing transport, and for the
/// missing `retry` it then routes the mail through.
const NO_TRANSPORT: [&str; 2] = [
    "connect to transport private/nosuch: No such file or directory",
    "connect to transport private/retry: No such file or directory",
];

/// verify(8) is down for qmgr when it must record a probe's result
/// itself: like trivial-rewrite, the verify client keeps connecting, 10 s
/// apart (`connect #N to subsystem private/gone: ...`; Postfix's qmgr
/// blocks there) and the probe waits. Once the service is back (a
/// symlink to the real one) the result is recorded
/// (`status=undeliverable`), SMTP gets it back, the mail sent meanwhile
/// is delivered and the queue is empty.
fn verify_service_down(q: Qmgr) {
    let inst = Instance::start(
        own_deferral_opts("verifydown", &q, "address_verify_service_name").main_cf(
            "smtpd_recipient_restrictions",
            "reject_unverified_recipient",
        ),
    );
    let from = inst.local_addr("sender");
    let probe = "p@nosuch.example";
    let rcpt = |code: u16| {
        let mut smtp = inst.smtp();
        let reply = smtp
            .expect(Some(&format!("MAIL FROM:<{from}>")), 250)
            .and_then(|_| smtp.expect(Some(&format!("RCPT TO:<{probe}>")), code));
        smtp.quit();
        reply
    };
    let first = rcpt(450).unwrap_or_else(|e| inst.fail(&e));
    inst.check(
        first.text.contains("unverified address"),
        &format!("the first RCPT waits for the probe: {}", first.text),
    );
    let connect1 = "connect #1 to subsystem private/gone: No such file or directory";
    inst.wait_for_line("the first failed connect to verify", |l| {
        l.is_from("qmgr") && l.text.strip_prefix("warning: ") == Some(connect1)
    });
    let token = inst.unique_token("verifydown");
    let other = inst.sendmail(&from, &["d@discard.example"], "verifydown", &token);
    let queued: usize = inst.queue_listing().values().map(Vec::len).sum();
    inst.check(queued >= 1, "the probe is still queued");
    std::os::unix::fs::symlink("verify", inst.spool().join("private/gone"))
        .expect("symlink private/gone");
    let line = inst.wait_for_line("the probe's result", |l| {
        l.field("to") == Some(format!("<{probe}>").as_str()) && l.status() == Some("undeliverable")
    });
    inst.check(
        line.is_from("qmgr") && line.reason() == Some("mail transport unavailable"),
        &format!("qmgr records the probe: {}", line.raw),
    );
    inst.wait_removed(&other);
    inst.wait_queue_empty();
    inst.wait_progress(
        "verify(8) to answer with the recorded reason",
        || match rcpt(450) {
            Ok(r) if r.text.contains("mail transport unavailable") => Ok(()),
            Ok(r) => Err(r.text),
            Err(e) => Err(e),
        },
    );
    let warnings = qmgr_warnings(&inst.log_lines());
    let mut expected: Vec<String> = NO_TRANSPORT.iter().map(|w| w.to_string()).collect();
    expected.extend(
        (1..warnings.len().saturating_sub(1))
            .map(|n| format!("connect #{n} to subsystem private/gone: No such file or directory")),
    );
    inst.check(
        warnings == expected,
        &format!("the transport's and the numbered connect warnings: {warnings:?}"),
    );
}

/// flush(8) is down for qmgr when it defers a recipient of a
/// fast_flush_domains site itself: `defer_append`'s flush_add fails with
/// mail_command_client's warning (`connect to public/gone: ...`) and
/// `ID: gone service failure`; the recipient is still deferred, the
/// message kept, other mail delivered.
fn flush_service_down(q: Qmgr) {
    let inst = Instance::start(
        own_deferral_opts("flushdown", &q, "flush_service_name")
            .main_cf("fast_flush_domains", "nosuch.example"),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("flushdown");
    let id = inst.sendmail(&from, &["u@nosuch.example"], "flushdown", &token);
    let deferred = wait_deferred(&inst, &id);
    check_deferred_with(&inst, &id, &deferred, 1, "mail transport unavailable");
    let warnings = qmgr_warnings(&inst.log_lines());
    let mut expected: Vec<String> = NO_TRANSPORT.iter().map(|w| w.to_string()).collect();
    expected.push("connect to public/gone: No such file or directory".to_string());
    expected.push(format!("{id}: gone service failure"));
    inst.check(
        warnings == expected,
        &format!("Postfix's warnings {expected:?}, saw {warnings:?}"),
    );
    others_keep_delivering(&inst);
    still_queued(&inst, &id);
}

// ---- memory ------------------------------------------------------------------

/// Peak resident memory (VmHWM) of a process, KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Most peak memory the queue manager may use for 2000 stuck messages,
/// KiB. Measured on 2026-12-02: rqmgr 10.5 MiB, Postfix's qmgr 11.0 MiB,
/// oqmgr 9.5 MiB.
const STUCK_MEMORY_LIMIT_KIB: u64 = 32 * 1024;

/// 2000 messages stuck behind an agent that takes requests and never
/// answers: they all wait in the active queue, the queue manager's peak
/// memory stays under STUCK_MEMORY_LIMIT_KIB, other mail is still
/// delivered, and nothing is lost.
fn memory_bounded_with_2000_stuck_messages(q: Qmgr) {
    const N: usize = 2000;
    let inst = Instance::start(fake_opts("fakestuck", &q).timeout(Duration::from_secs(300)));
    let fake = inst.fake_peer(
        "fake",
        Behaviour::Reply {
            hello: DELIVER_HELLO.to_vec(),
            delay: Duration::ZERO,
            reply: Vec::new(),
            close: false,
        },
    );
    let from = inst.local_addr("sender");
    let n = N.to_string();
    inst.smtp_source(&["-s", "5", "-m", &n, "-f", &from, "-t", "s@fake.example"]);
    inst.wait_progress(&format!("{N} messages in active"), || {
        let active = inst.queue_ids("active").len();
        let incoming = inst.queue_ids("incoming").len();
        (active >= N && incoming == 0)
            .then_some(())
            .ok_or(format!("{active} in active, {incoming} in incoming"))
    });
    others_keep_delivering(&inst);
    let pid = sys::instance_processes(&inst.etc())
        .into_iter()
        .find(|p| p.cmdline.split(' ').next() == Some("qmgr"))
        .map(|p| p.pid);
    let peak = pid.and_then(peak_rss_kib);
    eprintln!(
        "{}: qmgr peak memory with {N} stuck messages: {peak:?} KiB",
        q.tag()
    );
    inst.check(
        peak.is_some_and(|k| k < STUCK_MEMORY_LIMIT_KIB),
        &format!("qmgr's peak memory {peak:?} KiB < {STUCK_MEMORY_LIMIT_KIB} KiB"),
    );
    inst.check(
        !fake.requests().is_empty(),
        "deliveries are stuck at the fake",
    );
    let listing = inst.queue_listing();
    let queued: usize = listing.values().map(Vec::len).sum();
    inst.check(queued == N, &format!("{N} messages queued: {queued}"));
}
