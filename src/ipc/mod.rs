//! Talking to other Postfix daemons over their unix sockets: the attribute
//! protocol, and one client per peer (trivial-rewrite, delivery agents,
//! bounce/defer/trace).
//!
//! Sockets are `private/<service>` relative to the queue directory, as
//! `global/mail_connect.c` opens them.

pub mod attr;
pub mod bounce;
pub mod deliver;
pub mod flush;
pub mod rewrite;
pub mod verify;

use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A delivery status (`global/dsn.h`): what a recipient's delivery attempt
/// came to, as agents and the bounce service exchange it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dsn {
    /// `x.y.z` status code.
    pub status: Vec<u8>,
    pub diag_type: Vec<u8>,
    pub diag_text: Vec<u8>,
    pub mta_type: Vec<u8>,
    pub mta_mname: Vec<u8>,
    /// `delayed`, `failed`, `delivered`...
    pub action: Vec<u8>,
    /// Human-readable text.
    pub reason: Vec<u8>,
}

impl Dsn {
    /// A status code and reason only (`DSN_SIMPLE`).
    pub fn simple(status: &str, reason: &str) -> Dsn {
        Dsn {
            status: status.into(),
            reason: reason.into(),
            ..Dsn::default()
        }
    }

    /// Splits `"4.3.0 text"` (the nexthop of the `retry`/`error` transports)
    /// into a DSN, as error(8)'s `dsn_split` does; `default_status` applies
    /// when the text does not start with a valid code.
    pub fn split(text: &str, default_status: &str) -> Dsn {
        let (code, rest) = match text.split_once(' ') {
            Some((c, r)) if dsn_valid(c.as_bytes()) => (c, r.trim_start()),
            _ if dsn_valid(text.as_bytes()) => (text, ""),
            _ => (default_status, text),
        };
        Dsn::simple(code, rest)
    }
}

/// True for a well-formed status code `d.ddd.ddd` with class 2, 4 or 5
/// (`global/dsn_util.c:dsn_valid`).
pub fn dsn_valid(code: &[u8]) -> bool {
    let text = match std::str::from_utf8(code) {
        Ok(t) => t,
        Err(_) => return false,
    };
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && (1..=3).contains(&parts[1].len())
        && (1..=3).contains(&parts[2].len())
        && parts[1..]
            .iter()
            .all(|p| p.bytes().all(|c| c.is_ascii_digit()))
}

/// Read buffer of a peer connection, bytes (tokio zero-fills it on every
/// connect, so it stays small).
const PEER_BUFFER: usize = 1024;

/// A connected peer: one socket, read through a buffer.
pub struct Peer {
    pub reader: BufReader<UnixStream>,
}

impl Peer {
    /// Connects to `class/service` (relative to the queue directory). A
    /// local connect completes at once; only when the service's listen
    /// queue is full does it wait, the way tokio connects.
    ///
    /// Errors: the connect error.
    pub async fn connect(class: &str, service: &str) -> std::io::Result<Peer> {
        let mut path = String::with_capacity(class.len() + 1 + service.len());
        path.push_str(class);
        path.push('/');
        path.push_str(service);
        let stream = match connect_now(&path) {
            Ok(s) => UnixStream::from_std(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                UnixStream::connect(&path).await
            }
            Err(e) => Err(e),
        };
        // mail_connect's -v lines.
        let stream = match stream {
            Ok(s) => {
                tracing::debug!("connect to subsystem {path}");
                s
            }
            Err(e) => {
                tracing::debug!(
                    "connect to subsystem {path}: {}",
                    crate::log::errno_text(&e)
                );
                return Err(e);
            }
        };
        Ok(Peer {
            // Replies are small; a large token is read in several fills.
            reader: BufReader::with_capacity(PEER_BUFFER, stream),
        })
    }

    /// Writes `bytes`, each write limited to `timeout`, as Postfix's
    /// stream timeouts limit each write(2) (`util/vstream.c`,
    /// `util/timed_write.c`; qmgr sets them to `qmgr_ipc_timeout`): a peer
    /// that reads slowly is waited for, one that stops reading for
    /// `timeout` fails the write.
    ///
    /// Errors: the write error, or ETIMEDOUT ("Connection timed out").
    pub async fn send(&mut self, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
        let stream = self.reader.get_mut();
        let mut rest = bytes;
        while !rest.is_empty() {
            match tokio::time::timeout(timeout, stream.write(rest)).await {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timed_out()),
            }
        }
        Ok(())
    }
}

/// ETIMEDOUT, which Postfix's `%m` shows as "Connection timed out".
pub fn timed_out() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::ETIMEDOUT)
}

/// A non-blocking connect to a local socket: done at once, or
/// `WouldBlock` when the listen queue is full.
fn connect_now(path: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) returns a new descriptor we own (or -1).
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is ours; the stream closes it on every path below.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= sun.sun_path.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    for (d, &b) in sun.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: connect with a valid sockaddr_un of length `len`.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sun as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(stream)
    } else {
        let e = std::io::Error::last_os_error();
        Err(if e.raw_os_error() == Some(libc::EAGAIN) {
            std::io::ErrorKind::WouldBlock.into()
        } else {
            e
        })
    }
}

/// Why a request to a Postfix service failed (the text of the warning).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("connect to {class}/{service}: {text}")]
    Connect {
        class: &'static str,
        service: String,
        text: String,
    },
    #[error("read {class}/{service}: {error}")]
    Read {
        class: &'static str,
        service: String,
        error: attr::AttrError,
    },
    #[error("write {class}/{service}: {text}")]
    Write {
        class: &'static str,
        service: String,
        text: String,
    },
    #[error("{class}/{service}: status {status}")]
    Status {
        class: &'static str,
        service: String,
        status: i32,
    },
}

