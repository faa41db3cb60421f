//! Test harness: a private, throwaway Postfix instance under /tmp whose queue
//! manager is rqmgr, Postfix's own qmgr, or Postfix's oqmgr.
//!
//! `Instance::start(Opts::new("name", Qmgr::PostfixQmgr))` lays out ROOT =
//! /tmp/rqmgr-test-<name>-<pid>-<n> (etc, spool, data, libexec, log, mail,
//! sink), starts an smtp-sink for the `sink.example` route and then the
//! instance (`postfix -c ROOT/etc start`). Dropping the instance stops it,
//! waits for all its processes and removes ROOT, unless the test failed or
//! RQMGR_KEEP=1 (then ROOT is kept and its path printed).
//!
//! Routes (transport_maps = texthash:ROOT/etc/transport):
//! `discard.example` -> discard:, `sink.example` -> smtp-sink,
//! `error.example` -> error:5.1.1 (bounces), `closed.example` -> a closed
//! port on 127.0.0.1 (defers). Local users (aliases to files in ROOT/mail):
//! see [`LOCAL_USERS`]. Nothing leaves the machine: default_transport is
//! error:, everything listens on 127.0.0.1 only.
//!
//! The layout is the same as the one `.ci/demo` builds in shell.
#![allow(dead_code)]

pub mod fake;
pub mod log;
pub mod proxy;
pub mod sink;
pub mod smtp;
pub mod sys;
pub mod tools;

pub use log::LogLine;
pub use sink::SmtpSink;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The instance's myhostname; local mail goes to `user@HOSTNAME`.
pub const HOSTNAME: &str = "rqmgr-test.example";
/// Local users: `user@HOSTNAME` is delivered by local(8) to the file
/// ROOT/mail/<user> (an alias to a file, written as user nobody).
pub const LOCAL_USERS: &[&str] = &[
    "sender",
    "alice",
    "bob",
    "postmaster",
    "root",
    "mailer-daemon",
];

const POSTFIX: &str = "/usr/sbin/postfix";
const POSTQUEUE: &str = "/usr/sbin/postqueue";
const POSTSUPER: &str = "/usr/sbin/postsuper";
const POSTKICK: &str = "/usr/sbin/postkick";
const SENDMAIL: &str = "/usr/sbin/sendmail";
const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";
const DAEMON_DIR: &str = "/usr/lib/postfix/sbin";

/// Queue directories that hold messages (as opposed to logs and sockets).
pub const MESSAGE_QUEUES: &[&str] = &["maildrop", "incoming", "active", "deferred", "hold"];

/// Which program runs as the instance's qmgr.
#[allow(clippy::enum_variant_names)] // the names say whose qmgr it is
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qmgr {
    /// This crate's binary (cargo's CARGO_BIN_EXE_rqmgr).
    Rqmgr,
    /// /usr/lib/postfix/sbin/qmgr
    PostfixQmgr,
    /// /usr/lib/postfix/sbin/oqmgr
    PostfixOqmgr,
    /// Any other program.
    Path(PathBuf),
}

impl Qmgr {
    /// From RQMGR_TEST_QMGR: `rqmgr` (the default), `qmgr` or `postfix`,
    /// `oqmgr`, or an absolute path.
    pub fn from_env() -> Qmgr {
        match std::env::var("RQMGR_TEST_QMGR").ok().as_deref() {
            None | Some("") | Some("rqmgr") => Qmgr::Rqmgr,
            Some("qmgr") | Some("postfix") | Some("postfix_qmgr") => Qmgr::PostfixQmgr,
            Some("oqmgr") | Some("postfix_oqmgr") => Qmgr::PostfixOqmgr,
            Some(p) if p.starts_with('/') => Qmgr::Path(PathBuf::from(p)),
            Some(other) => {
                panic!("RQMGR_TEST_QMGR={other:?}: want rqmgr, qmgr, oqmgr or an absolute path")
            }
        }
    }

    /// The program that ROOT/libexec/qmgr points to. For [`Qmgr::Rqmgr`]
    /// (the `rqmgr::` tests): cargo's build, or the rqmgr binary that
    /// RQMGR_TEST_QMGR names by absolute path (.ci/test-package runs them
    /// so against the packaged /usr/lib/postfix/sbin/rqmgr).
    pub fn path(&self) -> PathBuf {
        match self {
            Qmgr::Rqmgr => match std::env::var("RQMGR_TEST_QMGR") {
                Ok(p) if p.starts_with('/') => PathBuf::from(p),
                _ => PathBuf::from(env!("CARGO_BIN_EXE_rqmgr")),
            },
            Qmgr::PostfixQmgr => PathBuf::from(DAEMON_DIR).join("qmgr"),
            Qmgr::PostfixOqmgr => PathBuf::from(DAEMON_DIR).join("oqmgr"),
            Qmgr::Path(p) => p.clone(),
        }
    }

    /// Short name, used in ROOT's name.
    pub fn tag(&self) -> &'static str {
        match self {
            Qmgr::Rqmgr => "rqmgr",
            Qmgr::PostfixQmgr => "qmgr",
            Qmgr::PostfixOqmgr => "oqmgr",
            Qmgr::Path(_) => "custom",
        }
    }
}

/// How to start an instance.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Part of ROOT's name (the test's name).
    pub name: String,
    pub qmgr: Qmgr,
    /// false: the qmgr line of master.cf is commented out (mail piles up in
    /// incoming until [`Instance::enable_qmgr`]).
    pub qmgr_enabled: bool,
    /// cleanup `-o in_flow_delay=0`, so that mail can pile up without a qmgr.
    pub in_flow_delay_zero: bool,
    /// Extra main.cf settings, appended after the defaults.
    pub main_cf: Vec<(String, String)>,
    /// Time limit of every wait (RQMGR_TEST_TIMEOUT seconds, default 30).
    pub timeout: Duration,
    /// Stop a wait at once when the log shows that the qmgr crashed or was
    /// throttled by master(8).
    pub fail_fast: bool,
    /// The master.cf service type of qmgr: `unix` (the default) or `fifo`.
    pub qmgr_service_type: String,
    /// Extra arguments on the qmgr line of master.cf, after the command
    /// word (e.g. `--scheduler oqmgr` for rqmgr).
    pub qmgr_args: Vec<String>,
    /// Extra transport_maps entries (`domain`, `transport:nexthop`),
    /// appended after the standard routes. In the nexthop, `{sink_port}`,
    /// `{slow_sink_port}` and `{closed_port}` stand for the ports of the
    /// smtp-sink, the slow smtp-sink and the closed port.
    pub transports: Vec<(String, String)>,
    /// Extra master.cf lines, appended after the standard services (e.g. a
    /// clone of smtp under another name: `rated unix - - n - - smtp`).
    pub services: Vec<String>,
    /// Standard services left out of master.cf (e.g. `retry`).
    pub omit_services: Vec<String>,
    /// Some(seconds): also start a second smtp-sink, for route
    /// `slow.example`, that waits that long before it answers DATA
    /// (`smtp-sink -w seconds`). See [`Instance::slow_sink`].
    pub slow_sink_delay: Option<u32>,
    /// Some(size): ROOT/spool is a tmpfs of that size (`mount -o size=`,
    /// e.g. "4m") with [`SPOOL_TMPFS_INODES`] inodes, unmounted when the
    /// instance is dropped. See [`Opts::spool_tmpfs`].
    pub spool_tmpfs: Option<String>,
}

