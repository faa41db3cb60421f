//! Acceptance test: rqmgr's Prometheus metrics (`--metrics` on the
//! master.cf command line) agree with the maillog of the same mail: the
//! deliveries per transport, the messages removed and deferred, a dead
//! destination with its window, the scans; scraping during the mail flow
//! loses nothing; and the setting lives on the master.cf line, so postconf
//! has nothing to warn about.
//!
//! rqmgr only: Postfix's qmgr has no metrics to compare with (its
//! behaviour for the same mail is the maillog, which the test reads).
//! Needs root and Postfix, and fails without them.

#[allow(unused_macros)]
mod support;

use support::tools::{http_get, Metrics};
use support::{sys, Instance, Opts, Qmgr};

/// One expected series: name, labels, value.
type Want<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// The value of metric `name` with (at least) these labels, if exported.
fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.0.iter()
        .find(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
}

#[test]
fn metrics_agree_with_the_maillog() {
    let port = sys::free_port();
    let listen = format!("127.0.0.1:{port}");
    let inst = Instance::start(
        Opts::new("metrics", Qmgr::Rqmgr)
            .qmgr_args(&["--metrics", &listen, "--metrics-destinations", "5"])
            // One failed delivery is a whole cohort: the destination dies.
            .main_cf("initial_destination_concurrency", "1"),
    );
    let from = inst.local_addr("sender");
    let tok = |w: &str| inst.unique_token(w);
    let mut done = vec![
        inst.sendmail(&from, &["a@discard.example"], "one", &tok("one")),
        inst.sendmail(
            &from,
            &["b@discard.example", "c@discard.example"],
            "two",
            &tok("two"),
        ),
        inst.sendmail(&from, &["nobody@error.example"], "bounce", &tok("bounce")),
    ];
    let deferred = inst.sendmail(&from, &["d@closed.example"], "defer", &tok("defer"));
    // Scrape while the mail flows.
    let mut scrapes = 0;
    inst.wait_until("the deferral", || {
        if http_get(port, "/metrics").is_ok() {
            scrapes += 1;
        }
        inst.log_lines()
            .iter()
            .any(|l| l.queue_id() == Some(deferred.as_str()) && l.text.contains("status=deferred"))
    });
    inst.check(scrapes > 0, "a scrape answered during the mail flow");
    for id in &done {
        inst.wait_removed(id);
    }
    // The bounce notice is a message of its own.
    let lines = inst.log_lines();
    let notice: Vec<String> = lines
        .iter()
        .filter(|l| l.is_from("bounce") && l.text.contains("sender non-delivery notification"))
        .filter_map(|l| l.text.rsplit(' ').next().map(str::to_string))
        .collect();
    inst.check(notice.len() == 1, "one non-delivery notification");
    done.extend(notice);
    for id in &done {
        inst.wait_removed(id);
    }

    let lines = inst.log_lines();
    let sent_by = |program: &str| {
        lines
            .iter()
            .filter(|l| l.is_from(program) && l.text.contains("status=sent"))
            .count() as f64
    };
    let removed = lines
        .iter()
        .filter(|l| l.is_from("qmgr") && l.text.ends_with(": removed"))
        .count() as f64;
    let closed_site = format!("[127.0.0.1]:{}", inst.closed_port);
    inst.wait_progress("the metrics to agree with the maillog", || {
        let body = http_get(port, "/metrics")?;
        let m = Metrics::parse(&body);
        let want: Vec<Want> = vec![
            (
                "rqmgr_delivery_recipients_total",
                vec![("transport", "discard")],
                sent_by("discard"),
            ),
            (
                "rqmgr_delivery_requests_total",
                vec![("transport", "discard"), ("result", "ok")],
                2.0,
            ),
            (
                "rqmgr_delivery_seconds_count",
                vec![("transport", "discard")],
                2.0,
            ),
            (
                "rqmgr_delivery_requests_total",
                vec![("transport", "smtp"), ("result", "retry")],
                1.0,
            ),
            (
                "rqmgr_messages_finished_total",
                vec![("disposition", "removed")],
                removed,
            ),
            (
                "rqmgr_messages_finished_total",
                vec![("disposition", "deferred")],
                1.0,
            ),
            (
                "rqmgr_destination_deaths_total",
                vec![("transport", "smtp")],
                1.0,
            ),
            (
                "rqmgr_transport_dead_destinations",
                vec![("transport", "smtp")],
                1.0,
            ),
            (
                "rqmgr_destination_window",
                vec![("transport", "smtp"), ("destination", closed_site.as_str())],
                0.0,
            ),
            ("rqmgr_active_messages", vec![], 0.0),
            ("rqmgr_active_message_limit", vec![], 20000.0),
        ];
        let wrong: Vec<String> = want
            .iter()
            .filter(|(n, l, v)| value(&m, n, l) != Some(*v))
            .map(|(n, l, v)| format!("{n}{l:?}: want {v}, got {:?}", value(&m, n, l)))
            .collect();
        let scans = value(&m, "rqmgr_scans_total", &[("queue", "incoming")]).unwrap_or(0.0);
        if wrong.is_empty() && scans >= 1.0 {
            Ok(())
        } else {
            Err(format!("{wrong:#?}, incoming scans {scans}"))
        }
    });
    // Nothing in main.cf: postconf has nothing to warn about.
    let out = std::process::Command::new("postconf")
        .args(["-c", &inst.config_dir(), "-n"])
        .output()
        .expect("postconf runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    inst.check(
        out.status.success() && !stderr.contains("warning"),
        &format!("postconf without warnings, got: {stderr}"),
    );
}
