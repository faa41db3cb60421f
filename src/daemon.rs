//! The event loop that joins the shell and the core (`qmgr/qmgr.c`,
//! `qmgr/qmgr_active.c`, `qmgr/qmgr_message.c`): triggers start scans;
//! each loop round carries out the core's actions, feeds at most one message
//! from the incoming or deferred queue, and keeps the flow-control pipe
//! filled; delivery agents, bounce/defer/trace requests run as tasks on the
//! same thread and report back through one channel.

use crate::config::{MainCf, Params};
use crate::ipc::attr::{read_announcement, AttrList};
use crate::ipc::bounce::{self, Services, Stats};
use crate::ipc::deliver::{self, encode_request, parse_reply, Request};
use crate::ipc::rewrite::{flag as rflag, Class, Resolver};
use crate::ipc::{with_timeout, Dsn, Peer};
use crate::lifecycle::{self, Lifetimes};
use crate::master::{Flow, TriggerBytes, Watchdog};
use crate::qfile::{self, del_flag, Envelope, ReadOptions, Recipient};
use crate::sched::{
    Action, Assignment, EntryId, MessageId, Outcome, Reason, Scheduler, Settings, Strategy,
};
use crate::spool::{self, ScanFlags, Scanner, Spool};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Guard on each step of a bounce/defer/trace request (`abounce.c`).
const ABOUNCE_TIMEOUT: Duration = Duration::from_secs(1000);
/// Delay before retrying a file another process still delivers, seconds.
const LOCKED_RETRY: i64 = 60;

const INCOMING_IDX: usize = 0;
const DEFERRED_IDX: usize = 1;

/// What tasks report to the event loop.
enum Event {
    /// An agent announced itself and waits for a request.
    AgentReady {
        transport: String,
        reply: oneshot::Sender<Option<(EntryId, Vec<u8>)>>,
    },
    /// Connecting to an agent failed (already logged).
    AgentFailed { transport: String },
    /// Writing the request failed (already logged).
    WriteFailed { entry: EntryId },
    /// The agent replied (or did not).
    DeliveryDone { entry: EntryId, outcome: Outcome },
    /// A completion step's bounce/trace/defer request finished with `status`.
    Completion {
        msg: MessageId,
        step: Step,
        status: i32,
    },
}

/// Asynchronous steps of message completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    BounceFlushed,
    TraceFlushed,
    DeferFlushed,
    Warned,
}

/// A message in memory (`QMGR_MESSAGE`).
struct InCore {
    queue_id: String,
    env: Envelope,
    qflags: ScanFlags,
    /// Non-zero: something must be retried (`message->flags`).
    flags: i32,
    /// When the message entered memory: (seconds, microseconds).
    active_arrival: (i64, i64),
}

/// The running queue manager.
pub struct Daemon {
    params: Params,
    spool: Spool,
    core: Scheduler<Recipient>,
    messages: HashMap<MessageId, InCore>,
    scans: [Scanner; 2],
    first_scan: usize,
    resolver: Resolver,
    services: Services,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    lifetimes: Lifetimes,
    verp_filter: Vec<u8>,
}

impl Daemon {
    /// Builds the daemon from parsed parameters; `cf` serves per-transport
    /// lookups later. Must run inside the queue directory.
    pub fn new(params: Params, cf: MainCf, strategy: Strategy) -> Daemon {
        let cf = Rc::new(RefCell::new(cf));
        let verp_filter = cf
            .borrow_mut()
            .get_str("verp_delimiter_filter", "-=+", 1, 0)
            .unwrap_or_else(|_| "-=+".into());
        let p2 = params.clone();
        let lookup_cf = cf.clone();
        let core = Scheduler::new(
            Settings {
                strategy,
                minimal_backoff_time: params.minimal_backoff_time as u64,
                transport_retry_time: params.transport_retry_time as u64,
                feedback_debug: params.destination_concurrency_feedback_debug,
                recipient_delimiter: params.recipient_delimiter.clone(),
                active_limit: params.qmgr_message_active_limit,
                recipient_limit: params.qmgr_message_recipient_limit,
                recipient_minimum: params.qmgr_message_recipient_minimum,
                fudge_factor: params.qmgr_fudge_factor,
                helpful_warnings: params.helpful_warnings,
                clog_warn_time: params.qmgr_clog_warn_time as u64,
            },
            Box::new(move |name| {
                let (tp, warnings) = p2.transport(&mut lookup_cf.borrow_mut(), name);
                for w in warnings {
                    tracing::warn!("{w}");
                }
                tp
            }),
            Instant::now(),
        );
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let ipc_timeout = Duration::from_secs(params.ipc_timeout as u64);
        Daemon {
            spool: Spool::new(&params.hash_queue_names, params.hash_queue_depth),
            core,
            messages: HashMap::new(),
            scans: [Scanner::new(spool::INCOMING), Scanner::new(spool::DEFERRED)],
            first_scan: INCOMING_IDX,
            resolver: Resolver::new(
                &params.rewrite_service_name,
                ipc_timeout,
                Duration::from_secs(params.ipc_idle as u64),
                Duration::from_secs(params.ipc_ttl as u64),
            ),
            services: Services {
                defer: params.defer_service_name.clone(),
                trace: params.trace_service_name.clone(),
                timeout: ipc_timeout,
                max_dig: params.delay_logging_resolution_limit as u32,
            },
            events_tx,
            events_rx,
            lifetimes: Lifetimes {
                maximal_queue_lifetime: params.maximal_queue_lifetime,
                bounce_queue_lifetime: params.bounce_queue_lifetime,
                minimal_backoff_time: params.minimal_backoff_time,
                maximal_backoff_time: params.maximal_backoff_time,
            },
            verp_filter: verp_filter.into_bytes(),
            params,
        }
    }

