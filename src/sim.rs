//! A simulator: the scheduling core ([`crate::sched`]) driven by simulated
//! queue files, delivery agents and destinations in virtual time. It answers
//! "what happens to this mix of mail if I change that parameter?" in
//! milliseconds, and the same workload always gives the same answer.
//!
//! It plays the shell's part the way `daemon.rs` does: feeds messages while
//! the active queue has room, reads recipients in the batches the core
//! allows, keeps at most the process limit of agents per transport busy,
//! and reports each delivery's outcome back to the core.

use crate::config::TransportParams;
use crate::sched::{Action, Assignment, EntryId, MessageId, Outcome, Reason, Scheduler, Settings};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

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
    /// Every delivery request: (start, transport, destination, message, recipients).
    pub requests: Vec<(Duration, String, String, usize, usize)>,
    /// Highest number of simultaneous deliveries seen per destination.
    pub max_busy: BTreeMap<String, usize>,
    /// Number of delivery attempts per destination.
    pub attempts: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(usize),
    AgentFree(u32),
    Done(u32, u32),
}

/// The simulator.
pub struct Sim {
    core: Scheduler<SimRcpt>,
    start: Instant,
    now: Instant,
    workload: Vec<SimMessage>,
    destinations: HashMap<String, Destination>,
    process_limit: HashMap<String, usize>,
    default_process_limit: usize,
    active_limit: usize,
    /// Per workload message: next recipient to read, and the core id.
    cursor: Vec<usize>,
    ids: Vec<Option<MessageId>>,
    by_id: HashMap<MessageId, usize>,
    incoming: VecDeque<usize>,
    events: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    busy_agents: HashMap<String, usize>,
    waiting_connects: HashMap<String, usize>,
    in_flight: HashMap<u32, (EntryId, String, String)>,
    busy_per_dest: HashMap<String, usize>,
    next_delivery: u32,
    report: Report,
}

impl Sim {
    /// A simulator with Postfix's defaults; `params` gives each transport's
    /// parameters, `process_limit` each transport's master.cf limit (else
    /// `default_process_limit`).
    pub fn new(
        settings: Settings,
        params: Box<dyn FnMut(&str) -> TransportParams>,
        workload: Vec<SimMessage>,
        destinations: HashMap<String, Destination>,
        process_limit: HashMap<String, usize>,
        default_process_limit: usize,
    ) -> Sim {
        let start = Instant::now();
        let active_limit = settings.active_limit.max(1) as usize;
        let n = workload.len();
        let mut sim = Sim {
            core: Scheduler::new(settings, params, start),
            start,
            now: start,
            workload,
            destinations,
            process_limit,
            default_process_limit,
            active_limit,
            cursor: vec![0; n],
            ids: vec![None; n],
            by_id: HashMap::new(),
            incoming: VecDeque::new(),
            events: BTreeMap::new(),
            seq: 0,
            busy_agents: HashMap::new(),
            waiting_connects: HashMap::new(),
            in_flight: HashMap::new(),
            busy_per_dest: HashMap::new(),
            next_delivery: 0,
            report: Report::default(),
        };
        sim.report.fates = sim
            .workload
            .iter()
            .map(|m| vec![None; m.recipients.len()])
            .collect();
        sim.report.completed = vec![None; n];
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

    /// Access to the core (for invariant checks in tests).
    pub fn core(&self) -> &Scheduler<SimRcpt> {
        &self.core
    }

    /// Runs until nothing is left to do or `limit` of virtual time passed.
    pub fn run(mut self, limit: Duration) -> Report {
        let end = self.start + limit;
        loop {
            self.feed_and_act();
            let next_ev = self.events.keys().next().map(|k| k.0);
            let next_timer = self.core.poll_timeout();
            let next = match (next_ev, next_timer) {
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
        self.report
    }

    /// Like the daemon's loop: act on the core, feed messages while there is
    /// room, act again.
    fn feed_and_act(&mut self) {
        loop {
            self.carry_out_actions();
            if self.by_id.len() >= self.active_limit || !self.core.admits_more() {
                break;
            }
            let Some(i) = self.incoming.pop_front() else {
                break;
            };
            let id = self.core.message_new(self.now);
            self.ids[i] = Some(id);
            self.by_id.insert(id, i);
            self.read_batch(i);
        }
        self.carry_out_actions();
    }

    fn read_batch(&mut self, i: usize) {
        let id = self.ids[i].expect("message in core");
        let limit = self.core.read_limit(id);
        let total = self.workload[i].recipients.len();
        let from = self.cursor[i];
        let to = (from + limit).min(total);
        self.cursor[i] = to;
        self.core
            .batch_read(id, (total - to) as i64, to < total, false, self.now);
        for r in from..to {
            let (transport, dest) = self.workload[i].recipients[r].clone();
            let address = format!("r{r}@{dest}");
            let a = Assignment {
                transport: &transport,
                nexthop: &dest,
                address: address.as_bytes(),
                flush_each: false,
                rcpt: SimRcpt { msg: i, rcpt: r },
            };
            if let Err((rcpt, _)) = self.core.assign(id, a, self.now) {
                self.report.fates[rcpt.msg][rcpt.rcpt]
                    .get_or_insert(Fate::Deferred(self.now - self.start));
            }
        }
        self.core.assigned(id);
    }

    fn limit_of(&self, transport: &str) -> usize {
        self.process_limit
            .get(transport)
            .copied()
            .unwrap_or(self.default_process_limit)
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
                    let busy = self.busy_agents.get(&transport).copied().unwrap_or(0);
                    if busy < self.limit_of(&transport) {
                        *self.busy_agents.entry(transport.clone()).or_default() += 1;
                        self.start_agent(transport, rate_delay);
                    } else {
                        *self.waiting_connects.entry(transport).or_default() += 1;
                    }
                }
                Action::Refill { msg } => {
                    let i = self.by_id[&msg];
                    if self.cursor[i] < self.workload[i].recipients.len() {
                        self.read_batch(i);
                    } else {
                        self.core.assigned(msg);
                    }
                }
                Action::MessageDone { msg } => {
                    let i = self.by_id[&msg];
                    if self.cursor[i] < self.workload[i].recipients.len() {
                        self.read_batch(i);
                    } else {
                        self.report.completed[i] = Some(self.elapsed());
                        self.by_id.remove(&msg);
                        self.core.message_free(msg);
                    }
                }
                Action::Defer { recipients, .. } => {
                    for r in recipients {
                        self.report.fates[r.msg][r.rcpt]
                            .get_or_insert(Fate::Deferred(self.now - self.start));
                    }
                }
            }
        }
    }

