//! Robustness of the parsers of outside bytes: queue files, the attribute
//! protocol and peer replies, main.cf, queue ids.
//!
//! Property tests (proptest): no input panics, loops or allocates without
//! bound; every rejection of a queue file is logged; and well-formed input
//! reads back exactly. The fuzz targets in `fuzz/` drive the same parsers
//! with coverage guidance. Case counts keep the whole file near 10 s on two
//! cores; raise them with `PROPTEST_CASES=N` for a longer run.

use proptest::prelude::*;
use rqmgr::config::{conv_time, expand, MainCf, Params};
use rqmgr::ipc::attr::{parse_int, AttrError, AttrList, AttrWriter, MAX_ATTRS};
use rqmgr::ipc::bounce::{adhoc_line, format_tv, Stats};
use rqmgr::ipc::deliver::{parse_reply, REPLY_ATTRS};
use rqmgr::ipc::rewrite::unquote_822_local;
use rqmgr::ipc::{dsn_valid, Dsn};
use rqmgr::qfile::{
    put_record, read_batch, rec, Envelope, ReadOptions, Recipient, RecordReader, Text as Field,
};
use rqmgr::spool::{queue_id_ok, Spool};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt as _;

// ---------------------------------------------------------------------------
// Log capture: every event is formatted (so that the arguments of log lines
// are evaluated too) and kept for the assertions.

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(Level, String)>>>);

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text.0));
    }
}

/// Runs `f` with a subscriber that records every log line; returns the result
/// and the lines.
fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<(Level, String)>) {
    let cap = Capture::default();
    let out =
        tracing::subscriber::with_default(tracing_subscriber::registry().with(cap.clone()), f);
    let lines = std::mem::take(&mut *cap.0.lock().unwrap());
    (out, lines)
}

