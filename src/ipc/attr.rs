//! Postfix's attribute protocol, the "0" (NUL) variant used on every socket
//! qmgr talks over (`util/attr_print0.c`, `util/attr_scan0.c`): each
//! attribute is `name\0value\0`; a list ends with an empty name (`\0`).
//! Integers travel as unsigned decimal, data as base64.
//!
//! Peers read strictly (`ATTR_FLAG_STRICT`): order and completeness matter,
//! so [`AttrList::expect`] checks names in order.

use base64::Engine as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest name or value accepted from a peer, bytes.
pub const MAX_TOKEN: usize = 1 << 20;
/// Most attributes accepted in one list.
pub const MAX_ATTRS: usize = 1024;

/// Builds attribute lists for sending (`attr_print0`).
#[derive(Debug, Default, Clone)]
pub struct AttrWriter {
    buf: Vec<u8>,
}

impl AttrWriter {
    /// An empty buffer.
    pub fn new() -> AttrWriter {
        AttrWriter {
            buf: Vec::with_capacity(1024),
        }
    }

    fn name(&mut self, name: &str) {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
    }

    /// `name\0<u32 decimal>\0` (ATTR_TYPE_INT; negative ints are sent as their
    /// unsigned 32-bit value by the caller's cast).
    pub fn int(&mut self, name: &str, value: u32) -> &mut Self {
        self.long(name, u64::from(value))
    }

    /// `name\0<u64 decimal>\0` (ATTR_TYPE_LONG).
    pub fn long(&mut self, name: &str, value: u64) -> &mut Self {
        tracing::debug!("send attr {name} = {value}");
        self.name(name);
        let mut digits = [0u8; 20];
        self.buf
            .extend_from_slice(crate::decimal(value, &mut digits).as_bytes());
        self.buf.push(0);
        self
    }

    /// `name\0<bytes>\0` (ATTR_TYPE_STR). A NUL inside `value` cannot be sent;
    /// it is replaced by `?` (Postfix strings cannot hold one either).
    pub fn str(&mut self, name: &str, value: &[u8]) -> &mut Self {
        if crate::log::verbose() {
            tracing::debug!("send attr {name} = {}", String::from_utf8_lossy(value));
        }
        self.name(name);
        if value.contains(&0) {
            self.buf
                .extend(value.iter().map(|&c| if c == 0 { b'?' } else { c }));
        } else {
            self.buf.extend_from_slice(value);
        }
        self.buf.push(0);
        self
    }

    /// `name\0<base64>\0` (ATTR_TYPE_DATA).
    pub fn data(&mut self, name: &str, value: &[u8]) -> &mut Self {
        tracing::debug!("send attr {name} = [data {} bytes]", value.len());
        self.name(name);
        let start = self.buf.len();
        self.buf.resize(start + value.len().div_ceil(3) * 4, 0);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(value, &mut self.buf[start..])
            .expect("room for base64");
        self.buf.truncate(start + n);
        self.buf.push(0);
        self
    }

    /// Ends the current list (the empty name).
    pub fn end(&mut self) -> &mut Self {
        self.buf.push(0);
        self
    }

