//! `rqmgr status` and `rqmgr explain`: what the running queue manager says
//! about its own state. rqmgr-only (Postfix's qmgr has no such query); the
//! words are Postfix's (`qmgr/qmgr.h`): transport, queue (destination),
//! entry, job, peer, window, dead, suspended.
//!
//! - this module: the request line and the answers, as the daemon sends
//!   them (JSON, the fields documented in rqmgr(8), STATUS), and how an
//!   answer is built from the core's [`Snapshot`];
//! - [`text`]: the answers as plain text for a terminal;
//! - [`deferlog`]: the defer logfile reader (`global/bounce_log.c`);
//! - [`forecast`]: `rqmgr forecast`, the simulator run on the daemon's
//!   backlog;
//! - [`client`]: the command itself.
//!
//! The server is `shell/status.rs`: the daemon answers on the local socket
//! [`SOCKET`], one request per connection.

pub mod client;
pub mod deferlog;
pub mod forecast;
pub mod text;

use crate::qmgr::snapshot::{Dead, EntryView, JobView, QueueView, Snapshot, TransportView};
use crate::qmgr::MessageId;
use serde::{Deserialize, Serialize};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The status socket, relative to the queue directory. In `private/`
/// (mode 0700, owned by mail_owner) like Postfix's private sockets; its
/// name starts with `#`, which no master.cf service name can (master(8)
/// reads such a line as a comment), so it never clashes with a service's
/// `private/<name>`.
pub const SOCKET: &str = "private/#rqmgr-status";

/// The longest request line, bytes (with its newline).
pub const MAX_REQUEST: usize = 256;

/// The version of the answer's format ([`Status::format`]); it changes
/// only when a documented field changes meaning or goes away.
pub const FORMAT: u32 = 1;

/// What a client asks, one line: `status` or `explain QUEUE_ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Explain(String),
    /// The active queue for `rqmgr forecast` ([`forecast::Backlog`]).
    Backlog,
}

impl Request {
    /// Parses a request line (without or with its newline). Outside bytes:
    /// anything else is an error text, never a panic.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
        let mut words = line.split_ascii_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("status"), None, _) => Ok(Request::Status),
            (Some("backlog"), None, _) => Ok(Request::Backlog),
            (Some("explain"), Some(id), None) if crate::spool::queue_id_ok(id) => {
                Ok(Request::Explain(id.to_string()))
            }
            (Some("explain"), Some(_), None) => Err("bad queue id".into()),
            _ => Err("unknown request".into()),
        }
    }

    /// The request line, with its newline.
    pub fn line(&self) -> String {
        match self {
            Request::Status => "status\n".into(),
            Request::Backlog => "backlog\n".into(),
            Request::Explain(id) => format!("explain {id}\n"),
        }
    }
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Status(Status),
    Explain(Explain),
    Backlog(forecast::Backlog),
    Error(String),
}

/// Converts the core's [`Instant`]s to wall-clock time (seconds since the
/// epoch), from one pair of readings of both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub wall: SystemTime,
}

impl Clock {
    /// Both clocks, now.
    pub fn now() -> Clock {
        Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `t` as seconds since the epoch.
    pub fn unix(&self, t: Instant) -> i64 {
        let w = if t >= self.now {
            self.wall + (t - self.now)
        } else {
            self.wall - (self.now - t)
        };
        match w.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    /// Now, as seconds since the epoch.
    pub fn unix_now(&self) -> i64 {
        self.unix(self.now)
    }
}

/// What the last scan of a queue (incoming or deferred) found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScanView {
    /// A scan of this queue is under way.
    pub in_progress: bool,
    /// Queue files the last completed scan handed to the active queue
    /// (deferred: only those that were due).
    pub last_found: Option<u64>,
    /// When the last completed scan ended, seconds since the epoch.
    pub last_ended: Option<i64>,
}

/// Totals of the active queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActiveView {
    /// Messages in the active queue, and `qmgr_message_active_limit`.
    pub messages: usize,
    pub message_limit: i64,
    /// In-core recipients, and `qmgr_message_recipient_limit`.
    pub recipients: i64,
    pub recipient_limit: i64,
}

