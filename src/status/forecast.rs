//! `rqmgr forecast`: when will the backlog drain? rqmgr-only (Postfix's
//! qmgr has nothing like it). The daemon answers `backlog` with what its
//! active queue holds ([`Backlog`]: per message where its recipients wait,
//! per destination how long its delivery requests took so far); the
//! command then runs the same scheduling core that `rqmgr-sim` runs
//! ([`crate::sim`]) on that backlog, in virtual time, with main.cf as it is
//! or changed by `-o name=value`, and says per destination when its
//! backlog would be gone and which messages pass `maximal_queue_lifetime`
//! before their turn (`qmgr/qmgr_active.c` expires mail only when it is
//! deferred; a forecast names them so that the administrator can act
//! first).
//!
//! The forecast reads; it never writes. The daemon's answer comes from a
//! snapshot of its core, which changes nothing; the simulation runs in
//! the command's own memory.
//!
//! What it cannot know, it says: mail in incoming and deferred is counted
//! but not simulated (deferred mail is retried at its own time); recipients
//! not yet read from a queue file are assumed to go where that message's
//! read recipients go; a destination that is dead now stays dead; one with
//! no request timed yet takes its transport's mean, else
//! [`ASSUMED_DELIVERY`].

use super::{short_duration, utc, Clock, DeadView, ScanView};
use crate::config::{MainCf, Params, TransportTable};
use crate::qmgr::snapshot::Snapshot;
use crate::qmgr::{MessageId, Reason, Settings, Strategy};
use crate::sim::{Destination, Fate, Sim, SimMessage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

/// The time per delivery request taken when nothing was measured for a
/// destination or its transport, seconds.
pub const ASSUMED_DELIVERY: f64 = 1.0;

/// How far ahead the forecast looks (virtual time).
pub const HORIZON: Duration = Duration::from_secs(30 * 86_400);

/// The most recipients `rqmgr forecast` simulates (about a second of the
/// simulator's time per 100 000).
pub const MAX_RECIPIENTS: usize = 1_000_000;

/// Messages named per destination as passing their lifetime, at most.
const MAX_NAMED: usize = 10;

/// The daemon's answer to `backlog`: its active queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backlog {
    /// `nqmgr` or `oqmgr`.
    pub scheduler: String,
    /// When the snapshot was taken, seconds since the epoch.
    pub taken: i64,
    /// In the order they entered the active queue.
    pub messages: Vec<BacklogMessage>,
    /// Per transport (`nexthop` empty) and per destination queue in
    /// memory: measured speed and death.
    pub speeds: Vec<Speed>,
    pub incoming: ScanView,
    pub deferred: ScanView,
}

/// One message of the active queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacklogMessage {
    pub queue_id: String,
    /// Its queue file's `create_time`, seconds since the epoch (where
    /// `maximal_queue_lifetime` counts from).
    pub created: i64,
    /// Recipients waiting or being delivered, per (transport, nexthop).
    pub groups: Vec<Group>,
    /// Recipients not yet read from the queue file.
    pub unread: i64,
}

/// Recipients of one message for one transport and nexthop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    pub transport: String,
    pub nexthop: String,
    pub recipients: usize,
}

/// What was measured of a transport (`nexthop` empty) or destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Speed {
    pub transport: String,
    pub nexthop: String,
    /// Delivery requests answered, and their mean time, seconds.
    pub requests: u64,
    pub mean: Option<f64>,
    pub dead: Option<DeadView>,
}

