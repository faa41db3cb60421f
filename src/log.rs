//! Logging in Postfix's format, so that pflogsumm and people's greps keep
//! working: lines tagged `<syslog_name>/<program>[pid]`, severities as
//! `warning: ` / `error: ` / `fatal: ` prefixes, sent to syslog or to
//! postlogd(8) (`maillog_file`), optionally also to stderr (`-V`).
//!
//! rqmgr logs through `tracing`: `info!` is a plain line, `warn!` a
//! `warning:` line, `error!` an `error:` line; `debug!` lines appear only
//! with `-v` (Postfix's verbose logging). [`fatal`] logs and exits.
//!
//! Follows `global/maillog_client.c`, `util/msg_logger.c`,
//! `util/msg_syslog.c`, `global/mail_task.c` and, for addresses,
//! `global/info_log_addr_form.c` + `global/quote_822_local.c`.

use std::ffi::CString;
use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Longest text per line, as `MSG_LOGGER_RECLEN` / syslog's 2000-byte cut.
const MAX_TEXT: usize = 2000;

/// Where log lines go.
enum Sink {
    /// postlogd's datagram socket; lines are fully formatted by us.
    Postlog {
        sock: Option<UnixDatagram>,
        path: String,
        /// What follows the time stamp on every line: `host tag[pid]: `.
        head: String,
    },
    /// The system logger via libc's syslog(3).
    Syslog,
}

struct Logger {
    tag: String,
    sink: Sink,
    stderr: bool,
    /// The time stamp of the current second: (time, text).
    stamp: (libc::time_t, String),
    /// The line being built (reused).
    line: String,
}

static LOGGER: OnceLock<Mutex<Logger>> = OnceLock::new();

thread_local! {
    /// The text of the event being logged (reused: no allocation per line).
    static EVENT_TEXT: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}
static INTERNAL_ADDR_FORM: OnceLock<bool> = OnceLock::new();
static UTF8: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Postfix's `printable(text, '?')`, applied to every log line
/// (`util/msg_output.c`): ASCII control characters become `?`; so do
/// non-ASCII characters unless UTF-8 is enabled, and always the
/// replacement character (bytes that were not UTF-8) and C1 controls, so
/// that queue-file bytes can neither forge log lines nor reach a terminal.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let utf8 = UTF8.load(std::sync::atomic::Ordering::Relaxed);
    let bad = |c: char| {
        if c.is_ascii() {
            c.is_ascii_control()
        } else {
            !utf8 || c == char::REPLACEMENT_CHARACTER || ('\u{80}'..='\u{9f}').contains(&c)
        }
    };
    if !text.chars().any(bad) {
        return text.into();
    }
    text.chars()
        .map(|c| if bad(c) { '?' } else { c })
        .collect::<String>()
        .into()
}

/// Why logging could not be set up (Postfix's fatal text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("maillog_file value '{0}' does not match any prefix in maillog_file_prefixes")]
    Prefix(String),
}

/// How to log, from main.cf and the command line.
#[derive(Debug, Clone)]
pub struct LogSetup {
    /// `<syslog_name>/<program>`, e.g. `postfix/qmgr`.
    pub tag: String,
    /// `maillog_file` (empty = syslog unless `POSTLOG_SERVICE` is inherited).
    pub maillog_file: String,
    /// `maillog_file_prefixes`.
    pub maillog_file_prefixes: String,
    /// `queue_directory`.
    pub queue_directory: String,
    /// `postlog_service_name`.
    pub postlog_service_name: String,
    /// `myhostname`.
    pub myhostname: String,
    /// `syslog_facility`.
    pub syslog_facility: String,
    /// `-V`: also log to stderr.
    pub stderr: bool,
    /// `-v`: log debug lines too.
    pub verbose: bool,
    /// `info_log_address_format = internal`.
    pub internal_address_form: bool,
    /// `smtputf8_enable`: valid UTF-8 is logged as is; otherwise every
    /// non-ASCII byte is logged as `?` (Postfix's `printable()`).
    pub utf8: bool,
    /// Before main.cf is read: log where master(8) told us to
    /// (`POSTLOG_SERVICE`/`POSTLOG_HOSTNAME`), else to syslog.
    pub early: bool,
}

