//! Helpers shared by the fuzz targets: a log subscriber that formats every
//! event (so the arguments of log lines are evaluated too) and counts
//! warnings, and the batch-by-batch queue-file reading the daemon does.

use rqmgr::qfile::{read_batch, rec, Envelope, ReadOptions, Recipient, Text as Field};
use std::cell::Cell;
use std::io::Cursor;
use std::sync::Once;
use tracing_subscriber::layer::SubscriberExt as _;

thread_local! {
    static WARNINGS: Cell<usize> = const { Cell::new(0) };
}

struct Format;

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Format {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        std::hint::black_box(&text.0);
        if *event.metadata().level() == tracing::Level::WARN {
            WARNINGS.with(|w| w.set(w.get() + 1));
        }
    }
}

/// Installs the formatting subscriber (once per process).
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Format));
    });
}

/// Warnings logged on this thread so far.
pub fn warnings() -> usize {
    WARNINGS.with(Cell::get)
}

pub const OPTS: ReadOptions<'static> = ReadOptions {
    queue: "active",
    verp_filter: b"-=+",
    confirm_delay_cleared: true,
};

/// Reads `bytes` batch by batch as the daemon does and checks the contract
/// of every batch: at most `limit` recipients; a rejection is logged, drops
/// the batch and restores the resume state; batches end unless pointer
/// records make them loop (as Postfix's reader can).
pub fn read_all(bytes: &[u8], claimed_len: u64, limit: usize) -> Option<Vec<Recipient>> {
    let mut env = Envelope::default();
    let mut all = Vec::new();
    for _ in 0..bytes.len() + 2 {
        let before = (all.len(), env.rcpt_offset, env.rcpt_unread, warnings());
        let r = read_batch(
            Cursor::new(bytes),
            claimed_len,
            "active/ID",
            "ID",
            &mut env,
            limit,
            &OPTS,
            &mut all,
        );
        match r {
            Err(_) => {
                assert!(warnings() > before.3, "rejected without a log line");
                assert_eq!(all.len(), before.0, "a rejected batch left recipients");
                assert_eq!((env.rcpt_offset, env.rcpt_unread), (before.1, before.2));
                return None;
            }
            Ok(()) => {
                assert!(all.len() - before.0 <= limit.max(1), "batch over its limit");
                assert!(
                    env.texts.is_set(Field::Sender) && env.arrival.0 != 0 && env.data_offset != 0
                );
                if env.rcpt_offset == 0 {
                    return Some(all);
                }
            }
        }
    }
    assert!(
        bytes.contains(&rec::PTR),
        "batches loop without a pointer record"
    );
    None
}