fn warnings(lines: &[(Level, String)]) -> usize {
    lines.iter().filter(|(l, _)| *l == Level::WARN).count()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        // Failures found once are kept below as plain regression tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Queue files in the layout cleanup(8) writes (POSTFIX-QMGR-INTERNALS §4.3,
// §4.4): C placeholder, T, create_time, F, S, attributes, W, recipients,
// optional Milter pointer, M, content, X, extracted segment, E, and records
// appended by a Milter, reached through the pointer and pointing back.

#[derive(Debug, Clone)]
struct Rcpt {
    address: Vec<u8>,
    orig: Option<Vec<u8>>,
    orcpt: Option<String>,
    notify: u32,
    /// `None`: still to deliver (`R`); `Some(b'D')` done; `Some(b'/')` cancelled.
    done: Option<u8>,
}

#[derive(Debug, Clone)]
struct Plan {
    sender: Vec<u8>,
    arrival: (i64, i64),
    attrs: bool,
    warn: bool,
    envelope: Vec<Rcpt>,
    /// Write the Milter pointer (a dummy 0 when `milter` is empty).
    pointer: bool,
    milter: Vec<Rcpt>,
    body: Vec<Vec<u8>>,
    extracted: Vec<Rcpt>,
    mixed: bool,
}

struct Built {
    bytes: Vec<u8>,
    /// Recipients still to deliver, in reading order.
    expect: Vec<Recipient>,
    data_offset: u64,
    data_size: u64,
    warn_offset: u64,
}

fn size_record(fields: [u64; 6]) -> Vec<u8> {
    format!(
        "{:15} {:15} {:15} {:15} {:15} {:15}",
        fields[0], fields[1], fields[2], fields[3], fields[4], fields[5]
    )
    .into_bytes()
}

fn pointer_record(value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_record(&mut out, rec::PTR, format!("{value:15}").as_bytes());
    out
}

fn put_rcpts(out: &mut Vec<u8>, rcpts: &[Rcpt], expect: &mut Vec<Recipient>) {
    for r in rcpts {
        if r.notify != 0 {
            put_record(
                out,
                rec::ATTR,
                format!("notify_flags={}", r.notify).as_bytes(),
            );
        }
        if let Some(o) = &r.orcpt {
            put_record(out, rec::ATTR, format!("dsn_orig_rcpt={o}").as_bytes());
        }
        if let Some(o) = &r.orig {
            put_record(out, rec::ORCP, o);
        }
        let offset = out.len() as u64;
        put_record(out, r.done.unwrap_or(rec::RCPT), &r.address);
        if r.done.is_none() {
            expect.push(
                Recipient::new(
                    offset,
                    &r.address,
                    r.orig.as_deref().unwrap_or_default(),
                    r.orcpt.as_deref().unwrap_or_default().as_bytes(),
                    r.notify,
                )
                .expect("short texts"),
            );
        }
    }
}

fn build(p: &Plan) -> Built {
    let mut f = Vec::new();
    let mut expect = Vec::new();
    put_record(&mut f, rec::SIZE, &size_record([0; 6]));
    put_record(
        &mut f,
        rec::TIME,
        format!("{} {}", p.arrival.0, p.arrival.1).as_bytes(),
    );
    put_record(
        &mut f,
        rec::ATTR,
        format!("create_time={}", p.arrival.0).as_bytes(),
    );
    put_record(&mut f, rec::FULL, b"Some Body");
    put_record(&mut f, rec::FROM, &p.sender);
    if p.attrs {
        put_record(&mut f, rec::ATTR, b"rewrite_context=local");
        put_record(&mut f, rec::ATTR, b"log_client_address=192.0.2.1");
        put_record(&mut f, rec::ATTR, b"envelope_id=env-1");
        put_record(&mut f, rec::ATTR, b"ret_flags=2");
    }
    let mut warn_offset = 0;
    if p.warn {
        warn_offset = f.len() as u64;
        put_record(
            &mut f,
            rec::WARN,
            format!("{:15}", p.arrival.0 + 14400).as_bytes(),
        );
    }
    put_rcpts(&mut f, &p.envelope, &mut expect);
    let pointer_at = f.len();
    if p.pointer || !p.milter.is_empty() {
        f.extend_from_slice(&pointer_record(0));
    }
    let m_at = f.len() as u64;
    put_record(&mut f, rec::MESG, b"");
    let data_offset = f.len() as u64;
    for line in &p.body {
        put_record(&mut f, rec::NORM, line);
    }
    let data_size = f.len() as u64 - data_offset;
    put_record(&mut f, rec::XTRA, b"");
    if p.attrs {
        put_record(&mut f, rec::ATTR, b"encoding=8bit");
    }
    // Milter recipients are read between the envelope and extracted ones.
    let mut extracted_expect = Vec::new();
    put_rcpts(&mut f, &p.extracted, &mut extracted_expect);
    put_record(&mut f, rec::END, b"");
    if !p.milter.is_empty() {
        let block = f.len() as u64;
        put_rcpts(&mut f, &p.milter, &mut expect);
        f.extend_from_slice(&pointer_record(m_at));
        let ptr = pointer_record(block);
        f[pointer_at..pointer_at + ptr.len()].copy_from_slice(&ptr);
    }
    expect.extend(extracted_expect);
    let all = || p.envelope.iter().chain(&p.milter).chain(&p.extracted);
    let notify = all().fold(0, |acc, r| acc | r.notify);
    let size = size_record([
        data_size,
        data_offset,
        all().count() as u64,
        u64::from(p.mixed) | u64::from(notify << 1),
        0,
        0,
    ]);
    let mut c = Vec::new();
    put_record(&mut c, rec::SIZE, &size);
    f[..c.len()].copy_from_slice(&c);
    Built {
        bytes: f,
        expect,
        data_offset,
        data_size,
        warn_offset,
    }
}

fn rcpt_strategy() -> impl Strategy<Value = Rcpt> {
    (
        prop::collection::vec(any::<u8>(), 0..24),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::option::of("rfc822;[a-z0-9.@]{0,12}"),
        prop::sample::select(vec![0u32, 1, 2, 4, 8, 6, 10, 12, 14]),
        prop::sample::select(vec![None, None, None, Some(rec::DONE), Some(rec::DRCP)]),
    )
        .prop_map(|(address, orig, orcpt, notify, done)| Rcpt {
            address,
            orig,
            orcpt,
            notify,
            done,
        })
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    let rcpts = |n| prop::collection::vec(rcpt_strategy(), 0..n);
    (
        (
            prop::collection::vec(any::<u8>(), 0..20),
            (1i64..(1 << 34), 0i64..1_000_000),
            any::<bool>(),
            any::<bool>(),
        ),
        (rcpts(7), any::<bool>(), rcpts(4)),
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5),
            rcpts(4),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (sender, arrival, attrs, warn),
                (envelope, pointer, milter),
                (body, extracted, mixed),
            )| Plan {
                sender,
                arrival,
                attrs,
                warn,
                envelope,
                pointer,
                milter,
                body,
                extracted,
                mixed,
            },
        )
}

const OPTS: ReadOptions<'static> = ReadOptions {
    queue: "active",
    verp_filter: b"-=+",
    confirm_delay_cleared: false,
};

enum Outcome {
    /// Every batch was read; the recipients of all batches.
    Done(Vec<Recipient>),
    /// A batch was rejected (after `n` good ones).
    Rejected,
    /// Still more batches after the cap (only possible with pointer loops).
    Capped,
}

/// Reads `bytes` batch by batch, as the daemon does, checking the contract
/// of every batch: no more than `limit` recipients, and a rejection restores
/// the resume state, drops the batch and is logged.
fn read_all(bytes: &[u8], claimed_len: u64, limit: usize) -> (Outcome, Envelope, usize) {
    let mut env = Envelope::default();
    let mut all: Vec<Recipient> = Vec::new();
    let mut warned = 0;
    let cap = bytes.len() + 2;
    for _ in 0..cap {
        let before = all.len();
        let saved = (env.rcpt_offset, env.rcpt_unread);
        let (r, lines) = logged(|| {
            read_batch(
                Cursor::new(bytes),
                claimed_len,
                "active/ID",
                "ID",
                &mut env,
                limit,
                &OPTS,
                &mut all,
            )
        });
        warned += warnings(&lines);
        match r {
            Err(_) => {
                assert!(warnings(&lines) > 0, "a rejection without a log line");
                assert_eq!(all.len(), before, "a rejected batch left recipients");
                assert_eq!((env.rcpt_offset, env.rcpt_unread), saved);
                return (Outcome::Rejected, env, warned);
            }
            Ok(()) => {
                assert!(all.len() - before <= limit.max(1), "batch over its limit");
                assert!(
                    env.texts.is_set(Field::Sender) && env.arrival.0 != 0 && env.data_offset != 0
                );
                if env.rcpt_offset == 0 {
                    return (Outcome::Done(all), env, warned);
                }
            }
        }
    }
    (Outcome::Capped, env, warned)
}

