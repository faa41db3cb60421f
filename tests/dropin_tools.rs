//! Acceptance tests: the tools an administrator already uses on a Postfix
//! report the same with rqmgr as the maillog says: pflogsumm,
//! prometheus-postfix-exporter, `postqueue -j`, qshape and postcat. And
//! what an administrator sees of the queue manager itself: its start-up
//! line, `--version`, and the refusal to run by hand.
//!
//! Every test runs once per queue manager (`rqmgr::`, `postfix_qmgr::`,
//! `postfix_oqmgr::`). They need root, Postfix and the tools
//! (.ci/setup-postfix installs them all); a missing one fails the test.
//! Timing fields (delay=, delays=, ages) are never compared.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use support::tools::{self, Exporter, Json, Metrics};
use support::{Instance, LogLine, Opts, Qmgr};

dropin_tests!(
    mixed_workload_counts_agree_in_every_tool,
    start_up_line_names_the_queue_manager,
    refuses_to_run_by_hand,
);

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// rqmgr's start-up line: `info: rqmgr <version> started, ...`.
fn is_start_up_line(l: &LogLine) -> bool {
    l.is_from("qmgr") && l.text.starts_with("info: rqmgr ")
}

// ---- what the maillog says ----------------------------------------------------

/// The counts an administrator would read off the maillog by hand, with
/// the definitions pflogsumm documents: `delivered` = status=sent lines
/// (not "forwarded as"), `deferrals` = status=deferred lines, `deferred`
/// = distinct queue ids with one, `bounced` = status=bounced lines,
/// `received` = smtpd `client=` and pickup `sender=`/`uid=` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogCounts {
    received: u64,
    delivered: u64,
    deferrals: u64,
    deferred: u64,
    bounced: u64,
    /// status=deferred lines per program (pflogsumm's deferral detail).
    deferrals_by_program: BTreeMap<String, u64>,
    /// status=bounced lines per relay= (pflogsumm's bounce detail).
    bounces_by_relay: BTreeMap<String, u64>,
}

