//! The queue directory, the one place where rqmgr touches queue files:
//! queue names and ids, hashed paths, the "open ok" readiness test, moves
//! between queues, time stamps, the bounce and defer logs qmgr looks at,
//! the queue file qmgr holds open ([`QueueFile`]), startup recovery
//! ([`ActiveRecovery`]) and the directory scanners ([`Scanner`]).
//!
//! Every operation follows qmgr's one rule ([`must`]): a file that vanished
//! meanwhile (another process moved or removed it) is not an error; any
//! other failure is fatal, so that no mail is lost by carrying on.
//!
//! Follows `global/mail_queue.c` (names, ids, paths, rename with missing
//! directories), `util/dir_forest.c`, `global/mail_open_ok.c`,
//! `global/mail_scan_dir.c` + `util/scan_dir.c`, `qmgr/qmgr_scan.c`,
//! `qmgr/qmgr_active.c` (the file operations of feeding and completion)
//! and `qmgr/qmgr_move.c`. All paths are relative to the queue directory,
//! which is the process's working directory (as in Postfix, so that the
//! same code works chrooted or not).

mod deferred;
mod queue_file;
mod recover;
mod scan;

pub use deferred::{DeferredScanner, Next};
pub use queue_file::{Lock, QueueFile};
pub use recover::ActiveRecovery;
pub use scan::{DirWalk, ScanRequests, Scanner};

use crate::proto::queue_mode;
use crate::qmgr::BounceLog;
use smallvec::SmallVec;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where [`Spool::defer`] put a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// In the queue asked for.
    AsAsked,
    /// In the incoming queue: the file system was full.
    Incoming,
    /// Nowhere: the file had vanished.
    Vanished,
}

/// Queue names (`global/mail_queue.h`).
pub const INCOMING: &str = "incoming";
pub const ACTIVE: &str = "active";
pub const DEFERRED: &str = "deferred";
pub const CORRUPT: &str = "corrupt";
pub const BOUNCE: &str = "bounce";
pub const DEFER: &str = "defer";
pub const TRACE: &str = "trace";

/// What qmgr does when a queue file operation finds the file gone (ENOENT):
/// another process moved or removed it, which is never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfVanished {
    /// Log `warning: <what>: <error>` and carry on.
    Warn,
    /// Carry on silently.
    Ignore,
}

/// qmgr's rule for every queue file operation: `Some(value)` on success;
/// `None` if the file vanished (warned about or not, per `if_vanished`);
/// any other failure is fatal (`fatal: <what>: <error>`), as in Postfix,
/// where carrying on could lose or duplicate mail.
pub fn must<T>(
    result: io::Result<T>,
    if_vanished: IfVanished,
    what: impl FnOnce() -> String,
) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if if_vanished == IfVanished::Warn {
                tracing::warn!("{}: {}", what(), crate::log::errno_text(&e));
            }
            None
        }
        Err(e) => crate::log::fatal(&format!("{}: {}", what(), crate::log::errno_text(&e))),
    }
}

/// 1..100 alphanumeric characters (`mail_queue_name_ok`).
pub fn queue_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.bytes().all(|c| c.is_ascii_alphanumeric())
}

/// 1..255 characters from `[A-Za-z0-9_]` (`mail_queue_id_ok`).
pub fn queue_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The alphabet of long queue ids (`global/safe_ultostr.c`).
const SAFE_CHARS: &[u8] = b"0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz";

fn safe_decode(s: &str, base: u64) -> Option<u64> {
    let mut sum: u64 = 0;
    for c in s.bytes() {
        let v = SAFE_CHARS.iter().position(|&x| x == c)? as u64;
        if v >= base {
            return None;
        }
        sum = sum.checked_mul(base)?.checked_add(v)?;
    }
    (!s.is_empty()).then_some(sum)
}