    /// The bytes built so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes built so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Why an attribute list could not be read or was not what was expected.
#[derive(Debug, thiserror::Error)]
pub enum AttrError {
    /// The peer closed the connection before the first byte of the list
    /// (Postfix's `attr_scan0` then returns quietly, having read nothing).
    #[error("premature end-of-input")]
    Closed,
    /// The peer closed the connection inside the list: while reading a
    /// value (`value`) or a name, after part of it (`partial`) or at its
    /// start.
    #[error("premature end-of-input")]
    Eof { value: bool, partial: bool },
    /// No byte came within the per-read time limit before the list
    /// started (attr_scan0 returns quietly; Postfix's `%m` then says
    /// "Connection timed out").
    #[error("timeout")]
    NoReply,
    /// No byte came within the per-read time limit inside the list
    /// ([`AttrList::read_with`]); `value` and `partial` as for `Eof`.
    #[error("timeout")]
    Timeout { value: bool, partial: bool },
    /// A read error (including a timeout of the whole read).
    #[error("read error: {}", crate::log::errno_text(.0))]
    Io(#[from] std::io::Error),
    /// A name or value longer than [`MAX_TOKEN`], or more than [`MAX_ATTRS`].
    #[error("attribute list too large")]
    TooLarge,
    /// The list does not have the expected attributes in the expected order.
    #[error("unexpected attribute {got} (expecting: {want})")]
    Unexpected { got: String, want: String },
    /// A missing attribute at the end of the list.
    #[error("missing attribute {0}")]
    Missing(String),
    /// A value that should be a number is not.
    #[error("malformed numerical data for attribute {name}: {value}")]
    BadNumber { name: String, value: String },
    /// A protocol announcement other than the expected one.
    #[error("unexpected {name} {got} (expected: {want})")]
    WrongValue {
        name: String,
        got: String,
        want: String,
    },
}

impl AttrError {
    /// The warning Postfix's `attr_scan0` logs for this error, for the
    /// stream `path` (e.g. `private/smtp socket`), or None where it logs
    /// nothing (a peer that closed before the first byte).
    pub fn warning(&self, path: &str) -> Option<String> {
        let what = |value: bool| {
            if value {
                "input attribute value"
            } else {
                "input attribute name"
            }
        };
        Some(match self {
            AttrError::Closed | AttrError::NoReply => return None,
            AttrError::Eof { value, partial } | AttrError::Timeout { value, partial }
                if *partial =>
            {
                format!(
                    "unexpected end-of-input from {path} while reading {}",
                    what(*value)
                )
            }
            AttrError::Eof { value, .. } => format!(
                "premature end-of-input on {path} while reading {}",
                what(*value)
            ),
            AttrError::Timeout { value, .. } => {
                format!("timeout on {path} while reading {}", what(*value))
            }
            AttrError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                format!("timeout on {path} while reading input attribute name")
            }
            AttrError::Io(_) => {
                format!("premature end-of-input on {path} while reading input attribute name")
            }
            AttrError::TooLarge => {
                format!("attribute count exceeds limit {MAX_ATTRS} in input from {path}")
            }
            AttrError::Unexpected { got, want } => {
                format!("unexpected attribute {got} from {path} (expecting: {want})")
            }
            AttrError::Missing(name) => format!("missing attribute {name} in input from {path}"),
            AttrError::BadNumber { value, .. } => format!(
                "malformed numerical data from {path} while reading input attribute value: {:.100}",
                value
            ),
            AttrError::WrongValue { name, got, want } => {
                format!("unexpected {name} {got} from {path} (expected: {want})")
            }
        })
    }
}

/// One received attribute list: (name, value) pairs in order, every
/// name and value in one buffer (two allocations per list, not two per
/// attribute).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttrList {
    /// The names and values, one after the other.
    text: Vec<u8>,
    /// Where each token ends in `text`: names at even indexes, values at
    /// odd ones.
    ends: Vec<usize>,
}

impl AttrList {
    /// The number of (name, value) pairs.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// Whether the list has no pairs (a bare terminator).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Token `i` of the list (names even, values odd).
    fn token(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// Pair `i`: (name, value), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        (i < self.len()).then(|| (self.token(2 * i), self.token(2 * i + 1)))
    }

