//! Acceptance tests: rqmgr must behave like Postfix's qmgr as an
//! administrator sees it: mail arrives, the log says so, the queue ends up
//! empty, nothing is lost or duplicated.
//!
//! Every test runs once per queue manager: `rqmgr::<test>`,
//! `postfix_qmgr::<test>` and `postfix_oqmgr::<test>` (the last two prove the
//! test itself against Postfix's own queue managers). Each starts its own
//! private Postfix instance (see tests/support/mod.rs); they need root and
//! Postfix installed (.ci/setup-postfix).

#[macro_use]
mod support;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use support::{distinct_ids, sys, Instance, LogLine, Opts, Qmgr};

dropin_tests!(
    delivers_to_discard,
    delivers_to_local_mailbox,
    delivers_via_smtp_to_sink,
    bounces_to_sender_mailbox,
    defers_and_retries_on_flush,
    delivers_mail_piled_up_while_qmgr_was_off,
    delivers_mail_left_in_active_at_startup,
    moves_damaged_files_to_corrupt,
    delivers_200_messages_from_smtp_source,
    reload_while_deferred_then_flush_retries,
);

/// (a) discard(8): status=sent, `(queue active)`, `removed`, queue empty.
fn delivers_to_discard(q: Qmgr) {
    let inst = Instance::start(Opts::new("discard", q));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("discard");
    let rcpt = "user@discard.example";
    let id = inst.send_smtp(&from, &[rcpt], "discard test", &token);
    inst.wait_removed(&id);
    let lines = inst.assert_delivered(&id, &from, "discard", &[rcpt]);
    let sent = lines.iter().find(|l| l.is_delivery()).unwrap();
    inst.check(
        sent.field("relay") == Some("none") && sent.reason() == Some("discard.example"),
        &format!("discard line says relay=none (discard.example): {sent}"),
    );
    inst.wait_queue_empty();
    let listing = inst.postqueue_p();
    inst.check(
        listing.contains("Mail queue is empty"),
        &format!("postqueue -p says the queue is empty: {listing}"),
    );
}

/// (a) local(8): two recipients, each mailbox file holds the message once.
fn delivers_to_local_mailbox(q: Qmgr) {
    let inst = Instance::start(Opts::new("local", q));
    let from = inst.local_addr("sender");
    let alice = inst.local_addr("alice");
    let bob = inst.local_addr("bob");
    let token = inst.unique_token("local");
    let id = inst.sendmail(&from, &[&alice, &bob], "local delivery test", &token);
    inst.wait_removed(&id);
    let lines = inst.assert_delivered(&id, &from, "local", &[&alice, &bob]);
    for user in ["alice", "bob"] {
        let path = inst.mailbox_path(user);
        let l = lines
            .iter()
            .find(|l| {
                l.is_delivery()
                    && l.field("to") == Some(&format!("<{user}@{}>", support::HOSTNAME)[..])
            })
            .unwrap();
        inst.check(
            l.reason() == Some(&format!("delivered to file: {}", path.display())[..]),
            &format!("local says delivered to file {}: {l}", path.display()),
        );
        let mbox = inst.mailbox(user);
        let has = |s: &str| mbox.contains(s);
        inst.check(
            mbox.starts_with(&format!("From {from} "))
                && has(&format!("Return-Path: <{from}>"))
                && has(&format!("Delivered-To: {user}@{}", support::HOSTNAME))
                && has("Subject: local delivery test")
                && has(&format!("Message-ID: <{token}@"))
                && has("\n.a line that starts with a dot\n"),
            &format!("mailbox {} holds the message:\n{mbox}", path.display()),
        );
        let copies = mbox.matches(&format!("token: {token}\n")).count();
        inst.check(
            copies == 1,
            &format!("mailbox of {user} holds one copy, holds {copies}:\n{mbox}"),
        );
    }
    inst.wait_queue_empty();
}