/// Why a transport or destination is dead, and until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadView {
    /// The DSN status (`4.4.1`) and text Postfix logs and defers with.
    pub status: String,
    pub reason: String,
    /// When it is tried again, seconds since the epoch.
    pub until: Option<i64>,
}

impl DeadView {
    fn from(d: &Dead, clock: &Clock) -> DeadView {
        DeadView {
            status: d.reason.status.clone(),
            reason: d.reason.text.clone(),
            until: d.until.map(|t| clock.unix(t)),
        }
    }
}

/// The answer to `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// [`FORMAT`].
    pub format: u32,
    /// rqmgr's version, its pid and scheduler (`nqmgr`, `oqmgr`).
    pub rqmgr: String,
    pub pid: u32,
    pub scheduler: String,
    /// When the picture was taken, seconds since the epoch.
    pub taken: i64,
    pub active: ActiveView,
    pub incoming: ScanView,
    pub deferred: ScanView,
    pub transports: Vec<Transport>,
}

/// One transport (a master.cf delivery service).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transport {
    pub name: String,
    /// Entries with a delivery agent now, and agent connections asked for
    /// and not yet ready.
    pub busy: i64,
    pub pending: u32,
    /// The service's master.cf process limit (filled in by the client from
    /// master.cf; `None` when it could not tell).
    #[serde(default)]
    pub process_limit: Option<i64>,
    pub dead: Option<DeadView>,
    /// `_transport_rate_delay`, seconds, and whether the transport waits
    /// it out now.
    pub rate_delay: u64,
    pub rate_locked: bool,
    /// `_destination_concurrency_limit` (0: none) and
    /// `_destination_recipient_limit`.
    pub concurrency_limit: i64,
    pub recipient_limit: i64,
    /// Waiting entries over all its destinations.
    pub todo: usize,
    /// Delivery requests answered so far (all its destinations, also
    /// those no longer in memory), and their mean time, seconds.
    #[serde(default)]
    pub deliveries: u64,
    #[serde(default)]
    pub mean_delivery: Option<f64>,
    pub destinations: Vec<Destination>,
}

/// One destination queue of a transport.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Destination {
    /// The queue's name (the nexthop, or `domain` with
    /// `_destination_recipient_limit = 1`) and its nexthop.
    pub name: String,
    pub nexthop: String,
    /// `ready`, `full` (busy = window), `suspended` (rate delay) or `dead`.
    pub state: String,
    /// Waiting entries and their recipients; entries with an agent.
    pub todo: usize,
    pub todo_recipients: usize,
    pub busy: i32,
    /// The concurrency window (> 0; 0 dead, -1 suspended) and the
    /// transport's limit (0: none).
    pub window: i32,
    pub limit: i64,
    /// Concurrency feedback: positive and negative, and failed cohorts.
    pub success: f64,
    pub failure: f64,
    pub fail_cohorts: f64,
    pub dead: Option<DeadView>,
    /// While suspended: the next rate-delay slot, seconds since the epoch.
    pub next_slot: Option<i64>,
    /// nqmgr: this destination blocks jobs (its window is full).
    pub blocker: bool,
    /// When the oldest waiting message entered the active queue, seconds
    /// since the epoch, and its age then, seconds.
    pub oldest: Option<i64>,
    pub oldest_age: Option<u64>,
    /// Delivery requests answered so far for this queue, and their mean
    /// time from request to reply, seconds.
    #[serde(default)]
    pub deliveries: u64,
    #[serde(default)]
    pub mean_delivery: Option<f64>,
}

impl Destination {
    /// How stuck: 0 dead, 1 suspended, 2 full, 3 ready.
    pub fn stuck_rank(&self) -> u8 {
        match self.state.as_str() {
            "dead" => 0,
            "suspended" => 1,
            "full" => 2,
            _ => 3,
        }
    }
}

fn queue_state(q: &QueueView) -> &'static str {
    if q.dead.is_some() || q.window == 0 {
        "dead"
    } else if q.window < 0 {
        "suspended"
    } else if q.busy >= q.window {
        "full"
    } else {
        "ready"
    }
}

fn age(clock: &Clock, t: Instant) -> u64 {
    clock.now.saturating_duration_since(t).as_secs()
}