fn count_log(lines: &[LogLine]) -> LogCounts {
    let mut c = LogCounts::default();
    let mut deferred_ids = BTreeSet::new();
    for l in lines {
        if (l.is_from("smtpd") && l.body().starts_with("client="))
            || (l.is_from("pickup")
                && (l.body().starts_with("sender=") || l.body().starts_with("uid=")))
        {
            c.received += 1;
        }
        if !l.is_delivery() {
            continue;
        }
        match l.status() {
            Some("sent") if !l.body().contains("forwarded as ") => c.delivered += 1,
            Some("deferred") => {
                c.deferrals += 1;
                deferred_ids.insert(l.queue_id().unwrap().to_string());
                *c.deferrals_by_program
                    .entry(l.daemon().to_string())
                    .or_default() += 1;
            }
            Some("bounced") => {
                c.bounced += 1;
                *c.bounces_by_relay
                    .entry(l.field("relay").unwrap_or("").to_string())
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    c.deferred = deferred_ids.len() as u64;
    c
}

/// What prometheus-postfix-exporter (0.3.0, Debian 12) should count for
/// these log lines, by its own rules (postfix_exporter.go): qmgr lines with
/// `, size=N, nrcpt=N ` are inserts, qmgr lines ending in `: removed` are
/// removals, smtp lines with `, relay=..., delays=a/b/c/d, ` are delivery
/// delays (four observations each) and, with `, status=deferred`,
/// deferrals; every other line of qmgr, and every line of a program it has
/// no rules for (local, error, discard, bounce, pickup, master), counts as
/// "unsupported" under that program's name.
fn expected_exporter_counts(lines: &[LogLine]) -> BTreeMap<String, f64> {
    let mut e: BTreeMap<String, f64> = BTreeMap::new();
    let mut add = |k: &str, v: f64| *e.entry(k.to_string()).or_default() += v;
    let nrcpt_of = |l: &LogLine| -> Option<f64> {
        let n = l.field("nrcpt")?;
        let after = l.body().split_once(&format!(", nrcpt={n}"))?.1;
        (l.field("size").is_some() && after.starts_with(' '))
            .then(|| n.parse().ok())
            .flatten()
    };
    for l in lines {
        match l.daemon() {
            "qmgr" => {
                if let Some(n) = nrcpt_of(l) {
                    add("inserts", 1.0);
                    add("inserted rcpts", n);
                } else if l.text.ends_with(": removed") {
                    add("removed", 1.0);
                } else {
                    add("unsupported qmgr", 1.0);
                }
            }
            "smtp" if l.body().contains(", relay=") && l.body().contains(", delays=") => {
                add("smtp delay observations", 4.0);
                if l.body().contains(", status=deferred") {
                    add("smtp deferred", 1.0);
                }
            }
            "cleanup" if l.body().starts_with("message-id=<") => add("cleanup processed", 1.0),
            "smtpd" if l.body().starts_with("client=") => add("smtpd processed", 1.0),
            d @ ("local" | "error" | "discard" | "bounce" | "pickup" | "master") => {
                add(&format!("unsupported {d}"), 1.0);
            }
            _ => {}
        }
    }
    e
}

/// The same quantities, read off the exporter's metrics (a delta between
/// two scrapes).
fn exporter_counts(m: &Metrics) -> BTreeMap<String, f64> {
    let mut e = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        if v != 0.0 {
            e.insert(k.to_string(), v);
        }
    };
    put(
        "inserts",
        m.get("postfix_qmgr_messages_inserted_size_bytes_count"),
    );
    put(
        "inserted rcpts",
        m.get("postfix_qmgr_messages_inserted_receipients_sum"),
    );
    put("removed", m.get("postfix_qmgr_messages_removed_total"));
    put(
        "smtp delay observations",
        m.sum("postfix_smtp_delivery_delay_seconds_count"),
    );
    put("smtp deferred", m.get("postfix_smtp_status_deferred"));
    put(
        "cleanup processed",
        m.get("postfix_cleanup_messages_processed_total"),
    );
    put(
        "smtpd processed",
        m.sum("postfix_smtpd_messages_processed_total"),
    );
    for d in [
        "qmgr", "local", "error", "discard", "bounce", "pickup", "master",
    ] {
        put(
            &format!("unsupported {d}"),
            m.get(&format!(
                "postfix_unsupported_log_entries_total{{service=\"{d}\"}}"
            )),
        );
    }
    e
}

// ---- the test -------------------------------------------------------------------

/// One mixed workload: smtp to the sink, discard, local, bounces (error:),
/// deferrals (a closed port), multi-recipient messages, one of them partly
/// delivered, bounced and deferred at once; across a `postfix reload`
/// (a fresh queue manager process). Then pflogsumm, the exporter,
/// `postqueue -j`, qshape and postcat must tell what the maillog tells.
fn mixed_workload_counts_agree_in_every_tool(q: Qmgr) {
    tools::require_tools();
    let inst = Instance::start(Opts::new("tools", q.clone()));
    let from = inst.local_addr("sender");

    // The exporter follows the maillog from its end; the marker line that
    // log_caught_up writes shows when it does, and its counters then are
    // the baseline.
    let exporter = Exporter::start(&inst);
    let marker_text = inst.log_caught_up();
    let mut baseline = Metrics::default();
    inst.wait_progress("the exporter to read the marker line", || {
        let m = exporter.metrics()?;
        let seen = m.get("postfix_unsupported_log_entries_total{service=\"rqmgrtest\"}");
        if seen >= 1.0 {
            baseline = m;
            Ok(())
        } else {
            Err(format!("unsupported rqmgrtest lines: {seen}"))
        }
    });

    // A fresh queue manager process (rqmgr: a new start-up line).
    let old_pids = inst.qmgr_pids();
    inst.reload();
    inst.wait_until("a new queue manager process after the reload", || {
        let now = inst.qmgr_pids();
        !now.is_empty() && now.iter().all(|p| !old_pids.contains(p))
    });
    if q == Qmgr::Rqmgr {
        let pid = inst.qmgr_pids()[0];
        inst.wait_for_line("the new rqmgr's start-up line", |l| {
            is_start_up_line(l) && l.pid == pid
        });
    }

    // The workload.
    let alice = inst.local_addr("alice");
    let bob = inst.local_addr("bob");
    let tok = |w: &str| inst.unique_token(w);
    let m_sink = inst.send_smtp(
        &from,
        &["a@sink.example", "b@sink.example"],
        "two at the sink",
        &tok("sink"),
    );
    let m_discard = inst.send_smtp(&from, &["c@discard.example"], "discard", &tok("discard"));
    let m_local = inst.sendmail(&from, &[&alice, &bob], "two local", &tok("local"));
    let m_bounce = inst.sendmail(&from, &["nobody@error.example"], "bounce", &tok("bounce"));
    let m_defer = inst.send_smtp(&from, &["user@closed.example"], "defer", &tok("defer"));
    let m_mixed = inst.sendmail(
        &from,
        &[
            "d@sink.example",
            "user2@closed.example",
            &bob,
            "gone@error.example",
        ],
        "sent, deferred and bounced",
        &tok("mixed"),
    );

    let ndr_of = |id: &str| {
        let l = inst.wait_for_line(&format!("the non-delivery notice for {id}"), |l| {
            l.is_from("bounce")
                && l.queue_id() == Some(id)
                && l.body().starts_with("sender non-delivery notification: ")
        });
        l.body().rsplit(' ').next().unwrap().to_string()
    };
    let ndr_bounce = ndr_of(&m_bounce);
    let ndr_mixed = ndr_of(&m_mixed);
    for id in [
        &m_sink,
        &m_discard,
        &m_local,
        &m_bounce,
        &ndr_bounce,
        &ndr_mixed,
    ] {
        inst.wait_removed(id);
    }
    let want_deferred: Vec<String> = {
        let mut v = vec![m_defer.clone(), m_mixed.clone()];
        v.sort();
        v
    };
    inst.wait_until(
        "the two deferred messages in the deferred queue only",
        || {
            inst.queue_ids("deferred") == want_deferred
                && ["maildrop", "incoming", "active", "hold"]
                    .iter()
                    .all(|q| inst.queue_ids(q).is_empty())
        },
    );
    inst.wait_for_log("two status=deferred lines", |lines| {
        lines
            .iter()
            .filter(|l| l.is_delivery() && l.status() == Some("deferred"))
            .count()
            >= 2
    });
    // Let stragglers reach the log before counting.
    std::thread::sleep(std::time::Duration::from_millis(500));

    // ---- the maillog ----------------------------------------------------------------
    let lines = inst.log_lines();
    let log = count_log(&lines);
    let want = LogCounts {
        received: 6,
        delivered: 9,
        deferrals: 2,
        deferred: 2,
        bounced: 2,
        ..Default::default()
    };
    inst.check(
        (
            log.received,
            log.delivered,
            log.deferrals,
            log.deferred,
            log.bounced,
        ) == (
            want.received,
            want.delivered,
            want.deferrals,
            want.deferred,
            want.bounced,
        ),
        &format!(
            "the maillog shows the workload: 6 received, 9 delivered (2 sink, 1 discard, \
             2 local, 2 notices, 1 sink + 1 local of the mixed one), 2 deferrals of 2 messages, \
             2 bounced; it shows {log:?}"
        ),
    );
    let start_up_lines = lines.iter().filter(|l| is_start_up_line(l)).count();
    let want_start_up = if q == Qmgr::Rqmgr { 2 } else { 0 };
    inst.check(
        start_up_lines == want_start_up,
        &format!(
            "{want_start_up} start-up lines (one per queue manager process), saw {start_up_lines}"
        ),
    );

    // ---- pflogsumm --------------------------------------------------------------
    let report = tools::pflogsumm(&inst.maillog_path());
    let totals = tools::grand_totals(&report);
    let got = |k: &str| totals.get(k).copied().unwrap_or(0);
    inst.check(
        (
            got("received"),
            got("delivered"),
            got("deferred"),
            got("deferrals"),
            got("bounced"),
            got("forwarded"),
            got("rejected"),
        ) == (
            log.received,
            log.delivered,
            log.deferred,
            log.deferrals,
            log.bounced,
            0,
            0,
        ),
        &format!("pflogsumm's Grand Totals {totals:?} agree with the maillog {log:?}:\n{report}"),
    );
    let (deferral_detail, deferral_text) =
        tools::detail_section(&report, "message deferral detail");
    inst.check(
        deferral_detail == log.deferrals_by_program && deferral_text.contains("Connection refused"),
        &format!(
            "pflogsumm's deferral detail {deferral_detail:?} agrees with the maillog {:?} and \
             gives the reason (Connection refused):\n{deferral_text}",
            log.deferrals_by_program
        ),
    );
    let (bounce_detail, bounce_text) =
        tools::detail_section(&report, "message bounce detail (by relay)");
    inst.check(
        bounce_detail == log.bounces_by_relay && bounce_text.contains("mailbox unavailable"),
        &format!(
            "pflogsumm's bounce detail {bounce_detail:?} agrees with the maillog {:?} and gives \
             the reason (mailbox unavailable):\n{bounce_text}",
            log.bounces_by_relay
        ),
    );
    for heading in ["Fatal Errors", "Panics"] {
        inst.check(
            !report.lines().any(|l| l.trim() == heading),
            &format!("no {heading} in pflogsumm's report:\n{report}"),
        );
    }
    // rqmgr's start-up lines change nothing in the report.
    let without = inst.root.join("log/maillog-without-start-up-lines");
    let stripped: String = inst
        .maillog()
        .lines()
        .filter(|l| !is_start_up_line(&LogLine::parse(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&without, stripped).unwrap();
    let report_without = tools::pflogsumm(&without);
    inst.check(
        report_without == report,
        "pflogsumm's report is the same with and without rqmgr's start-up lines",
    );

    // ---- prometheus-postfix-exporter ------------------------------------------------
    let marker_at = lines
        .iter()
        .position(|l| l.text == marker_text)
        .expect("marker line");
    let after_marker = &lines[marker_at + 1..];
    let want_exp = expected_exporter_counts(after_marker);
    let mut last = BTreeMap::new();
    let mut showq = Metrics::default();
    inst.wait_progress("the exporter's counters to agree with the maillog", || {
        let m = exporter.metrics()?;
        last = exporter_counts(&baseline.delta(&m));
        showq = m;
        if last == want_exp {
            Ok(())
        } else {
            Err(format!("exporter {last:?}, maillog {want_exp:?}"))
        }
    });
    let want_of = |k: &str| want_exp.get(k).copied().unwrap_or(0.0);
    inst.check(
        want_of("inserts") == 8.0 && want_of("removed") == 6.0,
        &format!(
            "the exporter saw the workload: 8 messages into the active queue (6 sent, 2 notices),              6 removed: {want_exp:?}"
        ),
    );
    inst.check(
        want_exp.get("smtp deferred").copied().unwrap_or(0.0)
            + want_exp.get("unsupported qmgr").copied().unwrap_or(0.0)
            >= 2.0,
        &format!("the deferrals are among the exporter's counts: {want_exp:?}"),
    );
    let deferred_in_showq = showq.get("postfix_showq_message_size_bytes_count{queue=\"deferred\"}");
    let active_in_showq = showq.get("postfix_showq_message_size_bytes_count{queue=\"active\"}");
    inst.check(
        deferred_in_showq == 2.0 && active_in_showq == 0.0,
        &format!(
            "the exporter's showq metrics count 2 deferred and 0 active messages, \
             count {deferred_in_showq} and {active_in_showq}"
        ),
    );

    // ---- postqueue -j -----------------------------------------------------------------
    let refused = format!(
        "connect to 127.0.0.1[127.0.0.1]:{}: Connection refused",
        inst.closed_port
    );
    let json = inst.postqueue_j();
    let mut listed: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for line in json.lines().filter(|l| !l.trim().is_empty()) {
        let v = Json::parse(line).unwrap_or_else(|e| inst.fail(&format!("postqueue -j: {e}")));
        let s = |k: &str| v.get(k).and_then(Json::as_str).unwrap_or("").to_string();
        inst.check(
            s("queue_name") == "deferred" && s("sender") == from,
            &format!("postqueue -j: a deferred message from {from}: {line}"),
        );
        let rcpts = v
            .get("recipients")
            .map(Json::as_array)
            .unwrap_or(&[])
            .iter()
            .map(|r| {
                let f = |k: &str| r.get(k).and_then(Json::as_str).unwrap_or("").to_string();
                (f("address"), f("delay_reason"))
            })
            .collect();
        listed.insert(s("queue_id"), rcpts);
    }
    let ids: Vec<&String> = listed.keys().collect();
    inst.check(
        ids == want_deferred.iter().collect::<Vec<_>>(),
        &format!("postqueue -j lists {want_deferred:?}:\n{json}"),
    );
    for (id, rcpt) in [
        (&m_defer, "user@closed.example"),
        (&m_mixed, "user2@closed.example"),
    ] {
        let r = &listed[id];
        inst.check(
            r.len() == 1 && r[0].0 == rcpt && r[0].1.contains(&refused),
            &format!(
                "postqueue -j: {id} has one recipient left, {rcpt}, delay_reason with \
                 \"{refused}\" (the delivered and bounced ones are done): {r:?}"
            ),
        );
    }

    // ---- qshape -------------------------------------------------------------------------
    let shape_row = |text: &str, first: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(first))
                .then(|| w.next().and_then(|n| n.parse().ok()))
                .flatten()
        })
    };
    let shape = inst.qshape(&["deferred"]);
    let domains: Vec<&str> = shape
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "TOTAL")
        .collect();
    inst.check(
        shape_row(&shape, "TOTAL") == Some(2)
            && shape_row(&shape, "closed.example") == Some(2)
            && domains == ["closed.example"],
        &format!("qshape deferred: 2 recipients, both at closed.example:\n{shape}"),
    );
    let senders = inst.qshape(&["-s", "deferred"]);
    inst.check(
        shape_row(&senders, "TOTAL") == Some(2)
            && shape_row(&senders, support::HOSTNAME) == Some(2),
        &format!(
            "qshape -s deferred: 2 messages from {}:\n{senders}",
            support::HOSTNAME
        ),
    );

    // ---- postcat ----------------------------------------------------------------------
    let cat = inst.postcat(&["-q", &m_mixed]);
    let records: Vec<&str> = cat.lines().collect();
    let has = |r: &str| records.contains(&r);
    inst.check(
        has(&format!("sender: {from}"))
            && has("recipient: user2@closed.example")
            && has("done_recipient: d@sink.example")
            && has(&format!("done_recipient: {bob}"))
            && has("done_recipient: gone@error.example")
            && !has("recipient: d@sink.example")
            && !has(&format!("recipient: {bob}"))
            && !has("recipient: gone@error.example")
            && has("Subject: sent, deferred and bounced"),
        &format!(
            "postcat -q {m_mixed}: the envelope keeps user2@closed.example to deliver, \
             the delivered and bounced recipients are marked done:\n{cat}"
        ),
    );
    let cat = inst.postcat(&["-q", &m_defer]);
    inst.check(
        cat.lines().any(|l| l == "recipient: user@closed.example")
            && cat.lines().any(|l| l == format!("sender: {from}")),
        &format!("postcat -q {m_defer} shows the deferred message:\n{cat}"),
    );
    drop(exporter);
}