/// The key a queue id is hashed by: the id itself for short ids; for long
/// ids (a `z` separator at position >= 10) the microseconds re-encoded as
/// five upper-case hex digits, so both kinds share one directory family
/// (`MQID_LG_GET_HEX_USEC`).
fn hash_key(id: &str) -> std::borrow::Cow<'_, str> {
    if let Some(z) = id.rfind('z') {
        if z >= 10 {
            // `get`: an id that failed queue_id_ok may have non-ASCII there.
            let usec = id
                .get(z - 4..z)
                .and_then(|s| safe_decode(s, 52))
                .unwrap_or(0);
            return format!("{:05X}", usec as u32).into();
        }
    }
    id.into()
}

/// Bytes of a [`QueuePath`] kept in place: a queue name, the hash
/// directories and a long queue id fit.
const QUEUE_PATH_INLINE: usize = 64;

/// A queue file's path relative to the queue directory
/// ([`Spool::path`]), a [`Path`] without an allocation for the usual
/// lengths: queue file operations build several for each message.
#[derive(Clone, PartialEq, Eq)]
pub struct QueuePath(SmallVec<[u8; QUEUE_PATH_INLINE]>);

impl std::ops::Deref for QueuePath {
    type Target = Path;
    fn deref(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }
}

impl AsRef<Path> for QueuePath {
    fn as_ref(&self) -> &Path {
        self
    }
}

impl std::fmt::Debug for QueuePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// The queue directory layout: which queues are hashed and how deep.
#[derive(Debug, Clone)]
pub struct Spool {
    hashed: Vec<String>,
    depth: usize,
}

impl Spool {
    /// `hash_queue_names` and `hash_queue_depth` from main.cf.
    pub fn new(hash_queue_names: &[String], hash_queue_depth: usize) -> Spool {
        Spool {
            hashed: hash_queue_names.to_vec(),
            depth: hash_queue_depth.max(1),
        }
    }

    /// The directory of `id` in `queue`, with a trailing slash (`mail_queue_dir`).
    pub fn dir(&self, queue: &str, id: &str) -> String {
        let mut dir = SmallVec::new();
        self.push_dir(&mut dir, queue, id);
        String::from_utf8_lossy(&dir).into_owned()
    }

    fn push_dir(&self, out: &mut SmallVec<[u8; QUEUE_PATH_INLINE]>, queue: &str, id: &str) {
        out.extend_from_slice(queue.as_bytes());
        out.push(b'/');
        if self.hashed.iter().any(|q| q.eq_ignore_ascii_case(queue)) {
            let key = hash_key(id);
            let mut chars = key.chars();
            let mut utf8 = [0u8; 4];
            for _ in 0..self.depth {
                let c = chars.next().unwrap_or('_');
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                out.push(b'/');
            }
        }
    }

    /// The path of `id` in `queue`, relative to the queue directory
    /// (`mail_queue_path`); no allocation for the usual lengths.
    pub fn path(&self, queue: &str, id: &str) -> QueuePath {
        let mut p = SmallVec::new();
        self.push_dir(&mut p, queue, id);
        p.extend_from_slice(id.as_bytes());
        QueuePath(p)
    }

