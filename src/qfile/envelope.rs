//! Reading a queue file the way qmgr does (`qmgr/qmgr_message.c:
//! qmgr_message_read`): the envelope and extracted segments, skipping the
//! content, in batches of at most `limit` recipients; recipients already
//! marked done (`D`) or cancelled (`/`) are skipped. Non-recipient records
//! are taken from the first read; later reads resume at the saved offset.

use super::record::{rec, RecordReader};
use crate::log::addr;
use crate::proto::deliver_flag as del_flag;
use std::io::{Read, Seek};
use std::ops::Range;

/// `C` record flag bit 0: recipients are mixed with other records, so the
/// whole file must be read before it can be trusted (`global/qmgr_user.h`).
pub const READ_FLAG_MIXED_RCPT_OTHER: u32 = 1;
/// DSN NOTIFY=SUCCESS for some recipient (`DSN_NOTIFY_SUCCESS << 1`).
pub const READ_FLAG_NOTIFY_SUCCESS: u32 = 2 << 1;
/// The flags a `C` record may carry (`QMGR_READ_FLAG_USER`).
const READ_FLAG_USER: u32 = 1 | (1 << 1) | (2 << 1) | (4 << 1) | (8 << 1);
/// Private flag: every non-recipient record has been seen.
const READ_FLAG_SEEN_ALL_NON_RCPT: u32 = 1 << 16;

/// One recipient as qmgr keeps it (`global/recipient_list.h`): the
/// address, the original recipient and the DSN ORCPT share one
/// allocation, and an original recipient equal to the address (cleanup
/// writes both for nearly every recipient) is kept once. 40 bytes plus
/// the text, instead of 64 bytes and up to three allocations.
#[derive(Clone, Default)]
pub struct Recipient {
    /// File offset of the recipient's `R` record (for marking it done).
    pub offset: u64,
    /// DSN NOTIFY mask, or 0.
    pub dsn_notify: u32,
    /// Bytes of the address at the start of `text`.
    address_len: u32,
    /// Bytes of the original recipient after it, or [`SAME_AS_ADDRESS`].
    orig_len: u32,
    /// The address, the original recipient (unless the same), the ORCPT.
    text: Box<[u8]>,
}

/// `Recipient::orig_len` when the original recipient is the address.
const SAME_AS_ADDRESS: u32 = u32::MAX;

impl Recipient {
    /// A recipient at file offset `offset`; `orig_rcpt` and `dsn_orcpt`
    /// may be empty. None if a text is 4 GiB or longer (a damaged queue
    /// file: Postfix's own record lengths stop at 2 GiB).
    pub fn new(
        offset: u64,
        address: &[u8],
        orig_rcpt: &[u8],
        dsn_orcpt: &[u8],
        dsn_notify: u32,
    ) -> Option<Recipient> {
        let same = !address.is_empty() && orig_rcpt == address;
        let orig: &[u8] = if same { b"" } else { orig_rcpt };
        let address_len = u32::try_from(address.len()).ok()?;
        let orig_len = u32::try_from(orig.len())
            .ok()
            .filter(|&n| n != SAME_AS_ADDRESS)?;
        let mut text = Vec::with_capacity(address.len() + orig.len() + dsn_orcpt.len());
        text.extend_from_slice(address);
        text.extend_from_slice(orig);
        text.extend_from_slice(dsn_orcpt);
        Some(Recipient {
            offset,
            dsn_notify,
            address_len,
            orig_len: if same { SAME_AS_ADDRESS } else { orig_len },
            text: text.into_boxed_slice(),
        })
    }

    /// The recipient address (possibly rewritten by the resolver).
    pub fn address(&self) -> &[u8] {
        &self.text[..self.address_len as usize]
    }

    /// Bytes of `text` the original recipient takes (none when it is the
    /// address).
    fn orig_stored(&self) -> usize {
        if self.orig_len == SAME_AS_ADDRESS {
            0
        } else {
            self.orig_len as usize
        }
    }

    /// The original recipient (`O` record), or empty.
    pub fn orig_rcpt(&self) -> &[u8] {
        if self.orig_len == SAME_AS_ADDRESS {
            return self.address();
        }
        let start = self.address_len as usize;
        &self.text[start..start + self.orig_stored()]
    }

    /// DSN ORCPT (`dsn_orig_rcpt`), or empty.
    pub fn dsn_orcpt(&self) -> &[u8] {
        &self.text[self.address_len as usize + self.orig_stored()..]
    }