/// Byte-level damage to a well-formed file: overwritten bytes (often with
/// record types or digits), a truncation, an inserted pointer record.
#[derive(Debug, Clone)]
struct Damage {
    writes: Vec<(usize, u8)>,
    truncate: Option<usize>,
    pointer: Option<(usize, u64)>,
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"CTcFILSDRO/WVA>K<ionMNXEpw0123456789 =\x80\xff".to_vec()),
    ];
    (
        prop::collection::vec((any::<usize>(), byte), 0..6),
        prop::option::of(any::<usize>()),
        prop::option::of((any::<usize>(), prop_oneof![0u64..2048, any::<u64>()])),
    )
        .prop_map(|(writes, truncate, pointer)| Damage {
            writes,
            truncate,
            pointer,
        })
}

fn apply(mut bytes: Vec<u8>, d: &Damage) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    if let Some((at, value)) = d.pointer {
        let at = at % bytes.len();
        let p = pointer_record(value);
        bytes.splice(at..at, p);
    }
    for &(at, b) in &d.writes {
        let n = bytes.len();
        bytes[at % n] = b;
    }
    if let Some(t) = d.truncate {
        bytes.truncate(t % (bytes.len() + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(config(192))]

    /// Every recipient not marked done is returned exactly once, in reading
    /// order, with its offset and DSN data, whatever the batch limit; the
    /// envelope is read right and nothing is warned about.
    #[test]
    fn wellformed_files_read_back_exactly(plan in plan_strategy(), limit in 1usize..9) {
        let b = build(&plan);
        let (outcome, env, warned) = read_all(&b.bytes, b.bytes.len() as u64, limit);
        let Outcome::Done(got) = outcome else {
            panic!("well-formed file not read to the end");
        };
        prop_assert_eq!(got, b.expect);
        prop_assert_eq!(warned, 0);
        prop_assert_eq!(env.texts.get(Field::Sender), Some(&plan.sender[..]));
        prop_assert_eq!(env.arrival, plan.arrival);
        prop_assert_eq!(env.create_time, plan.arrival.0);
        prop_assert_eq!((env.data_offset, env.data_size), (b.data_offset, b.data_size));
        prop_assert_eq!(env.warn_offset, b.warn_offset);
        prop_assert_eq!(env.rcpt_unread, 0);
        // Without the MIXED flag that cleanup sets for Milter recipients, a
        // batch that fills up in the Milter block ends the reading of
        // non-recipient records (as in Postfix): only recipients are sure.
        if plan.attrs && (plan.mixed || plan.milter.is_empty()) {
            prop_assert_eq!(env.texts.or_empty(Field::Encoding), b"8bit");
            prop_assert_eq!(env.texts.or_empty(Field::DsnEnvid), b"env-1");
            prop_assert_eq!(env.dsn_ret, 2);
            prop_assert_eq!(env.texts.get(Field::RewriteContext), Some(&b"local"[..]));
        }
    }

    /// Damaged files, any batch limit, a file length that may disagree with
    /// the bytes: every batch ends with Ok or a logged rejection, and the
    /// batches end unless pointer records loop (as they can in Postfix too).
    #[test]
    fn damaged_files_never_panic(
        plan in plan_strategy(),
        damage in damage_strategy(),
        limit in 0usize..6,
        len_adjust in prop_oneof![Just(0i64), -8i64..8],
    ) {
        let bytes = apply(build(&plan).bytes, &damage);
        let claimed = (bytes.len() as i64 + len_adjust).max(0) as u64;
        let (outcome, _, _) = read_all(&bytes, claimed, limit);
        if let Outcome::Capped = outcome {
            prop_assert!(bytes.contains(&rec::PTR), "batches loop without a pointer record");
        }
    }

    /// Arbitrary bytes.
    #[test]
    fn random_files_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        limit in 0usize..4,
    ) {
        let (outcome, _, _) = read_all(&bytes, bytes.len() as u64, limit);
        if let Outcome::Capped = outcome {
            prop_assert!(bytes.contains(&rec::PTR));
        }
    }

    /// The record reader on arbitrary bytes ends (each record moves it
    /// forward by at least two bytes) with a clean end or an error.
    #[test]
    fn record_reader_on_random_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        seek in prop::option::of(prop_oneof![0u64..700, any::<u64>()]),
    ) {
        let mut r = RecordReader::new(Cursor::new(&bytes[..]), bytes.len() as u64);
        if let Some(to) = seek {
            let _ = r.seek(to);
        }
        let mut buf = Vec::new();
        let mut ended = false;
        for _ in 0..=bytes.len() {
            let before = r.pos();
            match r.read(&mut buf) {
                Ok(Some(_)) => prop_assert!(r.pos() >= before + 2 + buf.len() as u64),
                Ok(None) | Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        prop_assert!(ended, "more records than bytes");
    }

    /// put_record then read gives the records back, offsets included.
    #[test]
    fn records_round_trip(
        records in prop::collection::vec(
            (any::<u8>(), prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec(any::<u8>(), 16_000..17_000),
            ]),
            0..8,
        ),
    ) {
        let mut file = Vec::new();
        let mut offsets = Vec::new();
        for (t, data) in &records {
            offsets.push(file.len() as u64);
            put_record(&mut file, *t, data);
        }
        let mut r = RecordReader::new(Cursor::new(&file[..]), file.len() as u64);
        let mut buf = Vec::new();
        for (i, (t, data)) in records.iter().enumerate() {
            prop_assert_eq!(r.pos(), offsets[i]);
            prop_assert_eq!(r.read(&mut buf).unwrap(), Some(*t));
            prop_assert_eq!(&buf, data);
        }
        prop_assert_eq!(r.read(&mut buf).unwrap(), None);
        prop_assert_eq!(r.pos(), file.len() as u64);
    }
}

