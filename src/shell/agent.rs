//! Delivery agent connections (`qmgr/qmgr_transport.c:qmgr_transport_alloc`,
//! `qmgr_transport_event`, `qmgr/qmgr_deliver.c:qmgr_deliver`): one task per
//! connection connects to `private/<transport>`, waits for the agent's
//! announcement (and the transport rate delay), asks the loop for the entry
//! to deliver, writes the request and waits for the reply. The core reads
//! the reply.
//!
//! Time limits as in Postfix 3.7: the announcement and the reply are each
//! waited for up to `daemon_timeout` (qmgr's watchdogs
//! `qmgr_transport_abort`, `qmgr_deliver_abort`); once bytes flow, each
//! read and each write is limited to `qmgr_ipc_timeout` (the stream
//! timeouts that `global/timed_ipc.c` sets). Where Postfix's qmgr ends
//! with a `fatal:` line at a watchdog timeout, rqmgr logs the same words
//! as a warning, and goes on (the announcement: the transport is throttled;
//! the reply: the recipients are deferred as for a crashed agent).

use super::{Daemon, Report};
use crate::ipc::attr::{read_announcement_with, AttrError, AttrList};
use crate::ipc::deliver::{self, encode_request, parse_reply, Reply, Request};
use crate::ipc::Peer;
use crate::proto::service::CLASS_PRIVATE;
use crate::qmgr::{AgentReply, EntryId};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

/// What the loop hands an agent session that announced itself: the entry
/// to deliver, its queue id (for the log) and the encoded request.
pub(super) struct Assignment {
    entry: EntryId,
    queue_id: String,
    request: Vec<u8>,
    /// The destination queue's name (for the `-v` line).
    site: std::rc::Rc<str>,
}

/// Time limits of one agent session.
struct AgentTimeouts {
    /// `daemon_timeout`: waiting for the agent's announcement and reply.
    daemon: Duration,
    /// `qmgr_ipc_timeout`: each read and write once bytes flow.
    ipc: Duration,
    /// `_transport_rate_delay`: pause between readiness and the request.
    rate_delay: Duration,
}

impl Daemon {
    /// Opens one agent connection in the background.
    pub(super) fn spawn_agent(&self, transport: &str, rate_delay: Duration) {
        let tx = self.reports_tx.clone();
        let timeouts = AgentTimeouts {
            daemon: Duration::from_secs(self.params.daemon_timeout as u64),
            ipc: Duration::from_secs(self.params.ipc_timeout as u64),
            rate_delay,
        };
        tokio::task::spawn_local(agent_session(transport.to_string(), tx, timeouts));
    }

    /// An agent is ready: the core picks the entry, the shell encodes the
    /// request (`qmgr_deliver_send_request`), or the connection is closed.
    pub(super) fn agent_ready(
        &mut self,
        transport: &str,
        reply: oneshot::Sender<Option<Assignment>>,
    ) {
        let now = Instant::now();
        let Some(e) = self.core.agent_ready(transport, now) else {
            let _ = reply.send(None);
            return;
        };
        let entry = self.core.entry(e);
        let m = &self.messages[entry.msg];
        let request = encode_request(&Request {
            queue_id: m.queue_id(),
            env: &m.env,
            nexthop: self.core.nexthop(entry.queue).as_bytes(),
            queue_dflags: self.core.queue_dflags(entry.queue),
            recipients: &entry.recipients,
            active_arrival: m.active_arrival,
            smtputf8_enable: self.params.smtputf8_enable,
        });
        let assignment = Assignment {
            entry: e,
            queue_id: m.queue_id().to_string(),
            request,
            site: self.core.site(entry.queue).clone(),
        };
        if reply.send(Some(assignment)).is_err() {
            self.core.delivery_done(e, AgentReply::Crashed, now);
        }
    }

    /// The agent's reply (or none) goes to the core.
    pub(super) fn delivery_done(&mut self, e: EntryId, reply: Option<&Reply>) {
        let reply = match reply {
            Some(r) => AgentReply::Final {
                status: r.status,
                hop_status: &r.hop.status,
                hop_reason: &r.hop.reason,
            },
            None => AgentReply::Crashed,
        };
        self.core.delivery_done(e, reply, Instant::now());
    }
}

