//! The trivial-rewrite client (`global/resolve_clnt.c`,
//! `global/rewrite_clnt.c`): resolve a recipient to (transport, nexthop,
//! recipient, flags) over one persistent `private/rewrite` connection, with a
//! cache.
//!
//! Postfix caches one answer for 30 s; rqmgr caches many (keyed by class,
//! sender and address, for the same 30 s), so that a burst of mail to a few
//! recipients costs a few round trips. A failure is retried every second,
//! forever, as Postfix does; other work (deliveries) goes on meanwhile.

use super::attr::{parse_int, AttrError, AttrList, AttrWriter};
use super::Peer;
use crate::proto::service::CLASS_PRIVATE;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// trivial-rewrite's announcement.
pub const PROTOCOL: &str = "trivial_rewrite_protocol";

/// Which resolver table set to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Normal mail (`resolve`).
    Regular,
    /// Address verification probes (`verify`).
    Verify,
}

impl Class {
    fn name(self) -> &'static [u8] {
        match self {
            Class::Regular => b"resolve",
            Class::Verify => b"verify",
        }
    }
}

/// A resolver answer. The transport and next-hop names are shared with
/// the cache and with every recipient routed by this answer (the names
/// are UTF-8: bytes that are not become U+FFFD once, when the answer is
/// read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub transport: Rc<str>,
    pub nexthop: Rc<str>,
    pub recipient: Vec<u8>,
    pub flags: u32,
}

/// How long an answer is reused.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most answers kept (300-500 bytes each, with the table): enough for
/// the recipients that recur within `CACHE_TTL` (a list's members, the
/// same rcpt in every message of a burst), while mail to many distinct
/// recipients costs at most this many, not one per recipient of the
/// last 30 seconds. When full, expired answers go, then all.
const CACHE_MAX: usize = 1000;

/// A cache key: the class's request name, NUL, the sender, NUL, the
/// address.
type CacheKey = Box<[u8]>;

/// A persistent client with a cache.
pub struct Resolver {
    service: String,
    timeout: Duration,
    idle: Duration,
    ttl: Duration,
    conn: Option<Conn>,
    cache: HashMap<CacheKey, (Resolved, Instant)>,
    /// The key being looked up (reused: a cache hit allocates nothing).
    key: Vec<u8>,
    failures: u32,
    /// Petted while a failure is retried: waiting for trivial-rewrite is
    /// not a hung loop (Postfix's qmgr ends there; rqmgr keeps trying).
    watchdog: Option<crate::master::Watchdog>,
}

struct Conn {
    peer: Peer,
    opened: Instant,
    used: Instant,
}

impl Resolver {
    /// A client of `private/<service>`; `timeout` limits each I/O step,
    /// `idle` and `ttl` are `ipc_idle` and `ipc_ttl`.
    pub fn new(service: &str, timeout: Duration, idle: Duration, ttl: Duration) -> Resolver {
        Resolver {
            service: service.to_string(),
            timeout,
            idle,
            ttl,
            conn: None,
            cache: HashMap::new(),
            key: Vec::new(),
            failures: 0,
            watchdog: None,
        }
    }

    /// The watchdog to pet while a failure is retried.
    pub fn set_watchdog(&mut self, watchdog: crate::master::Watchdog) {
        self.watchdog = Some(watchdog);
    }

    /// Waits `pause` before a retry, petting the watchdog every 250 ms.
    async fn pause(&self, pause: Duration) {
        let step = Duration::from_millis(250);
        let mut left = pause;
        loop {
            if let Some(w) = &self.watchdog {
                w.pet();
            }
            if left.is_zero() {
                return;
            }
            let now = left.min(step);
            tokio::time::sleep(now).await;
            left -= now;
        }
    }

    /// Closes the connection if it has been idle for `ipc_idle` or open for
    /// `ipc_ttl`, so that trivial-rewrite processes can come and go.
    pub fn close_if_idle(&mut self, now: Instant) {
        if let Some(c) = &self.conn {
            if now.duration_since(c.used) >= self.idle || now.duration_since(c.opened) >= self.ttl {
                self.conn = None;
            }
        }
    }