    /// Startup (`qmgr_post_init`): move `active` back to `incoming`, then
    /// request an incoming and a deferred scan.
    ///
    /// Errors: Postfix's fatal text for a failed move other than a vanished file.
    pub fn start(&mut self) -> Result<(), String> {
        self.spool.recover_active(crate::now_secs())?;
        self.scans[INCOMING_IDX].request(ScanFlags::START);
        self.scans[DEFERRED_IDX].request(ScanFlags::START);
        Ok(())
    }

    /// Handles one trigger (`qmgr_trigger_event`): W and I start an incoming
    /// scan, D a deferred scan, F revives dead transports and destinations
    /// and ignores `defer_transports`, A ignores time stamps.
    pub fn trigger(&mut self, bytes: &[u8]) {
        let (mut incoming, mut deferred) = (ScanFlags::default(), ScanFlags::default());
        for &b in bytes {
            match b {
                b'W' | b'I' => incoming |= ScanFlags::START,
                b'D' => deferred |= ScanFlags::START,
                b'F' => {
                    incoming |= ScanFlags::FLUSH_ONCE | ScanFlags::FLUSH_DFXP;
                    deferred |= ScanFlags::FLUSH_ONCE | ScanFlags::FLUSH_DFXP;
                }
                b'A' => {
                    incoming |= ScanFlags::ALL;
                    deferred |= ScanFlags::ALL;
                }
                _ => tracing::debug!("request ignored"),
            }
        }
        for (idx, f) in [(INCOMING_IDX, incoming), (DEFERRED_IDX, deferred)] {
            if !f.is_empty() {
                if f.contains(ScanFlags::FLUSH_ONCE) {
                    self.core.enable_all();
                }
                self.scans[idx].request(f);
            }
        }
    }

