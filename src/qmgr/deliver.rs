//! Delivery replies (`qmgr/qmgr_deliver.c`): what an agent's final reply
//! means for the message and for the destination and transport
//! (`qmgr_deliver_update`), and a request that could not even be written.
//! Per-recipient results are in the bounce/defer/trace logs the agent
//! wrote; the reply only says whether something must be retried and
//! whether the destination itself failed.

use super::event::Event;
use super::{Action, Core, EntryId, MessageId, Reason};
use std::time::{Duration, Instant};

/// The text prefixed to a destination's failure reason when it is
/// throttled (`SUSPENDED`).
const SUSPENDED: &str = "delivery temporarily suspended: ";

/// An agent's final reply as the core needs it (`deliver_request_final`:
/// the hop DSN's status and reason, and the request status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentReply<'a> {
    /// The agent replied.
    Final {
        /// 0: every recipient is finished; else some must be retried.
        status: i32,
        /// The hop status: empty unless the destination itself failed.
        hop_status: &'a [u8],
        /// The hop reason (empty: good news for the destination).
        hop_reason: &'a [u8],
    },
    /// No usable reply: the agent died, timed out or spoke nonsense
    /// (`DELIVER_STAT_CRASH`).
    Crashed,
}

impl AgentReply<'static> {
    /// Every recipient is finished, nothing to say about the destination.
    pub const OK: AgentReply<'static> = AgentReply::Final {
        status: 0,
        hop_status: b"",
        hop_reason: b"",
    };
    /// Some recipient must be retried; nothing to say about the destination
    /// (error(8) as `retry`, or a recipient-level deferral).
    pub const DEFERRED: AgentReply<'static> = AgentReply::Final {
        status: -1,
        hop_status: b"",
        hop_reason: b"",
    };
}

/// How long a queue's or transport's delivery requests took, from the
/// request written to the reply read: requests answered so far and their
/// total time. rqmgr-only (Postfix's qmgr keeps no such figure);
/// `rqmgr status` shows the mean and `rqmgr forecast` uses it as each
/// destination's speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryTimes {
    /// Requests that got a reply (crashed or timed-out ones are left out).
    pub requests: u64,
    /// Their total time.
    pub total: Duration,
}

impl DeliveryTimes {
    /// The mean time per request, if any was timed.
    pub fn mean(&self) -> Option<Duration> {
        (self.requests > 0).then(|| self.total / self.requests.min(u64::from(u32::MAX)) as u32)
    }

    fn add(&mut self, elapsed: Duration) {
        self.requests += 1;
        self.total = self.total.saturating_add(elapsed);
    }
}

/// What a reply means (`qmgr_deliver_update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent replied. `retry`: some recipient must be retried. `hop`:
    /// the destination itself failed (the reply's DSN status was set).
    /// `reason_empty`: the reply's DSN reason was empty (positive feedback).
    Replied {
        retry: bool,
        hop: Option<Reason>,
        reason_empty: bool,
    },
    /// No usable reply.
    Crashed,
}

impl Outcome {
    /// A plain success.
    pub const OK: Outcome = Outcome::Replied {
        retry: false,
        hop: None,
        reason_empty: true,
    };

    /// Reads a reply (`qmgr_deliver_update`): a deferral with a DSN status
    /// is a problem of the destination itself (an invalid status becomes
    /// 4.0.0, an empty reason "unknown error"); a reply without a reason is
    /// good news for the destination.
    pub fn of(reply: AgentReply<'_>) -> Outcome {
        match reply {
            AgentReply::Crashed => Outcome::Crashed,
            AgentReply::Final {
                status,
                hop_status,
                hop_reason,
            } => {
                let retry = status != 0;
                let hop = (retry && !hop_status.is_empty()).then(|| {
                    let status = if crate::ipc::dsn_valid(hop_status) {
                        String::from_utf8_lossy(hop_status).into_owned()
                    } else {
                        "4.0.0".into()
                    };
                    let text = if hop_reason.is_empty() {
                        "unknown error".into()
                    } else {
                        String::from_utf8_lossy(hop_reason).into_owned()
                    };
                    Reason { status, text }
                });
                let reason_empty = hop.is_none() && hop_reason.is_empty();
                Outcome::Replied {
                    retry,
                    hop,
                    reason_empty,
                }
            }
        }
    }
}

