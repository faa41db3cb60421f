//! The active queue (`qmgr/qmgr_active.c`): the decisions of feeding a
//! queue file into it, and of message completion once none of a message's
//! entries remain, as an explicit state machine.
//!
//! Completion follows `qmgr_active_done` and its continuations: flush a
//! non-empty bounce log; if something must be retried and the file is no
//! longer a proper queue file, save it as corrupt; read the next batch of
//! recipients if any; flush the trace log if asked for; then expire the
//! message (return it to the sender), or send a delay warning; finally
//! move it to deferred with a backoff time stamp, or remove it. The core
//! hands out one [`Step`] at a time ([`super::Action::Complete`]); the shell
//! carries it out and answers with a [`Fact`] ([`Core::complete`]).

use super::event::{Disposition, Event};
use super::scan::ScanFlags;
use super::{Action, Core, MessageId};
use crate::proto::{deliver_flag, queue_mode};

/// Seconds before a file that another process still delivers (it is
/// locked) is tried again: it goes back to incoming with this time stamp
/// (`qmgr_active_feed`).
pub const LOCKED_RETRY_DELAY: i64 = 60;

/// Whether a queue file found by a scan is fed now (`qmgr_active_feed`): a
/// modification time more than a second after `now` means "not yet",
/// unless the scan ignores time stamps (`ScanFlags::ALL`). Seconds since
/// the epoch.
pub fn feed_due(scan: ScanFlags, mtime: i64, now: i64) -> bool {
    scan.contains(ScanFlags::ALL) || mtime <= now.saturating_add(1)
}

/// The flags a fed message gets from the scan and its file mode, and the
/// mode to set once it has been read (`qmgr_active_feed`): group read
/// (`postqueue -i`, `postsuper -r`) revives its destinations and ignores
/// `defer_transports`, and is cleared after reading; group execute
/// (`postsuper -e`) forces expiry.
pub fn feed_flags(scan: ScanFlags, mode: u32) -> (ScanFlags, Option<u32>) {
    let mut flags = scan;
    let unthrottle = mode & queue_mode::UNTHROTTLE != 0;
    if unthrottle {
        flags |= ScanFlags::FLUSH_EACH | ScanFlags::FLUSH_DFXP;
    }
    if mode & queue_mode::EXPIRE != 0 {
        flags |= ScanFlags::FORCE_EXPIRE;
    }
    let new_mode = unthrottle.then_some(mode & !queue_mode::UNTHROTTLE & 0o7777);
    (flags, new_mode)
}

/// Why a message is returned to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Older than `maximal_queue_lifetime` (`bounce_queue_lifetime` for
    /// null-sender mail).
    Expired,
    /// `postsuper -e`.
    ForceExpired,
}

impl Expiry {
    /// The word in `status=..., returned to sender`.
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Expired => "expired",
            Expiry::ForceExpired => "force-expired",
        }
    }
}

/// What the bounce log of a message looks like (`stat` of `bounce/<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceLog {
    Missing,
    Empty,
    NonEmpty,
}