/// A pointer record whose value is past `i64::MAX` made `RecordReader::seek`
/// overflow (a panic in debug builds).
#[test]
fn regression_pointer_past_i64_max() {
    for value in [1u64 << 63, u64::MAX, (1 << 63) + 100, i64::MAX as u64] {
        let mut f = Vec::new();
        put_record(&mut f, rec::SIZE, &size_record([10, 200, 1, 0, 0, 0]));
        put_record(&mut f, rec::TIME, b"1795393402 847387");
        put_record(&mut f, rec::PTR, value.to_string().as_bytes());
        let (outcome, _, _) = read_all(&f, f.len() as u64, 5);
        assert!(matches!(outcome, Outcome::Rejected), "pointer {value}");
    }
    let mut r = RecordReader::new(Cursor::new(&b"N\x00"[..]), 2);
    assert!(r.seek(u64::MAX).is_err());
    assert!(r.seek(1 << 63).is_err());
    assert!(r.seek(0).is_ok());
}

/// A queue file can make read_batch return the same recipients forever, a
/// batch at a time, with a pointer record that jumps back before them;
/// Postfix's reader (which this one follows) does the same. Each batch ends;
/// the daemon marks delivered recipients done, so only deferred ones repeat.
#[test]
fn known_pointer_loop_across_batches() {
    let mut f = Vec::new();
    put_record(&mut f, rec::SIZE, &[0; 95]);
    put_record(&mut f, rec::TIME, b"1795393402 0");
    put_record(&mut f, rec::FROM, b"s@example");
    let r1 = f.len() as u64;
    put_record(&mut f, rec::RCPT, b"a@example");
    f.extend_from_slice(&pointer_record(r1));
    put_record(&mut f, rec::MESG, b"");
    let data_offset = f.len() as u64;
    put_record(&mut f, rec::NORM, b"body");
    let data_size = f.len() as u64 - data_offset;
    put_record(&mut f, rec::XTRA, b"");
    put_record(&mut f, rec::END, b"");
    let mut c = Vec::new();
    put_record(
        &mut c,
        rec::SIZE,
        &size_record([data_size, data_offset, 1, 0, 0, 0]),
    );
    f[..c.len()].copy_from_slice(&c);
    let (outcome, _, _) = read_all(&f, f.len() as u64, 1);
    assert!(matches!(outcome, Outcome::Capped));
}

// ---------------------------------------------------------------------------
// The attribute protocol.

/// Bytes rich in NULs and short names, so that lists often complete.
fn attr_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => Just(0u8),
            6 => prop::sample::select(b"abs0129 =\xff".to_vec()),
            1 => any::<u8>(),
        ],
        0..300,
    )
}

fn encode(list: &AttrList) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in list.pairs() {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out.push(0);
    out
}

/// An AsyncRead that hands out its bytes in the given chunk sizes, returns
/// Pending every other call, and ends with EOF or an error.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    n: usize,
    fail_at_end: bool,
    pend: bool,
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        me.pend = !me.pend;
        if me.pend {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if me.pos >= me.data.len() {
            return Poll::Ready(if me.fail_at_end {
                Err(std::io::Error::other("peer reset"))
            } else {
                Ok(())
            });
        }
        let size = me.sizes.get(me.n).copied().unwrap_or(7).max(1);
        me.n += 1;
        let end = (me.pos + size)
            .min(me.data.len())
            .min(me.pos + buf.remaining());
        buf.put_slice(&me.data[me.pos..end]);
        me.pos = end;
        Poll::Ready(Ok(()))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn reply_names() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "status", "diag_type", "diag_text", "mta_type", "mta_mname", "action", "reason",
            "flags", "transport", "nexthop", "recipient", "address",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(1u8..=255, 1..8),
    ]
}

