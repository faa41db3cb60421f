//! The `rqmgr status`, `rqmgr explain` and `rqmgr forecast` commands: run by an
//! administrator (root or mail_owner), like Postfix's own commands
//! (`postqueue/postqueue.c`: `-c config_directory`, `MAIL_CONFIG`), they
//! read main.cf for the queue directory, ask the running rqmgr over
//! [`super::SOCKET`] and print its answer. For mail the queue manager does
//! not hold, `explain` looks in the queue directory itself: deferred (due
//! at the file's modification time, the reason from its defer logfile),
//! hold, incoming, maildrop. `forecast` asks for the backlog and runs
//! the simulator on it here, in the command's memory
//! ([`super::forecast`]).

use super::{deferlog, text, Answer, Explain, Place, RecipientState, Request, Status};
use crate::config::{MainCf, Params};
use crate::spool::Spool;
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the client waits for the daemon's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer the client reads, bytes.
const MAX_ANSWER: u64 = 256 << 20;

/// The administrator's commands (the daemon's options are
/// [`crate::master::DaemonOptions`]).
#[derive(Debug, Parser)]
#[command(
    name = "rqmgr",
    version,
    about = "Ask the running rqmgr of a Postfix instance about its state"
)]
pub struct AdminCli {
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// One command.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Transports, destinations and the active queue, most stuck first.
    Status {
        /// The Postfix instance's configuration directory (default:
        /// $MAIL_CONFIG, then /etc/postfix).
        #[arg(short = 'c', value_name = "config_directory")]
        config_directory: Option<PathBuf>,
        /// Print JSON (the fields in rqmgr(8), STATUS).
        #[arg(long)]
        json: bool,
    },
    /// Why a message is not delivered yet, per recipient.
    Explain {
        #[arg(short = 'c', value_name = "config_directory")]
        config_directory: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// The message's queue id (as postqueue -p shows it).
        queue_id: String,
    },
    /// When the active queue would drain, per destination, and which
    /// messages would pass maximal_queue_lifetime first: the scheduling
    /// core run on the live backlog in virtual time. Reads only.
    Forecast {
        #[arg(short = 'c', value_name = "config_directory")]
        config_directory: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// What if main.cf said this (repeatable), as `postconf -o`.
        #[arg(short = 'o', value_name = "name=value")]
        overrides: Vec<String>,
    },
}

/// True if argv (with argv\[0\]) asks for an administrator's command
/// rather than the daemon: master(8) always starts its services with
/// options (`-l -n qmgr -t unix -u`), never with a word first.
pub fn is_admin_command(args: &[std::ffi::OsString]) -> bool {
    matches!(
        args.get(1).and_then(|a| a.to_str()),
        Some("status" | "explain" | "forecast")
    )
}

/// A failure of the command, printed as `rqmgr: fatal: ...`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("connect to {path}: {err}: is rqmgr the queue manager of this instance, and running?")]
    Connect { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{0}")]
    Answer(String),
}

/// The instance the command talks to.
pub struct Instance {
    pub config_dir: PathBuf,
    pub params: Params,
    pub spool: Spool,
}

