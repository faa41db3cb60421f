//! Acceptance tests of a message's life beyond plain delivery, as an
//! administrator checks it: triggers (fifo service, postkick, postqueue),
//! expiry (forced and by age), delay warnings, double bounces,
//! defer_transports, a missing transport, a queue manager killed mid-delivery,
//! time stamps in the future, and `postfix reload`.
//!
//! Every test runs once per queue manager: `rqmgr::<test>`,
//! `postfix_qmgr::<test>` and `postfix_oqmgr::<test>` (the last two prove the
//! test itself against Postfix's own queue managers). Each starts its own
//! private Postfix instance (see tests/support/mod.rs); they need root and
//! Postfix installed (.ci/setup-postfix).

#[macro_use]
mod support;

use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant, SystemTime};
use support::{Instance, LogLine, Opts, Qmgr, HOSTNAME};

dropin_tests!(
    fifo_service_delivers_and_wakes_on_flush_and_kick,
    postkick_d_retries_only_due_deferred_mail,
    forced_expiry_returns_message_to_sender,
    forced_expiry_of_held_mail_without_defer_log,
    zero_queue_lifetime_returns_after_first_attempt,
    zero_bounce_lifetime_expires_only_null_sender_mail,
    delay_warning_is_sent_once,
    one_second_delay_warning_comes_with_first_deferral,
    mail_to_double_bounce_is_discarded,
    defer_transports_hold_mail_until_flush,
    missing_transport_defers_mail,
    qmgr_killed_during_slow_delivery_loses_nothing,
    qmgr_restarted_during_slow_delivery_skips_locked_files,
    future_incoming_file_waits_for_scan_all,
    every_reload_brings_up_a_new_queue_manager,
);

// ---- helpers ---------------------------------------------------------------------

/// The number of log lines so far: a mark to look for what comes after.
fn mark(inst: &Instance) -> usize {
    inst.log_lines().len()
}

/// The log lines after `mark` (see [`mark`]).
fn lines_after(inst: &Instance, mark: usize) -> Vec<LogLine> {
    inst.log_lines().into_iter().skip(mark).collect()
}

/// `ID: from=..., (queue active)` lines of `id` after `mark`.
fn actives_after(inst: &Instance, id: &str, mark: usize) -> usize {
    lines_after(inst, mark)
        .iter()
        .filter(|l| l.queue_id() == Some(id) && l.is_queue_active())
        .count()
}

/// Waits until `id` has `n` delivery lines with status=deferred in all,
/// the last one for `rcpt` and with a reason containing `reason`, and the
/// file is in the deferred queue (not in active or incoming); returns the
/// last line.
fn wait_deferred(inst: &Instance, id: &str, n: usize, rcpt: &str, reason: &str) -> LogLine {
    let what = format!("deferral #{n} of {id} (status=deferred)");
    let lines = inst.wait_for_lines(&what, n, |l| {
        l.queue_id() == Some(id) && l.is_delivery() && l.status() == Some("deferred")
    });
    let last = lines.last().unwrap().clone();
    inst.check(
        last.field("to") == Some(&format!("<{rcpt}>")[..])
            && last.reason().is_some_and(|r| r.contains(reason)),
        &format!("deferral line is for <{rcpt}> and says `{reason}`: {last}"),
    );
    inst.wait_until(&format!("{id} to be in the deferred queue"), || {
        inst.queue_file("deferred", id).is_some()
            && inst.queue_file("active", id).is_none()
            && inst.queue_file("incoming", id).is_none()
    });
    last
}

/// The reason a connection to the closed port fails.
fn refused(inst: &Instance) -> String {
    format!(
        "connect to 127.0.0.1[127.0.0.1]:{}: Connection refused",
        inst.closed_port
    )
}

/// Sends one message to `user@closed.example` and waits for its first
/// deferral; returns its queue id and token.
fn send_and_defer(inst: &Instance, what: &str) -> (String, String) {
    let from = inst.local_addr("sender");
    let token = inst.unique_token(what);
    let id = inst.send_smtp(&from, &["user@closed.example"], what, &token);
    wait_deferred(inst, &id, 1, "user@closed.example", &refused(inst));
    (id, token)
}

