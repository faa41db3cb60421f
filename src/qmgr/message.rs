//! Messages (`qmgr/qmgr_message.c`): admission to the active queue, how many
//! recipients each read may take, how each recipient's route is found
//! (redirect, content filter or the resolver), qmgr's overrides of that
//! route (null recipient, forced expiry, the double-bounce address,
//! `defer_transports`), and the assignment of recipients to queues and
//! entries (`qmgr_message_resolve`, `qmgr_message_assign`).

use super::active::Stage;
use super::scan::ScanFlags;
use super::{Core, EntryId, JobId, MessageId, QueueId, Reason, TransportId};
use crate::address;
use crate::proto::{deliver_flag, resolve_flag, service};
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::rc::Rc;
use std::time::Instant;

/// Most recipients read from a queue file at once (nqmgr, `qmgr_message_read`).
const MAX_READ_BATCH: i64 = 5000;

/// A message in the core (`QMGR_MESSAGE`, the scheduling part; the shell
/// keeps the envelope).
#[derive(Debug)]
pub(super) struct Message {
    /// Live entries.
    pub(super) refcount: u32,
    /// Recipients in entries.
    pub(super) rcpt_count: i64,
    pub(super) rcpt_limit: i64,
    pub(super) rcpt_unread: i64,
    /// More recipients to read from the file (`rcpt_offset != 0`).
    pub(super) more: bool,
    /// Never read yet (the first read has its own budget).
    pub(super) fresh: bool,
    /// Seconds when the message entered the core (`queued_time`).
    pub(super) queued_time: u64,
    /// Seconds of the last read (`refill_time`).
    pub(super) refill_time: u64,
    /// Its jobs, one per transport it has mail for: one or two in
    /// nearly every message, kept in place (no allocation).
    pub(super) jobs: SmallVec<[JobId; 2]>,
    pub(super) refill_pending: bool,
    /// One recipient per delivery (VERP).
    pub(super) single_rcpt: bool,
    /// oqmgr: the entry the previous recipient went into.
    pub(super) last_entry: Option<EntryId>,
    /// How the message was fed (`message->qflags`).
    pub(super) qflags: ScanFlags,
    /// Something must be retried (`message->flags != 0`).
    pub(super) retry: bool,
    /// What the queue file says, for completion.
    pub(super) facts: MessageFacts,
    /// Where completion stands.
    pub(super) stage: Stage,
    /// An address verification probe, counted in `Core::probes`.
    pub(super) probe: bool,
}

/// What the shell read from a message's queue file: the envelope facts
/// completion needs, and the recipient counts after the latest batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFacts {
    /// Recipients not yet read (the `C` count minus those seen).
    pub rcpt_unread: i64,
    /// Another batch follows (`rcpt_offset != 0`).
    pub more: bool,
    /// The message has VERP delimiters: one recipient per delivery, and
    /// per-recipient notices unless `disable_verp_bounces`.
    pub verp: bool,
    /// A `>` (redirect) record: only the first recipient goes anywhere, and
    /// no more recipients are read.
    pub redirect: bool,
    /// `create_time`, seconds since the epoch (0 = unknown).
    pub create_time: i64,
    /// The sender is `<>`.
    pub null_sender: bool,
    /// The `trace_flags` attribute (`DEL_REQ_FLAG_*` trace bits).
    pub tflags: u32,
    /// Some recipient asked for NOTIFY=SUCCESS (`QMGR_READ_FLAG_NOTIFY_SUCCESS`).
    pub notify_success: bool,
    /// The `trace_flags` record may be killed after a trace flush
    /// (`tflags_offset != 0`).
    pub trace_record: bool,
    /// The `W` time: 0 none, > 0 when to warn, < 0 sent (seconds).
    pub warn_time: i64,
    /// A `W` record to mark as sent (`warn_offset != 0`).
    pub warn_record: bool,
}

/// How to find one recipient's route (`qmgr_message_resolve`, first part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Not delivered at all: a redirect keeps only the first recipient.
    Skip,
    /// Canonicalize this redirect address (`rewrite_clnt_internal`), then
    /// resolve it (`verify`: with the address verification tables); it
    /// replaces the recipient.
    Redirect { to: &'a [u8], verify: bool },
    /// The content filter's route: no resolver lookup.
    Route { transport: String, nexthop: String },
    /// Ask the resolver; `verify` selects the address verification tables.
    Resolve { verify: bool },
}

