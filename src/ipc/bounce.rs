//! Clients of bounce(8) in its three roles, `bounce`, `defer` and `trace`
//! (`global/abounce.c`, `global/bounce.c`, `global/defer.c`,
//! `global/trace.c`, `global/sent.c`): notification requests at message
//! completion, and the per-recipient APPEND qmgr uses when it defers or
//! "delivers" a recipient itself. Also qmgr's own delivery log lines
//! (`global/log_adhoc.c`).

use super::attr::AttrWriter;
use super::flush::{self, Flush};
use super::verify::{self, RcptStatus, Verify};
use super::{Dsn, ServiceError};
use crate::log::addr;
use crate::proto::bounce::{
    CMD_APPEND, CMD_FLUSH, CMD_TRACE, CMD_VERP, CMD_WARN, FLAG_DELRCPT, FLAG_KEEP,
};
use crate::proto::service::CLASS_PRIVATE;
use crate::proto::{deliver_flag as del_flag, dsn_notify};
use crate::qfile::{Envelope, Recipient, Text};
use std::time::Duration;

/// The bounce service's announcement.
pub const PROTOCOL: &str = "delivery_status_protocol";

/// A notification request qmgr makes when a message completes
/// (`global/abounce.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `abounce_flush[_verp]`: the non-delivery notice, from the bounce log.
    Bounce { verp: bool },
    /// `adefer_flush[_verp]`: return an expired message to the sender, from
    /// the defer log, deleting the recipients.
    Return { verp: bool },
    /// `adefer_warn`: the delay warning, from the defer log.
    Warn,
    /// `atrace_flush`: the delivery status notice, with the message's trace
    /// flags.
    Trace { tflags: u32 },
}

impl Notice {
    /// Which service gets it: bounce, defer or trace.
    pub fn service<'a>(&self, svc: &'a Services) -> &'a str {
        match self {
            Notice::Bounce { .. } => &svc.bounce,
            Notice::Return { .. } | Notice::Warn => &svc.defer,
            Notice::Trace { .. } => &svc.trace,
        }
    }

    fn command(&self) -> u32 {
        match *self {
            Notice::Bounce { verp: true } | Notice::Return { verp: true } => CMD_VERP,
            Notice::Bounce { verp: false } | Notice::Return { verp: false } => CMD_FLUSH,
            Notice::Warn => CMD_WARN,
            Notice::Trace { .. } => CMD_TRACE,
        }
    }

    fn flags(&self) -> u32 {
        match *self {
            Notice::Bounce { .. } | Notice::Warn => FLAG_KEEP,
            Notice::Return { .. } => FLAG_KEEP | FLAG_DELRCPT,
            Notice::Trace { tflags } => tflags,
        }
    }

    /// The word in `<id>: status=deferred (<what> failed)` (`abounce_done`).
    pub fn what(&self) -> &'static str {
        match self.command() {
            CMD_FLUSH => "bounce",
            CMD_WARN => "delay warning",
            CMD_VERP => "verp",
            _ => "trace",
        }
    }

    /// The request for message `queue_id` with envelope `env`
    /// (`bounce_notify_proto` / `bounce_verp_proto`).
    pub fn request(&self, queue_id: &str, env: &Envelope) -> Vec<u8> {
        let verp = if self.command() == CMD_VERP {
            env.texts.get(Text::VerpDelims)
        } else {
            None
        };
        notify_request(self.command(), self.flags(), queue_id, env, verp)
    }
}

/// A notification request (FLUSH, WARN, VERP or TRACE) for one message
/// (`bounce_notify_proto` / `bounce_verp_proto`).
fn notify_request(
    cmd: u32,
    flags: u32,
    queue_id: &str,
    env: &Envelope,
    verp: Option<&[u8]>,
) -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.int("nrequest", cmd)
        .int("flags", flags)
        .str("queue_name", b"active")
        .str("queue_id", queue_id.as_bytes())
        .str("encoding", env.texts.or_empty(Text::Encoding))
        .int("smtputf8", env.smtputf8)
        .str("sender", env.texts.or_empty(Text::Sender))
        .str("envelope_id", env.texts.or_empty(Text::DsnEnvid))
        .int("ret_flags", env.dsn_ret);
    if let Some(d) = verp {
        w.str("verp_delimiters", d);
    }
    w.end();
    w.into_bytes()
}