    /// Runs the event loop until the master goes away.
    pub async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<TriggerBytes>,
        watchdog: Watchdog,
    ) {
        let master_gone = crate::master::master_gone();
        tokio::pin!(master_gone);
        let mut deferred_timer = tokio::time::interval(Duration::from_secs(
            self.params.queue_run_delay.max(1) as u64,
        ));
        deferred_timer.tick().await; // the first tick is immediate; startup already requested a scan
        let heartbeat = Duration::from_secs((self.params.qmgr_daemon_timeout as u64 / 3).max(1));
        loop {
            watchdog.pet();
            while let Ok(ev) = self.events_rx.try_recv() {
                self.handle_event(ev).await;
            }
            while let Ok(t) = triggers.try_recv() {
                self.trigger(&t.0);
            }
            self.core.handle_timeout(Instant::now());
            self.carry_out_actions().await;
            let (produced, fed_incoming) = self.feed_one().await;
            self.carry_out_actions().await;
            if self.params.in_flow_delay > 0 {
                Flow::regulate(
                    self.params.default_process_limit as usize,
                    fed_incoming,
                    self.scans[INCOMING_IDX].in_progress(),
                );
            }
            if produced {
                tokio::task::yield_now().await;
                continue;
            }
            let core_wake = self.core.poll_timeout();
            let idle_wake = self.resolver.idle_deadline();
            let sleep_until = [core_wake, idle_wake].into_iter().flatten().min();
            let sleep = async {
                match sleep_until {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => tokio::time::sleep(heartbeat).await,
                }
            };
            tokio::select! {
                ev = self.events_rx.recv() => {
                    if let Some(ev) = ev { self.handle_event(ev).await; }
                }
                t = triggers.recv() => {
                    match t {
                        Some(t) => self.trigger(&t.0),
                        None => std::future::pending::<()>().await,
                    }
                }
                _ = deferred_timer.tick() => {
                    self.scans[DEFERRED_IDX].request(ScanFlags::START);
                }
                _ = sleep => {
                    self.resolver.close_if_idle(Instant::now());
                }
                _ = &mut master_gone => {
                    tracing::debug!("master went away: exiting");
                    return;
                }
            }
        }
    }

    /// Carries out everything the core asks for.
    async fn carry_out_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect {
                    transport,
                    rate_delay,
                } => self.spawn_agent(transport, rate_delay),
                Action::MessageDone { msg } => self.message_done(msg).await,
                Action::Refill { msg } => self.refill(msg).await,
                Action::Defer {
                    msg,
                    recipients,
                    reason,
                } => {
                    let dsn = Dsn::simple(&reason.status, &reason.text);
                    for rcpt in &recipients {
                        self.defer_recipient(msg, rcpt, &dsn).await;
                    }
                }
            }
        }
    }

    /// qmgr defers one recipient itself (`qmgr_defer_recipient`).
    async fn defer_recipient(&mut self, msg: MessageId, rcpt: &Recipient, dsn: &Dsn) {
        let Some(m) = self.messages.get(&msg) else {
            return;
        };
        let stats = Stats {
            incoming: m.env.arrival,
            active: m.active_arrival,
        };
        let status = bounce::defer_append(
            &self.services,
            m.env.tflags,
            &m.queue_id,
            &stats,
            rcpt,
            "none",
            dsn,
        )
        .await;
        if let Some(m) = self.messages.get_mut(&msg) {
            m.flags |= status;
        }
    }

    fn spawn_agent(&self, transport: String, rate_delay: Duration) {
        let tx = self.events_tx.clone();
        let timeouts = AgentTimeouts {
            daemon: Duration::from_secs(self.params.daemon_timeout as u64),
            ipc: Duration::from_secs(self.params.ipc_timeout as u64),
            rate_delay,
        };
        tokio::task::spawn_local(agent_session(transport, tx, timeouts));
    }

    async fn handle_event(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::AgentReady { transport, reply } => {
                let Some(e) = self.core.agent_ready(&transport, now) else {
                    let _ = reply.send(None);
                    return;
                };
                let entry = self.core.entry(e);
                let m = self
                    .messages
                    .get(&entry.msg)
                    .expect("message of a live entry");
                let request = encode_request(&Request {
                    queue_id: &m.queue_id,
                    env: &m.env,
                    nexthop: self.core.nexthop(entry.queue).as_bytes(),
                    queue_dflags: self.core.queue_dflags(entry.queue),
                    recipients: &entry.recipients,
                    active_arrival: m.active_arrival,
                    smtputf8_enable: self.params.smtputf8_enable,
                });
                if reply.send(Some((e, request))).is_err() {
                    self.delivery_done(e, Outcome::Crashed, now);
                }
            }
            Event::AgentFailed { transport } => {
                self.core.agent_failed(
                    &transport,
                    Reason::new("4.3.0", "mail transport unavailable"),
                    now,
                );
            }
            Event::WriteFailed { entry } => {
                self.core.write_failed(
                    entry,
                    Reason::new("4.3.0", "mail transport unavailable"),
                    now,
                );
            }
            Event::DeliveryDone { entry, outcome } => self.delivery_done(entry, outcome, now),
            Event::Completion { msg, step, status } => {
                self.completion_step(msg, step, status).await
            }
        }
    }

    fn delivery_done(&mut self, e: EntryId, outcome: Outcome, now: Instant) {
        let (msg, _recipients, retry) = self.core.delivery_done(e, outcome, now);
        if retry {
            if let Some(m) = self.messages.get_mut(&msg) {
                m.flags |= 1;
            }
        }
    }

    /// One feed attempt (`qmgr_loop`): try the scanners, starting with the
    /// one after the last used, while the active queue has room. Returns
    /// whether any scanner produced a name, and whether a message was fed
    /// from incoming.
    async fn feed_one(&mut self) -> (bool, bool) {
        let limit = self.params.qmgr_message_active_limit as usize;
        let mut produced = false;
        let mut fed_incoming = false;
        let mut last = (self.first_scan + 1) % 2;
        for i in 0..2 {
            if !self.has_room(limit) {
                break;
            }
            let idx = (self.first_scan + i) % 2;
            last = idx;
            if let Some(id) = self.scans[idx].next_id() {
                produced = true;
                if self.feed(idx, &id).await {
                    fed_incoming = idx == INCOMING_IDX;
                    break;
                }
            }
        }
        if self.has_room(limit) {
            self.first_scan = (last + 1) % 2;
        } else {
            self.first_scan = INCOMING_IDX;
        }
        (produced, fed_incoming)
    }

    /// Admission: the message count is below `qmgr_message_active_limit`
    /// (and, for oqmgr, the in-core recipients below their limit).
    fn has_room(&self, limit: usize) -> bool {
        self.messages.len() < limit && self.core.admits_more()
    }

    /// Moves one queue file into `active` and reads it into memory
    /// (`qmgr_active_feed`). Returns true if the message was taken in.
    async fn feed(&mut self, scan_idx: usize, id: &str) -> bool {
        let queue = self.scans[scan_idx].queue();
        let Some(meta) = self.spool.open_ok(queue, id) else {
            return false;
        };
        let scan_flags = self.scans[scan_idx].flags();
        if !scan_flags.contains(ScanFlags::ALL)
            && meta
                .modified()
                .is_ok_and(|m| system_secs(m) > crate::now_secs() + 1)
        {
            return false;
        }
        if let Err(e) = self.spool.rename(id, queue, spool::ACTIVE) {
            if e.kind() != io::ErrorKind::NotFound {
                crate::log::fatal(&format!(
                    "qmgr_active_feed: {id}: rename from {queue} to {}: {}",
                    spool::ACTIVE,
                    crate::log::errno_text(&e)
                ));
            }
            tracing::warn!(
                "qmgr_active_feed: {id}: rename from {queue} to {}: {}",
                spool::ACTIVE,
                crate::log::errno_text(&e)
            );
            return false;
        }
        let mode = meta.permissions().mode();
        let mut qflags = scan_flags;
        if mode & spool::STAT_UNTHROTTLE != 0 {
            qflags |= ScanFlags::FLUSH_EACH | ScanFlags::FLUSH_DFXP;
        }
        if mode & spool::STAT_EXPIRE != 0 {
            qflags |= ScanFlags::FORCE_EXPIRE;
        }
        let new_mode =
            (mode & spool::STAT_UNTHROTTLE != 0).then_some(mode & !spool::STAT_UNTHROTTLE & 0o7777);
        self.message_alloc(id, qflags, new_mode).await
    }

    /// Opens, locks and reads a message, resolves and assigns its first
    /// batch of recipients (`qmgr_message_alloc`). A damaged file goes to the
    /// corrupt queue; a file another process still delivers goes back to
    /// incoming for a minute.
    async fn message_alloc(&mut self, id: &str, qflags: ScanFlags, new_mode: Option<u32>) -> bool {
        let path = self.spool.path(spool::ACTIVE, id);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    crate::log::fatal(&format!(
                        "open {} {id}: {}",
                        spool::ACTIVE,
                        crate::log::errno_text(&e)
                    ));
                }
                tracing::warn!(
                    "open {} {id}: {}",
                    spool::ACTIVE,
                    crate::log::errno_text(&e)
                );
                self.save_corrupt(id);
                return false;
            }
        };
        // SAFETY: flock on the descriptor of a file we hold open.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } == 0;
        if !locked {
            tracing::info!("{id}: skipped, still being delivered");
            drop(file);
            self.defer_file(id, spool::INCOMING, LOCKED_RETRY);
            return false;
        }
        let msg = self.core.message_new(Instant::now());
        self.messages.insert(
            msg,
            InCore {
                queue_id: id.to_string(),
                env: Envelope::default(),
                qflags,
                flags: 0,
                active_arrival: crate::now_timeval(),
            },
        );
        let Ok(recipients) = self.read_recipients(msg, &file) else {
            drop(file);
            self.save_corrupt(id);
            self.free(msg);
            return false;
        };
        if let Some(mode) = new_mode {
            if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(mode)) {
                crate::log::fatal(&format!(
                    "fchmod {}: {}",
                    path.display(),
                    crate::log::errno_text(&e)
                ));
            }
        }
        let m = self.messages.get_mut(&msg).expect("just inserted");
        if m.qflags.contains(ScanFlags::FORCE_EXPIRE)
            && std::fs::metadata(self.spool.path(spool::DEFER, id)).is_ok_and(|md| md.len() > 0)
        {
            m.flags = 1;
            self.core.assigned(msg);
            return true;
        }
        if let Err(e) = self.spool.remove(spool::DEFER, id) {
            if e.kind() != io::ErrorKind::NotFound {
                crate::log::fatal(&format!(
                    "qmgr_message_alloc: {id}: remove {} {id}: {}",
                    spool::DEFER,
                    crate::log::errno_text(&e)
                ));
            }
        }
        self.resolve_and_assign(msg, &file, recipients).await;
        true
    }

    /// Reads the next batch of `msg`'s recipients from `file`, as many as
    /// the core allows, and tells the core how many remain.
    fn read_recipients(
        &mut self,
        msg: MessageId,
        file: &File,
    ) -> Result<Vec<Recipient>, qfile::Rejected> {
        let limit = self.core.read_limit(msg);
        let len = file.metadata().map(|md| md.len()).unwrap_or(0);
        let m = self.messages.get_mut(&msg).expect("message in core");
        let path = self.spool.path(spool::ACTIVE, &m.queue_id);
        let opts = ReadOptions {
            queue: spool::ACTIVE,
            verp_filter: &self.verp_filter,
            confirm_delay_cleared: self.params.confirm_delay_cleared,
        };
        let mut out = Vec::new();
        qfile::read_batch(
            file,
            len,
            &path.to_string_lossy(),
            &m.queue_id,
            &mut m.env,
            limit,
            &opts,
            &mut out,
        )?;
        let (unread, more, verp) = (
            m.env.rcpt_unread,
            m.env.rcpt_offset > 0,
            m.env.verp_delims.is_some(),
        );
        self.core
            .batch_read(msg, unread, more, verp, Instant::now());
        Ok(out)
    }

    /// Reads, resolves and assigns the next batch of a message already in
    /// core (`qmgr_message_realloc`). Returns false if the file is gone or
    /// damaged (the caller decides what that means).
    async fn read_more(&mut self, msg: MessageId) -> bool {
        let id = self.messages[&msg].queue_id.clone();
        let path = self.spool.path(spool::ACTIVE, &id);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "open {} {id}: {}",
                    spool::ACTIVE,
                    crate::log::errno_text(&e)
                );
                return false;
            }
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
    async fn refill(&mut self, msg: MessageId) {
        if !self.messages.contains_key(&msg) || !self.read_more(msg).await {
            self.core.assigned(msg);
        }
    }

    /// Resolves each recipient and hands it to the core
    /// (`qmgr_message_resolve` + `qmgr_message_assign`).
    async fn resolve_and_assign(
        &mut self,
        msg: MessageId,
        file: &File,
        mut recipients: Vec<Recipient>,
    ) {
        // Sort by domain, then address, so that the resolver cache and entry
        // sharing work well (qmgr_message_sort_compare).
        recipients.sort_by(|a, b| {
            let dom = |r: &Recipient| {
                r.address
                    .iter()
                    .rposition(|&c| c == b'@')
                    .map(|at| r.address[at + 1..].to_ascii_lowercase())
            };
            match (dom(a), dom(b)) {
                (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.address.cmp(&b.address)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.address.cmp(&b.address),
            }
        });
        let now = Instant::now();
        let mut resolved: Vec<(Vec<u8>, Vec<u8>, Recipient)> = Vec::with_capacity(recipients.len());
        let (sender, tflags, qflags, filter, redirect) = {
            let m = &self.messages[&msg];
            (
                m.env.sender.clone().unwrap_or_default(),
                m.env.tflags,
                m.qflags,
                m.env.filter.clone(),
                m.env.redirect.clone(),
            )
        };
        let class = if tflags & del_flag::MTA_VRFY != 0 {
            Class::Verify
        } else {
            Class::Regular
        };
        for (i, mut rcpt) in recipients.into_iter().enumerate() {
            let (mut transport, mut nexthop, flags);
            if let Some(rdr) = &redirect {
                if i > 0 {
                    // Only the first recipient survives a redirect.
                    continue;
                }
                let m = self.messages.get_mut(&msg).expect("message in core");
                m.env.rcpt_offset = 0;
                m.env.rcpt_unread = 0;
                let canonical = self.resolver.rewrite("local", rdr).await;
                (transport, nexthop, rcpt.address, flags) =
                    self.resolve_one(class, &sender, &canonical).await;
            } else if let (Some(f), true) = (&filter, tflags & del_flag::TRACE_ONLY_MASK == 0) {
                (transport, nexthop) = self.filter_route(f, &rcpt.address);
                flags = 0;
            } else {
                (transport, nexthop, rcpt.address, flags) =
                    self.resolve_one(class, &sender, &rcpt.address).await;
            }
            if rcpt.address.is_empty() {
                (transport, nexthop) =
                    (b"error".to_vec(), b"5.1.3 null recipient address".to_vec());
            }
            if qflags.contains(ScanFlags::FORCE_EXPIRE) {
                (transport, nexthop) = (
                    b"retry".to_vec(),
                    b"4.7.0 message is administratively expired".to_vec(),
                );
            }
            if flags & rflag::CLASS_LOCAL != 0 && self.is_double_bounce(&rcpt.address) {
                self.discard_double_bounce(msg, file, &rcpt).await;
                continue;
            }
            if !self.params.defer_transports.is_empty()
                && !qflags.contains(ScanFlags::FLUSH_DFXP)
                && self
                    .params
                    .defer_transports
                    .iter()
                    .any(|t| t.as_bytes() == transport.as_slice())
            {
                (transport, nexthop) = (b"retry".to_vec(), b"4.3.2 deferred transport".to_vec());
            }
            resolved.push((transport, nexthop, rcpt));
        }
        // Group recipients of one destination so that they share entries.
        resolved.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let flush_each = qflags.contains(ScanFlags::FLUSH_EACH);
        for (transport, nexthop, rcpt) in resolved {
            let transport = String::from_utf8_lossy(&transport).into_owned();
            let nexthop = String::from_utf8_lossy(&nexthop).into_owned();
            let address = rcpt.address.clone();
            let a = Assignment {
                transport: &transport,
                nexthop: &nexthop,
                address: &address,
                flush_each,
                rcpt,
            };
            if let Err((rcpt, reason)) = self.core.assign(msg, a, now) {
                let dsn = Dsn::simple(&reason.status, &reason.text);
                self.defer_recipient(msg, &rcpt, &dsn).await;
            }
        }
        self.core.assigned(msg);
    }

    /// Resolves one address (`qmgr_resolve_one`): (transport, nexthop,
    /// resolved recipient, resolve flags); a lookup failure goes to `retry`,
    /// bad syntax to `error`.
    async fn resolve_one(
        &mut self,
        class: Class,
        sender: &[u8],
        address: &[u8],
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>, u32) {
        let r = self.resolver.resolve(class, sender, address).await;
        let (transport, nexthop) = if r.flags & rflag::FAIL != 0 {
            (
                b"retry".to_vec(),
                b"4.3.0 address resolver failure".to_vec(),
            )
        } else if r.flags & rflag::ERROR != 0 {
            (b"error".to_vec(), b"5.1.3 bad address syntax".to_vec())
        } else {
            (r.transport, r.nexthop)
        };
        (transport, nexthop, r.recipient, r.flags)
    }

    /// The route a content filter (`L` record, `transport:nexthop`) gives a
    /// recipient: without a nexthop, `default_filter_nexthop`, else the
    /// recipient's domain, else `myhostname` (`qmgr_message_resolve`).
    fn filter_route(&self, filter: &[u8], address: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (transport, nexthop) = match filter.iter().position(|&c| c == b':') {
            Some(colon) => (&filter[..colon], &filter[colon + 1..]),
            None => (filter, &b""[..]),
        };
        if !nexthop.is_empty() {
            return (transport.to_vec(), nexthop.to_vec());
        }
        let nexthop = if !self.params.default_filter_nexthop.is_empty() {
            self.params.default_filter_nexthop.clone().into_bytes()
        } else {
            match address.iter().rposition(|&c| c == b'@') {
                Some(at) if at + 1 < address.len() => address[at + 1..].to_vec(),
                _ => self.params.myhostname.clone().into_bytes(),
            }
        };
        (transport.to_vec(), nexthop)
    }

    fn is_double_bounce(&self, address: &[u8]) -> bool {
        let local = match address.iter().rposition(|&c| c == b'@') {
            Some(at) => &address[..at],
            None => address,
        };
        local.eq_ignore_ascii_case(self.params.double_bounce_sender.as_bytes())
    }

    /// Mail to the local double-bounce address is "delivered" by qmgr itself
    /// and marked done in the queue file.
    async fn discard_double_bounce(&mut self, msg: MessageId, file: &File, rcpt: &Recipient) {
        let m = &self.messages[&msg];
        let stats = Stats {
            incoming: m.env.arrival,
            active: m.active_arrival,
        };
        let dsn = Dsn::simple("2.0.0", "undeliverable postmaster notification discarded");
        let status = bounce::sent(
            &self.services,
            m.env.tflags,
            &m.queue_id,
            &stats,
            rcpt,
            "none",
            &dsn,
        )
        .await;
        if status == 0 {
            if let Err(e) = qfile::mark_done(file, rcpt.offset) {
                crate::log::fatal(&format!(
                    "update queue file {}: {}",
                    m.queue_id,
                    crate::log::errno_text(&e)
                ));
            }
        } else if let Some(m) = self.messages.get_mut(&msg) {
            m.flags |= status;
        }
    }

    fn save_corrupt(&self, id: &str) {
        match self.spool.rename(id, spool::ACTIVE, spool::CORRUPT) {
            Ok(()) => tracing::warn!(
                "saving corrupt file \"{id}\" from queue \"{}\" to queue \"{}\"",
                spool::ACTIVE,
                spool::CORRUPT
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => crate::log::fatal(&format!(
                "qmgr_active_corrupt: save corrupt file queue {} id {id}: {}",
                spool::ACTIVE,
                crate::log::errno_text(&e)
            )),
        }
    }

    /// Time-stamps `active/<id>` now + `delay` and moves it to `dest`
    /// (`qmgr_active_defer`).
    fn defer_file(&self, id: &str, dest: &str, delay: i64) {
        if let Err(e) = self
            .spool
            .set_times(spool::ACTIVE, id, crate::now_secs() + delay)
        {
            if e.kind() != io::ErrorKind::NotFound {
                crate::log::fatal(&format!(
                    "qmgr_active_defer: update {} time stamps: {}",
                    self.spool.path(spool::ACTIVE, id).display(),
                    crate::log::errno_text(&e)
                ));
            }
        }
        if let Err(e) = self.spool.rename(id, spool::ACTIVE, dest) {
            let text = format!(
                "qmgr_active_defer: rename {id} from {} to {dest}: {}",
                spool::ACTIVE,
                crate::log::errno_text(&e)
            );
            if e.kind() != io::ErrorKind::NotFound {
                crate::log::fatal(&text);
            }
            tracing::warn!("{text}");
        }
    }

    /// Completion, step 1 (`qmgr_active_done`): flush a non-empty bounce log.
    async fn message_done(&mut self, msg: MessageId) {
        let Some(m) = self.messages.get(&msg) else {
            return;
        };
        let bounce_path = self.spool.path(spool::BOUNCE, &m.queue_id);
        if let Ok(md) = std::fs::metadata(&bounce_path) {
            if md.len() == 0 {
                if let Err(e) = std::fs::remove_file(&bounce_path) {
                    crate::log::fatal(&format!(
                        "remove {} {}: {}",
                        spool::BOUNCE,
                        m.queue_id,
                        crate::log::errno_text(&e)
                    ));
                }
            } else {
                let service = self.params.bounce_service_name.clone();
                self.spawn_flush(msg, service, bounce::FLAG_KEEP, Step::BounceFlushed);
                return;
            }
        }
        self.completion_after_bounce(msg).await;
    }

    /// Asks `service` (bounce or defer) to send the non-delivery notice for
    /// `msg`: one per recipient with the VERP sender if the message has VERP
    /// delimiters and `disable_verp_bounces = no` (`abounce_flush[_verp]`,
    /// `adefer_flush[_verp]`).
    fn spawn_flush(&self, msg: MessageId, service: String, flags: u32, step: Step) {
        let verp =
            self.messages[&msg].env.verp_delims.is_some() && !self.params.disable_verp_bounces;
        let (cmd, what) = if verp {
            (bounce::CMD_VERP, "verp")
        } else {
            (bounce::CMD_FLUSH, "bounce")
        };
        self.spawn_notify(msg, service, cmd, flags, step, what);
    }

    /// Sends one notification request (`cmd` with `flags`) for `msg` to
    /// `service` in the background; its status comes back as a completion
    /// `step`. A failure is logged as `<id>: status=deferred (<what> failed)`
    /// (`global/abounce.c`).
    fn spawn_notify(
        &self,
        msg: MessageId,
        service: String,
        cmd: u32,
        flags: u32,
        step: Step,
        what: &'static str,
    ) {
        let m = &self.messages[&msg];
        let verp = if cmd == bounce::CMD_VERP {
            m.env.verp_delims.as_deref()
        } else {
            None
        };
        let request = bounce::notify_request(cmd, flags, &m.queue_id, &m.env, verp);
        let tx = self.events_tx.clone();
        let id = m.queue_id.clone();
        tokio::task::spawn_local(async move {
            let status = match bounce::call(&service, &request, ABOUNCE_TIMEOUT).await {
                Ok(0) => 0,
                Ok(_) => -1,
                Err(e) => {
                    tracing::warn!("{e}");
                    -1
                }
            };
            if status != 0 {
                tracing::info!("{id}: status=deferred ({what} failed)");
            }
            let _ = tx.send(Event::Completion { msg, step, status });
        });
    }

    /// One in-place edit of `active/<id>` (`qmgr_message_kill_record`,
    /// `qmgr_message_update_warn`). A file that went away is a warning; a
    /// failed write is fatal, as in Postfix.
    fn edit_queue_file(&self, msg: MessageId, edit: impl FnOnce(&File) -> io::Result<()>) {
        let path = self
            .spool
            .path(spool::ACTIVE, &self.messages[&msg].queue_id);
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => {
                if let Err(e) = edit(&f) {
                    crate::log::fatal(&format!(
                        "update queue file {}: {}",
                        path.display(),
                        crate::log::errno_text(&e)
                    ));
                }
            }
            Err(e) => tracing::warn!("open {}: {}", path.display(), crate::log::errno_text(&e)),
        }
    }

    async fn completion_step(&mut self, msg: MessageId, step: Step, status: i32) {
        let Some(m) = self.messages.get_mut(&msg) else {
            return;
        };
        match step {
            Step::BounceFlushed => {
                m.flags |= status;
                self.completion_after_bounce(msg).await;
            }
            Step::TraceFlushed => {
                let offset = m.env.tflags_offset;
                m.flags |= status;
                if status == 0 && offset != 0 {
                    self.edit_queue_file(msg, |f| qfile::kill_record(f, offset));
                }
                self.completion_expiry(msg);
            }
            Step::DeferFlushed => {
                m.flags = status;
                self.dispose(msg);
            }
            Step::Warned => {
                let offset = m.env.warn_offset;
                if status == 0 && offset != 0 {
                    self.edit_queue_file(msg, |f| qfile::mark_warning_sent(f, offset));
                }
                self.dispose(msg);
            }
        }
    }

    /// Completion, step 2 (`qmgr_active_done_2_generic`): corrupt check,
    /// the next batch of recipients, then a trace flush if asked for.
    async fn completion_after_bounce(&mut self, msg: MessageId) {
        let m = &self.messages[&msg];
        let id = m.queue_id.clone();
        if m.flags != 0 && self.spool.open_ok(spool::ACTIVE, &id).is_none() {
            self.save_corrupt(&id);
            self.free(msg);
            return;
        }
        if m.env.rcpt_offset > 0 {
            if !self.read_more(msg).await {
                self.save_corrupt(&id);
                self.free(msg);
            }
            return;
        }
        let m = &self.messages[&msg];
        let t = m.env.tflags;
        if t & (del_flag::USR_VRFY | del_flag::RECORD | del_flag::REC_DLY_SENT) != 0
            || m.env.rflags & qfile::envelope::READ_FLAG_NOTIFY_SUCCESS != 0
        {
            let service = self.params.trace_service_name.clone();
            self.spawn_notify(
                msg,
                service,
                bounce::CMD_TRACE,
                t,
                Step::TraceFlushed,
                "trace",
            );
            return;
        }
        self.completion_expiry(msg);
    }

    /// Completion, step 3 (`qmgr_active_done_25_generic`): expire or warn.
    fn completion_expiry(&mut self, msg: MessageId) {
        let m = &self.messages[&msg];
        if m.flags != 0 {
            let now = crate::now_secs();
            let null_sender = m.env.sender.as_deref().is_none_or(<[u8]>::is_empty);
            let force = m.qflags.contains(ScanFlags::FORCE_EXPIRE);
            if let Some(status) =
                lifecycle::expiry(&self.lifetimes, force, now, m.env.create_time, null_sender)
            {
                tracing::info!(
                    "{}: from=<{}>, status={status}, returned to sender",
                    m.queue_id,
                    crate::log::addr(m.env.sender.as_deref().unwrap_or(b""))
                );
                let service = self.params.defer_service_name.clone();
                self.spawn_flush(
                    msg,
                    service,
                    bounce::FLAG_KEEP | bounce::FLAG_DELRCPT,
                    Step::DeferFlushed,
                );
                return;
            }
            if lifecycle::warning_due(m.env.warn_time, now) {
                let service = self.params.defer_service_name.clone();
                self.spawn_notify(
                    msg,
                    service,
                    bounce::CMD_WARN,
                    bounce::FLAG_KEEP,
                    Step::Warned,
                    "delay warning",
                );
                return;
            }
        }
        self.dispose(msg);
    }

    /// Completion, last step (`qmgr_active_done_3_generic`): defer with a
    /// backoff time stamp, or remove and log `removed`.
    fn dispose(&mut self, msg: MessageId) {
        let m = &self.messages[&msg];
        if m.flags != 0 {
            let delay = lifecycle::backoff(&self.lifetimes, crate::now_secs(), m.env.create_time);
            self.defer_file(&m.queue_id, spool::DEFERRED, delay);
        } else {
            match self.spool.remove(spool::ACTIVE, &m.queue_id) {
                Ok(()) => tracing::info!("{}: removed", m.queue_id),
                Err(e) => {
                    let text = format!(
                        "qmgr_active_done_3_generic: remove {} from {}: {}",
                        m.queue_id,
                        spool::ACTIVE,
                        crate::log::errno_text(&e)
                    );
                    if e.kind() != io::ErrorKind::NotFound {
                        crate::log::fatal(&text);
                    }
                    tracing::warn!("{text}");
                }
            }
        }
        self.free(msg);
    }

    fn free(&mut self, msg: MessageId) {
        self.messages.remove(&msg);
        self.core.message_free(msg);
    }
}