impl Backlog {
    /// The backlog from the core's full snapshot; `queue_id_of` and
    /// `created_of` give what the shell knows of each message.
    pub fn from_snapshot<R>(
        snap: &Snapshot<R>,
        clock: &Clock,
        queue_id_of: &dyn Fn(MessageId) -> Option<(String, i64)>,
        incoming: ScanView,
        deferred: ScanView,
    ) -> Backlog {
        let mut views: Vec<_> = snap.message_views.iter().collect();
        views.sort_by_key(|m| m.queued);
        let messages = views
            .into_iter()
            .filter_map(|m| {
                let (queue_id, created) = queue_id_of(m.msg)?;
                let mut groups: Vec<Group> = Vec::new();
                for e in &m.entries {
                    match groups
                        .iter_mut()
                        .find(|g| *g.transport == *e.transport && *g.nexthop == *e.nexthop)
                    {
                        Some(g) => g.recipients += e.recipients.len(),
                        None => groups.push(Group {
                            transport: e.transport.to_string(),
                            nexthop: e.nexthop.to_string(),
                            recipients: e.recipients.len(),
                        }),
                    }
                }
                Some(BacklogMessage {
                    queue_id,
                    created,
                    groups,
                    unread: m.rcpt_unread.max(0),
                })
            })
            .collect();
        let mut speeds = Vec::new();
        for tr in &snap.transports {
            speeds.push(Speed {
                transport: tr.name.to_string(),
                nexthop: String::new(),
                requests: tr.times.requests,
                mean: tr.times.mean().map(|d| d.as_secs_f64()),
                dead: tr.dead.as_ref().map(|d| DeadView::from(d, clock)),
            });
            for q in &tr.queues {
                speeds.push(Speed {
                    transport: tr.name.to_string(),
                    nexthop: q.nexthop.to_string(),
                    requests: q.times.requests,
                    mean: q.times.mean().map(|d| d.as_secs_f64()),
                    dead: q.dead.as_ref().map(|d| DeadView::from(d, clock)),
                });
            }
        }
        Backlog {
            scheduler: match snap.strategy {
                Strategy::Nqmgr => "nqmgr".into(),
                Strategy::Oqmgr => "oqmgr".into(),
            },
            taken: clock.unix(snap.taken),
            messages,
            speeds,
            incoming,
            deferred,
        }
    }
}

/// The forecast for one destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DestinationForecast {
    pub transport: String,
    /// The nexthop (for `retry` and `error`: the reason qmgr gives).
    pub destination: String,
    /// Recipients in the backlog.
    pub recipients: usize,
    /// The time per delivery request used, seconds, and where it comes
    /// from: `measured` (this destination, over `requests`), `transport`
    /// (its transport's mean), `assumed` ([`ASSUMED_DELIVERY`]).
    pub delivery_time: f64,
    pub source: String,
    pub requests: u64,
    /// Dead now: every attempt is deferred with this reason.
    pub dead: Option<DeadView>,
    /// What would happen to its recipients.
    pub delivered: usize,
    pub deferred: usize,
    pub bounced: usize,
    /// Not done within the forecast's horizon.
    pub pending: usize,
    /// When its last recipient would be done, seconds since the epoch, and
    /// how long from now, seconds.
    pub done: Option<i64>,
    pub done_in: Option<i64>,
    /// Messages (queue ids) whose `maximal_queue_lifetime` ends before
    /// their recipients here are done; `expiring_count` counts all.
    pub expiring: Vec<String>,
    pub expiring_count: usize,
}

/// The answer of `rqmgr forecast`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forecast {
    /// The backlog's snapshot time, seconds since the epoch.
    pub taken: i64,
    pub scheduler: String,
    /// The `-o` overrides applied.
    pub overrides: Vec<String>,
    pub messages: usize,
    pub recipients: usize,
    /// When the whole backlog would be done, and in how long, seconds.
    pub done: Option<i64>,
    pub done_in: Option<i64>,
    /// Latest first.
    pub destinations: Vec<DestinationForecast>,
    /// What the forecast leaves out, in words.
    pub notes: Vec<String>,
}

/// Why a forecast cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    /// main.cf or an override is bad (the text Postfix would log).
    #[error("{0}")]
    Config(String),
}

/// What the forecast needs besides the backlog: main.cf (with the
/// overrides applied by the caller) and master.cf's process limits.
pub struct Inputs {
    pub main_cf: MainCf,
    pub overrides: Vec<String>,
    /// master.cf's process limit per unix service; others take
    /// `default_process_limit`.
    pub process_limits: HashMap<String, usize>,
    /// Files counted in incoming and deferred now, if known.
    pub incoming_files: Option<u64>,
    pub deferred_files: Option<u64>,
    /// The most recipients simulated ([`MAX_RECIPIENTS`] for the
    /// command); messages past it are left out, with a note.
    pub max_recipients: usize,
}

