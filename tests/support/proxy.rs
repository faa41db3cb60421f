//! A recording proxy between the queue manager and a real Postfix service:
//! it listens on `private/<name>` (as a [`super::fake`] peer does) and
//! relays every connection to `private/<target>`, the socket master(8)
//! serves, keeping both directions' bytes. Point the queue manager at it by
//! a transport_maps route to `<name>:` or by a `*_service_name` setting.
//! Nothing is changed on the way: the peer is the real daemon.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Bytes = Arc<Mutex<Vec<u8>>>;

/// One relayed connection: what the queue manager sent and what the
/// service answered.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    pub to_peer: Vec<u8>,
    pub from_peer: Vec<u8>,
}

/// A proxy serving `private/<name>` (see the module doc).
pub struct RecordingProxy {
    pub name: String,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<(Bytes, Bytes)>>>,
    thread: Option<JoinHandle<()>>,
}

/// Copies `from` to `to` until EOF or an error, recording each chunk;
/// then half-closes `to`.
fn relay(mut from: UnixStream, mut to: UnixStream, record: Bytes) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl RecordingProxy {
    /// Serves `private/<name>` under `spool`, relaying to
    /// `private/<target>`. The socket belongs to `owner` (the mail_owner,
    /// as qmgr drops to it) and is mode 0666.
    pub fn serve(spool: &Path, name: &str, target: &str, owner: u32) -> RecordingProxy {
        let path = spool.join("private").join(name);
        let target = spool.join("private").join(target);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        chown(&path, Some(owner), None).expect("chown proxy socket");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod proxy socket");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<(Bytes, Bytes)>>> = Arc::default();
        let thread = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            let Ok(server) = UnixStream::connect(&target) else {
                                continue;
                            };
                            let (up, down): (Bytes, Bytes) = Default::default();
                            conns.lock().unwrap().push((up.clone(), down.clone()));
                            let (c2, s2) = (
                                client.try_clone().expect("clone"),
                                server.try_clone().expect("clone"),
                            );
                            std::thread::spawn(move || relay(client, server, up));
                            std::thread::spawn(move || relay(s2, c2, down));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        RecordingProxy {
            name: name.to_string(),
            path,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// The connections so far, in the order they were accepted (a copy of
    /// the bytes relayed until now).
    pub fn conns(&self) -> Vec<Conn> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|(up, down)| Conn {
                to_peer: up.lock().unwrap().clone(),
                from_peer: down.lock().unwrap().clone(),
            })
            .collect()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
