//! Carrying out completion (`qmgr/qmgr_active.c:qmgr_active_done*`): each
//! [`Step`] the core hands out becomes one file operation or one notice
//! request (`global/abounce.c`), and its result goes back as a [`Fact`].
//! Also the recipients qmgr disposes of itself: deferred
//! (`qmgr/qmgr_defer.c:qmgr_defer_recipient`) or, for the double-bounce
//! address, "delivered" (`sent`).

use super::{Daemon, Report};
use crate::ipc::bounce::{self, Disposal, Disposed, Notice, Stats};
use crate::ipc::Dsn;
use crate::qfile::{Recipient, Text};
use crate::qmgr::{Fact, MessageId, Reason, Step};
use crate::spool::{self, QueueFile};
use std::time::Duration;

/// Guard on each step of a bounce/defer/trace request (`abounce.c`).
const ABOUNCE_TIMEOUT: Duration = Duration::from_secs(1000);

impl Daemon {
    /// Carries out one completion step; synchronous ones are answered at
    /// once, notices when the service replies ([`Report::Notified`]).
    pub(super) async fn completion_step(&mut self, msg: MessageId, step: Step) {
        let Some(m) = self.messages.get(msg) else {
            return;
        };
        let id = m.queue_id().to_string();
        let fact = match step {
            Step::CheckBounceLog => {
                tracing::debug!("qmgr_active_done: {id}");
                Some(Fact::BounceLog(self.spool.bounce_log(&id)))
            }
            Step::RemoveBounceLog => {
                self.spool.remove_bounce_log(&id);
                Some(Fact::Done)
            }
            Step::FlushBounce { verp } => {
                tracing::debug!("qmgr_active_done: bounce {id}");
                self.spawn_notice(msg, Notice::Bounce { verp })
            }
            Step::CheckFile => Some(Fact::FileOk(
                self.spool.open_ok(spool::ACTIVE, &id).is_some(),
            )),
            Step::ReadMore => Some(Fact::Read(self.read_more(msg).await)),
            Step::FlushTrace => {
                let tflags = m.env.tflags;
                self.spawn_notice(msg, Notice::Trace { tflags })
            }
            Step::KillTraceRecord => {
                let offset = m.env.tflags_offset;
                if let Some(f) = QueueFile::open(&self.spool, &id) {
                    f.kill_record(offset);
                }
                Some(Fact::Done)
            }
            Step::ReturnToSender { expiry, verp } => {
                tracing::info!(
                    "{id}: from=<{}>, status={}, returned to sender",
                    crate::log::addr(m.env.texts.or_empty(Text::Sender)),
                    expiry.as_str()
                );
                self.spawn_notice(msg, Notice::Return { verp })
            }
            Step::Warn => {
                tracing::debug!("qmgr_active_done: sending defer warning for {id}");
                self.spawn_notice(msg, Notice::Warn)
            }
            Step::MarkWarned => {
                let offset = m.env.warn_offset;
                if let Some(f) = QueueFile::open(&self.spool, &id) {
                    f.mark_warning_sent(offset);
                }
                Some(Fact::Done)
            }
            Step::Defer { delay } => {
                let now = crate::now_secs();
                if self
                    .spool
                    .defer(&id, spool::ACTIVE, spool::DEFERRED, now, delay)
                    == spool::Landed::AsAsked
                {
                    self.scans.deferred.added(&id, now + delay);
                }
                Some(Fact::Done)
            }
            Step::Remove => {
                self.spool.remove_done(&id);
                Some(Fact::Done)
            }
            Step::SaveCorrupt => {
                self.spool.save_corrupt(&id);
                Some(Fact::Done)
            }
        };
        if let Some(fact) = fact {
            self.core.complete(msg, fact, crate::now_secs());
        }
    }

    /// Sends one notice request for `msg` in the background; its status
    /// comes back as [`Report::Notified`]. A failure is logged as
    /// `<id>: status=deferred (<what> failed)` (`abounce_done`), without
    /// a warning for a connect or write that failed, as abounce gives none.
    fn spawn_notice(&self, msg: MessageId, notice: Notice) -> Option<Fact> {
        let m = &self.messages[msg];
        let request = notice.request(m.queue_id(), &m.env);
        let service = notice.service(&self.services).to_string();
        let tx = self.reports_tx.clone();
        let id = m.queue_id().to_string();
        tokio::task::spawn_local(async move {
            let ok = match bounce::call(&service, &request, ABOUNCE_TIMEOUT).await {
                Ok(status) => status == 0,
                // abounce gives attr_scan0's warning for an unusable
                // answer, and none for a service that cannot be reached
                // or hangs up.
                Err(crate::ipc::ServiceError::Read {
                    class,
                    service,
                    error,
                }) => {
                    if let Some(w) = error.warning(&format!("{class}/{service} socket")) {
                        tracing::warn!("{w}");
                    }
                    false
                }
                Err(_) => false,
            };
            if !ok {
                tracing::info!("{id}: status=deferred ({} failed)", notice.what());
            }
            let _ = tx.send(Report::Notified { msg, ok });
        });
        None
    }

    /// What qmgr's own disposition of `rcpt` needs to know.
    fn disposal<'a>(&'a self, msg: MessageId, rcpt: &'a Recipient) -> Option<Disposal<'a>> {
        let m = self.messages.get(msg)?;
        Some(Disposal {
            flags: m.env.tflags,
            queue_id: m.queue_id(),
            stats: Stats {
                incoming: m.env.arrival,
                active: m.active_arrival,
            },
            rcpt,
            relay: "none",
        })
    }

    /// The core has qmgr defer these recipients itself, those that the
    /// queue file does not mark as done.
    pub(super) async fn defer_recipients(
        &mut self,
        msg: MessageId,
        rcpts: &[Recipient],
        reason: &Reason,
    ) {
        let Some(m) = self.messages.get(msg) else {
            return;
        };
        let file = QueueFile::open(&self.spool, m.queue_id());
        for rcpt in rcpts {
            if file
                .as_ref()
                .is_none_or(|f| f.recipient_pending(rcpt.offset))
            {
                self.defer_recipient(msg, rcpt, reason).await;
            }
        }
    }

    /// qmgr defers one recipient itself (`qmgr_defer_recipient`).
    pub(super) async fn defer_recipient(
        &mut self,
        msg: MessageId,
        rcpt: &Recipient,
        reason: &Reason,
    ) {
        let Some(d) = self.disposal(msg, rcpt) else {
            return;
        };
        let dsn = Dsn::simple(&reason.status, &reason.text);
        if bounce::defer_append(&self.services, &d, &dsn).await == Disposed::Retry {
            self.core.must_retry(msg);
        }
    }

    /// Mail to the local double-bounce address is "delivered" by qmgr
    /// itself and marked done in the queue file (`qmgr_message_resolve`).
    pub(super) async fn discard_double_bounce(
        &mut self,
        msg: MessageId,
        file: &QueueFile,
        rcpt: &Recipient,
    ) {
        let Some(d) = self.disposal(msg, rcpt) else {
            return;
        };
        let dsn = Dsn::simple("2.0.0", "undeliverable postmaster notification discarded");
        match bounce::sent(&self.services, &d, &dsn).await {
            Disposed::Done => file.mark_done(rcpt.offset),
            Disposed::Retry => self.core.must_retry(msg),
        }
    }
}
