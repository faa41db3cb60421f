//! The shell around the core (`qmgr/qmgr.c`): a single-threaded event loop
//! that reads files and sockets, hands what it read to the core
//! ([`crate::qmgr::Core`]), carries out the actions it gets back, and turns
//! the core's events into Postfix's log lines. It decides nothing itself.
//!
//! - [`feed`]: scans, the move into active, reading and resolving a
//!   message (`qmgr_active_feed`, `qmgr_message_alloc`, the I/O of
//!   `qmgr_message_resolve`);
//! - [`agent`]: delivery agent connections (`qmgr_transport_alloc`,
//!   `qmgr_deliver`);
//! - [`complete`]: the file operations and notices of completion
//!   (`qmgr_active_done*`, `abounce.c`), and recipients qmgr defers or
//!   discards itself (`qmgr_defer_recipient`, `sent`);
//! - [`logging`]: events as log lines;
//! - `status`: the status socket, answering `rqmgr status` and `rqmgr
//!   explain` from the core's snapshot.
//!
//! Tasks (agent sessions, notices) run on the same thread and report back
//! through one channel ([`Report`]).

mod agent;
mod complete;
mod feed;
pub mod logging;
pub mod metrics;
mod status;

use crate::config::{DomainList, MainCf, Params, TransportTable};
use crate::ipc::bounce::Services;
use crate::ipc::flush::Flush;
use crate::ipc::rewrite::Resolver;
use crate::ipc::verify::Verify;
use crate::master::{Flow, TriggerBytes, Watchdog};
use crate::qfile::{Envelope, Recipient, Text};
use crate::qmgr::scan::{FeedOrder, ScanQueue};
use crate::qmgr::{Action, Core, Event, MessageId, ScanFlags, Settings, SideTable, Strategy};
use crate::spool::{self, DeferredScanner, Next, Scanner, Spool};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Resolves when `fd` is readable (never without one), clearing the
/// readiness for the next wait.
async fn wait_readable(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => match fd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// What tasks report to the event loop.
enum Report {
    /// An agent announced itself and waits for a request.
    AgentReady {
        transport: String,
        reply: tokio::sync::oneshot::Sender<Option<agent::Assignment>>,
    },
    /// Connecting to an agent failed (already logged).
    AgentFailed { transport: String },
    /// Writing the request failed (already logged).
    WriteFailed { entry: crate::qmgr::EntryId },
    /// The agent replied (`None`: no usable reply), `elapsed` after the
    /// request was written.
    Replied {
        entry: crate::qmgr::EntryId,
        reply: Option<crate::ipc::deliver::Reply>,
        transport: String,
        elapsed: Duration,
    },
    /// A completion notice (bounce, defer, trace) ended; `ok`: status 0.
    Notified { msg: MessageId, ok: bool },
    /// A status client asks; the answer goes back on `reply`.
    Query {
        request: crate::status::Request,
        reply: tokio::sync::oneshot::Sender<crate::status::Answer>,
    },
}

/// A message in memory: what the shell keeps of it (`QMGR_MESSAGE`'s file
/// part); the core keeps the scheduling part under the same id.
struct InCore {
    /// The envelope; its texts hold the queue id too.
    env: Envelope,
    /// When the message entered memory: (seconds, microseconds).
    active_arrival: (i64, i64),
}

impl InCore {
    /// A message just taken from the queue file `queue_id`, nothing read.
    fn new(queue_id: &str) -> InCore {
        let mut env = Envelope::default();
        env.texts.set(Text::QueueId, queue_id.as_bytes());
        InCore {
            env,
            active_arrival: crate::now_timeval(),
        }
    }

    /// The queue id (`message->queue_id`). Asked for a dozen times per
    /// message: an ASCII test costs less than UTF-8 validation.
    fn queue_id(&self) -> &str {
        let id = self.env.texts.or_empty(Text::QueueId);
        if id.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8.
            unsafe { std::str::from_utf8_unchecked(id) }
        } else {
            std::str::from_utf8(id).unwrap_or("?")
        }
    }
}

