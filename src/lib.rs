//! rqmgr: a drop-in replacement for Postfix's queue manager, qmgr(8).
//!
//! A pure scheduling core ([`sched`]) inside a thin single-threaded tokio
//! shell ([`daemon`]). The other modules speak Postfix's formats and
//! protocols: [`master`] (the contract with master(8)), [`config`] (main.cf),
//! [`spool`] (the queue directory), [`qfile`] (queue files), [`ipc`]
//! (attribute protocol and peer clients), [`lifecycle`] (message completion
//! decisions) and [`log`] (Postfix-format logging).

pub mod config;
pub mod daemon;
pub mod ipc;
pub mod lifecycle;
pub mod log;
pub mod master;
pub mod qfile;
pub mod sched;
pub mod sim;
pub mod spool;

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