/// What qmgr's own disposition of a recipient came to (the status of
/// `defer_append`, `sent`).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposed {
    /// Finished with: a discarded recipient may be marked done.
    Done,
    /// The message must be retried (it goes to deferred).
    Retry,
}

/// An APPEND request: one recipient and its status, for the log of the
/// service it is sent to (`bounce_append_proto`).
pub fn append_request(flags: u32, queue_id: &str, rcpt: &Recipient, dsn: &Dsn) -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.int("nrequest", CMD_APPEND)
        .int("flags", flags)
        .str("queue_id", queue_id.as_bytes())
        .str("original_recipient", rcpt.orig_rcpt())
        .str("recipient", rcpt.address())
        .long("offset", rcpt.offset)
        .str("dsn_orig_rcpt", rcpt.dsn_orcpt())
        .int("notify_flags", rcpt.dsn_notify)
        .str("status", &dsn.status)
        .str("diag_type", &dsn.diag_type)
        .str("diag_text", &dsn.diag_text)
        .str("mta_type", &dsn.mta_type)
        .str("mta_mname", &dsn.mta_mname)
        .str("action", &dsn.action)
        .str("reason", &dsn.reason)
        .end();
    w.into_bytes()
}

/// Sends one request to `private/<service>` and returns the service's
/// status (0 = done). Each step is limited by `timeout`.
///
/// Errors: [`ServiceError`] for a failed connect, write or read.
pub async fn call(service: &str, request: &[u8], timeout: Duration) -> Result<i32, ServiceError> {
    super::command(CLASS_PRIVATE, service, PROTOCOL, request, timeout).await
}

/// [`call`] for an APPEND (`bounce_append`, `defer_append`,
/// `trace_append` use `mail_command_client`): a failure is also logged
/// in its words (`connect to private/defer: No such file or directory`).
///
/// Errors: as [`call`].
async fn append_call(
    service: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<i32, ServiceError> {
    super::command_client(CLASS_PRIVATE, service, PROTOCOL, request, timeout).await
}

/// The time stamps qmgr knows for its own log lines: arrival in the queue
/// and arrival in qmgr's memory, as (seconds, microseconds).
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub incoming: (i64, i64),
    pub active: (i64, i64),
}

/// Formats a delay the way `util/format_tv.c` does with 2 significant
/// digits and at most `max_dig` decimals.
pub fn format_tv(sec: i64, usec: i64, sig_dig: u32, max_dig: u32) -> String {
    const MILLION: i64 = 1_000_000;
    let pow10 = [1i64, 10, 100, 1000, 10000, 100000, 1000000];
    let (mut sec, mut usec) = (sec.max(0), usec.clamp(0, MILLION));
    let mut ures = MILLION / pow10[max_dig.min(6) as usize];
    let wid = pow10[sig_dig.clamp(1, 6) as usize];
    if ures < MILLION {
        if sec > 0 {
            let mut n = 1;
            while sec >= n && n <= wid / 10 {
                n *= 10;
            }
            ures = (MILLION / wid) * n;
        } else {
            while usec >= wid * ures {
                ures *= 10;
            }
        }
    }
    if ures > 1 {
        usec += ures / 2;
        if usec >= MILLION {
            sec = sec.saturating_add(1);
            usec -= MILLION;
        }
    }
    let mut out = sec.to_string();
    if usec >= ures {
        out.push('.');
        let (mut rem, mut n) = (usec, MILLION / 10);
        while rem >= ures && n > 0 {
            out.push((b'0' + (rem / n) as u8) as char);
            rem %= n;
            n /= 10;
        }
    }
    out
}