fn system_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Time limits of one agent session.
struct AgentTimeouts {
    /// `daemon_timeout`: waiting for the agent's announcement and reply.
    daemon: Duration,
    /// `qmgr_ipc_timeout`: writing the request.
    ipc: Duration,
    /// `_transport_rate_delay`: pause between readiness and the request.
    rate_delay: Duration,
}

/// One delivery agent connection (`qmgr_transport_alloc` + `qmgr_deliver`):
/// connect, wait for the announcement (and the transport rate delay), ask
/// the loop for an entry, send the request, and report the reply.
async fn agent_session(
    transport: String,
    tx: mpsc::UnboundedSender<Event>,
    timeouts: AgentTimeouts,
) {
    let (daemon_timeout, ipc_timeout) = (timeouts.daemon, timeouts.ipc);
    let mut peer = match Peer::connect("private", &transport).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "connect to transport private/{transport}: {}",
                crate::log::errno_text(&e)
            );
            let _ = tx.send(Event::AgentFailed { transport });
            return;
        }
    };
    let socket = format!("private/{transport} socket");
    if with_timeout(
        daemon_timeout,
        read_announcement(&mut peer.reader, deliver::PROTOCOL),
    )
    .await
    .is_err()
    {
        tracing::warn!("{socket}: malformed response");
        let _ = tx.send(Event::AgentFailed { transport });
        return;
    }
    if !timeouts.rate_delay.is_zero() {
        tokio::time::sleep(timeouts.rate_delay).await;
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx
        .send(Event::AgentReady {
            transport: transport.clone(),
            reply: reply_tx,
        })
        .is_err()
    {
        return;
    }
    let Ok(Some((entry, request))) = reply_rx.await else {
        return;
    };
    if let Err(e) = peer.send(&request, ipc_timeout).await {
        tracing::warn!(
            "write to process ({transport}): {}",
            crate::log::errno_text(&e)
        );
        let _ = tx.send(Event::WriteFailed { entry });
        return;
    }
    let reply = with_timeout(daemon_timeout, AttrList::read(&mut peer.reader)).await;
    let outcome = match reply.and_then(|l| parse_reply(&l)) {
        Ok(r) => {
            let retry = r.status != 0;
            // qmgr_deliver_update: a deferral with a DSN status is a problem
            // of the destination itself (negative feedback); a reply without
            // a reason is good news for it (positive feedback).
            let hop = (retry && !r.hop.status.is_empty()).then(|| {
                let status = if crate::ipc::dsn_valid(&r.hop.status) {
                    String::from_utf8_lossy(&r.hop.status).into_owned()
                } else {
                    "4.0.0".into()
                };
                let text = if r.hop.reason.is_empty() {
                    "unknown error".into()
                } else {
                    String::from_utf8_lossy(&r.hop.reason).into_owned()
                };
                Reason { status, text }
            });
            let reason_empty = hop.is_none() && r.hop.reason.is_empty();
            Outcome::Replied {
                retry,
                hop,
                reason_empty,
            }
        }
        Err(_) => {
            tracing::warn!("{socket}: malformed response");
            Outcome::Crashed
        }
    };
    let _ = tx.send(Event::DeliveryDone { entry, outcome });
}