    /// The readiness test of `global/mail_open_ok.c`: a valid id, a regular
    /// file, and owner permissions exactly `rwx`. Returns the file's metadata
    /// when the file may be opened. Warnings (not a regular file, odd lstat
    /// errors) are logged here.
    pub fn open_ok(&self, queue: &str, id: &str) -> Option<fs::Metadata> {
        if !queue_id_ok(id) {
            return None;
        }
        let path = self.path(queue, id);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("{}: {}", path.display(), crate::log::errno_text(&e));
                }
                return None;
            }
        };
        if !meta.file_type().is_file() {
            tracing::warn!("{}: uid {}: not a regular file", path.display(), meta.uid());
            return None;
        }
        if meta.permissions().mode() & 0o700 != queue_mode::READY {
            return None;
        }
        if meta.nlink() > 1 && meta.ctime() < crate::now_secs() - 60 {
            tracing::warn!(
                "{}: uid {}: file has {} links",
                path.display(),
                meta.uid(),
                meta.nlink()
            );
        }
        Some(meta)
    }

    /// Moves `id` from queue `from` to queue `to`, creating missing hash
    /// directories (mode 0700) and retrying once (`mail_queue_rename`).
    ///
    /// Errors: the rename's error; `NotFound` means the file went away.
    pub fn rename(&self, id: &str, from: &str, to: &str) -> io::Result<()> {
        let old = self.path(from, id);
        let new = self.path(to, id);
        match fs::rename(&old, &new) {
            Ok(()) => Ok(()),
            Err(_) => {
                // As mail_queue_rename: the error of the directory creation
                // if that fails (ENOSPC, EDQUOT...), else of the second try.
                let parent = new.parent().map(PathBuf::from).unwrap_or_default();
                make_dirs(&parent)?;
                fs::rename(&old, &new)
            }
        }
    }

    /// Removes `id` from `queue` (`mail_queue_remove`).
    ///
    /// Errors: the unlink's error.
    pub fn remove(&self, queue: &str, id: &str) -> io::Result<()> {
        fs::remove_file(self.path(queue, id))
    }

    /// Moves `id` from `from` to `to` with qmgr's rule ([`must`]); `what`
    /// gives the text of the warning or fatal line. Returns false if the
    /// file vanished.
    pub fn move_file(
        &self,
        id: &str,
        from: &str,
        to: &str,
        if_vanished: IfVanished,
        what: impl FnOnce() -> String,
    ) -> bool {
        must(self.rename(id, from, to), if_vanished, what).is_some()
    }

    /// Time-stamps `from/<id>` `delay` seconds after `now` (seconds since the
    /// epoch) and moves it to `to`, where a scan will find it due then
    /// (`qmgr_active_defer`). Returns where the file went.
    ///
    /// A full file system (ENOSPC, EDQUOT: e.g. no inode left for the
    /// hashed subdirectory `deferred/X` that the file must go to) is not
    /// fatal, unlike in Postfix's qmgr, whose restart loop only ends when
    /// there is room again: rqmgr logs a warning and moves the file to the
    /// incoming queue instead (a rename into an existing directory needs no
    /// new inode), dated as it would have been in `to`, so that the
    /// incoming scan tries it again when it is due, or at the next
    /// `postqueue -f`. man/rqmgr.8, DIFFERENCES.
    pub fn defer(&self, id: &str, from: &str, to: &str, now: i64, delay: i64) -> Landed {
        const WHAT: &str = "qmgr_active_defer";
        tracing::debug!("wakeup {id} after {delay} secs");
        let path = self.path(from, id);
        must(
            set_times(&path, now.saturating_add(delay)),
            IfVanished::Ignore,
            || format!("{WHAT}: update {} time stamps", path.display()),
        );
        match self.rename(id, from, to) {
            Ok(()) => {
                tracing::debug!("{WHAT}: defer {id}");
                Landed::AsAsked
            }
            Err(e) if is_disk_full(&e) && to != INCOMING && from != INCOMING => {
                tracing::warn!(
                    "{WHAT}: rename {id} from {from} to {to}: {}; moved to {INCOMING} \
                     instead, due in {delay} seconds",
                    crate::log::errno_text(&e)
                );
                if self.move_file(id, from, INCOMING, IfVanished::Warn, || {
                    format!("{WHAT}: rename {id} from {from} to {INCOMING}")
                }) {
                    Landed::Incoming
                } else {
                    Landed::Vanished
                }
            }
            Err(e) => {
                must(Err::<(), _>(e), IfVanished::Warn, || {
                    format!("{WHAT}: rename {id} from {from} to {to}")
                });
                Landed::Vanished
            }
        }
    }

    /// Saves a damaged file from the active queue in the corrupt queue
    /// (`qmgr_active_corrupt`), with Postfix's warning.
    pub fn save_corrupt(&self, id: &str) {
        if must(self.rename(id, ACTIVE, CORRUPT), IfVanished::Ignore, || {
            format!("qmgr_active_corrupt: save corrupt file queue {ACTIVE} id {id}")
        })
        .is_some()
        {
            tracing::warn!(
                "saving corrupt file \"{id}\" from queue \"{ACTIVE}\" to queue \"{CORRUPT}\""
            );
        }
    }

    /// Removes a finished message from the active queue and logs
    /// `<id>: removed` (`qmgr_active_done_3_generic`).
    pub fn remove_done(&self, id: &str) {
        if must(self.remove(ACTIVE, id), IfVanished::Warn, || {
            format!("qmgr_active_done_3_generic: remove {id} from {ACTIVE}")
        })
        .is_some()
        {
            crate::log::info(&[id, ": removed"].concat());
        }
    }

    /// The state of the bounce log of `id` (`qmgr_active_done`).
    pub fn bounce_log(&self, id: &str) -> BounceLog {
        match fs::metadata(self.path(BOUNCE, id)) {
            Err(_) => BounceLog::Missing,
            Ok(md) if md.len() == 0 => BounceLog::Empty,
            Ok(_) => BounceLog::NonEmpty,
        }
    }

    /// Removes an empty bounce log; a failure is fatal (`qmgr_active_done`).
    pub fn remove_bounce_log(&self, id: &str) {
        if let Err(e) = self.remove(BOUNCE, id) {
            crate::log::fatal(&format!(
                "remove {BOUNCE} {id}: {}",
                crate::log::errno_text(&e)
            ));
        }
    }

    /// True if the defer log of `id` has records (`qmgr_message_alloc`).
    pub fn defer_log_nonempty(&self, id: &str) -> bool {
        fs::metadata(self.path(DEFER, id)).is_ok_and(|md| md.len() > 0)
    }

    /// Removes the defer log of a previous attempt before new recipients
    /// are resolved (`qmgr_message_alloc`).
    pub fn reset_defer_log(&self, id: &str) {
        must(self.remove(DEFER, id), IfVanished::Ignore, || {
            format!("qmgr_message_alloc: {id}: remove {DEFER} {id}")
        });
    }
}