/// (a) smtp(8) to smtp-sink on 127.0.0.1: the sink got the message once.
fn delivers_via_smtp_to_sink(q: Qmgr) {
    let inst = Instance::start(Opts::new("sink", q));
    let from = inst.local_addr("sender");
    let rcpt = "someone@sink.example";
    let token = inst.unique_token("sink");
    let id = inst.send_smtp(&from, &[rcpt], "smtp test", &token);
    inst.wait_removed(&id);
    let lines = inst.assert_delivered(&id, &from, "smtp", &[rcpt]);
    let sent = lines.iter().find(|l| l.is_delivery()).unwrap();
    let relay = format!("127.0.0.1[127.0.0.1]:{}", inst.sink.port);
    inst.check(
        sent.field("relay") == Some(&relay[..]),
        &format!("smtp line says relay={relay}: {sent}"),
    );
    inst.wait_until("smtp-sink to hold the message", || {
        inst.sink.messages().iter().any(|m| m.contains(&token))
    });
    let copies = inst
        .sink
        .messages()
        .iter()
        .filter(|m| m.contains(&token))
        .count();
    inst.check(
        copies == 1,
        &format!("smtp-sink received one copy, got {copies}"),
    );
    inst.wait_queue_empty();
}

/// (b) error(8) bounces; the non-delivery notice reaches the sender's mailbox.
fn bounces_to_sender_mailbox(q: Qmgr) {
    let inst = Instance::start(Opts::new("bounce", q));
    let from = inst.local_addr("sender");
    let rcpt = "nobody@error.example";
    let token = inst.unique_token("bounce");
    // sendmail, not SMTP: smtpd rejects a recipient that resolves to error:.
    let id = inst.sendmail(&from, &[rcpt], "bounce test", &token);
    let bounced = inst.wait_for_line(&format!("postfix/error to bounce {id}"), |l| {
        l.queue_id() == Some(id.as_str()) && l.is_from("error") && l.is_delivery()
    });
    inst.check(
        bounced.status() == Some("bounced")
            && bounced.field("to") == Some("<nobody@error.example>")
            && bounced.field("dsn") == Some("5.1.1")
            && bounced.reason() == Some("mailbox unavailable"),
        &format!("error line says status=bounced (mailbox unavailable): {bounced}"),
    );
    let notice = inst.wait_for_line("bounce to send a non-delivery notification", |l| {
        l.is_from("bounce")
            && l.queue_id() == Some(id.as_str())
            && l.body().starts_with("sender non-delivery notification: ")
    });
    let ndr = notice.body().rsplit(' ').next().unwrap().to_string();
    inst.wait_removed(&id);
    inst.wait_removed(&ndr);
    let orig = inst.lines_for(&id);
    inst.check(
        orig.iter().filter(|l| l.is_removed()).count() == 1
            && orig.iter().filter(|l| l.is_delivery()).count() == 1,
        &format!("{id}: one delivery line and one removed line"),
    );
    inst.assert_delivered(&ndr, "", "local", &[&from]);
    inst.wait_until("the sender's mailbox to hold the notice", || {
        inst.mailbox("sender").contains(&token)
    });
    let mbox = inst.mailbox("sender");
    inst.check(
        mbox.starts_with("From MAILER-DAEMON ")
            && mbox.contains("Subject: Undelivered Mail Returned to Sender")
            && mbox.contains("<nobody@error.example>: mailbox unavailable")
            && mbox.contains(&format!("token: {token}")),
        &format!("the sender's mailbox holds the non-delivery notice:\n{mbox}"),
    );
    inst.check(
        mbox.matches("Subject: Undelivered Mail Returned to Sender")
            .count()
            == 1,
        &format!("exactly one notice in the sender's mailbox:\n{mbox}"),
    );
    inst.wait_queue_empty();
}

