//! rqmgr-sim: runs rqmgr's scheduling core on a described workload in
//! virtual time and prints when each message would be delivered, so that an
//! administrator can ask "what happens if I change this parameter?" without
//! sending a single message.
//!
//! ```text
//! rqmgr-sim WORKLOAD [-o name=value]... [--scheduler nqmgr|oqmgr] [--until SECONDS]
//! rqmgr-sim --from-maillog MAILLOG [-o name=value]... [--scheduler ...] [--until ...]
//! ```
//!
//! `--from-maillog` replays a real Postfix maillog instead
//! ([`rqmgr::maillog`]): its arrivals, recipients per destination, and the
//! delivery times and failures its delivery agents logged.
//!
//! The workload file, one directive per line (`#` starts a comment):
//!
//! ```text
//! param default_destination_concurrency_limit = 10   # any main.cf parameter
//! processes smtp 100                                  # master.cf process limit
//! destination slow.example time=1                     # seconds per delivery request
//! destination dead.example time=0.2 fail=4.4.1 connect refused
//! message list at=0 rcpts=20000@slow.example          # label, arrival, recipients
//! message small at=10 count=5 rcpts=1@slow.example    # 5 messages of 1 recipient
//! message mixed at=20 rcpts=3@slow.example rcpts=2@dead.example transport=smtp
//! ```

use rqmgr::config::{MainCf, Params, TransportTable};
use rqmgr::qmgr::{Event, Reason, Settings, Strategy};
use rqmgr::sim::{Destination, Fate, Sim, SimMessage};
use rqmgr::status::destination_label;
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

struct Workload {
    main_cf: String,
    processes: HashMap<String, usize>,
    destinations: HashMap<String, Destination>,
    messages: Vec<SimMessage>,
}

/// Why a workload line cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {problem}")]
struct WorkloadError {
    line: usize,
    problem: String,
}

/// Why the simulator cannot run.
#[derive(Debug, thiserror::Error)]
enum SimError {
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("{0}")]
    Usage(String),
    #[error("{file}: {text}")]
    Read { file: String, text: String },
    #[error(transparent)]
    Config(#[from] rqmgr::config::ConfigError),
}

