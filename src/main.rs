//! rqmgr's entry point: the startup sequence of a Postfix trigger server
//! (`master/trigger_server.c:trigger_server_main`, `qmgr/qmgr.c:main`):
//! options, main.cf, logging, sanity checks, chdir to the queue directory,
//! privilege drop, then the single-threaded event loop.

use clap::Parser;
use rqmgr::config::{MainCf, Params};
use rqmgr::log::{self, LogSetup};
use rqmgr::master::{self, DaemonOptions, Watchdog};
use rqmgr::qmgr::Strategy;
use rqmgr::shell::Daemon;
use std::path::PathBuf;
use std::time::Duration;

/// The program name used in log tags: basename(argv[0]), except that
/// `rqmgr` logs as `qmgr`, so that installed under its own name it still
/// writes the `postfix/qmgr[pid]` lines pflogsumm and people's greps expect.
fn program_name() -> String {
    let argv0 = std::env::args().next().unwrap_or_else(|| "qmgr".into());
    let base = argv0.rsplit('/').next().unwrap_or("qmgr").to_string();
    if base == "rqmgr" {
        "qmgr".into()
    } else {
        base
    }
}

/// basename(argv[0]) as typed (`rqmgr`, `qmgr`...), for what is said on
/// the terminal.
fn argv0_name() -> String {
    let argv0 = std::env::args().next().unwrap_or_else(|| "rqmgr".into());
    argv0.rsplit('/').next().unwrap_or("rqmgr").to_string()
}

/// The start-up line: which program this really is, its version and its
/// scheduler. An `info:` line without a queue id, `from=` or `to=`, which
/// pflogsumm files under nothing (it takes `info` for a queue id and finds
/// no delivery in the rest) and Postfix's qmgr never writes.
fn startup_line(strategy: Strategy, config_dir: &std::path::Path) -> String {
    let scheduler = match strategy {
        Strategy::Nqmgr => "nqmgr",
        Strategy::Oqmgr => "oqmgr",
    };
    format!(
        "info: rqmgr {} started, scheduler {scheduler}, configuration {}",
        env!("CARGO_PKG_VERSION"),
        config_dir.display()
    )
}

