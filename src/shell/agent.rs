//! Delivery agent connections (`qmgr/qmgr_transport.c:qmgr_transport_alloc`,
//! `qmgr_transport_event`, `qmgr/qmgr_deliver.c:qmgr_deliver`): one task per
//! connection connects to `private/<transport>`, waits for the agent's
//! announcement (and the transport rate delay), asks the loop for the entry
//! to deliver, writes the request and waits for the reply. The core reads
//! the reply.

use super::{Daemon, Delivery, Report};
use crate::ipc::attr::{read_announcement, AttrList};
use crate::ipc::deliver::{self, encode_request, parse_reply, Reply, Request};
use crate::ipc::{with_timeout, Peer};
use crate::proto::service::CLASS_PRIVATE;
use crate::qmgr::{AgentReply, EntryId};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Time limits of one agent session.
struct AgentTimeouts {
    /// `daemon_timeout`: waiting for the agent's announcement and reply.
    daemon: Duration,
    /// `qmgr_ipc_timeout`: writing the request.
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
        reply: oneshot::Sender<Option<Delivery>>,
    ) {
        let now = Instant::now();
        let Some(e) = self.core.agent_ready(transport, now) else {
            let _ = reply.send(None);
            return;
        };
        let entry = self.core.entry(e);
        let m = &self.messages[&entry.msg];
        let request = encode_request(&Request {
            queue_id: &m.queue_id,
            env: &m.env,
            nexthop: self.core.nexthop(entry.queue).as_bytes(),
            queue_dflags: self.core.queue_dflags(entry.queue),
            recipients: &entry.recipients,
            active_arrival: m.active_arrival,
            smtputf8_enable: self.params.smtputf8_enable,
        });
        let site = self.core.site(entry.queue).clone();
        let delivery = Delivery {
            entry: e,
            request,
            site,
        };
        if reply.send(Some(delivery)).is_err() {
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
    let socket = format!("{CLASS_PRIVATE}/{transport} socket");
    if with_timeout(
        timeouts.daemon,
        read_announcement(&mut peer.reader, deliver::PROTOCOL),
    )
    .await
    .is_err()
    {
        tracing::warn!("{socket}: malformed response");
        let _ = tx.send(Report::AgentFailed { transport });
        return;
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
    let Ok(Some(Delivery {
        entry,
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
    let reply = with_timeout(timeouts.daemon, AttrList::read(&mut peer.reader)).await;
    let reply = match reply.and_then(|l| parse_reply(&l)) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::warn!("{socket}: malformed response");
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