    /// The pairs in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        (0..self.len()).map(|i| (self.token(2 * i), self.token(2 * i + 1)))
    }

    /// Ends the token that `text` received since the last one.
    fn end_token(&mut self) {
        self.ends.push(self.text.len());
    }

    /// Parses one list from the front of `input`; returns it and the number of
    /// bytes used, or `None` if `input` holds no complete list yet.
    ///
    /// Errors: [`AttrError::TooLarge`].
    pub fn parse(input: &[u8]) -> Result<Option<(AttrList, usize)>, AttrError> {
        let mut list = AttrList {
            text: Vec::with_capacity(input.len().min(512)),
            ends: Vec::with_capacity(16),
        };
        let mut pos = 0;
        loop {
            let Some(nul) = input[pos..].iter().position(|&c| c == 0) else {
                return Ok(None);
            };
            let name = &input[pos..pos + nul];
            pos += nul + 1;
            if name.is_empty() {
                return Ok(Some((list, pos)));
            }
            let Some(nul) = input[pos..].iter().position(|&c| c == 0) else {
                return Ok(None);
            };
            let value = &input[pos..pos + nul];
            pos += nul + 1;
            if list.len() >= MAX_ATTRS {
                return Err(AttrError::TooLarge);
            }
            list.text.extend_from_slice(name);
            list.end_token();
            list.text.extend_from_slice(value);
            list.end_token();
        }
    }

    /// Reads one list from a buffered stream.
    ///
    /// Errors: [`AttrError::Closed`] if the stream ends before the list
    /// starts, [`AttrError::Eof`] if it ends inside the list,
    /// [`AttrError::Io`], [`AttrError::TooLarge`].
    pub async fn read<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<AttrList, AttrError> {
        Self::read_with(reader, None).await
    }

    /// Like [`AttrList::read`], with each read from the stream limited to
    /// `per_read` (Postfix's stream timeouts, `util/vstream.c`, which
    /// `global/timed_ipc.c` sets to `ipc_timeout`): a peer that goes quiet
    /// for that long fails the read, one that trickles does not.
    ///
    /// Errors: as [`AttrList::read`], [`AttrError::NoReply`] and
    /// [`AttrError::Timeout`].
    pub async fn read_with<R: AsyncBufRead + Unpin>(
        reader: &mut R,
        per_read: Option<std::time::Duration>,
    ) -> Result<AttrList, AttrError> {
        // A peer writes a list with one write: once the first bytes are
        // in, the whole list usually is, and parses in one go.
        let Some(first) = fill_within(reader, per_read).await? else {
            return Err(AttrError::NoReply);
        };
        if first.is_empty() {
            return Err(AttrError::Closed);
        }
        if let Some((list, used)) = AttrList::parse(first)? {
            reader.consume(used);
            if crate::log::verbose() {
                for (name, value) in list.pairs() {
                    tracing::debug!("input attribute name: {}", String::from_utf8_lossy(name));
                    tracing::debug!("input attribute value: {}", String::from_utf8_lossy(value));
                }
                tracing::debug!("input attribute name: (end)");
            }
            return Ok(list);
        }
        let mut list = AttrList {
            text: Vec::with_capacity(128),
            ends: Vec::with_capacity(16),
        };
        loop {
            let start = list.text.len();
            match read_token(reader, per_read, false, &mut list.text).await {
                Err(AttrError::Eof { partial: false, .. }) if list.is_empty() => {
                    return Err(AttrError::Closed)
                }
                Err(AttrError::Timeout { partial: false, .. }) if list.is_empty() => {
                    return Err(AttrError::NoReply)
                }
                r => r?,
            }
            if list.text.len() == start {
                tracing::debug!("input attribute name: (end)");
                return Ok(list);
            }
            list.end_token();
            read_token(reader, per_read, true, &mut list.text).await?;
            list.end_token();
            let n = list.ends.len();
            if crate::log::verbose() {
                let name = String::from_utf8_lossy(list.token(n - 2)).into_owned();
                let value = String::from_utf8_lossy(list.token(n - 1)).into_owned();
                tracing::debug!("input attribute name: {name}");
                tracing::debug!("input attribute value: {value}");
            }
            if list.len() > MAX_ATTRS {
                return Err(AttrError::TooLarge);
            }
        }
    }

    /// Checks that the list holds exactly `names`, in order, and returns their
    /// values (strict scanning).
    ///
    /// Errors: [`AttrError::Unexpected`] or [`AttrError::Missing`].
    pub fn expect(&self, names: &[&str]) -> Result<Vec<&[u8]>, AttrError> {
        let mut out = Vec::with_capacity(names.len());
        for (i, want) in names.iter().enumerate() {
            match self.get(i) {
                None => return Err(AttrError::Missing((*want).to_string())),
                Some((got, value)) => {
                    if got != want.as_bytes() {
                        return Err(AttrError::Unexpected {
                            got: String::from_utf8_lossy(got).into_owned(),
                            want: (*want).to_string(),
                        });
                    }
                    out.push(value);
                }
            }
        }
        if let Some((extra, _)) = self.get(names.len()) {
            return Err(AttrError::Unexpected {
                got: String::from_utf8_lossy(extra).into_owned(),
                want: "(list terminator)".into(),
            });
        }
        Ok(out)
    }
}

