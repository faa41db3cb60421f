//! Text that comes from peers or queue files and that qmgr splits, quotes
//! or formats: RFC 822 (un)quoting, DSN codes, MSG_STATS, VERP senders, and
//! delay formatting of time stamps (the arrival time is queue-file data).
//! Input: free bytes; the first 34 also give four time values and digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rqmgr::ipc::bounce::{adhoc_line, format_tv, Stats};
use rqmgr::ipc::deliver::{decode_msg_stats, verp_sender};
use rqmgr::ipc::rewrite::unquote_822_local;
use rqmgr::ipc::{dsn_valid, Dsn};
use rqmgr::qfile::Recipient;

fuzz_target!(|data: &[u8]| {
    rqmgr_fuzz::init_logging();
    let _ = unquote_822_local(data);
    let _ = dsn_valid(data);
    let _ = decode_msg_stats(data);
    let _ = rqmgr::log::addr(data);
    let text = String::from_utf8_lossy(data);
    let _ = Dsn::split(&text, "4.0.0");
    let _ = rqmgr::log::quote_822_local(&text);
    if data.len() >= 2 {
        let (delims, rest) = data.split_at(2);
        let half = rest.len() / 2;
        let rcpt = Recipient::new(0, &rest[..half], b"", b"", 0).expect("short input");
        let _ = verp_sender(delims, &rest[half..], &rcpt);
    }
    if data.len() >= 34 {
        let n = |i: usize| i64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        let (sig, max) = (u32::from(data[32] % 10), u32::from(data[33] % 10));
        let _ = format_tv(n(0), n(8), sig, max);
        let stats = Stats {
            incoming: (n(0), n(8)),
            active: (n(16), n(24)),
        };
        let dsn = Dsn::split(&text, "4.0.0");
        let line = adhoc_line(
            "ID",
            &stats,
            &Recipient::default(),
            "none",
            &dsn,
            "deferred",
            max,
        );
        assert!(line.contains(", delay="));
    }
});