/// The inode limit of a tmpfs spool (`nr_inodes`): small, so that
/// [`Instance::fill_spool`] uses up the inodes in a few milliseconds. A
/// tmpfs charges no blocks for a directory, so only running out of inodes
/// makes a `mkdir` in the queue fail, as a full disk does.
pub const SPOOL_TMPFS_INODES: u32 = 2048;

impl Opts {
    pub fn new(name: &str, qmgr: Qmgr) -> Opts {
        let timeout = std::env::var("RQMGR_TEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(30);
        Opts {
            name: name.to_string(),
            qmgr,
            qmgr_enabled: true,
            in_flow_delay_zero: false,
            main_cf: Vec::new(),
            timeout: Duration::from_secs(timeout),
            fail_fast: true,
            qmgr_service_type: "unix".to_string(),
            qmgr_args: Vec::new(),
            transports: Vec::new(),
            services: Vec::new(),
            omit_services: Vec::new(),
            slow_sink_delay: None,
            spool_tmpfs: None,
        }
    }

    /// Queue manager from RQMGR_TEST_QMGR.
    pub fn from_env(name: &str) -> Opts {
        Opts::new(name, Qmgr::from_env())
    }

    pub fn qmgr_disabled(mut self) -> Opts {
        self.qmgr_enabled = false;
        self
    }

    pub fn in_flow_delay_zero(mut self) -> Opts {
        self.in_flow_delay_zero = true;
        self
    }

    pub fn main_cf(mut self, name: &str, value: &str) -> Opts {
        self.main_cf.push((name.to_string(), value.to_string()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Opts {
        self.timeout = t;
        self
    }

    /// qmgr as a `fifo` service (`qmgr fifo n - n 300 1 qmgr`): public/qmgr
    /// is then a FIFO instead of a socket.
    pub fn qmgr_fifo(mut self) -> Opts {
        self.qmgr_service_type = "fifo".to_string();
        self
    }

    /// Extra arguments for the queue manager on its master.cf line, e.g.
    /// `["--scheduler", "oqmgr"]` (rqmgr only: Postfix's daemons reject
    /// unknown options).
    pub fn qmgr_args(mut self, args: &[&str]) -> Opts {
        self.qmgr_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An extra transport_maps entry, e.g. `("nosuch.example", "nosuch:")`.
    pub fn transport(mut self, domain: &str, nexthop: &str) -> Opts {
        self.transports
            .push((domain.to_string(), nexthop.to_string()));
        self
    }

    /// An extra master.cf line (a service), e.g.
    /// `rated unix - - n - - smtp`.
    pub fn service(mut self, line: &str) -> Opts {
        self.services.push(line.to_string());
        self
    }

    /// Leaves the standard service `name` out of master.cf.
    pub fn omit_service(mut self, name: &str) -> Opts {
        self.omit_services.push(name.to_string());
        self
    }

    /// A second smtp-sink behind route `slow.example` that delays its
    /// answer to DATA by `seconds`.
    pub fn slow_sink(mut self, seconds: u32) -> Opts {
        self.slow_sink_delay = Some(seconds);
        self
    }

    /// The queue directory on a small tmpfs of `size` (e.g. "4m"), so that a
    /// test can fill it up ([`Instance::fill_spool`]). Unmounted at drop
    /// (a kept instance's spool is copied to ROOT/spool.kept first).
    pub fn spool_tmpfs(mut self, size: &str) -> Opts {
        self.spool_tmpfs = Some(size.to_string());
        self
    }

    /// Whether the test keeps no wait going when the qmgr is killed or
    /// throttled (false for tests that kill the qmgr themselves).
    pub fn fail_fast(mut self, on: bool) -> Opts {
        self.fail_fast = on;
        self
    }
}

/// Panics unless Postfix and its test tools are installed and we are root.
pub fn require_postfix() {
    let needed = [
        POSTFIX,
        POSTQUEUE,
        POSTSUPER,
        POSTKICK,
        SENDMAIL,
        SMTP_SOURCE,
        "/usr/sbin/smtp-sink",
        "/usr/sbin/postconf",
        "/usr/lib/postfix/sbin/master",
        "/usr/lib/postfix/sbin/qmgr",
        "/usr/lib/postfix/sbin/oqmgr",
    ];
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        panic!(
            "Postfix is not installed: run .ci/setup-postfix as root (missing: {})",
            missing.join(", ")
        );
    }
    if sys::euid() != 0 {
        panic!("the acceptance tests start a private Postfix instance and must run as root");
    }
}

static INSTANCE_COUNTER: AtomicU32 = AtomicU32::new(0);
static MSG_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running private Postfix instance.
pub struct Instance {
    pub opts: Opts,
    /// ROOT: everything of this instance lives under it.
    pub root: PathBuf,
    /// Port of the instance's smtpd on 127.0.0.1.
    pub smtpd_port: u16,
    /// A port on 127.0.0.1 where nothing listens (route `closed.example`).
    pub closed_port: u16,
    /// The smtp-sink behind route `sink.example`.
    pub sink: SmtpSink,
    /// The slow smtp-sink behind route `slow.example`, if
    /// [`Opts::slow_sink`] asked for one.
    pub slow_sink: Option<SmtpSink>,
    qmgr_enabled: bool,
    stopped: bool,
}

impl Instance {
    /// Lays out ROOT, starts the smtp-sink and the instance, and waits until
    /// the master runs.
    pub fn start(opts: Opts) -> Instance {
        require_postfix();
        let n = INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let short: String = opts
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let root = PathBuf::from(format!(
            "/tmp/rqmgr-test-{}-{short}-{}-{n}",
            opts.qmgr.tag(),
            std::process::id()
        ));
        if root.exists() {
            fs::remove_dir_all(&root).expect("remove stale ROOT");
        }
        let smtpd_port = sys::free_port();
        let closed_port = sys::free_port();
        let sink_port = sys::free_port();
        make_layout(&root, &opts.qmgr.path(), opts.spool_tmpfs.as_deref());
        let sink = SmtpSink::start(&root.join("sink"), sink_port);
        let slow_sink = opts.slow_sink_delay.map(|secs| {
            let port = sys::free_port();
            SmtpSink::start_with(&root.join("slow-sink"), port, &["-w", &secs.to_string()])
        });
        let inst = Instance {
            qmgr_enabled: opts.qmgr_enabled,
            opts,
            root,
            smtpd_port,
            closed_port,
            sink,
            slow_sink,
            stopped: false,
        };
        inst.write_config();
        let out = inst.postfix(&["start"]);
        if !out.success() {
            inst.fail(&format!(
                "postfix start failed ({:?}):\n{}{}",
                out.status, out.stdout, out.stderr
            ));
        }
        let master_pid = inst.root.join("spool/pid/master.pid");
        inst.wait_until("master.pid to appear", || master_pid.exists());
        inst.wait_for_line("the master to log `daemon started`", |l| {
            l.is_from("master") && l.text.starts_with("daemon started")
        });
        inst
    }

    // ---- paths and names -------------------------------------------------

    pub fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }

    /// ROOT/etc as a string, for `-c`.
    pub fn config_dir(&self) -> String {
        self.etc().display().to_string()
    }

    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }

    /// Serves `private/<name>` with a fake peer (see [`fake`]); route a
    /// domain to it with `Opts::transport(domain, "<name>:")`.
    pub fn fake_peer(&self, name: &str, behaviour: fake::Behaviour) -> fake::FakePeer {
        fake::FakePeer::serve(&self.spool(), name, sys::uid_of("postfix"), behaviour)
    }

    pub fn maillog_path(&self) -> PathBuf {
        self.root.join("log/maillog")
    }

    /// ROOT/mail/<user>: the mailbox file of a local user.
    pub fn mailbox_path(&self, user: &str) -> PathBuf {
        self.root.join("mail").join(user)
    }

    /// Contents of a local user's mailbox ("" if none yet).
    pub fn mailbox(&self, user: &str) -> String {
        fs::read(self.mailbox_path(user))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `user@rqmgr-test.example`
    pub fn local_addr(&self, user: &str) -> String {
        format!("{user}@{HOSTNAME}")
    }

    /// A token unique to this process and call, to mark a test message. Its
    /// counter has a fixed width, so no token is a prefix of another.
    pub fn unique_token(&self, what: &str) -> String {
        format!(
            "{what}-{}-{}-{:06}",
            self.opts.qmgr.tag(),
            std::process::id(),
            MSG_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    // ---- configuration ---------------------------------------------------

    fn write_config(&self) {
        let etc = self.etc();
        let root = self.root.display().to_string();
        // postlogd_watchdog_timeout: on a loaded CI machine one write of
        // the maillog once took postlogd over its 10 s default; the
        // watchdog killed it and master throttled postlog for
        // service_throttle_time (60 s), so no line reached the maillog
        // for a minute and the test's wait for one timed out.
        let mut main = format!(
            "# Private Postfix instance for rqmgr's acceptance tests: loopback only.\n\
             compatibility_level = 3.6\n\
             queue_directory = {root}/spool\n\
             data_directory = {root}/data\n\
             daemon_directory = {root}/libexec\n\
             command_directory = /usr/sbin\n\
             shlib_directory = /usr/lib/postfix\n\
             meta_directory = /etc/postfix\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             default_privs = nobody\n\
             myhostname = {HOSTNAME}\n\
             mydomain = example\n\
             myorigin = $myhostname\n\
             mydestination = $myhostname, localhost\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtp_dns_support_level = disabled\n\
             default_transport = error:5.7.1 no mail leaves this test instance\n\
             relay_transport = error:5.7.1 no mail leaves this test instance\n\
             transport_maps = texthash:{root}/etc/transport\n\
             alias_maps = texthash:{root}/etc/aliases\n\
             alias_database =\n\
             local_recipient_maps = $alias_maps\n\
             mail_spool_directory = {root}/mail\n\
             biff = no\n\
             maillog_file = {root}/log/maillog\n\
             maillog_file_prefixes = {root}/log\n\
             postlogd_watchdog_timeout = 300s\n"
        );
        for (k, v) in &self.opts.main_cf {
            let _ = writeln!(main, "{k} = {v}");
        }
        write_file(&etc.join("main.cf"), &main);

        let mut transport = format!(
            "discard.example discard:\n\
             sink.example smtp:[127.0.0.1]:{}\n\
             error.example error:5.1.1 mailbox unavailable\n\
             closed.example smtp:[127.0.0.1]:{}\n",
            self.sink.port, self.closed_port
        );
        if let Some(slow) = &self.slow_sink {
            let _ = writeln!(transport, "slow.example smtp:[127.0.0.1]:{}", slow.port);
        }
        for (domain, nexthop) in &self.opts.transports {
            let nexthop = nexthop
                .replace("{sink_port}", &self.sink.port.to_string())
                .replace("{closed_port}", &self.closed_port.to_string());
            let nexthop = match &self.slow_sink {
                Some(slow) => nexthop.replace("{slow_sink_port}", &slow.port.to_string()),
                None => nexthop,
            };
            let _ = writeln!(transport, "{domain} {nexthop}");
        }
        write_file(&etc.join("transport"), &transport);

        let mut aliases = String::new();
        for u in LOCAL_USERS {
            let _ = writeln!(aliases, "{u} {root}/mail/{u}");
        }
        write_file(&etc.join("aliases"), &aliases);
        self.write_master_cf();
    }

    fn write_master_cf(&self) {
        let qmgr_hash = if self.qmgr_enabled { "" } else { "#" };
        let cleanup_opts = if self.opts.in_flow_delay_zero {
            " -o in_flow_delay=0"
        } else {
            ""
        };
        let master = format!(
            "# service type  private unpriv  chroot  wakeup  maxproc command + args\n\
             127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup    unix  n       -       n       60      1       pickup\n\
             cleanup   unix  n       -       n       -       0       cleanup{cleanup_opts}\n\
             {qmgr_hash}qmgr      {qmgr_type:<5} n       -       n       300     1       qmgr{qmgr_args}\n\
             rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
             bounce    unix  -       -       n       -       0       bounce\n\
             defer     unix  -       -       n       -       0       bounce\n\
             trace     unix  -       -       n       -       0       bounce\n\
             verify    unix  -       -       n       -       1       verify\n\
             flush     unix  n       -       n       1000?   0       flush\n\
             proxymap  unix  -       -       n       -       -       proxymap\n\
             proxywrite unix -       -       n       -       1       proxymap\n\
             smtp      unix  -       -       n       -       -       smtp\n\
             relay     unix  -       -       n       -       -       smtp\n\
             showq     unix  n       -       n       -       -       showq\n\
             error     unix  -       -       n       -       -       error\n\
             retry     unix  -       -       n       -       -       error\n\
             discard   unix  -       -       n       -       -       discard\n\
             local     unix  -       n       n       -       -       local\n\
             virtual   unix  -       n       n       -       -       virtual\n\
             lmtp      unix  -       -       n       -       -       lmtp\n\
             anvil     unix  -       -       n       -       1       anvil\n\
             scache    unix  -       -       n       -       1       scache\n\
             postlog   unix-dgram n  -       n       -       1       postlogd\n",
            port = self.smtpd_port,
            qmgr_type = self.opts.qmgr_service_type,
            qmgr_args = self
                .opts
                .qmgr_args
                .iter()
                .map(|a| format!(" {a}"))
                .collect::<String>(),
        );
        let mut master: String = master
            .lines()
            .filter(|l| {
                let name = l.split_whitespace().next().unwrap_or("");
                !self.opts.omit_services.iter().any(|o| o == name)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        for line in &self.opts.services {
            let _ = writeln!(master, "{line}");
        }
        write_file(&self.etc().join("master.cf"), &master);
    }

    /// Sets (or replaces) a main.cf parameter, rewrites main.cf and
    /// reloads the instance.
    pub fn set_main_cf(&mut self, name: &str, value: &str) {
        self.opts.main_cf.retain(|(k, _)| k != name);
        self.opts
            .main_cf
            .push((name.to_string(), value.to_string()));
        self.write_config();
        self.reload();
    }

    /// Sets (or replaces) the route of `domain` (as [`Opts::transport`]),
    /// rewrites the transport map and reloads the instance.
    pub fn set_transport(&mut self, domain: &str, nexthop: &str) {
        self.opts.transports.retain(|(d, _)| d != domain);
        self.opts
            .transports
            .push((domain.to_string(), nexthop.to_string()));
        self.write_config();
        self.reload();
    }

    /// Uncomments the qmgr line of master.cf and reloads the instance.
    pub fn enable_qmgr(&mut self) {
        self.qmgr_enabled = true;
        self.write_master_cf();
        self.reload();
    }

    /// Comments out the qmgr line of master.cf and reloads the instance.
    pub fn disable_qmgr(&mut self) {
        self.qmgr_enabled = false;
        self.write_master_cf();
        self.reload();
    }

    // ---- commands --------------------------------------------------------

    fn run(&self, program: &str, args: &[&str]) -> sys::RunOutput {
        let mut cmd = Command::new(program);
        cmd.args(args);
        sys::run_with_timeout(&mut cmd, &self.root.join("log"), self.opts.timeout)
    }

    fn run_ok(&self, program: &str, args: &[&str]) -> sys::RunOutput {
        let out = self.run(program, args);
        if !out.success() {
            self.fail(&format!(
                "{program} {} failed ({:?}{}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                if out.timed_out { ", timed out" } else { "" },
                out.stdout,
                out.stderr
            ));
        }
        out
    }

    /// `postfix -c ROOT/etc <args>` (not checked).
    pub fn postfix(&self, args: &[&str]) -> sys::RunOutput {
        let c = self.config_dir();
        let mut all = vec!["-c", c.as_str()];
        all.extend_from_slice(args);
        self.run(POSTFIX, &all)
    }

    /// `postfix reload`; waits until the master logs `reload`.
    pub fn reload(&self) {
        let before = self
            .log_lines()
            .iter()
            .filter(|l| l.is_from("master") && l.text.starts_with("reload"))
            .count();
        let out = self.postfix(&["reload"]);
        if !out.success() {
            self.fail(&format!(
                "postfix reload failed: {}{}",
                out.stdout, out.stderr
            ));
        }
        self.wait_for_log("the master to log `reload`", |lines| {
            lines
                .iter()
                .filter(|l| l.is_from("master") && l.text.starts_with("reload"))
                .count()
                > before
        });
    }

    /// `postqueue -c ROOT/etc -p`: the queue listing.
    pub fn postqueue_p(&self) -> String {
        let c = self.config_dir();
        self.run_ok(POSTQUEUE, &["-c", &c, "-p"]).stdout
    }

    /// `postqueue -c ROOT/etc -j`: the queue as JSON, one message a line.
    pub fn postqueue_j(&self) -> String {
        let c = self.config_dir();
        self.run_ok(POSTQUEUE, &["-c", &c, "-j"]).stdout
    }

    /// `qshape -c ROOT/etc <args>`: the queue's shape by domain and age.
    pub fn qshape(&self, args: &[&str]) -> String {
        let c = self.config_dir();
        let mut all = vec!["-c", c.as_str()];
        all.extend_from_slice(args);
        self.run_ok(tools::QSHAPE, &all).stdout
    }

    /// `postcat -c ROOT/etc <args>` (e.g. `-q ID`): a queue file's records.
    pub fn postcat(&self, args: &[&str]) -> String {
        let c = self.config_dir();
        let mut all = vec!["-c", c.as_str()];
        all.extend_from_slice(args);
        self.run_ok(tools::POSTCAT, &all).stdout
    }

    /// `postlog -c ROOT/etc -i -t tag text`: one line in the instance's log
    /// (`tag[pid]: text`).
    pub fn postlog(&self, tag: &str, text: &str) {
        let c = self.config_dir();
        self.run_ok(tools::POSTLOG, &["-c", &c, "-i", "-t", tag, text]);
    }

    /// `postqueue -c ROOT/etc -f`: flush (retry deferred mail now).
    pub fn postqueue_f(&self) {
        let c = self.config_dir();
        self.run_ok(POSTQUEUE, &["-c", &c, "-f"]);
    }

    /// `postqueue -c ROOT/etc -i ID`: schedule one message.
    pub fn postqueue_i(&self, id: &str) {
        let c = self.config_dir();
        self.run_ok(POSTQUEUE, &["-c", &c, "-i", id]);
    }

    /// `postsuper -c ROOT/etc <args>` (checked).
    pub fn postsuper(&self, args: &[&str]) -> sys::RunOutput {
        let c = self.config_dir();
        let mut all = vec!["-c", c.as_str()];
        all.extend_from_slice(args);
        self.run_ok(POSTSUPER, &all)
    }

    /// `<the qmgr program> <command> -c ROOT/etc <args>` (not checked):
    /// rqmgr's `status` and `explain` commands.
    pub fn rqmgr_command(&self, command: &str, args: &[&str]) -> sys::RunOutput {
        let c = self.config_dir();
        let program = self.opts.qmgr.path();
        let mut all = vec![command, "-c", c.as_str()];
        all.extend_from_slice(args);
        self.run(&program.to_string_lossy(), &all)
    }

    /// `postkick -c ROOT/etc public qmgr <request>` (request e.g. "I", "A", "F", "W").
    ///
    /// Over a socket, postkick writes the request and then a NUL byte; a
    /// qmgr that has read the request and closed the connection before the
    /// NUL arrives kills postkick with SIGPIPE (Postfix's own qmgr does that
    /// now and then). The request was delivered then, so that counts as
    /// success too.
    pub fn postkick_qmgr(&self, request: &str) {
        self.postkick("qmgr", request);
    }

    /// `postkick -c ROOT/etc public <service> <request>`, as
    /// [`Instance::postkick_qmgr`] (e.g. "pickup", "W" to wake pickup(8)).
    pub fn postkick(&self, service: &str, request: &str) {
        use std::os::unix::process::ExitStatusExt;
        let c = self.config_dir();
        let args = ["-c", c.as_str(), "public", service, request];
        let out = self.run(POSTKICK, &args);
        let sigpipe = !out.timed_out && out.status.and_then(|s| s.signal()) == Some(13);
        if !out.success() && !sigpipe {
            self.fail(&format!(
                "{POSTKICK} {} failed ({:?}{}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                if out.timed_out { ", timed out" } else { "" },
                out.stdout,
                out.stderr
            ));
        }
    }

    /// Sets the modification (and access) time of queue file `id` in
    /// `queue` (searched recursively): qmgr takes a file whose mtime is in
    /// the future as "not due yet".
    pub fn set_queue_file_mtime(&self, queue: &str, id: &str, t: SystemTime) {
        let path = self
            .queue_file(queue, id)
            .unwrap_or_else(|| self.fail(&format!("no queue file {id} in {queue}")));
        let f = fs::File::options()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| self.fail(&format!("open {}: {e}", path.display())));
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap_or_else(|e| self.fail(&format!("set times of {}: {e}", path.display())));
    }

    /// The pids of the instance's running queue manager processes (those
    /// whose command line starts with `qmgr`, as master(8) runs it).
    pub fn qmgr_pids(&self) -> Vec<u32> {
        sys::instance_processes(&self.etc())
            .into_iter()
            .filter(|p| p.cmdline.split(' ').next() == Some("qmgr"))
            .map(|p| p.pid)
            .collect()
    }

    /// A complete test message (header and body) with a Message-ID made of
    /// `token`, which is also the last line of the body.
    pub fn message_text(&self, from: &str, rcpts: &[&str], subject: &str, token: &str) -> String {
        format!(
            "From: <{from}>\nTo: {}\nSubject: {subject}\nMessage-ID: <{token}@{HOSTNAME}>\n\n\
             This is a test message for rqmgr's acceptance tests.\n\
             .a line that starts with a dot\n\
             token: {token}\n",
            rcpts
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Submits a message with sendmail(1) (`sendmail -C ROOT/etc -f from -- rcpts`),
    /// waits for cleanup to log its Message-ID and returns the queue id.
    pub fn sendmail(&self, from: &str, rcpts: &[&str], subject: &str, token: &str) -> String {
        let text = self.message_text(from, rcpts, subject, token);
        self.sendmail_text(from, rcpts, &text, token)
    }

    /// Like [`Instance::sendmail`], with the whole message text given (its
    /// Message-ID must be `<token@HOSTNAME>`), e.g. for a list message with
    /// thousands of recipients that its To: header does not name.
    pub fn sendmail_text(
        &self,
        from: impl AsRef<std::ffi::OsStr>,
        rcpts: &[&str],
        text: &str,
        token: &str,
    ) -> String {
        self.sendmail_with(&[], from, rcpts, text, token)
    }

    /// Like [`Instance::sendmail_text`], with extra sendmail options before
    /// `-f` (e.g. `-XV` for VERP).
    pub fn sendmail_with(
        &self,
        options: &[&str],
        from: impl AsRef<std::ffi::OsStr>,
        rcpts: &[&str],
        text: &str,
        token: &str,
    ) -> String {
        let input = self.root.join("log").join(format!("{token}.msg"));
        write_file(&input, text);
        let c = self.config_dir();
        let mut cmd = Command::new(SENDMAIL);
        cmd.arg("-C")
            .arg(&c)
            .args(options)
            .arg("-f")
            .arg(from.as_ref())
            .arg("--")
            .args(rcpts);
        let stdin = fs::File::open(&input).expect("open message file");
        let out =
            sys::run_with_timeout_stdin(&mut cmd, stdin, &self.root.join("log"), self.opts.timeout);
        let _ = fs::remove_file(&input);
        if !out.success() {
            self.fail(&format!(
                "sendmail failed ({:?}): {}{}",
                out.status, out.stdout, out.stderr
            ));
        }
        let msgid = format!("message-id=<{token}@{HOSTNAME}>");
        let line = self.wait_for_line(&format!("cleanup to log {msgid}"), |l| {
            l.is_from("cleanup") && l.body() == msgid
        });
        line.queue_id()
            .expect("queue id in cleanup line")
            .to_string()
    }

    /// Opens an SMTP session with the instance's smtpd.
    pub fn smtp(&self) -> smtp::SmtpClient {
        smtp::SmtpClient::connect(self.smtpd_port, Duration::from_secs(30))
            .unwrap_or_else(|e| self.fail(&format!("SMTP session with smtpd: {e}")))
    }

    /// Submits one message over SMTP; returns the queue id smtpd reported.
    pub fn send_smtp(&self, from: &str, rcpts: &[&str], subject: &str, token: &str) -> String {
        let text = self.message_text(from, rcpts, subject, token);
        let mut s = self.smtp();
        let id = s
            .send(from, rcpts, &text)
            .unwrap_or_else(|e| self.fail(&format!("SMTP submission: {e}")));
        s.quit();
        id
    }

    /// Runs `smtp-source <args> 127.0.0.1:<smtpd port>` and checks its exit.
    pub fn smtp_source(&self, args: &[&str]) -> sys::RunOutput {
        let target = format!("127.0.0.1:{}", self.smtpd_port);
        let mut all: Vec<&str> = args.to_vec();
        all.push(&target);
        self.run_ok(SMTP_SOURCE, &all)
    }

    // ---- the maillog -----------------------------------------------------

    /// The whole maillog ("" before postlogd wrote anything).
    pub fn maillog(&self) -> String {
        fs::read(self.maillog_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The maillog, parsed.
    pub fn log_lines(&self) -> Vec<LogLine> {
        log::parse_log(&self.maillog())
    }

    /// The log lines about one queue id.
    pub fn lines_for(&self, id: &str) -> Vec<LogLine> {
        self.log_lines()
            .into_iter()
            .filter(|l| l.queue_id() == Some(id))
            .collect()
    }

    /// The last `n` lines of the maillog, without the symlink warnings.
    pub fn log_tail(&self, n: usize) -> String {
        let lines: Vec<LogLine> = self
            .log_lines()
            .into_iter()
            .filter(|l| !l.is_symlink_noise())
            .collect();
        let start = lines.len().saturating_sub(n);
        lines[start..]
            .iter()
            .map(|l| l.raw.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `pred` holds for the parsed log; returns the log then.
    pub fn wait_for_log<F: Fn(&[LogLine]) -> bool>(&self, what: &str, pred: F) -> Vec<LogLine> {
        let mut result = Vec::new();
        self.wait_until(what, || {
            let lines = self.log_lines();
            if pred(&lines) {
                result = lines;
                true
            } else {
                false
            }
        });
        result
    }

    /// Waits for a log line matching `pred`; returns the first one.
    pub fn wait_for_line<F: Fn(&LogLine) -> bool>(&self, what: &str, pred: F) -> LogLine {
        let lines = self.wait_for_log(what, |lines| lines.iter().any(&pred));
        lines.into_iter().find(|l| pred(l)).expect("line just seen")
    }

    /// Waits until at least `n` log lines match `pred`; returns all that match.
    pub fn wait_for_lines<F: Fn(&LogLine) -> bool>(
        &self,
        what: &str,
        n: usize,
        pred: F,
    ) -> Vec<LogLine> {
        let lines = self.wait_for_log(what, |lines| lines.iter().filter(|l| pred(l)).count() >= n);
        lines.into_iter().filter(|l| pred(l)).collect()
    }

    /// Waits until the maillog holds every line logged before this call:
    /// postlogd writes datagrams in the order they arrive, so once a
    /// marker sent now through postlog(1) is in the file, so is every line
    /// a daemon sent before it (a queue file can reach its new queue
    /// before postlogd has written the lines its mover logged first).
    /// Returns the marker's text (`postfix/rqmgrtest[pid]: TEXT`).
    pub fn log_caught_up(&self) -> String {
        let marker = self.unique_token("log-caught-up");
        self.postlog("postfix/rqmgrtest", &marker);
        self.wait_for_line("postlog's marker line in the maillog", |l| l.text == marker);
        marker
    }

    /// Waits for `postfix/qmgr[pid]: ID: removed`.
    pub fn wait_removed(&self, id: &str) -> LogLine {
        self.wait_for_line(&format!("qmgr to log `{id}: removed`"), |l| {
            l.is_removed() && l.queue_id() == Some(id)
        })
    }

    /// Waits until `cond` holds, polling every 50 ms, for at most the
    /// instance's timeout; then fails the test with what it saw.
    pub fn wait_until<F: FnMut() -> bool>(&self, what: &str, mut cond: F) {
        self.wait_progress(what, || if cond() { Ok(()) } else { Err(String::new()) });
    }

    /// Like [`Instance::wait_until`], but `step` says how far it got
    /// (`Err(progress)`), and a timeout reports the last progress seen.
    pub fn wait_progress<F: FnMut() -> Result<(), String>>(&self, what: &str, mut step: F) {
        let start = Instant::now();
        loop {
            let progress = match step() {
                Ok(()) => return,
                Err(p) => p,
            };
            let seen = if progress.is_empty() {
                String::new()
            } else {
                format!(" (last seen: {progress})")
            };
            if self.opts.fail_fast {
                let lines = self.log_lines();
                if let Some(bad) = log::qmgr_trouble(&lines) {
                    self.fail(&format!(
                        "gave up waiting for {what}{seen} after {:.1} s: the queue manager ({}) failed:\n  {}",
                        start.elapsed().as_secs_f64(),
                        self.opts.qmgr.path().display(),
                        bad.raw
                    ));
                }
            }
            if start.elapsed() > self.opts.timeout {
                self.fail(&format!(
                    "timed out after {} s waiting for {what}{seen}",
                    self.opts.timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ---- the queue -------------------------------------------------------

    /// The queue ids of the files in one queue directory (walked recursively,
    /// so hashed queues like deferred work), sorted.
    pub fn queue_ids(&self, queue: &str) -> Vec<String> {
        let mut ids: Vec<String> = walk_files(&self.spool().join(queue))
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    /// The path of a queue file (searched recursively in `queue`).
    pub fn queue_file(&self, queue: &str, id: &str) -> Option<PathBuf> {
        walk_files(&self.spool().join(queue))
            .into_iter()
            .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(id))
    }

    /// Queue ids per message queue (maildrop incoming active deferred hold
    /// corrupt), only the non-empty ones.
    pub fn queue_listing(&self) -> BTreeMap<String, Vec<String>> {
        let mut map = BTreeMap::new();
        for q in MESSAGE_QUEUES.iter().chain(&["corrupt"]) {
            let ids = self.queue_ids(q);
            if !ids.is_empty() {
                map.insert(q.to_string(), ids);
            }
        }
        map
    }

    /// No file in maildrop, incoming, active, deferred or hold.
    pub fn queue_is_empty(&self) -> bool {
        MESSAGE_QUEUES.iter().all(|q| self.queue_ids(q).is_empty())
    }

    /// Waits until the queue is empty (see [`Instance::queue_is_empty`]).
    pub fn wait_queue_empty(&self) {
        self.wait_until("the queue to be empty", || self.queue_is_empty());
    }

    /// Waits until the queue is empty, kicking the queue manager with `IA`
    /// (ignore time stamps, as `postqueue -f`) each second it is not: a
    /// file that a new queue manager found locked by an agent still at
    /// work is `skipped, still being delivered` and dated 60 s ahead.
    pub fn kick_until_empty(&self, what: &str) {
        let mut last_kick = Instant::now();
        self.wait_progress(what, || {
            if self.queue_is_empty() {
                return Ok(());
            }
            if last_kick.elapsed() > Duration::from_secs(1) {
                self.postkick_qmgr("IA");
                last_kick = Instant::now();
            }
            Err(format!("{:?}", self.queue_listing()))
        });
    }

    /// `kill -9` of the queue manager process `pid`; waits until it is
    /// gone and the master has logged `pid N killed by signal 9`.
    pub fn kill_qmgr(&self, pid: u32) {
        sys::signal_pid(pid, "KILL");
        self.wait_until(&format!("qmgr pid {pid} to die"), || !sys::pid_alive(pid));
        self.wait_for_line("the master to log the qmgr killed by signal 9", |l| {
            l.is_from("master") && l.text.contains(&format!("pid {pid} killed by signal 9"))
        });
    }

    // ---- a full spool (Opts::spool_tmpfs) --------------------------------

    /// ROOT/spool/filler: where [`Instance::fill_spool`] puts its files.
    pub fn spool_filler(&self) -> PathBuf {
        self.spool().join("filler")
    }

    /// Fills the tmpfs spool: one file grows until no block is left, then
    /// empty files take every inode left. Returns (bytes, files) written.
    ///
    /// First it makes the lock file `pid/TYPE.NAME` of every master.cf
    /// service that has none yet, as a spool has them once each daemon has
    /// run: a daemon that cannot make its lock file at start-up ends with
    /// `fatal: open lock file ...`, which is not what these tests are about.
    pub fn fill_spool(&self) -> (u64, u32) {
        use std::io::Write;
        let master_cf = fs::read_to_string(self.etc().join("master.cf")).unwrap_or_default();
        for line in master_cf.lines() {
            let mut f = line.split_whitespace();
            if let (Some(name), Some(kind)) = (f.next(), f.next()) {
                if !name.starts_with('#') {
                    let lock = self.spool().join("pid").join(format!("{kind}.{name}"));
                    if !lock.exists() {
                        let _ = fs::File::create(&lock);
                    }
                }
            }
        }
        let dir = self.spool_filler();
        let _ = fs::create_dir(&dir);
        let mut bytes = 0u64;
        if let Ok(mut f) = fs::File::create(dir.join("blocks")) {
            for chunk in [65536usize, 4096, 512, 1] {
                let buf = vec![b'x'; chunk];
                while f.write_all(&buf).is_ok() {
                    bytes += chunk as u64;
                }
            }
        }
        let mut files = 0u32;
        while fs::File::create(dir.join(format!("i{files}"))).is_ok() {
            files += 1;
        }
        (bytes, files)
    }

    /// Room again: removes what [`Instance::fill_spool`] wrote.
    pub fn unfill_spool(&self) {
        let _ = fs::remove_dir_all(self.spool_filler());
    }

    /// Free blocks and free inodes of the spool's file system (`stat -f`).
    pub fn spool_free(&self) -> (u64, u64) {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %d"])
            .arg(self.spool())
            .output()
            .expect("run stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut f = text.split_whitespace().map(|x| x.parse().unwrap_or(0));
        (f.next().unwrap_or(0), f.next().unwrap_or(0))
    }

    // ---- checks ----------------------------------------------------------

    /// Fails the test (with the diagnostics) unless `cond`.
    pub fn check(&self, cond: bool, what: &str) {
        if !cond {
            self.fail(&format!("check failed: {what}"));
        }
    }

    /// Checks what the log says about a delivered message: exactly one
    /// `postfix/qmgr: ID: from=<from>, size=N, nrcpt=R (queue active)`, one
    /// `status=sent` line from postfix/`agent` for each recipient and no other
    /// delivery line, and exactly one `postfix/qmgr: ID: removed`. Returns the
    /// message's log lines.
    pub fn assert_delivered(
        &self,
        id: &str,
        from: &str,
        agent: &str,
        rcpts: &[&str],
    ) -> Vec<LogLine> {
        let lines = self.lines_for(id);
        let active: Vec<&LogLine> = lines.iter().filter(|l| l.is_queue_active()).collect();
        self.check(
            active.len() == 1,
            &format!(
                "one `{id}: from=..., size=..., nrcpt=... (queue active)` line from qmgr, saw {}",
                active.len()
            ),
        );
        let a = active[0];
        self.check(
            a.field("from") == Some(&format!("<{from}>")[..]),
            &format!("(queue active) line has from=<{from}>: {a}"),
        );
        self.check(
            a.field("size")
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|n| n > 0),
            &format!("(queue active) line has a size: {a}"),
        );
        self.check(
            a.field("nrcpt") == Some(&rcpts.len().to_string()[..]),
            &format!("(queue active) line has nrcpt={}: {a}", rcpts.len()),
        );
        let deliveries: Vec<&LogLine> = lines.iter().filter(|l| l.is_delivery()).collect();
        self.check(
            deliveries.len() == rcpts.len(),
            &format!(
                "{} delivery lines for {id}, saw {}",
                rcpts.len(),
                deliveries.len()
            ),
        );
        for r in rcpts {
            let want_to = format!("<{r}>");
            let for_r: Vec<&&LogLine> = deliveries
                .iter()
                .filter(|l| l.field("to") == Some(&want_to[..]))
                .collect();
            self.check(
                for_r.len() == 1,
                &format!("one delivery line for {id} to {want_to}"),
            );
            let l = for_r[0];
            self.check(
                l.is_from(agent) && l.status() == Some("sent"),
                &format!("{id} to {want_to} is status=sent by postfix/{agent}: {l}"),
            );
        }
        let removed = lines.iter().filter(|l| l.is_removed()).count();
        self.check(
            removed == 1,
            &format!("one `{id}: removed` line from qmgr, saw {removed}"),
        );
        lines
    }

    // ---- failure, stop ---------------------------------------------------

    /// What a failing test shows: ROOT, the queue, the processes, the log.
    pub fn diagnostics(&self) -> String {
        let mut d = String::new();
        let _ = writeln!(d, "ROOT: {}", self.root.display());
        let _ = writeln!(d, "queue manager: {}", self.opts.qmgr.path().display());
        let _ = writeln!(d, "queue files: {:?}", self.queue_listing());
        if self.opts.spool_tmpfs.is_some() {
            let (blocks, inodes) = self.spool_free();
            let _ = writeln!(d, "spool tmpfs: {blocks} blocks and {inodes} inodes free");
        }
        let procs = sys::instance_processes(&self.etc());
        let _ = writeln!(d, "processes:");
        for p in &procs {
            let _ = writeln!(d, "  {} {}", p.pid, p.cmdline);
        }
        let _ = writeln!(d, "maillog (last 60 lines, without symlink warnings):");
        let _ = writeln!(d, "{}", self.log_tail(60));
        d
    }

    /// Fails the test with `msg` and the diagnostics.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n---- {}", self.diagnostics());
    }

    /// Stops the instance: `postfix stop`, then waits for every process of the
    /// instance to exit; SIGKILL (by pid) for those left after 10 s. Stops
    /// the smtp-sink. Returns the pids that had to be killed.
    pub fn stop(&mut self) -> Vec<u32> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let master_pid = self.root.join("spool/pid/master.pid");
        if master_pid.exists() {
            let _ = self.postfix(&["stop"]);
        }
        let etc = self.etc();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sys::instance_processes(&etc).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut killed = Vec::new();
        for p in sys::instance_processes(&etc) {
            eprintln!(
                "rqmgr test: killing leftover process {} {}",
                p.pid, p.cmdline
            );
            sys::signal_pid(p.pid, "KILL");
            killed.push(p.pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while killed.iter().any(|&p| sys::pid_alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.sink.stop();
        if let Some(slow) = self.slow_sink.as_mut() {
            slow.stop();
        }
        killed
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let killed = self.stop();
        let keep = failing
            || std::env::var("RQMGR_KEEP")
                .map(|v| v == "1")
                .unwrap_or(false);
        if self.opts.spool_tmpfs.is_some() {
            let spool = self.spool();
            if keep {
                let _ = Command::new("cp")
                    .arg("-a")
                    .arg(&spool)
                    .arg(self.root.join("spool.kept"))
                    .status();
            }
            let _ = Command::new("umount").arg(&spool).status();
        }
        if keep {
            eprintln!(
                "rqmgr test: kept the instance's files in {}",
                self.root.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
        if !failing && !killed.is_empty() {
            panic!(
                "processes of the instance {} did not exit after postfix stop and were killed: {killed:?}",
                self.root.display()
            );
        }
    }
}

// ---- layout --------------------------------------------------------------------

/// Writes a file and dates it back 10 s: Postfix waits for a main.cf younger
/// than about 2 s (util/load_file.c).
fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let f = fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_modified(SystemTime::now() - Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("date back {}: {e}", path.display()));
}

fn mkdir(path: &Path, uid: u32, gid: u32, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    // set_permissions after chown: chown clears the set-gid bit.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Creates ROOT's directories (owners and modes as Debian's postfix-files)
/// and ROOT/libexec (symlinks to Postfix's daemons, qmgr -> `qmgr`).
fn make_layout(root: &Path, qmgr: &Path, spool_tmpfs: Option<&str>) {
    let postfix = sys::uid_of("postfix");
    let nobody = sys::uid_of("nobody");
    let postdrop = sys::gid_of("postdrop");
    mkdir(root, 0, 0, 0o755);
    for d in ["etc", "libexec", "log", "spool", "sink", "slow-sink"] {
        mkdir(&root.join(d), 0, 0, 0o755);
    }
    mkdir(&root.join("data"), postfix, 0, 0o700);
    mkdir(&root.join("mail"), nobody, 0, 0o755);
    let spool = root.join("spool");
    if let Some(size) = spool_tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!(
                "size={size},nr_inodes={SPOOL_TMPFS_INODES},mode=755"
            ))
            .arg("tmpfs")
            .arg(&spool)
            .output()
            .expect("run mount");
        if !out.status.success() {
            panic!(
                "mount a tmpfs on {}: {}",
                spool.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for q in [
        "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private",
        "saved", "trace",
    ] {
        mkdir(&spool.join(q), postfix, 0, 0o700);
    }
    mkdir(&spool.join("maildrop"), postfix, postdrop, 0o1730);
    mkdir(&spool.join("public"), postfix, postdrop, 0o2710);
    mkdir(&spool.join("pid"), 0, 0, 0o755);

    let libexec = root.join("libexec");
    let entries = fs::read_dir(DAEMON_DIR).unwrap_or_else(|e| panic!("read {DAEMON_DIR}: {e}"));
    for e in entries.flatten() {
        let name = e.file_name();
        if name == "qmgr" {
            continue;
        }
        symlink(e.path(), libexec.join(&name)).expect("symlink daemon");
    }
    if !qmgr.exists() {
        panic!(
            "the queue manager to test does not exist: {}",
            qmgr.display()
        );
    }
    symlink(qmgr, libexec.join("qmgr")).expect("symlink qmgr");
}

/// Every file under `dir`, recursively (missing dir: none).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk_files(&p)),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
    out
}

/// Distinct queue ids in lines matching `pred`.
pub fn distinct_ids<F: Fn(&LogLine) -> bool>(lines: &[LogLine], pred: F) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| pred(l))
        .filter_map(|l| l.queue_id().map(str::to_string))
        .collect()
}

/// Expands to one `#[test]` per queue manager for each named test body
/// `fn name(qmgr: Qmgr)`: `rqmgr::name`, `postfix_qmgr::name`,
/// `postfix_oqmgr::name`. Use with `#[macro_use] mod support;` (rqmgr-only
/// tests, such as tests/dropin_status.rs, do without it).
#[allow(unused_macros)]
macro_rules! dropin_tests {
    ($($name:ident),* $(,)?) => {
        mod rqmgr {
            $( #[test] fn $name() { super::$name(crate::support::Qmgr::Rqmgr) } )*
        }
        mod postfix_qmgr {
            $( #[test] fn $name() { super::$name(crate::support::Qmgr::PostfixQmgr) } )*
        }
        mod postfix_oqmgr {
            $( #[test] fn $name() { super::$name(crate::support::Qmgr::PostfixOqmgr) } )*
        }
    };
}
