//! The simulator and a real queue manager make the same decisions.
//!
//! One workload goes through a private Postfix (with rqmgr, Postfix's qmgr
//! or oqmgr as its queue manager) and through `rqmgr::sim`, which drives
//! rqmgr's core with simulated agents. The simulator has no code of its own
//! for admission, routing overrides, reading agents' replies or
//! completion: it calls the core for each. So when its answers match what
//! a real Postfix did, the one implementation of those decisions is right
//! for the daemon and for the simulator alike; and since the test also runs
//! against Postfix's own qmgr and oqmgr, it is right for Postfix too.
//!
//! The workload: mail to discard(8) (delivered), to error(8) (bounced),
//! one message half to each (partly bounced), three messages to a closed
//! port released together (deferred; the destination dies after the same
//! three `qmgr_queue_throttle` lines), mail to a transport listed in
//! `defer_transports` (deferred through `retry`), and mail to smtp-sink.
//! Compared per message: removed or deferred (with the backoff time
//! stamp), each recipient's status, whether a non-delivery notice was
//! sent; the destination's throttle lines and each transport's feedback
//! debug lines, byte for byte.

#[macro_use]
mod support;

use ::rqmgr::config::{MainCf, Params, TransportTable};
use ::rqmgr::qmgr::{Disposition, Reason, Settings, Step, Strategy};
use ::rqmgr::sim::{Destination, Fate, Sim, SimMessage};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{Instance, LogLine, Opts, Qmgr};

dropin_tests!(simulator_and_daemon_decide_alike);

/// main.cf settings both runs share.
const MAIN_CF: &[(&str, &str)] = &[
    ("destination_concurrency_feedback_debug", "yes"),
    ("defer_transports", "held"),
];

/// Seconds the real run may take from a deferral to the end of the wait.
const RUN_SLACK: i64 = 60;

/// The messages: a label, and recipients (`local@domain`).
const PLAN: &[(&str, &[&str])] = &[
    ("sent", &["u1@discard.example"]),
    ("bounced", &["u2@error.example"]),
    (
        "partly-bounced",
        &["u3@discard.example", "u4@error.example"],
    ),
    ("held", &["u5@held.example"]),
    ("sink", &["u6@sink.example"]),
    ("closed-1", &["c1@closed.example"]),
    ("closed-2", &["c2@closed.example"]),
    ("closed-3", &["c3@closed.example"]),
];

/// What happened to one message, as a user would check it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// "removed" or "deferred".
    disposition: &'static str,
    /// Per recipient (in PLAN order): sent, bounced or deferred.
    statuses: Vec<&'static str>,
    /// A non-delivery notice was sent to the sender.
    notice: bool,
    /// Deferred: seconds from the deferral to the retry time stamp.
    backoff: Option<i64>,
}

fn simulator_and_daemon_decide_alike(q: Qmgr) {
    let mut opts = Opts::new("decisions", q)
        .main_cf(
            "smtpd_recipient_restrictions",
            "check_recipient_access inline:{closed.example=HOLD}",
        )
        .service("held      unix  -       -       n       -       -       smtp")
        .transport("held.example", "held:[127.0.0.1]:{sink_port}")
        .timeout(Duration::from_secs(60));
    for (name, value) in MAIN_CF {
        opts = opts.main_cf(name, value);
    }
    let inst = Instance::start(opts);
    let (real, real_throttle) = run_real(&inst);
    let (sim, sim_lines) = run_sim(&inst);
    let sim_throttle: Vec<String> = sim_lines
        .iter()
        .filter(|l| l.starts_with("qmgr_queue_throttle:"))
        .cloned()
        .collect();
    let mut problems = Vec::new();
    for (label, _) in PLAN {
        if real[*label] != sim[*label] {
            problems.push(format!(
                "{label}: daemon {:?}, simulator {:?}",
                real[*label], sim[*label]
            ));
        }
    }
    let (real_init, sim_init) = (feedback_init(&inst.log_lines()), {
        let mut v: Vec<String> = sim_lines
            .iter()
            .filter(|l| l.contains(" feedback type "))
            .cloned()
            .collect();
        v.sort();
        v
    });
    if real_init != sim_init || real_init.is_empty() {
        problems.push(format!(
            "feedback debug lines differ:\ndaemon:\n{}\nsimulator:\n{}",
            real_init.join("\n"),
            sim_init.join("\n")
        ));
    }
    if real_throttle != sim_throttle {
        problems.push(format!(
            "throttle lines differ:\ndaemon:\n{}\nsimulator:\n{}",
            real_throttle.join("\n"),
            sim_throttle.join("\n")
        ));
    }
    // The expectations themselves, so that the test cannot pass by both
    // sides being wrong the same way.
    let expect = |label: &str, disposition: &str, statuses: &[&str], notice: bool| {
        let o = &real[label];
        (o.disposition == disposition && o.statuses == statuses && o.notice == notice)
            .then_some(())
            .ok_or(format!("{label}: {o:?}"))
    };
    for r in [
        expect("sent", "removed", &["sent"], false),
        expect("bounced", "removed", &["bounced"], true),
        expect("partly-bounced", "removed", &["sent", "bounced"], true),
        expect("held", "deferred", &["deferred"], false),
        expect("sink", "removed", &["sent"], false),
        expect("closed-1", "deferred", &["deferred"], false),
    ] {
        if let Err(e) = r {
            problems.push(format!("unexpected: {e}"));
        }
    }
    if real["held"].backoff != Some(300) {
        problems.push(format!(
            "held: backoff {:?}, not minimal_backoff_time",
            real["held"].backoff
        ));
    }
    if real_throttle.len() != 5 || !real_throttle[4].contains(" window 0 ") {
        problems.push(format!(
            "the closed destination is not dead after three failures: {real_throttle:?}"
        ));
    }
    inst.check(problems.is_empty(), &problems.join("\n"));
}