/// Checks, for `secs` seconds, that no log line after `mark` matches
/// `pred`; fails the test with `what` at the first one.
fn stays_quiet<F: Fn(&LogLine) -> bool>(
    inst: &Instance,
    mark: usize,
    secs: f64,
    what: &str,
    pred: F,
) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if let Some(l) = lines_after(inst, mark).iter().find(|l| pred(l)) {
            inst.fail(&format!("expected no {what}, saw: {l}"));
        }
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first field of the `postqueue -p` line of `id`: the queue id with
/// its markers (`*` active, `!` on hold, `#` forced to expire).
fn listing_status(listing: &str, id: &str) -> Option<String> {
    listing
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// Checks that `postqueue -p` lists `id` with exactly the status field
/// `want` (the id and its markers) and shows `reason` in parentheses.
fn check_listed(inst: &Instance, id: &str, want: &str, reason: &str) -> String {
    let listing = inst.postqueue_p();
    inst.check(
        listing_status(&listing, id).as_deref() == Some(want),
        &format!("postqueue -p lists `{want}`:\n{listing}"),
    );
    inst.check(
        listing.contains(&format!("({reason})")),
        &format!("postqueue -p shows `({reason})`:\n{listing}"),
    );
    listing
}

/// Waits for bounce(8) to log `ID: <kind> notification: NEWID` and returns
/// NEWID.
fn wait_notice(inst: &Instance, id: &str, kind: &str) -> String {
    let prefix = format!("{kind} notification: ");
    let line = inst.wait_for_line(&format!("bounce to log `{id}: {prefix}...`"), |l| {
        l.is_from("bounce") && l.queue_id() == Some(id) && l.body().starts_with(&prefix)
    });
    line.body()[prefix.len()..].trim().to_string()
}

/// Waits for qmgr to log `ID: from=<from>, status=<status>, returned to sender`.
fn wait_returned(inst: &Instance, id: &str, from: &str, status: &str) -> LogLine {
    let want = format!("from=<{from}>, status={status}, returned to sender");
    inst.wait_for_line(&format!("qmgr to log `{id}: {want}`"), |l| {
        l.is_from("qmgr") && l.queue_id() == Some(id) && l.body() == want
    })
}

/// Delivery lines of `id` (any agent).
fn deliveries(inst: &Instance, id: &str) -> Vec<LogLine> {
    inst.lines_for(id)
        .into_iter()
        .filter(|l| l.is_delivery())
        .collect()
}

/// `text` with every run of white space made one space, so that a header
/// or a report line folded by bounce(8) can be searched.
fn unfold(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn in_an_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

fn a_minute_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(60)
}

// ---- 1. fifo service ---------------------------------------------------------------

/// master.cf `qmgr fifo n - n 300 1 qmgr`: public/qmgr is a FIFO, mail is
/// delivered, and `postqueue -f` and `postkick public qmgr D` still wake
/// the queue manager.
fn fifo_service_delivers_and_wakes_on_flush_and_kick(q: Qmgr) {
    let inst = Instance::start(Opts::new("fifo", q).qmgr_fifo());
    let public_qmgr = inst.spool().join("public/qmgr");
    inst.wait_until("public/qmgr to exist", || public_qmgr.exists());
    let ft = std::fs::symlink_metadata(&public_qmgr).unwrap().file_type();
    inst.check(ft.is_fifo(), &format!("public/qmgr is a FIFO, is {ft:?}"));

    let from = inst.local_addr("sender");
    let rcpt = "user@discard.example";
    let id = inst.send_smtp(&from, &[rcpt], "fifo", &inst.unique_token("fifo"));
    inst.wait_removed(&id);
    inst.assert_delivered(&id, &from, "discard", &[rcpt]);

    let (deferred, _) = send_and_defer(&inst, "fifo-defer");
    check_listed(&inst, &deferred, &deferred, &refused(&inst));
    let m = mark(&inst);
    inst.postqueue_f();
    wait_deferred(&inst, &deferred, 2, "user@closed.example", &refused(&inst));
    inst.check(
        actives_after(&inst, &deferred, m) == 1,
        "postqueue -f made the qmgr retry the deferred message",
    );

    inst.set_queue_file_mtime("deferred", &deferred, a_minute_ago());
    let m = mark(&inst);
    inst.postkick_qmgr("D");
    wait_deferred(&inst, &deferred, 3, "user@closed.example", &refused(&inst));
    inst.check(
        actives_after(&inst, &deferred, m) == 1,
        "postkick D made the qmgr retry the deferred message",
    );
    inst.check(
        std::fs::symlink_metadata(&public_qmgr)
            .unwrap()
            .file_type()
            .is_fifo(),
        "public/qmgr is still a FIFO",
    );
    check_one_qmgr_process(&inst);
}

/// All qmgr log lines come from one process: the queue manager was never
/// restarted.
fn check_one_qmgr_process(inst: &Instance) {
    let pids: std::collections::BTreeSet<u32> = inst
        .log_lines()
        .iter()
        .filter(|l| l.is_from("qmgr"))
        .map(|l| l.pid)
        .collect();
    inst.check(
        pids.len() == 1,
        &format!("one qmgr process logged everything, saw pids {pids:?}"),
    );
}

// ---- 2. postkick D / DA ------------------------------------------------------------

/// `postkick public qmgr D` retries a deferred message whose time stamp has
/// arrived, and leaves one with a future time stamp alone; `DA` retries it
/// regardless.
fn postkick_d_retries_only_due_deferred_mail(q: Qmgr) {
    let inst = Instance::start(Opts::new("postkick-d", q));
    let (id, _) = send_and_defer(&inst, "kick");
    let closed = "user@closed.example";

    // Not due: D does nothing.
    inst.set_queue_file_mtime("deferred", &id, in_an_hour());
    let m = mark(&inst);
    inst.postkick_qmgr("D");
    stays_quiet(&inst, m, 1.5, "retry of a message not due yet", |l| {
        l.queue_id() == Some(id.as_str()) && (l.is_queue_active() || l.is_delivery())
    });
    inst.check(
        inst.queue_ids("deferred") == vec![id.clone()],
        "the message not due stays in deferred",
    );

    // Due: D retries it.
    inst.set_queue_file_mtime("deferred", &id, a_minute_ago());
    let m = mark(&inst);
    inst.postkick_qmgr("D");
    wait_deferred(&inst, &id, 2, closed, &refused(&inst));
    inst.check(
        actives_after(&inst, &id, m) == 1,
        "postkick D retried the due message once",
    );

    // Not due, but DA ignores time stamps.
    inst.set_queue_file_mtime("deferred", &id, in_an_hour());
    let m = mark(&inst);
    inst.postkick_qmgr("DA");
    wait_deferred(&inst, &id, 3, closed, &refused(&inst));
    inst.check(
        actives_after(&inst, &id, m) == 1,
        "postkick DA retried the message not due",
    );
    inst.check(
        !inst.lines_for(&id).iter().any(|l| l.is_removed()),
        "the deferred message is never removed",
    );
    // qmgr dated the file anew: minimal_backoff_time (300 s) ahead, not an
    // hour.
    let meta = std::fs::metadata(inst.queue_file("deferred", &id).unwrap()).unwrap();
    let ahead = meta
        .modified()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    inst.check(
        (290..=301).contains(&ahead),
        &format!("the deferred file is dated about 300 s ahead, {ahead} s"),
    );
    check_one_qmgr_process(&inst);
}

// ---- 3. forced expiry --------------------------------------------------------------

/// `postsuper -e ID` then `postqueue -i ID`: qmgr returns the message to its
/// sender with the deferral reason and removes it.
fn forced_expiry_returns_message_to_sender(q: Qmgr) {
    let inst = Instance::start(Opts::new("force-expire", q));
    let from = inst.local_addr("sender");
    let (id, token) = send_and_defer(&inst, "expire");
    check_listed(&inst, &id, &id, &refused(&inst));

    inst.postsuper(&["-e", &id]);
    check_listed(&inst, &id, &format!("{id}#"), &refused(&inst));
    inst.check(
        inst.queue_ids("deferred") == vec![id.clone()],
        "postsuper -e leaves the message in deferred",
    );
    let m = mark(&inst);
    inst.postqueue_i(&id);
    wait_returned(&inst, &id, &from, "force-expired");
    let ndr = wait_notice(&inst, &id, "sender non-delivery");
    inst.wait_removed(&id);
    inst.check(
        !lines_after(&inst, m)
            .iter()
            .any(|l| l.queue_id() == Some(id.as_str()) && l.is_delivery()),
        "a message forced to expire with a defer log is not tried again",
    );
    inst.wait_removed(&ndr);
    inst.assert_delivered(&ndr, "", "local", &[&from]);
    let mbox = inst.mailbox("sender");
    inst.check(
        mbox.starts_with("From MAILER-DAEMON ")
            && mbox.contains("Subject: Undelivered Mail Returned to Sender")
            && unfold(&mbox).contains(&refused(&inst))
            && mbox.contains(&format!("token: {token}")),
        &format!("the sender's mailbox holds the notice with the reason:\n{mbox}"),
    );
    inst.wait_queue_empty();
    let listing = inst.postqueue_p();
    inst.check(
        listing.contains("Mail queue is empty"),
        &format!("postqueue -p: queue empty:\n{listing}"),
    );
}

/// A message put on hold before any delivery attempt (`ID!`), marked for
/// expiry (`ID!#`), is left alone by qmgr while on hold; released
/// (`postsuper -H`) and scheduled (`postqueue -i`), it has no defer log, so
/// qmgr sends its recipients through the retry service (`message is
/// administratively expired`) and then returns it to the sender.
fn forced_expiry_of_held_mail_without_defer_log(q: Qmgr) {
    let mut inst = Instance::start(
        Opts::new("force-expire-held", q)
            .qmgr_disabled()
            .in_flow_delay_zero(),
    );
    let from = inst.local_addr("sender");
    let rcpt = "user@discard.example";
    let token = inst.unique_token("held");
    let id = inst.send_smtp(&from, &[rcpt], "held", &token);
    inst.wait_until("the message in incoming", || {
        inst.queue_ids("incoming") == vec![id.clone()]
    });
    inst.postsuper(&["-h", &id]);
    let listing = inst.postqueue_p();
    inst.check(
        listing_status(&listing, &id).as_deref() == Some(&format!("{id}!")[..]),
        &format!("postqueue -p lists {id}! (on hold):\n{listing}"),
    );
    inst.postsuper(&["-e", &id]);
    let listing = inst.postqueue_p();
    inst.check(
        listing_status(&listing, &id).as_deref() == Some(&format!("{id}!#")[..]),
        &format!("postqueue -p lists {id}!# (on hold, to expire):\n{listing}"),
    );

    inst.enable_qmgr();
    let m = mark(&inst);
    // An incoming and a deferred scan that do not see the held message.
    inst.postkick_qmgr("IDA");
    let marker = inst.sendmail(&from, &[rcpt], "marker", &inst.unique_token("marker"));
    inst.wait_removed(&marker);
    stays_quiet(&inst, m, 0.5, "qmgr touching the held message", |l| {
        l.queue_id() == Some(id.as_str()) && l.is_from("qmgr")
    });
    inst.check(
        inst.queue_ids("hold") == vec![id.clone()],
        "the message stays on hold",
    );

    inst.postsuper(&["-H", &id]);
    inst.check(
        inst.queue_ids("deferred") == vec![id.clone()],
        "postsuper -H releases the message to the deferred queue",
    );
    let listing = inst.postqueue_p();
    inst.check(
        listing_status(&listing, &id).as_deref() == Some(&format!("{id}#")[..]),
        &format!("postqueue -p lists {id}# (to expire):\n{listing}"),
    );
    inst.postqueue_i(&id);
    let line = inst.wait_for_line(&format!("the retry service to defer {id}"), |l| {
        l.queue_id() == Some(id.as_str()) && l.is_delivery()
    });
    inst.check(
        line.is_from("error")
            && line.field("to") == Some(&format!("<{rcpt}>")[..])
            && line.field("relay") == Some("none")
            && line.field("dsn") == Some("4.7.0")
            && line.status() == Some("deferred")
            && line.reason() == Some("message is administratively expired"),
        &format!("postfix/error logs dsn=4.7.0, status=deferred (message is administratively expired): {line}"),
    );
    wait_returned(&inst, &id, &from, "force-expired");
    let ndr = wait_notice(&inst, &id, "sender non-delivery");
    inst.wait_removed(&id);
    inst.check(
        deliveries(&inst, &id).len() == 1,
        "one delivery line: the message was never delivered",
    );
    inst.wait_removed(&ndr);
    inst.assert_delivered(&ndr, "", "local", &[&from]);
    let mbox = inst.mailbox("sender");
    inst.check(
        mbox.contains("Subject: Undelivered Mail Returned to Sender")
            && unfold(&mbox)
                .contains("<user@discard.example>: message is administratively expired")
            && mbox.contains(&format!("token: {token}")),
        &format!("the sender's mailbox holds the notice:\n{mbox}"),
    );
    inst.wait_queue_empty();
}

// ---- 4. expiry by age -----------------------------------------------------------------

/// maximal_queue_lifetime = 0: the first deferral expires the message.
fn zero_queue_lifetime_returns_after_first_attempt(q: Qmgr) {
    let inst = Instance::start(Opts::new("lifetime-0", q).main_cf("maximal_queue_lifetime", "0"));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("lifetime");
    let id = inst.send_smtp(&from, &["user@closed.example"], "lifetime", &token);
    wait_returned(&inst, &id, &from, "expired");
    let ndr = wait_notice(&inst, &id, "sender non-delivery");
    inst.wait_removed(&id);
    let tried = deliveries(&inst, &id);
    inst.check(
        tried.len() == 1
            && tried[0].status() == Some("deferred")
            && tried[0]
                .reason()
                .is_some_and(|r| r.contains(&refused(&inst))),
        &format!("one delivery attempt (status=deferred, refused), saw {tried:?}"),
    );
    inst.wait_removed(&ndr);
    inst.assert_delivered(&ndr, "", "local", &[&from]);
    let mbox = inst.mailbox("sender");
    inst.check(
        mbox.contains("Subject: Undelivered Mail Returned to Sender")
            && unfold(&mbox).contains(&refused(&inst))
            && mbox.contains(&format!("token: {token}")),
        &format!("the sender's mailbox holds the notice:\n{mbox}"),
    );
    inst.wait_queue_empty();
}

/// bounce_queue_lifetime = 0 applies to mail with the null sender only: a
/// bounce-like message to closed.example expires at its first deferral
/// (`from=<>, status=expired, returned to sender`; there is no one to
/// return it to, so it is just removed), while mail with a sender stays
/// deferred (maximal_queue_lifetime, 5 days).
fn zero_bounce_lifetime_expires_only_null_sender_mail(q: Qmgr) {
    let inst =
        Instance::start(Opts::new("bounce-lifetime-0", q).main_cf("bounce_queue_lifetime", "0"));
    let closed = "user@closed.example";
    let null = inst.sendmail("", &[closed], "null sender", &inst.unique_token("null"));
    wait_returned(&inst, &null, "", "expired");
    inst.wait_removed(&null);
    let tried = deliveries(&inst, &null);
    inst.check(
        tried.len() == 1 && tried[0].status() == Some("deferred"),
        &format!("one delivery attempt (status=deferred), saw {tried:?}"),
    );

    let (id, _) = send_and_defer(&inst, "with-sender");
    std::thread::sleep(Duration::from_millis(300));
    inst.check(
        !inst
            .lines_for(&id)
            .iter()
            .any(|l| l.is_removed() || l.body().contains("returned to sender")),
        "mail with a sender is not expired",
    );
    inst.check(
        inst.queue_ids("deferred") == vec![id.clone()],
        "mail with a sender stays deferred",
    );
    inst.check(
        inst.mailbox("sender").is_empty() && inst.mailbox("postmaster").is_empty(),
        "no notice to anyone",
    );
}

// ---- 5. delay warning -----------------------------------------------------------------

/// delay_warning_time = 4s: no warning at the first attempt, one "delayed
/// mail" notice at the first retry once the time has come (qmgr warns when
/// now >= arrival + delay_warning_time - 1), none at the next retry.
fn delay_warning_is_sent_once(q: Qmgr) {
    let inst = Instance::start(Opts::new("delay-warning", q).main_cf("delay_warning_time", "4s"));
    let from = inst.local_addr("sender");
    let closed = "user@closed.example";
    let token = inst.unique_token("warn");
    let id = inst.send_smtp(&from, &[closed], "delay warning", &token);
    // The arrival time (whole seconds) is at most now.
    let accepted = Instant::now();
    wait_deferred(&inst, &id, 1, closed, &refused(&inst));
    let warned = |l: &LogLine| {
        l.is_from("bounce")
            && l.queue_id() == Some(id.as_str())
            && l.body().starts_with("sender delay notification: ")
    };
    if accepted.elapsed() < Duration::from_millis(1900) {
        inst.check(
            !inst.log_lines().iter().any(warned),
            "no delay warning at the first attempt",
        );
    }

    // now >= arrival + 3 s: the next attempt warns.
    let due = accepted + Duration::from_millis(3100);
    std::thread::sleep(due.saturating_duration_since(Instant::now()));
    inst.postqueue_f();
    wait_deferred(&inst, &id, 2, closed, &refused(&inst));
    let notice = wait_notice(&inst, &id, "sender delay");
    inst.wait_removed(&notice);
    inst.assert_delivered(&notice, "", "local", &[&from]);
    let mbox = inst.mailbox("sender");
    inst.check(
        mbox.starts_with("From MAILER-DAEMON ")
            && mbox.contains("Subject: Delayed Mail (still being retried)")
            && unfold(&mbox).contains(&refused(&inst))
            && mbox.contains(&format!("Message-ID: <{token}@")),
        &format!("the sender's mailbox holds the delay notice:\n{mbox}"),
    );

    std::thread::sleep(Duration::from_millis(1100));
    let m = mark(&inst);
    inst.postqueue_f();
    wait_deferred(&inst, &id, 3, closed, &refused(&inst));
    inst.check(
        actives_after(&inst, &id, m) == 1,
        "the second retry happened",
    );
    stays_quiet(&inst, m, 0.5, "second delay warning", warned);
    inst.check(
        inst.log_lines().iter().filter(|l| warned(l)).count() == 1,
        "exactly one delay warning",
    );
    let mbox = inst.mailbox("sender");
    inst.check(
        mbox.matches("Subject: Delayed Mail").count() == 1,
        &format!("one delay notice in the sender's mailbox:\n{mbox}"),
    );
    inst.check(
        inst.queue_ids("deferred") == vec![id.clone()],
        "the message is still deferred",
    );
}

/// delay_warning_time = 1s: qmgr warns when now >= arrival + 1 s - 1 s, so
/// the "delayed mail" notice goes out with the very first deferral; a retry
/// sends none.
fn one_second_delay_warning_comes_with_first_deferral(q: Qmgr) {
    let inst =
        Instance::start(Opts::new("delay-warning-1s", q).main_cf("delay_warning_time", "1s"));
    let from = inst.local_addr("sender");
    let closed = "user@closed.example";
    let id = inst.send_smtp(
        &from,
        &[closed],
        "delay warning 1s",
        &inst.unique_token("warn1"),
    );
    wait_deferred(&inst, &id, 1, closed, &refused(&inst));
    let notice = wait_notice(&inst, &id, "sender delay");
    let lines = inst.log_lines();
    let second_active = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.queue_id() == Some(id.as_str()) && l.is_queue_active())
        .nth(1)
        .map(|(i, _)| i);
    inst.check(
        second_active.is_none(),
        "the notice came with the first deferral, before any retry",
    );
    inst.wait_removed(&notice);
    inst.assert_delivered(&notice, "", "local", &[&from]);
    let m = mark(&inst);
    inst.postqueue_f();
    wait_deferred(&inst, &id, 2, closed, &refused(&inst));
    stays_quiet(&inst, m, 0.5, "second delay warning", |l| {
        l.is_from("bounce") && l.queue_id() == Some(id.as_str())
    });
    inst.check(
        inst.mailbox("sender")
            .matches("Subject: Delayed Mail")
            .count()
            == 1,
        "one delay notice in the sender's mailbox",
    );
}