fn reply_values() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "4294967295",
            "4294967296",
            "-1",
            " 7",
            "4.4.1",
            ""
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(1u8..=255, 0..12),
    ]
}

/// Lists that are often, but not always, one of the replies qmgr expects.
fn reply_list() -> impl Strategy<Value = AttrList> {
    prop_oneof![
        prop::collection::vec((reply_names(), reply_values()), 0..10),
        prop::collection::vec(reply_values(), 8).prop_map(move |vals| REPLY_ATTRS
            .iter()
            .map(|n| n.as_bytes().to_vec())
            .zip(vals)
            .collect()),
    ]
    .prop_map(|pairs: Vec<(Vec<u8>, Vec<u8>)>| pairs.into_iter().collect::<AttrList>())
}

proptest! {
    #![proptest_config(config(256))]

    /// parse: a complete list re-encodes to exactly the bytes it used.
    #[test]
    fn attr_parse_round_trip(input in attr_bytes()) {
        match AttrList::parse(&input) {
            Ok(Some((list, used))) => {
                prop_assert!(used <= input.len());
                prop_assert!(list.len() <= MAX_ATTRS);
                prop_assert_eq!(encode(&list), &input[..used]);
            }
            Ok(None) => {}
            Err(e) => prop_assert!(matches!(e, AttrError::TooLarge)),
        }
    }

    /// read (async, any chunking, EOF or error at the end) agrees with parse
    /// and leaves the rest of the stream unread.
    #[test]
    fn attr_read_agrees_with_parse(
        input in attr_bytes(),
        sizes in prop::collection::vec(1usize..40, 0..20),
        cap in 1usize..64,
        fail_at_end in any::<bool>(),
    ) {
        let parsed = AttrList::parse(&input).ok().flatten();
        let reader = Chunked { data: input.clone(), pos: 0, sizes, n: 0, fail_at_end, pend: false };
        let mut r = tokio::io::BufReader::with_capacity(cap, reader);
        let (got, rest) = block_on(async {
            let got = AttrList::read(&mut r).await;
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest).await;
            (got, rest)
        });
        match (parsed, got) {
            (Some((list, used)), Ok(read)) => {
                prop_assert_eq!(list, read);
                prop_assert_eq!(&rest[..], &input[used..]);
            }
            (None, Err(AttrError::Eof { .. } | AttrError::Closed)) => prop_assert!(!fail_at_end),
            (None, Err(AttrError::Io(_))) => prop_assert!(fail_at_end),
            (p, g) => prop_assert!(false, "parse {:?} but read {:?}", p, g),
        }
    }

    /// parse_int accepts exactly unsigned 32-bit decimals (with leading
    /// white space) and maps them to their signed value.
    #[test]
    fn parse_int_any_bytes(value in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        any::<u32>().prop_map(|n| format!(" {n}").into_bytes()),
    ]) {
        let expect = std::str::from_utf8(&value)
            .ok()
            .and_then(|t| t.trim_start().parse::<u64>().ok())
            .filter(|&v| v <= u64::from(u32::MAX));
        match parse_int("n", &value) {
            Ok(v) => prop_assert_eq!(Some(v as u32 as u64), expect),
            Err(e) => {
                prop_assert!(expect.is_none());
                prop_assert!(matches!(e, AttrError::BadNumber { .. }), "{:?}", e);
            }
        }
    }

    /// The delivery agent's reply: any list gives a Reply or an error, and a
    /// Reply only for the exact eight attributes with a numeric status.
    #[test]
    fn deliver_reply_any_list(list in reply_list()) {
        let names: Vec<&[u8]> = list.pairs().map(|(n, _)| n).collect();
        let want: [&[u8]; 8] = [
            b"status", b"diag_type", b"diag_text", b"mta_type", b"mta_mname", b"action",
            b"reason", b"status",
        ];
        match parse_reply(&list) {
            Ok(r) => {
                prop_assert_eq!(&names[..], &want[..]);
                prop_assert_eq!(Ok(r.status), parse_int("status", list.get(7).unwrap().1).map_err(|_| ()));
                prop_assert_eq!(&r.hop.reason[..], list.get(6).unwrap().1);
            }
            Err(_) => prop_assert!(
                names != want || parse_int("status", list.get(7).unwrap().1).is_err()
            ),
        }
    }

    /// The resolver's reply checks (`Resolver::parse` is private: it is
    /// `expect` with these five names plus `parse_int`, exercised here on
    /// any list; the end-to-end test below goes through a socket).
    #[test]
    fn resolver_reply_checks_any_list(list in reply_list()) {
        if let Ok(v) = list.expect(&["flags", "transport", "nexthop", "recipient", "flags"]) {
            prop_assert_eq!(v.len(), 5);
            let _ = (parse_int("flags", v[0]), parse_int("flags", v[4]));
        }
        let _ = list.expect(&["flags", "address"]);
        let _ = list.expect(&["status"]);
    }

    /// Text from peers and queue files that qmgr formats or splits.
    #[test]
    fn peer_text_helpers(bytes in prop::collection::vec(any::<u8>(), 0..40), text in ".{0,30}") {
        let _ = unquote_822_local(&bytes);
        let _ = dsn_valid(&bytes);
        let _ = Dsn::split(&text, "4.0.0");
        let _ = rqmgr::log::addr(&bytes);
        let _ = rqmgr::log::quote_822_local(&text);
        let _ = rqmgr::ipc::deliver::decode_msg_stats(&bytes);
    }

    /// Delay formatting with any time stamps (the arrival time is queue-file
    /// data): no overflow, and it returns.
    #[test]
    fn delays_any_time_stamps(
        incoming in (any::<i64>(), any::<i64>()),
        active in (any::<i64>(), any::<i64>()),
        sec in any::<i64>(),
        usec in any::<i64>(),
        sig in 0u32..10,
        max_dig in 0u32..10,
    ) {
        let _ = format_tv(sec, usec, sig, max_dig);
        let stats = Stats { incoming, active };
        let line = adhoc_line("ID", &stats, &Recipient::default(), "none", &Dsn::default(), "deferred", max_dig);
        prop_assert!(line.contains(", delay="));
    }
}

