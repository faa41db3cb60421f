//! Feeding the active queue (`qmgr/qmgr.c:qmgr_loop`,
//! `qmgr/qmgr_active.c:qmgr_active_feed`, `qmgr/qmgr_message.c:
//! qmgr_message_alloc`, `qmgr_message_realloc`, `qmgr_message_read`, and the
//! I/O of `qmgr_message_resolve`): take the next name from a scan, move the
//! file into active, open and lock it, read a batch of recipients, resolve
//! each with trivial-rewrite, and hand them to the core. Every decision on
//! the way (whether a file is due, which flags it gets, how each recipient
//! is looked up and routed) is the core's.

use super::{Daemon, InCore};
use crate::ipc::rewrite::Class;
use crate::qfile::{self, ReadOptions, Recipient, Text};
use crate::qmgr::active::{feed_due, feed_flags, LOCKED_RETRY_DELAY};
use crate::qmgr::message::resolve_order;
use crate::qmgr::scan::ScanQueue;
use crate::qmgr::{Lookup, MessageFacts, MessageId, Resolution};
use crate::spool::{self, IfVanished, Lock, Next, QueueFile};
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

impl Daemon {
    /// One feed attempt (`qmgr_loop`): try the scanners in the core's
    /// order while the active queue has room. Returns whether any scanner
    /// produced a name, and whether a message was fed from incoming.
    pub(super) async fn feed_one(&mut self) -> (bool, bool) {
        let mut produced = false;
        let mut fed_incoming = false;
        let mut last = None;
        for q in self.feed_order.order() {
            if !self.core.has_room() {
                break;
            }
            last = Some(q);
            if q == ScanQueue::Incoming {
                if let Some(id) = self.next_left_in_active() {
                    produced = true;
                    if self.feed_left_in_active(&id).await {
                        fed_incoming = true;
                        break;
                    }
                    continue;
                }
            }
            match self.scans.next_id(q) {
                Next::Id(id) => {
                    produced = true;
                    if self.feed(q, &id).await {
                        fed_incoming = q == ScanQueue::Incoming;
                        break;
                    }
                }
                Next::Again => produced = true,
                Next::Done => {}
            }
        }
        self.feed_order.advance(last, self.core.has_room());
        // Files left in active wait for their turn: the loop must not sleep.
        produced |= self.recovery.is_some();
        (produced, fed_incoming)
    }

    /// The next file left in active at start-up, on every other visit of
    /// the incoming slot (the other visits go to the incoming scan, so
    /// that new mail does not wait behind the whole list), or whenever the
    /// incoming scan has nothing to hand out.
    fn next_left_in_active(&mut self) -> Option<String> {
        let recovery = self.recovery.as_mut()?;
        self.recovery_turn = !self.recovery_turn;
        if !self.recovery_turn && self.scans.incoming.in_progress() {
            return None;
        }
        let id = recovery.next_id();
        if recovery.is_done() {
            self.recovery = None;
        }
        id
    }

    /// Reads one file left in active at start-up into memory where it is,
    /// as the incoming scan would feed it after `qmgr_move` put it in
    /// incoming with a time stamp of now: due whatever its time stamp, with
    /// the incoming scan's flags. Returns true if the message was taken in.
    async fn feed_left_in_active(&mut self, id: &str) -> bool {
        let (_, scan_flags) = self.scans.run(ScanQueue::Incoming);
        tracing::debug!(
            "qmgr_active_feed: queue {} (left at start-up)",
            spool::ACTIVE
        );
        let Some(meta) = self.spool.open_ok(spool::ACTIVE, id) else {
            return false;
        };
        let (qflags, new_mode) = feed_flags(scan_flags, meta.permissions().mode());
        self.message_alloc(id, qflags, new_mode, meta.len()).await
    }

