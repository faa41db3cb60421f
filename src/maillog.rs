//! A Postfix maillog read back into a simulator workload (`rqmgr-sim
//! --from-maillog`): arrivals from qmgr's `from=..., nrcpt=N (queue
//! active)` lines, recipients and their transports from the delivery
//! agents' `to=<...>` lines (`global/log_adhoc.c`), delivery times from
//! their `delays=a/b/c/d` (connection setup plus transmission, c + d), and
//! destinations that never accepted mail from their `status=deferred`
//! lines with their `dsn=`. The log of any queue manager will do (Postfix's
//! qmgr and oqmgr log the same lines).
//!
//! What a maillog cannot say is guessed as little as possible and said
//! here: a recipient's destination is its domain (the nexthop without
//! transport_maps or relayhost); a message counts from the first time it
//! entered the active queue in the log; recipients of a message never
//! seen in a delivery line are left out.

use crate::qmgr::Reason;
use crate::sim::{Destination, SimMessage};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A workload read from a maillog.
#[derive(Debug, Clone, Default)]
pub struct MaillogWorkload {
    /// Messages in arrival order, labelled with their queue ids.
    pub messages: Vec<SimMessage>,
    /// Per destination: mean delivery time, and the failure if it never
    /// accepted mail.
    pub destinations: HashMap<String, Destination>,
    /// Lines that looked like Postfix's but could not be read.
    pub skipped: usize,
}

/// Why a maillog gave no workload.
#[derive(Debug, thiserror::Error)]
pub enum MaillogError {
    /// No qmgr `(queue active)` line with a delivery line for the same id.
    #[error("no message with both a qmgr \"queue active\" line and a delivery line")]
    Empty,
}

/// One parsed log line: seconds since the start of its year (or since the
/// epoch for RFC 3339 stamps), the program (`smtp`, `qmgr`...) and the
/// text after `program[pid]: `.
struct Line<'a> {
    time: f64,
    program: &'a str,
    text: &'a str,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
/// Days before each month (a 365-day year: only differences matter).
const DAYS_BEFORE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];

