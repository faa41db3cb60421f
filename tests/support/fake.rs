//! Misbehaving peers that a real Postfix cannot stage: a fake delivery
//! agent (or any attribute-protocol server) that the test itself serves on
//! a socket in the instance's `private/` directory. The queue manager
//! connects to `private/<transport>` by name (`global/mail_connect.c`), so
//! a transport_maps route to `fake:` reaches the fake without master(8).
//!
//! [`FakePeer::serve`] binds the socket and answers every connection in a
//! thread of the test process with one [`Behaviour`]; dropping the fake
//! closes every connection and removes the socket.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The delivery agent's announcement (`MAIL_ATTR_PROTO_DELIVER`).
pub const DELIVER_HELLO: &[u8] = b"protocol\0delivery_request_protocol\0\0";

/// A complete successful agent reply (`deliver_request_final` with an
/// empty hop status and status 0).
pub const DELIVER_OK: &[u8] = b"status\0\0diag_type\0\0diag_text\0\0mta_type\0\0\
mta_mname\0\0action\0\0reason\0\0status\x000\0\0";

/// What the fake does with each connection.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Accepts and closes at once, before the first byte.
    HangUp,
    /// Accepts and then neither writes nor reads.
    Silent,
    /// Writes `hello`, then never reads nor writes again.
    NeverRead { hello: Vec<u8> },
    /// Writes `hello`, reads one delivery request, waits `delay`, writes
    /// `reply`; then, if `close`, hangs up, else stays silent with the
    /// connection open.
    Reply {
        hello: Vec<u8>,
        delay: Duration,
        reply: Vec<u8>,
        close: bool,
    },
    /// A trivial-rewrite that resolves every address to transport
    /// `discard` (nexthop `fake-rewrite`) and rewrites nothing, on a
    /// persistent connection. The first `garbage` requests (counted over
    /// all connections) get `garbage` instead of an answer; the next
    /// `slow` requests are answered after `delay`.
    Rewrite {
        garbage_replies: usize,
        garbage: Vec<u8>,
        slow: usize,
        delay: Duration,
    },
    /// A bounce(8) (any of its roles) that passes each request on to the
    /// real service at `upstream` and its answer back, one request per
    /// connection. The first `garbage_replies` requests (counted over all
    /// connections) get `garbage` instead and are not passed on; the
    /// others are answered `delay` after they were read.
    Bounce {
        upstream: PathBuf,
        garbage_replies: usize,
        garbage: Vec<u8>,
        delay: Duration,
    },
}

/// bounce(8)'s announcement (`MAIL_ATTR_PROTO_BOUNCE`).
pub const BOUNCE_HELLO: &[u8] = b"protocol\0delivery_status_protocol\0\0";

/// trivial-rewrite's announcement (`MAIL_ATTR_PROTO_TRIVIAL`).
pub const REWRITE_HELLO: &[u8] = b"protocol\0trivial_rewrite_protocol\0\0";

impl Behaviour {
    /// A delivery agent that answers `reply` at once and hangs up.
    pub fn agent_reply(reply: &[u8]) -> Behaviour {
        Behaviour::Reply {
            hello: DELIVER_HELLO.to_vec(),
            delay: Duration::ZERO,
            reply: reply.to_vec(),
            close: true,
        }
    }
}

/// A fake peer listening on a socket (see the module doc).
pub struct FakePeer {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

/// What the connections of one fake share.
struct Shared {
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakePeer {
    /// Serves `private/<name>` under `spool` (the instance's queue
    /// directory) with `behaviour`. The socket belongs to `owner` (uid;
    /// the mail_owner, as qmgr drops to it) and is mode 0666.
    pub fn serve(spool: &Path, name: &str, owner: u32, behaviour: Behaviour) -> FakePeer {
        let path = spool.join("private").join(name);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        chown(&path, Some(owner), None).expect("chown fake socket");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod fake socket");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, accepted, requests) = (stop.clone(), accepted.clone(), requests.clone());
            std::thread::spawn(move || {
                let mut workers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let shared = Shared {
                                stop: stop.clone(),
                                requests: requests.clone(),
                            };
                            let b = behaviour.clone();
                            workers.push(std::thread::spawn(move || serve_one(conn, &b, &shared)));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => panic!("fake peer accept: {e}"),
                    }
                }
                for w in workers {
                    let _ = w.join();
                }
            })
        };
        FakePeer {
            path,
            stop,
            accepted,
            requests,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The delivery requests read so far (raw bytes, one per connection).
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().expect("requests").clone()
    }