/// The speed used for destination (`transport`, `nexthop`): measured
/// there, else its transport's, else assumed; with its source and count.
fn speed_of(b: &Backlog, transport: &str, nexthop: &str) -> (f64, &'static str, u64) {
    let measured = |n: &str| find_speed(b, transport, n).filter(|s| s.mean.is_some());
    if let Some(s) = measured(nexthop) {
        return (s.mean.unwrap_or(ASSUMED_DELIVERY), "measured", s.requests);
    }
    if let Some(s) = measured("") {
        return (s.mean.unwrap_or(ASSUMED_DELIVERY), "transport", s.requests);
    }
    (ASSUMED_DELIVERY, "assumed", 0)
}

/// Why (`transport`, `nexthop`) fails every attempt now, if it does.
fn dead_of(b: &Backlog, transport: &str, nexthop: &str) -> Option<DeadView> {
    let dead = |n: &str| find_speed(b, transport, n).and_then(|s| s.dead.clone());
    dead(nexthop).or_else(|| dead(""))
}

/// The speed entry of (`transport`, `nexthop`); `nexthop` empty: the
/// transport's own.
fn find_speed<'a>(b: &'a Backlog, transport: &str, nexthop: &str) -> Option<&'a Speed> {
    b.speeds
        .iter()
        .find(|s| s.transport == transport && s.nexthop == nexthop)
}

/// The recipients of message `m` as the simulator takes them: its read
/// recipients per group, then the unread ones spread over its groups in
/// turn.
fn sim_recipients(m: &BacklogMessage) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = m
        .groups
        .iter()
        .flat_map(|g| std::iter::repeat_n((g.transport.clone(), g.nexthop.clone()), g.recipients))
        .collect();
    if !m.groups.is_empty() {
        for i in 0..m.unread.max(0) as usize {
            let g = &m.groups[i % m.groups.len()];
            out.push((g.transport.clone(), g.nexthop.clone()));
        }
    }
    out
}