    /// Replaces the address (the resolver's rewritten form); the original
    /// recipient and the ORCPT stay as they were. False, with nothing
    /// changed, if the address is 4 GiB or longer.
    pub fn set_address(&mut self, address: &[u8]) -> bool {
        match Recipient::new(
            self.offset,
            address,
            self.orig_rcpt(),
            self.dsn_orcpt(),
            self.dsn_notify,
        ) {
            Some(r) => {
                *self = r;
                true
            }
            None => false,
        }
    }
}

impl PartialEq for Recipient {
    fn eq(&self, other: &Recipient) -> bool {
        self.offset == other.offset
            && self.dsn_notify == other.dsn_notify
            && self.address() == other.address()
            && self.orig_rcpt() == other.orig_rcpt()
            && self.dsn_orcpt() == other.dsn_orcpt()
    }
}

impl Eq for Recipient {}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipient")
            .field("offset", &self.offset)
            .field("dsn_notify", &self.dsn_notify)
            .field("address", &String::from_utf8_lossy(self.address()))
            .field("orig_rcpt", &String::from_utf8_lossy(self.orig_rcpt()))
            .field("dsn_orcpt", &String::from_utf8_lossy(self.dsn_orcpt()))
            .finish()
    }
}

/// Everything qmgr takes from a queue file besides recipients, plus the
/// state needed to read the next batch.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Content size (C field 1), bytes.
    pub data_size: u64,
    /// Offset of the first content record (C field 2).
    pub data_offset: u64,
    /// Content length logged as `size=` and sent to agents (C field 5, or 1).
    pub cont_length: u64,
    /// Recipients not yet read (starts as C field 3).
    pub rcpt_unread: i64,
    /// The recipient count of the `C` record, for the `nrcpt=` log field.
    pub rcpt_total: i64,
    /// `QMGR_READ_FLAG_*` bits.
    pub rflags: u32,
    /// SMTPUTF8 flags (C field 6).
    pub smtputf8: u32,
    /// Arrival time (`T` record): seconds, microseconds.
    pub arrival: (i64, i64),
    /// `create_time` attribute, or the arrival seconds.
    pub create_time: i64,
    /// The text fields (sender, filter, client attributes...), in one
    /// allocation: see [`Text`].
    pub texts: Texts,
    /// DSN RET (0, 1 FULL, 2 HDRS).
    pub dsn_ret: u32,
    /// Trace flags (`trace_flags` attribute, masked).
    pub tflags: u32,
    /// Offset of the `trace_flags` attribute when it is exactly RECORD.
    pub tflags_offset: u64,
    /// Offset of the `W` record, 0 if none.
    pub warn_offset: u64,
    /// Next delay-warning time (seconds), 0 = none, negative = sent.
    pub warn_time: i64,
    /// Where the next batch starts; 0 = no more recipients to read.
    pub rcpt_offset: u64,
}

/// Why a queue file was rejected: the message goes to the corrupt queue.
/// Warnings have been logged already.
/// A text field of the envelope (the string members of `qmgr_message.c`'s
/// `QMGR_MESSAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// Envelope sender (`S` record; empty = null sender); unset until read.
    Sender,
    /// Content filter `transport:nexthop` (`L` record, last wins).
    Filter,
    /// Inspection transport (`I` record).
    Inspect,
    /// Redirect address (`>` record).
    Redirect,
    /// `encoding` attribute.
    Encoding,
    /// DSN ENVID.
    DsnEnvid,
    /// Client name, address, port, protocol and HELO name (the `log_*`
    /// attributes, or the legacy ones before them).
    ClientName,
    ClientAddr,
    ClientPort,
    ClientProto,
    ClientHelo,
    /// SASL method, username and sender.
    SaslMethod,
    SaslUsername,
    SaslSender,
    /// `log_ident` attribute.
    LogIdent,
    /// `rewrite_context` attribute.
    RewriteContext,
    /// VERP delimiters (two characters).
    VerpDelims,
    /// The queue id (the file's name; `message->queue_id`): set by the
    /// queue manager when it takes the file, never by a record.
    QueueId,
}

const TEXTS: usize = Text::QueueId as usize + 1;

/// The envelope's text fields in one buffer, in the order of [`Text`]:
/// with 18 fields, one `Box` each cost about 580 bytes per message in
/// core; this costs the bytes plus 104. `ends[i]` is where field i ends in
/// `buf` (it starts where field i - 1 ends); an unset field is empty and
/// has its bit clear in `set`.
#[derive(Clone, Default)]
pub struct Texts {
    buf: Vec<u8>,
    ends: [u32; TEXTS],
    set: u32,
}

