//! Acceptance test: `rqmgr-sim --from-maillog` replays the maillog a real
//! Postfix wrote for a mixed workload: every message appears with its
//! recipients, the destination that refused mail defers it again in the
//! simulation, the bounce transport bounces, the rest is delivered, and the
//! destination table names each transport's queues for what they are.
//!
//! Runs once per queue manager (`rqmgr::`, `postfix_qmgr::`,
//! `postfix_oqmgr::`): the maillog of each must be readable. Needs root
//! and Postfix, and fails without them.

#[macro_use]
mod support;

use std::collections::HashMap;
use support::{Instance, Opts, Qmgr};

dropin_tests!(maillog_replays_in_the_simulator);

/// One row of the simulator's message table.
#[derive(Debug)]
struct Row {
    rcpts: usize,
    first: String,
    deferred: usize,
    bounced: usize,
}

fn maillog_replays_in_the_simulator(q: Qmgr) {
    let inst = Instance::start(Opts::new("simlog", q));
    let from = inst.local_addr("sender");
    let tok = |w: &str| inst.unique_token(w);
    let discard: Vec<String> = (0..3)
        .map(|i| {
            inst.sendmail(
                &from,
                &[&format!("r{i}@discard.example"), "s@discard.example"],
                "d",
                &tok("d"),
            )
        })
        .collect();
    let bounced = inst.sendmail(&from, &["nobody@error.example"], "b", &tok("b"));
    let deferred = inst.sendmail(&from, &["x@closed.example"], "c", &tok("c"));
    for id in discard.iter().chain([&bounced]) {
        inst.wait_removed(id);
    }
    inst.wait_for_line("the deferral", |l| {
        l.queue_id() == Some(deferred.as_str()) && l.text.contains("status=deferred")
    });

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rqmgr-sim"))
        .arg("--from-maillog")
        .arg(inst.maillog_path())
        .output()
        .expect("rqmgr-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    inst.check(
        out.status.success(),
        &format!(
            "rqmgr-sim succeeds, stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    let mut rows: HashMap<String, Row> = HashMap::new();
    let mut dest_rows: Vec<Vec<String>> = Vec::new();
    let mut in_dests = false;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"transport") {
            in_dests = true;
            continue;
        }
        if in_dests {
            if !f.is_empty() {
                dest_rows.push(f.iter().map(|s| s.to_string()).collect());
            }
        } else if f.len() >= 7 && f[0] != "message" {
            let n = f.len();
            rows.insert(
                f[0].to_string(),
                Row {
                    rcpts: f[2].parse().unwrap_or(0),
                    first: f[3].to_string(),
                    deferred: f[n - 2].parse().unwrap_or(99),
                    bounced: f[n - 1].parse().unwrap_or(99),
                },
            );
        }
    }
    let row = |id: &str| {
        rows.get(id)
            .unwrap_or_else(|| inst.fail(&format!("no row for {id} in:\n{stdout}")))
    };
    for id in &discard {
        let r = row(id);
        inst.check(
            r.rcpts == 2 && r.first != "-" && r.deferred == 0,
            &format!("{id} delivered to its 2 recipients in the simulation: {r:?}\n{stdout}"),
        );
    }
    let r = row(&bounced);
    inst.check(
        r.bounced == 1,
        &format!("{bounced} bounced: {r:?}\n{stdout}"),
    );
    let r = row(&deferred);
    inst.check(
        r.deferred == 1 && r.first == "-",
        &format!("{deferred} deferred again: {r:?}\n{stdout}"),
    );
    let has = |transport: &str, dest: &str| {
        dest_rows
            .iter()
            .any(|f| f[0] == transport && f[1..].join(" ").starts_with(dest))
    };
    inst.check(
        has("discard", "discard.example")
            && has("smtp", "closed.example")
            && has("error", "error.example"),
        &format!("the destination table names transports and destinations:\n{stdout}"),
    );
    inst.check(
        dest_rows
            .iter()
            .filter(|f| f[0] == "retry")
            .all(|f| f[1].starts_with("(deferred")),
        &format!("qmgr's own retry queues are labelled:\n{stdout}"),
    );
}