/// Waits for the `n`th deferral of `id` to the closed port and for the file
/// to be back in the deferred queue; checks the line.
fn wait_deferred(inst: &Instance, id: &str, n: usize) -> LogLine {
    let what = format!("deferral #{n} of {id} (status=deferred)");
    let lines = inst.wait_for_lines(&what, n, |l| {
        l.queue_id() == Some(id) && l.is_delivery() && l.status() == Some("deferred")
    });
    let last = lines.last().unwrap().clone();
    let refused = format!(
        "connect to 127.0.0.1[127.0.0.1]:{}: Connection refused",
        inst.closed_port
    );
    inst.check(
        last.field("to") == Some("<user@closed.example>")
            && last.field("dsn") == Some("4.4.1")
            && last.reason().is_some_and(|r| r.contains(&refused)),
        &format!("deferral line says {refused}: {last}"),
    );
    inst.wait_until(&format!("{id} to be in the deferred queue"), || {
        inst.queue_ids("deferred") == vec![id.to_string()]
            && inst.queue_ids("active").is_empty()
            && inst.queue_ids("incoming").is_empty()
    });
    last
}

/// Checks that `id` went through the active queue exactly twice, the second
/// time after log line `mark` (when `postqueue -f` was run): the retry is the
/// flush's doing, not a scan that happened anyway.
fn check_retried_after(inst: &Instance, id: &str, mark: usize) {
    let lines = inst.log_lines();
    let actives: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.queue_id() == Some(id) && l.is_queue_active())
        .map(|(i, _)| i)
        .collect();
    inst.check(
        actives.len() == 2,
        &format!(
            "two `{id}: ... (queue active)` lines, the first attempt and the retry; saw {}",
            actives.len()
        ),
    );
    inst.check(
        actives[0] < mark && actives[1] >= mark,
        "the first attempt before `postqueue -f`, the retry after it",
    );
}

/// (c) A closed port defers; `postqueue -p` shows why; `postqueue -f` retries.
fn defers_and_retries_on_flush(q: Qmgr) {
    let inst = Instance::start(Opts::new("defer", q));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("defer");
    let id = inst.send_smtp(&from, &["user@closed.example"], "defer test", &token);
    wait_deferred(&inst, &id, 1);
    let listing = inst.postqueue_p();
    inst.check(
        listing.contains(&id)
            && listing.contains(&from)
            && listing.contains("Connection refused")
            && listing.contains("user@closed.example"),
        &format!("postqueue -p lists {id} with the reason:\n{listing}"),
    );
    let mark = inst.log_lines().len();
    inst.postqueue_f();
    wait_deferred(&inst, &id, 2);
    check_retried_after(&inst, &id, mark);
    let lines = inst.lines_for(&id);
    inst.check(
        !lines.iter().any(|l| l.is_removed()),
        "a deferred message is not removed",
    );
    let listing = inst.postqueue_p();
    inst.check(
        listing.contains(&id),
        &format!("still listed after the retry:\n{listing}"),
    );
}