// ---- 6. double bounce --------------------------------------------------------------

/// Mail to the local double-bounce address is "delivered" by qmgr itself:
/// `relay=none, ..., status=sent (undeliverable postmaster notification
/// discarded)`, and removed; other recipients of the message get it.
fn mail_to_double_bounce_is_discarded(q: Qmgr) {
    let inst = Instance::start(Opts::new("double-bounce", q));
    let db = format!("double-bounce@{HOSTNAME}");
    let alice = inst.local_addr("alice");
    let check_discarded = |id: &str| {
        let l = deliveries(&inst, id)
            .into_iter()
            .find(|l| l.field("to") == Some(&format!("<{db}>")[..]))
            .unwrap_or_else(|| inst.fail(&format!("no delivery line for <{db}> of {id}")));
        inst.check(
            l.is_from("qmgr")
                && l.field("relay") == Some("none")
                && l.field("dsn") == Some("2.0.0")
                && l.status() == Some("sent")
                && l.reason() == Some("undeliverable postmaster notification discarded"),
            &format!("qmgr logs the discard: {l}"),
        );
    };

    let token = inst.unique_token("double-bounce");
    let id = inst.sendmail("", &[&db], "double bounce", &token);
    inst.wait_removed(&id);
    check_discarded(&id);
    inst.check(
        deliveries(&inst, &id).len() == 1,
        "one delivery line for the discarded message",
    );
    let active = inst
        .lines_for(&id)
        .into_iter()
        .find(|l| l.is_queue_active())
        .unwrap_or_else(|| inst.fail("no (queue active) line"));
    inst.check(
        active.field("from") == Some("<>") && active.field("nrcpt") == Some("1"),
        &format!("(queue active) line: from=<>, nrcpt=1: {active}"),
    );

    let token2 = inst.unique_token("double-bounce-and-alice");
    let id2 = inst.sendmail("", &[&db, &alice], "double bounce and alice", &token2);
    inst.wait_removed(&id2);
    check_discarded(&id2);
    let to_alice: Vec<LogLine> = deliveries(&inst, &id2)
        .into_iter()
        .filter(|l| l.field("to") == Some(&format!("<{alice}>")[..]))
        .collect();
    inst.check(
        to_alice.len() == 1 && to_alice[0].is_from("local") && to_alice[0].status() == Some("sent"),
        &format!("alice's copy delivered by local: {to_alice:?}"),
    );
    inst.check(
        inst.mailbox("alice").contains(&format!("token: {token2}")),
        "alice's mailbox holds the message",
    );
    inst.check(
        !inst.log_lines().iter().any(|l| l.is_from("bounce")),
        "nothing bounced",
    );
    inst.wait_queue_empty();
}