/// `a - b`, normalised like Postfix's `DELTA` loop (microseconds in
/// 0..1000000, negative results as 0), but in constant time and without
/// overflow: the arrival time comes from the queue file's `T` record, whose
/// microseconds may be any number.
fn delta(a: (i64, i64), b: (i64, i64)) -> (i64, i64) {
    let u = i128::from(a.1) - i128::from(b.1);
    let s = i128::from(a.0) - i128::from(b.0) + u.div_euclid(1_000_000);
    if s < 0 {
        (0, 0)
    } else {
        (
            i64::try_from(s).unwrap_or(i64::MAX),
            u.rem_euclid(1_000_000) as i64,
        )
    }
}

/// The `to=<...>, relay=..., delay=..., delays=..., dsn=..., status=... (...)`
/// line (`global/log_adhoc.c`) for a recipient qmgr disposed of itself.
pub fn adhoc_line(
    queue_id: &str,
    stats: &Stats,
    rcpt: &Recipient,
    relay: &str,
    dsn: &Dsn,
    status: &str,
    max_dig: u32,
) -> String {
    let now = crate::now_timeval();
    let mut line = format!("{queue_id}: to=<{}>", addr(rcpt.address()));
    if !rcpt.orig_rcpt().is_empty() && !rcpt.orig_rcpt().eq_ignore_ascii_case(rcpt.address()) {
        line.push_str(&format!(", orig_to=<{}>", addr(rcpt.orig_rcpt())));
    }
    line.push_str(&format!(", relay={relay}"));
    let d = delta(now, stats.incoming);
    let (p, a) = if stats.active.0 > 0 {
        (
            delta(stats.active, stats.incoming),
            delta(now, stats.active),
        )
    } else {
        (delta(now, stats.incoming), (0, 0))
    };
    let f = |x: (i64, i64)| format_tv(x.0, x.1, 2, max_dig);
    line.push_str(&format!(
        ", delay={}, delays={}/{}/{}/{}, dsn={}, status={} ({})",
        f(d),
        f(p),
        f(a),
        f((0, 0)),
        f((0, 0)),
        String::from_utf8_lossy(&dsn.status),
        status,
        String::from_utf8_lossy(&dsn.reason)
    ));
    line
}

/// Service names and limits of the bounce/defer/trace clients, and of the
/// verify and flush clients they use.
#[derive(Debug, Clone)]
pub struct Services {
    pub bounce: String,
    pub defer: String,
    pub trace: String,
    pub verify: Verify,
    pub flush: Flush,
    pub timeout: Duration,
    /// `delay_logging_resolution_limit`.
    pub max_dig: u32,
}

/// A recipient qmgr disposes of itself (defers, or "delivers" by
/// discarding), with what its log records and log line need.
#[derive(Debug, Clone, Copy)]
pub struct Disposal<'a> {
    /// The message's trace flags (`DEL_REQ_FLAG_*`).
    pub flags: u32,
    pub queue_id: &'a str,
    pub stats: Stats,
    pub rcpt: &'a Recipient,
    /// The `relay=` of the log line (`none` for qmgr itself).
    pub relay: &'a str,
}

/// Appends a record to the trace log (`trace_append`): the reason is prefixed
/// with `delivery via <relay>: ` unless the relay is `none`.
///
/// Errors: [`ServiceError`] when the trace service fails or refuses.
pub async fn trace_append(svc: &Services, r: &Disposal<'_>, dsn: &Dsn) -> Result<(), ServiceError> {
    let mut d = dsn.clone();
    let relay = r.relay;
    if relay != "none" {
        let mut reason = format!("delivery via {relay}: ").into_bytes();
        reason.extend_from_slice(&dsn.reason);
        d.reason = reason;
    }
    match append_call(
        &svc.trace,
        &append_request(r.flags, r.queue_id, r.rcpt, &d),
        svc.timeout,
    )
    .await
    {
        Ok(0) => Ok(()),
        Ok(status) => Err(ServiceError::Status {
            class: CLASS_PRIVATE,
            service: svc.trace.clone(),
            status,
        }),
        Err(e) => Err(e),
    }
}