    /// Moves one queue file into `active` and reads it into memory
    /// (`qmgr_active_feed`). Returns true if the message was taken in.
    async fn feed(&mut self, q: ScanQueue, id: &str) -> bool {
        let (queue, scan_flags) = self.scans.run(q);
        tracing::debug!("qmgr_active_feed: queue {queue}");
        let Some(meta) = self.spool.open_ok(queue, id) else {
            return false;
        };
        if crate::log::verbose() {
            let path = self.spool.path(queue, id);
            tracing::debug!("qmgr_active_feed: {}", path.display());
        }
        let mtime = meta.modified().map_or(0, system_secs);
        let now = crate::now_secs();
        if !feed_due(scan_flags, mtime, now) {
            tracing::debug!("qmgr_active_feed: skip {id} ({} seconds)", mtime - now);
            return false;
        }
        if !self
            .spool
            .move_file(id, queue, spool::ACTIVE, IfVanished::Warn, || {
                format!(
                    "qmgr_active_feed: {id}: rename from {queue} to {}",
                    spool::ACTIVE
                )
            })
        {
            return false;
        }
        let (qflags, new_mode) = feed_flags(scan_flags, meta.permissions().mode());
        self.message_alloc(id, qflags, new_mode, meta.len()).await
    }

    /// Opens, locks and reads a message, resolves and assigns its first
    /// batch of recipients (`qmgr_message_alloc`). A damaged file goes to
    /// the corrupt queue; a file another process still delivers goes back
    /// to incoming for a while.
    async fn message_alloc(
        &mut self,
        id: &str,
        qflags: crate::qmgr::ScanFlags,
        new_mode: Option<u32>,
        size: u64,
    ) -> bool {
        tracing::debug!("qmgr_message_alloc: {} {id}", spool::ACTIVE);
        let Some(file) = QueueFile::open(&self.spool, id) else {
            self.spool.save_corrupt(id);
            return false;
        };
        let file = file.with_size(size);
        if file.try_lock() == Lock::Busy {
            tracing::info!("{id}: skipped, still being delivered");
            drop(file);
            self.spool.defer(
                id,
                spool::ACTIVE,
                spool::INCOMING,
                crate::now_secs(),
                LOCKED_RETRY_DELAY,
            );
            return false;
        }
        let msg = self.core.message_new(qflags, Instant::now());
        self.messages.insert(msg, Box::new(InCore::new(id)));
        let Ok(recipients) = self.read_recipients(msg, &file) else {
            drop(file);
            self.spool.save_corrupt(id);
            // The message leaves the core with no entries and no steps.
            self.core.message_rejected(msg);
            self.messages.remove(msg);
            return false;
        };
        if let Some(mode) = new_mode {
            file.set_mode(mode);
        }
        if self.core.wants_defer_log(msg) && self.spool.defer_log_nonempty(id) {
            self.core.expire_from_defer_log(msg);
            return true;
        }
        self.spool.reset_defer_log(id);
        self.resolve_and_assign(msg, &file, recipients).await;
        true
    }

    /// Reads the next batch of `msg`'s recipients from `file`, as many as
    /// the core allows, and tells the core what the file says.
    fn read_recipients(
        &mut self,
        msg: MessageId,
        file: &QueueFile,
    ) -> Result<Vec<Recipient>, qfile::Rejected> {
        let limit = self.core.read_limit(msg);
        let m = self.messages.get_mut(msg).expect("message in core");
        if self.core.settings().strategy == crate::qmgr::Strategy::Nqmgr {
            tracing::debug!("{}: recipient limit {limit}", m.queue_id());
        }
        let opts = ReadOptions {
            queue: spool::ACTIVE,
            verp_filter: &self.verp_filter,
            confirm_delay_cleared: self.params.confirm_delay_cleared,
        };
        let mut out = Vec::new();
        // The id lives in the envelope that the read updates.
        let id = smallvec::SmallVec::<[u8; 32]>::from_slice(m.queue_id().as_bytes());
        qfile::read_batch(
            file.file(),
            file.size(),
            &file.path().to_string_lossy(),
            std::str::from_utf8(&id).unwrap_or("?"),
            &mut m.env,
            limit,
            &opts,
            &mut out,
        )?;
        let env = &m.env;
        let facts = MessageFacts {
            rcpt_unread: env.rcpt_unread,
            more: env.rcpt_offset > 0,
            verp: env.texts.is_set(Text::VerpDelims),
            redirect: env.texts.is_set(Text::Redirect),
            create_time: env.create_time,
            null_sender: env.texts.or_empty(Text::Sender).is_empty(),
            tflags: env.tflags,
            notify_success: env.rflags & qfile::envelope::READ_FLAG_NOTIFY_SUCCESS != 0,
            trace_record: env.tflags_offset != 0,
            warn_time: env.warn_time,
            warn_record: env.warn_offset != 0,
        };
        self.core.batch_read(msg, facts, Instant::now());
        Ok(out)
    }

