//! main.cf: the reader, `$name` expansion, every typed getter on the names
//! the text defines (and a few qmgr reads), qmgr's whole parameter table and
//! per-transport parameters, `-o` overrides and `conv_time`.
//! Input: main.cf bytes (invalid UTF-8 is replaced, as `MainCf::load` does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rqmgr::config::{conv_time, parse_compat_level, split_nameval, MainCf, Params};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    rqmgr_fuzz::init_logging();
    let text = String::from_utf8_lossy(data);
    let _ = conv_time(&text, 's');
    let Ok(cf) = MainCf::parse(&text, Path::new("main.cf")) else {
        return;
    };
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| split_nameval(l).ok().map(|(n, _)| n.to_string()))
        .take(24)
        .collect();
    names.extend(
        [
            "myhostname",
            "queue_run_delay",
            "smtputf8_enable",
            "x_destination_rate_delay",
        ]
        .map(String::from),
    );
    let mut whole = cf.clone();
    if let Ok((params, _)) = Params::read(&mut whole) {
        for name in names
            .iter()
            .take(4)
            .chain(std::iter::once(&"smtp".to_string()))
        {
            let _ = params.transport(&mut whole, name);
            let _ = params.is_hashed(name);
        }
    }
    let mut cf = cf;
    for (i, name) in names.iter().enumerate() {
        if let Some(raw) = cf.raw(name) {
            let raw = raw.to_string();
            let _ = conv_time(&raw, 'd');
            let _ = parse_compat_level(&raw);
        }
        let n = i as i64;
        let _ = cf.lookup(name);
        let _ = cf.get_int(name, n, 0, 0);
        let _ = cf.get_int(name, n, 1, 10);
        let _ = cf.get_bool(name, i % 2 == 0);
        let _ = cf.get_time(name, "5d", 1, 8640000);
        let _ = cf.get_time2(name, "_rate_delay", n, 's', 0, 0);
        let _ = cf.get_int2(name, "_limit", n, 0, 0);
        let _ = cf.get_str2(name, "_feedback", "1", 1, 0);
        let _ = cf.get_str(name, "$myhostname", 1, 100);
    }
    let _ = cf.apply_override(&text);
});
