//! The attribute protocol: `AttrList::parse` and the async `AttrList::read`
//! (through a small buffer) must agree; complete lists re-encode to the
//! bytes they used; peer replies are checked as qmgr checks them.
//! Input: one control byte (the read buffer size), then the bytes a peer sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rqmgr::ipc::attr::{parse_int, read_announcement, AttrError, AttrList, MAX_TOKEN};
use rqmgr::ipc::deliver::parse_reply;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fn check_reply(list: &AttrList) {
    let _ = parse_reply(list);
    for names in [
        &["flags", "transport", "nexthop", "recipient", "flags"][..],
        &["flags", "address"],
        &["status"],
        &["protocol"],
    ] {
        if let Ok(values) = list.expect(names) {
            assert_eq!(values.len(), names.len());
        }
    }
    for (_, value) in list.pairs() {
        let _ = parse_int("value", value);
    }
}

fuzz_target!(|data: &[u8]| {
    rqmgr_fuzz::init_logging();
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let parsed = AttrList::parse(input);
    if let Ok(Some((list, used))) = &parsed {
        assert!(*used <= input.len());
        let mut again = Vec::new();
        for (name, value) in list.pairs() {
            again.extend_from_slice(name);
            again.push(0);
            again.extend_from_slice(value);
            again.push(0);
        }
        again.push(0);
        assert_eq!(&again[..], &input[..*used]);
        check_reply(list);
    }
    let cap = usize::from(ctl % 64) + 1;
    let (read, rest, announced) = RT.with(|rt| {
        rt.block_on(async {
            let mut r = tokio::io::BufReader::with_capacity(cap, input);
            let read = AttrList::read(&mut r).await;
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest).await;
            let mut r = tokio::io::BufReader::with_capacity(cap, input);
            let announced = read_announcement(&mut r, "delivery_request_protocol").await;
            (read, rest, announced)
        })
    });
    let _ = announced;
    match (parsed, read) {
        (Ok(Some((list, used))), Ok(got)) => {
            assert_eq!(list, got);
            assert_eq!(&rest[..], &input[used..]);
        }
        (Ok(None), Err(AttrError::Eof { .. } | AttrError::Closed)) => {}
        (Err(AttrError::TooLarge), Err(AttrError::TooLarge)) => {}
        (_, Err(AttrError::TooLarge)) if input.len() > MAX_TOKEN => {}
        (p, r) => panic!("parse gave {p:?}, read gave {r:?}"),
    }
});