fn destination(q: &QueueView, tr: &TransportView, clock: &Clock) -> Destination {
    Destination {
        name: q.name.to_string(),
        nexthop: q.nexthop.to_string(),
        state: queue_state(q).into(),
        todo: q.todo,
        todo_recipients: q.todo_recipients,
        busy: q.busy,
        window: q.window,
        limit: tr.concurrency_limit,
        success: q.success,
        failure: q.failure,
        fail_cohorts: q.fail_cohorts,
        dead: q.dead.as_ref().map(|d| DeadView::from(d, clock)),
        next_slot: q.resumes.map(|t| clock.unix(t)),
        blocker: q.blocker,
        oldest: q.oldest.map(|t| clock.unix(t)),
        oldest_age: q.oldest.map(|t| age(clock, t)),
        deliveries: q.times.requests,
        mean_delivery: q.times.mean().map(|d| d.as_secs_f64()),
    }
}

impl Status {
    /// The answer to `status`, from the core's snapshot and what the shell
    /// knows of its scans. Destinations are sorted most stuck first
    /// (dead, suspended, full, ready; then by todo entries), transports by
    /// their most stuck destination.
    pub fn from_snapshot<R>(
        snap: &Snapshot<R>,
        clock: &Clock,
        incoming: ScanView,
        deferred: ScanView,
    ) -> Status {
        let mut transports: Vec<Transport> = snap
            .transports
            .iter()
            .map(|tr| {
                let mut destinations: Vec<Destination> = tr
                    .queues
                    .iter()
                    .map(|q| destination(q, tr, clock))
                    .collect();
                destinations.sort_by(|a, b| {
                    a.stuck_rank()
                        .cmp(&b.stuck_rank())
                        .then(b.todo.cmp(&a.todo))
                        .then(a.oldest.cmp(&b.oldest))
                        .then(a.name.cmp(&b.name))
                });
                Transport {
                    name: tr.name.to_string(),
                    busy: tr.queues.iter().map(|q| i64::from(q.busy.max(0))).sum(),
                    pending: tr.pending,
                    process_limit: None,
                    dead: tr.dead.as_ref().map(|d| DeadView::from(d, clock)),
                    rate_delay: tr.rate_delay.as_secs(),
                    rate_locked: tr.rate_locked,
                    concurrency_limit: tr.concurrency_limit,
                    recipient_limit: tr.recipient_limit,
                    todo: tr.queues.iter().map(|q| q.todo).sum(),
                    deliveries: tr.times.requests,
                    mean_delivery: tr.times.mean().map(|d| d.as_secs_f64()),
                    destinations,
                }
            })
            .collect();
        transports.sort_by(|a, b| {
            let rank = |t: &Transport| {
                if t.dead.is_some() {
                    0
                } else {
                    t.destinations.first().map_or(4, |d| d.stuck_rank() + 1)
                }
            };
            rank(a)
                .cmp(&rank(b))
                .then(b.todo.cmp(&a.todo))
                .then(a.name.cmp(&b.name))
        });
        Status {
            format: FORMAT,
            rqmgr: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            scheduler: match snap.strategy {
                crate::qmgr::Strategy::Nqmgr => "nqmgr".into(),
                crate::qmgr::Strategy::Oqmgr => "oqmgr".into(),
            },
            taken: clock.unix(snap.taken),
            active: ActiveView {
                messages: snap.messages,
                message_limit: snap.active_limit,
                recipients: snap.recipients,
                recipient_limit: snap.recipient_limit,
            },
            incoming,
            deferred,
            transports,
        }
    }
}

/// Where a message is, for `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// In the running queue manager's memory (the active queue).
    Active,
    Deferred,
    Hold,
    Incoming,
    Maildrop,
    /// Nowhere: delivered and removed, deleted, or never queued.
    Unknown,
}

impl Place {
    /// The queue directory's name, as Postfix spells it.
    pub fn name(self) -> &'static str {
        match self {
            Place::Active => "active",
            Place::Deferred => "deferred",
            Place::Hold => "hold",
            Place::Incoming => "incoming",
            Place::Maildrop => "maildrop",
            Place::Unknown => "unknown",
        }
    }
}