impl<N: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(N, V)> for AttrList {
    /// A list of these (name, value) pairs, in order.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> AttrList {
        let mut list = AttrList::default();
        for (name, value) in pairs {
            list.text.extend_from_slice(name.as_ref());
            list.end_token();
            list.text.extend_from_slice(value.as_ref());
            list.end_token();
        }
        list
    }
}

/// Parses an INT attribute sent as unsigned decimal into its signed value
/// (`-1` arrives as `4294967295`).
///
/// Errors: [`AttrError::BadNumber`].
pub fn parse_int(name: &str, value: &[u8]) -> Result<i32, AttrError> {
    let bad = || AttrError::BadNumber {
        name: name.into(),
        value: String::from_utf8_lossy(value).into_owned(),
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let v: u64 = text.trim_start().parse().map_err(|_| bad())?;
    if v > u32::MAX as u64 {
        return Err(bad());
    }
    Ok(v as u32 as i32)
}

/// Reads one NUL-terminated token onto the end of `text`; `value` says
/// which kind, for errors.
async fn read_token<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    per_read: Option<std::time::Duration>,
    value: bool,
    text: &mut Vec<u8>,
) -> Result<(), AttrError> {
    let start = text.len();
    loop {
        let Some(buf) = fill_within(reader, per_read).await? else {
            return Err(AttrError::Timeout {
                value,
                partial: text.len() > start,
            });
        };
        if buf.is_empty() {
            return Err(AttrError::Eof {
                value,
                partial: text.len() > start,
            });
        }
        if let Some(nul) = buf.iter().position(|&c| c == 0) {
            text.extend_from_slice(&buf[..nul]);
            reader.consume(nul + 1);
            return Ok(());
        }
        let n = buf.len();
        text.extend_from_slice(buf);
        reader.consume(n);
        if text.len() - start > MAX_TOKEN {
            return Err(AttrError::TooLarge);
        }
    }
}

/// The buffered bytes, filled if there are none, or `None` if that read
/// waited longer than `per_read`. Only a read that would wait is limited
/// (vstream's timeout is on read(2)); bytes already buffered need no
/// timer.
async fn fill_within<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    per_read: Option<std::time::Duration>,
) -> std::io::Result<Option<&[u8]>> {
    let Some(t) = per_read else {
        return reader.fill_buf().await.map(Some);
    };
    if let Some(r) = poll_buffered(reader).await {
        r?;
        return reader.fill_buf().await.map(Some);
    }
    match tokio::time::timeout(t, reader.fill_buf()).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

async fn poll_buffered<R: AsyncBufRead + Unpin>(reader: &mut R) -> Option<std::io::Result<()>> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *reader).poll_fill_buf(cx) {
            std::task::Poll::Ready(r) => Some(r.map(|_| ())),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Reads the server's announcement `protocol\0<name>\0\0` and checks it.
///
/// Errors: any read error, or [`AttrError::WrongValue`] for another protocol.
pub async fn read_announcement<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    protocol: &str,
) -> Result<(), AttrError> {
    read_announcement_with(reader, protocol, None).await
}

