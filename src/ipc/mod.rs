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

use std::io::Read;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, BufReader, Interest, ReadBuf};

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
    pub reader: BufReader<PeerStream>,
}

/// A connected local socket, registered with the reactor for reading
/// only. A request is written at once (the socket buffer holds it); were
/// the buffer full, the write waits on a second registration that asks
/// for room. A socket registered for both would wake the process each
/// time the peer reads a request (an `EPOLLOUT` edge), while it waits for
/// the reply: one needless wake-up per delivery, resolve and notice.
pub struct PeerStream {
    fd: AsyncFd<std::os::unix::net::UnixStream>,
}

impl PeerStream {
    /// Registers a connected non-blocking socket.
    ///
    /// Errors: the reactor refuses it (no runtime, too many descriptors).
    pub fn new(stream: std::os::unix::net::UnixStream) -> std::io::Result<PeerStream> {
        // SAFETY: the stream owns its descriptor, open and unchanged for
        // the AsyncFd's lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }?;
        Ok(PeerStream { fd })
    }

    /// A read that never waits: `WouldBlock` when no byte is there.
    ///
    /// Errors: the read error, `WouldBlock`.
    pub fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&mut self.fd.get_ref()).read(buf)
    }

    /// A write that never waits, without SIGPIPE: bytes written, or
    /// `WouldBlock` when the socket buffer is full.
    ///
    /// Errors: the write error (EPIPE when the peer is gone), `WouldBlock`.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: send(2) from a valid buffer on a descriptor we own.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes some of `buf` once the socket has room, on a duplicate of
    /// the descriptor registered for writing (dropped afterwards).
    ///
    /// Errors: the write error; `dup` or the registration failing.
    async fn write_when_room(&self, buf: &[u8]) -> std::io::Result<usize> {
        let copy = self.fd.get_ref().try_clone()?;
        // SAFETY: the copy owns its descriptor, open and unchanged for the
        // AsyncFd's lifetime.
        let dup = unsafe { AsyncFd::register_with_interest(copy, Interest::WRITABLE) }?;
        loop {
            let mut guard = dup.writable().await?;
            if let Ok(result) = guard.try_io(|_| self.try_write(buf)) {
                return result;
            }
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match (&mut guard.get_inner()).read(unfilled) {
                Ok(n) => {
                    // A short read emptied the socket: the next read waits
                    // for the reactor instead of trying (and failing) first.
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
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
            Ok(s) => PeerStream::new(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(s) => s.into_std().and_then(PeerStream::new),
                    Err(e) => Err(e),
                }
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
        let stream = self.reader.get_ref();
        let mut rest = bytes;
        while !rest.is_empty() {
            let written = match stream.try_write(rest) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(timeout, stream.write_when_room(rest)).await {
                        Ok(r) => r,
                        Err(_) => return Err(timed_out()),
                    }
                }
                r => r,
            };
            match written {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
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

    /// A connected pair: a peer on one end, a plain blocking socket on
    /// the other.
    fn peer_pair() -> (Peer, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream = PeerStream::new(ours).unwrap();
        (
            Peer {
                reader: BufReader::with_capacity(PEER_BUFFER, stream),
            },
            theirs,
        )
    }

    /// A request far larger than the socket buffer arrives whole, in
    /// order, to a peer that reads it slowly; then the reply is read.
    #[tokio::test]
    async fn a_large_request_waits_for_room_and_the_reply_follows() {
        use std::io::Write;
        use tokio::io::AsyncBufReadExt;
        let (mut peer, theirs) = peer_pair();
        let request: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            while got.len() < 4_000_000 {
                std::thread::sleep(Duration::from_millis(1));
                let n = theirs.read(&mut buf).unwrap();
                assert!(n > 0, "the end before the whole request");
                got.extend_from_slice(&buf[..n]);
            }
            theirs.write_all(b"status\x000\x00\x00").unwrap();
            got
        });
        peer.send(&request, Duration::from_secs(30)).await.unwrap();
        let mut reply = Vec::new();
        while reply.len() < 10 {
            let buf = peer.reader.fill_buf().await.unwrap();
            assert!(!buf.is_empty(), "the end before the reply");
            reply.extend_from_slice(buf);
            let n = buf.len();
            peer.reader.consume(n);
        }
        assert_eq!(reply, b"status\x000\x00\x00");
        assert!(reader.join().unwrap() == request);
    }

    /// A peer that never reads: the write that finds no room fails
    /// after the timeout with ETIMEDOUT; one that hung up fails with EPIPE.
    #[tokio::test]
    async fn a_write_to_a_peer_that_never_reads_times_out() {
        let (mut peer, theirs) = peer_pair();
        let request = vec![0u8; 4_000_000];
        let e = peer
            .send(&request, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT));
        drop(theirs);
        let e = peer.send(b"x", Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }
}