impl std::fmt::Debug for Texts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for i in 0..TEXTS {
            if self.set & (1 << i) != 0 {
                m.entry(&i, &String::from_utf8_lossy(&self.buf[self.range(i)]));
            }
        }
        m.finish()
    }
}

impl Texts {
    /// Where field `i` lies in `buf`.
    fn range(&self, i: usize) -> Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start as usize..self.ends[i] as usize
    }

    /// The field's bytes, or `None` if it was never set.
    pub fn get(&self, t: Text) -> Option<&[u8]> {
        self.is_set(t).then(|| &self.buf[self.range(t as usize)])
    }

    /// The field's bytes, empty if unset.
    pub fn or_empty(&self, t: Text) -> &[u8] {
        self.get(t).unwrap_or(b"")
    }

    /// True if the field was set (even to the empty string).
    pub fn is_set(&self, t: Text) -> bool {
        self.set & (1 << t as usize) != 0
    }

    /// Sets the field to `v`, in place of its old value (a queue file may
    /// repeat a record): the buffer never holds more than the current
    /// values. Beyond 4 GiB in all (no queue file has that much
    /// envelope), `v` is cut short.
    pub fn set(&mut self, t: Text, v: &[u8]) {
        let i = t as usize;
        let old = self.range(i);
        let room = (u32::MAX as usize).saturating_sub(self.buf.len() - old.len());
        let v = &v[..v.len().min(room)];
        let grow = v.len() as i64 - old.len() as i64;
        // In place of the old value: the bytes after it move (memmove).
        let (start, old_end, new_end) = (old.start, old.end, old.start + v.len());
        if new_end > old_end {
            let len = self.buf.len();
            self.buf.resize(len + (new_end - old_end), 0);
            self.buf.copy_within(old_end..len, new_end);
        } else if new_end < old_end {
            self.buf.copy_within(old_end.., new_end);
            self.buf.truncate(self.buf.len() - (old_end - new_end));
        }
        self.buf[start..new_end].copy_from_slice(v);
        for end in &mut self.ends[i..] {
            *end = (i64::from(*end) + grow) as u32;
        }
        self.set |= 1 << i;
    }

    /// Gives back the spare capacity once the envelope is read.
    pub fn shrink(&mut self) {
        self.buf.shrink_to_fit();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue file rejected")]
pub struct Rejected;

/// Options that affect how records are interpreted.
#[derive(Debug, Clone)]
pub struct ReadOptions<'a> {
    /// The queue the file is in (for the `(queue active)` log text).
    pub queue: &'a str,
    /// `verp_delimiter_filter`: characters allowed as VERP delimiters.
    pub verp_filter: &'a [u8],
    /// `confirm_delay_cleared`.
    pub confirm_delay_cleared: bool,
}

fn is_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// The number at the start of `s` as `strtol` reads it (leading C white
/// space, an optional sign, decimal digits) and the offset just after it;
/// `None` without a digit or when it does not fit an `i64`.
fn leading_long(s: &[u8]) -> Option<(i64, usize)> {
    let mut i = s
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
        .unwrap_or(s.len());
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits = i;
    let mut v: i64 = 0;
    while let Some(&c) = s.get(i).filter(|c| c.is_ascii_digit()) {
        let d = i64::from(c - b'0');
        v = v.checked_mul(10)?;
        v = if negative {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
        i += 1;
    }
    (i > digits).then_some((v, i))
}

/// `atol`, except that a number too large for an `i64` is 0.
fn atol(s: &[u8]) -> i64 {
    leading_long(s).map_or(0, |(v, _)| v)
}

/// Parses `name=value` as `split_nameval` does: the ranges of the name and
/// of the value (white space trimmed) in `data`.
fn split_attr(data: &[u8]) -> Result<(Range<usize>, Range<usize>), &'static str> {
    let trim = |s: &[u8]| -> (usize, usize) {
        let start = s
            .iter()
            .position(|c| !c.is_ascii_whitespace())
            .unwrap_or(s.len());
        let end = s
            .iter()
            .rposition(|c| !c.is_ascii_whitespace())
            .map_or(start, |e| e + 1);
        (start, end.max(start))
    };
    let (s, _) = trim(data);
    let name_len = data[s..]
        .iter()
        .position(|&c| c == b'=' || c.is_ascii_whitespace())
        .ok_or("missing '=' after attribute name")?;
    if name_len == 0 {
        return Err("missing attribute name");
    }
    let name = s..s + name_len;
    let (a, _) = trim(&data[name.end..]);
    let eq = name.end + a;
    if data.get(eq) != Some(&b'=') {
        return Err("missing '=' after attribute name");
    }
    let (vs, ve) = trim(&data[eq + 1..]);
    Ok((name, eq + 1 + vs..eq + 1 + ve))
}

