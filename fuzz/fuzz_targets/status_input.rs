//! The outside bytes of `rqmgr status` and `explain`: a status client's
//! request line (`Request::parse`: what parses re-encodes to itself), a
//! defer logfile (`deferlog::parse`), and a daemon's answer as the client
//! reads it (JSON into `Answer`, then printed as text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rqmgr::status::{deferlog, text, Answer, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::parse(data) {
        assert_eq!(Request::parse(r.line().as_bytes()), Ok(r));
    }
    let records = deferlog::parse(data);
    for r in deferlog::last_per_recipient(records) {
        assert!(!r.recipient.chars().any(char::is_control));
        assert!(!r.reason.chars().any(char::is_control));
    }
    if let Ok(a) = serde_json::from_slice::<Answer>(data) {
        let shown = match &a {
            Answer::Status(s) => text::status(s),
            Answer::Explain(e) => text::explain(e, 1_800_000_000),
            Answer::Error(e) => e.clone(),
        };
        std::hint::black_box(shown);
    }
});
