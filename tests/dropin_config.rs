//! Acceptance tests: bad configuration and hostile bytes, content filters
//! and redirects, checked against Postfix's qmgr and oqmgr as well.

#[macro_use]
mod support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use support::{Instance, Opts, Qmgr};

dropin_tests!(
    bad_main_cf_value_is_a_logged_fatal,
    bad_transport_parameter_is_fatal_when_the_transport_is_first_used,
    non_utf8_sender_is_logged_with_question_marks,
    content_filter_route_replaces_resolution,
    redirect_action_sends_the_message_elsewhere,
    verp_sender_is_encoded_per_recipient,
);

/// A main.cf value the queue manager cannot use: it exits, and the mail log
/// says why, with the queue manager's own tag (not only master's "exit
/// status 1" lines).
fn bad_main_cf_value_is_a_logged_fatal(q: Qmgr) {
    let inst = Instance::start(
        Opts::new("badcf", q)
            .main_cf("qmgr_message_active_limit", "lots")
            .fail_fast(false),
    );
    let line = inst.wait_for_line("the queue manager's fatal line", |l| {
        l.is_from("qmgr")
            && l.body() == "fatal: bad numerical configuration: qmgr_message_active_limit = lots"
    });
    inst.check(
        line.text.contains("fatal:"),
        "a fatal line from the queue manager",
    );
}