/// Maps the five attribute names that stand for pseudo record types (`rec_attr_map`).
fn attr_pseudo_type(name: &[u8]) -> Option<u8> {
    Some(match name {
        b"dsn_orig_rcpt" => rec::DSN_ORCPT,
        b"notify_flags" => rec::DSN_NOTIFY,
        b"envelope_id" => rec::DSN_ENVID,
        b"ret_flags" => rec::DSN_RET,
        b"create_time" => rec::CTIME,
        _ => return None,
    })
}

const DSN_NOTIFY_ANY: u32 = 2 | 4 | 8;
fn dsn_notify_ok(n: u32) -> bool {
    n == 1 || (n != 0 && n & !DSN_NOTIFY_ANY == 0)
}

fn set_once(env: &mut Envelope, t: Text, value: &[u8], id: &str, name: &str) {
    if !env.texts.is_set(t) {
        env.texts.set(t, value);
    } else {
        tracing::warn!(
            "{id}: ignoring multiple {name} attribute: {}",
            String::from_utf8_lossy(value)
        );
    }
}

/// Reads the next batch of at most `limit` recipients into `out`
/// (`limit` > 0). On the first call `env` must be fresh; `env.rcpt_offset`
/// tells whether more batches remain.
///
/// Logs Postfix's warnings and, on first seeing the sender, the
/// `<id>: from=<...>, size=N, nrcpt=N (queue Q)` line.
///
/// Errors: [`Rejected`] for a damaged file (the batch is discarded and the
/// resume state restored, as qmgr does).
#[allow(clippy::too_many_arguments)] // to be folded into a per-file context
pub fn read_batch<R: Read + Seek>(
    file: R,
    file_len: u64,
    path: &str,
    id: &str,
    env: &mut Envelope,
    limit: usize,
    opts: &ReadOptions<'_>,
    out: &mut Vec<Recipient>,
) -> Result<(), Rejected> {
    let mut reader = RecordReader::new(file, file_len);
    let save_offset = env.rcpt_offset;
    let save_unread = env.rcpt_unread;
    let first_read = env.rcpt_offset == 0;
    if first_read {
        env.rflags = READ_FLAG_MIXED_RCPT_OTHER;
    } else if reader.seek(env.rcpt_offset).is_err() {
        tracing::warn!("{id}: seek file {path} failed");
        return Err(Rejected);
    }
    env.rcpt_offset = 0;
    let start_len = out.len();
    let result = read_records(&mut reader, path, id, env, limit.max(1), opts, out);
    // Postfix's sanity checks, whatever the outcome.
    if env.rcpt_unread < 0 || (env.rcpt_offset == 0 && env.rcpt_unread != 0) {
        tracing::warn!("{id}: rcpt count mismatch ({})", env.rcpt_unread);
        env.rcpt_unread = 0;
    }
    let ok = match result {
        Err(Rejected) => false,
        Ok(()) if env.arrival.0 == 0 => {
            tracing::warn!("{id}: message rejected: missing arrival time record");
            false
        }
        Ok(()) if !env.texts.is_set(Text::Sender) => {
            tracing::warn!("{id}: message rejected: missing sender record");
            false
        }
        Ok(()) if env.data_offset == 0 => {
            tracing::warn!("{id}: message rejected: missing size record");
            false
        }
        Ok(()) => true,
    };
    if ok {
        if opts.confirm_delay_cleared && env.warn_time < 0 {
            env.tflags |= del_flag::REC_DLY_SENT;
        }
        if env.create_time == 0 {
            env.create_time = env.arrival.0;
        }
        env.texts.shrink();
        Ok(())
    } else {
        env.rcpt_offset = save_offset;
        env.rcpt_unread = save_unread;
        out.truncate(start_len);
        Err(Rejected)
    }
}

