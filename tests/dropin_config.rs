//! Acceptance tests: what the queue manager logs about bad configuration
//! and hostile bytes, checked against Postfix's qmgr and oqmgr as well.

#[macro_use]
mod support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use support::{Instance, Opts, Qmgr};

dropin_tests!(
    bad_main_cf_value_is_a_logged_fatal,
    non_utf8_sender_is_logged_with_question_marks,
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
