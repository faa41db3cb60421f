//! Queue files as cleanup(8) writes them: the record codec, qmgr's reader of
//! the envelope and recipients, and the few in-place edits qmgr makes
//! (`global/record.c`, `global/rec_type.h`, `qmgr/qmgr_message.c`,
//! `global/deliver_completed.c`).

pub mod envelope;
pub mod record;

pub use envelope::{read_batch, Envelope, ReadOptions, Recipient, Rejected, Text, Texts};
pub use record::{put_record, rec, RecordError, RecordReader};

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Marks the recipient whose `R` record starts at `offset` as done by
/// overwriting its type byte with `D` (`deliver_completed`).
///
/// Errors: the write error (fatal for the message in Postfix).
pub fn mark_done(file: &File, offset: u64) -> io::Result<()> {
    file.write_all_at(&[rec::DONE], offset)
}

/// Kills the record at `offset` by overwriting its type byte with `K`
/// (`qmgr_message_kill_record`, used for the `trace_flags` attribute).
///
/// Errors: the write error.
pub fn kill_record(file: &File, offset: u64) -> io::Result<()> {
    file.write_all_at(&[rec::KILL], offset)
}

/// Rewrites the `W` record at `offset` to -1: the delay warning was sent
/// (`qmgr_message_update_warn`). The record keeps its 15-character width.
///
/// Errors: the write error.
pub fn mark_warning_sent(file: &File, offset: u64) -> io::Result<()> {
    let mut rec_bytes = Vec::with_capacity(17);
    put_record(
        &mut rec_bytes,
        rec::WARN,
        format!("{:15}", -1i64).as_bytes(),
    );
    file.write_all_at(&rec_bytes, offset)
}
