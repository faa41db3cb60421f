//! `rqmgr status` and `rqmgr explain` against a real private Postfix whose
//! queue manager is rqmgr. These are rqmgr's own commands (Postfix's qmgr
//! has no status socket), so these tests run only against rqmgr (the
//! `rqmgr::` set; `RQMGR_TEST_QMGR=/path` picks the binary); like every
//! acceptance test they fail, never skip, when Postfix is missing.
//!
//! - a dead destination (smtp to a closed port) shows as dead with the
//!   reason Postfix logged; `explain` of the deferred message gives its due
//!   time (the file's mtime) and the reason from its defer logfile; a held
//!   message is on hold;
//! - a rate-delayed destination shows its next slot;
//! - behind a full window (slow sink, concurrency 1) `explain` says so;
//! - with one agent process, a small message names the list's job the
//!   transport serves first, and then the list names the small job that
//!   preempted it;
//! - status queries in a loop during a drain, and garbage on the socket,
//!   lose and delay no mail: all delivered once, the queue empty, the same
//!   rqmgr process.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use support::{distinct_ids, Instance, LogLine, Opts, Qmgr};

mod rqmgr {
    #[test]
    fn dead_destination_deferred_and_held_mail() {
        super::dead_destination_deferred_and_held_mail(crate::support::Qmgr::Rqmgr)
    }
    #[test]
    fn rate_delayed_destination_shows_its_next_slot() {
        super::rate_delayed_destination_shows_its_next_slot(crate::support::Qmgr::Rqmgr)
    }
    #[test]
    fn explain_behind_a_full_window() {
        super::explain_behind_a_full_window(crate::support::Qmgr::Rqmgr)
    }
    #[test]
    fn explain_names_the_job_in_the_way() {
        super::explain_names_the_job_in_the_way(crate::support::Qmgr::Rqmgr)
    }
    #[test]
    fn status_queries_during_a_drain_change_nothing() {
        super::status_queries_during_a_drain_change_nothing(crate::support::Qmgr::Rqmgr)
    }
}

/// `rqmgr <command> -c ROOT/etc <args>`, checked; its stdout.
fn run(inst: &Instance, command: &str, args: &[&str]) -> String {
    let out = inst.rqmgr_command(command, args);
    if !out.success() {
        inst.fail(&format!(
            "rqmgr {command} {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status, out.stdout, out.stderr
        ));
    }
    out.stdout
}

fn status_json(inst: &Instance) -> Value {
    let out = run(inst, "status", &["--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| inst.fail(&format!("status --json: {e}: {out}")))
}

fn explain_json(inst: &Instance, id: &str) -> Value {
    let out = run(inst, "explain", &["--json", id]);
    serde_json::from_str(&out).unwrap_or_else(|e| inst.fail(&format!("explain --json: {e}: {out}")))
}

/// The destinations of transport `transport` in a `status --json` answer.
fn destinations<'a>(st: &'a Value, transport: &str) -> Vec<&'a Value> {
    st["transports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"] == transport)
        .flat_map(|t| t["destinations"].as_array().into_iter().flatten())
        .collect()
}

fn deferred_line(inst: &Instance, id: &str) -> Option<LogLine> {
    inst.lines_for(id)
        .into_iter()
        .find(|l| l.is_delivery() && l.status() == Some("deferred"))
}