impl LogSetup {
    /// How to log before main.cf has been read (`maillog_client_init` at
    /// the top of `trigger_server_main`): as `$MAIL_LOGTAG/<program>`, to the
    /// postlogd socket master(8) passed in `POSTLOG_SERVICE` if any, else to
    /// syslog; so that even a fatal main.cf error reaches the mail log.
    pub fn early(program: &str, stderr: bool) -> LogSetup {
        let tag = std::env::var("MAIL_LOGTAG")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "postfix".into());
        LogSetup {
            tag: format!("{tag}/{program}"),
            maillog_file: String::new(),
            maillog_file_prefixes: String::new(),
            queue_directory: String::new(),
            postlog_service_name: String::new(),
            myhostname: String::new(),
            syslog_facility: "mail".into(),
            stderr,
            verbose: false,
            internal_address_form: false,
            utf8: true,
            early: true,
        }
    }
}

fn facility(name: &str) -> libc::c_int {
    match name.to_ascii_lowercase().as_str() {
        "auth" => libc::LOG_AUTH,
        "authpriv" => libc::LOG_AUTHPRIV,
        "cron" => libc::LOG_CRON,
        "daemon" => libc::LOG_DAEMON,
        "kern" => libc::LOG_KERN,
        "lpr" => libc::LOG_LPR,
        "news" => libc::LOG_NEWS,
        "security" => libc::LOG_AUTH,
        "syslog" => libc::LOG_SYSLOG,
        "user" => libc::LOG_USER,
        "uucp" => libc::LOG_UUCP,
        "local0" => libc::LOG_LOCAL0,
        "local1" => libc::LOG_LOCAL1,
        "local2" => libc::LOG_LOCAL2,
        "local3" => libc::LOG_LOCAL3,
        "local4" => libc::LOG_LOCAL4,
        "local5" => libc::LOG_LOCAL5,
        "local6" => libc::LOG_LOCAL6,
        "local7" => libc::LOG_LOCAL7,
        _ => libc::LOG_MAIL,
    }
}