/// Sends the workload through the instance; per label what happened, and
/// the `qmgr_queue_throttle` lines in order.
fn run_real(inst: &Instance) -> (BTreeMap<&'static str, Outcome>, Vec<String>) {
    let from = inst.local_addr("sender");
    let mut ids: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut smtp = inst.smtp();
    for (label, rcpts) in PLAN {
        let token = inst.unique_token(label);
        let id = if label.starts_with("closed") {
            let text = inst.message_text(&from, rcpts, label, &token);
            smtp.send(&from, rcpts, &text)
                .unwrap_or_else(|e| inst.fail(&format!("SMTP submission of {label}: {e}")))
        } else {
            inst.sendmail(&from, rcpts, label, &token)
        };
        ids.insert(label, id);
    }
    smtp.quit();
    // The closed-port messages arrived on hold: release them together, so
    // that they share one queue and its feedback (see dropin_scheduler.rs).
    inst.wait_progress("the closed-port messages to be on hold", || {
        let held = inst.queue_ids("hold");
        (held.len() == 3)
            .then_some(())
            .ok_or(format!("on hold: {held:?}"))
    });
    inst.postsuper(&["-H", "ALL"]);
    inst.postkick_qmgr("D");
    inst.wait_progress("every message to be removed or deferred", || {
        let lines = inst.log_lines();
        let deferred = inst.queue_ids("deferred");
        let busy: Vec<String> = ["incoming", "active", "maildrop", "hold"]
            .iter()
            .flat_map(|q| inst.queue_ids(q))
            .filter(|id| ids.values().any(|x| x == id))
            .collect();
        let settled = ids.values().all(|id| {
            deferred.contains(id)
                || lines
                    .iter()
                    .any(|l| l.queue_id() == Some(id) && l.is_removed())
        });
        (settled && busy.is_empty())
            .then_some(())
            .ok_or(format!("in deferred: {deferred:?}, still busy: {busy:?}"))
    });
    let settled = secs(Ok(SystemTime::now()));
    let lines = inst.log_lines();
    let mut out = BTreeMap::new();
    for (label, rcpts) in PLAN {
        let id = &ids[label];
        let mine: Vec<&LogLine> = lines
            .iter()
            .filter(|l| l.queue_id() == Some(id.as_str()))
            .collect();
        let removed = mine.iter().any(|l| l.is_removed());
        let statuses = rcpts
            .iter()
            .map(|r| {
                let to = format!("<{r}>");
                let status = mine
                    .iter()
                    .filter(|l| l.field("to") == Some(to.as_str()))
                    .find_map(|l| l.status());
                match status {
                    Some("sent") => "sent",
                    Some("bounced") => "bounced",
                    Some("deferred") => "deferred",
                    other => inst.fail(&format!("{label}: {r}: status {other:?}")),
                }
            })
            .collect();
        let notice = mine
            .iter()
            .any(|l| l.is_from("bounce") && l.body().contains("sender non-delivery notification"));
        let backoff = (!removed).then(|| {
            let path = inst
                .queue_file("deferred", id)
                .unwrap_or_else(|| inst.fail(&format!("{label}: {id} is not in deferred")));
            let mtime = secs(std::fs::metadata(path).and_then(|m| m.modified()));
            // The file was time-stamped "deferral + backoff" at most the
            // run's length before `settled`.
            let b = mtime - settled;
            if (300 - RUN_SLACK..=300).contains(&b) {
                300
            } else {
                b
            }
        });
        out.insert(
            *label,
            Outcome {
                disposition: if removed { "removed" } else { "deferred" },
                statuses,
                notice,
                backoff,
            },
        );
    }
    let throttle = lines
        .iter()
        .filter(|l| l.is_from("qmgr") && l.body().starts_with("qmgr_queue_throttle:"))
        .map(|l| l.body().to_string())
        .collect();
    (out, throttle)
}