/// A closed port with `initial_destination_concurrency = 1`: the first
/// refused connection kills the destination (one failed cohort). Mail to
/// `held.example` arrives on hold.
fn dead_destination_deferred_and_held_mail(q: Qmgr) {
    let inst = Instance::start(
        Opts::new("status-dead", q)
            .main_cf("initial_destination_concurrency", "1")
            .transport("held.example", "discard:")
            .main_cf(
                "smtpd_recipient_restrictions",
                "check_recipient_access inline:{held.example=HOLD}",
            ),
    );
    let from = inst.local_addr("sender");
    let token = inst.unique_token("dead");
    let id = inst.send_smtp(&from, &["x@closed.example"], "dead", &token);
    inst.wait_until("the message deferred, in the deferred queue", || {
        deferred_line(&inst, &id).is_some() && inst.queue_ids("deferred").contains(&id)
    });
    let logged = deferred_line(&inst, &id).unwrap();
    let reason = logged.reason().unwrap_or_default().to_string();
    inst.check(
        reason.contains("Connection refused"),
        &format!("the deferral says why: {logged}"),
    );

    // status: the destination is dead, with Postfix's reason, until later.
    let port = inst.closed_port.to_string();
    let st = status_json(&inst);
    let dests = destinations(&st, "smtp");
    let dead = dests
        .iter()
        .find(|d| d["name"].as_str().unwrap_or("").contains(&port))
        .unwrap_or_else(|| inst.fail(&format!("no smtp destination with port {port}: {st}")));
    inst.check(dead["state"] == "dead", &format!("dead: {dead}"));
    let why = dead["dead"]["reason"].as_str().unwrap_or("");
    inst.check(
        why == format!("delivery temporarily suspended: {reason}"),
        &format!("the dead reason is Postfix's: {why:?} vs {reason:?}"),
    );
    let taken = st["taken"].as_i64().unwrap();
    let until = dead["dead"]["until"].as_i64().unwrap_or(0);
    inst.check(
        until > taken && until <= taken + 300,
        &format!("dead until within minimal_backoff_time: {until} vs {taken}"),
    );
    let text = run(&inst, "status", &[]);
    inst.check(
        text.contains(&format!(":[127.0.0.1]:{port}"))
            && text.contains("dead until ")
            && text.contains(&reason),
        &format!("the text shows the dead destination:\n{text}"),
    );

    // explain of the deferred message: due at the file's mtime, the reason
    // from its defer logfile.
    let mtime = std::fs::metadata(inst.queue_file("deferred", &id).unwrap())
        .unwrap()
        .mtime();
    let x = explain_json(&inst, &id);
    inst.check(x["place"] == "deferred", &format!("in deferred: {x}"));
    inst.check(
        x["due"].as_i64() == Some(mtime),
        &format!("due at mtime {mtime}: {x}"),
    );
    let r = &x["recipients"][0];
    inst.check(
        r["address"] == "x@closed.example" && r["state"] == "deferred",
        &format!("the recipient: {r}"),
    );
    inst.check(
        r["reason"].as_str() == Some(reason.as_str()),
        &format!("the defer logfile's reason, as logged ({reason:?}): {r}"),
    );
    let text = run(&inst, "explain", &[&id]);
    inst.check(
        text.contains("deferred, due at ") && text.contains(&reason),
        &format!("explain text:\n{text}"),
    );

    // A held message.
    let token = inst.unique_token("held");
    let held = inst.send_smtp(&from, &["y@held.example"], "held", &token);
    inst.wait_until("the message on hold", || {
        inst.queue_ids("hold").contains(&held)
    });
    let x = explain_json(&inst, &held);
    inst.check(x["place"] == "hold", &format!("on hold: {x}"));
    let r = &x["recipients"][0];
    inst.check(
        r["address"] == "y@held.example" && r["state"] == "hold",
        &format!("its recipient, from the queue file: {x}"),
    );
    let text = run(&inst, "explain", &[&held]);
    inst.check(text.contains("on hold"), &format!("explain text:\n{text}"));

    // A queue id that is nowhere.
    let x = explain_json(&inst, "ABCDEF0123");
    inst.check(x["place"] == "unknown", &format!("unknown: {x}"));
}