/// A per-transport parameter the queue manager cannot use ends it with
/// Postfix's fatal line at the moment Postfix's qmgr reads it: when the
/// first recipient for that transport is resolved. Until then mail for
/// other transports flows; the message for the broken transport stays
/// queued, never lost, never delivered with a guessed value; once the
/// value is fixed it is delivered.
fn bad_transport_parameter_is_fatal_when_the_transport_is_first_used(q: Qmgr) {
    let mut inst = Instance::start(
        Opts::new("badxport", q)
            .main_cf("smtp_destination_recipient_limit", "lots")
            // master restarts a queue manager that exited this soon.
            .main_cf("service_throttle_time", "1s")
            .fail_fast(false),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("discard");
    let first = inst.sendmail(&from, &["a@discard.example"], "discard", &token);
    inst.wait_removed(&first);
    let fatal = "fatal: bad numerical configuration: smtp_destination_recipient_limit = lots";
    inst.check(
        !inst.log_lines().iter().any(|l| l.body() == fatal),
        "no fatal line before smtp mail arrives",
    );
    let token = inst.unique_token("smtp");
    let id = inst.sendmail(&from, &["b@sink.example"], "smtp", &token);
    inst.wait_for_line("the queue manager's fatal line", |l| {
        l.is_from("qmgr") && l.body() == fatal
    });
    let queued = inst.queue_listing().values().flatten().any(|x| *x == id);
    inst.check(queued, "the smtp message is still queued");
    inst.check(
        !inst.lines_for(&id).iter().any(|l| l.is_delivery()),
        "no delivery attempt with a guessed recipient limit",
    );
    inst.set_main_cf("smtp_destination_recipient_limit", "50");
    inst.wait_removed(&id);
    let sent = inst
        .lines_for(&id)
        .iter()
        .filter(|l| l.field("to") == Some("<b@sink.example>") && l.status() == Some("sent"))
        .count();
    inst.check(
        sent == 1,
        &format!("delivered once, saw {sent} status=sent lines"),
    );
}

/// A sender with a byte that is not UTF-8 (accepted by sendmail): the
/// queue manager logs it as `?`, as Postfix's printable() does, never as
/// raw bytes or a replacement character.
fn non_utf8_sender_is_logged_with_question_marks(q: Qmgr) {
    let inst = Instance::start(Opts::new("8bit", q));
    let token = inst.unique_token("8bit");
    let from = OsStr::from_bytes(b"caf\xe9x@discard.example");
    let text = inst.message_text(
        "cafe@discard.example",
        &["user@discard.example"],
        "8-bit sender",
        &token,
    );
    let id = inst.sendmail_text(from, &["user@discard.example"], &text, &token);
    inst.wait_removed(&id);
    let active = inst
        .lines_for(&id)
        .into_iter()
        .find(|l| l.is_queue_active())
        .expect("a (queue active) line");
    inst.check(
        active
            .body()
            .starts_with("from=<caf?x@discard.example>, size="),
        &format!("the sender is logged as caf?x: {active}"),
    );
    inst.check(
        !inst.maillog().contains('\u{fffd}'),
        "no replacement characters in the log",
    );
}

/// A content filter (`L` record, from `content_filter` in smtpd) replaces
/// trivial-rewrite's answer for every recipient: mail for a destination that
/// would defer goes to the filter transport with the filter's nexthop.
fn content_filter_route_replaces_resolution(q: Qmgr) {
    let inst = Instance::start(
        Opts::new("filter", q).main_cf("content_filter", "discard:filtered-by-test"),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("filter");
    let id = inst.send_smtp(&from, &["user@closed.example"], "content filter", &token);
    inst.wait_removed(&id);
    let sent = inst
        .lines_for(&id)
        .into_iter()
        .find(|l| l.is_delivery())
        .expect("a delivery line");
    inst.check(
        sent.is_from("discard")
            && sent.status() == Some("sent")
            && sent.reason() == Some("filtered-by-test"),
        &format!("delivered through the filter route: {sent}"),
    );
}

/// A REDIRECT action (the `>` record) sends the message to one address
/// instead of all its recipients.
fn redirect_action_sends_the_message_elsewhere(q: Qmgr) {
    let checks = std::env::temp_dir().join(format!(
        "rqmgr-header-checks-{}-{}",
        std::process::id(),
        q.tag()
    ));
    let alice = format!("alice@{}", support::HOSTNAME);
    std::fs::write(
        &checks,
        format!("/^Subject: please redirect/ REDIRECT {alice}\n"),
    )
    .expect("write header_checks");
    let inst = Instance::start(
        Opts::new("redirect", q).main_cf("header_checks", &format!("regexp:{}", checks.display())),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("redirect");
    let id = inst.send_smtp(
        &from,
        &["user@closed.example", "other@discard.example"],
        "please redirect",
        &token,
    );
    inst.wait_removed(&id);
    let _ = std::fs::remove_file(&checks);
    let deliveries: Vec<_> = inst
        .lines_for(&id)
        .into_iter()
        .filter(|l| l.is_delivery())
        .collect();
    inst.check(
        deliveries.len() == 1,
        &format!("exactly one delivery: {deliveries:?}"),
    );
    inst.check(
        deliveries[0].is_from("local") && deliveries[0].status() == Some("sent"),
        &format!("delivered locally: {}", deliveries[0]),
    );
    inst.check(
        inst.mailbox("alice").contains(&token),
        "alice's mailbox holds the message",
    );
}

/// VERP (`sendmail -XV`, the `V` record): each recipient gets its own
/// delivery with the sender `local+rcptlocal=rcptdomain@domain`, as the
/// delivery agent's MAIL FROM shows.
fn verp_sender_is_encoded_per_recipient(q: Qmgr) {
    let inst = Instance::start(Opts::new("verp", q));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("verp");
    let rcpts = ["one@sink.example", "two@sink.example"];
    let text = inst.message_text(&from, &rcpts, "verp", &token);
    let id = inst.sendmail_with(&["-XV"], &from, &rcpts, &text, &token);
    inst.wait_removed(&id);
    let dumps = inst.sink.messages();
    let mail_from = |d: &String| {
        d.lines()
            .find(|l| l.starts_with("X-Mail-Args:"))
            .map(str::to_string)
    };
    let senders: Vec<String> = dumps
        .iter()
        .filter(|d| d.contains(&token))
        .filter_map(mail_from)
        .collect();
    inst.check(
        senders.len() == 2,
        &format!("two deliveries, one per recipient: {senders:?}"),
    );
    for r in ["one=sink.example", "two=sink.example"] {
        let want = format!("sender+{r}@{}", support::HOSTNAME);
        inst.check(
            senders.iter().any(|s| s.contains(&want)),
            &format!("a MAIL FROM with {want}: {senders:?}"),
        );
    }
}