impl Instance {
    /// Reads `config_dir/main.cf` (or `$MAIL_CONFIG`'s, or
    /// /etc/postfix's) and checks that we are root or mail_owner.
    pub fn open(config_dir: Option<&Path>) -> Result<Instance, ClientError> {
        let config_dir = config_dir.map(Path::to_path_buf).unwrap_or_else(|| {
            PathBuf::from(std::env::var("MAIL_CONFIG").unwrap_or_else(|_| "/etc/postfix".into()))
        });
        let mut cf = MainCf::load(&config_dir).map_err(|e| ClientError::Config(e.to_string()))?;
        let (params, _) = Params::read(&mut cf).map_err(|e| ClientError::Config(e.to_string()))?;
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            let owner = nix::unistd::User::from_name(&params.mail_owner)
                .ok()
                .flatten();
            if owner.is_none_or(|u| u.uid != euid) {
                return Err(ClientError::Config(format!(
                    "must be run by root or by the mail_owner ({})",
                    params.mail_owner
                )));
            }
        }
        let spool = Spool::new(&params.hash_queue_names, params.hash_queue_depth);
        Ok(Instance {
            config_dir,
            params,
            spool,
        })
    }

    fn queue_path(&self, rel: &Path) -> PathBuf {
        Path::new(&self.params.queue_directory).join(rel)
    }

    /// Sends `req` to the daemon and reads its answer.
    pub fn ask(&self, req: &Request) -> Result<Answer, ClientError> {
        let path = self.queue_path(Path::new(super::SOCKET));
        let shown = path.display().to_string();
        let io = |err| ClientError::Io {
            path: shown.clone(),
            err,
        };
        let mut s = UnixStream::connect(&path).map_err(|err| ClientError::Connect {
            path: shown.clone(),
            err,
        })?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        s.write_all(req.line().as_bytes()).map_err(io)?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_ANSWER)
            .read_to_end(&mut buf)
            .map_err(io)?;
        serde_json::from_slice(&buf)
            .map_err(|e| ClientError::Answer(format!("{shown}: bad answer: {e}")))
    }

    /// master.cf's process limit of service `name` (type unix), with
    /// `-` as `default_process_limit`.
    pub fn process_limit(&self, master_cf: &str, name: &str) -> Option<i64> {
        process_limits(master_cf, self.params.default_process_limit)
            .get(name)
            .copied()
    }

    /// `explain` from the queue directory, for a message the daemon does
    /// not hold.
    pub fn explain_from_files(&self, id: &str) -> Explain {
        let mut out = Explain {
            queue_id: id.to_string(),
            place: Place::Unknown,
            due: None,
            notes: Vec::new(),
            recipients: Vec::new(),
        };
        let places = [
            (Place::Deferred, crate::spool::DEFERRED),
            (Place::Hold, "hold"),
            (Place::Incoming, crate::spool::INCOMING),
            (Place::Maildrop, "maildrop"),
            (Place::Active, crate::spool::ACTIVE),
        ];
        let found = places.iter().find_map(|&(place, queue)| {
            let p = self.queue_path(&self.spool.path(queue, id));
            std::fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.file_type().is_file())
                .map(|m| (place, m))
        });
        let Some((place, meta)) = found else {
            out.notes.push(
                "not in the queue: delivered or bounced and removed, deleted, or never queued"
                    .into(),
            );
            return out;
        };
        out.place = place;
        let queue = places
            .iter()
            .find(|p| p.0 == place)
            .map_or(crate::spool::DEFERRED, |p| p.1);
        let file = self.queue_path(&self.spool.path(queue, id));
        let pending = || pending_recipients(&file, id).unwrap_or_default();
        let each = |out: &mut Explain, state: &str, text: &str| {
            for address in pending() {
                out.recipients.push(RecipientState {
                    address,
                    state: state.into(),
                    text: text.into(),
                    ..RecipientState::default()
                });
            }
        };
        match place {
            Place::Deferred => {
                out.due = Some(meta.mtime());
                let log = self.queue_path(&self.spool.path(crate::spool::DEFER, id));
                let records = std::fs::read(&log)
                    .map(|data| deferlog::last_per_recipient(deferlog::parse(&data)))
                    .unwrap_or_default();
                for r in records {
                    out.recipients.push(RecipientState {
                        address: r.recipient,
                        state: "deferred".into(),
                        text: format!("in deferred; last reason: {} {}", r.status, r.reason),
                        status: Some(r.status),
                        reason: Some(r.reason),
                        ..RecipientState::default()
                    });
                }
                if out.recipients.is_empty() {
                    each(
                        &mut out,
                        "deferred",
                        "in deferred; no reason in its defer logfile",
                    );
                }
            }
            Place::Hold => {
                out.notes
                    .push("on hold: not delivered until released (postsuper -H)".into());
                each(&mut out, "hold", "on hold");
            }
            Place::Incoming => {
                out.notes
                    .push("in incoming: waiting for the queue manager to take it in".into());
                each(&mut out, "incoming", "in incoming");
            }
            Place::Maildrop => out
                .notes
                .push("in maildrop: waiting for pickup(8)".into()),
            Place::Active | Place::Unknown => out.notes.push(
                "in active, but not in the queue manager's memory (left there at start-up and waiting its turn, being moved, or no rqmgr running)"
                    .into(),
            ),
        }
        out
    }
}