    /// When [`Resolver::close_if_idle`] should next be called, if connected.
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.conn
            .as_ref()
            .map(|c| (c.used + self.idle).min(c.opened + self.ttl))
    }

    /// The connection, opened if needed (`clnt_stream_access`): one that
    /// the server closed or wrote on unasked is replaced. A connect that
    /// fails is logged and retried every 10 s until it works
    /// (`mail_connect_wait`, which ends the process at the 11th attempt;
    /// rqmgr keeps trying). Then the server's announcement is read.
    async fn connect(&mut self) -> Result<&mut Conn, ClientError> {
        if let Some(c) = &self.conn {
            let mut byte = [0u8; 1];
            let stale = !c.peer.reader.buffer().is_empty()
                || !matches!(
                    c.peer.reader.get_ref().try_read(&mut byte),
                    Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
                );
            if stale {
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            let mut peer =
                super::connect_wait(CLASS_PRIVATE, &self.service, |d| self.pause(d)).await;
            super::attr::read_announcement_with(&mut peer.reader, PROTOCOL, Some(self.timeout))
                .await
                .map_err(|e| self.protocol(e))?;
            let now = Instant::now();
            self.conn = Some(Conn {
                peer,
                opened: now,
                used: now,
            });
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// A protocol error, logged at once in attr_scan0's words.
    fn protocol(&self, e: AttrError) -> ClientError {
        let socket = format!("{CLASS_PRIVATE}/{} socket", self.service);
        if let Some(w) = e.warning(&socket) {
            tracing::warn!("{w}");
        }
        ClientError::Protocol(e)
    }

    async fn round_trip(&mut self, request: &[u8]) -> Result<AttrList, ClientError> {
        let timeout = self.timeout;
        let conn = self.connect().await?;
        conn.used = Instant::now();
        conn.peer.send(request, timeout).await?;
        let reply = AttrList::read_with(&mut conn.peer.reader, Some(timeout)).await;
        reply.map_err(|e| self.protocol(e))
    }

    /// A failed round trip (`resolve_clnt`, `rewrite_clnt`): the connection
    /// is dropped, and the failure is logged unless it is the first of
    /// this request and looks like a stale connection (no error number,
    /// EPIPE or ENOENT), as Postfix does.
    fn failed(&mut self, why: &ClientError) {
        self.conn = None;
        self.failures += 1;
        let errno = why.errno();
        if self.failures > 1 || !matches!(errno, 0 | libc::EPIPE | libc::ENOENT) {
            tracing::warn!(
                "problem talking to service {}: {}",
                self.service,
                errno_text(errno)
            );
        }
    }

    /// Resolves `address` for `sender` (empty for the null sender). Retries
    /// every second until trivial-rewrite answers sensibly.
    pub async fn resolve(&mut self, class: Class, sender: &[u8], address: &[u8]) -> Resolved {
        let now = Instant::now();
        self.key.clear();
        self.key.extend_from_slice(class.name());
        self.key.push(0);
        self.key.extend_from_slice(sender);
        self.key.push(0);
        self.key.extend_from_slice(address);
        if !address.is_empty() {
            if let Some((r, at)) = self.cache.get(self.key.as_slice()) {
                if now.duration_since(*at) < CACHE_TTL {
                    if crate::log::verbose() {
                        tracing::debug!("{}", verbose_line("cached: ", sender, address, r));
                    }
                    return r.clone();
                }
            }
        }
        let mut w = AttrWriter::new();
        w.str("request", class.name())
            .str("sender", sender)
            .str("address", address)
            .end();
        let request = w.into_bytes();
        loop {
            match self.round_trip(&request).await {
                Ok(list) => match Self::parse(&list, address) {
                    Ok((r, disconnect)) => {
                        if crate::log::verbose() {
                            tracing::debug!("{}", verbose_line("", sender, address, &r));
                        }
                        self.failures = 0;
                        if disconnect {
                            self.conn = None;
                        }
                        if !address.is_empty() {
                            if self.cache.len() >= CACHE_MAX {
                                self.cache
                                    .retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
                                if self.cache.len() >= CACHE_MAX {
                                    self.cache.clear();
                                }
                            }
                            self.cache
                                .insert(self.key.as_slice().into(), (r.clone(), now));
                        }
                        return r;
                    }
                    Err(ReplyError::Malformed(e) | ReplyError::Value(e)) => {
                        let e = self.protocol(e);
                        self.failed(&e);
                    }
                    Err(why) => {
                        self.conn = None;
                        self.failures += 1;
                        tracing::warn!("{why}");
                    }
                },
                Err(why) => self.failed(&why),
            }
            self.pause(Duration::from_secs(1)).await;
        }
    }

    fn parse(list: &AttrList, address: &[u8]) -> Result<(Resolved, bool), ReplyError> {
        let v = list
            .expect(&["flags", "transport", "nexthop", "recipient", "flags"])
            .map_err(ReplyError::Malformed)?;
        let server_flags = parse_int("flags", v[0]).map_err(ReplyError::Value)?;
        let name = |b: &[u8]| Rc::from(String::from_utf8_lossy(b));
        let r = Resolved {
            transport: name(v[1]),
            nexthop: name(v[2]),
            recipient: v[3].to_vec(),
            flags: parse_int("flags", v[4]).map_err(ReplyError::Value)? as u32,
        };
        let shown = || String::from_utf8_lossy(address).into_owned();
        if r.transport.is_empty() {
            return Err(ReplyError::NullTransport(shown()));
        }
        if r.recipient.is_empty() && !address.is_empty() {
            return Err(ReplyError::NullRecipient(shown()));
        }
        Ok((r, server_flags != 0))
    }

    /// Rewrites `address` with ruleset `rule` (qmgr uses `local` to
    /// canonicalise a redirect address), quoting the local part for the
    /// request and unquoting the answer (`rewrite_clnt_internal`).
    pub async fn rewrite(&mut self, rule: &str, address: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(address);
        let quoted = crate::log::quote_822_local(&text);
        let mut w = AttrWriter::new();
        w.str("request", b"rewrite")
            .str("rule", rule.as_bytes())
            .str("address", quoted.as_bytes())
            .end();
        let request = w.into_bytes();
        loop {
            match self.round_trip(&request).await {
                Ok(list) => match list.expect(&["flags", "address"]) {
                    Ok(v) => {
                        self.failures = 0;
                        if parse_int("flags", v[0]).unwrap_or(0) != 0 {
                            self.conn = None;
                        }
                        return unquote_822_local(v[1]);
                    }
                    Err(e) => {
                        let e = self.protocol(e);
                        self.failed(&e);
                    }
                },
                Err(why) => self.failed(&why),
            }
            self.pause(Duration::from_secs(1)).await;
        }
    }
}

/// Why talking to trivial-rewrite failed.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    /// Writing the request failed.
    #[error("{}", crate::log::errno_text(.0))]
    Io(#[from] std::io::Error),
    /// The announcement or the reply was unusable (already logged in
    /// attr_scan0's words, where Postfix logs it).
    #[error("{0}")]
    Protocol(AttrError),
}

impl ClientError {
    /// The error number Postfix's `%m` would show: 0 where the stream
    /// read or wrote without a system error (an early end, garbage).
    fn errno(&self) -> i32 {
        match self {
            ClientError::Io(e) | ClientError::Protocol(AttrError::Io(e)) => {
                e.raw_os_error().unwrap_or(0)
            }
            ClientError::Protocol(AttrError::Timeout { .. } | AttrError::NoReply) => {
                libc::ETIMEDOUT
            }
            ClientError::Protocol(_) => 0,
        }
    }
}

/// Postfix's `%m`: the error's text, or "Application error" for none
/// (`util/vbuf_print.c`).
fn errno_text(errno: i32) -> String {
    if errno == 0 {
        "Application error".to_string()
    } else {
        nix::errno::Errno::from_raw(errno).desc().to_string()
    }
}

/// A reply trivial-rewrite should not have sent (`resolve_clnt`).
#[derive(Debug, thiserror::Error)]
enum ReplyError {
    #[error("resolve_clnt: {0}")]
    Malformed(super::attr::AttrError),
    #[error("{0}")]
    Value(super::attr::AttrError),
    #[error("resolve_clnt: null transport result for: <{0}>")]
    NullTransport(String),
    #[error("resolve_clnt: null recipient result for: <{0}>")]
    NullRecipient(String),
}

/// Removes RFC 822 quoting from the local part (`unquote_822_local`).
pub fn unquote_822_local(address: &[u8]) -> Vec<u8> {
    let at = address.iter().rposition(|&c| c == b'@');
    let (local, domain) = match at {
        Some(i) => (&address[..i], &address[i..]),
        None => (address, &b""[..]),
    };
    let mut out = Vec::with_capacity(address.len());
    let mut quoted = false;
    let mut i = 0;
    while i < local.len() {
        let c = local[i];
        if c == b'"' {
            quoted = !quoted;
        } else if c == b'\\' && quoted && i + 1 < local.len() {
            i += 1;
            out.push(local[i]);
        } else {
            out.push(c);
        }
        i += 1;
    }
    out.extend_from_slice(domain);
    out
}

/// resolve_clnt's `-v` line: sender, address and the answer with its flag
/// names run together, as Postfix prints them.
fn verbose_line(cached: &str, sender: &[u8], address: &[u8], r: &Resolved) -> String {
    use crate::proto::resolve_flag as f;
    let set = |bit: u32, name: &'static str| if r.flags & bit != 0 { name } else { "" };
    format!(
        "resolve_clnt: {cached}`{}' -> `{}' -> transp=`{}' host=`{}' rcpt=`{}' flags={}{}{}{} class={}{}{}{}{}",
        String::from_utf8_lossy(sender),
        String::from_utf8_lossy(address),
        r.transport,
        r.nexthop,
        String::from_utf8_lossy(&r.recipient),
        set(f::FINAL, "final"),
        set(f::ROUTED, "routed"),
        set(f::ERROR, "error"),
        set(f::FAIL, "fail"),
        set(f::CLASS_LOCAL, "local"),
        set(f::CLASS_ALIAS, "alias"),
        set(f::CLASS_VIRTUAL, "virtual"),
        set(f::CLASS_RELAY, "relay"),
        set(f::CLASS_DEFAULT, "default"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_m() {
        assert_eq!(errno_text(0), "Application error");
        assert_eq!(errno_text(libc::ETIMEDOUT), "Connection timed out");
        let garbage = ClientError::Protocol(AttrError::Unexpected {
            got: "garbage".into(),
            want: "flags".into(),
        });
        assert_eq!(garbage.errno(), 0);
        assert_eq!(
            ClientError::Protocol(AttrError::NoReply).errno(),
            libc::ETIMEDOUT
        );
    }

    #[test]
    fn unquoting() {
        assert_eq!(unquote_822_local(b"\"john doe\"@x"), b"john doe@x");
        assert_eq!(unquote_822_local(b"plain@x"), b"plain@x");
        assert_eq!(unquote_822_local(b"\"a\\\"b\"@x"), b"a\"b@x");
    }

    #[test]
    fn parse_reply() {
        let (l, _) = AttrList::parse(
            b"flags\x000\0transport\0smtp\0nexthop\0[h]:25\0recipient\0u@x\0flags\x004096\0\0",
        )
        .unwrap()
        .unwrap();
        let (r, disc) = Resolver::parse(&l, b"u@x").unwrap();
        assert_eq!((&*r.transport, r.flags, disc), ("smtp", 4096, false));
        let (l, _) =
            AttrList::parse(b"flags\x000\0transport\0\0nexthop\0\0recipient\0u@x\0flags\x000\0\0")
                .unwrap()
                .unwrap();
        assert!(Resolver::parse(&l, b"u@x").is_err());
    }
}