/// One step of completion for the shell to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Look at `bounce/<id>`; answer [`Fact::BounceLog`].
    CheckBounceLog,
    /// Remove the empty `bounce/<id>` (a failure is fatal, as in
    /// Postfix); answer [`Fact::Done`].
    RemoveBounceLog,
    /// Ask the bounce service to send the non-delivery notice, keeping the
    /// queue file (`abounce_flush`, or `abounce_flush_verp` with `verp`);
    /// answer [`Fact::Notified`] when it replies.
    FlushBounce { verp: bool },
    /// Check that `active/<id>` is still a proper queue file
    /// (`mail_open_ok`); answer [`Fact::FileOk`].
    CheckFile,
    /// Read, resolve and assign the next batch of recipients
    /// (`qmgr_message_realloc`); answer [`Fact::Read`].
    ReadMore,
    /// Ask the trace service for the delivery status notice (`atrace_flush`
    /// with the message's trace flags); answer [`Fact::Notified`].
    FlushTrace,
    /// Kill the `trace_flags` record in the queue file
    /// (`qmgr_message_kill_record`); answer [`Fact::Done`].
    KillTraceRecord,
    /// Log `<id>: from=<sender>, status=<expiry>, returned to sender` and
    /// ask the defer service to return the message (`adefer_flush`, or
    /// `adefer_flush_verp` with `verp`); answer [`Fact::Notified`].
    ReturnToSender { expiry: Expiry, verp: bool },
    /// Ask the defer service for a delay warning (`adefer_warn`); answer
    /// [`Fact::Notified`].
    Warn,
    /// Mark the delay warning as sent in the queue file
    /// (`qmgr_message_update_warn`); answer [`Fact::Done`].
    MarkWarned,
    /// Time-stamp the file `delay` seconds from now and move it to the
    /// deferred queue (`qmgr_active_defer`); answer [`Fact::Done`]. The
    /// message then leaves the core.
    Defer { delay: i64 },
    /// Remove the file and log `<id>: removed`; answer [`Fact::Done`]. The
    /// message then leaves the core.
    Remove,
    /// Move the file to the corrupt queue (`qmgr_active_corrupt`); answer
    /// [`Fact::Done`]. The message then leaves the core.
    SaveCorrupt,
}

/// The shell's answer to a [`Step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// To [`Step::CheckBounceLog`].
    BounceLog(BounceLog),
    /// To a notice request: true if the service took it (status 0).
    Notified(bool),
    /// To [`Step::CheckFile`]: the file passed.
    FileOk(bool),
    /// To [`Step::ReadMore`]: the batch was read (false: the file is gone
    /// or damaged).
    Read(bool),
    /// A file operation was carried out.
    Done,
}

/// Where a message's completion stands (which answer it waits for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Entries outstanding: not completing.
    Open,
    BounceLog,
    RemovingBounceLog,
    BounceFlush,
    FileCheck,
    Reading,
    TraceFlush,
    KillingTrace,
    DeferFlush,
    Warning,
    MarkingWarned,
    /// A final step ([`Disposition`]) is being carried out.
    Disposing(Disposition),
}

impl<R> Core<R> {
    /// Starts completion when `msg` has no entries and no refill under way
    /// (`qmgr_active_done`).
    pub(super) fn start_completion_if_done(&mut self, msg: MessageId) {
        let m = &mut self.messages[msg];
        if m.refcount == 0 && !m.refill_pending && m.stage == Stage::Open {
            self.next_step(msg, Stage::BounceLog, Step::CheckBounceLog);
        }
    }

