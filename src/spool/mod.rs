//! The queue directory: queue names and ids, hashed paths, the "open ok"
//! readiness test, moves between queues, time stamps, and the directory
//! scanners that feed the active queue.
//!
//! Follows `global/mail_queue.c` (names, ids, paths, rename with missing
//! directories), `util/dir_forest.c`, `global/mail_open_ok.c`,
//! `global/mail_scan_dir.c` + `util/scan_dir.c`, `qmgr/qmgr_scan.c` and
//! `qmgr/qmgr_move.c`. All paths are relative to the queue directory, which
//! is the process's working directory (as in Postfix, so that the same code
//! works chrooted or not).

mod scan;

pub use scan::{ScanFlags, Scanner};

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// Queue names (`global/mail_queue.h`).
pub const INCOMING: &str = "incoming";
pub const ACTIVE: &str = "active";
pub const DEFERRED: &str = "deferred";
pub const CORRUPT: &str = "corrupt";
pub const BOUNCE: &str = "bounce";
pub const DEFER: &str = "defer";
pub const TRACE: &str = "trace";

/// Owner `rwx`: the file is complete (`MAIL_QUEUE_STAT_READY`).
pub const STAT_READY: u32 = 0o700;
/// Group read: unthrottle this message's destinations (`postqueue -i`).
pub const STAT_UNTHROTTLE: u32 = 0o040;
/// Group execute: force expiry (`postsuper -e`).
pub const STAT_EXPIRE: u32 = 0o010;

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
        let mut dir = String::with_capacity(queue.len() + 1 + 2 * self.depth);
        dir.push_str(queue);
        dir.push('/');
        if self.hashed.iter().any(|q| q.eq_ignore_ascii_case(queue)) {
            let key = hash_key(id);
            let mut chars = key.chars();
            for _ in 0..self.depth {
                dir.push(chars.next().unwrap_or('_'));
                dir.push('/');
            }
        }
        dir
    }

    /// The path of `id` in `queue`, relative to the queue directory (`mail_queue_path`).
    pub fn path(&self, queue: &str, id: &str) -> PathBuf {
        let mut p = self.dir(queue, id);
        p.push_str(id);
        PathBuf::from(p)
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
        if meta.permissions().mode() & 0o700 != STAT_READY {
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
            Err(first) => {
                let parent = new.parent().map(PathBuf::from).unwrap_or_default();
                if make_dirs(&parent).is_ok() {
                    fs::rename(&old, &new)
                } else {
                    Err(first)
                }
            }
        }
    }

    /// Removes `id` from `queue` (`mail_queue_remove`).
    ///
    /// Errors: the unlink's error.
    pub fn remove(&self, queue: &str, id: &str) -> io::Result<()> {
        fs::remove_file(self.path(queue, id))
    }

    /// Sets both access and modification time of `id` in `queue` to `secs`
    /// (seconds since the epoch), as qmgr's `utime()` calls do.
    ///
    /// Errors: the utimensat error.
    pub fn set_times(&self, queue: &str, id: &str, secs: i64) -> io::Result<()> {
        set_times(&self.path(queue, id), secs)
    }

    /// Startup recovery (`qmgr/qmgr_move.c`): every valid name in `active`
    /// (recursively) is time-stamped `now` and moved to `incoming`, so that
    /// mail an earlier queue manager held is delivered again. A vanished file
    /// is a warning; any other failure is returned (fatal in Postfix).
    ///
    /// Errors: Postfix's fatal text for a failed time stamp or rename other
    /// than a vanished file.
    pub fn recover_active(&self, now: i64) -> Result<usize, String> {
        let mut moved = 0;
        let mut scanner = Scanner::new(ACTIVE);
        scanner.request(ScanFlags::START);
        while let Some(id) = scanner.next_id() {
            if !queue_id_ok(&id) {
                tracing::warn!("qmgr_move: ignored: queue {ACTIVE} id {id}");
                continue;
            }
            if let Err(e) = self.set_times(ACTIVE, &id, now) {
                let text = format!(
                    "qmgr_move: update {} time stamps: {}",
                    self.path(ACTIVE, &id).display(),
                    crate::log::errno_text(&e)
                );
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(text);
                }
                tracing::warn!("{text}");
                continue;
            }
            match self.rename(&id, ACTIVE, INCOMING) {
                Ok(()) => moved += 1,
                Err(e) => {
                    let text = format!(
                        "qmgr_move: rename {id} from {ACTIVE} to {INCOMING}: {}",
                        crate::log::errno_text(&e)
                    );
                    if e.kind() != io::ErrorKind::NotFound {
                        return Err(text);
                    }
                    tracing::warn!("{text}");
                }
            }
        }
        Ok(moved)
    }
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
            s.path("deferred", "D9561992042"),
            PathBuf::from("deferred/D/D9561992042")
        );
        assert_eq!(
            s.path("DEFER", "D0D39992097"),
            PathBuf::from("DEFER/D/D0D39992097")
        );
        assert_eq!(
            s.path("active", "D0D39992097"),
            PathBuf::from("active/D0D39992097")
        );
        let s2 = Spool::new(&["deferred".into()], 2);
        assert_eq!(
            s2.path("deferred", "D0D39992097"),
            PathBuf::from("deferred/D/0/D0D39992097")
        );
        assert_eq!(s2.path("deferred", "A"), PathBuf::from("deferred/A/_/A"));
    }

    #[test]
    fn long_ids_hash_by_microseconds() {
        // 4 base-52 chars before the 'z' encode the microseconds: "0001" = 1 -> "00001".
        let s = Spool::new(&["deferred".into()], 1);
        assert_eq!(
            s.path("deferred", "4Xy2Bc0001zLbJ"),
            PathBuf::from("deferred/0/4Xy2Bc0001zLbJ")
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