/// Starts logging as `setup` says and installs the tracing subscriber.
/// Must run before chroot (it connects the postlog socket and reads the
/// time zone). May be called again to switch sinks (e.g. after main.cf has
/// been read); the subscriber itself is installed once.
///
/// Errors: [`LogError::Prefix`] for a `maillog_file` outside
/// `maillog_file_prefixes` (Postfix: fatal).
pub fn init(setup: &LogSetup) -> Result<(), LogError> {
    if !setup.early {
        let _ = INTERNAL_ADDR_FORM.set(setup.internal_address_form);
        UTF8.store(setup.utf8, std::sync::atomic::Ordering::Relaxed);
    }
    let import_path = std::env::var("POSTLOG_SERVICE")
        .ok()
        .filter(|s| !s.is_empty());
    let import_host = std::env::var("POSTLOG_HOSTNAME")
        .ok()
        .filter(|s| !s.is_empty());
    // Once main.cf has been read, Postfix chooses postlog mode exactly when
    // maillog_file is set (an inherited POSTLOG_SERVICE no longer counts).
    let sink = if setup.early && import_path.is_some() {
        let path = import_path.unwrap_or_default();
        let hostname = import_host.unwrap_or_else(|| "amnesiac".into());
        Sink::Postlog {
            sock: connect_postlog(&path),
            path,
            head: line_head(&hostname, &setup.tag),
        }
    } else if !setup.maillog_file.is_empty() {
        let prefixes: Vec<&str> = setup
            .maillog_file_prefixes
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        if !prefixes.iter().any(|p| setup.maillog_file.starts_with(p)) {
            return Err(LogError::Prefix(setup.maillog_file.clone()));
        }
        let hostname = if !setup.myhostname.is_empty() {
            setup.myhostname.clone()
        } else {
            import_host.unwrap_or_else(|| "amnesiac".into())
        };
        let path = format!(
            "{}/public/{}",
            setup.queue_directory, setup.postlog_service_name
        );
        std::env::set_var("POSTLOG_SERVICE", &path);
        std::env::set_var("POSTLOG_HOSTNAME", &hostname);
        let sock = connect_postlog(&path);
        Sink::Postlog {
            sock,
            path,
            head: line_head(&hostname, &setup.tag),
        }
    } else {
        std::env::remove_var("POSTLOG_SERVICE");
        std::env::remove_var("POSTLOG_HOSTNAME");
        let ident: &'static std::ffi::CStr = Box::leak(
            CString::new(setup.tag.clone())
                .unwrap_or_else(|_| c"postfix/qmgr".to_owned())
                .into_boxed_c_str(),
        );
        // SAFETY: ident is a leaked, NUL-terminated string that lives for the
        // rest of the process, as openlog(3) requires.
        unsafe {
            libc::openlog(
                ident.as_ptr(),
                libc::LOG_PID | libc::LOG_NDELAY,
                facility(&setup.syslog_facility),
            )
        };
        Sink::Syslog
    };
    // SAFETY: tzset has no preconditions; it reads TZ and /etc/localtime
    // before any chroot so that localtime_r keeps working afterwards.
    unsafe { tzset() };
    if VERBOSE.swap(setup.verbose, std::sync::atomic::Ordering::Relaxed) != setup.verbose {
        tracing::callsite::rebuild_interest_cache();
    }
    let logger = Logger {
        tag: setup.tag.clone(),
        sink,
        stderr: setup.stderr,
        stamp: (-1, String::new()),
        line: String::with_capacity(512),
    };
    match LOGGER.get() {
        Some(m) => *m.lock().unwrap_or_else(|e| e.into_inner()) = logger,
        None => {
            let _ = LOGGER.set(Mutex::new(logger));
            use tracing_subscriber::prelude::*;
            let _ = tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(PostfixLayer),
            );
        }
    }
    Ok(())
}

/// `host tag[pid]: `, the part of a postlog line after its time stamp
/// (`msg_logger.c`: the host name up to its first dot; the pid is taken
/// once, as the daemon never forks).
fn line_head(hostname: &str, tag: &str) -> String {
    let host = hostname.split('.').next().unwrap_or("");
    format!("{host} {tag}[{}]: ", std::process::id())
}

/// Appends `n` in decimal to `out` (what `{}` prints, without the
/// formatting machinery).
pub fn push_decimal(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_unsigned(out, n.unsigned_abs());
}

/// Appends `n` in decimal to `out`.
pub fn push_unsigned(out: &mut String, n: u64) {
    out.push_str(crate::decimal(n, &mut [0; 20]));
}

/// Logs `text` as a plain line (Postfix's `msg_info`), like
/// `tracing::info!("{text}")` but without formatting the text again.
pub fn info(text: &str) {
    emit(Severity::Info, text);
}

/// Logs `text` as a `warning: ` line (`msg_warn`), like
/// `tracing::warn!("{text}")` but without formatting the text again.
pub fn warning(text: &str) {
    emit(Severity::Warning, text);
}

extern "C" {
    fn tzset();
}

fn connect_postlog(path: &str) -> Option<UnixDatagram> {
    let sock = UnixDatagram::unbound().ok()?;
    sock.connect(path).ok()?;
    // Blocking, as msg_logger.c connects: a full socket queue must slow us
    // down, not silently drop log lines.
    Some(sock)
}