    /// The shell's answer to the last [`Step`] of `msg`; `wall_now` is the
    /// wall-clock time, seconds since the epoch (expiry, warnings and backoff
    /// are decided on it, as Postfix's `event_time()`). An answer that does
    /// not fit the step is a shell bug and is ignored.
    pub fn complete(&mut self, msg: MessageId, fact: Fact, wall_now: i64) {
        let Some(m) = self.messages.get_mut(msg) else {
            return;
        };
        match (m.stage, fact) {
            (Stage::BounceLog, Fact::BounceLog(BounceLog::Missing)) => {
                self.after_bounce(msg, wall_now)
            }
            (Stage::BounceLog, Fact::BounceLog(BounceLog::Empty)) => {
                self.next_step(msg, Stage::RemovingBounceLog, Step::RemoveBounceLog);
            }
            (Stage::RemovingBounceLog, Fact::Done) => self.after_bounce(msg, wall_now),
            (Stage::BounceLog, Fact::BounceLog(BounceLog::NonEmpty)) => {
                let verp = self.verp_notices(msg);
                self.next_step(msg, Stage::BounceFlush, Step::FlushBounce { verp });
            }
            (Stage::BounceFlush, Fact::Notified(ok)) => {
                m.retry |= !ok;
                self.after_bounce(msg, wall_now);
            }
            (Stage::FileCheck, Fact::FileOk(true)) => self.after_file_check(msg, wall_now),
            (Stage::FileCheck, Fact::FileOk(false)) | (Stage::Reading, Fact::Read(false)) => {
                self.dispose(msg, Disposition::Corrupt, Step::SaveCorrupt);
            }
            (Stage::Reading, Fact::Read(true)) => {
                // More entries, or none: then completion starts over
                // (qmgr_active_done_2_generic "recurse for consistency").
                m.stage = Stage::Open;
                self.start_completion_if_done(msg);
            }
            (Stage::TraceFlush, Fact::Notified(ok)) => {
                m.retry |= !ok;
                if ok && m.facts.trace_record {
                    self.next_step(msg, Stage::KillingTrace, Step::KillTraceRecord);
                } else {
                    self.expire_or_warn(msg, wall_now);
                }
            }
            (Stage::KillingTrace, Fact::Done) => self.expire_or_warn(msg, wall_now),
            (Stage::DeferFlush, Fact::Notified(ok)) => {
                m.retry = !ok;
                self.finish(msg, wall_now);
            }
            (Stage::Warning, Fact::Notified(ok)) => {
                if ok && m.facts.warn_record {
                    self.next_step(msg, Stage::MarkingWarned, Step::MarkWarned);
                } else {
                    self.finish(msg, wall_now);
                }
            }
            (Stage::MarkingWarned, Fact::Done) => self.finish(msg, wall_now),
            (Stage::Disposing(disposition), Fact::Done) => {
                self.message_free(msg);
                self.emit(Event::MessageFinished { msg, disposition });
            }
            (stage, fact) => debug_assert!(false, "completion of {msg:?}: {fact:?} in {stage:?}"),
        }
    }

    /// Notices one per recipient to the VERP sender.
    fn verp_notices(&self, msg: MessageId) -> bool {
        self.messages[msg].facts.verp && !self.settings.disable_verp_bounces
    }

    /// `qmgr_active_done_2_generic`: a message with something to retry
    /// whose file is no longer a proper queue file goes to corrupt.
    fn after_bounce(&mut self, msg: MessageId, wall_now: i64) {
        if self.messages[msg].retry {
            self.next_step(msg, Stage::FileCheck, Step::CheckFile);
        } else {
            self.after_file_check(msg, wall_now);
        }
    }

    /// `qmgr_active_done_2_generic`, continued: the next batch, else a trace
    /// flush if the message or a recipient asked for one.
    fn after_file_check(&mut self, msg: MessageId, wall_now: i64) {
        let m = &self.messages[msg];
        let trace = m.facts.tflags
            & (deliver_flag::USR_VRFY | deliver_flag::RECORD | deliver_flag::REC_DLY_SENT)
            != 0
            || m.facts.notify_success;
        if m.more {
            self.next_step(msg, Stage::Reading, Step::ReadMore);
        } else if trace {
            self.next_step(msg, Stage::TraceFlush, Step::FlushTrace);
        } else {
            self.expire_or_warn(msg, wall_now);
        }
    }

    /// `qmgr_active_done_25_generic`: a message to retry is returned to the
    /// sender once expired, or gets its delay warning when due.
    fn expire_or_warn(&mut self, msg: MessageId, wall_now: i64) {
        let m = &self.messages[msg];
        if m.retry {
            if let Some(expiry) = self.expiry(msg, wall_now) {
                let verp = self.verp_notices(msg);
                self.next_step(
                    msg,
                    Stage::DeferFlush,
                    Step::ReturnToSender { expiry, verp },
                );
                return;
            }
            if warning_due(m.facts.warn_time, wall_now) {
                self.next_step(msg, Stage::Warning, Step::Warn);
                return;
            }
        }
        self.finish(msg, wall_now);
    }

    /// Whether `msg` must be returned to the sender now.
    fn expiry(&self, msg: MessageId, wall_now: i64) -> Option<Expiry> {
        let m = &self.messages[msg];
        if m.qflags.contains(ScanFlags::FORCE_EXPIRE) {
            return Some(Expiry::ForceExpired);
        }
        let lifetime = if m.facts.null_sender {
            self.settings.bounce_queue_lifetime
        } else {
            self.settings.maximal_queue_lifetime
        };
        (wall_now >= m.facts.create_time.saturating_add(lifetime)).then_some(Expiry::Expired)
    }