/// A copy of `dsn` whose status is of `class` (`2` or `4`): another or an
/// invalid code is logged by `caller` and replaced by `<class>.0.0`, as
/// `defer_append` and `sent` do.
fn with_class(dsn: &Dsn, class: u8, caller: &str) -> Dsn {
    let mut d = dsn.clone();
    if d.status.first() != Some(&class) || !super::dsn_valid(&d.status) {
        tracing::warn!(
            "{caller}: ignoring dsn code \"{}\"",
            String::from_utf8_lossy(&d.status)
        );
        d.status = format!("{}.0.0", class as char).into_bytes();
    }
    d
}

/// Records an address verification probe's result with verify(8) and logs
/// `status=<action>` (`verify_append`): `action` is `deliverable` or
/// `undeliverable`; without `address_verify_negative_cache` a failure is
/// not recorded and logged as `undeliverable-but-not-cached`. Both the
/// original and the final address are updated.
async fn verify_append(
    svc: &Services,
    r: &Disposal<'_>,
    dsn: &Dsn,
    status: RcptStatus,
) -> Disposed {
    let rcpt = r.rcpt;
    let mut shown = dsn.clone();
    let mut ok = true;
    if svc.verify.negative_cache || status == RcptStatus::Ok {
        if !rcpt.orig_rcpt().is_empty() {
            ok = svc
                .verify
                .update(rcpt.orig_rcpt(), status, &dsn.reason)
                .await
                == verify::STAT_OK;
        }
        if ok && rcpt.address() != rcpt.orig_rcpt() {
            ok = svc.verify.update(rcpt.address(), status, &dsn.reason).await == verify::STAT_OK;
        }
    } else {
        shown.action = b"undeliverable-but-not-cached".to_vec();
    }
    if ok {
        let action = String::from_utf8_lossy(&shown.action).into_owned();
        tracing::info!(
            "{}",
            adhoc_line(
                r.queue_id,
                &r.stats,
                rcpt,
                r.relay,
                dsn,
                &action,
                svc.max_dig
            )
        );
        Disposed::Done
    } else {
        tracing::warn!("{}: {} service failure", r.queue_id, svc.verify.service);
        Disposed::Retry
    }
}

/// qmgr defers a recipient itself (`defer_append`): a non-4.x.x code becomes
/// 4.0.0. An address verification probe's result goes to verify(8), a
/// user's verification request (`sendmail -bv`) to the trace log; other
/// mail goes into the defer log with a `status=deferred` line, the trace
/// log if the sender asked for every delivery, and the recipient's domain
/// to the fast flush log. Other mail must then be retried.
pub async fn defer_append(svc: &Services, r: &Disposal<'_>, dsn: &Dsn) -> Disposed {
    let (flags, queue_id, rcpt) = (r.flags, r.queue_id, r.rcpt);
    let mut d = with_class(dsn, b'4', "defer_append");
    if flags & del_flag::MTA_VRFY != 0 {
        d.action = b"undeliverable".to_vec();
        return verify_append(svc, r, &d, RcptStatus::Defer).await;
    }
    if flags & del_flag::USR_VRFY != 0 {
        d.action = b"undeliverable".to_vec();
        return match trace_append(svc, r, &d).await {
            Ok(()) => Disposed::Done,
            Err(_) => Disposed::Retry,
        };
    }
    d.action = b"delayed".to_vec();
    match append_call(
        &svc.defer,
        &append_request(flags, queue_id, rcpt, &d),
        svc.timeout,
    )
    .await
    {
        Ok(0) => {}
        Ok(_) | Err(_) => tracing::warn!("{queue_id}: {} service failure", svc.defer),
    }
    tracing::info!(
        "{}",
        adhoc_line(
            queue_id,
            &r.stats,
            rcpt,
            r.relay,
            &d,
            "deferred",
            svc.max_dig
        )
    );
    if flags & del_flag::RECORD != 0 && trace_append(svc, r, &d).await.is_err() {
        tracing::warn!("{queue_id}: {} service failure", svc.trace);
    }
    if let Some(site) = crate::address::domain(rcpt.address()) {
        let site = String::from_utf8_lossy(site);
        match svc.flush.add(&site, queue_id).await {
            Ok(flush::STAT_OK | flush::STAT_DENY) => {}
            Ok(_) | Err(_) => tracing::warn!("{queue_id}: {} service failure", svc.flush.service),
        }
    }
    Disposed::Retry
}