impl ServiceError {
    /// What went wrong, without the service's name (Postfix's `%m`).
    pub fn cause(&self) -> String {
        match self {
            ServiceError::Connect { text, .. } | ServiceError::Write { text, .. } => text.clone(),
            ServiceError::Read { error, .. } => error.to_string(),
            ServiceError::Status { status, .. } => format!("status {status}"),
        }
    }

    /// The connection failed because the socket does not exist (the
    /// service is not configured or master is not running it).
    pub fn no_such_socket(&self) -> bool {
        matches!(self, ServiceError::Connect { text, .. } if text == "No such file or directory")
    }

    /// A failure a persistent client does not report the first time
    /// (errno ENOENT or EPIPE: the service went away, or closed an idle
    /// connection).
    pub fn gone_away(&self) -> bool {
        self.no_such_socket()
            || matches!(self, ServiceError::Write { text, .. } if text == "Broken pipe")
    }
}

/// One request to a Postfix service, silent about failures (as
/// `global/abounce.c` is): connect to `class/service`, read its `protocol`
/// announcement, send `request` (one encoded attribute list), read the
/// `status` reply. Each read and each write is limited by `timeout`, as
/// the stream timeouts that `global/timed_ipc.c` sets.
///
/// Errors: [`ServiceError`] for a failed connect, write or read (protocol
/// or timeout).
pub async fn command(
    class: &'static str,
    service: &str,
    protocol: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<i32, ServiceError> {
    let mut peer = Peer::connect(class, service)
        .await
        .map_err(|e| ServiceError::Connect {
            class,
            service: service.to_string(),
            text: crate::log::errno_text(&e),
        })?;
    exchange(&mut peer, class, service, protocol, request, timeout).await
}

/// [`command`] as `global/mail_command_client.c` does it: a failure is
/// logged with attr_scan0's warning for an unusable answer, and with the
/// client's own for a failed connect (`connect to public/flush: No such
/// file or directory`) or write (`write private/defer socket: Broken
/// pipe`).
///
/// Errors: as [`command`].
pub async fn command_client(
    class: &'static str,
    service: &str,
    protocol: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<i32, ServiceError> {
    let result = command(class, service, protocol, request, timeout).await;
    match &result {
        Err(e @ ServiceError::Connect { .. }) => tracing::warn!("{e}"),
        Err(ServiceError::Write { text, .. }) => {
            tracing::warn!("write {class}/{service} socket: {text}")
        }
        Err(ServiceError::Read { error, .. }) => {
            if let Some(w) = error.warning(&format!("{class}/{service} socket")) {
                tracing::warn!("{w}");
            }
        }
        Ok(_) | Err(ServiceError::Status { .. }) => {}
    }
    result
}

/// Pause between failed connects (`mail_connect_wait`).
pub const CONNECT_RETRY: Duration = Duration::from_secs(10);

/// Connects to `class/service` as `global/mail_connect.c:mail_connect_wait`
/// does: a failed connect is logged (`connect #N to subsystem
/// private/verify: No such file or directory`) and retried after
/// [`CONNECT_RETRY`], spent in `pause`. Postfix ends the process at the
/// 11th attempt; rqmgr keeps trying.
pub async fn connect_wait<F, Fut>(class: &str, service: &str, mut pause: F) -> Peer
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut attempt = 0;
    loop {
        match Peer::connect(class, service).await {
            Ok(p) => return p,
            Err(e) => {
                attempt += 1;
                tracing::warn!(
                    "connect #{attempt} to subsystem {class}/{service}: {}",
                    crate::log::errno_text(&e)
                );
                pause(CONNECT_RETRY).await;
            }
        }
    }
}

/// One request on a connected `peer`: read the `protocol` announcement,
/// send `request`, read the `status` reply, each step limited by
/// `timeout`.
///
/// Errors: [`ServiceError`] for a failed write or read.
pub async fn exchange(
    peer: &mut Peer,
    class: &'static str,
    service: &str,
    protocol: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<i32, ServiceError> {
    let read = |error| ServiceError::Read {
        class,
        service: service.to_string(),
        error,
    };
    attr::read_announcement_with(&mut peer.reader, protocol, Some(timeout))
        .await
        .map_err(read)?;
    peer.send(request, timeout)
        .await
        .map_err(|e| ServiceError::Write {
            class,
            service: service.to_string(),
            text: crate::log::errno_text(&e),
        })?;
    let reply = attr::AttrList::read_with(&mut peer.reader, Some(timeout))
        .await
        .map_err(read)?;
    let v = reply.expect(&["status"]).map_err(read)?;
    attr::parse_int("status", v[0]).map_err(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_codes() {
        assert!(dsn_valid(b"4.4.1"));
        assert!(dsn_valid(b"5.1.1"));
        assert!(!dsn_valid(b"3.1.1"));
        assert!(!dsn_valid(b"4.4"));
        assert!(!dsn_valid(b""));
        let d = Dsn::split("4.3.2 deferred transport", "4.0.0");
        assert_eq!(
            (d.status.as_slice(), d.reason.as_slice()),
            (&b"4.3.2"[..], &b"deferred transport"[..])
        );
        let d = Dsn::split("no code here", "5.0.0");
        assert_eq!(d.status, b"5.0.0");
    }
}