fn secs(t: std::io::Result<SystemTime>) -> i64 {
    t.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// The feedback debug lines of each transport as it was created
/// (`qmgr_feedback_init`), sorted (transports may come in another order);
/// not those of `local`, which only the non-delivery notices to the
/// (local) sender use, and the simulator does not send.
fn feedback_init(lines: &[LogLine]) -> Vec<String> {
    let mut v: Vec<String> = lines
        .iter()
        .filter(|l| l.is_from("qmgr") && l.body().contains(" feedback type "))
        .filter(|l| !l.body().starts_with("local: "))
        .map(|l| l.body().to_string())
        .collect();
    v.sort();
    v
}

/// The same workload through the simulator, with the instance's routes;
/// what happened per label, and the log lines of the core's events.
fn run_sim(inst: &Instance) -> (BTreeMap<&'static str, Outcome>, Vec<String>) {
    let sink = format!("[127.0.0.1]:{}", inst.sink.port);
    let closed = format!("[127.0.0.1]:{}", inst.closed_port);
    let route = |rcpt: &str| -> (String, String) {
        let domain = rcpt.rsplit('@').next().unwrap_or("");
        match domain {
            "discard.example" => ("discard".into(), domain.into()),
            "error.example" => ("error".into(), "5.1.1 mailbox unavailable".into()),
            "held.example" => ("held".into(), sink.clone()),
            "sink.example" => ("smtp".into(), sink.clone()),
            "closed.example" => ("smtp".into(), closed.clone()),
            other => panic!("no route for {other}"),
        }
    };
    let workload: Vec<SimMessage> = PLAN
        .iter()
        .map(|(label, rcpts)| SimMessage {
            label: label.to_string(),
            // The closed-port messages come together, after the others.
            arrival: if label.starts_with("closed") {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            },
            recipients: rcpts.iter().map(|r| route(r)).collect(),
        })
        .collect();
    let refused = format!(
        "connect to 127.0.0.1[127.0.0.1]:{}: Connection refused",
        inst.closed_port
    );
    let destinations: HashMap<String, Destination> = [
        (
            closed.clone(),
            Destination {
                delivery_time: Duration::from_millis(5),
                failure: Some(Reason::new("4.4.1", &refused)),
            },
        ),
        (
            sink.clone(),
            Destination {
                delivery_time: Duration::from_millis(5),
                failure: None,
            },
        ),
    ]
    .into_iter()
    .collect();
    let text: String = MAIN_CF
        .iter()
        .map(|(n, v)| format!("{n} = {v}\n"))
        .collect();
    let mut cf = MainCf::parse(&text, Path::new("main.cf")).expect("main.cf");
    let (params, _) = Params::read(&mut cf).expect("parameters");
    let strategy = if inst.opts.qmgr == Qmgr::PostfixOqmgr {
        Strategy::Oqmgr
    } else {
        Strategy::Nqmgr
    };
    let settings = Settings::from_params(&params, strategy);
    let sim = Sim::new(
        settings.clone(),
        Box::new(TransportTable::new(params, cf)),
        workload,
        destinations,
        HashMap::new(),
        100,
    );
    let report = sim.run(Duration::from_secs(600));
    let mut out = BTreeMap::new();
    for (i, (label, _)) in PLAN.iter().enumerate() {
        let statuses = report.fates[i]
            .iter()
            .map(|f| match f {
                Some(Fate::Delivered(_)) => "sent",
                Some(Fate::Bounced(_)) => "bounced",
                Some(Fate::Deferred(_)) => "deferred",
                None => panic!("simulator: {label} not finished"),
            })
            .collect();
        let (disposition, backoff) = match report.dispositions[i] {
            Some(Disposition::Removed) => ("removed", None),
            Some(Disposition::Deferred { delay }) => ("deferred", Some(delay)),
            other => panic!("simulator: {label}: {other:?}"),
        };
        let notice = report.steps[i]
            .iter()
            .any(|s| matches!(s, Step::FlushBounce { .. }));
        out.insert(
            *label,
            Outcome {
                disposition,
                statuses,
                notice,
                backoff,
            },
        );
    }
    let lines = report
        .events
        .iter()
        .flat_map(|(_, e)| ::rqmgr::shell::logging::event_lines(e, &settings))
        .map(|(_, line)| line)
        .collect();
    (out, lines)
}
