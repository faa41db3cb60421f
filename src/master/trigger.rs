//! The trigger listener (`master/trigger_server.c`): accept a trigger on the
//! descriptor master(8) gave us (unix socket, FIFO, or descriptor-passing
//! socket), tell the master we are busy, read at most 1024 bytes, hand them
//! to the event loop, and tell the master we are available again. A failed
//! AVAIL update means the master is gone: exit.
//!
//! After `postfix reload` the master closes its end of the status channel
//! and at once sends the service a wake-up trigger, meant for the queue
//! manager it starts next (`master_restart_service`). As in Postfix
//! (`trigger_server_abort`), the process exits as soon as it sees the
//! master gone, whatever the event loop is doing: a task waits for that
//! ([`master_gone`]), and the listener looks first ([`master_is_gone`])
//! so that it never takes a trigger meant for the next process: one that
//! arrives after the master went away stays queued, and the master starts
//! the new queue manager on it once this one has exited.

use super::{notify, ServiceType, LISTEN_FD, STAT_AVAIL, STAT_TAKEN};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

/// Bytes of one trigger (`TRIGGER_BUF_SIZE` = 1024 at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerBytes(pub Vec<u8>);

const TRIGGER_BUF_SIZE: usize = 1024;
/// How long a unix trigger client may take to send its bytes.
const TRIGGER_READ_WAIT: Duration = Duration::from_secs(10);
/// How long a pass client may take to send its descriptor.
const PASS_ACCEPT_WAIT: Duration = Duration::from_secs(100);

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl flag manipulation on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Registers an owned descriptor with the reactor.
fn register<T: AsRawFd>(inner: T, interest: tokio::io::Interest) -> Option<AsyncFd<T>> {
    // SAFETY: every T passed here owns (or, for the status descriptor,
    // permanently borrows) an open descriptor that stays open and unchanged
    // for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(inner, interest) }.ok()
}

fn read_nonblocking(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a valid buffer from an open descriptor.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether the master closed its end of the status channel (`postfix
/// reload`, `postfix stop`): the status descriptor reads as EOF. Never
/// blocks.
fn master_is_gone() -> bool {
    readable_now(super::STATUS_FD)
}

/// Accepts one connection on the listening socket `fd`, already
/// non-blocking and close-on-exec (`accept4`: no fcntl per trigger).
fn accept_nonblocking(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: accept4 on a listening socket we own, without a peer address.
    let conn = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if conn < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: the kernel just gave us this descriptor; we own it.
        Ok(unsafe { OwnedFd::from_raw_fd(conn) })
    }
}

/// Whether `fd` has bytes (or its end) to read now (`read_wait` with no
/// wait). Never blocks.
fn readable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// Reads one trigger from a connected non-blocking descriptor: wait up to
/// 10 s for data (`read_wait`), then [`take_trigger`]. A client has
/// usually written its bytes before the accept: then no registration
/// with the reactor and no timer.
async fn serve_one(fd: OwnedFd, generation: u32, tx: &UnboundedSender<TriggerBytes>) {
    if readable_now(fd.as_raw_fd()) {
        take_trigger(fd.as_raw_fd(), generation, tx);
        return;
    }
    let Some(afd) = register(fd, tokio::io::Interest::READABLE) else {
        return;
    };
    let ready = tokio::time::timeout(TRIGGER_READ_WAIT, afd.readable()).await;
    if let Ok(Ok(_guard)) = ready {
        take_trigger(afd.as_raw_fd(), generation, tx);
    }
}

/// TAKEN, one read of at most 1024 bytes handed over, AVAIL
/// (`trigger_server_wakeup`); a failed AVAIL means the master is gone.
fn take_trigger(fd: RawFd, generation: u32, tx: &UnboundedSender<TriggerBytes>) {
    let _ = notify(generation, STAT_TAKEN);
    let mut buf = [0u8; TRIGGER_BUF_SIZE];
    if let Ok(n) = read_nonblocking(fd, &mut buf) {
        let _ = tx.send(TriggerBytes(buf[..n].to_vec()));
    }
    if notify(generation, STAT_AVAIL).is_err() {
        std::process::exit(0);
    }
}

/// Receives one descriptor over a unix socket (`LOCAL_RECV_FD`).
fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave us this descriptor; we own it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("no descriptor received"))
}