// ---- 7. defer_transports ---------------------------------------------------------------

/// defer_transports = smtp: smtp mail is deferred (`deferred transport`)
/// without a connection, local mail is delivered; `postqueue -f` (whose F
/// lifts defer_transports for the run) delivers the smtp mail.
fn defer_transports_hold_mail_until_flush(q: Qmgr) {
    let inst =
        Instance::start(Opts::new("defer-transports", q).main_cf("defer_transports", "smtp"));
    let from = inst.local_addr("sender");
    let rcpt = "someone@sink.example";
    let token = inst.unique_token("defer-xport");
    let id = inst.send_smtp(&from, &[rcpt], "defer_transports", &token);
    let line = wait_deferred(&inst, &id, 1, rcpt, "deferred transport");
    inst.check(
        line.is_from("error")
            && line.field("relay") == Some("none")
            && line.field("dsn") == Some("4.3.2")
            && line.reason() == Some("deferred transport"),
        &format!("postfix/error logs relay=none, dsn=4.3.2 (deferred transport): {line}"),
    );
    check_listed(&inst, &id, &id, "deferred transport");
    inst.check(inst.sink.message_count() == 0, "smtp-sink got nothing");

    let alice = inst.local_addr("alice");
    let local = inst.sendmail(&from, &[&alice], "local", &inst.unique_token("local"));
    inst.wait_removed(&local);
    inst.assert_delivered(&local, &from, "local", &[&alice]);
    inst.check(
        inst.queue_ids("deferred") == vec![id.clone()],
        "the smtp mail is still deferred",
    );

    inst.postqueue_f();
    inst.wait_removed(&id);
    let tried = deliveries(&inst, &id);
    inst.check(
        tried.len() == 2
            && tried[1].is_from("smtp")
            && tried[1].status() == Some("sent")
            && tried[1].field("to") == Some(&format!("<{rcpt}>")[..]),
        &format!("after postqueue -f: one status=sent by smtp: {tried:?}"),
    );
    inst.wait_until("smtp-sink to hold the message", || {
        inst.sink.messages().iter().any(|m| m.contains(&token))
    });
    inst.check(
        inst.sink
            .messages()
            .iter()
            .filter(|m| m.contains(&token))
            .count()
            == 1,
        "smtp-sink got one copy",
    );
    inst.wait_queue_empty();

    // The flush lifted defer_transports for its own run only.
    let again = inst.send_smtp(&from, &[rcpt], "again", &inst.unique_token("again"));
    wait_deferred(&inst, &again, 1, rcpt, "deferred transport");
    inst.check(
        inst.sink.message_count() == 1,
        "smtp-sink got nothing more after the flush",
    );
}

