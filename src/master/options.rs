//! The generic daemon options master(8) passes to every service
//! (`master/trigger_server.c:trigger_server_main`, getopt string
//! `cdDi:lm:n:o:s:St:uvVz`), parsed with clap.

use super::MasterError;
use clap::Parser;

/// The listener type master(8) gives us (`-t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// A listening unix stream socket on fd 6 (`public/qmgr`).
    Unix,
    /// A FIFO opened read-write on fd 6.
    Fifo,
    /// A unix stream socket that receives descriptors.
    Pass,
}

/// Command-line options, as master(8) passes them (see rqmgr(8)).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rqmgr",
    version,
    about = "Postfix queue manager replacement, started by master(8)",
    after_help = "Commands for the administrator (see rqmgr(8), STATUS):\n  \
                  rqmgr status [-c config_directory] [--json]\n  \
                  rqmgr explain [-c config_directory] [--json] QUEUE_ID",
    disable_version_flag = true
)]
pub struct DaemonOptions {
    /// Chroot to the queue directory.
    #[arg(short = 'c')]
    pub chroot: bool,
    /// Do not detach: allow stdin to be a terminal (debugging).
    #[arg(short = 'd')]
    pub no_detach: bool,
    /// Run debugger_command (accepted, ignored).
    #[arg(short = 'D')]
    pub debugger: bool,
    /// max_idle (ignored: qmgr is persistent).
    #[arg(short = 'i', value_name = "SECONDS")]
    pub max_idle: Option<String>,
    /// Process limit is 1 (required for a queue manager).
    #[arg(short = 'l')]
    pub solitary: bool,
    /// max_use (ignored: qmgr is persistent).
    #[arg(short = 'm', value_name = "COUNT")]
    pub max_use: Option<String>,
    /// Service name (master.cf column 1).
    #[arg(short = 'n', value_name = "NAME")]
    pub service_name: Option<String>,
    /// Override a main.cf parameter.
    #[arg(short = 'o', value_name = "NAME=VALUE")]
    pub overrides: Vec<String>,
    /// Number of listen descriptors.
    #[arg(short = 's', value_name = "COUNT")]
    pub socket_count: Option<String>,
    /// Stand-alone mode (not supported by rqmgr).
    #[arg(short = 'S')]
    pub stand_alone: bool,
    /// Transport type of the listener: unix, fifo or pass.
    #[arg(short = 't', value_name = "TYPE")]
    pub transport_type: Option<String>,
    /// Drop privileges to mail_owner.
    #[arg(short = 'u')]
    pub unprivileged: bool,
    /// More verbose logging (repeatable).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Also log to stderr.
    #[arg(short = 'V')]
    pub stderr: bool,
    /// Process limit is 0.
    #[arg(short = 'z')]
    pub unlimited: bool,
    /// Scheduling strategy: `nqmgr` (Postfix's qmgr, the default) or `oqmgr`
    /// (Postfix's old queue manager). Also chosen by running as `oqmgr`.
    #[arg(long = "scheduler", value_name = "nqmgr|oqmgr")]
    pub scheduler: Option<String>,
    /// Serve Prometheus metrics over HTTP on this address: a port (on
    /// 127.0.0.1), `ADDRESS:PORT` or `[IPV6]:PORT`. Off when absent.
    #[arg(long = "metrics", value_name = "ADDRESS")]
    pub metrics: Option<String>,
    /// Per-destination metric series for at most this many destinations,
    /// the busiest first (0, the default: none).
    #[arg(
        long = "metrics-destinations",
        value_name = "COUNT",
        default_value_t = 0
    )]
    pub metrics_destinations: usize,
    /// Print the version (`rqmgr 0.1.0`) and exit. Long form only: `-V`
    /// is master(8)'s "also log to stderr".
    #[arg(long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,
    /// Unexpected arguments (fatal, as in qmgr).
    #[arg(hide = true)]
    pub extra: Vec<String>,
}

impl DaemonOptions {
    /// The listener type.
    ///
    /// Errors: [`MasterError::UnsupportedType`] or [`MasterError::NoType`].
    pub fn service_type(&self) -> Result<ServiceType, MasterError> {
        match self.transport_type.as_deref() {
            Some("unix") => Ok(ServiceType::Unix),
            Some("fifo") => Ok(ServiceType::Fifo),
            Some("pass") => Ok(ServiceType::Pass),
            Some(other) => Err(MasterError::UnsupportedType(other.to_string())),
            None => Err(MasterError::NoType),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_command_lines() {
        let o = DaemonOptions::try_parse_from(["qmgr", "-l", "-t", "unix", "-u"]).unwrap();
        assert!(o.solitary && o.unprivileged && !o.chroot);
        assert_eq!(o.service_type(), Ok(ServiceType::Unix));
        let o = DaemonOptions::try_parse_from([
            "rqmgr", "-l", "-n", "qmgr", "-t", "fifo", "-u", "-c", "-o", "a=b", "-o", "c = d",
            "-vv",
        ])
        .unwrap();
        assert_eq!(o.service_name.as_deref(), Some("qmgr"));
        assert_eq!(o.overrides, vec!["a=b", "c = d"]);
        assert_eq!(o.verbose, 2);
        assert_eq!(o.service_type(), Ok(ServiceType::Fifo));
        assert!(DaemonOptions::try_parse_from(["qmgr", "-Q"]).is_err());
        let o =
            DaemonOptions::try_parse_from(["rqmgr", "-l", "-t", "unix", "--scheduler", "oqmgr"])
                .unwrap();
        assert_eq!(o.scheduler.as_deref(), Some("oqmgr"));
        let e = DaemonOptions::try_parse_from(["rqmgr", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(
            e.to_string(),
            format!("rqmgr {}\n", env!("CARGO_PKG_VERSION"))
        );
        let o = DaemonOptions::try_parse_from(["qmgr", "-t", "inet"]).unwrap();
        assert!(o.service_type().is_err());
    }
}