/// One delivery agent connection: connect, wait for the announcement (and
/// the transport rate delay), ask the loop for an entry, send the request,
/// and report the reply.
async fn agent_session(
    transport: String,
    tx: mpsc::UnboundedSender<Report>,
    timeouts: AgentTimeouts,
) {
    let mut peer = match Peer::connect(CLASS_PRIVATE, &transport).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "connect to transport {CLASS_PRIVATE}/{transport}: {}",
                crate::log::errno_text(&e)
            );
            let _ = tx.send(Report::AgentFailed { transport });
            return;
        }
    };
    // The stream's name in warnings (built only for one).
    let socket = || format!("{CLASS_PRIVATE}/{transport} socket");
    // qmgr_transport_event: the first byte (or the end) within
    // daemon_timeout, else Postfix's qmgr ends ("timeout connecting to
    // transport").
    match first_byte(&mut peer, timeouts.daemon).await {
        Err(()) => {
            tracing::warn!("timeout connecting to transport: {transport}");
            let _ = tx.send(Report::AgentFailed { transport });
            return;
        }
        // An agent that hung up without a byte: Postfix's attr_scan0
        // returns quietly, as if the announcement had been read, and the
        // request's write fails (EPIPE) below.
        Ok(false) => {}
        Ok(true) => {
            let announced =
                read_announcement_with(&mut peer.reader, deliver::PROTOCOL, Some(timeouts.ipc))
                    .await;
            if let Err(e) = announced {
                malformed(&socket(), &e);
                let _ = tx.send(Report::AgentFailed { transport });
                return;
            }
        }
    }
    if !timeouts.rate_delay.is_zero() {
        tokio::time::sleep(timeouts.rate_delay).await;
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx
        .send(Report::AgentReady {
            transport: transport.clone(),
            reply: reply_tx,
        })
        .is_err()
    {
        return;
    }
    let Ok(Some(Assignment {
        entry,
        queue_id,
        request,
        site,
    })) = reply_rx.await
    else {
        return;
    };
    if let Err(e) = peer.send(&request, timeouts.ipc).await {
        tracing::warn!(
            "write to process ({transport}): {}",
            crate::log::errno_text(&e)
        );
        let _ = tx.send(Report::WriteFailed { entry });
        return;
    }
    tracing::debug!("qmgr_deliver: site `{site}'");
    let sent = Instant::now();
    // qmgr_deliver_abort: the reply within daemon_timeout.
    if first_byte(&mut peer, timeouts.daemon).await.is_err() {
        tracing::warn!("{queue_id}: timeout receiving delivery status from transport: {transport}");
        let _ = tx.send(Report::Replied {
            entry,
            reply: None,
            transport,
            elapsed: sent.elapsed(),
        });
        return;
    }
    let reply = AttrList::read_with(&mut peer.reader, Some(timeouts.ipc))
        .await
        .and_then(|l| parse_reply(&l));
    let reply = match reply {
        Ok(r) => Some(r),
        Err(e) => {
            malformed(&socket(), &e);
            None
        }
    };
    let _ = tx.send(Report::Replied {
        entry,
        reply,
        transport,
        elapsed: sent.elapsed(),
    });
}

/// Waits up to `limit` for the peer to send a byte or hang up: Ok(true)
/// for bytes (or a read error, which the next read reports), Ok(false) for
/// the end, Err on timeout.
async fn first_byte(peer: &mut Peer, limit: Duration) -> Result<bool, ()> {
    match tokio::time::timeout(limit, peer.reader.fill_buf()).await {
        Err(_) => Err(()),
        Ok(Ok(buf)) => Ok(!buf.is_empty()),
        Ok(Err(_)) => Ok(true),
    }
}

/// Logs an unusable announcement or reply as Postfix does: attr_scan0's
/// warning (if it gives one), then qmgr's `malformed response`.
fn malformed(socket: &str, e: &AttrError) {
    if let Some(w) = e.warning(socket) {
        tracing::warn!("{w}");
    }
    tracing::warn!("{socket}: malformed response");
}