impl<R> Core<R> {
    /// The request for `e` could not be written: the entry goes back and the
    /// transport is throttled like a failed connection (`qmgr_deliver`,
    /// "4.3.0 mail transport unavailable").
    pub fn write_failed(&mut self, e: EntryId, now: Instant) {
        let t = self.queues[self.entries[e].queue].transport;
        self.unselect_entry(e);
        self.throttle_transport(t, Reason::new("4.3.0", "mail transport unavailable"), now);
    }

    /// Entry `e`'s request got its reply after `elapsed`: counted in its
    /// queue's and transport's [`DeliveryTimes`]. Call it before
    /// [`Core::delivery_done`], for replies only (not for crashes); an
    /// unknown entry is ignored.
    pub fn delivery_timed(&mut self, e: EntryId, elapsed: Duration) {
        let Some(entry) = self.entries.get(e) else {
            return;
        };
        let q = entry.queue;
        let t = self.queues[q].transport;
        self.queues[q].times.add(elapsed);
        self.transports[t].times.add(elapsed);
    }

    /// An agent's reply to the request for `e` (`qmgr_deliver_update` +
    /// `qmgr_entry_done`): feedback for the destination and the transport,
    /// then the entry is released. Returns the entry's message and
    /// recipients.
    ///
    /// An agent that crashed (or whose reply is unusable) is not news about
    /// the destination or the transport: neither is throttled, and the next
    /// entry goes to a fresh agent (Postfix 3.7; HISTORY 20240209). Its
    /// recipients must be retried; rqmgr also defers them with "4.3.0
    /// unknown mail transport error" ([`Action::Defer`], returned instead of
    /// here), so that the queue says why (Postfix gives no reason).
    pub fn delivery_done(
        &mut self,
        e: EntryId,
        reply: AgentReply<'_>,
        now: Instant,
    ) -> (MessageId, Vec<R>) {
        let outcome = Outcome::of(reply);
        let q = self.entries[e].queue;
        let t = self.queues[q].transport;
        let msg = self.entries[e].msg;
        let event = Event::Delivered {
            transport: self.transports[t].name.clone(),
            queue: self.queues[q].name.clone(),
            recipients: self.entries[e].recipients.len(),
            outcome: outcome.clone(),
        };
        match outcome {
            Outcome::Crashed => {
                self.messages[msg].retry = true;
                // Postfix leaves the rate lock of a crashed delivery set
                // until it restarts; nothing is in flight, so release it.
                self.transports[t].rate_locked = false;
                self.emit(event);
                let (msg, recipients) = self.entry_done(e, true, now);
                self.actions.push_back(Action::Defer {
                    msg,
                    recipients,
                    reason: Reason::new("4.3.0", "unknown mail transport error"),
                });
                return (msg, Vec::new());
            }
            Outcome::Replied {
                retry,
                hop,
                reason_empty,
            } => {
                if retry {
                    self.messages[msg].retry = true;
                    if let Some(h) = &hop {
                        let reason = Reason::new(&h.status, &format!("{SUSPENDED}{}", h.text));
                        if self.queues[q].window > 0 {
                            self.throttle_queue(q, &reason, now);
                            if self.queues[q].window == 0 {
                                self.defer_todo(q, &reason, now);
                            }
                        }
                    }
                }
                self.unthrottle_transport(t);
                if reason_empty && hop.is_none() {
                    self.unthrottle_queue(q);
                }
            }
        }
        self.emit(event);
        self.entry_done(e, true, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: i32, hop_status: &'static str, hop_reason: &'static str) -> Outcome {
        Outcome::of(AgentReply::Final {
            status,
            hop_status: hop_status.as_bytes(),
            hop_reason: hop_reason.as_bytes(),
        })
    }

    fn retry(hop: Option<Reason>) -> Outcome {
        Outcome::Replied {
            retry: true,
            hop,
            reason_empty: false,
        }
    }

    #[test]
    fn replies_are_read_like_qmgr_deliver_update() {
        assert_eq!(reply(0, "", ""), Outcome::OK);
        assert_eq!(
            reply(-1, "4.4.1", "connect refused"),
            retry(Some(Reason::new("4.4.1", "connect refused")))
        );
        assert_eq!(
            reply(1, "x", ""),
            retry(Some(Reason::new("4.0.0", "unknown error")))
        );
        // A recipient deferred by the agent with a reason but no hop
        // status: no feedback either way for the destination.
        assert_eq!(reply(-1, "", "mailbox full"), retry(None));
        assert_eq!(Outcome::of(AgentReply::Crashed), Outcome::Crashed);
    }
}
