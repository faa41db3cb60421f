//! Queue ids and their hashed paths. Valid ids (`queue_id_ok`) must give a
//! path inside the queue directory that ends with the id; any other name
//! must not panic either.
//! Input: one control byte (the hash depth), then the name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rqmgr::spool::{queue_id_ok, queue_name_ok, Spool};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, name)) = data.split_first() else {
        return;
    };
    let id = String::from_utf8_lossy(name);
    let spool = Spool::new(&["deferred".into(), "defer".into()], usize::from(ctl % 8));
    let ok = queue_id_ok(&id);
    let _ = queue_name_ok(&id);
    for queue in ["deferred", "DEFER", "active", "incoming"] {
        let path = spool.path(queue, &id);
        if ok {
            let p = path.to_str().expect("ASCII path");
            assert!(p.starts_with(queue) && p.ends_with(&*id), "{p}");
            assert!(!p.contains(".."), "{p}");
            assert_eq!(p.len(), spool.dir(queue, &id).len() + id.len());
        }
    }
});