fn hms(t: &str) -> Option<f64> {
    let mut it = t.splitn(3, ':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Parses the time stamp at the start of `line`; returns seconds and the
/// rest. Accepts `Mon DD HH:MM:SS` (syslog, Postfix's maillog_file) and
/// RFC 3339 (`2026-12-02T06:20:24.123+00:00`).
fn stamp(line: &str) -> Option<(f64, &str)> {
    if line.len() > 19 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b'T' {
        let (ts, rest) = line.split_once(' ')?;
        let day = days_from_civil(
            ts[0..4].parse().ok()?,
            ts[5..7].parse().ok()?,
            ts[8..10].parse().ok()?,
        );
        let time = &ts[11..];
        let end = time.find(['+', '-', 'Z']).unwrap_or(time.len());
        return Some((day as f64 * 86400.0 + hms(&time[..end])?, rest));
    }
    let month = MONTHS.iter().position(|m| line.starts_with(m))?;
    let rest = line[3..].trim_start();
    let (day, rest) = rest.split_once(' ')?;
    let day: u32 = day.parse().ok()?;
    let (time, rest) = rest.trim_start().split_once(' ')?;
    let secs = f64::from(DAYS_BEFORE[month] + day) * 86400.0 + hms(time)?;
    Some((secs, rest))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn parse_line(raw: &str) -> Option<Line<'_>> {
    let (time, rest) = stamp(raw)?;
    let (_host, rest) = rest.trim_start().split_once(' ')?;
    let (tag, text) = rest.split_once(": ")?;
    let tag = tag.split('[').next()?;
    let program = tag.rsplit('/').next()?;
    Some(Line {
        time,
        program,
        text,
    })
}

/// The value of `name=` in a comma-separated log text, up to the next
/// `, ` (or the end).
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text
        .match_indices(name)
        .find(|(i, _)| *i == 0 || text[..*i].ends_with(' '))?
        .0
        + name.len();
    let rest = &text[start..];
    Some(rest.split(", ").next().unwrap_or(rest))
}

/// A queue id at the start of `text` (`ID: ...`).
fn queue_id(text: &str) -> Option<(&str, &str)> {
    let (id, rest) = text.split_once(": ")?;
    (!id.is_empty() && id.bytes().all(|c| c.is_ascii_alphanumeric())).then_some((id, rest))
}

/// One delivery attempt of one recipient.
struct Attempt {
    transport: String,
    domain: String,
    status: String,
    dsn: String,
    reason: String,
    seconds: Option<f64>,
}

fn attempt(program: &str, text: &str) -> Option<Attempt> {
    let to = field(text, "to=<")?.trim_end_matches('>');
    // The status is the last field; its text may hold ", ".
    let status_field = &text[text.find(" status=")? + " status=".len()..];
    let (status, reason) = status_field
        .split_once(' ')
        .map_or((status_field, ""), |(s, r)| (s, r));
    let reason = reason
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .to_string();
    let seconds = field(text, "delays=").and_then(|d| {
        let parts: Vec<f64> = d.split('/').filter_map(|p| p.parse().ok()).collect();
        (parts.len() == 4).then(|| parts[2] + parts[3])
    });
    let domain = to
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase();
    Some(Attempt {
        transport: program.to_string(),
        domain,
        status: status.to_string(),
        dsn: field(text, "dsn=").unwrap_or("4.0.0").to_string(),
        reason,
        seconds,
    })
}

/// Reads a maillog into a workload.
///
/// Errors: [`MaillogError::Empty`] if no message has both an arrival and a
/// delivery line.
pub fn read(text: &str) -> Result<MaillogWorkload, MaillogError> {
    struct Msg {
        arrival: f64,
        order: usize,
        /// First attempt per recipient address, in log order.
        rcpts: Vec<(String, String)>,
        seen: std::collections::HashSet<String>,
    }
    let mut msgs: HashMap<String, Msg> = HashMap::new();
    let mut per_dest: BTreeMap<String, (f64, usize, usize, Option<Reason>)> = BTreeMap::new();
    let mut skipped = 0;
    let mut start: Option<f64> = None;
    let mut last_time = 0.0;
    let mut year_offset = 0.0;
    for raw in text.lines() {
        let Some(l) = parse_line(raw) else {
            continue;
        };
        // Syslog stamps have no year: a jump back of months is a new year.
        let mut time = l.time + year_offset;
        if time < last_time - 180.0 * 86400.0 {
            year_offset += 365.0 * 86400.0;
            time += 365.0 * 86400.0;
        }
        last_time = time;
        let Some((id, rest)) = queue_id(l.text) else {
            continue;
        };
        if l.program == "qmgr" {
            if rest.starts_with("from=<") && rest.ends_with("(queue active)") {
                let n = msgs.len();
                msgs.entry(id.to_string()).or_insert_with(|| Msg {
                    arrival: time,
                    order: n,
                    rcpts: Vec::new(),
                    seen: Default::default(),
                });
                start.get_or_insert(time);
            }
            continue;
        }
        if !rest.starts_with("to=<") {
            continue;
        }
        let Some(a) = attempt(l.program, rest) else {
            skipped += 1;
            continue;
        };
        let to = field(rest, "to=<").unwrap_or("").to_ascii_lowercase();
        if let Some(m) = msgs.get_mut(id) {
            if m.seen.insert(to) {
                m.rcpts.push((a.transport.clone(), a.domain.clone()));
            }
        }
        let d = per_dest.entry(a.domain.clone()).or_default();
        if let Some(s) = a.seconds {
            d.0 += s;
            d.1 += 1;
        }
        match a.status.as_str() {
            "sent" | "bounced" | "expired" => d.2 += 1,
            "deferred" => d.3 = Some(Reason::new(&a.dsn, &a.reason)),
            _ => {}
        }
    }
    let start = start.unwrap_or(0.0);
    let mut ordered: Vec<(String, Msg)> = msgs
        .into_iter()
        .filter(|(_, m)| !m.rcpts.is_empty())
        .collect();
    if ordered.is_empty() {
        return Err(MaillogError::Empty);
    }
    ordered.sort_by(|a, b| {
        a.1.arrival
            .total_cmp(&b.1.arrival)
            .then(a.1.order.cmp(&b.1.order))
    });
    let messages = ordered
        .into_iter()
        .map(|(id, m)| SimMessage {
            label: id,
            arrival: Duration::from_secs_f64((m.arrival - start).max(0.0)),
            recipients: m.rcpts,
        })
        .collect();
    let destinations = per_dest
        .into_iter()
        .map(|(name, (total, n, accepted, failure))| {
            let mean = if n > 0 { total / n as f64 } else { 0.0 };
            (
                name,
                Destination {
                    delivery_time: Duration::from_secs_f64(mean.max(0.001)),
                    // Only a destination that never took mail fails every time.
                    failure: if accepted == 0 { failure } else { None },
                },
            )
        })
        .collect();
    Ok(MaillogWorkload {
        messages,
        destinations,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
Dec 02 06:20:24 host postfix/pickup[1]: 2E7F498CA85: uid=0 from=<s@x.example>
Dec 02 06:20:24 host postfix/qmgr[2]: 2E7F498CA85: from=<s@x.example>, size=410, nrcpt=2 (queue active)
Dec 02 06:20:25 host postfix/smtp[3]: 2E7F498CA85: to=<a@slow.example>, relay=mx.slow.example[192.0.2.1]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 ok)
Dec 02 06:20:25 host postfix/smtp[3]: 2E7F498CA85: to=<b@Dead.example>, relay=none, delay=0.3, delays=0.1/0/0.2/0, dsn=4.4.1, status=deferred (connect to dead.example[192.0.2.2]:25: Connection refused)
Dec 02 06:20:26 host postfix/qmgr[2]: 3FA9098CA8A: from=<>, size=2000, nrcpt=1 (queue active)
Dec 02 06:20:27 host postfix/local[4]: 3FA9098CA8A: to=<s@x.example>, relay=local, delay=0.01, delays=0/0/0/0.01, dsn=2.0.0, status=sent (delivered to mailbox)
Dec 02 06:25:25 host postfix/qmgr[2]: 2E7F498CA85: from=<s@x.example>, size=410, nrcpt=1 (queue active)
Dec 02 06:25:25 host postfix/smtp[3]: 2E7F498CA85: to=<b@dead.example>, relay=none, delay=301, delays=300/0/1/0, dsn=4.4.1, status=deferred (connect to dead.example[192.0.2.2]:25: Connection refused)
Dec 02 06:25:26 host postfix/qmgr[2]: 9999999999: from=<s@x.example>, size=410, nrcpt=1 (queue active)
";

    #[test]
    fn reads_arrivals_recipients_and_destinations() {
        let w = read(LOG).unwrap();
        assert_eq!(
            w.messages.len(),
            2,
            "the message without a delivery is left out"
        );
        let first = &w.messages[0];
        assert_eq!(first.label, "2E7F498CA85");
        assert_eq!(first.arrival, Duration::ZERO);
        assert_eq!(
            first.recipients,
            vec![
                ("smtp".to_string(), "slow.example".to_string()),
                ("smtp".to_string(), "dead.example".to_string())
            ],
            "one recipient once, in log order, the domain in lower case"
        );
        assert_eq!(w.messages[1].arrival, Duration::from_secs(2));
        let slow = &w.destinations["slow.example"];
        assert_eq!(slow.delivery_time, Duration::from_secs_f64(1.1));
        assert_eq!(slow.failure, None);
        let dead = &w.destinations["dead.example"];
        assert_eq!(
            dead.failure,
            Some(Reason::new(
                "4.4.1",
                "connect to dead.example[192.0.2.2]:25: Connection refused"
            ))
        );
    }

    #[test]
    fn time_stamps() {
        assert_eq!(
            stamp("Dec  2 06:20:24 h x").unwrap().0,
            stamp("Dec 02 06:20:24 h x").unwrap().0
        );
        let a = stamp("2026-12-02T06:20:24.500000+00:00 h x").unwrap().0;
        let b = stamp("2026-12-03T06:20:24.000000+00:00 h x").unwrap().0;
        assert!((b - a - 86399.5).abs() < 1e-6);
        assert!(stamp("garbage").is_none());
        assert!(read("no log here\n").is_err());
    }
}
