//! The answers of `rqmgr status` and `rqmgr explain` as plain text for a
//! terminal: short lines, most stuck first, times in UTC with the time
//! left. rqmgr-only; the column names are qmgr's terms (`qmgr/qmgr.h`).

use super::{
    destination_label, short_duration, utc, Destination, Explain, ScanView, Status, Transport,
};
use std::fmt::Write as _;

/// Widest destination column, characters; longer names are cut.
const MAX_NAME: usize = 40;

pub(crate) fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(3)).collect();
        t.push_str("...");
        t
    }
}

/// `t` as `HH:MM:SS` when it is on the same UTC day as `now`, else with
/// the date (`YYYY-MM-DD HH:MM:SS UTC`).
fn clock_time(t: i64, now: i64) -> String {
    if t.div_euclid(86_400) == now.div_euclid(86_400) {
        utc(t)[11..19].to_string()
    } else {
        utc(t)
    }
}

/// ` until TIME (in 4m12s)`, or nothing.
fn until(t: Option<i64>, now: i64) -> String {
    match t {
        Some(t) => format!(
            " until {} (in {})",
            clock_time(t, now),
            short_duration(t.saturating_sub(now))
        ),
        None => String::new(),
    }
}

fn scan_line(name: &str, s: &ScanView, now: i64, what: &str) -> String {
    let mut line = format!("{name}: ");
    match (s.last_found, s.last_ended) {
        (Some(n), Some(t)) => {
            let _ = write!(
                line,
                "the last scan took {n} {what}message{} into active, {} ago",
                if n == 1 { "" } else { "s" },
                short_duration(now.saturating_sub(t))
            );
        }
        _ => line.push_str("not scanned yet"),
    }
    if s.in_progress {
        line.push_str("; scanning now");
    }
    line
}

/// The state column, and the reason to print on the next line.
fn transport_state(t: &Transport, now: i64) -> (String, Option<String>) {
    if let Some(d) = &t.dead {
        return (
            format!("dead{}", until(d.until, now)),
            Some(format!("{} {}", d.status, d.reason)),
        );
    }
    let mut parts = Vec::new();
    if t.rate_delay > 0 {
        parts.push(format!(
            "rate delay {}{}",
            short_duration(t.rate_delay as i64),
            if t.rate_locked { " (waiting)" } else { "" }
        ));
    }
    if t.pending > 0 {
        parts.push(format!("{} agents starting", t.pending));
    }
    let state = if parts.is_empty() {
        "ok".into()
    } else {
        parts.join(", ")
    };
    (state, None)
}

/// The state column, and the reason to print on the next line.
fn destination_state(d: &Destination, now: i64) -> (String, Option<String>) {
    match d.state.as_str() {
        "dead" => match &d.dead {
            Some(x) => (
                format!("dead{}", until(x.until, now)),
                Some(format!("{} {}", x.status, x.reason)),
            ),
            None => ("dead".into(), None),
        },
        "suspended" => match d.next_slot {
            Some(t) => (
                format!(
                    "rate delay: next slot at {} (in {})",
                    clock_time(t, now),
                    short_duration(t.saturating_sub(now))
                ),
                None,
            ),
            None => ("rate delay".into(), None),
        },
        "full" => (
            format!("window full ({} busy of {})", d.busy, d.window),
            None,
        ),
        other => (other.to_string(), None),
    }
}

