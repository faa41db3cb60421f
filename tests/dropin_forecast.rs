//! `rqmgr forecast` against a real private Postfix whose queue manager is
//! rqmgr. Postfix's qmgr has no forecast, so this runs only against rqmgr
//! (`RQMGR_TEST_QMGR=/path` picks the binary); like every acceptance test
//! it fails, never skips, when Postfix is missing.
//!
//! A backlog of 24 messages behind the slow sink (1 s before it answers
//! DATA) at `smtp_destination_concurrency_limit = 2`: once a few were
//! delivered (so that the destination's speed is measured), the forecast
//! says when the rest is done, and then the real drain ends within the
//! stated tolerance of it ([`TOLERANCE`] of the forecast plus [`SLACK`]).
//! `-o smtp_destination_concurrency_limit=1` forecasts about twice as long
//! for the same backlog. Asking changes nothing: every message is
//! delivered once by the same rqmgr process, the queue ends empty.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{distinct_ids, Instance, LogLine, Opts, Qmgr};

/// The forecast's error allowed, as a share of the forecast drain time.
const TOLERANCE: f64 = 0.25;
/// And in seconds (log lines carry whole seconds; the requests in flight
/// at the snapshot are simulated from their start).
const SLACK: f64 = 3.0;

mod rqmgr {
    #[test]
    fn forecast_of_a_backlog_behind_a_slow_sink() {
        super::forecast_of_a_backlog_behind_a_slow_sink(crate::support::Qmgr::Rqmgr)
    }
}

fn forecast_json(inst: &Instance, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = inst.rqmgr_command("forecast", &all);
    if !out.success() {
        inst.fail(&format!(
            "rqmgr forecast {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status, out.stdout, out.stderr
        ));
    }
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| inst.fail(&format!("forecast --json: {e}: {}", out.stdout)))
}

/// The forecast's destination with the most recipients.
fn busiest(inst: &Instance, f: &Value) -> Value {
    f["destinations"]
        .as_array()
        .and_then(|d| d.iter().max_by_key(|d| d["recipients"].as_u64()))
        .cloned()
        .unwrap_or_else(|| inst.fail(&format!("no destination in the forecast: {f}")))
}

fn forecast_of_a_backlog_behind_a_slow_sink(q: Qmgr) {
    const N: usize = 24;
    let inst = Instance::start(
        Opts::new("forecast-slow", q)
            .slow_sink(1)
            .main_cf("smtp_destination_concurrency_limit", "2")
            .timeout(Duration::from_secs(120)),
    );
    let pids = inst.qmgr_pids();
    let from = inst.local_addr("sender");
    let rcpt = "s@slow.example";
    let is_sent = |l: &LogLine| {
        l.is_from("smtp")
            && l.is_delivery()
            && l.status() == Some("sent")
            && l.field("to") == Some("<s@slow.example>")
    };
    let n = N.to_string();
    inst.smtp_source(&["-s", "5", "-m", &n, "-f", &from, "-t", rcpt]);
    // A few delivered, the rest all in the active queue.
    let mut before = 0;
    inst.wait_progress("4 delivered, the rest in active", || {
        let sent = distinct_ids(&inst.log_lines(), is_sent).len();
        let active = inst.queue_ids("active").len();
        before = sent;
        if sent >= 4 && sent + active >= N {
            Ok(())
        } else {
            Err(format!("{sent} sent, {active} in active"))
        }
    });
    let asked = Instant::now();
    let f = forecast_json(&inst, &[]);
    let d = busiest(&inst, &f);
    let remaining = d["recipients"].as_u64().unwrap_or(0) as usize;
    inst.check(
        d["transport"] == "smtp"
            && d["source"] == "measured"
            && d["pending"] == 0
            && d["deferred"] == 0
            && (1..=N - before).contains(&remaining)
            && d["delivered"].as_u64() == Some(remaining as u64),
        &format!("the slow destination, measured, all to be delivered: {d}"),
    );
    let measured = d["delivery_time"].as_f64().unwrap_or(0.0);
    inst.check(
        (0.5..3.0).contains(&measured),
        &format!("about 1 s per request measured (smtp-sink answers its first one at once): {d}"),
    );
    let forecast = d["done_in"]
        .as_f64()
        .unwrap_or_else(|| inst.fail(&format!("no drain time: {d}")));
    inst.check(
        f["done_in"].as_f64() == Some(forecast),
        &format!("the whole backlog done with it: {f}"),
    );

    // What if the limit were 1.
    let g = forecast_json(&inst, &["-o", "smtp_destination_concurrency_limit=1"]);
    let e = busiest(&inst, &g);
    let single = e["done_in"].as_f64().unwrap_or(0.0);
    let left = e["recipients"].as_f64().unwrap_or(0.0);
    inst.check(
        g["overrides"][0] == "smtp_destination_concurrency_limit=1"
            && single >= (left - 1.0) * measured * 0.9,
        &format!("one at a time: about one request time per recipient: {e}"),
    );
    let text = inst.rqmgr_command("forecast", &[]);
    inst.check(
        text.success()
            && text.stdout.contains("forecast at ")
            && text.stdout.contains(&format!(" {remaining:>6} ")),
        &format!("the text forecast:\n{}{}", text.stdout, text.stderr),
    );

    inst.wait_progress(&format!("{N} delivered"), || {
        let sent = distinct_ids(&inst.log_lines(), is_sent).len();
        if sent >= N {
            Ok(())
        } else {
            Err(format!("{sent} sent"))
        }
    });
    let actual = asked.elapsed().as_secs_f64();
    inst.check(
        (actual - forecast).abs() <= TOLERANCE * forecast + SLACK,
        &format!("drained in {actual:.1} s, forecast {forecast} s (±{TOLERANCE} + {SLACK} s)"),
    );
    inst.wait_queue_empty();
    let lines = inst.log_lines();
    let sent = lines.iter().filter(|l| is_sent(l)).count();
    inst.check(sent == N, &format!("{N} deliveries, none twice: {sent}"));
    inst.check(
        inst.qmgr_pids() == pids,
        "the same rqmgr process throughout",
    );
}