/// Ends the process because the master went away (`trigger_server_abort`):
/// what was in flight stays in the active queue for the next queue manager.
fn exit_master_gone() -> ! {
    tracing::debug!("master disconnect -- exiting");
    std::process::exit(0);
}

/// Starts the listener task for `kind` on fd 6 (trigger bytes arrive on
/// `tx`), and the task that ends the process when the master goes away.
///
/// Errors: the listen descriptor is unusable.
pub fn spawn_listener(
    kind: ServiceType,
    generation: u32,
    tx: UnboundedSender<TriggerBytes>,
) -> std::io::Result<()> {
    tokio::task::spawn_local(async {
        master_gone().await;
        exit_master_gone();
    });
    set_nonblocking(LISTEN_FD);
    match kind {
        ServiceType::Unix | ServiceType::Pass => {
            // SAFETY: master(8) passes the listening socket as fd 6; we take
            // ownership once, here.
            let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTEN_FD) };
            listener.set_nonblocking(true)?;
            let listener = register(listener, tokio::io::Interest::READABLE)
                .ok_or_else(|| std::io::Error::other("cannot register the listen socket"))?;
            tokio::task::spawn_local(async move {
                loop {
                    let Ok(mut guard) = listener.readable().await else {
                        return;
                    };
                    if master_is_gone() {
                        exit_master_gone();
                    }
                    let conn = match guard.try_io(|l| accept_nonblocking(l.as_raw_fd())) {
                        Ok(Ok(fd)) => fd,
                        Ok(Err(e)) => {
                            tracing::error!("accept connection: {}", crate::log::errno_text(&e));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Err(_would_block) => continue,
                    };
                    if kind == ServiceType::Unix {
                        serve_one(conn, generation, &tx).await;
                        continue;
                    }
                    // pass: wait for a descriptor, then serve it like a unix client.
                    let Some(aconn) = register(conn, tokio::io::Interest::READABLE) else {
                        continue;
                    };
                    match tokio::time::timeout(PASS_ACCEPT_WAIT, aconn.readable()).await {
                        Ok(Ok(_guard)) => match recv_fd(aconn.as_raw_fd()) {
                            Ok(fd) => {
                                drop(aconn);
                                set_nonblocking(fd.as_raw_fd());
                                serve_one(fd, generation, &tx).await;
                            }
                            Err(e) => tracing::warn!(
                                "pass_accept: cannot receive file descriptor: {}",
                                crate::log::errno_text(&e)
                            ),
                        },
                        _ => tracing::warn!("pass_accept: timeout receiving file descriptor"),
                    }
                }
            });
        }
        ServiceType::Fifo => {
            // SAFETY: master(8) passes the FIFO (opened read-write) as fd 6.
            let fifo = unsafe { OwnedFd::from_raw_fd(LISTEN_FD) };
            let afd = register(fifo, tokio::io::Interest::READABLE)
                .ok_or_else(|| std::io::Error::other("cannot register the FIFO"))?;
            tokio::task::spawn_local(async move {
                let mut buf = [0u8; TRIGGER_BUF_SIZE];
                loop {
                    let Ok(mut guard) = afd.readable().await else {
                        return;
                    };
                    if master_is_gone() {
                        exit_master_gone();
                    }
                    let _ = notify(generation, STAT_TAKEN);
                    match guard.try_io(|fd| read_nonblocking(fd.as_raw_fd(), &mut buf)) {
                        Ok(Ok(n)) if n > 0 => {
                            let _ = tx.send(TriggerBytes(buf[..n].to_vec()));
                        }
                        _ => {}
                    }
                    if notify(generation, STAT_AVAIL).is_err() {
                        std::process::exit(0);
                    }
                }
            });
        }
    }
    Ok(())
}

/// Resolves when the master goes away (`postfix reload`, `postfix stop`):
/// the status descriptor becomes readable (EOF).
async fn master_gone() {
    let fd = super::STATUS_FD;
    struct Borrowed(RawFd);
    impl AsRawFd for Borrowed {
        fn as_raw_fd(&self) -> RawFd {
            self.0
        }
    }
    set_nonblocking(fd);
    match register(Borrowed(fd), tokio::io::Interest::READABLE) {
        Some(afd) => {
            let _ = afd.readable().await;
        }
        None => std::future::pending::<()>().await,
    }
}