fn seconds(text: &str) -> Result<Duration, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("bad number of seconds: {text}"))?;
    if !(0.0..=1e9).contains(&v) {
        return Err(format!("seconds out of range: {text}"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_workload(text: &str) -> Result<Workload, WorkloadError> {
    let mut w = Workload {
        main_cf: String::new(),
        processes: HashMap::new(),
        destinations: HashMap::new(),
        messages: Vec::new(),
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |problem: String| WorkloadError {
            line: n + 1,
            problem,
        };
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match word {
            "param" => {
                w.main_cf.push_str(rest);
                w.main_cf.push('\n');
            }
            "processes" => {
                let (t, count) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| err("processes TRANSPORT COUNT".into()))?;
                let count = count
                    .trim()
                    .parse()
                    .map_err(|_| err(format!("bad process count: {count}")))?;
                w.processes.insert(t.to_string(), count);
            }
            "destination" => {
                let (name, opts) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let mut d = Destination {
                    delivery_time: Duration::from_millis(100),
                    failure: None,
                };
                let mut opts = opts.trim();
                while !opts.is_empty() {
                    if let Some(v) = opts.strip_prefix("time=") {
                        let (t, more) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
                        d.delivery_time = seconds(t).map_err(err)?;
                        opts = more.trim();
                    } else if let Some(v) = opts.strip_prefix("fail=") {
                        let (status, text) =
                            v.split_once(char::is_whitespace).unwrap_or((v, "failed"));
                        d.failure = Some(Reason::new(status, text.trim()));
                        opts = "";
                    } else {
                        return Err(err(format!("unknown destination option: {opts}")));
                    }
                }
                w.destinations.insert(name.to_string(), d);
            }
            "message" => {
                let mut parts = rest.split_whitespace();
                let label = parts
                    .next()
                    .ok_or_else(|| err("message LABEL ...".into()))?
                    .to_string();
                let (mut at, mut count, mut transport) =
                    (Duration::ZERO, 1usize, "smtp".to_string());
                let mut groups: Vec<(usize, String)> = Vec::new();
                for p in parts {
                    let (k, v) = p
                        .split_once('=')
                        .ok_or_else(|| err(format!("expected key=value: {p}")))?;
                    match k {
                        "at" => at = seconds(v).map_err(err)?,
                        "count" => count = v.parse().map_err(|_| err(format!("bad count: {v}")))?,
                        "transport" => transport = v.to_string(),
                        "rcpts" => {
                            let (n, dest) = v
                                .split_once('@')
                                .ok_or_else(|| err(format!("rcpts=N@destination: {v}")))?;
                            let n = n
                                .parse()
                                .map_err(|_| err(format!("bad recipient count: {n}")))?;
                            groups.push((n, dest.to_string()));
                        }
                        _ => return Err(err(format!("unknown message option: {k}"))),
                    }
                }
                if groups.is_empty() {
                    return Err(err("a message needs rcpts=N@destination".into()));
                }
                for i in 0..count {
                    let recipients = groups
                        .iter()
                        .flat_map(|(n, d)| std::iter::repeat_n((transport.clone(), d.clone()), *n))
                        .collect();
                    let name = if count > 1 {
                        format!("{label}#{}", i + 1)
                    } else {
                        label.clone()
                    };
                    w.messages.push(SimMessage {
                        label: name,
                        arrival: at,
                        recipients,
                    });
                }
            }
            _ => return Err(err(format!("unknown directive: {word}"))),
        }
    }
    Ok(w)
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn run() -> Result<(), SimError> {
    let usage = |text: &str| SimError::Usage(text.to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut file = None;
    let mut overrides = Vec::new();
    let mut strategy = Strategy::Nqmgr;
    let mut until = Duration::from_secs(86400);
    let mut from_maillog = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => overrides.push(
                it.next()
                    .ok_or_else(|| usage("-o needs name=value"))?
                    .clone(),
            ),
            "--scheduler" => {
                strategy = match it.next().map(String::as_str) {
                    Some("nqmgr") | Some("qmgr") => Strategy::Nqmgr,
                    Some("oqmgr") => Strategy::Oqmgr,
                    other => {
                        return Err(SimError::Usage(format!(
                            "--scheduler nqmgr|oqmgr, not {other:?}"
                        )))
                    }
                }
            }
            "--until" => {
                let text = it.next().ok_or_else(|| usage("--until needs seconds"))?;
                until = seconds(text).map_err(SimError::Usage)?;
            }
            "--from-maillog" => {
                from_maillog = true;
                file = Some(
                    it.next()
                        .ok_or_else(|| usage("--from-maillog needs a file"))?
                        .clone(),
                );
            }
            "-h" | "--help" => {
                println!("usage: rqmgr-sim WORKLOAD [-o name=value]... [--scheduler nqmgr|oqmgr] [--until SECONDS]");
                println!("       rqmgr-sim --from-maillog MAILLOG [-o name=value]... [--scheduler nqmgr|oqmgr] [--until SECONDS]");
                println!("See the comment at the top of src/bin/rqmgr-sim.rs (or man rqmgr) for the workload format.");
                return Ok(());
            }
            _ if file.is_none() => file = Some(a.clone()),
            _ => return Err(SimError::Usage(format!("unexpected argument: {a}"))),
        }
    }
    let file = file.ok_or_else(|| {
        usage("usage: rqmgr-sim WORKLOAD [-o name=value]... [--scheduler nqmgr|oqmgr]")
    })?;
    let text = std::fs::read_to_string(&file).map_err(|e| SimError::Read {
        text: rqmgr::log::errno_text(&e),
        file: file.clone(),
    })?;
    let w = if from_maillog {
        let m = rqmgr::maillog::read(&text).map_err(|e| SimError::Read {
            file: file.clone(),
            text: e.to_string(),
        })?;
        if m.skipped > 0 {
            eprintln!(
                "warning: {file}: {} delivery lines not understood",
                m.skipped
            );
        }
        Workload {
            main_cf: String::new(),
            processes: HashMap::new(),
            destinations: m.destinations,
            messages: m.messages,
        }
    } else {
        parse_workload(&text)?
    };
    let mut cf = MainCf::parse(&w.main_cf, Path::new(&file))?;
    cf.set("myhostname", "sim.example");
    for o in &overrides {
        cf.apply_override(o)?;
    }
    let (p, warnings) = Params::read(&mut cf)?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    let settings = Settings::from_params(&p, strategy);
    let default_processes = p.default_process_limit.max(1) as usize;
    let sim = Sim::new(
        settings,
        Box::new(TransportTable::new(p, cf)),
        w.messages.clone(),
        w.destinations.clone(),
        w.processes.clone(),
        default_processes,
    );
    let report = sim.run(until);
    if let Some(text) = report.events.iter().find_map(|(_, e)| match e {
        Event::BadParameter { text } => Some(text),
        _ => None,
    }) {
        return Err(SimError::Usage(format!("fatal: {text}")));
    }

    println!(
        "{:<16} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9}",
        "message", "arrival", "rcpts", "first", "last", "deferred", "bounced"
    );
    for (i, m) in w.messages.iter().enumerate() {
        let fates = &report.fates[i];
        let delivered: Vec<Duration> = fates
            .iter()
            .filter_map(|f| match f {
                Some(Fate::Delivered(t)) => Some(*t),
                _ => None,
            })
            .collect();
        let deferred = fates
            .iter()
            .filter(|f| matches!(f, Some(Fate::Deferred(_))))
            .count();
        let bounced = fates
            .iter()
            .filter(|f| matches!(f, Some(Fate::Bounced(_))))
            .count();
        let first = delivered.iter().min().map_or("-".into(), |d| fmt_secs(*d));
        let last = delivered.iter().max().map_or("-".into(), |d| fmt_secs(*d));
        let pending = fates.iter().filter(|f| f.is_none()).count();
        let last = if pending > 0 {
            format!("{last} (+{pending} pending)")
        } else {
            last
        };
        println!(
            "{:<16} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9}",
            m.label,
            fmt_secs(m.arrival),
            m.recipients.len(),
            first,
            last,
            deferred,
            bounced
        );
    }
    println!();
    println!(
        "{:<10} {:<40} {:>9} {:>15}",
        "transport", "destination", "requests", "max in flight"
    );
    let transport_of: HashMap<&str, &str> = report
        .requests
        .iter()
        .map(|(_, t, d, _, _)| (d.as_str(), t.as_str()))
        .collect();
    for (d, n) in &report.attempts {
        let transport = transport_of.get(d.as_str()).copied().unwrap_or("?");
        println!(
            "{:<10} {:<40} {:>9} {:>15}",
            transport,
            destination_label(transport, d),
            n,
            report.max_busy.get(d).copied().unwrap_or(0)
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rqmgr-sim: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let w = parse_workload(
            "param default_destination_concurrency_limit = 10\nprocesses smtp 100\ndestination slow.example time=1\n\
             destination dead.example time=0.2 fail=4.4.1 connect refused\nmessage list at=0 rcpts=20000@slow.example\n\
             message small at=10 count=5 rcpts=1@slow.example\nmessage mixed at=20 rcpts=3@slow.example rcpts=2@dead.example transport=smtp\n",
        )
        .unwrap();
        assert_eq!(w.messages.len(), 7);
        assert_eq!(w.messages[0].recipients.len(), 20000);
        assert_eq!(w.messages[6].recipients.len(), 5);
        assert_eq!(
            w.destinations["dead.example"].failure,
            Some(Reason::new("4.4.1", "connect refused"))
        );
        assert!(parse_workload("bogus line\n").is_err());
        assert!(parse_workload("message x at=0\n").is_err());
    }
}