/// More than MAX_ATTRS attributes are refused by parse and read alike.
#[test]
fn attr_list_too_long() {
    let mut w = AttrWriter::new();
    for i in 0..=MAX_ATTRS {
        w.int("n", i as u32);
    }
    w.end();
    let bytes = w.into_bytes();
    assert!(matches!(AttrList::parse(&bytes), Err(AttrError::TooLarge)));
    let mut r = tokio::io::BufReader::new(&bytes[..]);
    assert!(matches!(
        block_on(AttrList::read(&mut r)),
        Err(AttrError::TooLarge)
    ));
}

/// A token longer than MAX_TOKEN without a NUL is refused, not buffered.
#[test]
fn attr_token_too_long() {
    let bytes = vec![b'x'; rqmgr::ipc::attr::MAX_TOKEN + 100_000];
    let mut r = tokio::io::BufReader::new(&bytes[..]);
    assert!(matches!(
        block_on(AttrList::read(&mut r)),
        Err(AttrError::TooLarge)
    ));
}

/// A T record with a huge microseconds field made the delay computation
/// loop about 10^13 times, and extreme seconds overflowed.
#[test]
fn regression_delay_of_absurd_arrival() {
    let line = |incoming| {
        let stats = Stats {
            incoming,
            active: (0, 0),
        };
        adhoc_line(
            "ID",
            &stats,
            &Recipient::default(),
            "none",
            &Dsn::default(),
            "deferred",
            2,
        )
    };
    assert!(line((1, 9_000_000_000_000_000_000)).contains("delay="));
    assert!(line((1, i64::MIN)).contains("delay="));
    assert!(line((i64::MIN, 0)).contains("delay="));
    assert!(line((i64::MAX, i64::MAX)).contains("delay=0,"));
    assert_eq!(format_tv(i64::MAX, 999_999, 2, 2), i64::MAX.to_string());
    // Sane values still format as before.
    assert_eq!(format_tv(0, 123_456, 2, 2), "0.12");
    assert_eq!(format_tv(12, 600_000, 2, 2), "13");
}

// ---------------------------------------------------------------------------
// main.cf.

const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "myhostname",
    "queue_run_delay",
    "qmgr_message_active_limit",
    "hash_queue_depth",
    "smtputf8_enable",
    "compatibility_level",
    "syslog_name",
    "x_destination_rate_delay",
    "x_destination_concurrency_limit",
];