fn read_records<R: Read + Seek>(
    reader: &mut RecordReader<R>,
    path: &str,
    id: &str,
    env: &mut Envelope,
    limit: usize,
    opts: &ReadOptions<'_>,
    out: &mut Vec<Recipient>,
) -> Result<(), Rejected> {
    let mut buf = Vec::with_capacity(256);
    let mut orig_rcpt: Option<Box<[u8]>> = None;
    let mut dsn_orcpt: Option<Box<[u8]>> = None;
    let mut dsn_notify: u32 = 0;
    let mut have_log_client_attr = false;
    let mut batch = 0usize;
    let mut saved_ptr_offset: u64 = 0;
    let mut reverse_jumps = 0u32;
    let seek_err = |what: &str| tracing::warn!("{id}: seek file {path}: {what}");

    let outcome: Result<(), Rejected> = loop {
        let mut expected = [rec::ENVELOPE, rec::EXTRACT];
        let mut expected_slice: &[&[u8]] = &expected[..];
        let mut curr = reader.pos();
        if curr == env.data_offset && curr > 0 {
            if reader.skip(env.data_size).is_err() {
                seek_err("skip content");
                break Err(Rejected);
            }
            curr += env.data_size;
            expected = [b"X", b""];
            expected_slice = &expected[..1];
        }
        let rtype = match reader.read(&mut buf) {
            Ok(Some(t)) => t,
            Ok(None) => {
                tracing::warn!("{id}: message rejected: missing end record");
                break Err(Rejected);
            }
            Err(e) => {
                tracing::warn!("{path}: {e}");
                tracing::warn!("{id}: message rejected: missing end record");
                break Err(Rejected);
            }
        };
        if rtype == rec::PTR {
            // rec_goto: follow a pointer; 0 is a placeholder.
            let text = String::from_utf8_lossy(&buf);
            let Ok(offset) = text.trim().parse::<u64>() else {
                tracing::warn!("{path}: malformed pointer record value: {text}");
                break Err(Rejected);
            };
            if offset == 0 {
                continue;
            }
            if offset <= saved_ptr_offset {
                reverse_jumps += 1;
                if reverse_jumps > 10000 {
                    tracing::warn!("{path}: too many reverse jump records");
                    break Err(Rejected);
                }
            }
            if reader.seek(offset).is_err() {
                tracing::warn!("{path}: seek error after pointer record");
                break Err(Rejected);
            }
            saved_ptr_offset = offset;
            continue;
        }
        if !expected_slice.iter().any(|set| set.contains(&rtype)) || rtype == 0 {
            tracing::warn!(
                "Unexpected record type '{}' at offset {}",
                rtype as char,
                curr
            );
            break Err(Rejected);
        }
        if rtype == rec::END {
            env.rflags |= READ_FLAG_SEEN_ALL_NON_RCPT;
            break Ok(());
        }
        let mut rtype = rtype;
        // The attribute's name and value, as ranges of `buf`.
        let mut attr: Option<(Range<usize>, Range<usize>)> = None;
        if rtype == rec::ATTR {
            match split_attr(&buf) {
                Err(why) => {
                    tracing::warn!(
                        "{id}: bad attribute record: {why}: {:.200}",
                        String::from_utf8_lossy(&buf)
                    );
                    break Err(Rejected);
                }
                Ok((name, value)) => {
                    if let Some(t) = attr_pseudo_type(&buf[name.clone()]) {
                        rtype = t;
                        buf.truncate(value.end);
                        buf.drain(..value.start);
                    } else {
                        attr = Some((name, value));
                    }
                }
            }
        }
        let data = &buf[..];
        match rtype {
            rec::RCPT => {
                if env.rcpt_offset == 0 {
                    env.rcpt_unread -= 1;
                    let Some(r) = Recipient::new(
                        curr,
                        data,
                        orig_rcpt.take().as_deref().unwrap_or_default(),
                        dsn_orcpt.take().as_deref().unwrap_or_default(),
                        std::mem::take(&mut dsn_notify),
                    ) else {
                        tracing::warn!("{id}: message rejected: recipient record too long");
                        break Err(Rejected);
                    };
                    out.push(r);
                    batch += 1;
                    if batch >= limit {
                        env.rcpt_offset = reader.pos();
                        if env.rflags & READ_FLAG_SEEN_ALL_NON_RCPT != 0 {
                            break Ok(());
                        }
                        if env.rflags & READ_FLAG_MIXED_RCPT_OTHER != 0 {
                            continue;
                        }
                        if curr > env.data_offset {
                            env.rflags |= READ_FLAG_SEEN_ALL_NON_RCPT;
                            break Ok(());
                        }
                        if reader.seek(env.data_offset).is_err() {
                            seek_err("seek to content");
                            break Err(Rejected);
                        }
                    }
                }
                continue;
            }
            rec::DONE | rec::DRCP => {
                if env.rcpt_offset == 0 {
                    env.rcpt_unread -= 1;
                    dsn_orcpt = None;
                    orig_rcpt = None;
                    dsn_notify = 0;
                }
                continue;
            }
            rec::DSN_ORCPT => {
                if let Some(old) = dsn_orcpt.take() {
                    tracing::warn!(
                        "{id}: ignoring out-of-order DSN original recipient address <{:.200}>",
                        String::from_utf8_lossy(&old)
                    );
                }
                if env.rcpt_offset == 0 {
                    dsn_orcpt = Some(data.into());
                }
                continue;
            }
            rec::DSN_NOTIFY => {
                if dsn_notify != 0 {
                    tracing::warn!("{id}: ignoring out-of-order DSN notify flags <{dsn_notify}>");
                    dsn_notify = 0;
                }
                if env.rcpt_offset == 0 {
                    let n = if is_digits(data) { atol(data) } else { 0 };
                    if n <= 0 || n > u32::MAX as i64 || !dsn_notify_ok(n as u32) {
                        tracing::warn!(
                            "{id}: ignoring malformed DSN notify flags <{:.200}>",
                            String::from_utf8_lossy(data)
                        );
                    } else {
                        dsn_notify = n as u32;
                    }
                    continue;
                }
            }
            rec::ORCP => {
                if let Some(old) = orig_rcpt.take() {
                    tracing::warn!(
                        "{id}: ignoring out-of-order original recipient <{:.200}>",
                        String::from_utf8_lossy(&old)
                    );
                }
                if env.rcpt_offset == 0 {
                    orig_rcpt = Some(data.into());
                }
                continue;
            }
            _ => {}
        }
        if env.rflags & READ_FLAG_SEEN_ALL_NON_RCPT != 0 {
            continue;
        }
        match rtype {
            rec::SIZE => {
                if env.data_offset == 0 {
                    match parse_size_record(data) {
                        SizeRecord::Modern {
                            data_size,
                            data_offset,
                            rcpt_count,
                            rflags,
                            cont_length,
                            smtputf8,
                        } => {
                            if data_offset <= 0 || data_size <= 0 {
                                tracing::warn!(
                                    "{id}: invalid size record: {:.100}",
                                    String::from_utf8_lossy(data)
                                );
                                break Err(Rejected);
                            }
                            if rflags & !READ_FLAG_USER != 0 {
                                tracing::warn!(
                                    "{id}: invalid flags in size record: {:.100}",
                                    String::from_utf8_lossy(data)
                                );
                                break Err(Rejected);
                            }
                            if cont_length < 0 {
                                tracing::warn!(
                                    "{id}: invalid size record: {:.100}",
                                    String::from_utf8_lossy(data)
                                );
                                break Err(Rejected);
                            }
                            env.data_size = data_size as u64;
                            env.data_offset = data_offset as u64;
                            env.rcpt_unread = rcpt_count;
                            env.rcpt_total = rcpt_count;
                            env.rflags = rflags;
                            env.cont_length = if cont_length == 0 {
                                data_size as u64
                            } else {
                                cont_length as u64
                            };
                            env.smtputf8 = smtputf8 as u32;
                        }
                        SizeRecord::Weird => {
                            // Pre-2001 single-field size records are not produced by any
                            // Postfix that Debian ships; treat them like other damage.
                            tracing::warn!("{id}: message rejected: weird size record");
                            break Err(Rejected);
                        }
                    }
                }
                continue;
            }
            rec::TIME => {
                if env.arrival.0 == 0 {
                    env.arrival.0 = atol(data);
                    let digits = data.iter().take_while(|c| c.is_ascii_digit()).count();
                    env.arrival.1 = atol(&data[digits..]);
                }
                continue;
            }
            rec::CTIME => {
                if env.create_time == 0 {
                    env.create_time = atol(data);
                }
                continue;
            }
            rec::FILT => {
                env.texts.set(Text::Filter, data);
                continue;
            }
            rec::INSP => {
                env.texts.set(Text::Inspect, data);
                continue;
            }
            rec::RDR => {
                env.texts.set(Text::Redirect, data);
                continue;
            }
            rec::FROM => {
                if !env.texts.is_set(Text::Sender) {
                    env.texts.set(Text::Sender, data);
                    // Built by hand and logged directly: the line of every
                    // message read.
                    let from = addr(data);
                    let mut line = String::with_capacity(64 + id.len() + from.len());
                    line.push_str(id);
                    line.push_str(": from=<");
                    line.push_str(&from);
                    line.push_str(">, size=");
                    crate::log::push_unsigned(&mut line, env.cont_length);
                    line.push_str(", nrcpt=");
                    crate::log::push_decimal(&mut line, env.rcpt_unread);
                    line.push_str(" (queue ");
                    line.push_str(opts.queue);
                    line.push(')');
                    crate::log::info(&line);
                }
                continue;
            }
            rec::DSN_ENVID => {
                env.texts.set(Text::DsnEnvid, data);
            }
            rec::DSN_RET => {
                let n = if is_digits(data) { atol(data) } else { 0 };
                if n == 1 || n == 2 {
                    env.dsn_ret = n as u32;
                } else {
                    tracing::warn!(
                        "{id}: ignoring malformed DSN RET flags in queue file record:{:.100}",
                        String::from_utf8_lossy(data)
                    );
                }
            }
            rec::WARN => {
                if env.warn_offset == 0 {
                    env.warn_offset = curr;
                    env.warn_time = atol(data);
                }
                continue;
            }
            rec::VERP => {
                if !env.texts.is_set(Text::VerpDelims) {
                    if env.texts.or_empty(Text::Sender).is_empty() {
                        tracing::warn!("{id}: ignoring VERP request for null sender");
                    } else if data.len() != 2 || !data.iter().all(|c| opts.verp_filter.contains(c))
                    {
                        tracing::warn!(
                            "{id}: ignoring bad VERP request: \"{:.100}\"",
                            String::from_utf8_lossy(data)
                        );
                    } else {
                        env.texts.set(Text::VerpDelims, data);
                    }
                }
                continue;
            }
            _ => {}
        }
        if let Some((name, value)) = attr {
            apply_attribute(
                env,
                id,
                &buf[name],
                &buf[value],
                curr,
                &mut have_log_client_attr,
            );
        }
    };
    if outcome.is_ok() {
        if let Some(o) = dsn_orcpt {
            tracing::warn!(
                "{id}: ignoring out-of-order DSN original recipient <{:.200}>",
                String::from_utf8_lossy(&o)
            );
        }
        if let Some(o) = orig_rcpt {
            tracing::warn!(
                "{id}: ignoring out-of-order original recipient <{:.200}>",
                String::from_utf8_lossy(&o)
            );
        }
    }
    outcome
}

