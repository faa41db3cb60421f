//! A simulator: the queue manager's core ([`crate::qmgr`]) driven by
//! simulated queue files, delivery agents and destinations in virtual time.
//! It answers "what happens to this mix of mail if I change that
//! parameter?" in milliseconds, and the same workload always gives the same
//! answer.
//!
//! It plays the shell's part the way `shell/` does, and leaves every
//! decision to the same core: admission ([`Core::has_room`]), reading
//! limits, routing overrides and assignment ([`Core::assign_batch`]), the
//! reading of agents' replies ([`Core::delivery_done`]) and completion
//! ([`Core::complete`]). What it simulates is only what the real world
//! would answer: at most the process limit of agents per transport, each
//! destination's delivery time and failure, error(8) for `retry` and
//! `error`, and bounce/defer/trace services that always answer.

use crate::config::TransportParams;
use crate::proto::service;
use crate::qmgr::{
    Action, AgentReply, BounceLog, Core, Disposition, EntryId, Event, Fact, MessageFacts,
    MessageId, Reason, Resolution, ScanFlags, Settings, Step, TransportConfig,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The wall-clock time the simulation starts at (seconds since the epoch):
/// fixed, so that runs are reproducible.
pub const WALL_START: i64 = 1_800_000_000;

/// How a simulated destination behaves.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Time one delivery request takes.
    pub delivery_time: Duration,
    /// `Some(reason)`: every attempt fails with this hop status (e.g. a
    /// closed port); `None`: every delivery succeeds.
    pub failure: Option<Reason>,
}

/// One recipient of a simulated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimRcpt {
    /// Index of the message in the workload.
    pub msg: usize,
    /// Index of the recipient in its message.
    pub rcpt: usize,
}

/// A simulated message: when it arrives, which transport and destination
/// each recipient goes to.
#[derive(Debug, Clone)]
pub struct SimMessage {
    pub label: String,
    pub arrival: Duration,
    /// (transport, destination) per recipient.
    pub recipients: Vec<(String, String)>,
}

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delivered at this time (since the start).
    Delivered(Duration),
    /// Deferred (the destination failed, or it went dead) at this time.
    Deferred(Duration),
    /// Bounced (by the `error` transport) at this time.
    Bounced(Duration),
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per message, per recipient: what happened (first attempt only).
    pub fates: Vec<Vec<Option<Fate>>>,
    /// Per message: when it left the active queue (completion).
    pub completed: Vec<Option<Duration>>,
    /// Per message: how it left the active queue.
    pub dispositions: Vec<Option<Disposition>>,
    /// Per message: the completion steps the core asked for, in order.
    pub steps: Vec<Vec<Step>>,
    /// Every delivery request: (start, transport, destination, message, recipients).
    pub requests: Vec<(Duration, String, String, usize, usize)>,
    /// Highest number of simultaneous deliveries seen per destination.
    pub max_busy: BTreeMap<String, usize>,
    /// Number of delivery attempts per destination.
    pub attempts: BTreeMap<String, usize>,
    /// Every event the core reported, with the time (since the start).
    pub events: Vec<(Duration, Event)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(usize),
    AgentFree(u32),
    Done(u32),
}

/// A connection's state: waiting to be ready, or delivering.
struct Agent {
    transport: String,
    /// The entry, its destination, and when the request was sent.
    delivery: Option<(EntryId, String, Instant)>,
}

/// The simulator.
pub struct Sim {
    core: Core<SimRcpt>,
    start: Instant,
    now: Instant,
    workload: Vec<SimMessage>,
    destinations: HashMap<String, Destination>,
    process_limit: HashMap<String, usize>,
    default_process_limit: usize,
    /// Per workload message: next recipient to read, and the core id.
    cursor: Vec<usize>,
    by_id: HashMap<MessageId, usize>,
    /// Per workload message: some recipient bounced (its bounce log is
    /// not empty).
    bounced: Vec<bool>,
    incoming: VecDeque<usize>,
    events: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    busy_agents: HashMap<String, usize>,
    waiting_connects: HashMap<String, usize>,
    agents: HashMap<u32, Agent>,
    busy_per_dest: HashMap<String, usize>,
    next_agent: u32,
    report: Report,
}