/// main.cf text made of the pieces that matter to the reader and expander.
fn main_cf_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(NAMES.to_vec()).prop_map(str::to_string),
        6 => prop::sample::select(vec![
            " = ", "=", "\n", "\n ", "\r\n", "#", "$", "$$", "${", "$(", "}", ")", "{", "?", ":",
            "} == {", " <level {", "{1}", "3.6", "10", "5d", "-1", "99999999999", "yes", "no",
            "$a", "${a}", "${b?{x}:{y}}", "${{$c} != {}}", "é", "\t", " ",
        ])
        .prop_map(str::to_string),
        1 => "[ -~]{0,6}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn exercise_main_cf(text: &str, defaults: (&str, i64, i64, i64)) {
    let Ok(mut cf) = MainCf::parse(text, Path::new("main.cf")) else {
        return;
    };
    let (dflt, n, min, max) = defaults;
    for name in NAMES {
        let _ = cf.lookup(name);
        let _ = cf.get_str(name, dflt, min as usize % 4, max as usize % 40);
        let _ = cf.get_int(name, n, min, max);
        let _ = cf.get_bool(name, n % 2 == 0);
        let _ = cf.get_time(name, dflt, min, max);
        let _ = cf.get_int2(name, "_x", n, min, max);
        let _ = cf.get_time2(name, "_x", n, 's', min, max);
        let _ = cf.get_str2(name, "_x", dflt, 0, 0);
    }
    let _ = cf.apply_override(text);
    if let Ok((p, _)) = Params::read(&mut cf) {
        let _ = p.transport(&mut cf, "x");
        let _ = p.transport(&mut cf, "a");
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// main.cf text and every typed getter.
    #[test]
    fn main_cf_any_text(
        text in main_cf_text(),
        dflt in prop_oneof![Just("5d".to_string()), ".{0,8}"],
        n in any::<i64>(),
        min in prop_oneof![Just(0i64), any::<i64>()],
        max in prop_oneof![Just(0i64), any::<i64>()],
    ) {
        exercise_main_cf(&text, (&dflt, n, min, max));
    }

    /// Arbitrary Unicode, too.
    #[test]
    fn main_cf_any_unicode(text in "\\PC{0,200}") {
        exercise_main_cf(&text, ("1s", 1, 0, 0));
    }

    /// `$name` expansion against a dictionary of generated values.
    #[test]
    fn expand_any_value(
        value in main_cf_text(),
        dict in prop::collection::hash_map(prop::sample::select(NAMES.to_vec()), main_cf_text(), 0..6),
    ) {
        let dict: HashMap<String, String> = dict.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let _ = expand(&value, &|n| dict.get(n).cloned());
    }

    /// conv_time: accepts exactly a non-negative number and an optional
    /// known unit, and never overflows.
    #[test]
    fn conv_time_any_text(
        text in prop_oneof!["\\PC{0,12}", "[0-9+-]{0,12}[smhdwx]?[a-z]{0,3}"],
        unit in prop_oneof![Just('s'), Just('d'), any::<char>()],
    ) {
        if let Some(v) = conv_time(&text, unit) {
            prop_assert!(v >= 0);
            prop_assert!(v < i64::from(i32::MAX));
        }
    }
}

/// `a = ${{$a} == {x}}` recursed without depth accounting until the stack
/// overflowed (an abort, not even a panic).
#[test]
fn regression_self_reference_in_relational_test() {
    for value in [
        "${{$a} == {x} ? {y}}",
        "${{x} == {$a} ? {y} : {z}}",
        "${{${a?{$a}}} <level {1} ? {y}}",
    ] {
        let cf = MainCf::parse(&format!("a = {value}\n"), Path::new("main.cf")).unwrap();
        assert!(cf.lookup("a").is_err(), "{value}");
    }
}

/// Values that use the next one twice doubled the work at every level
/// (2^40 bytes here) before the expansion budget.
#[test]
fn regression_exponential_expansion() {
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("v{i} = $v{}$v{}\n", i + 1, i + 1));
        text.push_str(&format!(
            "w{i} = ${{{{$w{}}} == {{$w{}}} ? {{x}}}}\n",
            i + 1,
            i + 1
        ));
    }
    text.push_str("v40 = abc\nw40 = abc\n");
    let cf = MainCf::parse(&text, Path::new("main.cf")).unwrap();
    assert!(cf.lookup("v0").is_err());
    assert!(cf.lookup("w0").is_err());
    // A few doublings stay well inside the budget.
    assert_eq!(cf.lookup("v36").unwrap().unwrap().len(), 3 * 16);
    assert_eq!(cf.lookup("w36").unwrap().unwrap(), "x");
}

// ---------------------------------------------------------------------------
// Queue ids and paths.

fn id_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_]{1,30}",
        "[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{6,12}z[0-9B-Zb-y]{1,10}",
        "[A-Za-z0-9_]{250,260}",
        "\\PC{0,20}z\\PC{0,5}",
        ".{0,20}",
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Paths of any id: never a panic; for valid ids the path stays in its
    /// queue directory and ends with the id.
    #[test]
    fn spool_paths_any_id(
        id in id_strategy(),
        depth in 0usize..6,
        queue in prop::sample::select(vec!["deferred", "defer", "active", "DEFER"]),
    ) {
        let spool = Spool::new(&["deferred".to_string(), "defer".to_string()], depth);
        let ok = queue_id_ok(&id);
        if ok {
            prop_assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
        }
        let path = spool.path(queue, &id);
        let dir = spool.dir(queue, &id);
        if ok {
            let p = path.to_str().unwrap();
            let (prefix, suffix) = (format!("{queue}/"), format!("/{id}"));
            prop_assert!(p.starts_with(&prefix));
            prop_assert!(p.ends_with(&suffix));
            prop_assert_eq!(p.len(), dir.len() + id.len());
            prop_assert!(!p.contains(".."));
        }
    }
}

// ---------------------------------------------------------------------------
// The resolver end to end: a fake trivial-rewrite on a unix socket. The
// client connects to `private/rewrite` relative to the working directory, so
// this runs in a child process (this test binary again) that changes
// directory; the other tests keep theirs.

const CHILD: &str = "RQMGR_ROBUSTNESS_RESOLVER_DIR";

