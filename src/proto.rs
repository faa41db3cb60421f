//! Postfix's protocol constants in one place: delivery request flags,
//! resolver flags, bounce service requests, DSN notify bits, SMTPUTF8 bits,
//! qmgr trigger bytes and the service names qmgr uses itself. Each group
//! names the Postfix header it comes from.

/// Delivery request flags (`global/deliver_request.h`, `DEL_REQ_FLAG_*`),
/// also the queue file's `trace_flags` attribute.
pub mod deliver_flag {
    /// Notify the sender of successful delivery.
    pub const SUCCESS: u32 = 1;
    /// Notify the sender of failed delivery.
    pub const BOUNCE: u32 = 2;
    /// The default: both.
    pub const DEFLT: u32 = SUCCESS | BOUNCE;
    /// MTA-requested address verification probe.
    pub const MTA_VRFY: u32 = 256;
    /// User-requested address verification (`sendmail -bv`).
    pub const USR_VRFY: u32 = 512;
    /// Record every delivery (`sendmail -v`).
    pub const RECORD: u32 = 1024;
    /// Connection cache: use a cached session.
    pub const CONN_LOAD: u32 = 2048;
    /// Connection cache: save the session.
    pub const CONN_STORE: u32 = 4096;
    /// Record delayed deliveries that were sent (DSN delay notices).
    pub const REC_DLY_SENT: u32 = 8192;
    /// The bits that are trace flags (`DEL_REQ_TRACE_FLAGS_MASK`).
    pub const TRACE_MASK: u32 = MTA_VRFY | USR_VRFY | RECORD | REC_DLY_SENT;
    /// Trace without real delivery (`DEL_REQ_TRACE_ONLY_MASK`).
    pub const TRACE_ONLY_MASK: u32 = MTA_VRFY | USR_VRFY;
}

/// Resolver reply flags (`global/resolve_clnt.h`, `RESOLVE_*`).
pub mod resolve_flag {
    pub const FINAL: u32 = 1;
    pub const ROUTED: u32 = 2;
    /// Bad address syntax.
    pub const ERROR: u32 = 4;
    /// The lookup failed (try again later).
    pub const FAIL: u32 = 8;
    pub const CLASS_LOCAL: u32 = 256;
    pub const CLASS_ALIAS: u32 = 512;
    pub const CLASS_VIRTUAL: u32 = 1024;
    pub const CLASS_RELAY: u32 = 2048;
    pub const CLASS_DEFAULT: u32 = 4096;
}

/// bounce(8) requests and flags (`global/bounce.h`).
pub mod bounce {
    /// Append a recipient record to a log.
    pub const CMD_APPEND: u32 = 0;
    /// Send the non-delivery notice and delete the log.
    pub const CMD_FLUSH: u32 = 1;
    /// Send a delay warning.
    pub const CMD_WARN: u32 = 2;
    /// FLUSH with one notice per recipient to the VERP sender.
    pub const CMD_VERP: u32 = 3;
    /// Send the delivery status (trace) notice.
    pub const CMD_TRACE: u32 = 5;
    /// Keep the queue file (`BOUNCE_FLAG_NONE`).
    pub const FLAG_KEEP: u32 = 0;
    /// Delete recipients from the queue file after the notice.
    pub const FLAG_DELRCPT: u32 = 2;
}

/// DSN NOTIFY bits of a recipient (`global/dsn_mask.h`).
pub mod dsn_notify {
    pub const NEVER: u32 = 1;
    pub const SUCCESS: u32 = 2;
    pub const FAILURE: u32 = 4;
    pub const DELAY: u32 = 8;
}

/// SMTPUTF8 request bits (`global/smtputf8.h`).
pub mod smtputf8 {
    pub const REQUESTED: u32 = 1;
    pub const HEADER: u32 = 2;
    pub const SENDER: u32 = 4;
    pub const RECIPIENT: u32 = 8;
}

/// The bytes of a qmgr trigger (`global/mail_proto.h`, `qmgr/qmgr.h`).
pub mod trigger {
    /// master(8)'s wakeup (`TRIGGER_REQ_WAKEUP`): scan incoming.
    pub const WAKEUP: u8 = b'W';
    /// Scan the incoming queue (`QMGR_REQ_SCAN_INCOMING`).
    pub const SCAN_INCOMING: u8 = b'I';
    /// Scan the deferred queue (`QMGR_REQ_SCAN_DEFERRED`).
    pub const SCAN_DEFERRED: u8 = b'D';
    /// Revive dead transports and destinations (`QMGR_REQ_FLUSH_DEAD`).
    pub const FLUSH_DEAD: u8 = b'F';
    /// Ignore time stamps: scan everything (`QMGR_REQ_SCAN_ALL`).
    pub const SCAN_ALL: u8 = b'A';
}

/// Service names and classes qmgr uses (`global/mail_proto.h`).
pub mod service {
    /// The socket directory of private services (`MAIL_CLASS_PRIVATE`).
    pub const CLASS_PRIVATE: &str = "private";
    /// The socket directory of public services (`MAIL_CLASS_PUBLIC`).
    pub const CLASS_PUBLIC: &str = "public";
    /// The transport that defers recipients via error(8) (`MAIL_SERVICE_RETRY`).
    pub const RETRY: &str = "retry";
    /// The transport that bounces recipients via error(8) (`MAIL_SERVICE_ERROR`).
    pub const ERROR: &str = "error";
}

/// Queue file mode bits (`global/mail_queue.h`, `MAIL_QUEUE_STAT_*`).
pub mod queue_mode {
    /// Owner `rwx`: the file is complete.
    pub const READY: u32 = 0o700;
    /// Group read: revive this message's destinations (`postqueue -i`,
    /// `postsuper -r`).
    pub const UNTHROTTLE: u32 = 0o040;
    /// Group execute: force expiry (`postsuper -e`).
    pub const EXPIRE: u32 = 0o010;
}