/// ENOSPC or EDQUOT: the file system has no room (blocks or inodes) left.
pub fn is_disk_full(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error()
        .is_some_and(|n| n == Errno::ENOSPC as i32 || n == Errno::EDQUOT as i32)
}

/// Sets atime and mtime of `path` to `secs`.
///
/// Errors: the utimensat error.
pub fn set_times(path: &std::path::Path, secs: i64) -> io::Result<()> {
    let ts = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .map_err(io::Error::from)
}

fn make_dirs(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert!(queue_name_ok("deferred"));
        assert!(!queue_name_ok("de/ferred"));
        assert!(queue_id_ok("D0D39992097"));
        assert!(queue_id_ok("4Xy2Bc5zLbzJxQnT_x"));
        assert!(!queue_id_ok(""));
        assert!(!queue_id_ok("../etc"));
        assert!(!queue_id_ok(&"A".repeat(256)));
    }

    #[test]
    fn hashed_paths() {
        let s = Spool::new(&["deferred".into(), "defer".into()], 1);
        assert_eq!(
            &*s.path("deferred", "D9561992042"),
            Path::new("deferred/D/D9561992042")
        );
        assert_eq!(
            &*s.path("DEFER", "D0D39992097"),
            Path::new("DEFER/D/D0D39992097")
        );
        assert_eq!(
            &*s.path("active", "D0D39992097"),
            Path::new("active/D0D39992097")
        );
        let s2 = Spool::new(&["deferred".into()], 2);
        assert_eq!(
            &*s2.path("deferred", "D0D39992097"),
            Path::new("deferred/D/0/D0D39992097")
        );
        assert_eq!(&*s2.path("deferred", "A"), Path::new("deferred/A/_/A"));
    }

    #[test]
    fn long_ids_hash_by_microseconds() {
        // 4 base-52 chars before the 'z' encode the microseconds: "0001" = 1 -> "00001".
        let s = Spool::new(&["deferred".into()], 1);
        assert_eq!(
            &*s.path("deferred", "4Xy2Bc0001zLbJ"),
            Path::new("deferred/0/4Xy2Bc0001zLbJ")
        );
        // 847387 us = 0xCEE1B -> directory "C".
        let usec = 847387u64;
        let mut enc = String::new();
        let mut v = usec;
        for _ in 0..4 {
            enc.insert(0, SAFE_CHARS[(v % 52) as usize] as char);
            v /= 52;
        }
        let id = format!("4Xy2Bc{enc}zLbJ");
        assert_eq!(s.dir("deferred", &id), "deferred/C/");
    }
}