#[test]
fn resolver_replies_end_to_end() {
    let Some(dir) = std::env::var_os(CHILD) else {
        let dir = std::env::temp_dir().join(format!("rqmgr-robustness-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("private")).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "resolver_replies_end_to_end",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    std::env::set_current_dir(dir).unwrap();
    resolver_child();
}

type Script = Arc<Mutex<std::collections::VecDeque<(Vec<u8>, bool)>>>;

/// Serves `private/rewrite` (bound by the caller): announces itself, then answers each request
/// with the next scripted reply (closing the connection after it if asked).
async fn fake_rewrite(listener: tokio::net::UnixListener, script: Script) {
    use tokio::io::AsyncWriteExt as _;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let script = script.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut hello = AttrWriter::new();
            hello.str("protocol", b"trivial_rewrite_protocol").end();
            if w.write_all(hello.bytes()).await.is_err() {
                return;
            }
            while AttrList::read(&mut r).await.is_ok() {
                let Some((reply, close)) = script.lock().unwrap().pop_front() else {
                    return;
                };
                if w.write_all(&reply).await.is_err() || close {
                    return;
                }
            }
        });
    }
}

fn resolve_reply(
    flags: u32,
    transport: &[u8],
    nexthop: &[u8],
    rcpt: &[u8],
    rflags: u32,
) -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.int("flags", flags)
        .str("transport", transport)
        .str("nexthop", nexthop)
        .str("recipient", rcpt)
        .int("flags", rflags)
        .end();
    w.into_bytes()
}

fn resolver_child() {
    use rqmgr::ipc::rewrite::{Class, Resolver};
    use std::time::Duration;
    let script: Script = Arc::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    // Listening before the first request: a failed connect is retried
    // only after 10 s (mail_connect_wait).
    let listener = tokio::net::UnixListener::bind("private/rewrite").unwrap();
    rt.spawn(fake_rewrite(listener, script.clone()));
    let new = || {
        Resolver::new(
            "rewrite",
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(1000),
        )
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // Well-formed replies with any values come back as they were sent.
    let value = || prop::collection::vec(1u8..=255, 1..30);
    runner
        .run(
            &(
                value(),
                prop::collection::vec(1u8..=255, 0..30),
                value(),
                any::<u32>(),
                0u32..2,
            ),
            |(transport, nexthop, rcpt, rflags, disconnect)| {
                script.lock().unwrap().push_back((
                    resolve_reply(disconnect, &transport, &nexthop, &rcpt, rflags),
                    false,
                ));
                let mut res = new();
                let r = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        res.resolve(Class::Regular, b"s@example", b"u@example"),
                    )
                    .await
                });
                let r = r.expect("resolver hung on a good reply");
                // Names arrive as UTF-8, other bytes as U+FFFD.
                let name = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                prop_assert_eq!(
                    (
                        r.transport.to_string(),
                        r.nexthop.to_string(),
                        r.recipient,
                        r.flags
                    ),
                    (name(&transport), name(&nexthop), rcpt, rflags)
                );
                Ok(())
            },
        )
        .unwrap();
    // Bad replies are logged and retried (once a second) until a good one.
    let bad: Vec<(Vec<u8>, bool)> = vec![
        (b"flags\x00zero\x00\x00".to_vec(), false),
        (resolve_reply(0, b"", b"x", b"u@example", 0), false),
        (b"flags\x000\x00transport\x00sm".to_vec(), true),
    ];
    {
        let mut s = script.lock().unwrap();
        s.extend(bad);
        s.push_back((
            resolve_reply(0, b"smtp", b"[h]:25", b"u@example", 4096),
            false,
        ));
    }
    let mut res = new();
    let (r, lines) = logged(|| {
        rt.block_on(tokio::time::timeout(
            Duration::from_secs(20),
            res.resolve(Class::Verify, b"", b"u@example"),
        ))
    });
    let r = r.expect("resolver did not recover from bad replies");
    assert_eq!((&r.transport[..], r.flags), ("smtp", 4096));
    assert!(warnings(&lines) >= 2, "{lines:?}");
    // rewrite: a reply of the wrong shape, then a quoted address.
    {
        let mut s = script.lock().unwrap();
        s.push_back((b"flags\x000\x00\x00".to_vec(), false));
        let mut w = AttrWriter::new();
        w.int("flags", 0).str("address", b"\"a b\"@x").end();
        s.push_back((w.into_bytes(), false));
    }
    let got = rt.block_on(tokio::time::timeout(
        Duration::from_secs(10),
        res.rewrite("local", b"a b@x"),
    ));
    assert_eq!(got.expect("rewrite hung"), b"a b@x");
}

/// A long-id-shaped name with non-ASCII before its `z` made the hash-key
/// slice panic (only for names that fail queue_id_ok, which callers check).
#[test]
fn regression_non_ascii_long_id() {
    let spool = Spool::new(&["deferred".to_string()], 1);
    let id = "|\u{10054}\u{102c6}=.{z^";
    assert!(!queue_id_ok(id));
    let _ = spool.path("deferred", id);
    assert_eq!(
        &*spool.path("deferred", "4Xy2Bc0001zLbJ"),
        Path::new("deferred/0/4Xy2Bc0001zLbJ")
    );
}
