//! The status server: answers `rqmgr status`, `rqmgr explain` and the
//! backlog `rqmgr forecast` asks for on
//! [`crate::status::SOCKET`] (rqmgr-only; the socket follows Postfix's
//! private sockets, `util/unix_listen.c`: mode 0666 in the 0700 private
//! directory, owned by mail_owner).
//!
//! Nothing here can stall deliveries or master's triggers: each client has
//! its own task on the event loop's thread, which reads its request line
//! with a time limit, hands it to the loop as a [`Report::Query`], and
//! writes the answer with a time limit; the loop itself only takes the
//! core's snapshot. At most [`MAX_CLIENTS`] clients are served at once;
//! more are closed at once.

use super::{Daemon, Report};
use crate::qmgr::MessageId;
use crate::status::forecast::Backlog;
use crate::status::{Answer, Clock, Explain, Request, ScanView, Status};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Status clients served at once.
pub const MAX_CLIENTS: usize = 4;
/// Time limit for a client's request line, and for writing an answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates the status socket (replacing a stale one) and starts accepting
/// on it. Failures are warnings: the queue manager runs without it.
pub(super) fn spawn(reports: mpsc::UnboundedSender<Report>) {
    let path = crate::status::SOCKET;
    let _ = std::fs::remove_file(path);
    let listener = match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "bind {path}: {}: rqmgr status will not answer",
                crate::log::errno_text(&e)
            );
            return;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)) {
        tracing::warn!("chmod {path}: {}", crate::log::errno_text(&e));
    }
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("{path}: {}", crate::log::errno_text(&e));
            return;
        }
    };
    let clients = Rc::new(std::cell::Cell::new(0usize));
    tokio::task::spawn_local(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept {path}: {}", crate::log::errno_text(&e));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if clients.get() >= MAX_CLIENTS {
                tracing::debug!("{path}: too many status clients");
                drop(stream);
                continue;
            }
            clients.set(clients.get() + 1);
            let clients = clients.clone();
            let reports = reports.clone();
            tokio::task::spawn_local(async move {
                serve(stream, reports).await;
                clients.set(clients.get() - 1);
            });
        }
    });
}

/// Reads one request line (at most [`crate::status::MAX_REQUEST`] bytes).
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("request without a newline".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                return Request::parse(&buf[..end]);
            }
            if buf.len() > crate::status::MAX_REQUEST {
                return Err("request too long".to_string());
            }
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err("timeout reading the request".to_string()),
    }
}

async fn serve(mut stream: UnixStream, reports: mpsc::UnboundedSender<Report>) {
    let answer = match read_request(&mut stream).await {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if reports.send(Report::Query { request, reply: tx }).is_err() {
                return;
            }
            match rx.await {
                Ok(a) => a,
                Err(_) => return,
            }
        }
        Err(e) => Answer::Error(e),
    };
    // Serialised here, not in the event loop's turn.
    let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
    bytes.push(b'\n');
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

impl Daemon {
    /// Answers one status request: `status` from the core's summary,
    /// `explain` and `backlog` from its full snapshot.
    pub(super) fn answer(&self, request: &Request) -> Answer {
        let clock = Clock::now();
        match request {
            Request::Status => Answer::Status(Status::from_snapshot(
                &self.core.summary(clock.now),
                &clock,
                self.scan_view(crate::qmgr::scan::ScanQueue::Incoming),
                self.scan_view(crate::qmgr::scan::ScanQueue::Deferred),
            )),
            Request::Backlog => Answer::Backlog(self.backlog(&clock)),
            Request::Explain(id) => {
                let snap = self.core.snapshot(clock.now);
                let msg = self
                    .messages
                    .iter()
                    .find(|(_, m)| m.queue_id() == *id)
                    .map(|(k, _)| k);
                let queue_id_of =
                    |m: MessageId| self.messages.get(m).map(|m| m.queue_id().to_string());
                let address =
                    |r: &crate::qfile::Recipient| String::from_utf8_lossy(r.address()).into_owned();
                match msg {
                    Some(msg) => Answer::Explain(Explain::in_core(
                        &snap,
                        msg,
                        id,
                        &clock,
                        &address,
                        &queue_id_of,
                    )),
                    None => Answer::Explain(Explain {
                        queue_id: id.clone(),
                        place: crate::status::Place::Unknown,
                        due: None,
                        notes: vec!["not in the queue manager's memory".into()],
                        recipients: Vec::new(),
                    }),
                }
            }
        }
    }

    /// The active queue for `rqmgr forecast`, from the core's full
    /// snapshot (recipients are counted, not sent).
    fn backlog(&self, clock: &Clock) -> Backlog {
        let snap = self.core.snapshot(clock.now);
        let of = |m: MessageId| {
            self.messages
                .get(m)
                .map(|m| (m.queue_id().to_string(), m.env.create_time))
        };
        Backlog::from_snapshot(
            &snap,
            clock,
            &of,
            self.scan_view(crate::qmgr::scan::ScanQueue::Incoming),
            self.scan_view(crate::qmgr::scan::ScanQueue::Deferred),
        )
    }

    fn scan_view(&self, q: crate::qmgr::scan::ScanQueue) -> ScanView {
        self.scans.view(q)
    }
}