/// Logs `fatal: <text>` and exits with status 1, as Postfix's `msg_fatal`.
pub fn fatal(text: &str) -> ! {
    emit(Severity::Fatal, text);
    std::process::exit(1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Severity {
    Info,
    Warning,
    Error,
    Fatal,
}

impl Severity {
    fn prefix(self) -> &'static str {
        match self {
            Severity::Info => "",
            Severity::Warning => "warning: ",
            Severity::Error => "error: ",
            Severity::Fatal => "fatal: ",
        }
    }
    fn syslog_priority(self) -> libc::c_int {
        match self {
            Severity::Info => libc::LOG_INFO,
            Severity::Warning => libc::LOG_WARNING,
            Severity::Error => libc::LOG_ERR,
            Severity::Fatal => libc::LOG_CRIT,
        }
    }
}

fn truncate(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `Mmm dd hh:mm:ss ` for the current second, formatted once per second.
fn local_timestamp(cache: &mut (libc::time_t, String)) -> &str {
    let mut now: libc::time_t = 0;
    // SAFETY: time writes only into the local passed.
    unsafe { libc::time(&mut now) };
    if cache.0 != now {
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let mut buf = [0u8; 64];
        // SAFETY: localtime_r/strftime write only into the locals passed,
        // and the format string is NUL-terminated.
        let len = unsafe {
            libc::localtime_r(&now, &mut tm);
            libc::strftime(
                buf.as_mut_ptr().cast(),
                buf.len(),
                c"%b %d %H:%M:%S ".as_ptr(),
                &tm,
            )
        };
        cache.0 = now;
        cache.1 = String::from_utf8_lossy(&buf[..len]).into_owned();
    }
    &cache.1
}

fn emit(sev: Severity, text: &str) {
    let text = printable(text);
    let text = truncate(&text);
    let Some(lock) = LOGGER.get() else {
        // Before logging is set up, or in a test or fuzz harness: what is
        // not a plain line goes to stderr.
        if !matches!(sev, Severity::Info) {
            eprintln!("postfix/qmgr: {}{}", sev.prefix(), text);
        }
        return;
    };
    let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    let logger = &mut *guard;
    if logger.stderr {
        eprintln!("{}: {}{}", logger.tag, sev.prefix(), text);
    }
    match &mut logger.sink {
        Sink::Syslog => {
            let line = format!("{}{}", sev.prefix(), text);
            if let Ok(c) = CString::new(line.replace('\0', "?")) {
                // SAFETY: "%s" with one valid C string argument.
                unsafe { libc::syslog(sev.syslog_priority(), c"%s".as_ptr(), c.as_ptr()) };
            }
        }
        Sink::Postlog { sock, path, head } => {
            let line = &mut logger.line;
            line.clear();
            line.push_str(local_timestamp(&mut logger.stamp));
            line.push_str(head);
            line.push_str(sev.prefix());
            line.push_str(text);
            if sock.is_none() {
                *sock = connect_postlog(path);
            }
            if let Some(s) = sock {
                if s.send(line.as_bytes()).is_err() {
                    // postlogd may have restarted: reconnect once.
                    *sock = connect_postlog(path);
                    if let Some(s) = sock {
                        let _ = s.send(line.as_bytes());
                    }
                }
            }
        }
    }
}

/// Turns tracing events into Postfix log lines.
struct PostfixLayer;

/// `-v` is on: debug lines are logged (as `info`, like Postfix's
/// `msg_verbose` lines). Set by [`init`].
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when the process runs with `-v` (Postfix's `msg_verbose`): code
/// that builds a costly debug line asks first.
pub fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Collects an event's text into a buffer.
struct MessageVisitor<'a>(&'a mut String);

impl Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={}", field.name(), value);
        }
    }
}

impl<S: Subscriber> Layer<S> for PostfixLayer {
    // Debug lines are asked for at every call (`-v` can change at a
    // re-init); the others always go through.
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if *metadata.level() <= Level::INFO {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::sometimes()
        }
    }
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        *metadata.level() <= Level::INFO || verbose()
    }
    // Without -v, a debug line's macro stops at a static level test and
    // never reaches the subscriber; [`init`] rebuilds the test when -v
    // changes.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(if verbose() {
            tracing::level_filters::LevelFilter::TRACE
        } else {
            tracing::level_filters::LevelFilter::INFO
        })
    }
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let sev = if level == Level::ERROR {
            Severity::Error
        } else if level == Level::WARN {
            Severity::Warning
        } else if level == Level::INFO || verbose() {
            Severity::Info
        } else {
            return;
        };
        EVENT_TEXT.with(|buf| match buf.try_borrow_mut() {
            Ok(mut text) => {
                text.clear();
                event.record(&mut MessageVisitor(&mut text));
                emit(sev, &text);
            }
            // An event logged while one is being formatted.
            Err(_) => {
                let mut text = String::new();
                event.record(&mut MessageVisitor(&mut text));
                emit(sev, &text);
            }
        });
    }
}

