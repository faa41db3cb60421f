//! The contract with master(8), as a trigger server (`master/trigger_server.c`,
//! `master/master_proto.[ch]`, `master/mail_flow.c`): the generic daemon
//! options master passes, the inherited descriptors (flow-control pipe on 3
//! and 4, status channel on 5, listener on 6), status updates (TAKEN before
//! a trigger is read, AVAIL after), privilege drop and chroot, and the
//! watchdog.

mod options;
mod trigger;

pub use options::{DaemonOptions, ServiceType};
pub use trigger::{spawn_listener, TriggerBytes};

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Read end of the master's flow-control pipe (`MASTER_FLOW_READ`).
pub const FLOW_READ_FD: RawFd = 3;
/// Write end of the flow-control pipe (`MASTER_FLOW_WRITE`).
pub const FLOW_WRITE_FD: RawFd = 4;
/// Status channel to the master (`MASTER_STATUS_FD`).
pub const STATUS_FD: RawFd = 5;
/// First listen descriptor (`MASTER_LISTEN_FD`).
pub const LISTEN_FD: RawFd = 6;

/// `MASTER_STAT_TAKEN`: busy handling a trigger.
pub const STAT_TAKEN: i32 = 0;
/// `MASTER_STAT_AVAIL`: idle.
pub const STAT_AVAIL: i32 = 1;

/// What can go wrong in the contract with master(8); each text is
/// Postfix's fatal line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    #[error("bad generation: {0}")]
    BadGeneration(String),
    #[error("unsupported transport type: {0}")]
    UnsupportedType(String),
    #[error("no transport type specified")]
    NoType,
    #[error("unknown mail_owner user: {0}")]
    UnknownOwner(String),
    #[error("mail_owner {0} must not be root")]
    RootOwner(String),
    /// A system call failed: the call as Postfix names it, and strerror.
    #[error("{call}: {text}")]
    System { call: String, text: String },
}

impl MasterError {
    fn system(call: String, e: nix::Error) -> MasterError {
        MasterError::System {
            call,
            text: e.desc().to_string(),
        }
    }
}

/// Parses the `GENERATION` the master puts in our environment (octal digits).
///
/// Errors: [`MasterError::BadGeneration`] for a non-octal value.
pub fn generation_from_env() -> Result<u32, MasterError> {
    match std::env::var("GENERATION") {
        Err(_) => Ok(0),
        Ok(g) => {
            if g.is_empty() || !g.bytes().all(|c| c.is_ascii_digit()) {
                return Err(MasterError::BadGeneration(g));
            }
            u32::from_str_radix(&g, 8).map_err(|_| MasterError::BadGeneration(g))
        }
    }
}

/// Sends a status update on fd 5: the 12-byte native-endian struct
/// `{ int pid; unsigned gen; int avail; }` in one write (`master_notify`).
/// The pid is looked up once: a TAKEN and an AVAIL go with every trigger.
///
/// Errors: the write error (for AVAIL the caller exits, as Postfix does).
pub fn notify(generation: u32, status: i32) -> std::io::Result<()> {
    static PID: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(|| std::process::id() as i32);
    let mut msg = [0u8; 12];
    msg[0..4].copy_from_slice(&pid.to_ne_bytes());
    msg[4..8].copy_from_slice(&generation.to_ne_bytes());
    msg[8..12].copy_from_slice(&status.to_ne_bytes());
    // SAFETY: writing a stack buffer to a descriptor we inherited; a closed
    // descriptor just yields EBADF.
    let n = unsafe { libc::write(STATUS_FD, msg.as_ptr().cast(), msg.len()) };
    if n == msg.len() as isize {
        Ok(())
    } else if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Err(std::io::ErrorKind::WriteZero.into())
    }
}