impl Sim {
    /// A simulator: `config` gives each transport's parameters,
    /// `process_limit` each transport's master.cf limit (else
    /// `default_process_limit`).
    pub fn new(
        settings: Settings,
        config: Box<dyn TransportConfig>,
        workload: Vec<SimMessage>,
        destinations: HashMap<String, Destination>,
        process_limit: HashMap<String, usize>,
        default_process_limit: usize,
    ) -> Sim {
        let start = Instant::now();
        let n = workload.len();
        let mut sim = Sim {
            core: Core::new(settings, config, start),
            start,
            now: start,
            workload,
            destinations,
            process_limit,
            default_process_limit,
            cursor: vec![0; n],
            by_id: HashMap::new(),
            bounced: vec![false; n],
            incoming: VecDeque::new(),
            events: BTreeMap::new(),
            seq: 0,
            busy_agents: HashMap::new(),
            waiting_connects: HashMap::new(),
            agents: HashMap::new(),
            busy_per_dest: HashMap::new(),
            next_agent: 0,
            report: Report::default(),
        };
        sim.report.fates = sim
            .workload
            .iter()
            .map(|m| vec![None; m.recipients.len()])
            .collect();
        sim.report.completed = vec![None; n];
        sim.report.dispositions = vec![None; n];
        sim.report.steps = vec![Vec::new(); n];
        for i in 0..n {
            let at = start + sim.workload[i].arrival;
            sim.push(at, Ev::Arrive(i));
        }
        sim
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The simulated wall clock, seconds since the epoch.
    fn wall(&self) -> i64 {
        WALL_START + self.elapsed().as_secs() as i64
    }

    /// Access to the core (for invariant checks in tests).
    pub fn core(&self) -> &Core<SimRcpt> {
        &self.core
    }

    /// Runs until nothing is left to do or `limit` of virtual time passed.
    pub fn run(mut self, limit: Duration) -> Report {
        let end = self.start + limit;
        loop {
            self.feed_and_act();
            let next_ev = self.events.keys().next().map(|k| k.0);
            let next = match (next_ev, self.core.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            self.core.handle_timeout(self.now);
            while let Some((&key, _)) = self.events.iter().next() {
                if key.0 > self.now {
                    break;
                }
                let ev = self.events.remove(&key).expect("present");
                self.handle(ev);
                self.feed_and_act();
            }
        }
        self.record_events();
        self.report
    }

    /// Like the daemon's loop: act on the core, feed messages while the
    /// core admits them, act again.
    fn feed_and_act(&mut self) {
        loop {
            self.carry_out_actions();
            if !self.core.has_room() {
                break;
            }
            let Some(i) = self.incoming.pop_front() else {
                break;
            };
            let id = self.core.message_new(ScanFlags::START, self.now);
            self.by_id.insert(id, i);
            self.read_batch(id, i);
        }
        self.carry_out_actions();
    }

    /// Reads and assigns the next batch of message `i`, as many recipients
    /// as the core allows.
    fn read_batch(&mut self, id: MessageId, i: usize) {
        let limit = self.core.read_limit(id);
        let total = self.workload[i].recipients.len();
        let from = self.cursor[i];
        let to = (from + limit).min(total);
        self.cursor[i] = to;
        let facts = MessageFacts {
            rcpt_unread: (total - to) as i64,
            more: to < total,
            create_time: WALL_START + self.workload[i].arrival.as_secs() as i64,
            ..MessageFacts::default()
        };
        self.core.batch_read(id, facts, self.now);
        let batch = (from..to)
            .map(|r| {
                let (transport, dest) = self.workload[i].recipients[r].clone();
                let address = format!("r{r}@{dest}").into_bytes();
                let res = Resolution {
                    transport: transport.into(),
                    nexthop: dest.into(),
                    address,
                    flags: 0,
                };
                (res, SimRcpt { msg: i, rcpt: r })
            })
            .collect();
        let assigned = self.core.assign_batch(id, batch, self.now);
        for (rcpt, _) in assigned.defer {
            self.fate(rcpt, Fate::Deferred(self.elapsed()));
            self.core.must_retry(id);
        }
    }

    fn fate(&mut self, r: SimRcpt, fate: Fate) {
        self.report.fates[r.msg][r.rcpt].get_or_insert(fate);
    }

    fn limit_of(&self, transport: &str) -> usize {
        self.process_limit
            .get(transport)
            .copied()
            .unwrap_or(self.default_process_limit)
    }

    fn record_events(&mut self) {
        let at = self.elapsed();
        while let Some(e) = self.core.poll_event() {
            self.report.events.push((at, e));
        }
    }

    fn carry_out_actions(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Connect {
                    transport,
                    rate_delay,
                } => {
                    // master(8) gives the connection to a free agent process, or
                    // it waits in the listen queue until one is free.
                    let busy = self.busy_agents.get(&*transport).copied().unwrap_or(0);
                    if busy < self.limit_of(&transport) {
                        *self.busy_agents.entry(transport.to_string()).or_default() += 1;
                        self.start_agent(transport.to_string(), rate_delay);
                    } else {
                        *self
                            .waiting_connects
                            .entry(transport.to_string())
                            .or_default() += 1;
                    }
                }
                Action::Refill { msg } => {
                    let i = self.by_id[&msg];
                    if self.cursor[i] < self.workload[i].recipients.len() {
                        self.read_batch(msg, i);
                    } else {
                        self.core.assigned(msg);
                    }
                }
                Action::Defer {
                    msg, recipients, ..
                } => {
                    for r in recipients {
                        self.fate(r, Fate::Deferred(self.elapsed()));
                    }
                    self.core.must_retry(msg);
                }
                Action::Complete { msg, step } => self.completion_step(msg, step),
            }
            self.record_events();
        }
    }