// ---- 8. missing transport --------------------------------------------------------------

/// A route to a transport that master.cf does not have: qmgr warns that it
/// cannot connect to private/nosuch, the mail is deferred with `mail
/// transport unavailable` and stays queued.
fn missing_transport_defers_mail(q: Qmgr) {
    let inst = Instance::start(Opts::new("nosuch", q).transport("nosuch.example", "nosuch:"));
    let from = inst.local_addr("sender");
    let rcpt = "user@nosuch.example";
    let id = inst.sendmail(&from, &[rcpt], "nosuch", &inst.unique_token("nosuch"));
    let want = "warning: connect to transport private/nosuch: No such file or directory";
    inst.wait_for_line(&format!("qmgr to log `{want}`"), |l| {
        l.is_from("qmgr") && l.text == want
    });
    let line = wait_deferred(&inst, &id, 1, rcpt, "mail transport unavailable");
    inst.check(
        line.is_from("error")
            && line.field("relay") == Some("none")
            && line.field("dsn") == Some("4.3.0")
            && line.reason() == Some("mail transport unavailable"),
        &format!("postfix/error (the retry service) logs (mail transport unavailable): {line}"),
    );
    check_listed(&inst, &id, &id, "mail transport unavailable");

    // The transport is now dead (for transport_retry_time, 60 s): more mail
    // for it is deferred at once, without another connection attempt.
    let warned = |l: &LogLine| l.is_from("qmgr") && l.text == want;
    let second = inst.sendmail(&from, &[rcpt], "nosuch 2", &inst.unique_token("nosuch"));
    wait_deferred(&inst, &second, 1, rcpt, "mail transport unavailable");
    inst.check(
        inst.log_lines().iter().filter(|l| warned(l)).count() == 1,
        "no second connection attempt to the dead transport",
    );

    // postqueue -f (F) revives dead transports: qmgr tries again.
    let m = mark(&inst);
    inst.postqueue_f();
    wait_deferred(&inst, &id, 2, rcpt, "mail transport unavailable");
    wait_deferred(&inst, &second, 2, rcpt, "mail transport unavailable");
    inst.check(
        lines_after(&inst, m).iter().filter(|l| warned(l)).count() == 1,
        "after postqueue -f, qmgr connects to the transport again (one new warning)",
    );
    let listing = inst.postqueue_p();
    for x in [&id, &second] {
        inst.check(
            listing_status(&listing, x).as_deref() == Some(&x[..])
                && !inst.lines_for(x).iter().any(|l| l.is_removed()),
            &format!("{x} stays in the deferred queue:\n{listing}"),
        );
    }
}

