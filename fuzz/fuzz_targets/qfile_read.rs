//! Queue files: the record codec, then qmgr's reader batch by batch until
//! no recipients remain (`rqmgr_fuzz::read_all` checks each batch).
//! Input: one control byte (batch limit in the low 4 bits, 0 meaning 1;
//! the top 2 bits make the claimed file length disagree with the bytes),
//! then the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rqmgr::qfile::RecordReader;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    rqmgr_fuzz::init_logging();
    let Some((&ctl, file)) = data.split_first() else {
        return;
    };
    let len = file.len() as u64;
    let claimed = match ctl >> 6 {
        2 => len / 2,
        3 => len + 7,
        _ => len,
    };
    let mut reader = RecordReader::new(Cursor::new(file), len);
    let mut buf = Vec::new();
    let mut records = 0;
    while let Ok(Some(_)) = reader.read(&mut buf) {
        records += 1;
        assert!(records <= file.len(), "more records than bytes");
    }
    let _ = rqmgr_fuzz::read_all(file, claimed, usize::from(ctl & 0x0f));
});