/// The two scanners, by queue.
struct Scans {
    incoming: Scanner,
    deferred: DeferredScanner,
    /// What the runs of each queue found (incoming, deferred), for status.
    tally: [Tally; 2],
}

/// Files a queue's runs handed out: in the run under way, and in the last
/// one that ended (with when it ended, seconds).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    found: u64,
    last: Option<(u64, i64)>,
}

fn tally_index(q: ScanQueue) -> usize {
    match q {
        ScanQueue::Incoming => 0,
        ScanQueue::Deferred => 1,
    }
}

impl Scans {
    /// The next name of queue `q`'s scan.
    fn next_id(&mut self, q: ScanQueue) -> Next {
        let was = self.in_progress(q);
        let next = match q {
            ScanQueue::Incoming => self.incoming.next_id().map_or(Next::Done, Next::Id),
            ScanQueue::Deferred => self.deferred.next_id(crate::now_secs()),
        };
        let t = &mut self.tally[tally_index(q)];
        match next {
            Next::Id(_) => t.found += 1,
            Next::Done if was => {
                t.last = Some((t.found, crate::now_secs()));
                t.found = 0;
            }
            _ => {}
        }
        next
    }

    fn in_progress(&self, q: ScanQueue) -> bool {
        match q {
            ScanQueue::Incoming => self.incoming.in_progress(),
            ScanQueue::Deferred => self.deferred.in_progress(),
        }
    }

    /// What `rqmgr status` shows of queue `q`'s scans.
    fn view(&self, q: ScanQueue) -> crate::status::ScanView {
        let t = self.tally[tally_index(q)];
        crate::status::ScanView {
            in_progress: self.in_progress(q),
            last_found: t.last.map(|l| l.0),
            last_ended: t.last.map(|l| l.1),
        }
    }

    /// The directory and the flags of queue `q`'s run in progress.
    fn run(&mut self, q: ScanQueue) -> (&'static str, ScanFlags) {
        let r = match q {
            ScanQueue::Incoming => self.incoming.requests(),
            ScanQueue::Deferred => self.deferred.requests(),
        };
        (r.queue(), r.flags())
    }
}

/// The running queue manager.
pub struct Daemon {
    params: Params,
    spool: Spool,
    core: Core<Recipient>,
    /// Boxed: a table of 560-byte values would hold empty ones too.
    messages: SideTable<MessageId, Box<InCore>>,
    scans: Scans,
    /// Files left in `active` at start-up, not yet fed.
    recovery: Option<spool::ActiveRecovery>,
    /// Whether the incoming slot of the next feed round goes to
    /// `recovery` (it takes turns with the incoming scan).
    recovery_turn: bool,
    feed_order: FeedOrder,
    resolver: Resolver,
    services: Services,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
    verp_filter: Vec<u8>,
    /// Prometheus metrics, when `--metrics` is given.
    metrics: Option<metrics::Metrics>,
}