    /// `qmgr_active_done_3_generic`: defer with a backoff time stamp, or
    /// remove.
    fn finish(&mut self, msg: MessageId, wall_now: i64) {
        if self.messages[msg].retry {
            let delay = self.backoff(self.messages[msg].facts.create_time, wall_now);
            self.dispose(msg, Disposition::Deferred { delay }, Step::Defer { delay });
        } else {
            self.dispose(msg, Disposition::Removed, Step::Remove);
        }
    }

    fn dispose(&mut self, msg: MessageId, disposition: Disposition, step: Step) {
        self.next_step(msg, Stage::Disposing(disposition), step);
    }

    /// Hands the shell the next step of `msg`, which then waits in `stage`.
    fn next_step(&mut self, msg: MessageId, stage: Stage, step: Step) {
        self.messages[msg].stage = stage;
        self.actions.push_back(Action::Complete { msg, step });
    }

    /// Seconds until the next attempt: the age of the message, clamped to
    /// [`minimal_backoff_time`, `maximal_backoff_time`]; the minimum when
    /// the creation time is unknown.
    fn backoff(&self, create_time: i64, wall_now: i64) -> i64 {
        let min = self.settings.minimal_backoff_time as i64;
        let max = self.settings.maximal_backoff_time as i64;
        if create_time > 0 {
            (wall_now - create_time).clamp(min, max.max(min))
        } else {
            min
        }
    }
}

/// Whether a delay warning is due: a `W` time was set, not yet sent (> 0),
/// and is (almost) reached.
fn warning_due(warn_time: i64, now: i64) -> bool {
    warn_time > 0 && now >= warn_time - 1
}

#[cfg(test)]
mod tests {
    use super::super::tests::{core, message};
    use super::super::{MessageFacts, Settings, Strategy};
    use super::*;
    use std::time::Instant;

    #[test]
    fn feed_decisions() {
        assert!(feed_due(ScanFlags::START, 101, 100));
        assert!(!feed_due(ScanFlags::START, 102, 100));
        assert!(feed_due(ScanFlags::ALL, 1 << 40, 100));
        assert_eq!(
            feed_flags(ScanFlags::START, 0o100700),
            (ScanFlags::START, None)
        );
        let (f, mode) = feed_flags(ScanFlags::START, 0o100750);
        assert!(f.contains(ScanFlags::FLUSH_EACH | ScanFlags::FLUSH_DFXP | ScanFlags::FORCE_EXPIRE));
        assert_eq!(mode, Some(0o710));
    }

    #[test]
    fn warnings() {
        assert!(!warning_due(0, 100));
        assert!(!warning_due(-1, 100));
        assert!(warning_due(101, 100));
        assert!(!warning_due(102, 100));
    }

    /// Runs completion of `m`, answering each step with `answer`, and
    /// returns the steps.
    fn run(
        c: &mut Core<u32>,
        m: MessageId,
        wall: i64,
        mut answer: impl FnMut(Step) -> Fact,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        while let Some(a) = c.poll_action() {
            if let Action::Complete { msg, step } = a {
                assert_eq!(msg, m);
                steps.push(step);
                c.complete(msg, answer(step), wall);
            }
        }
        steps
    }

    fn plain(step: Step) -> Fact {
        match step {
            Step::CheckBounceLog => Fact::BounceLog(BounceLog::Missing),
            Step::CheckFile => Fact::FileOk(true),
            Step::FlushBounce { .. }
            | Step::FlushTrace
            | Step::Warn
            | Step::ReturnToSender { .. } => Fact::Notified(true),
            Step::ReadMore => Fact::Read(true),
            _ => Fact::Done,
        }
    }