/// Runs the forecast of `backlog` under `inputs`.
///
/// Errors: [`ForecastError::Config`] when main.cf or an override has a
/// value the queue manager would refuse.
pub fn forecast(backlog: &Backlog, inputs: Inputs) -> Result<Forecast, ForecastError> {
    let Inputs {
        main_cf: mut cf,
        overrides,
        process_limits,
        incoming_files,
        deferred_files,
        max_recipients,
    } = inputs;
    let (p, _) = Params::read(&mut cf).map_err(|e| ForecastError::Config(e.to_string()))?;
    let strategy = if backlog.scheduler == "oqmgr" {
        Strategy::Oqmgr
    } else {
        Strategy::Nqmgr
    };
    let settings = Settings::from_params(&p, strategy);
    let lifetime = p.maximal_queue_lifetime.max(0);
    let default_processes = p.default_process_limit.max(1) as usize;

    // In the order they entered the active queue, up to the cap.
    let mut workload: Vec<SimMessage> = Vec::new();
    let mut total = 0usize;
    for m in &backlog.messages {
        let n = m.groups.iter().fold(m.unread.max(0) as u64, |n, g| {
            n.saturating_add(g.recipients as u64)
        });
        if total as u64 + n > max_recipients as u64 {
            break;
        }
        total += n as usize;
        workload.push(SimMessage {
            label: m.queue_id.clone(),
            arrival: Duration::ZERO,
            recipients: sim_recipients(m),
        });
    }
    let left_out = backlog.messages.len() - workload.len();
    // Per destination of the workload: its speed, source, and death.
    let mut keys: Vec<(String, String)> = workload
        .iter()
        .flat_map(|m| m.recipients.iter().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let mut destinations = HashMap::new();
    for (t, n) in &keys {
        let (time, _, _) = speed_of(backlog, t, n);
        let failure = dead_of(backlog, t, n).map(|d| Reason::new(&d.status, &d.reason));
        // The simulator keys destinations by nexthop; the first transport
        // (in name order) wins where two share one.
        destinations.entry(n.clone()).or_insert(Destination {
            delivery_time: Duration::from_secs_f64(time.clamp(0.0, 1e6)),
            failure,
        });
    }
    let sim = Sim::new(
        settings,
        Box::new(TransportTable::new(p, cf)),
        workload.clone(),
        destinations,
        process_limits,
        default_processes,
    );
    let report = sim.run(HORIZON);
    if let Some(text) = report.events.iter().find_map(|(_, e)| match e {
        crate::qmgr::Event::BadParameter { text } => Some(text.clone()),
        _ => None,
    }) {
        return Err(ForecastError::Config(text));
    }

    let taken = backlog.taken;
    let mut per: BTreeMap<(String, String), DestinationForecast> = BTreeMap::new();
    // Per destination and message: when that message's recipients there are done.
    let mut last_of: BTreeMap<(String, String), BTreeMap<usize, Option<Duration>>> =
        BTreeMap::new();
    let mut all_done: Option<Duration> = Some(Duration::ZERO);
    for (i, m) in workload.iter().enumerate() {
        for (r, key) in m.recipients.iter().enumerate() {
            let d = per.entry(key.clone()).or_insert_with(|| {
                let (time, source, requests) = speed_of(backlog, &key.0, &key.1);
                DestinationForecast {
                    transport: key.0.clone(),
                    destination: key.1.clone(),
                    recipients: 0,
                    delivery_time: time,
                    source: source.into(),
                    requests,
                    dead: dead_of(backlog, &key.0, &key.1),
                    delivered: 0,
                    deferred: 0,
                    bounced: 0,
                    pending: 0,
                    done: None,
                    done_in: None,
                    expiring: Vec::new(),
                    expiring_count: 0,
                }
            });
            d.recipients += 1;
            let at = match report.fates[i][r] {
                Some(Fate::Delivered(t)) => {
                    d.delivered += 1;
                    Some(t)
                }
                Some(Fate::Deferred(t)) => {
                    d.deferred += 1;
                    Some(t)
                }
                Some(Fate::Bounced(t)) => {
                    d.bounced += 1;
                    Some(t)
                }
                None => {
                    d.pending += 1;
                    None
                }
            };
            let slot = last_of
                .entry(key.clone())
                .or_default()
                .entry(i)
                .or_insert(at);
            *slot = match (*slot, at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            all_done = match (all_done, at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
    }
    let secs = |d: Duration| d.as_secs_f64().ceil() as i64;
    for (key, d) in per.iter_mut() {
        let msgs = &last_of[key];
        let last = msgs
            .values()
            .try_fold(Duration::ZERO, |acc, t| t.map(|t| acc.max(t)));
        d.done_in = last.map(secs);
        d.done = d.done_in.map(|s| taken.saturating_add(s));
        for (&i, &t) in msgs {
            let m = &backlog.messages[i];
            let expires = m.created.saturating_add(lifetime);
            let finished = t.map_or(i64::MAX, |t| taken.saturating_add(secs(t)));
            if finished > expires {
                d.expiring_count += 1;
                if d.expiring.len() < MAX_NAMED {
                    d.expiring.push(m.queue_id.clone());
                }
            }
        }
    }
    let mut destinations: Vec<DestinationForecast> = per.into_values().collect();
    destinations.sort_by(|a, b| {
        b.done_in
            .unwrap_or(i64::MAX)
            .cmp(&a.done_in.unwrap_or(i64::MAX))
            .then(b.recipients.cmp(&a.recipients))
    });
    let mut notes = Vec::new();
    if left_out > 0 {
        notes.push(format!(
            "the last {left_out} messages of the active queue are left out: \
             more than {max_recipients} recipients"
        ));
    }
    let unread = backlog.messages[..workload.len()]
        .iter()
        .fold(0i64, |n, m| n.saturating_add(m.unread.max(0)));
    if unread > 0 {
        notes.push(format!(
            "{unread} recipients not yet read from their queue files are assumed to go where \
             their message's other recipients go"
        ));
    }
    if let Some(n) = incoming_files.filter(|&n| n > 0) {
        notes.push(format!(
            "{n} files in incoming are not yet in the active queue and not in this forecast"
        ));
    }
    if let Some(n) = deferred_files.filter(|&n| n > 0) {
        notes.push(format!(
            "{n} files in deferred are retried at their own times and not in this forecast"
        ));
    }
    Ok(Forecast {
        taken,
        scheduler: backlog.scheduler.clone(),
        overrides,
        messages: workload.len(),
        recipients: destinations.iter().map(|d| d.recipients).sum(),
        done_in: all_done.map(secs),
        done: all_done.map(|d| taken.saturating_add(secs(d))),
        destinations,
        notes,
    })
}

/// The forecast as text: one line per destination, latest first.
pub fn text(f: &Forecast) -> String {
    let mut out = String::new();
    let now = f.taken;
    let when = |done: Option<i64>, done_in: Option<i64>| match (done, done_in) {
        (Some(t), Some(s)) => format!("{} (in {})", &utc(t)[11..19], short_duration(s)),
        _ => format!("not within {}", short_duration(HORIZON.as_secs() as i64)),
    };
    let _ = writeln!(
        out,
        "forecast at {} ({}{}): {} messages, {} recipients in the active queue; all done at {}",
        utc(now),
        f.scheduler,
        if f.overrides.is_empty() {
            String::new()
        } else {
            format!(", with {}", f.overrides.join(" "))
        },
        f.messages,
        f.recipients,
        when(f.done, f.done_in)
    );
    if !f.destinations.is_empty() {
        let _ = writeln!(
            out,
            "{:<10} {:<40} {:>6} {:>14} done",
            "transport", "destination", "rcpts", "per request"
        );
    }
    for d in &f.destinations {
        let speed = match d.source.as_str() {
            "measured" => format!("{:.2}s", d.delivery_time),
            "transport" => format!("{:.2}s (t)", d.delivery_time),
            _ => format!("{:.2}s (?)", d.delivery_time),
        };
        let mut done = when(d.done, d.done_in);
        if d.deferred > 0 {
            let _ = write!(done, "; {} deferred", d.deferred);
        }
        if d.bounced > 0 {
            let _ = write!(done, "; {} bounced", d.bounced);
        }
        let _ = writeln!(
            out,
            "{:<10} {:<40} {:>6} {:>14} {}",
            d.transport,
            super::text::cut(&super::destination_label(&d.transport, &d.destination), 40),
            d.recipients,
            speed,
            done
        );
        if let Some(x) = &d.dead {
            let _ = writeln!(out, "    dead now: {} {}", x.status, x.reason);
        }
        if d.expiring_count > 0 {
            let _ = writeln!(
                out,
                "    {} message{} pass maximal_queue_lifetime before their turn: {}{}",
                d.expiring_count,
                if d.expiring_count == 1 { "" } else { "s" },
                d.expiring.join(" "),
                if d.expiring_count > d.expiring.len() {
                    " ..."
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "per request: measured here; (t) the transport's mean; (?) nothing measured, {ASSUMED_DELIVERY:.0}s assumed"
    );
    for n in &f.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(n: usize, nexthop: &str, mean: Option<f64>) -> Backlog {
        Backlog {
            scheduler: "nqmgr".into(),
            taken: 1_800_000_000,
            messages: (0..n)
                .map(|i| BacklogMessage {
                    queue_id: format!("ID{i}"),
                    created: 1_800_000_000 - 100,
                    groups: vec![Group {
                        transport: "smtp".into(),
                        nexthop: nexthop.into(),
                        recipients: 1,
                    }],
                    unread: 0,
                })
                .collect(),
            speeds: vec![Speed {
                transport: "smtp".into(),
                nexthop: nexthop.into(),
                requests: 10,
                mean,
                dead: None,
            }],
            incoming: ScanView::default(),
            deferred: ScanView::default(),
        }
    }

    fn inputs(main_cf: &str) -> Inputs {
        let mut cf = MainCf::parse(main_cf, std::path::Path::new("main.cf")).unwrap();
        cf.set("myhostname", "forecast.example");
        Inputs {
            main_cf: cf,
            overrides: Vec::new(),
            process_limits: HashMap::new(),
            incoming_files: None,
            deferred_files: None,
            max_recipients: MAX_RECIPIENTS,
        }
    }

    #[test]
    fn drain_time_follows_speed_and_window() {
        // 20 requests of 1 s, 2 at a time: 10 s.
        let f = forecast(
            &backlog(20, "slow.example", Some(1.0)),
            inputs("smtp_destination_concurrency_limit = 2\n"),
        )
        .unwrap();
        assert_eq!(f.destinations.len(), 1);
        let d = &f.destinations[0];
        assert_eq!(
            (d.recipients, d.delivered, d.source.as_str()),
            (20, 20, "measured")
        );
        assert_eq!(d.done_in, Some(10));
        assert_eq!(f.done_in, Some(10));
        // What if the limit were 1: twice as long.
        let f = forecast(
            &backlog(20, "slow.example", Some(1.0)),
            inputs("smtp_destination_concurrency_limit = 1\n"),
        )
        .unwrap();
        assert_eq!(f.destinations[0].done_in, Some(20));
    }

    #[test]
    fn lifetime_passed_before_the_turn_is_named() {
        // Created 100 s ago with a lifetime of 105 s: those done after 5 s
        // from now pass it.
        let f = forecast(
            &backlog(10, "slow.example", Some(1.0)),
            inputs("smtp_destination_concurrency_limit = 1\nmaximal_queue_lifetime = 105s\nbounce_queue_lifetime = 105s\n"),
        )
        .unwrap();
        let d = &f.destinations[0];
        assert_eq!(d.expiring_count, 5, "{d:?}");
        assert_eq!(d.expiring[0], "ID5");
        assert!(text(&f).contains("5 messages pass maximal_queue_lifetime"));
    }

    #[test]
    fn a_dead_destination_defers_and_a_bad_override_is_refused() {
        let mut b = backlog(3, "dead.example", None);
        b.speeds[0].dead = Some(DeadView {
            status: "4.4.1".into(),
            reason: "connect refused".into(),
            until: None,
        });
        let f = forecast(&b, inputs("")).unwrap();
        let d = &f.destinations[0];
        assert_eq!((d.deferred, d.source.as_str()), (3, "assumed"));
        assert!(text(&f).contains("dead now: 4.4.1 connect refused"));
        let e = forecast(&b, inputs("qmgr_message_active_limit = lots\n"));
        assert!(
            matches!(e, Err(ForecastError::Config(t)) if t.contains("bad numerical configuration"))
        );
    }

    #[test]
    fn a_backlog_past_the_cap_is_cut_with_a_note() {
        let mut b = backlog(5, "slow.example", Some(0.1));
        b.messages[3].unread = i64::MAX;
        let mut i = inputs("");
        i.max_recipients = 100;
        let f = forecast(&b, i).unwrap();
        assert_eq!((f.messages, f.recipients), (3, 3));
        assert!(f.notes[0].contains("last 2 messages"), "{:?}", f.notes);
    }

    #[test]
    fn unread_recipients_follow_the_read_ones() {
        let m = BacklogMessage {
            queue_id: "X".into(),
            created: 0,
            groups: vec![
                Group {
                    transport: "smtp".into(),
                    nexthop: "a".into(),
                    recipients: 2,
                },
                Group {
                    transport: "smtp".into(),
                    nexthop: "b".into(),
                    recipients: 1,
                },
            ],
            unread: 3,
        };
        let r = sim_recipients(&m);
        assert_eq!(r.len(), 6);
        assert_eq!(r.iter().filter(|(_, n)| n == "a").count(), 4);
    }
}