    /// Answers one completion step as the real services and files would.
    fn completion_step(&mut self, msg: MessageId, step: Step) {
        let i = self.by_id[&msg];
        self.report.steps[i].push(step);
        let fact = match step {
            Step::CheckBounceLog => Fact::BounceLog(if self.bounced[i] {
                BounceLog::NonEmpty
            } else {
                BounceLog::Missing
            }),
            Step::FlushBounce { .. } => {
                self.bounced[i] = false;
                Fact::Notified(true)
            }
            Step::FlushTrace | Step::Warn | Step::ReturnToSender { .. } => Fact::Notified(true),
            Step::CheckFile => Fact::FileOk(true),
            Step::ReadMore => {
                self.read_batch(msg, i);
                Fact::Read(true)
            }
            Step::RemoveBounceLog | Step::KillTraceRecord | Step::MarkWarned => Fact::Done,
            Step::Defer { delay } => self.finished(msg, i, Disposition::Deferred { delay }),
            Step::Remove => self.finished(msg, i, Disposition::Removed),
            Step::SaveCorrupt => self.finished(msg, i, Disposition::Corrupt),
        };
        let wall = self.wall();
        self.core.complete(msg, fact, wall);
    }

    fn finished(&mut self, msg: MessageId, i: usize, disposition: Disposition) -> Fact {
        self.report.completed[i] = Some(self.elapsed());
        self.report.dispositions[i] = Some(disposition);
        self.by_id.remove(&msg);
        Fact::Done
    }

    /// An agent process took a connection: it is ready at once (after the
    /// transport rate delay).
    fn start_agent(&mut self, transport: String, rate_delay: Duration) {
        let at = self.now + rate_delay;
        // Readiness is handled as an event so that the core sees time pass.
        let id = self.next_agent;
        self.next_agent += 1;
        self.agents.insert(
            id,
            Agent {
                transport,
                delivery: None,
            },
        );
        self.push(at, Ev::AgentFree(id));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive(i) => self.incoming.push_back(i),
            Ev::AgentFree(id) => {
                let transport = self.agents[&id].transport.clone();
                match self.core.agent_ready(&transport, self.now) {
                    Some(e) => {
                        let entry = self.core.entry(e);
                        let dest = self.core.nexthop(entry.queue).to_string();
                        let first = entry.recipients[0].msg;
                        let n = entry.recipients.len();
                        let time = self
                            .destinations
                            .get(&dest)
                            .map_or(Duration::from_millis(10), |d| d.delivery_time);
                        self.report.requests.push((
                            self.elapsed(),
                            transport.clone(),
                            dest.clone(),
                            first,
                            n,
                        ));
                        *self.report.attempts.entry(dest.clone()).or_default() += 1;
                        let b = self.busy_per_dest.entry(dest.clone()).or_default();
                        *b += 1;
                        let m = self.report.max_busy.entry(dest.clone()).or_default();
                        *m = (*m).max(*b);
                        self.agents.get_mut(&id).expect("agent").delivery =
                            Some((e, dest, self.now));
                        self.push(self.now + time, Ev::Done(id));
                    }
                    None => {
                        self.agents.remove(&id);
                        self.release_agent(&transport);
                    }
                }
            }
            Ev::Done(id) => {
                let agent = self.agents.remove(&id).expect("agent");
                let (e, dest, sent) = agent.delivery.expect("a delivery in flight");
                *self.busy_per_dest.get_mut(&dest).expect("busy dest") -= 1;
                let at = self.elapsed();
                let failure = self.destinations.get(&dest).and_then(|d| d.failure.clone());
                // What the agent would reply: error(8) as `retry` defers and as
                // `error` bounces, neither with a hop status; real destinations
                // succeed or fail with their hop status.
                let (reply, fate) = match (agent.transport.as_str(), &failure) {
                    (service::RETRY, _) => (AgentReply::DEFERRED, Fate::Deferred(at)),
                    (service::ERROR, _) => (AgentReply::OK, Fate::Bounced(at)),
                    (_, None) => (AgentReply::OK, Fate::Delivered(at)),
                    (_, Some(r)) => (
                        AgentReply::Final {
                            status: -1,
                            hop_status: r.status.as_bytes(),
                            hop_reason: r.text.as_bytes(),
                        },
                        Fate::Deferred(at),
                    ),
                };
                self.core.delivery_timed(e, self.now - sent);
                let (_, recipients) = self.core.delivery_done(e, reply, self.now);
                for r in recipients {
                    if matches!(fate, Fate::Bounced(_)) {
                        self.bounced[r.msg] = true;
                    }
                    self.fate(r, fate);
                }
                self.release_agent(&agent.transport);
            }
        }
    }

    /// An agent process is free again: it takes the next waiting connection.
    fn release_agent(&mut self, transport: &str) {
        match self.waiting_connects.get_mut(transport) {
            Some(n) if *n > 0 => {
                *n -= 1;
                let delay = Duration::from_secs(self.rate_delay(transport));
                self.start_agent(transport.to_string(), delay);
            }
            _ => {
                if let Some(b) = self.busy_agents.get_mut(transport) {
                    *b = b.saturating_sub(1);
                }
            }
        }
    }

    fn rate_delay(&mut self, transport: &str) -> u64 {
        let p: &TransportParams = self.core.transport_params(transport);
        p.xport_rate_delay.max(0) as u64
    }
}
