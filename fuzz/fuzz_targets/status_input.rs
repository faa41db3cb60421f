//! The outside bytes of `rqmgr status` and `explain`: a status client's
//! request line (`Request::parse`: what parses re-encodes to itself), a
//! defer logfile (`deferlog::parse`), and a daemon's answer as the client
//! reads it (JSON into `Answer`, then printed as text; a backlog is run
//! through `rqmgr forecast`'s simulation first).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rqmgr::status::forecast::{self, Backlog, Inputs};
use rqmgr::status::{deferlog, text, Answer, Request};

/// The forecast `rqmgr forecast` would print for backlog `b`, under an
/// empty main.cf and a small cap (so that one input stays fast).
fn forecast_of(b: &Backlog) -> String {
    let mut cf = rqmgr::config::MainCf::parse("", std::path::Path::new("main.cf"))
        .expect("an empty main.cf parses");
    cf.set("myhostname", "fuzz.example");
    let inputs = Inputs {
        main_cf: cf,
        overrides: Vec::new(),
        process_limits: Default::default(),
        incoming_files: None,
        deferred_files: None,
        max_recipients: 1000,
    };
    match forecast::forecast(b, inputs) {
        Ok(f) => forecast::text(&f),
        Err(e) => e.to_string(),
    }
}

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
            Answer::Backlog(b) => forecast_of(b),
            Answer::Error(e) => e.clone(),
        };
        std::hint::black_box(shown);
    }
});
