//! Small operating-system helpers: users and groups, free ports, running a
//! command with a time limit, and finding the processes of an instance.

use std::collections::HashSet;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// uid of a user, from /etc/passwd.
pub fn uid_of(user: &str) -> u32 {
    id_from("/etc/passwd", user).unwrap_or_else(|| panic!("no user {user:?} in /etc/passwd"))
}

/// gid of a group, from /etc/group.
pub fn gid_of(group: &str) -> u32 {
    id_from("/etc/group", group).unwrap_or_else(|| panic!("no group {group:?} in /etc/group"))
}

fn id_from(file: &str, name: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// The effective uid of this process (from /proc/self/status).
pub fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX)
}

static PORTS_HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static PORT_CURSOR: AtomicU32 = AtomicU32::new(0);

/// A TCP port on 127.0.0.1 that nothing listens on right now and that this
/// process has not handed out before. Ports come from 20000-31999, below
/// Linux's ephemeral range, so that outgoing connections do not take them
/// between the probe and the real bind.
pub fn free_port() -> u16 {
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    let base = (std::process::id().wrapping_mul(7919)) % SPAN;
    let mut handed = PORTS_HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..SPAN {
        let step = PORT_CURSOR.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (base + step.wrapping_mul(13)) % SPAN) as u16;
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(200),
            )
            .is_err()
        {
            handed.insert(port);
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 in {LOW}..{}", LOW + SPAN);
}

/// Outcome of [`run_with_timeout`].
#[derive(Debug)]
pub struct RunOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command with a time limit. Its output goes to files in `scratch`
/// (not pipes: `postfix reload` leaves a background postsuper holding the
/// inherited descriptors). A command still running at the deadline is killed.
pub fn run_with_timeout(cmd: &mut Command, scratch: &Path, timeout: Duration) -> RunOutput {
    run_with_timeout_stdin(cmd, Stdio::null(), scratch, timeout)
}

/// [`run_with_timeout`] with the given standard input.
pub fn run_with_timeout_stdin(
    cmd: &mut Command,
    stdin: impl Into<Stdio>,
    scratch: &Path,
    timeout: Duration,
) -> RunOutput {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!("cmd-{}-{n}.out", std::process::id()));
    let err_path = scratch.join(format!("cmd-{}-{n}.err", std::process::id()));
    let out = fs::File::create(&out_path).expect("create command output file");
    let err = fs::File::create(&err_path).expect("create command error file");
    let mut child = cmd
        .stdin(stdin)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    RunOutput {
        status,
        stdout,
        stderr,
        timed_out,
    }
}

/// One running process: pid and command line (NULs shown as spaces).
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub cmdline: String,
}

/// Every process whose environment holds `MAIL_CONFIG=<config_dir>`: the
/// master and all the daemons and commands of one Postfix instance.
pub fn instance_processes(config_dir: &Path) -> Vec<ProcInfo> {
    let want = format!("MAIL_CONFIG={}", config_dir.display());
    let want_slash = format!("{want}/");
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let matches = environ
            .split(|b| *b == 0)
            .any(|var| var == want.as_bytes() || var == want_slash.as_bytes());
        if !matches {
            continue;
        }
        // A zombie has an empty environment, so this one is alive (or was a
        // moment ago).
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        found.push(ProcInfo { pid, cmdline });
    }
    found
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Sends a signal to one process by pid, with the kill(1) command.
pub fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