/// rqmgr says once per process, at start-up, which program it is, its
/// version and its scheduler; Postfix's queue managers say nothing at
/// start-up (at default verbosity).
fn start_up_line_names_the_queue_manager(q: Qmgr) {
    let inst = Instance::start(Opts::new("start-up", q.clone()));
    let want = format!(
        "info: rqmgr {VERSION} started, scheduler nqmgr, configuration {}",
        inst.config_dir()
    );
    if q == Qmgr::Rqmgr {
        inst.wait_for_line("rqmgr's start-up line", is_start_up_line);
    } else {
        // Give it the time rqmgr takes to log it.
        inst.wait_until("the queue manager to run", || !inst.qmgr_pids().is_empty());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let qmgr_lines: Vec<String> = inst
        .log_lines()
        .into_iter()
        .filter(|l| l.is_from("qmgr"))
        .map(|l| l.text)
        .collect();
    let expected: Vec<String> = if q == Qmgr::Rqmgr {
        vec![want]
    } else {
        Vec::new()
    };
    inst.check(
        qmgr_lines == expected,
        &format!("the queue manager's lines at start-up are {expected:?}: {qmgr_lines:?}"),
    );
    drop(inst);

    if q == Qmgr::Rqmgr {
        // The scheduler named is the one in use.
        let inst = Instance::start(
            Opts::new("start-up-o", q.clone()).qmgr_args(&["--scheduler", "oqmgr"]),
        );
        let l = inst.wait_for_line("rqmgr's start-up line", is_start_up_line);
        inst.check(
            l.text
                .contains(&format!("rqmgr {VERSION} started, scheduler oqmgr,")),
            &format!("`--scheduler oqmgr` is named in the start-up line: {l}"),
        );
        // And --version.
        let out = std::process::Command::new(q.path())
            .arg("--version")
            .output()
            .expect("run rqmgr --version");
        let text = String::from_utf8_lossy(&out.stdout);
        inst.check(
            out.status.success() && text == format!("rqmgr {VERSION}\n"),
            &format!("`rqmgr --version` prints \"rqmgr {VERSION}\": {text:?}"),
        );
    }
}

/// Run by hand at a terminal (here: under script(1), which gives it one),
/// the queue manager refuses, on the terminal and in the log, with the
/// words of Postfix's daemons.
fn refuses_to_run_by_hand(q: Qmgr) {
    let inst = Instance::start(Opts::new("by-hand", q.clone()).fail_fast(false));
    let program = q.path();
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    let transcript = inst.root.join("log/by-hand.typescript");
    let out = std::process::Command::new("/usr/bin/script")
        .arg("-qec")
        .arg(format!("{} -l -t unix -u", program.display()))
        .arg(&transcript)
        .env("MAIL_CONFIG", inst.etc())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script(1) (package bsdutils)");
    let screen = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    inst.check(
        screen.contains(&format!("{name}: fatal: do not run this command by hand"))
            && out.status.code() == Some(1),
        &format!(
            "{name} at a terminal says \"{name}: fatal: do not run this command by hand\" and \
             exits 1: status {:?}, screen {screen:?}",
            out.status.code()
        ),
    );
    inst.wait_for_line("the refusal in the maillog", |l| {
        (l.is_from("qmgr") || l.is_from("oqmgr"))
            && l.text == "fatal: do not run this command by hand"
    });
}