/// A recipient's route as the resolver (or the content filter) gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The transport's name (shared with the resolver's cached answer).
    pub transport: Rc<str>,
    /// The next hop (shared likewise).
    pub nexthop: Rc<str>,
    /// The resolved recipient address (it replaces the original).
    pub address: Vec<u8>,
    /// Resolver flags (`RESOLVE_FLAG_*`, `RESOLVE_CLASS_*`).
    pub flags: u32,
}

/// The order recipients are resolved in (`qmgr_message_sort_compare`): by
/// domain (case-insensitive), then address; addresses without a domain
/// last. Neighbours then share resolver cache hits and entries.
pub fn resolve_order(a: &[u8], b: &[u8]) -> Ordering {
    let dom = |x: &[u8]| address::split(x).1.map(<[u8]>::to_ascii_lowercase);
    match (dom(a), dom(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

impl<R> Core<R> {
    /// Admission (`qmgr_loop`): the active queue has room for another
    /// message: fewer than `qmgr_message_active_limit` messages, and, for
    /// oqmgr, fewer in-core recipients than `qmgr_message_recipient_limit`.
    pub fn has_room(&self) -> bool {
        (self.messages.len() as i64) < self.settings.active_limit.max(1)
            && (self.nqmgr() || self.recipient_count < self.settings.recipient_limit)
    }

    /// A new message enters the core (`qmgr_message_create`), fed with scan
    /// and file-mode flags `qflags`.
    pub fn message_new(&mut self, qflags: ScanFlags, now: Instant) -> MessageId {
        let secs = self.secs(now);
        self.messages.insert(Message {
            refcount: 0,
            rcpt_count: 0,
            rcpt_limit: self.settings.recipient_minimum,
            rcpt_unread: 0,
            more: false,
            fresh: true,
            queued_time: secs,
            refill_time: 0,
            jobs: SmallVec::new(),
            refill_pending: false,
            single_rcpt: false,
            last_entry: None,
            qflags,
            retry: false,
            facts: MessageFacts::default(),
            stage: Stage::Open,
            probe: false,
        })
    }

    /// How many recipients the next read of `msg` may take
    /// (`qmgr_message_read`; oqmgr: `qmgr_message_recipient_limit` times the
    /// fudge factor).
    pub fn read_limit(&self, msg: MessageId) -> usize {
        let m = &self.messages[msg];
        let limit = if !self.nqmgr() {
            self.settings.recipient_limit * self.settings.fudge_factor / 100
        } else if m.fresh {
            (self.settings.recipient_limit - self.recipient_count)
                .max(m.rcpt_limit)
                .min(MAX_READ_BATCH)
        } else {
            (m.rcpt_limit - m.rcpt_count).min(MAX_READ_BATCH)
        };
        limit.max(1) as usize
    }

    /// A batch of `msg` was read; `facts` says what the file holds and how
    /// many recipients remain. A redirect stops further reading, as
    /// `qmgr_message_resolve` clears `rcpt_offset`.
    pub fn batch_read(&mut self, msg: MessageId, facts: MessageFacts, now: Instant) {
        let secs = self.secs(now);
        let m = &mut self.messages[msg];
        m.rcpt_unread = if facts.redirect {
            0
        } else {
            facts.rcpt_unread.max(0)
        };
        m.more = facts.more && !facts.redirect;
        m.fresh = false;
        m.refill_time = secs;
        m.single_rcpt = facts.verp;
        if !m.probe && facts.tflags & deliver_flag::MTA_VRFY != 0 {
            m.probe = true;
            self.probes += 1;
        }
        m.facts = facts;
    }

    /// True when `msg` is force-expired: the shell must look at its defer
    /// log before assigning anything (`qmgr_message_alloc`).
    pub fn wants_defer_log(&self, msg: MessageId) -> bool {
        self.messages[msg].qflags.contains(ScanFlags::FORCE_EXPIRE)
    }

    /// A force-expired message with a non-empty defer log: no deliveries
    /// are assigned; completion returns it to the sender from that log
    /// (`qmgr_message_alloc`).
    pub fn expire_from_defer_log(&mut self, msg: MessageId) {
        self.messages[msg].retry = true;
        self.assigned(msg);
    }

    /// The first read of `msg` failed (a damaged file, which the shell
    /// saves as corrupt): it leaves the core (`qmgr_message_free`).
    pub fn message_rejected(&mut self, msg: MessageId) {
        self.message_free(msg);
    }

    /// Something of `msg` must be retried (`message->flags |= status`): the
    /// shell deferred a recipient itself, or a notice failed.
    pub fn must_retry(&mut self, msg: MessageId) {
        if let Some(m) = self.messages.get_mut(msg) {
            m.retry = true;
        }
    }

    /// Number of messages in the core (`qmgr_message_count`).
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Number of recipients in the core (`qmgr_recipient_count`).
    pub fn recipient_count(&self) -> i64 {
        self.recipient_count
    }

    /// Number of entries not yet finished for `msg`.
    pub fn refcount(&self, msg: MessageId) -> u32 {
        self.messages.get(msg).map_or(0, |m| m.refcount)
    }

    /// How to find the route of recipient number `index` (0-based, in
    /// [`resolve_order`]) of a batch (`qmgr_message_resolve`): a redirect
    /// takes the first recipient only; a content filter (`L` record,
    /// `transport:nexthop`) routes everything except trace-only probes;
    /// else the resolver, with the verify tables for MTA probes.
    pub fn lookup<'a>(
        &self,
        redirect: Option<&'a [u8]>,
        filter: Option<&'a [u8]>,
        tflags: u32,
        index: usize,
        address: &[u8],
    ) -> Lookup<'a> {
        let verify = tflags & deliver_flag::MTA_VRFY != 0;
        if let Some(to) = redirect {
            return if index == 0 {
                Lookup::Redirect { to, verify }
            } else {
                Lookup::Skip
            };
        }
        match filter {
            Some(f) if tflags & deliver_flag::TRACE_ONLY_MASK == 0 => {
                let (transport, nexthop) = self.filter_route(f, address);
                Lookup::Route { transport, nexthop }
            }
            _ => Lookup::Resolve { verify },
        }
    }

    /// The route a content filter (`transport:nexthop`) gives a recipient:
    /// without a nexthop, `default_filter_nexthop`, else the recipient's
    /// domain, else `myhostname`.
    fn filter_route(&self, filter: &[u8], address: &[u8]) -> (String, String) {
        let (transport, nexthop) = match filter.iter().position(|&c| c == b':') {
            Some(colon) => (&filter[..colon], &filter[colon + 1..]),
            None => (filter, &b""[..]),
        };
        let nexthop = if !nexthop.is_empty() {
            String::from_utf8_lossy(nexthop).into_owned()
        } else if !self.settings.default_filter_nexthop.is_empty() {
            self.settings.default_filter_nexthop.clone()
        } else {
            match address::domain(address) {
                Some(d) => String::from_utf8_lossy(d).into_owned(),
                None => self.settings.myhostname.clone(),
            }
        };
        (String::from_utf8_lossy(transport).into_owned(), nexthop)
    }

    /// qmgr's own overrides of a recipient's route (`qmgr_resolve_one` and
    /// `qmgr_message_resolve`): resolver failures go to `retry`, bad
    /// syntax and null recipients to `error`, forced expiry to `retry`, the
    /// local double-bounce address is discarded, and `defer_transports` go
    /// to `retry` unless the message is flushed, and so do address
    /// verification probes beyond `address_verify_pending_request_limit`
    /// in core. `None` means discard.
    fn route_overrides(&self, msg: MessageId, res: &mut Resolution) -> Option<()> {
        let redirect = |res: &mut Resolution, transport: &str, nexthop: &str| {
            res.transport = transport.into();
            res.nexthop = nexthop.into();
            res.flags = 0;
        };
        let qflags = self.messages[msg].qflags;
        if res.flags & resolve_flag::FAIL != 0 {
            redirect(res, service::RETRY, "4.3.0 address resolver failure");
        } else if res.flags & resolve_flag::ERROR != 0 {
            redirect(res, service::ERROR, "5.1.3 bad address syntax");
        }
        if res.address.is_empty() {
            redirect(res, service::ERROR, "5.1.3 null recipient address");
        }
        if qflags.contains(ScanFlags::FORCE_EXPIRE) {
            redirect(
                res,
                service::RETRY,
                "4.7.0 message is administratively expired",
            );
        }
        if res.flags & resolve_flag::CLASS_LOCAL != 0
            && address::local_part(&res.address)
                .eq_ignore_ascii_case(self.settings.double_bounce_sender.as_bytes())
        {
            return None;
        }
        if !qflags.contains(ScanFlags::FLUSH_DFXP)
            && self
                .settings
                .defer_transports
                .iter()
                .any(|d| **d == *res.transport)
        {
            redirect(res, service::RETRY, "4.3.2 deferred transport");
        }
        if self.messages[msg].probe && self.probes > self.settings.probe_limit {
            redirect(
                res,
                service::RETRY,
                "4.3.2 Too many address verification requests",
            );
        }
        Some(())
    }

    /// Assigns a batch of recipients of `msg` with their routes, then calls
    /// [`Core::assigned`] (`qmgr_message_resolve` + `qmgr_message_assign`):
    /// qmgr's overrides first, then grouped by destination so that they
    /// share entries, then each to a queue. A dead transport or queue sends
    /// a recipient to the `retry` transport instead; if that is dead too,
    /// the recipient is handed back with the reason, for the shell to defer.
    /// Returns the recipients to discard and those to defer.
    pub fn assign_batch(
        &mut self,
        msg: MessageId,
        batch: Vec<(Resolution, R)>,
        now: Instant,
    ) -> Assigned<R> {
        let mut out = Assigned {
            discard: Vec::new(),
            defer: Vec::new(),
        };
        let mut routed = Vec::with_capacity(batch.len());
        for (mut res, rcpt) in batch {
            match self.route_overrides(msg, &mut res) {
                Some(()) => routed.push((res, rcpt)),
                None => out.discard.push(rcpt),
            }
        }
        // Group recipients of one destination so that they share entries.
        routed.sort_by(|a, b| (&a.0.transport, &a.0.nexthop).cmp(&(&b.0.transport, &b.0.nexthop)));
        // How many recipients, from each one on, go to the same
        // destination: an entry takes room for all of them at once.
        let mut left = vec![1usize; routed.len()];
        for i in (1..routed.len()).rev() {
            let (a, b) = (&routed[i - 1].0, &routed[i].0);
            if a.transport == b.transport && a.nexthop == b.nexthop {
                left[i - 1] = left[i] + 1;
            }
        }
        for ((res, rcpt), left) in routed.into_iter().zip(left) {
            if let Err(e) = self.place(msg, &res, rcpt, left, now) {
                out.defer.push(e);
            }
        }
        self.assigned(msg);
        out
    }

    /// Binds a routed recipient to a queue (`qmgr_message_resolve` steps
    /// 9-16): revive first for flushed messages (the g+r file bit); a dead
    /// transport or queue sends it to `retry`. `left`: recipients of this
    /// batch for the same destination, this one included.
    fn place(
        &mut self,
        msg: MessageId,
        res: &Resolution,
        rcpt: R,
        left: usize,
        now: Instant,
    ) -> Result<(), (R, Reason)> {
        let flush_each = self.messages[msg].qflags.contains(ScanFlags::FLUSH_EACH);
        let cached = self.last_assign.as_ref().and_then(|(lt, nexthop, lq)| {
            let queue = self.queues.get(*lq)?;
            let tr = &self.transports[*lt];
            (!flush_each
                && *tr.name == *res.transport
                && tr.dead.is_none()
                && **nexthop == *res.nexthop
                && queue.transport == *lt
                && *queue.nexthop == *res.nexthop
                && queue.window > 0)
                .then_some(*lq)
        });
        let q = match cached {
            Some(q) => q,
            None => {
                let mut t = self.transport_index(&res.transport);
                if flush_each && self.transports[t].dead.is_some() {
                    self.revive_transport(t);
                }
                let mut nexthop = res.nexthop.clone();
                if let Some(reason) = self.transports[t].dead.clone() {
                    let r = self.transport_index(service::RETRY);
                    if self.transports[r].dead.is_some() {
                        return Err((rcpt, reason));
                    }
                    t = r;
                    nexthop = reason.nexthop().into();
                }
                let name = self.queue_name(t, &nexthop, &res.address);
                let mut q = self.find_or_create_queue(t, &name, &nexthop);
                if flush_each && self.queues[q].window == 0 {
                    self.unthrottle_queue(q);
                }
                if let Some(reason) = self.queues[q].dead.clone() {
                    match self.retry_queue(&reason) {
                        Some(rq) => q = rq,
                        None => return Err((rcpt, reason)),
                    }
                }
                // Per-recipient queue names depend on the address: not cached.
                let own = self.queues[q].transport == t && *self.queues[q].nexthop == *res.nexthop;
                self.last_assign =
                    (own && !self.per_recipient_queues(t)).then(|| (t, res.nexthop.clone(), q));
                q
            }
        };
        self.add_recipient(msg, q, rcpt, left, now);
        Ok(())
    }

    fn per_recipient_queues(&self, t: TransportId) -> bool {
        !self.is_error_transport(t) && self.transports[t].params.recipient_limit == 1
    }

    /// The queue name for a recipient (`qmgr_message_resolve`): the nexthop,
    /// or `localpart@nexthop` when the transport delivers one recipient per
    /// request; always lower-cased.
    fn queue_name(&self, t: TransportId, nexthop: &str, address: &[u8]) -> String {
        let mut name = if self.per_recipient_queues(t) {
            let mut local = String::from_utf8_lossy(address::local_part(address)).into_owned();
            let delimiters = &self.settings.recipient_delimiter;
            if !delimiters.is_empty() {
                if let Some(pos) = local.find(|c| delimiters.contains(c)) {
                    if pos > 0 {
                        local.truncate(pos);
                    }
                }
            }
            format!("{local}@{nexthop}")
        } else {
            nexthop.to_string()
        };
        name.make_ascii_lowercase();
        name
    }

    /// Adds `rcpt` to the open entry of `msg` for queue `q`, or to a new
    /// one (`qmgr_entry_create`). An entry that is full takes room for
    /// the `left` recipients still to come (up to the transport's
    /// recipient limit), not for a doubling: an in-core recipient costs
    /// its own size, not up to twice it.
    fn add_recipient(&mut self, msg: MessageId, q: QueueId, rcpt: R, left: usize, now: Instant) {
        let limit = self.transports[self.queues[q].transport]
            .params
            .recipient_limit;
        let single = self.messages[msg].single_rcpt;
        let limit_ok = |n: usize| limit <= 0 || (n as i64) < limit;
        let entry = if self.nqmgr() {
            let t = self.queues[q].transport;
            let job = self.job_obtain(msg, t);
            let peer = self.peer_obtain(job, q);
            match self.peers[peer].entries.last() {
                Some(e) if !single && limit_ok(self.entries[e].recipients.len()) => e,
                _ => self.entry_create(msg, q, Some(peer), now),
            }
        } else {
            let last = self.messages[msg].last_entry;
            match last.and_then(|e| self.entries.get(e).map(|x| (e, x))) {
                Some((e, x))
                    if !single
                        && x.queue == q
                        && x.msg == msg
                        && !x.busy
                        && limit_ok(x.recipients.len()) =>
                {
                    e
                }
                _ => self.entry_create(msg, q, None, now),
            }
        };
        let recipients = &mut self.entries[entry].recipients;
        if recipients.len() == recipients.capacity() {
            let room = if limit > 0 {
                left.min((limit as usize).saturating_sub(recipients.len()).max(1))
            } else {
                left
            };
            recipients.reserve_exact(room);
        }
        recipients.push(rcpt);
        if let Some(p) = self.entries[entry].peer {
            let job = self.peers[p].job;
            self.jobs[job].rcpt_count += 1;
        } else {
            self.messages[msg].last_entry = Some(entry);
        }
        self.messages[msg].rcpt_count += 1;
        self.recipient_count += 1;
    }

    /// All recipients of this read of `msg` have been assigned
    /// (`qmgr_message_assign`'s epilogue, `qmgr_message_move_limits`); if
    /// none produced an entry, completion starts.
    pub fn assigned(&mut self, msg: MessageId) {
        let m = &mut self.messages[msg];
        m.refill_pending = false;
        m.last_entry = None;
        if self.nqmgr() {
            for job in self.messages[msg].jobs.clone() {
                let t = self.jobs[job].transport;
                if self.jobs[job].selected_entries < self.jobs[job].read_entries
                    && self.jobs[job].blocker_tag != self.transports[t].blocker_tag
                {
                    self.transports[t].candidate_cache_current = None;
                }
            }
            if !self.messages[msg].more {
                for job in self.messages[msg].jobs.clone() {
                    self.job_move_limits(job);
                }
            }
        }
        self.start_completion_if_done(msg);
    }

    /// The message leaves the core (`qmgr_message_free`): its jobs go, and
    /// their recipient slots return to the transports.
    pub(super) fn message_free(&mut self, msg: MessageId) {
        let Some(m) = self.messages.get(msg) else {
            return;
        };
        debug_assert_eq!(m.refcount, 0);
        for job in m.jobs.clone() {
            self.job_free(job);
        }
        if self.messages.remove(msg).probe {
            self.probes -= 1;
        }
    }
}

/// What [`Core::assign_batch`] hands back to the shell.
#[derive(Debug, PartialEq, Eq)]
pub struct Assigned<R> {
    /// Local mail to the double-bounce address: the shell "delivers" it
    /// itself (`sent` with "2.0.0 undeliverable postmaster notification
    /// discarded", then marks it done in the file).
    pub discard: Vec<R>,
    /// Recipients nothing can take now: defer each with its reason, then
    /// [`Core::must_retry`].
    pub defer: Vec<(R, Reason)>,
}