/// True if `fd` is open.
pub fn fd_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries descriptor flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Marks `fd` close-on-exec.
pub fn close_on_exec(fd: RawFd) {
    // SAFETY: F_SETFD on a descriptor number; harmless if it is not open.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// Mail flow control (`master/mail_flow.c`): qmgr keeps the master's token
/// pipe filled so that cleanup(8) does not wait `in_flow_delay`.
#[derive(Debug, Clone, Copy)]
pub struct Flow;

impl Flow {
    /// Tokens in the pipe (`mail_flow_count`), or `None` without a pipe.
    pub fn count() -> Option<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let r = unsafe { libc::ioctl(FLOW_READ_FD, libc::FIONREAD, &mut n) };
        (r >= 0).then_some(n.max(0) as usize)
    }

    /// Adds `n` tokens (NUL bytes) to the pipe (`mail_flow_put`).
    pub fn put(n: usize) {
        let buf = [0u8; 1024];
        Self::transfer(n, |chunk| {
            // SAFETY: writing a stack buffer to the inherited non-blocking pipe.
            unsafe { libc::write(FLOW_WRITE_FD, buf.as_ptr().cast(), chunk) }
        });
    }

    /// Removes `n` tokens from the pipe (`mail_flow_get`).
    pub fn get(n: usize) {
        let mut buf = [0u8; 1024];
        Self::transfer(n, |chunk| {
            // SAFETY: reading into a stack buffer from the non-blocking pipe.
            unsafe { libc::read(FLOW_READ_FD, buf.as_mut_ptr().cast(), chunk) }
        });
    }

    /// Moves `n` tokens in chunks of at most 1024 with `io` (a read or
    /// write returning the count moved), until done or the pipe would block.
    fn transfer(n: usize, mut io: impl FnMut(usize) -> isize) {
        let mut left = n;
        while left > 0 {
            let moved = io(left.min(1024));
            if moved <= 0 {
                break;
            }
            left -= moved as usize;
        }
    }

    /// One round of qmgr's flow control (`qmgr_loop`): keep
    /// `default_process_limit` tokens in the pipe; after feeding messages
    /// from incoming give one back for each (up to the target); while an
    /// incoming scan runs, do not refill beyond that.
    pub fn regulate(target: usize, fed_from_incoming: usize, incoming_scan_running: bool) {
        let Some(count) = Flow::count() else { return };
        if count < target {
            if fed_from_incoming > 0 {
                Flow::put(fed_from_incoming.min(target - count));
            } else if !incoming_scan_running {
                Flow::put(target - count);
            }
        } else if count > target {
            Flow::get(count - target);
        }
    }
}

/// Switches to `user` (its uid, gid and supplementary groups), chrooting to
/// `chroot_dir` first if given (`util/chroot_uid.c`).
///
/// Errors: [`MasterError`] for an unknown or root `mail_owner`, or a failed
/// system call (named as Postfix names it, with strerror).
pub fn drop_privileges(user: Option<&str>, chroot_dir: Option<&str>) -> Result<(), MasterError> {
    use nix::unistd::{chdir, chroot, initgroups, setgid, setuid, User};
    let sys = MasterError::system;
    let account = match user {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| sys(format!("getpwnam {name}"), e))?
                .ok_or_else(|| MasterError::UnknownOwner(name.to_string()))?,
        ),
        None => None,
    };
    if let Some(u) = &account {
        if u.uid.is_root() {
            return Err(MasterError::RootOwner(u.name.clone()));
        }
        setgid(u.gid).map_err(|e| sys(format!("setgid({})", u.gid), e))?;
        let cname = std::ffi::CString::new(u.name.clone())
            .map_err(|_| MasterError::UnknownOwner(u.name.clone()))?;
        initgroups(&cname, u.gid).map_err(|e| sys("initgroups".into(), e))?;
    }
    if let Some(dir) = chroot_dir {
        chroot(dir).map_err(|e| sys(format!("chroot({dir})"), e))?;
        chdir("/").map_err(|e| sys("chdir(/)".into(), e))?;
    }
    if let Some(u) = &account {
        setuid(u.uid).map_err(|e| sys(format!("setuid({})", u.uid), e))?;
    }
    Ok(())
}

/// The watchdog (`util/watchdog.c`): a thread that ends the process with
/// `fatal: watchdog timeout` when the event loop has not completed an
/// iteration for `timeout`. The loop calls [`Watchdog::pet`] every round.
#[derive(Clone)]
pub struct Watchdog {
    beats: Arc<AtomicU64>,
}

impl Watchdog {
    /// Starts the watchdog thread; it checks every `timeout / 3`, and fires
    /// after three checks without progress (as Postfix's three alarms).
    pub fn start(timeout: Duration) -> Watchdog {
        let beats = Arc::new(AtomicU64::new(0));
        let seen = beats.clone();
        let step = (timeout / 3).max(Duration::from_millis(10));
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut last = seen.load(Ordering::Relaxed);
                let mut trips = 0;
                loop {
                    std::thread::sleep(step);
                    let now = seen.load(Ordering::Relaxed);
                    if now != last {
                        last = now;
                        trips = 0;
                        continue;
                    }
                    trips += 1;
                    if trips >= 3 {
                        crate::log::fatal("watchdog timeout");
                    }
                }
            })
            .expect("spawn watchdog thread");
        Watchdog { beats }
    }

    /// Tells the watchdog the event loop is alive.
    pub fn pet(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_octal() {
        std::env::set_var("GENERATION", "14");
        assert_eq!(generation_from_env(), Ok(12));
        std::env::set_var("GENERATION", "1x");
        assert!(generation_from_env().is_err());
        std::env::remove_var("GENERATION");
        assert_eq!(generation_from_env(), Ok(0));
    }
}