    /// An agent process took a connection: it is ready at once (after the
    /// transport rate delay).
    fn start_agent(&mut self, transport: String, rate_delay: Duration) {
        let at = self.now + rate_delay;
        // Readiness is handled as an event so that the core sees time pass.
        let slot = self.next_delivery;
        self.next_delivery += 1;
        self.in_flight
            .insert(slot, (EntryId(u32::MAX), transport, String::new()));
        self.push(at, Ev::AgentFree(slot));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive(i) => self.incoming.push_back(i),
            Ev::AgentFree(slot) => {
                let (_, transport, _) = self.in_flight.remove(&slot).expect("agent slot");
                match self.core.agent_ready(&transport, self.now) {
                    Some(e) => {
                        let entry = self.core.entry(e);
                        let dest = self.core.nexthop(entry.queue).to_string();
                        let first = entry.recipients[0].msg;
                        let n = entry.recipients.len();
                        let model = self
                            .destinations
                            .get(&dest)
                            .cloned()
                            .unwrap_or(Destination {
                                delivery_time: Duration::from_millis(10),
                                failure: None,
                            });
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
                        self.in_flight.insert(slot, (e, transport, dest));
                        self.push(self.now + model.delivery_time, Ev::Done(slot, 0));
                    }
                    None => self.release_agent(&transport),
                }
            }
            Ev::Done(slot, _) => {
                let (e, transport, dest) =
                    self.in_flight.remove(&slot).expect("delivery in flight");
                *self.busy_per_dest.get_mut(&dest).expect("busy dest") -= 1;
                let at = self.elapsed();
                // error(8) as `retry` defers, as `error` bounces, without a hop
                // status; real destinations succeed or fail as modelled.
                let (outcome, fate) = match transport.as_str() {
                    crate::sched::RETRY => (
                        Outcome::Replied {
                            retry: true,
                            hop: None,
                            reason_empty: true,
                        },
                        Fate::Deferred(at),
                    ),
                    crate::sched::ERROR => (Outcome::OK, Fate::Bounced(at)),
                    _ => match self.destinations.get(&dest).and_then(|d| d.failure.clone()) {
                        None => (Outcome::OK, Fate::Delivered(at)),
                        Some(r) => (
                            Outcome::Replied {
                                retry: true,
                                hop: Some(r),
                                reason_empty: false,
                            },
                            Fate::Deferred(at),
                        ),
                    },
                };
                let (_, recipients, _) = self.core.delivery_done(e, outcome, self.now);
                for r in recipients {
                    self.report.fates[r.msg][r.rcpt].get_or_insert(fate);
                }
                self.release_agent(&transport);
            }
        }
    }

    /// An agent process is free again: it takes the next waiting connection.
    fn release_agent(&mut self, transport: &str) {
        let waiting = self.waiting_connects.get_mut(transport);
        match waiting {
            Some(n) if *n > 0 => {
                *n -= 1;
                let delay = Duration::from_secs(self.core_rate_delay(transport));
                self.start_agent(transport.to_string(), delay);
            }
            _ => {
                if let Some(b) = self.busy_agents.get_mut(transport) {
                    *b = b.saturating_sub(1);
                }
            }
        }
    }

    fn core_rate_delay(&mut self, transport: &str) -> u64 {
        self.core
            .transport_params(transport)
            .xport_rate_delay
            .max(0) as u64
    }
}