fn apply_attribute(
    env: &mut Envelope,
    id: &str,
    name: &[u8],
    value: &[u8],
    offset: u64,
    have_log: &mut bool,
) {
    let texts = &mut env.texts;
    let mut legacy = |t: Text, have: bool| {
        if !have && !texts.is_set(t) {
            texts.set(t, value);
        }
    };
    match name {
        b"encoding" => env.texts.set(Text::Encoding, value),
        b"client_name" => legacy(Text::ClientName, *have_log),
        b"client_address" => legacy(Text::ClientAddr, *have_log),
        b"client_port" => legacy(Text::ClientPort, *have_log),
        b"protocol_name" => legacy(Text::ClientProto, *have_log),
        b"helo_name" => legacy(Text::ClientHelo, *have_log),
        b"log_client_name"
        | b"log_client_address"
        | b"log_client_port"
        | b"log_protocol_name"
        | b"log_helo_name" => {
            let t = match name {
                b"log_client_name" => Text::ClientName,
                b"log_client_address" => Text::ClientAddr,
                b"log_client_port" => Text::ClientPort,
                b"log_protocol_name" => Text::ClientProto,
                _ => Text::ClientHelo,
            };
            env.texts.set(t, value);
            *have_log = true;
        }
        b"sasl_method" => set_once(env, Text::SaslMethod, value, id, "sasl_method"),
        b"sasl_username" => set_once(env, Text::SaslUsername, value, id, "sasl_username"),
        b"sasl_sender" => set_once(env, Text::SaslSender, value, id, "sasl_sender"),
        b"log_ident" => set_once(env, Text::LogIdent, value, id, "log_ident"),
        b"rewrite_context" => set_once(env, Text::RewriteContext, value, id, "rewrite_context"),
        b"trace_flags" if env.tflags == 0 => {
            env.tflags = (atol(value) as u32) & del_flag::TRACE_MASK;
            env.tflags_offset = if env.tflags == del_flag::RECORD {
                offset
            } else {
                0
            };
        }
        _ => {}
    }
}