/// `rqmgr status` as text.
pub fn status(s: &Status) -> String {
    let now = s.taken;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rqmgr {}, pid {}, scheduler {}, at {}",
        s.rqmgr,
        s.pid,
        s.scheduler,
        utc(now)
    );
    let _ = writeln!(
        out,
        "active: {} of {} messages, {} of {} recipients in core",
        s.active.messages, s.active.message_limit, s.active.recipients, s.active.recipient_limit
    );
    let _ = writeln!(out, "{}", scan_line("incoming", &s.incoming, now, ""));
    let _ = writeln!(out, "{}", scan_line("deferred", &s.deferred, now, "due "));
    if s.transports.is_empty() {
        out.push_str("\nno transport in core\n");
        return out;
    }
    let tw = s
        .transports
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max("TRANSPORT".len());
    let _ = writeln!(
        out,
        "\n{:<tw$}  {:>9}  {:>6}  STATE",
        "TRANSPORT", "AGENTS", "TODO"
    );
    for t in &s.transports {
        let agents = match t.process_limit {
            Some(l) => format!("{}/{l}", t.busy),
            None => t.busy.to_string(),
        };
        let (state, why) = transport_state(t, now);
        let _ = writeln!(out, "{:<tw$}  {agents:>9}  {:>6}  {state}", t.name, t.todo);
        if let Some(why) = why {
            let _ = writeln!(out, "    {why}");
        }
    }
    let mut dests: Vec<(&Transport, &Destination)> = s
        .transports
        .iter()
        .flat_map(|t| t.destinations.iter().map(move |d| (t, d)))
        .collect();
    if dests.is_empty() {
        out.push_str("\nno destination in core\n");
        return out;
    }
    dests.sort_by(|(ta, a), (tb, b)| {
        let dead = |t: &Transport| u8::from(t.dead.is_none());
        dead(ta)
            .cmp(&dead(tb))
            .then(a.stuck_rank().cmp(&b.stuck_rank()))
            .then(b.todo.cmp(&a.todo))
            .then(a.oldest.cmp(&b.oldest))
            .then(ta.name.cmp(&tb.name))
            .then(a.name.cmp(&b.name))
    });
    let nw = dests
        .iter()
        .map(|(t, d)| t.name.len() + 1 + destination_label(&t.name, &d.name).chars().count())
        .max()
        .unwrap_or(0)
        .clamp("DESTINATION".len(), MAX_NAME);
    let _ = writeln!(
        out,
        "\n{:<nw$}  {:>6} {:>6} {:>4} {:>9} {:>11} {:>6}  STATE",
        "DESTINATION", "TODO", "RCPTS", "BUSY", "WINDOW", "FEEDBACK", "OLDEST"
    );
    for (t, d) in dests {
        let name = cut(
            &format!("{}:{}", t.name, destination_label(&t.name, &d.name)),
            nw,
        );
        let window = if d.limit > 0 {
            format!("{}/{}", d.window, d.limit)
        } else {
            d.window.to_string()
        };
        let feedback = format!("+{:.2}/-{:.2}", d.success, d.failure);
        let oldest = d
            .oldest_age
            .map_or("-".to_string(), |a| short_duration(a as i64));
        let (state, why) = destination_state(d, now);
        let _ = writeln!(
            out,
            "{name:<nw$}  {:>6} {:>6} {:>4} {window:>9} {feedback:>11} {oldest:>6}  {state}",
            d.todo, d.todo_recipients, d.busy,
        );
        if let Some(why) = why {
            let _ = writeln!(out, "    {why}");
        }
    }
    out
}

/// `rqmgr explain` as text: a heading line, the notes, then one line per
/// recipient.
pub fn explain(e: &Explain, now: i64) -> String {
    let mut out = String::new();
    let _ = write!(out, "{}: {}", e.queue_id, e.place.name());
    if let Some(due) = e.due {
        let left = due.saturating_sub(now);
        if left > 0 {
            let _ = write!(out, ", due at {} (in {})", utc(due), short_duration(left));
        } else {
            let _ = write!(
                out,
                ", due since {} ({} ago)",
                utc(due),
                short_duration(left.saturating_neg())
            );
        }
    }
    out.push('\n');
    for n in &e.notes {
        let _ = writeln!(out, "  {n}");
    }
    for r in &e.recipients {
        let _ = writeln!(out, "  {}: {}", r.address, r.text);
    }
    out
}