fn main() {
    // SAFETY: setting signal dispositions before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // `rqmgr status`, `rqmgr explain ID`: the administrator's commands.
    // master(8) never starts a service with a word first.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if rqmgr::status::client::is_admin_command(&args) {
        std::process::exit(rqmgr::status::client::main(args));
    }
    let progname = program_name();
    let opts = match DaemonOptions::try_parse() {
        Ok(o) => o,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            let _ = log::init(&LogSetup::early(&progname, true));
            log::fatal(&format!(
                "invalid option: {}",
                e.to_string().lines().next().unwrap_or("")
            ));
        }
    };
    let _ = log::init(&LogSetup::early(&progname, opts.stderr));

    // main.cf, then -o overrides (mail_conf_suck, mail_conf_update).
    let config_dir =
        PathBuf::from(std::env::var("MAIL_CONFIG").unwrap_or_else(|_| "/etc/postfix".into()));
    let mut cf = MainCf::load(&config_dir).unwrap_or_else(|e| log::fatal(&e.to_string()));
    for o in &opts.overrides {
        cf.apply_override(o)
            .unwrap_or_else(|e| log::fatal(&e.to_string()));
    }
    let (params, adjustments) =
        Params::read(&mut cf).unwrap_or_else(|e| log::fatal(&e.to_string()));
    std::env::set_var("MAIL_LOGTAG", &params.syslog_name);
    let verbose = opts.verbose > 0 || std::env::var_os("MAIL_VERBOSE").is_some();
    let setup = LogSetup {
        tag: format!("{}/{}", params.syslog_name, progname),
        maillog_file: params.maillog_file.clone(),
        maillog_file_prefixes: params.maillog_file_prefixes.clone(),
        queue_directory: params.queue_directory.clone(),
        postlog_service_name: params.postlog_service_name.clone(),
        myhostname: params.myhostname.clone(),
        syslog_facility: params.syslog_facility.clone(),
        stderr: opts.stderr,
        verbose,
        internal_address_form: params.info_log_address_format_internal,
        utf8: params.smtputf8_enable,
        early: false,
    };
    if let Err(e) = log::init(&setup) {
        log::fatal(&e.to_string());
    }
    for w in cf.warnings.iter().chain(adjustments.iter()) {
        tracing::warn!("{w}");
    }
    // Run by hand (stdin a terminal, no -d): refuse, on the terminal too,
    // before any check that only master(8) could satisfy; as
    // trigger_server_main does it (msg_vstream_init + msg_fatal).
    // SAFETY: isatty only inspects descriptor 0.
    if !opts.no_detach && !opts.stand_alone && unsafe { libc::isatty(0) } == 1 {
        if !opts.stderr {
            eprintln!("{}: fatal: do not run this command by hand", argv0_name());
        }
        log::fatal("do not run this command by hand");
    }
    if let Some(arg) = opts.extra.first() {
        log::fatal(&format!("unexpected command-line argument: {arg}"));
    }
    if opts.stand_alone {
        log::fatal("stand-alone mode (-S) is not supported");
    }
    if !opts.solitary {
        let service = opts
            .service_name
            .clone()
            .unwrap_or_else(|| progname.clone());
        log::fatal(&format!("service {service} requires a process limit of 1"));
    }
    let kind = opts
        .service_type()
        .unwrap_or_else(|e| log::fatal(&e.to_string()));
    let strategy = match (opts.scheduler.as_deref(), progname.as_str()) {
        (Some("oqmgr"), _) | (None, "oqmgr") => Strategy::Oqmgr,
        (Some("nqmgr") | Some("qmgr"), _) | (None, _) => Strategy::Nqmgr,
        (Some(other), _) => log::fatal(&format!(
            "unknown --scheduler: {other} (use nqmgr or oqmgr)"
        )),
    };
    let generation = master::generation_from_env().unwrap_or_else(|e| log::fatal(&e.to_string()));
    if progname == "nqmgr" {
        tracing::warn!("please update the master.cf entry for the qmgr service: use \"qmgr\" instead of \"nqmgr\"");
    }

    if let Err(e) = std::env::set_current_dir(&params.queue_directory) {
        log::fatal(&format!(
            "chdir(\"{}\"): {}",
            params.queue_directory,
            log::errno_text(&e)
        ));
    }
    let user = opts.unprivileged.then_some(params.mail_owner.as_str());
    let root = opts.chroot.then_some(params.queue_directory.as_str());
    if let Err(e) = master::drop_privileges(user, root) {
        log::fatal(&e.to_string());
    }
    for fd in [
        master::FLOW_READ_FD,
        master::FLOW_WRITE_FD,
        master::STATUS_FD,
        master::LISTEN_FD,
    ] {
        master::close_on_exec(fd);
    }

    tracing::info!("{}", startup_line(strategy, &config_dir));

    // The exporter runs on its own thread; start it outside our runtime.
    let metrics = opts.metrics.as_deref().map(|addr| {
        let cfg = rqmgr::shell::metrics::MetricsConfig {
            listen: rqmgr::shell::metrics::parse_listen(addr)
                .unwrap_or_else(|e| log::fatal(&e.to_string())),
            destinations: opts.metrics_destinations,
        };
        rqmgr::shell::metrics::install(&cfg).unwrap_or_else(|e| log::fatal(&e.to_string()));
        tracing::info!("info: metrics on http://{}/metrics", cfg.listen);
        rqmgr::shell::metrics::Metrics::new(cfg.destinations)
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| log::fatal(&format!("runtime: {e}")));
    let local = tokio::task::LocalSet::new();
    // The loop runs as a task of the LocalSet, like the agent sessions:
    // a task that wakes another while the set runs queues it, where waking
    // the future block_on polls would write to the runtime's eventfd.
    let main_loop = local.spawn_local(async move {
        let mut daemon = Daemon::new(params.clone(), cf, strategy);
        if let Some(m) = metrics {
            daemon = daemon.with_metrics(m);
        }
        daemon.start();
        let (trig_tx, trig_rx) = tokio::sync::mpsc::unbounded_channel();
        if let Err(e) = master::spawn_listener(kind, generation, trig_tx) {
            log::fatal(&format!("listen descriptor: {}", log::errno_text(&e)));
        }
        let watchdog = Watchdog::start(Duration::from_secs(params.qmgr_daemon_timeout as u64));
        daemon.run(trig_rx, watchdog).await;
    });
    if let Err(e) = local.block_on(&runtime, main_loop) {
        // A panic in the loop ends the process as it did in block_on.
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