/// The largest queue file `explain` reads for its recipients, bytes.
const MAX_QUEUE_FILE: u64 = 64 << 20;

/// The recipients of queue file `path` not yet done, as the queue manager
/// would read them (`qfile::read_batch`, batch after batch); `None` if the
/// file cannot be read or is damaged.
fn pending_recipients(path: &Path, id: &str) -> Option<Vec<String>> {
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len > MAX_QUEUE_FILE {
        return None;
    }
    let opts = crate::qfile::ReadOptions {
        queue: "explain",
        verp_filter: b"-=+",
        confirm_delay_cleared: false,
    };
    let mut env = crate::qfile::Envelope::default();
    let mut out = Vec::new();
    let shown = path.to_string_lossy();
    // Each batch moves on in the file; the bound only guards a loop.
    for _ in 0..100_000 {
        crate::qfile::read_batch(&file, len, &shown, id, &mut env, 1000, &opts, &mut out).ok()?;
        if env.rcpt_offset == 0 {
            break;
        }
    }
    Some(
        out.iter()
            .map(|r| String::from_utf8_lossy(r.address()).into_owned())
            .collect(),
    )
}

/// master.cf's process limit of each unix service, with `-` as
/// `default_process_limit` (`default`); lines that do not parse are left
/// out.
pub fn process_limits(master_cf: &str, default: i64) -> std::collections::HashMap<String, i64> {
    master_cf_lines(master_cf)
        .into_iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            if f.len() < 8 || f[1] != "unix" {
                return None;
            }
            let limit = match f[6] {
                "-" => default,
                n => n.parse().ok()?,
            };
            Some((f[0].to_string(), limit))
        })
        .collect()
}

/// Regular files under `dir` (a queue, with its hashed subdirectories),
/// `None` if it cannot be read.
fn count_files(dir: &Path, depth: u32) -> Option<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        match e.file_type() {
            Ok(t) if t.is_file() => n += 1,
            Ok(t) if t.is_dir() && depth > 0 => n += count_files(&e.path(), depth - 1).unwrap_or(0),
            _ => {}
        }
    }
    Some(n)
}

/// Runs `rqmgr forecast [-o name=value]...`: asks the daemon for its
/// backlog and simulates it under main.cf (with the overrides) and
/// master.cf's process limits. Reads only.
pub fn forecast(
    config_dir: Option<&Path>,
    overrides: &[String],
    as_json: bool,
) -> Result<String, ClientError> {
    let inst = Instance::open(config_dir)?;
    let config = |e: crate::config::ConfigError| ClientError::Config(e.to_string());
    let mut cf = MainCf::load(&inst.config_dir).map_err(config)?;
    for o in overrides {
        cf.apply_override(o).map_err(config)?;
    }
    // The overridden default_process_limit is the one `-` stands for.
    let (p, _) = Params::read(&mut cf.clone()).map_err(config)?;
    let backlog = match inst.ask(&Request::Backlog)? {
        Answer::Backlog(b) => b,
        Answer::Error(e) => return Err(ClientError::Answer(e)),
        _ => return Err(ClientError::Answer("unexpected answer".into())),
    };
    let master_cf = std::fs::read_to_string(inst.config_dir.join("master.cf")).unwrap_or_default();
    let process_limits = process_limits(&master_cf, p.default_process_limit)
        .into_iter()
        .map(|(k, v)| (k, v.max(1) as usize))
        .collect();
    let queue = |q: &str| count_files(&inst.queue_path(Path::new(q)), 16);
    let inputs = super::forecast::Inputs {
        main_cf: cf,
        overrides: overrides.to_vec(),
        process_limits,
        incoming_files: queue(crate::spool::INCOMING),
        deferred_files: queue(crate::spool::DEFERRED),
        max_recipients: super::forecast::MAX_RECIPIENTS,
    };
    let f = super::forecast::forecast(&backlog, inputs)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    Ok(if as_json {
        json(&f)
    } else {
        super::forecast::text(&f)
    })
}