/// The text of an I/O error as C's `%m` prints it ("No such file or
/// directory"), without Rust's "(os error N)" suffix.
pub fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// Formats an address for `from=<...>` / `to=<...>` fields per
/// `info_log_address_format`: `external` (the default) quotes a local part
/// that is not a valid dot-atom, as `quote_822_local` does; `internal` logs
/// it as is.
/// Borrows `address` when it is UTF-8 and needs no quoting (the usual
/// case), else returns the converted text.
pub fn addr(address: &[u8]) -> std::borrow::Cow<'_, str> {
    let text = String::from_utf8_lossy(address);
    if INTERNAL_ADDR_FORM.get().copied().unwrap_or(false) || address.is_empty() {
        return text;
    }
    match quoted_822_local(&text) {
        Some(quoted) => quoted.into(),
        None => text,
    }
}

fn needs_quoting(local: &str) -> bool {
    if local.is_empty() {
        return false;
    }
    let b = local.as_bytes();
    if b[0] == b'.' || b[b.len() - 1] == b'.' || local.contains("..") {
        return true;
    }
    b.iter().any(|&c| SPECIAL[c as usize])
}

/// The bytes that make a local part need quotes: controls, space, DEL
/// and RFC 822's specials.
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[0x7f] = true;
    let specials = b" ()<>@,;:\\\"[]";
    let mut i = 0;
    while i < specials.len() {
        t[specials[i] as usize] = true;
        i += 1;
    }
    t
};

/// Quotes the local part of `address` (before the last `@`) when needed;
/// borrows `address` when it needs no quotes.
pub fn quote_822_local(address: &str) -> std::borrow::Cow<'_, str> {
    match quoted_822_local(address) {
        Some(quoted) => quoted.into(),
        None => address.into(),
    }
}

/// `address` with its local part quoted, or `None` if it needs no quotes.
fn quoted_822_local(address: &str) -> Option<String> {
    let (local, domain) = match address.rfind('@') {
        Some(at) => (&address[..at], Some(&address[at..])),
        None => (address, None),
    };
    if !needs_quoting(local) {
        return None;
    }
    let mut out = String::with_capacity(address.len() + 4);
    out.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' || c == '\r' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    if let Some(d) = domain {
        out.push_str(d);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(
            printable("from=<a\nFAKE qmgr: x\u{1b}[31m\u{84}\0z>"),
            "from=<a?FAKE qmgr: x?[31m??z>"
        );
        assert_eq!(printable("caf\u{fffd}x j\u{f6}rg"), "caf?x j\u{f6}rg");
        assert_eq!(printable("plain"), "plain");
    }

    #[test]
    fn decimals_print_as_display_does() {
        for n in [0, 7, 10, 587, -1, i64::MAX, i64::MIN] {
            let mut s = String::from("x=");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x={n}"));
        }
        let mut s = String::new();
        push_unsigned(&mut s, u64::MAX);
        assert_eq!(s, u64::MAX.to_string());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_822_local("user@example.com"), "user@example.com");
        assert_eq!(
            quote_822_local("john doe@example.com"),
            "\"john doe\"@example.com"
        );
        assert_eq!(quote_822_local("a\"b@x"), "\"a\\\"b\"@x");
        assert_eq!(quote_822_local(".dot@x"), "\".dot\"@x");
        assert_eq!(quote_822_local("postmaster"), "postmaster");
        assert_eq!(addr(b""), "");
    }

    #[test]
    fn errno_texts() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(errno_text(&e), "No such file or directory");
    }
}
