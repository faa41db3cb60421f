//! Address verification probes and the fast flush service, where the queue
//! manager itself disposes of a recipient (`qmgr_defer_recipient` →
//! `defer_append`): a probe's result goes to verify(8) (`verify_append`),
//! other mail's domain to flush(8) (`flush_add`), and probes beyond
//! `address_verify_pending_request_limit` are deferred. Checked against
//! rqmgr, Postfix's qmgr and oqmgr.

#[macro_use]
mod support;

use std::time::Duration;
use support::{Instance, Opts, Qmgr};

dropin_tests!(
    qmgr_own_deferrals_reach_verify_and_fast_flush,
    probes_beyond_the_pending_limit_are_deferred,
);

/// With no `retry` service and a transport whose agent cannot be reached,
/// the queue manager defers recipients itself. Ordinary mail: the
/// `status=deferred` line, and the queue id in flush(8)'s log for the
/// domain (`fast_flush_domains`), so that `postqueue -s` and ETRN find it.
/// A probe: `status=undeliverable` and the reason in verify(8)'s cache,
/// which the next SMTP RCPT for the address gets back.
fn qmgr_own_deferrals_reach_verify_and_fast_flush(q: Qmgr) {
    let inst = Instance::start(
        Opts::new("vrfyflush", q)
            .omit_service("retry")
            .transport("nosuch.example", "nosuch:")
            .main_cf("fast_flush_domains", "nosuch.example")
            .main_cf(
                "smtpd_recipient_restrictions",
                "reject_unverified_recipient",
            )
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("flush");
    let id = inst.sendmail(&from, &["u@nosuch.example"], "flush", &token);
    let line = inst.wait_for_line("the queue manager deferring the recipient", |l| {
        l.queue_id() == Some(id.as_str())
            && l.status() == Some("deferred")
            && l.field("to") == Some("<u@nosuch.example>")
    });
    inst.check(
        line.is_from("qmgr") && line.reason() == Some("mail transport unavailable"),
        &format!("qmgr's own deferral: {}", line.raw),
    );
    // flush(8) names the log after the site, dots as underscores.
    let flush_log = inst.spool().join("flush").join("nosuch_example");
    inst.wait_until("the queue id in flush(8)'s log for nosuch.example", || {
        std::fs::read_to_string(&flush_log).is_ok_and(|t| t.lines().any(|l| l.trim() == id))
    });

    // A probe for the same domain: smtpd asks verify(8), which sends it.
    let probe = "p@nosuch.example";
    let mut smtp = inst.smtp();
    smtp.expect(Some(&format!("MAIL FROM:<{from}>")), 250)
        .unwrap_or_else(|e| inst.fail(&e));
    let first = smtp
        .expect(Some(&format!("RCPT TO:<{probe}>")), 450)
        .unwrap_or_else(|e| inst.fail(&e));
    inst.check(
        first.text.contains("unverified address"),
        &format!("the first RCPT waits for the probe: {}", first.text),
    );
    smtp.quit();
    let line = inst.wait_for_line("the probe's result", |l| {
        l.field("to") == Some(format!("<{probe}>").as_str()) && l.status() == Some("undeliverable")
    });
    inst.check(
        line.is_from("qmgr") && line.reason() == Some("mail transport unavailable"),
        &format!("qmgr records the probe itself: {}", line.raw),
    );
    inst.wait_progress("verify(8) to answer with the cached reason", || {
        let mut smtp = inst.smtp();
        let reply = smtp
            .expect(Some(&format!("MAIL FROM:<{from}>")), 250)
            .and_then(|_| smtp.expect(Some(&format!("RCPT TO:<{probe}>")), 450));
        smtp.quit();
        match reply {
            Ok(r) if r.text.contains("mail transport unavailable") => Ok(()),
            Ok(r) => Err(r.text),
            Err(e) => Err(e),
        }
    });
}

/// Probes to a destination that never answers pile up in the active
/// queue: beyond `address_verify_pending_request_limit` they go to
/// `retry`, which reports them undeliverable with "Too many address
/// verification requests" (`qmgr_message_resolve`).
fn probes_beyond_the_pending_limit_are_deferred(q: Qmgr) {
    // Accepts connections (the kernel's backlog) and never greets: a probe
    // to it waits for smtp_helo_timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent port");
    let port = silent.local_addr().expect("its address").port();
    let inst = Instance::start(
        Opts::new("vrfylimit", q)
            .transport("slow.example", &format!("smtp:[127.0.0.1]:{port}"))
            .main_cf("address_verify_pending_request_limit", "1")
            .main_cf("address_verify_poll_count", "1")
            .main_cf(
                "smtpd_recipient_restrictions",
                "reject_unverified_recipient",
            )
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let mut smtp = inst.smtp();
    smtp.expect(Some(&format!("MAIL FROM:<{from}>")), 250)
        .unwrap_or_else(|e| inst.fail(&e));
    for i in 0..4 {
        smtp.expect(Some(&format!("RCPT TO:<v{i}@slow.example>")), 450)
            .unwrap_or_else(|e| inst.fail(&e));
    }
    smtp.quit();
    let line = inst.wait_for_line("a probe refused for the pending limit", |l| {
        l.reason() == Some("Too many address verification requests")
    });
    inst.check(
        line.field("dsn") == Some("4.3.2") && line.status() == Some("undeliverable"),
        &format!("dsn 4.3.2, status undeliverable: {}", line.raw),
    );
    drop(silent);
}
