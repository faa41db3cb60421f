//! Acceptance test: with `-v` on its master.cf line, the queue manager
//! reports the same scheduling steps as Postfix's qmgr does with `-v`
//! (`msg_verbose` in `qmgr/qmgr_*.c`, and the client lines of
//! `global/resolve_clnt.c`, `global/mail_connect.c`, `util/attr_print0.c`
//! and `util/attr_scan0.c`), in the same words: the scans, the feed, the
//! recipient sort and resolution, transport and peer (oqmgr: queue)
//! selection, agent allocation, the requests sent and replies read,
//! positive and negative feedback, deferral, bounce and completion, and
//! the flush.
//!
//! Runs once per queue manager (`rqmgr::`, `postfix_qmgr::`,
//! `postfix_oqmgr::`); needs root and Postfix, and fails without them.

#[macro_use]
mod support;

use support::{Instance, Opts, Qmgr};

dropin_tests!(verbose_lines_report_the_same_steps);

fn verbose_lines_report_the_same_steps(q: Qmgr) {
    let nqmgr = q != Qmgr::PostfixOqmgr;
    let inst = Instance::start(Opts::new("verbose", q).qmgr_args(&["-v"]));
    let from = inst.local_addr("sender");
    let local = inst.local_addr("alice");
    let tok = |w: &str| inst.unique_token(w);
    let to_local = inst.sendmail(&from, &[&local], "local", &tok("local"));
    let discarded = inst.sendmail(
        &from,
        &["x@discard.example", "y@discard.example"],
        "discard",
        &tok("discard"),
    );
    let bounced = inst.sendmail(&from, &["nobody@error.example"], "bounce", &tok("bounce"));
    let deferred = inst.sendmail(&from, &["z@closed.example"], "defer", &tok("defer"));
    for id in [&to_local, &discarded, &bounced] {
        inst.wait_removed(id);
    }
    inst.wait_for_line("the deferral", |l| {
        l.queue_id() == Some(deferred.as_str()) && l.text.contains("status=deferred")
    });
    inst.postqueue_f();

    let sender = inst.local_addr("sender");
    let closed_site = format!("[127.0.0.1]:{}", inst.closed_port);
    let mut want: Vec<String> = vec![
        "qmgr_scan_start: start incoming queue scan".into(),
        "done incoming queue scan".into(),
        "qmgr_scan_start: start deferred queue scan".into(),
        "qmgr_enable_all".into(),
        "start sorted recipient list".into(),
        "qmgr_message_sort: x@discard.example".into(),
        "end sorted recipient list".into(),
        format!(
            "resolve_clnt: `{sender}' -> `x@discard.example' -> transp=`discard' \
             host=`discard.example' rcpt=`x@discard.example' flags= class=default"
        ),
        "connect to subsystem private/rewrite".into(),
        "connect to subsystem private/discard".into(),
        "send attr request = resolve".into(),
        "send attr address = x@discard.example".into(),
        "input attribute name: transport".into(),
        "input attribute value: discard".into(),
        "input attribute name: (end)".into(),
        "qmgr_transport_create: discard concurrency 20 recipients 50".into(),
        "qmgr_transport_select: discard".into(),
        "qmgr_active_drain: allocate discard".into(),
        "transport_event: discard".into(),
        "qmgr_deliver: site `discard.example'".into(),
        "qmgr_queue_unthrottle: queue discard.example".into(),
        format!("qmgr_queue_throttle: queue {closed_site}: 4.4.1 "),
        format!("qmgr_active_defer: defer {deferred}"),
        format!("wakeup {deferred} after "),
        format!("qmgr_active_done: bounce {bounced}"),
    ];
    for id in [&to_local, &discarded, &bounced, &deferred] {
        want.push(format!("qmgr_active_feed: incoming/{id}"));
        want.push(format!("qmgr_message_alloc: active {id}"));
        want.push(format!("qmgr_active_done: {id}"));
        want.push(format!("send attr queue_id = {id}"));
    }
    if nqmgr {
        want.push(format!("{discarded}: recipient limit "));
        want.push(format!(
            "qmgr_peer_select: {discarded} discard discard.example (1 of "
        ));
        want.push(format!("qmgr_job_retire: {discarded}"));
        want.push(format!("qmgr_job_free: {discarded} discard"));
    } else {
        want.push("qmgr_queue_select: discard.example".into());
    }
    let missing = |lines: &[support::LogLine]| -> Vec<String> {
        let texts: Vec<&str> = lines
            .iter()
            .filter(|l| l.is_from("qmgr"))
            .map(|l| l.text.as_str())
            .collect();
        want.iter()
            .filter(|w| !texts.iter().any(|t| t.starts_with(w.as_str())))
            .cloned()
            .collect()
    };
    inst.wait_progress("every -v line of the workload", || {
        let left = missing(&inst.log_lines());
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("missing -v lines: {left:#?}"))
        }
    });
}