    #[test]
    fn delivered_message_is_removed() {
        let now = Instant::now();
        let mut c = core(now);
        let m = message(&mut c, now, &[]);
        assert_eq!(
            run(&mut c, m, 1000, plain),
            vec![Step::CheckBounceLog, Step::Remove]
        );
        assert_eq!(c.message_count(), 0);
        let finished: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(
            finished,
            vec![Event::MessageFinished {
                msg: m,
                disposition: Disposition::Removed
            }]
        );
    }

    #[test]
    fn retry_backs_off_by_age_within_bounds() {
        let now = Instant::now();
        for (age, delay) in [(41, 300), (600, 600), (100_000, 4000)] {
            let mut c = core(now);
            let m = message(&mut c, now, &[]);
            c.messages[m].facts.create_time = 10_000_000 - age;
            c.must_retry(m);
            let steps = run(&mut c, m, 10_000_000, plain);
            assert_eq!(
                steps,
                vec![Step::CheckBounceLog, Step::CheckFile, Step::Defer { delay }]
            );
        }
    }

    #[test]
    fn bounce_log_trace_expiry_and_warning() {
        let now = Instant::now();
        let mut c = core(now);
        let m = message(&mut c, now, &[]);
        c.messages[m].facts = MessageFacts {
            verp: true,
            tflags: deliver_flag::RECORD,
            trace_record: true,
            create_time: 1,
            ..MessageFacts::default()
        };
        c.must_retry(m);
        let steps = run(&mut c, m, 5 * 86400 + 1, |s| match s {
            Step::CheckBounceLog => Fact::BounceLog(BounceLog::NonEmpty),
            Step::ReturnToSender { .. } => Fact::Notified(true),
            s => plain(s),
        });
        assert_eq!(
            steps,
            vec![
                Step::CheckBounceLog,
                Step::FlushBounce { verp: true },
                Step::CheckFile,
                Step::FlushTrace,
                Step::KillTraceRecord,
                Step::ReturnToSender {
                    expiry: Expiry::Expired,
                    verp: true
                },
                // The defer service took the message back: nothing to retry.
                Step::Remove,
            ]
        );

        let mut settings = Settings::postfix_defaults(Strategy::Nqmgr);
        settings.disable_verp_bounces = true;
        let mut c: Core<u32> = Core::new(settings, Box::new(super::super::tests::params_for), now);
        let m = message(&mut c, now, &[]);
        c.messages[m].facts = MessageFacts {
            verp: true,
            warn_time: 500,
            warn_record: true,
            create_time: 400,
            ..MessageFacts::default()
        };
        c.must_retry(m);
        let steps = run(&mut c, m, 499, |s| match s {
            Step::CheckBounceLog => Fact::BounceLog(BounceLog::Empty),
            s => plain(s),
        });
        assert_eq!(
            steps,
            vec![
                Step::CheckBounceLog,
                Step::RemoveBounceLog,
                Step::CheckFile,
                Step::Warn,
                Step::MarkWarned,
                Step::Defer { delay: 300 },
            ]
        );
    }

    #[test]
    fn damaged_file_goes_to_corrupt() {
        let now = Instant::now();
        let mut c = core(now);
        let m = message(&mut c, now, &[]);
        c.must_retry(m);
        let steps = run(&mut c, m, 1000, |s| match s {
            Step::CheckFile => Fact::FileOk(false),
            s => plain(s),
        });
        assert_eq!(
            steps,
            vec![Step::CheckBounceLog, Step::CheckFile, Step::SaveCorrupt]
        );
    }

    #[test]
    fn force_expiry() {
        let now = Instant::now();
        let mut c = core(now);
        let m = c.message_new(ScanFlags::START | ScanFlags::FORCE_EXPIRE, now);
        c.batch_read(m, MessageFacts::default(), now);
        assert!(c.wants_defer_log(m));
        c.expire_from_defer_log(m);
        let steps = run(&mut c, m, 1000, plain);
        assert_eq!(
            steps,
            vec![
                Step::CheckBounceLog,
                Step::CheckFile,
                Step::ReturnToSender {
                    expiry: Expiry::ForceExpired,
                    verp: false
                },
                Step::Remove
            ]
        );
    }
}
