//! rqmgr: a drop-in replacement for Postfix's queue manager, qmgr(8).
//!
//! The core ([`qmgr`]) makes every decision Postfix's qmgr makes, with no
//! I/O; the shell ([`shell`]) is a thin single-threaded tokio event loop
//! that reads, hands what it read to the core, and carries out what it
//! says; [`sim`] drives the same core in virtual time. The other modules
//! speak Postfix's formats and protocols: [`master`] (the contract with
//! master(8)), [`config`] (main.cf), [`spool`] (the queue directory and
//! its files), [`qfile`] (queue-file records), [`ipc`] (attribute protocol
//! and peer clients), [`proto`] (protocol constants), [`address`] and
//! [`log`] (Postfix-format logging); [`status`] is rqmgr's own `status`
//! and `explain` commands.

pub mod address;
pub mod config;
pub mod ipc;
pub mod log;
pub mod maillog;
pub mod master;
pub mod proto;
pub mod qfile;
pub mod qmgr;
pub mod shell;
pub mod sim;
pub mod spool;
pub mod status;

/// Wall-clock time in whole seconds since the epoch (Postfix's `time()`).
pub fn now_secs() -> i64 {
    now_timeval().0
}

/// Wall-clock time as (seconds, microseconds) since the epoch (`gettimeofday`).
pub fn now_timeval() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, i64::from(d.subsec_micros()))
}

/// `n` in decimal, written into the end of `digits` (what `{}` prints,
/// without the formatting machinery): for the log lines and attribute
/// values written for every message.
pub fn decimal(n: u64, digits: &mut [u8; 20]) -> &str {
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&digits[i..]).unwrap_or_default()
}