/// Like [`read_announcement`], with each read limited to `per_read` (see
/// [`AttrList::read_with`]).
///
/// Errors: as [`read_announcement`].
pub async fn read_announcement_with<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    protocol: &str,
    per_read: Option<std::time::Duration>,
) -> Result<(), AttrError> {
    let list = AttrList::read_with(reader, per_read).await?;
    let values = list.expect(&["protocol"])?;
    if values[0] != protocol.as_bytes() {
        return Err(AttrError::WrongValue {
            name: "protocol".into(),
            got: String::from_utf8_lossy(values[0]).into_owned(),
            want: protocol.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_without_rust_suffix() {
        let e = AttrError::from(std::io::Error::from_raw_os_error(libc::ECONNRESET));
        assert_eq!(e.to_string(), "read error: Connection reset by peer");
    }

    #[test]
    fn encode_like_attr_print0() {
        let mut w = AttrWriter::new();
        w.int("status", (-1i32) as u32)
            .str("reason", b"x")
            .long("offset", 375)
            .data("d", b"ab")
            .end();
        assert_eq!(
            w.bytes(),
            b"status\x004294967295\x00reason\x00x\x00offset\x00375\x00d\x00YWI=\x00\x00"
        );
    }

    #[test]
    fn parse_partial_and_complete() {
        let input = b"flags\x000\x00transport\x00smtp\x00\x00rest";
        assert!(AttrList::parse(&input[..10]).unwrap().is_none());
        let (list, used) = AttrList::parse(input).unwrap().unwrap();
        assert_eq!(used, input.len() - 4);
        let v = list.expect(&["flags", "transport"]).unwrap();
        assert_eq!(v[1], b"smtp");
        assert!(list.expect(&["flags"]).is_err());
        assert!(list.expect(&["flags", "transport", "nexthop"]).is_err());
        assert!(list.expect(&["transport", "flags"]).is_err());
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int("s", b"4294967295").unwrap(), -1);
        assert_eq!(parse_int("s", b"0").unwrap(), 0);
        assert!(parse_int("s", b"x").is_err());
        assert!(parse_int("s", b"4294967296").is_err());
    }

    #[test]
    fn warnings_in_postfix_words() {
        let p = "private/smtp socket";
        let w = |e: AttrError| e.warning(p);
        assert_eq!(w(AttrError::Closed), None);
        assert_eq!(
            w(AttrError::Eof {
                value: false,
                partial: false
            })
            .unwrap(),
            "premature end-of-input on private/smtp socket while reading input attribute name"
        );
        assert_eq!(
            w(AttrError::Timeout {
                value: true,
                partial: false
            })
            .unwrap(),
            "timeout on private/smtp socket while reading input attribute value"
        );
        assert_eq!(
            w(AttrError::Eof {
                value: true,
                partial: true
            })
            .unwrap(),
            "unexpected end-of-input from private/smtp socket while reading input attribute value"
        );
        let (l, _) = AttrList::parse(b"garbage\0x\0\0").unwrap().unwrap();
        assert_eq!(
            w(l.expect(&["status"]).unwrap_err()).unwrap(),
            "unexpected attribute garbage from private/smtp socket (expecting: status)"
        );
    }

    #[tokio::test]
    async fn per_read_timeout_inside_a_list() {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut server, b"status\0")
            .await
            .unwrap();
        let mut r = tokio::io::BufReader::new(client);
        let got = AttrList::read_with(&mut r, Some(std::time::Duration::from_millis(50))).await;
        assert!(matches!(
            got,
            Err(AttrError::Timeout {
                value: true,
                partial: false
            })
        ));
        drop(server);
    }

    #[tokio::test]
    async fn async_read() {
        let data: &[u8] = b"protocol\x00delivery_request_protocol\x00\x00status\x00";
        let mut r = tokio::io::BufReader::new(data);
        read_announcement(&mut r, "delivery_request_protocol")
            .await
            .unwrap();
        assert!(matches!(
            AttrList::read(&mut r).await,
            Err(AttrError::Eof {
                value: true,
                partial: false
            })
        ));
        let mut r = tokio::io::BufReader::new(&b""[..]);
        assert!(matches!(
            AttrList::read(&mut r).await,
            Err(AttrError::Closed)
        ));
    }
}