/// (d) With qmgr off mail piles up in incoming; after enabling it all of it
/// is delivered.
fn delivers_mail_piled_up_while_qmgr_was_off(q: Qmgr) {
    let mut inst = Instance::start(Opts::new("pileup", q).qmgr_disabled().in_flow_delay_zero());
    let from = inst.local_addr("sender");
    let mut sent = Vec::new();
    let mut smtp = inst.smtp();
    for i in 0..10 {
        let rcpt = if i % 2 == 0 {
            "pile@discard.example"
        } else {
            "pile@sink.example"
        };
        let token = inst.unique_token("pileup");
        let text = inst.message_text(&from, &[rcpt], "pile-up test", &token);
        let id = smtp
            .send(&from, &[rcpt], &text)
            .unwrap_or_else(|e| inst.fail(&format!("SMTP submission: {e}")));
        sent.push((id, rcpt, token));
    }
    smtp.quit();
    let ids: BTreeSet<String> = sent.iter().map(|(id, _, _)| id.clone()).collect();
    inst.check(ids.len() == 10, "10 distinct queue ids");
    inst.wait_until("10 files in incoming", || {
        inst.queue_ids("incoming").len() == 10
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    inst.check(
        inst.queue_ids("incoming")
            .into_iter()
            .collect::<BTreeSet<_>>()
            == ids,
        "the 10 messages stay in incoming while qmgr is off",
    );
    inst.check(
        !inst.log_lines().iter().any(|l| l.is_from("qmgr")),
        "no qmgr log line while qmgr is off",
    );

    inst.enable_qmgr();
    assert_each_delivered_once(&inst, &from, &sent);
    assert_sink_copies(&inst, &sent);
}

/// Mail a queue manager that died left in the active queue is delivered
/// once each when the next one starts, even a file whose time stamp says
/// "not due for a day", with no warning. Postfix's queue managers move
/// every file back to incoming first (`qmgr_move`, time-stamped now), and
/// their incoming scan moves it into active again: inotify on incoming
/// sees each file arrive there. rqmgr feeds the files where they are (a
/// deliberate difference, see rqmgr(8): two renames and a `utime` less
/// per file, and the first delivery at once): not one comes through
/// incoming. The log, the deliveries and the queue at the end are the
/// same.
fn delivers_mail_left_in_active_at_startup(q: Qmgr) {
    let rqmgr = q == Qmgr::Rqmgr;
    const N: usize = 300;
    let mut inst = Instance::start(
        Opts::new("leftover", q)
            .qmgr_disabled()
            .in_flow_delay_zero(),
    );
    let from = inst.local_addr("sender");
    let mut sent = Vec::new();
    let mut smtp = inst.smtp();
    for i in 0..N {
        let rcpt = if i % 50 == 0 {
            "left@sink.example"
        } else {
            "left@discard.example"
        };
        let token = inst.unique_token("leftover");
        let text = inst.message_text(&from, &[rcpt], "left in active", &token);
        let id = smtp
            .send(&from, &[rcpt], &text)
            .unwrap_or_else(|e| inst.fail(&format!("SMTP submission: {e}")));
        sent.push((id, rcpt, token));
    }
    smtp.quit();
    inst.wait_until("every message in incoming", || {
        inst.queue_ids("incoming").len() == N
    });
    // What a queue manager killed with a full active queue leaves behind.
    let active = inst.spool().join("active");
    for (id, _, _) in &sent {
        let from_path = inst
            .queue_file("incoming", id)
            .unwrap_or_else(|| inst.fail(&format!("{id} not in incoming")));
        std::fs::rename(&from_path, active.join(id))
            .unwrap_or_else(|e| inst.fail(&format!("move {id} to active: {e}")));
    }
    let tomorrow = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
    std::fs::File::open(active.join(&sent[1].0))
        .and_then(|f| f.set_modified(tomorrow))
        .unwrap_or_else(|e| inst.fail(&format!("set the time stamp of {}: {e}", sent[1].0)));
    inst.check(
        inst.queue_ids("active").len() == N,
        "every message in active before the queue manager starts",
    );

    let incoming = Inotify::init(InitFlags::IN_NONBLOCK)
        .unwrap_or_else(|e| inst.fail(&format!("inotify_init: {e}")));
    incoming
        .add_watch(
            &inst.spool().join("incoming"),
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE,
        )
        .unwrap_or_else(|e| inst.fail(&format!("watch incoming: {e}")));

    inst.enable_qmgr();
    assert_each_delivered_once(&inst, &from, &sent);
    let mut through_incoming = BTreeSet::new();
    while let Ok(events) = incoming.read_events() {
        if events.is_empty() {
            break;
        }
        through_incoming.extend(
            events
                .into_iter()
                .filter_map(|e| e.name.map(|n| n.to_string_lossy().into_owned())),
        );
    }
    let leftovers = sent
        .iter()
        .filter(|(id, _, _)| through_incoming.contains(id))
        .count();
    if rqmgr {
        inst.check(
            leftovers == 0,
            &format!(
                "rqmgr fed the files where they were: {leftovers} of {N} went through incoming"
            ),
        );
    } else {
        inst.check(
            leftovers == N,
            &format!("Postfix moved each file through incoming: {leftovers} of {N} did"),
        );
    }
    let warnings: Vec<String> = inst
        .log_lines()
        .iter()
        .filter(|l| {
            l.is_from("qmgr") && (l.text.starts_with("warning:") || l.text.starts_with("fatal:"))
        })
        .map(|l| l.raw.clone())
        .collect();
    inst.check(
        warnings.is_empty(),
        &format!("no qmgr warning at start-up: {warnings:?}"),
    );
    assert_sink_copies(&inst, &sent);
}

/// (e) Damaged queue files go to the corrupt queue; good mail is delivered.
fn moves_damaged_files_to_corrupt(q: Qmgr) {
    let mut inst = Instance::start(Opts::new("corrupt", q).qmgr_disabled().in_flow_delay_zero());
    let from = inst.local_addr("sender");
    let rcpt = "user@discard.example";
    let good = inst.send_smtp(&from, &[rcpt], "good", &inst.unique_token("good"));
    let truncated = inst.send_smtp(&from, &[rcpt], "truncated", &inst.unique_token("truncated"));
    let bad_size = inst.send_smtp(
        &from,
        &[rcpt],
        "bad size record",
        &inst.unique_token("badsize"),
    );
    inst.wait_until("3 files in incoming", || {
        inst.queue_ids("incoming").len() == 3
    });

    // Truncate one file in the middle (same inode, owner and mode 0700).
    let path = inst.queue_file("incoming", &truncated).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    drop(f);
    // Overwrite the size record (the first record: 'C', length 95, then six
    // %15ld numbers) of another with garbage.
    let path = inst.queue_file("incoming", &bad_size).unwrap();
    let bytes = fs::read(&path).unwrap();
    inst.check(
        bytes.len() > 97 && bytes[0] == b'C' && bytes[1] == 95,
        &format!(
            "{bad_size} starts with a C record of 95 bytes: {:?}",
            &bytes[..8.min(bytes.len())]
        ),
    );
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(2)).unwrap();
    f.write_all(&[b'#'; 95]).unwrap();
    drop(f);

    inst.enable_qmgr();
    for bad in [&truncated, &bad_size] {
        let want = format!(
            "warning: saving corrupt file \"{bad}\" from queue \"active\" to queue \"corrupt\""
        );
        inst.wait_for_line(&want, |l| l.is_from("qmgr") && l.text == want);
    }
    inst.wait_removed(&good);
    inst.assert_delivered(&good, &from, "discard", &[rcpt]);
    inst.wait_queue_empty();
    let corrupt: BTreeSet<String> = inst.queue_ids("corrupt").into_iter().collect();
    let want: BTreeSet<String> = [truncated.clone(), bad_size.clone()].into_iter().collect();
    inst.check(
        corrupt == want,
        &format!("corrupt holds {want:?}, holds {corrupt:?}"),
    );
    for bad in [&truncated, &bad_size] {
        let lines = inst.lines_for(bad);
        inst.check(
            !lines.iter().any(|l| l.is_delivery() || l.is_removed()),
            &format!("{bad} was neither delivered nor removed"),
        );
    }
}

/// (f) 200 messages from smtp-source to smtp-sink: 200 sent, none twice.
fn delivers_200_messages_from_smtp_source(q: Qmgr) {
    const N: usize = 200;
    let inst = Instance::start(Opts::new("smtp-source", q));
    let from = inst.local_addr("sender");
    let n = N.to_string();
    inst.smtp_source(&["-s", "5", "-m", &n, "-f", &from, "-t", "rcpt@sink.example"]);
    let is_sent = |l: &LogLine| {
        l.is_from("smtp")
            && l.is_delivery()
            && l.status() == Some("sent")
            && l.field("to") == Some("<rcpt@sink.example>")
    };
    inst.wait_progress(&format!("{N} status=sent and {N} removed lines"), || {
        let lines = inst.log_lines();
        let sent = distinct_ids(&lines, is_sent);
        let removed = distinct_ids(&lines, |l| l.is_removed());
        if sent.len() >= N && removed.len() >= N {
            return Ok(());
        }
        let not_removed: Vec<&String> = sent.difference(&removed).take(10).collect();
        Err(format!(
            "{} sent, {} removed, smtp-sink has {}; sent but not removed: {not_removed:?}",
            sent.len(),
            removed.len(),
            inst.sink.message_count()
        ))
    });
    inst.wait_queue_empty();
    // Let stragglers (duplicates, if any) reach the log before counting.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let lines = inst.log_lines();
    let sent_lines = lines.iter().filter(|l| is_sent(l)).count();
    let sent_ids = distinct_ids(&lines, is_sent);
    let removed_lines = lines.iter().filter(|l| l.is_removed()).count();
    let removed_ids = distinct_ids(&lines, |l| l.is_removed());
    let accepted_ids = distinct_ids(&lines, |l| {
        l.is_from("cleanup") && l.body().starts_with("message-id=")
    });
    inst.check(
        sent_lines == N,
        &format!("exactly {N} status=sent lines, saw {sent_lines}"),
    );
    inst.check(
        sent_ids.len() == N,
        &format!("{N} distinct ids sent, saw {}", sent_ids.len()),
    );
    inst.check(
        removed_lines == N,
        &format!("exactly {N} removed lines, saw {removed_lines}"),
    );
    inst.check(removed_ids == sent_ids, "the ids removed are the ids sent");
    inst.check(
        accepted_ids == sent_ids,
        "the ids cleanup accepted are the ids sent",
    );
    inst.check(
        !lines
            .iter()
            .any(|l| l.is_delivery() && l.status() != Some("sent")),
        "no delivery other than status=sent",
    );
    inst.wait_until(&format!("smtp-sink to have {N} messages"), || {
        inst.sink.message_count() >= N
    });
    let got = inst.sink.message_count();
    inst.check(
        got == N,
        &format!("smtp-sink received {N} messages, got {got}"),
    );
}

/// Restart path: `postfix reload` while mail is deferred; a fresh queue
/// manager retries it on `postqueue -f`.
fn reload_while_deferred_then_flush_retries(q: Qmgr) {
    let inst = Instance::start(Opts::new("reload", q));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("reload");
    let id = inst.send_smtp(&from, &["user@closed.example"], "reload test", &token);
    wait_deferred(&inst, &id, 1);
    let first = inst
        .lines_for(&id)
        .into_iter()
        .find(|l| l.is_queue_active())
        .unwrap();
    let old_pid = first.pid;

    inst.reload();
    inst.wait_until(
        &format!("the old qmgr (pid {old_pid}) to exit after the reload"),
        || !sys::pid_alive(old_pid),
    );
    inst.check(
        inst.queue_ids("deferred") == vec![id.clone()],
        "still deferred after the reload",
    );

    let mark = inst.log_lines().len();
    inst.postqueue_f();
    wait_deferred(&inst, &id, 2);
    check_retried_after(&inst, &id, mark);
    let actives: Vec<LogLine> = inst
        .lines_for(&id)
        .into_iter()
        .filter(|l| l.is_queue_active())
        .collect();
    inst.check(
        actives[1].pid != old_pid,
        &format!(
            "the retry was done by a new qmgr process, not pid {old_pid}: {}",
            actives[1]
        ),
    );
    inst.check(
        !inst.lines_for(&id).iter().any(|l| l.is_removed()),
        "not removed",
    );
}

/// Waits until each `(id, rcpt, token)` is removed, checks its log lines
/// (discard(8) for `*.discard.example`, smtp otherwise), then that the
/// queue is empty.
fn assert_each_delivered_once(inst: &Instance, from: &str, sent: &[(String, &str, String)]) {
    for (id, rcpt, _) in sent {
        inst.wait_removed(id);
        let agent = if rcpt.ends_with("discard.example") {
            "discard"
        } else {
            "smtp"
        };
        inst.assert_delivered(id, from, agent, &[rcpt]);
    }
    inst.wait_queue_empty();
}

/// Checks that smtp-sink got one copy of each message for `sink.example`
/// and none of the others.
fn assert_sink_copies(inst: &Instance, sent: &[(String, &str, String)]) {
    let to_sink = sent
        .iter()
        .filter(|(_, r, _)| r.ends_with("sink.example"))
        .count();
    inst.wait_until(&format!("smtp-sink to hold {to_sink} messages"), || {
        inst.sink.message_count() >= to_sink
    });
    let got = inst.sink.messages();
    for (_, rcpt, token) in sent {
        let copies = got.iter().filter(|m| m.contains(token.as_str())).count();
        let want = usize::from(rcpt.ends_with("sink.example"));
        inst.check(
            copies == want,
            &format!("smtp-sink got {want} copies of {token}, got {copies}"),
        );
    }
}