enum SizeRecord {
    Modern {
        data_size: i64,
        data_offset: i64,
        rcpt_count: i64,
        rflags: u32,
        cont_length: i64,
        smtputf8: i64,
    },
    Weird,
}

/// Parses the `C` record like `sscanf("%ld %ld %d %d %ld %d")`: at least
/// three fields make a modern record; missing trailing fields are 0.
fn parse_size_record(data: &[u8]) -> SizeRecord {
    let mut fields = [0i64; 6];
    let mut count = 0;
    let mut rest = data;
    while count < 6 {
        let Some((v, end)) = leading_long(rest) else {
            break;
        };
        // %d fields must fit an int.
        if matches!(count, 2 | 3 | 5) && (v < i32::MIN as i64 || v > i32::MAX as i64) {
            break;
        }
        fields[count] = v;
        count += 1;
        rest = &rest[end..];
    }
    if count >= 3 {
        SizeRecord::Modern {
            data_size: fields[0],
            data_offset: fields[1],
            rcpt_count: fields[2],
            rflags: fields[3] as u32,
            cont_length: fields[4],
            smtputf8: fields[5],
        }
    } else {
        SizeRecord::Weird
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_texts_share_one_allocation() {
        let r = Recipient::new(7, b"a@x.example", b"a@x.example", b"rfc822;a@x", 2).unwrap();
        assert_eq!(r.address(), b"a@x.example");
        assert_eq!(r.orig_rcpt(), b"a@x.example");
        assert_eq!(r.dsn_orcpt(), b"rfc822;a@x");
        assert_eq!(r.text.len(), 11 + 10, "the original recipient is kept once");
        let mut moved = r.clone();
        assert!(moved.set_address(b"b@y.example"));
        assert_eq!(moved.address(), b"b@y.example");
        assert_eq!(moved.orig_rcpt(), b"a@x.example", "the original stays");
        assert_eq!(moved.dsn_orcpt(), b"rfc822;a@x");
        assert_eq!((moved.offset, moved.dsn_notify), (7, 2));
        let bare = Recipient::new(0, b"c@z", b"", b"", 0).unwrap();
        assert_eq!((bare.orig_rcpt(), bare.dsn_orcpt()), (&b""[..], &b""[..]));
        let other = Recipient::new(0, b"c@z", b"C@Z", b"", 0).unwrap();
        assert_eq!(other.orig_rcpt(), b"C@Z");
        assert_ne!(bare, other);
        assert_eq!(std::mem::size_of::<Recipient>(), 40);
    }

    #[test]
    fn numbers_read_as_strtol_reads_them() {
        assert_eq!(leading_long(b" \t+42x"), Some((42, 5)));
        assert_eq!(leading_long(b"\x0b-7 8"), Some((-7, 3)));
        assert_eq!(leading_long(b"-9223372036854775808"), Some((i64::MIN, 20)));
        assert_eq!(leading_long(b"9223372036854775808"), None);
        assert_eq!(leading_long(b"+"), None);
        assert_eq!(leading_long(b"\xc2\xa012"), None);
        assert_eq!(atol(b"1795393402.847387"), 1795393402);
        assert_eq!(atol(b"x"), 0);
        assert!(matches!(
            parse_size_record(b"   267   375  1   0  267  0"),
            SizeRecord::Modern {
                data_size: 267,
                data_offset: 375,
                rcpt_count: 1,
                rflags: 0,
                cont_length: 267,
                smtputf8: 0
            }
        ));
        assert!(matches!(parse_size_record(b"1 2"), SizeRecord::Weird));
        assert!(matches!(
            parse_size_record(b"1 2 4294967296"),
            SizeRecord::Weird
        ));
    }

    /// Texts set in any order (a field before one earlier in Text order),
    /// empty or set again, keep the others' values; only the current
    /// values stay in the buffer.
    #[test]
    fn texts_set_in_any_order_and_again_keep_the_others() {
        let mut t = Texts::default();
        assert_eq!(t.get(Text::Sender), None);
        t.set(Text::ClientName, b"host.example");
        t.set(Text::Sender, b"");
        t.set(Text::Filter, b"smtp:[a]");
        t.set(Text::VerpDelims, b"+=");
        assert_eq!(t.get(Text::Sender), Some(&b""[..]));
        assert!(t.is_set(Text::Sender) && !t.is_set(Text::Inspect));
        assert_eq!(t.or_empty(Text::Inspect), b"");
        t.set(Text::Filter, b"lmtp:[longer.example]:24");
        t.set(Text::Sender, b"who@example.com");
        t.set(Text::ClientName, b"h.example");
        assert_eq!(t.get(Text::Filter), Some(&b"lmtp:[longer.example]:24"[..]));
        assert_eq!(t.get(Text::ClientName), Some(&b"h.example"[..]));
        assert_eq!(t.get(Text::VerpDelims), Some(&b"+="[..]));
        assert_eq!(t.or_empty(Text::Sender), b"who@example.com");
        t.shrink();
        assert_eq!(t.buf.len(), 15 + 24 + 9 + 2, "only the current values");
        assert_eq!(t.buf.capacity(), t.buf.len());
    }
}