/// The answer to `explain QUEUE_ID`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explain {
    pub queue_id: String,
    pub place: Place,
    /// When the queue file is due (deferred: its modification time),
    /// seconds since the epoch.
    pub due: Option<i64>,
    /// About the whole message (a completion step it waits on, recipients
    /// not yet read from its file, hold), or empty.
    pub notes: Vec<String>,
    /// One per recipient not yet done (active: in an entry; deferred: in
    /// the defer logfile, else in the queue file; hold, incoming: in the
    /// queue file).
    pub recipients: Vec<RecipientState>,
}

/// Where one recipient stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecipientState {
    pub address: String,
    /// What holds it, the most binding reason: `delivering`,
    /// `transport_dead`, `dead`, `rate_delay`, `window_full`, `preempted`,
    /// `blocked`, `todo` (active); `deferred`, `hold`, `incoming` (from
    /// the queue directory).
    pub state: String,
    /// The same, in one line of words.
    pub text: String,
    /// Active: its transport and destination queue, and waiting entries
    /// ahead of it there.
    pub transport: Option<String>,
    pub destination: Option<String>,
    pub ahead: Option<usize>,
    /// Active: the destination's busy entries and window.
    pub busy: Option<i32>,
    pub window: Option<i32>,
    /// Until when (dead) or the next slot (rate delay), seconds since the
    /// epoch.
    pub until: Option<i64>,
    /// Deferred or dead: the status and reason (Postfix's words).
    pub status: Option<String>,
    pub reason: Option<String>,
    /// Preempted or blocked: the queue id of the job in its way.
    pub job: Option<String>,
}

/// What a queue of the destination table stands for: queues of the
/// `retry` and `error` transports that qmgr itself fills are named after
/// the reason it defers or bounces their mail with (`"4.4.1 text"`,
/// `qmgr_error_nexthop`), not after a destination: shown as
/// `(deferred by qmgr: ...)` and `(bounced by qmgr: ...)` by `rqmgr
/// status`, `rqmgr forecast` and `rqmgr-sim`; other queues as they are.
pub fn destination_label(transport: &str, queue: &str) -> String {
    let b = queue.as_bytes();
    let dsn_named = b.len() > 6
        && matches!(b[0], b'4' | b'5')
        && b[1] == b'.'
        && queue[2..].split_once(' ').is_some_and(|(code, _)| {
            code.split('.').count() == 2 && code.split('.').all(|p| p.parse::<u16>().is_ok())
        });
    match transport {
        "retry" if dsn_named => format!("(deferred by qmgr: {queue})"),
        "error" if dsn_named => format!("(bounced by qmgr: {queue})"),
        _ => queue.to_string(),
    }
}

/// The time `t` (seconds since the epoch) as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A duration in seconds, short: `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn short_duration(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let text = if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s / 3600 % 24)
    };
    if secs < 0 {
        format!("-{text}")
    } else {
        text
    }
}

/// The job of message `msg` on transport `transport`.
fn job_of<'a>(jobs: &'a [JobView], msg: MessageId, transport: &str) -> Option<&'a JobView> {
    jobs.iter()
        .find(|j| j.msg == msg && &*j.transport == transport)
}

