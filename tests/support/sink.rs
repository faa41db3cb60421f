//! smtp-sink(1) on a free loopback port, as the destination of the
//! `sink.example` route. Each message it receives is dumped to a file.

use super::sys;
use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub struct SmtpSink {
    child: Option<Child>,
    pub port: u16,
    /// Directory with one file per received message.
    pub dump_dir: PathBuf,
    /// smtp-sink's own output.
    pub log_path: PathBuf,
}

impl SmtpSink {
    /// Starts `smtp-sink -u nobody -d DIR/msg. 127.0.0.1:PORT 256` with its
    /// dumps in `dir` (created, owned by nobody) and waits until it listens.
    pub fn start(dir: &Path, port: u16) -> SmtpSink {
        SmtpSink::start_with(dir, port, &[])
    }

    /// Like [`SmtpSink::start`], with extra smtp-sink options before the
    /// address, e.g. `["-w", "5"]` (wait 5 s before answering DATA).
    /// smtp-sink creates a message's dump file at MAIL FROM, so
    /// [`SmtpSink::message_count`] also counts a transaction in progress;
    /// [`SmtpSink::messages`] shows how far each one got.
    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> SmtpSink {
        let dump_dir = dir.join("dumps");
        fs::create_dir_all(&dump_dir).expect("create smtp-sink dump dir");
        chown(&dump_dir, Some(sys::uid_of("nobody")), None).expect("chown smtp-sink dump dir");
        fs::set_permissions(&dump_dir, fs::Permissions::from_mode(0o755)).expect("chmod dump dir");
        let log_path = dir.join("smtp-sink.log");
        let log = fs::File::create(&log_path).expect("create smtp-sink log");
        let child = Command::new("/usr/sbin/smtp-sink")
            .arg("-u")
            .arg("nobody")
            .arg("-h")
            .arg("sink.rqmgr-test.example")
            .arg("-d")
            .arg(format!("{}/msg.", dump_dir.display()))
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/smtp-sink");
        let mut sink = SmtpSink {
            child: Some(child),
            port,
            dump_dir,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(Ok(Some(status))) = sink.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "smtp-sink on port {port} exited at once ({status}): {}",
                    fs::read_to_string(&sink.log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!("smtp-sink does not listen on 127.0.0.1:{port} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    /// The dumped messages (one file each), sorted by file name.
    pub fn message_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dump_dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// How many messages smtp-sink has received.
    pub fn message_count(&self) -> usize {
        self.message_files().len()
    }

    /// The contents of every received message.
    pub fn messages(&self) -> Vec<String> {
        self.message_files()
            .iter()
            .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned())
            .collect()
    }

    /// Every received transaction with its times, sorted by start: the
    /// dump file's birth time (smtp-sink creates it at MAIL FROM) and its
    /// modification time (the last bytes of the message, i.e. the end of
    /// DATA for a finished transaction). Needs a file system that records
    /// birth times (statx), as ext4, xfs, btrfs and tmpfs do.
    pub fn transactions(&self) -> Vec<Transaction> {
        let mut all: Vec<Transaction> = self
            .message_files()
            .into_iter()
            .filter_map(|path| {
                let meta = fs::metadata(&path).ok()?;
                let started = meta
                    .created()
                    .unwrap_or_else(|e| panic!("no birth time for {}: {e}", path.display()));
                let finished = meta.modified().ok()?;
                let text = String::from_utf8_lossy(&fs::read(&path).ok()?).into_owned();
                Some(Transaction {
                    path,
                    started,
                    finished,
                    text,
                })
            })
            .collect();
        all.sort_by_key(|t| t.started);
        all
    }

    /// Stops smtp-sink (by its pid) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One mail transaction that smtp-sink received (see
/// [`SmtpSink::transactions`]).
#[derive(Debug, Clone)]
pub struct Transaction {
    pub path: PathBuf,
    /// When smtp-sink created the dump file (MAIL FROM).
    pub started: SystemTime,
    /// When it last wrote to it (the end of DATA).
    pub finished: SystemTime,
    /// The dump: envelope and message.
    pub text: String,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}