/// qmgr "delivers" a recipient itself (`sent`, used to discard mail for the
/// double-bounce address): a probe's result goes to verify(8), a user's
/// verification request to the trace log; other mail is traced first when
/// the message or recipient asks for it, then logged `status=sent`. On a
/// trace failure the recipient is deferred instead.
pub async fn sent(svc: &Services, r: &Disposal<'_>, dsn: &Dsn) -> Disposed {
    let (flags, queue_id, rcpt) = (r.flags, r.queue_id, r.rcpt);
    let mut d = with_class(dsn, b'2', "sent");
    if flags & del_flag::MTA_VRFY != 0 {
        d.action = b"deliverable".to_vec();
        return verify_append(svc, r, &d, RcptStatus::Ok).await;
    }
    if flags & del_flag::USR_VRFY != 0 {
        d.action = b"deliverable".to_vec();
        return match trace_append(svc, r, &d).await {
            Ok(()) => Disposed::Done,
            Err(_) => Disposed::Retry,
        };
    }
    if d.action.is_empty() {
        d.action = b"delivered".to_vec();
    }
    let rec_all = flags & del_flag::RECORD != 0;
    let rec_dly = flags & del_flag::REC_DLY_SENT != 0
        && (rcpt.dsn_notify == 0 || rcpt.dsn_notify & dsn_notify::DELAY != 0);
    let mut ok = true;
    if rec_all || rec_dly {
        ok = trace_append(svc, r, &d).await.is_ok();
    }
    if ok && rcpt.dsn_notify & dsn_notify::SUCCESS != 0 {
        ok = trace_append(svc, r, &d).await.is_ok();
    }
    if ok {
        tracing::info!(
            "{}",
            adhoc_line(queue_id, &r.stats, rcpt, r.relay, &d, "sent", svc.max_dig)
        );
        Disposed::Done
    } else {
        let reason = format!("{queue_id}: {} service failed", svc.trace);
        defer_append(svc, r, &Dsn::simple("4.3.0", &reason)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_like_format_tv() {
        assert_eq!(format_tv(0, 10000, 2, 2), "0.01");
        assert_eq!(format_tv(0, 4000, 2, 2), "0");
        assert_eq!(format_tv(8, 200000, 2, 2), "8.2");
        assert_eq!(format_tv(41, 300000, 2, 2), "41");
        assert_eq!(format_tv(123, 0, 2, 2), "123");
        assert_eq!(format_tv(0, 0, 2, 2), "0");
        assert_eq!(format_tv(0, 999999, 2, 2), "1");
    }

    #[test]
    fn notify_request_matches_capture() {
        let mut env = Envelope::default();
        env.texts.set(Text::Sender, b"sender@discard.example");
        let req = Notice::Bounce { verp: false }.request("D637999209F", &env);
        assert_eq!(
            req,
            b"nrequest\x001\0flags\x000\0queue_name\0active\0queue_id\0D637999209F\0encoding\0\0smtputf8\x000\0sender\0sender@discard.example\0envelope_id\0\0ret_flags\x000\0\0"
        );
    }
}