/// master.cf's logical lines: comments and blank lines dropped, a line
/// starting with white space continues the previous one.
fn master_cf_lines(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(t);
            }
        } else {
            out.push(line.to_string());
        }
    }
    out
}

fn json<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// Runs `rqmgr status` (fills in the process limits from master.cf).
pub fn status(config_dir: Option<&Path>, as_json: bool) -> Result<String, ClientError> {
    let inst = Instance::open(config_dir)?;
    let mut st: Status = match inst.ask(&Request::Status)? {
        Answer::Status(s) => s,
        Answer::Error(e) => return Err(ClientError::Answer(e)),
        _ => return Err(ClientError::Answer("unexpected answer".into())),
    };
    let master_cf = std::fs::read_to_string(inst.config_dir.join("master.cf")).unwrap_or_default();
    for t in &mut st.transports {
        t.process_limit = inst.process_limit(&master_cf, &t.name);
    }
    Ok(if as_json {
        json(&st)
    } else {
        text::status(&st)
    })
}

/// Runs `rqmgr explain ID`: the daemon's answer if it holds the message,
/// else what the queue directory says. Returns the text and a warning
/// (the daemon could not be asked).
pub fn explain(
    config_dir: Option<&Path>,
    id: &str,
    as_json: bool,
) -> Result<(String, Option<String>), ClientError> {
    if !crate::spool::queue_id_ok(id) {
        return Err(ClientError::Config(format!("bad queue id: {id:?}")));
    }
    let inst = Instance::open(config_dir)?;
    let mut warning = None;
    let asked = match inst.ask(&Request::Explain(id.to_string())) {
        Ok(Answer::Explain(e)) if e.place == Place::Active => Some(e),
        Ok(Answer::Explain(_)) => None,
        Ok(Answer::Error(e)) => return Err(ClientError::Answer(e)),
        Ok(_) => return Err(ClientError::Answer("unexpected answer".into())),
        Err(e) => {
            warning = Some(e.to_string());
            None
        }
    };
    let e = asked.unwrap_or_else(|| inst.explain_from_files(id));
    let out = if as_json {
        json(&e)
    } else {
        text::explain(&e, crate::now_secs())
    };
    Ok((out, warning))
}

/// The administrator's command line (`rqmgr status|explain ...`): prints
/// the answer, or `rqmgr: fatal: ...` on stderr. Returns the exit status.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    let cli = match AdminCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match &cli.command {
        AdminCommand::Status {
            config_directory,
            json,
        } => status(config_directory.as_deref(), *json),
        AdminCommand::Explain {
            config_directory,
            json,
            queue_id,
        } => explain(config_directory.as_deref(), queue_id, *json).map(|(out, warning)| {
            if let Some(w) = warning {
                eprintln!("rqmgr: warning: {w}");
            }
            out
        }),
        AdminCommand::Forecast {
            config_directory,
            json,
            overrides,
        } => forecast(config_directory.as_deref(), overrides, *json),
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            0
        }
        Err(e) => {
            eprintln!("rqmgr: fatal: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_words_only() {
        let v = |a: &[&str]| {
            a.iter()
                .map(|s| s.into())
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert!(is_admin_command(&v(&["rqmgr", "status"])));
        assert!(is_admin_command(&v(&["rqmgr", "explain", "ABC"])));
        assert!(!is_admin_command(&v(&["rqmgr", "-l", "-t", "unix", "-u"])));
        assert!(!is_admin_command(&v(&["rqmgr"])));
        assert!(!is_admin_command(&v(&["rqmgr", "-t", "unix", "status"])));
    }

    #[test]
    fn master_cf_continuations() {
        let lines = master_cf_lines(
            "# c\nsmtp      unix  -       -       y       -       -       smtp\n\
             slow unix - - n - 2 smtp\n  -o x=y\nrelay unix - - n\n - 7 smtp\n",
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2], "relay unix - - n - 7 smtp");
    }
}