// ---- 9. crash safety ----------------------------------------------------------------

/// kill -9 of the queue manager while smtp deliveries are slow (smtp-sink
/// waits 3 s before it answers DATA): after the next trigger every message
/// has been delivered exactly once and the queue is empty.
fn qmgr_killed_during_slow_delivery_loses_nothing(q: Qmgr) {
    const N: usize = 3;
    let inst = Instance::start(
        Opts::new("kill-9", q)
            .slow_sink(3)
            .main_cf("service_throttle_time", "1s")
            // The master logs the qmgr "killed by signal 9": expected here.
            .fail_fast(false),
    );
    let slow = inst.slow_sink.as_ref().unwrap();
    let from = inst.local_addr("sender");
    let mut slow_msgs = Vec::new();
    let mut fast_msgs = Vec::new();
    for i in 0..N {
        let token = inst.unique_token("slow");
        let rcpt = format!("r{i}@slow.example");
        let id = inst.send_smtp(&from, &[&rcpt], "slow", &token);
        slow_msgs.push((id, rcpt, token));
        let id = inst.send_smtp(
            &from,
            &["fast@discard.example"],
            "fast",
            &inst.unique_token("fast"),
        );
        fast_msgs.push(id);
    }
    for id in &fast_msgs {
        inst.wait_removed(id);
    }
    inst.wait_until("smtp-sink to see all slow transactions start", || {
        slow.message_count() >= N
    });
    let listing = inst.postqueue_p();
    for (id, _, _) in &slow_msgs {
        inst.check(
            listing_status(&listing, id).as_deref() == Some(&format!("{id}*")[..]),
            &format!("postqueue -p shows {id}* (active) during the delivery:\n{listing}"),
        );
    }

    let old = inst
        .lines_for(&slow_msgs[0].0)
        .into_iter()
        .find(|l| l.is_queue_active())
        .unwrap()
        .pid;
    inst.check(
        inst.qmgr_pids() == vec![old],
        &format!("the qmgr process is pid {old}: {:?}", inst.qmgr_pids()),
    );
    inst.check(
        slow_msgs
            .iter()
            .all(|(id, _, _)| !inst.lines_for(id).iter().any(|l| l.is_delivery())),
        "the slow deliveries are still in progress at the kill",
    );
    inst.kill_qmgr(old);

    // The delivery agents finish on their own.
    let is_sent = |l: &LogLine, id: &str| {
        l.queue_id() == Some(id) && l.is_from("smtp") && l.status() == Some("sent")
    };
    for (id, _, _) in &slow_msgs {
        inst.wait_for_line(&format!("smtp to log {id} status=sent"), |l| is_sent(l, id));
    }
    std::thread::sleep(Duration::from_millis(300));
    inst.check(
        inst.qmgr_pids().is_empty(),
        "no qmgr runs before the next trigger",
    );

    // Wake up a new qmgr. A file an agent still holds is "skipped, still
    // being delivered" and dated 60 s ahead: kick IA (ignore time stamps)
    // again until the queue is empty.
    inst.postkick_qmgr("I");
    inst.kick_until_empty("the queue to be empty after the restart");
    check_delivered_once_after_kill(&inst, &slow_msgs, old);
    let new = inst.qmgr_pids();
    inst.check(
        new.len() == 1 && new[0] != old,
        &format!("a new qmgr runs: {new:?}"),
    );
}