    /// Stops serving: closes every connection, removes the socket.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (checking `stop`) until the peer hangs up or the fake stops.
fn hold(conn: &mut UnixStream, stop: &AtomicBool, read: bool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        if read {
            match conn.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve_one(mut conn: UnixStream, b: &Behaviour, shared: &Shared) {
    let stop = &*shared.stop;
    let requests = &*shared.requests;
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    match b {
        Behaviour::HangUp => {}
        Behaviour::Silent => hold(&mut conn, stop, false),
        Behaviour::NeverRead { hello } => {
            let _ = conn.write_all(hello);
            hold(&mut conn, stop, false);
        }
        Behaviour::Reply {
            hello,
            delay,
            reply,
            close,
        } => {
            if conn.write_all(hello).is_err() {
                return;
            }
            let Some(request) = read_request(&mut conn, stop) else {
                return;
            };
            requests.lock().expect("requests").push(request);
            wait(*delay, stop);
            let _ = conn.write_all(reply);
            if !*close {
                hold(&mut conn, stop, true);
            }
        }
        Behaviour::Rewrite {
            garbage_replies,
            garbage,
            slow,
            delay,
        } => {
            if conn.write_all(REWRITE_HELLO).is_err() {
                return;
            }
            let mut pending = Vec::new();
            loop {
                let Some(list) = read_list(&mut conn, &mut pending, stop) else {
                    return;
                };
                let n = {
                    let mut r = requests.lock().expect("requests");
                    r.push(list.concat());
                    r.len()
                };
                if n <= *garbage_replies {
                    if conn.write_all(garbage).is_err() {
                        return;
                    }
                    continue;
                }
                if n <= garbage_replies + slow {
                    wait(*delay, stop);
                }
                if conn.write_all(&rewrite_answer(&list)).is_err() {
                    return;
                }
            }
        }
        Behaviour::Bounce {
            upstream,
            garbage_replies,
            garbage,
            delay,
        } => {
            if conn.write_all(BOUNCE_HELLO).is_err() {
                return;
            }
            let Some(list) = read_list(&mut conn, &mut Vec::new(), stop) else {
                return;
            };
            let request = encode_list(&list);
            let n = {
                let mut r = requests.lock().expect("requests");
                r.push(request.clone());
                r.len()
            };
            if n <= *garbage_replies {
                let _ = conn.write_all(garbage);
                return;
            }
            wait(*delay, stop);
            if let Some(reply) = pass_on(upstream, &request, stop) {
                let _ = conn.write_all(&reply);
            }
        }
    }
}

/// Sleeps `delay`, or less if the fake stops.
fn wait(delay: Duration, stop: &AtomicBool) {
    let mut waited = Duration::ZERO;
    while waited < delay && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        waited += Duration::from_millis(50);
    }
}

/// Sends `request` to the service at `upstream` (after its announcement)
/// and returns its answer. None if it cannot be reached or hangs up.
fn pass_on(upstream: &Path, request: &[u8], stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut conn = UnixStream::connect(upstream).ok()?;
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut pending = Vec::new();
    read_list(&mut conn, &mut pending, stop)?;
    conn.write_all(request).ok()?;
    read_list(&mut conn, &mut pending, stop).map(|l| encode_list(&l))
}

/// One attribute list on the wire: each name and value NUL-terminated,
/// then a NUL.
fn encode_list(list: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for token in list {
        out.extend_from_slice(token);
        out.push(0);
    }
    out.push(0);
    out
}

/// trivial-rewrite's answer to one request (a list of name, value, ...).
fn rewrite_answer(list: &[Vec<u8>]) -> Vec<u8> {
    let get = |name: &[u8]| {
        list.chunks(2)
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv.get(1))
            .cloned()
            .unwrap_or_default()
    };
    let address = get(b"address");
    let mut out = Vec::new();
    let mut put = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    };
    if get(b"request") == b"rewrite" {
        put(b"flags", b"0");
        put(b"address", &address);
    } else {
        put(b"flags", b"0");
        put(b"transport", b"discard");
        put(b"nexthop", b"fake-rewrite");
        put(b"recipient", &address);
        put(b"flags", b"0");
    }
    out.push(0);
    out
}

/// Reads one attribute list (its names and values in order, without the
/// NULs); `pending` keeps bytes read past it. None at the end or stop.
fn read_list(
    conn: &mut UnixStream,
    pending: &mut Vec<u8>,
    stop: &AtomicBool,
) -> Option<Vec<Vec<u8>>> {
    let mut buf = [0u8; 4096];
    loop {
        let mut tokens = Vec::new();
        let mut pos = 0;
        while let Some(nul) = pending[pos..].iter().position(|&c| c == 0) {
            let token = pending[pos..pos + nul].to_vec();
            pos += nul + 1;
            if token.is_empty() && tokens.len() % 2 == 0 {
                pending.drain(..pos);
                return Some(tokens);
            }
            tokens.push(token);
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

/// Reads one delivery request: the common attribute list (which ends
/// with `recipient_count`) and that many recipient lists. None if the
/// peer hangs up first or the fake stops.
fn read_request(conn: &mut UnixStream, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(n) = request_len(&data) {
            data.truncate(n);
            return Some(data);
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

/// The length of a complete request at the front of `data`, if any.
fn request_len(data: &[u8]) -> Option<usize> {
    let mut tokens = data.split(|&c| c == 0);
    let mut used = 0;
    let mut lists_wanted: Option<usize> = None;
    let mut lists_done = 0;
    loop {
        let name = tokens.next()?;
        used += name.len() + 1;
        if used > data.len() {
            return None;
        }
        if name.is_empty() {
            lists_done += 1;
            if lists_wanted.is_some_and(|w| lists_done > w) {
                return Some(used);
            }
            continue;
        }
        let value = tokens.next()?;
        used += value.len() + 1;
        if used > data.len() {
            return None;
        }
        if lists_done == 0 && name == b"recipient_count" {
            lists_wanted = std::str::from_utf8(value).ok()?.parse().ok();
        }
    }
}