    /// Reads, resolves and assigns the next batch of a message already in
    /// core (`qmgr_message_realloc`). Returns false if the file is gone or
    /// damaged (the caller decides what that means).
    pub(super) async fn read_more(&mut self, msg: MessageId) -> bool {
        let Some(m) = self.messages.get(msg) else {
            return false;
        };
        tracing::debug!(
            "qmgr_message_realloc: {} {} offset {}",
            spool::ACTIVE,
            m.queue_id(),
            m.env.rcpt_offset
        );
        let Some(file) = QueueFile::open(&self.spool, m.queue_id()) else {
            return false;
        };
        match self.read_recipients(msg, &file) {
            Ok(recipients) => {
                self.resolve_and_assign(msg, &file, recipients).await;
                true
            }
            Err(_) => false,
        }
    }

    /// The core wants more recipients of `msg` in memory (nqmgr's refill,
    /// oqmgr's read-ahead). A failure leaves the message as it is; its
    /// completion will try again and move a damaged file to corrupt.
    pub(super) async fn refill(&mut self, msg: MessageId) {
        if !self.read_more(msg).await {
            self.core.assigned(msg);
        }
    }

    /// Finds each recipient's route as the core says (the resolver, a
    /// redirect or the content filter) and hands the batch to the core
    /// (`qmgr_message_resolve` + `qmgr_message_assign`); then carries out
    /// what it hands back: double-bounce discards and deferrals.
    async fn resolve_and_assign(
        &mut self,
        msg: MessageId,
        file: &QueueFile,
        mut recipients: Vec<Recipient>,
    ) {
        recipients.sort_by(|a, b| resolve_order(a.address(), b.address()));
        if crate::log::verbose() {
            tracing::debug!("start sorted recipient list");
            for r in &recipients {
                tracing::debug!(
                    "qmgr_message_sort: {}",
                    String::from_utf8_lossy(r.address())
                );
            }
            tracing::debug!("end sorted recipient list");
        }
        let (sender, tflags, filter, redirect) = {
            let env = &self.messages[msg].env;
            (
                Box::<[u8]>::from(env.texts.or_empty(Text::Sender)),
                env.tflags,
                env.texts.get(Text::Filter).map(Box::<[u8]>::from),
                env.texts.get(Text::Redirect).map(Box::<[u8]>::from),
            )
        };
        let mut batch = Vec::with_capacity(recipients.len());
        for (i, mut rcpt) in recipients.into_iter().enumerate() {
            let lookup = self.core.lookup(
                redirect.as_deref(),
                filter.as_deref(),
                tflags,
                i,
                rcpt.address(),
            );
            let res = match lookup {
                Lookup::Skip => continue,
                Lookup::Route { transport, nexthop } => Resolution {
                    transport: transport.into(),
                    nexthop: nexthop.into(),
                    address: rcpt.address().to_vec(),
                    flags: 0,
                },
                Lookup::Redirect { to, verify } => {
                    let canonical = self.resolver.rewrite("local", to).await;
                    self.resolve(verify, &sender, &canonical).await
                }
                Lookup::Resolve { verify } => self.resolve(verify, &sender, rcpt.address()).await,
            };
            if rcpt.address() != res.address.as_slice() && !rcpt.set_address(&res.address) {
                tracing::warn!("recipient address too long from the resolver");
            }
            batch.push((res, rcpt));
        }
        let assigned = self.core.assign_batch(msg, batch, Instant::now());
        // A transport's bad parameter ends the process before anything else.
        self.log_events();
        for rcpt in &assigned.discard {
            self.discard_double_bounce(msg, file, rcpt).await;
        }
        for (rcpt, reason) in &assigned.defer {
            self.defer_recipient(msg, rcpt, reason).await;
        }
    }

    /// One resolver lookup (`qmgr_resolve_one`'s I/O); `verify` selects the
    /// address verification tables.
    async fn resolve(&mut self, verify: bool, sender: &[u8], address: &[u8]) -> Resolution {
        let class = if verify {
            Class::Verify
        } else {
            Class::Regular
        };
        let r = self.resolver.resolve(class, sender, address).await;
        Resolution {
            transport: r.transport,
            nexthop: r.nexthop,
            address: r.recipient,
            flags: r.flags,
        }
    }
}

/// Seconds since the epoch of a file time.
fn system_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