/// `rated`: a clone of smtp to the sink, one delivery per 3 seconds.
fn rate_delayed_destination_shows_its_next_slot(q: Qmgr) {
    const N: usize = 3;
    let inst = Instance::start(
        Opts::new("status-rated", q)
            .main_cf("rated_destination_rate_delay", "3s")
            .service("rated     unix  -       -       n       -       -       smtp")
            .transport("rated.example", "rated:[127.0.0.1]:{sink_port}")
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let ids: Vec<String> = (0..N)
        .map(|i| {
            let token = inst.unique_token(&format!("rated{i}"));
            inst.send_smtp(&from, &["r@rated.example"], "rated", &token)
        })
        .collect();
    let mut seen = None;
    inst.wait_until("a suspended rated destination with its next slot", || {
        let st = status_json(&inst);
        let taken = st["taken"].as_i64().unwrap_or(0);
        let found = destinations(&st, "rated").into_iter().find(|d| {
            d["state"] == "suspended"
                && d["next_slot"]
                    .as_i64()
                    .is_some_and(|t| t >= taken - 1 && t <= taken + 3)
        });
        if let Some(d) = found {
            seen = Some(d.clone());
        }
        seen.is_some()
    });
    let slot = seen.unwrap();
    inst.check(
        slot["todo"].as_u64() > Some(0),
        &format!("mail waits for the slot: {slot}"),
    );
    for id in &ids {
        inst.wait_removed(id);
        inst.assert_delivered(id, &from, "smtp", &["r@rated.example"]);
    }
    inst.wait_queue_empty();
}

/// Two messages to the slow sink (5 s before it answers DATA) with
/// `smtp_destination_concurrency_limit = 1`: one is being delivered, the
/// other waits behind a full window.
fn explain_behind_a_full_window(q: Qmgr) {
    let inst = Instance::start(
        Opts::new("status-window", q)
            .slow_sink(5)
            .main_cf("smtp_destination_concurrency_limit", "1")
            .timeout(Duration::from_secs(60)),
    );
    let from = inst.local_addr("sender");
    let ids: Vec<String> = (0..2)
        .map(|i| {
            let token = inst.unique_token(&format!("slow{i}"));
            inst.send_smtp(&from, &["s@slow.example"], "slow", &token)
        })
        .collect();
    let mut states = Vec::new();
    inst.wait_until("one message delivering, one behind the full window", || {
        states = ids
            .iter()
            .map(|id| explain_json(&inst, id)["recipients"][0].clone())
            .collect();
        let s: Vec<&str> = states
            .iter()
            .map(|r| r["state"].as_str().unwrap_or(""))
            .collect();
        s.contains(&"delivering") && s.contains(&"window_full")
    });
    let waiting = states.iter().find(|r| r["state"] == "window_full").unwrap();
    inst.check(
        waiting["busy"] == 1 && waiting["window"] == 1 && waiting["ahead"] == 0,
        &format!("1 busy of 1, nothing ahead: {waiting}"),
    );
    let i = states
        .iter()
        .position(|r| r["state"] == "window_full")
        .unwrap();
    let text = run(&inst, "explain", &[&ids[i]]);
    inst.check(
        text.contains("in active, in the todo list of smtp:[127.0.0.1]:")
            && text.contains("window full (1 busy of 1)"),
        &format!("explain text:\n{text}"),
    );
    for id in &ids {
        inst.wait_removed(id);
        inst.assert_delivered(id, &from, "smtp", &["s@slow.example"]);
    }
    inst.wait_queue_empty();
}

/// nqmgr's job scheduling, seen from `explain`: transport `one` (one
/// agent process, `one_destination_recipient_limit = 1`, so every
/// recipient has its own queue and no window fills) takes a list of 16
/// recipients to the slow sink (2 s each; at least
/// transport_minimum_delivery_slots × delivery_slot_cost = 15, or it
/// cannot be preempted); a three-recipient message sent meanwhile first
/// waits while the transport serves the list's job, then preempts it
/// (qmgr_job.c), and while its job has entries left, the list's
/// recipients say which job preempted them. The small message is done
/// before the list is.
fn explain_names_the_job_in_the_way(q: Qmgr) {
    const LIST: usize = 16;
    let inst = Instance::start(
        Opts::new("status-jobs", q)
            .slow_sink(2)
            .service("one       unix  -       -       n       -       1       smtp")
            .transport("big.example", "one:[127.0.0.1]:{slow_sink_port}")
            .main_cf("one_destination_recipient_limit", "1")
            .timeout(Duration::from_secs(120)),
    );
    let from = inst.local_addr("sender");
    let list: Vec<String> = (0..LIST).map(|i| format!("r{i}@big.example")).collect();
    let list_refs: Vec<&str> = list.iter().map(String::as_str).collect();
    let token = inst.unique_token("list");
    let big = inst.send_smtp(&from, &list_refs, "list", &token);
    inst.wait_for_line("the list's first delivery", |l| {
        l.queue_id() == Some(big.as_str()) && l.is_delivery() && l.status() == Some("sent")
    });
    let token = inst.unique_token("small");
    let few = ["s0@big.example", "s1@big.example", "s2@big.example"];
    let small = inst.send_smtp(&from, &few, "small", &token);
    // The small message: the transport serves the list's job first, until
    // it preempts it and is delivered.
    let mut seen_blocked = None;
    let mut seen_preempted = None;
    inst.wait_progress("explain shows both jobs' states", || {
        if seen_blocked.is_none() {
            let r = explain_json(&inst, &small)["recipients"][0].clone();
            if r["state"] == "blocked" && r["job"] == big.as_str() {
                seen_blocked = Some(r);
            }
        }
        if seen_preempted.is_none() {
            let e = explain_json(&inst, &big);
            seen_preempted = e["recipients"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["state"] == "preempted")
                .cloned();
        }
        match (&seen_blocked, &seen_preempted) {
            (Some(_), Some(_)) => Ok(()),
            (b, p) => Err(format!("blocked {b:?}, preempted {p:?}")),
        }
    });
    let blocked = seen_blocked.unwrap();
    inst.check(
        blocked["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("transport one serves job {big} first"))),
        &format!("the small message names the list's job: {blocked}"),
    );
    let preempted = seen_preempted.unwrap();
    inst.check(
        preempted["job"] == small.as_str()
            && preempted["text"]
                .as_str()
                .is_some_and(|t| t.contains(&format!("job preempted by job {small}"))),
        &format!("the list names the small message's job: {preempted}"),
    );
    inst.wait_removed(&small);
    inst.wait_removed(&big);
    let lines = inst.log_lines();
    let removed = |id: &str| {
        lines
            .iter()
            .position(|l| l.is_removed() && l.queue_id() == Some(id))
    };
    inst.check(
        removed(&small) < removed(&big),
        "the small message went out before the list was done",
    );
    inst.assert_delivered(&small, &from, "smtp", &few);
    inst.assert_delivered(&big, &from, "smtp", &list_refs);
    inst.wait_queue_empty();
}

/// One request straight on the socket; the answer (empty if closed).
fn raw_request(inst: &Instance, bytes: &[u8]) -> String {
    let path = inst.spool().join("private/#rqmgr-status");
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .unwrap_or_else(|e| inst.fail(&format!("connect {}: {e}", path.display())));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// 300 messages from smtp-source to the sink while another thread asks
/// `status` and `explain` without pause; garbage on the socket first.
fn status_queries_during_a_drain_change_nothing(q: Qmgr) {
    const N: usize = 300;
    let inst = Instance::start(Opts::new("status-drain", q).timeout(Duration::from_secs(90)));
    let pids = inst.qmgr_pids();
    // The socket: in private/, mode 0666, owned by mail_owner (rqmgr
    // creates it once it runs: wait for it).
    let socket = inst.spool().join("private/#rqmgr-status");
    inst.wait_until("the status socket", || socket.exists());
    let meta = std::fs::metadata(&socket).unwrap();
    inst.check(
        meta.mode() & 0o777 == 0o666 && meta.uid() == support::sys::uid_of("postfix"),
        &format!("socket mode {:o}, uid {}", meta.mode(), meta.uid()),
    );
    for garbage in [
        &b"\xff\xfe\x00garbage\n"[..],
        b"explain ../../etc/passwd\n",
        b"status",
        &[b'x'; 10_000][..],
        b"",
    ] {
        let out = raw_request(&inst, garbage);
        inst.check(
            out.is_empty() || out.starts_with("{\"error\":"),
            &format!("an error answer to garbage: {out:?}"),
        );
    }
    let ok = raw_request(&inst, b"status\n");
    inst.check(
        ok.starts_with("{\"status\":"),
        &format!("then a status: {ok:?}"),
    );

    let from = inst.local_addr("sender");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (queries, failures) = std::thread::scope(|scope| {
        let asker = scope.spawn(|| {
            let (mut n, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = inst.rqmgr_command("status", &["--json"]);
                if !out.success() {
                    failed.push(out.stderr.clone());
                }
                if let Some(id) = inst.queue_ids("active").first() {
                    let out = inst.rqmgr_command("explain", &[id]);
                    if !out.success() {
                        failed.push(out.stderr.clone());
                    }
                }
                n += 1;
            }
            (n, failed)
        });
        let n = N.to_string();
        inst.smtp_source(&["-s", "5", "-m", &n, "-f", &from, "-t", "rcpt@sink.example"]);
        let is_sent = |l: &LogLine| {
            l.is_from("smtp")
                && l.is_delivery()
                && l.status() == Some("sent")
                && l.field("to") == Some("<rcpt@sink.example>")
        };
        inst.wait_progress(&format!("{N} sent and removed"), || {
            let lines = inst.log_lines();
            let sent = distinct_ids(&lines, is_sent);
            let removed = distinct_ids(&lines, |l| l.is_removed());
            if sent.len() >= N && removed.len() >= N {
                Ok(())
            } else {
                Err(format!("{} sent, {} removed", sent.len(), removed.len()))
            }
        });
        inst.wait_queue_empty();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        asker.join().unwrap()
    });
    inst.check(queries > 0, "status was asked during the drain");
    inst.check(
        failures.is_empty(),
        &format!("every status and explain answered: {failures:?}"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let lines = inst.log_lines();
    let sent: Vec<&LogLine> = lines
        .iter()
        .filter(|l| l.is_delivery() && l.status() == Some("sent"))
        .collect();
    inst.check(
        sent.len() == N,
        &format!("{N} deliveries, none twice: {}", sent.len()),
    );
    inst.check(inst.sink.message_count() == N, "the sink has every message");
    inst.check(
        inst.qmgr_pids() == pids,
        "the same rqmgr process throughout",
    );
    inst.check(
        !lines
            .iter()
            .any(|l| l.is_from("qmgr") && l.text.contains("warning")),
        "no qmgr warning",
    );
}