/// kill -9 of the queue manager while smtp deliveries are slow, and a new
/// one started at once (postkick I) while the agents still deliver: the
/// new qmgr finds the files locked, logs `ID: skipped, still being
/// delivered` and puts them back in incoming dated 60 s ahead; after the
/// agents are done, `postkick IA` has them removed without a second
/// delivery.
fn qmgr_restarted_during_slow_delivery_skips_locked_files(q: Qmgr) {
    const N: usize = 2;
    let inst = Instance::start(
        Opts::new("restart-locked", q)
            .slow_sink(4)
            .main_cf("service_throttle_time", "1s")
            // The master logs the qmgr "killed by signal 9": expected here.
            .fail_fast(false),
    );
    let slow = inst.slow_sink.as_ref().unwrap();
    let from = inst.local_addr("sender");
    let mut msgs = Vec::new();
    for i in 0..N {
        let token = inst.unique_token("locked");
        let rcpt = format!("r{i}@slow.example");
        let id = inst.send_smtp(&from, &[&rcpt], "locked", &token);
        msgs.push((id, rcpt, token));
    }
    inst.wait_until("smtp-sink to see all slow transactions start", || {
        slow.message_count() >= N
    });
    let old = inst
        .lines_for(&msgs[0].0)
        .into_iter()
        .find(|l| l.is_queue_active())
        .unwrap()
        .pid;
    inst.kill_qmgr(old);
    inst.postkick_qmgr("I");
    let skipped = |l: &LogLine, id: &str| {
        l.is_from("qmgr")
            && l.queue_id() == Some(id)
            && l.body() == "skipped, still being delivered"
    };
    for (id, _, _) in &msgs {
        inst.wait_for_line(
            &format!("the new qmgr to log `{id}: skipped, still being delivered`"),
            |l| skipped(l, id),
        );
    }
    inst.check(
        msgs.iter()
            .all(|(id, _, _)| !inst.lines_for(id).iter().any(|l| l.is_delivery())),
        "the slow deliveries were still in progress when the new qmgr skipped them",
    );
    for (id, _, _) in &msgs {
        inst.wait_until(&format!("{id} back in incoming"), || {
            inst.queue_file("incoming", id).is_some()
        });
        let mtime = std::fs::metadata(inst.queue_file("incoming", id).unwrap())
            .and_then(|m| m.modified())
            .unwrap();
        let ahead = mtime
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        inst.check(
            (40..=61).contains(&ahead),
            &format!("{id} in incoming is dated about 60 s ahead, {ahead} s"),
        );
    }
    let listing = inst.postqueue_p();
    for (id, _, _) in &msgs {
        inst.check(
            listing_status(&listing, id).as_deref() == Some(&id[..]),
            &format!("postqueue -p lists {id} (in incoming, no marker):\n{listing}"),
        );
    }

    // The agents finish on their own; then IA (ignore time stamps).
    for (id, _, _) in &msgs {
        inst.wait_for_line(&format!("smtp to log {id} status=sent"), |l| {
            l.queue_id() == Some(id.as_str()) && l.is_from("smtp") && l.status() == Some("sent")
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    inst.postkick_qmgr("IA");
    inst.kick_until_empty("the queue to be empty after postkick IA");
    check_delivered_once_after_kill(&inst, &msgs, old);
}

/// After the kill of queue manager `old`, for each (queue id, recipient,
/// token) of `msgs`: one delivery line, `status=sent` to the recipient;
/// one `removed` line, by a queue manager other than `old`; one copy at
/// the slow sink, which saw no other transaction.
fn check_delivered_once_after_kill(inst: &Instance, msgs: &[(String, String, String)], old: u32) {
    let slow = inst.slow_sink.as_ref().unwrap();
    for (id, rcpt, token) in msgs {
        inst.wait_removed(id);
        let lines = inst.lines_for(id);
        let sent: Vec<&LogLine> = lines.iter().filter(|l| l.is_delivery()).collect();
        inst.check(
            sent.len() == 1
                && sent[0].status() == Some("sent")
                && sent[0].field("to") == Some(&format!("<{rcpt}>")[..]),
            &format!("{id}: one delivery line, status=sent: {sent:?}"),
        );
        let removed: Vec<&LogLine> = lines.iter().filter(|l| l.is_removed()).collect();
        inst.check(
            removed.len() == 1 && removed[0].pid != old,
            &format!("{id}: removed once, by a new qmgr: {removed:?}"),
        );
        let copies = slow
            .messages()
            .iter()
            .filter(|m| m.contains(&format!("token: {token}\n")))
            .count();
        inst.check(
            copies == 1,
            &format!("smtp-sink got {id} ({token}) once, got {copies}"),
        );
    }
    inst.check(
        slow.message_count() == msgs.len(),
        &format!(
            "smtp-sink saw {} transactions, saw {}",
            msgs.len(),
            slow.message_count()
        ),
    );
}

// ---- 10. future time stamp in incoming ------------------------------------------------

/// A file in incoming with an mtime an hour ahead is skipped by the normal
/// incoming scan (other mail is delivered), and delivered after
/// `postkick public qmgr IA`.
fn future_incoming_file_waits_for_scan_all(q: Qmgr) {
    let mut inst = Instance::start(
        Opts::new("future-incoming", q)
            .qmgr_disabled()
            .in_flow_delay_zero(),
    );
    let from = inst.local_addr("sender");
    let rcpt = "user@discard.example";
    let future = inst.send_smtp(&from, &[rcpt], "future", &inst.unique_token("future"));
    let now = inst.send_smtp(&from, &[rcpt], "now", &inst.unique_token("now"));
    inst.wait_until("2 files in incoming", || {
        inst.queue_ids("incoming").len() == 2
    });
    inst.set_queue_file_mtime("incoming", &future, in_an_hour());

    inst.enable_qmgr();
    inst.wait_removed(&now);
    inst.assert_delivered(&now, &from, "discard", &[rcpt]);
    // Another incoming scan: new mail (cleanup's trigger) and postkick I.
    let m = mark(&inst);
    inst.postkick_qmgr("I");
    let later = inst.sendmail(&from, &[rcpt], "later", &inst.unique_token("later"));
    inst.wait_removed(&later);
    stays_quiet(&inst, m, 0.5, "delivery of the file dated ahead", |l| {
        l.queue_id() == Some(future.as_str())
    });
    inst.check(
        inst.lines_for(&future).iter().all(|l| !l.is_from("qmgr")),
        "qmgr never touched the file dated ahead",
    );
    inst.check(
        inst.queue_ids("incoming") == vec![future.clone()],
        "the file dated ahead stays in incoming",
    );
    let listing = inst.postqueue_p();
    inst.check(
        listing_status(&listing, &future).as_deref() == Some(&future[..]),
        &format!("postqueue -p lists {future} without a marker:\n{listing}"),
    );

    inst.postkick_qmgr("IA");
    inst.wait_removed(&future);
    inst.assert_delivered(&future, &from, "discard", &[rcpt]);
    inst.wait_queue_empty();
}

// ---- postfix reload ----------------------------------------------------------------

/// `postfix reload` makes the queue manager exit and master(8) start a new
/// one at once (its wake-up trigger right after the reload): after every one
/// of several reloads in a row a new process runs, without any mail or kick
/// to start it, for the `unix` service and for the `fifo` one; then mail
/// still flows.
fn every_reload_brings_up_a_new_queue_manager(q: Qmgr) {
    let postfix = q != Qmgr::Rqmgr;
    for opts in [
        Opts::new("reloads", q.clone()),
        Opts::new("reloads-fifo", q).qmgr_fifo(),
    ] {
        let inst = Instance::start(opts);
        inst.wait_until("a queue manager to run", || inst.qmgr_pids().len() == 1);
        for round in 1..=6 {
            let old = inst.qmgr_pids();
            inst.reload();
            if postfix {
                // Postfix's qmgr and oqmgr sometimes take master's
                // post-reload wake-up trigger on their way out (a race of
                // their own event loop): then no queue manager runs until
                // master's next wake-up, 300 s on. Once the old one is
                // gone, ask for the next, as an administrator would.
                // rqmgr must bring up the next one without this.
                inst.wait_until(
                    &format!("the old queue manager to exit after reload {round} (old: {old:?})"),
                    || inst.qmgr_pids().iter().all(|p| !old.contains(p)),
                );
                inst.postkick_qmgr("W");
            }
            inst.wait_until(
                &format!("a new queue manager after reload {round} (old: {old:?})"),
                || {
                    let now = inst.qmgr_pids();
                    now.len() == 1 && !old.contains(&now[0])
                },
            );
        }
        let from = inst.local_addr("sender");
        let rcpt = "user@discard.example";
        let id = inst.send_smtp(&from, &[rcpt], "reloads", &inst.unique_token("reloads"));
        inst.wait_removed(&id);
        inst.assert_delivered(&id, &from, "discard", &[rcpt]);
    }
}