impl Daemon {
    /// Builds the daemon from parsed parameters; `cf` serves the core's
    /// per-transport lookups. Must run inside the queue directory.
    pub fn new(params: Params, mut cf: MainCf, strategy: Strategy) -> Daemon {
        let verp_filter = cf
            .get_str("verp_delimiter_filter", "-=+", 1, 0)
            .unwrap_or_else(|_| "-=+".into());
        let core = Core::new(
            Settings {
                verbose: crate::log::verbose(),
                ..Settings::from_params(&params, strategy)
            },
            Box::new(TransportTable::new(params.clone(), cf)),
            Instant::now(),
        );
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let ipc_timeout = Duration::from_secs(params.ipc_timeout as u64);
        Daemon {
            spool: Spool::new(&params.hash_queue_names, params.hash_queue_depth),
            core,
            messages: SideTable::default(),
            scans: Scans {
                incoming: Scanner::new(spool::INCOMING),
                deferred: DeferredScanner::new(spool::DEFERRED),
                tally: [Tally::default(); 2],
            },
            recovery: None,
            recovery_turn: true,
            feed_order: FeedOrder::default(),
            resolver: Resolver::new(
                &params.rewrite_service_name,
                ipc_timeout,
                Duration::from_secs(params.ipc_idle as u64),
                Duration::from_secs(params.ipc_ttl as u64),
            ),
            services: Services {
                bounce: params.bounce_service_name.clone(),
                defer: params.defer_service_name.clone(),
                trace: params.trace_service_name.clone(),
                verify: Verify {
                    service: params.address_verify_service_name.clone(),
                    negative_cache: params.address_verify_negative_cache,
                    timeout: ipc_timeout,
                },
                flush: Flush {
                    service: params.flush_service_name.clone(),
                    domains: DomainList::parse(
                        &params.fast_flush_domains,
                        params
                            .parent_domain_matches_subdomains
                            .iter()
                            .any(|n| n == "fast_flush_domains"),
                    ),
                    timeout: ipc_timeout,
                },
                timeout: ipc_timeout,
                max_dig: params.delay_logging_resolution_limit as u32,
            },
            reports_tx,
            reports_rx,
            verp_filter: verp_filter.into_bytes(),
            metrics: None,
            params,
        }
    }

    /// Reports to `m` from now on (the exporter is installed already).
    pub fn with_metrics(mut self, m: metrics::Metrics) -> Daemon {
        self.metrics = Some(m);
        self
    }

    /// Startup (`qmgr_post_init`): list what is left in `active`, to feed
    /// where it is (see [`spool::ActiveRecovery`]), then request an
    /// incoming and a deferred scan.
    pub fn start(&mut self) {
        let recovery = spool::ActiveRecovery::list();
        self.recovery = (!recovery.is_done()).then_some(recovery);
        self.scans.incoming.request(ScanFlags::START);
        self.scans
            .deferred
            .request(ScanFlags::START, crate::now_secs());
    }

    /// Handles one trigger: the core says what it asks of the scans
    /// (`qmgr_trigger_event`).
    pub fn trigger(&mut self, bytes: &[u8]) {
        let r = self.core.trigger(bytes);
        for _ in 0..r.ignored {
            tracing::debug!("request ignored");
        }
        if !r.incoming.is_empty() {
            self.scans.incoming.request(r.incoming);
        }
        if !r.deferred.is_empty() {
            self.scans.deferred.request(r.deferred, crate::now_secs());
        }
        self.log_events();
    }