/// Explains one waiting entry: the most binding reason first.
fn entry_state<R>(
    snap: &Snapshot<R>,
    msg: MessageId,
    e: &EntryView<R>,
    clock: &Clock,
    queue_id_of: &dyn Fn(MessageId) -> Option<String>,
) -> RecipientState {
    let mut st = RecipientState {
        transport: Some(e.transport.to_string()),
        destination: Some(e.queue.to_string()),
        ..RecipientState::default()
    };
    let tr = snap.transport(&e.transport);
    let q = snap.queue(&e.transport, &e.queue);
    if let Some(q) = q {
        st.busy = Some(q.busy);
        st.window = Some(q.window);
    }
    let dest = format!("{}:{}", e.transport, e.queue);
    if e.busy {
        st.state = "delivering".into();
        st.text = format!(
            "in active, being delivered by {} to {}",
            e.transport, e.queue
        );
        return st;
    }
    st.ahead = Some(e.ahead);
    let behind = format!(
        "in active, in the todo list of {dest} behind {} {}",
        e.ahead,
        if e.ahead == 1 { "entry" } else { "entries" }
    );
    if let Some(d) = tr.and_then(|t| t.dead.as_ref()) {
        st.state = "transport_dead".into();
        st.until = d.until.map(|t| clock.unix(t));
        st.status = Some(d.reason.status.clone());
        st.reason = Some(d.reason.text.clone());
        st.text = format!(
            "{behind}; transport {} dead{}: {}",
            e.transport,
            until_text(st.until, clock),
            d.reason.text
        );
        return st;
    }
    let Some(q) = q else {
        st.state = "todo".into();
        st.text = behind;
        return st;
    };
    if let Some(d) = &q.dead {
        st.state = "dead".into();
        st.until = d.until.map(|t| clock.unix(t));
        st.status = Some(d.reason.status.clone());
        st.reason = Some(d.reason.text.clone());
        st.text = format!(
            "{behind}; destination dead{} because of \"{}\"",
            until_text(st.until, clock),
            d.reason.text
        );
        return st;
    }
    if q.window < 0 {
        st.state = "rate_delay".into();
        st.until = q.resumes.map(|t| clock.unix(t));
        st.text = match st.until {
            Some(t) => format!(
                "{behind}; waiting for a rate-delay slot at {} (in {})",
                utc(t),
                short_duration(t.saturating_sub(clock.unix_now()))
            ),
            None => format!("{behind}; waiting for a rate-delay slot"),
        };
        return st;
    }
    if q.busy >= q.window {
        st.state = "window_full".into();
        st.text = format!("{behind}; window full ({} busy of {})", q.busy, q.window);
        return st;
    }
    if let Some(job) = job_of(&snap.jobs, msg, &e.transport) {
        let by = snap
            .jobs
            .iter()
            .find(|j| j.preempted == Some(msg) && j.transport == e.transport);
        if let Some(by) = by.filter(|_| !job.current) {
            st.state = "preempted".into();
            st.job = queue_id_of(by.msg);
            st.text = format!(
                "{behind}; job preempted by job {}",
                st.job.as_deref().unwrap_or("?")
            );
            return st;
        }
        if job.blocker {
            st.state = "blocked".into();
            st.text = format!("{behind}; job blocked: its destinations' windows are full");
            return st;
        }
        if !job.current {
            if let Some(cur) = snap
                .jobs
                .iter()
                .find(|j| j.current && j.transport == e.transport)
            {
                st.state = "blocked".into();
                st.job = queue_id_of(cur.msg);
                st.text = format!(
                    "{behind}; transport {} serves job {} first",
                    e.transport,
                    st.job.as_deref().unwrap_or("?")
                );
                return st;
            }
        }
    }
    st.state = "todo".into();
    st.text = behind;
    st
}

fn until_text(until: Option<i64>, clock: &Clock) -> String {
    match until {
        Some(t) => format!(
            " until {} (in {})",
            utc(t),
            short_duration(t.saturating_sub(clock.unix_now()))
        ),
        None => String::new(),
    }
}

impl Explain {
    /// The answer for message `msg`, which is in the core: one state per
    /// recipient still in an entry; `address` gives a recipient's address
    /// and `queue_id_of` a message's queue id.
    pub fn in_core<R>(
        snap: &Snapshot<R>,
        msg: MessageId,
        queue_id: &str,
        clock: &Clock,
        address: &dyn Fn(&R) -> String,
        queue_id_of: &dyn Fn(MessageId) -> Option<String>,
    ) -> Explain {
        let mut out = Explain {
            queue_id: queue_id.to_string(),
            place: Place::Active,
            due: None,
            notes: Vec::new(),
            recipients: Vec::new(),
        };
        let Some(m) = snap.message(msg) else {
            return out;
        };
        if m.stage != "open" {
            out.notes.push(format!("in active, {}", m.stage));
        }
        if m.rcpt_unread > 0 {
            out.notes.push(format!(
                "{} more recipients not yet read from the queue file",
                m.rcpt_unread
            ));
        }
        for e in &m.entries {
            let st = entry_state(snap, msg, e, clock, queue_id_of);
            for r in &e.recipients {
                out.recipients.push(RecipientState {
                    address: address(r),
                    ..st.clone()
                });
            }
        }
        if m.entries.is_empty() && m.stage == "open" {
            out.notes
                .push("in active, no recipient waits for delivery".into());
        }
        out
    }
}

#[cfg(test)]
mod tests;