    /// Runs the event loop until the master goes away.
    pub async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<TriggerBytes>,
        watchdog: Watchdog,
    ) {
        let mut deferred_timer = tokio::time::interval(Duration::from_secs(
            self.params.queue_run_delay.max(1) as u64,
        ));
        deferred_timer.tick().await; // the first tick is immediate; startup already requested a scan
        self.resolver.set_watchdog(watchdog.clone());
        let heartbeat = Duration::from_secs((self.params.qmgr_daemon_timeout as u64 / 3).max(1));
        let mut gauge_timer = tokio::time::interval(Duration::from_secs(1));
        let metrics_on = self.metrics.is_some();
        let inotify = self
            .scans
            .deferred
            .watch_fd()
            // SAFETY: the AsyncFd owns the descriptor, open until it drops.
            .and_then(|fd| unsafe {
                AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
            });
        status::spawn(self.reports_tx.clone());
        loop {
            watchdog.pet();
            while let Ok(r) = self.reports_rx.try_recv() {
                self.on_report(r).await;
            }
            while let Ok(t) = triggers.try_recv() {
                self.trigger(&t.0);
            }
            self.core.handle_timeout(Instant::now());
            self.carry_out_actions().await;
            // One message per round, as qmgr_loop: feeding faster than the
            // agents deliver would only fill memory.
            let (produced, fed_incoming) = self.feed_one().await;
            self.carry_out_actions().await;
            if let Some(m) = &self.metrics {
                if let Some(d) = self.scans.incoming.requests().take_finished() {
                    m.scan_done(spool::INCOMING, d);
                }
                if let Some(d) = self.scans.deferred.requests().take_finished() {
                    m.scan_done(spool::DEFERRED, d);
                }
            }
            if self.params.in_flow_delay > 0 {
                Flow::regulate(
                    self.params.default_process_limit as usize,
                    usize::from(fed_incoming),
                    self.scans.incoming.in_progress(),
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
                r = self.reports_rx.recv() => {
                    if let Some(r) = r { self.on_report(r).await; }
                }
                Some(t) = triggers.recv() => self.trigger(&t.0),
                _ = deferred_timer.tick() => {
                    self.scans.deferred.request(ScanFlags::START, crate::now_secs());
                }
                _ = gauge_timer.tick(), if metrics_on => {
                    if let Some(m) = &mut self.metrics {
                        m.gauges(&self.core);
                    }
                }
                _ = wait_readable(inotify.as_ref()) => {
                    self.scans.deferred.apply_events();
                }
                _ = sleep => {
                    self.resolver.close_if_idle(Instant::now());
                }
            }
        }
    }

    /// Carries out everything the core asks for.
    async fn carry_out_actions(&mut self) {
        loop {
            self.log_events();
            let Some(action) = self.core.poll_action() else {
                break;
            };
            match action {
                Action::Connect {
                    transport,
                    rate_delay,
                } => self.spawn_agent(&transport, rate_delay),
                Action::Refill { msg } => self.refill(msg).await,
                Action::Defer {
                    msg,
                    recipients,
                    reason,
                } => self.defer_recipients(msg, &recipients, &reason).await,
                Action::Complete { msg, step } => self.completion_step(msg, step).await,
            }
        }
    }

    /// Logs what the core reported, and lets go of messages that left it.
    fn log_events(&mut self) {
        while let Some(event) = self.core.poll_event() {
            if let Some(m) = &mut self.metrics {
                m.on_event(&event);
            }
            match event {
                Event::Trace(t) => {
                    let line = logging::trace_line(&t, |m| {
                        self.messages
                            .get(m)
                            .map_or_else(|| "?".into(), |m| m.queue_id().to_string())
                    });
                    tracing::debug!("{line}");
                }
                Event::MessageFinished { msg, .. } => {
                    logging::log_event(&event, self.core.settings());
                    if let Some(m) = self.messages.remove(msg) {
                        if let Some(metrics) = &self.metrics {
                            let (s, us) = m.active_arrival;
                            let (ns, nus) = crate::now_timeval();
                            metrics.time_in_active((ns - s) as f64 + (nus - us) as f64 / 1e6);
                        }
                    }
                }
                _ => logging::log_event(&event, self.core.settings()),
            }
        }
    }

    async fn on_report(&mut self, r: Report) {
        match r {
            Report::AgentReady { transport, reply } => self.agent_ready(&transport, reply),
            Report::AgentFailed { transport } => {
                self.core.agent_failed(&transport, Instant::now());
            }
            Report::WriteFailed { entry } => self.core.write_failed(entry, Instant::now()),
            Report::Replied {
                entry,
                reply,
                transport,
                elapsed,
            } => {
                if let Some(m) = &mut self.metrics {
                    m.delivery_time(&transport, elapsed);
                }
                if reply.is_some() {
                    self.core.delivery_timed(entry, elapsed);
                }
                self.delivery_done(entry, reply.as_ref());
            }
            Report::Notified { msg, ok } => {
                self.core
                    .complete(msg, crate::qmgr::Fact::Notified(ok), crate::now_secs());
            }
            Report::Query { request, reply } => {
                let _ = reply.send(self.answer(&request));
            }
        }
        self.log_events();
    }
}
