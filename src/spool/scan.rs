//! Queue scanners (`qmgr/qmgr_scan.c`, `global/mail_scan_dir.c`): walk one
//! queue directory in readdir order, descending into one-character (hash)
//! subdirectories, and return candidate queue ids one at a time. A scan
//! requested while one runs results in exactly one more complete pass.

use crate::qmgr::ScanFlags;
use std::fs::ReadDir;
use std::path::PathBuf;

/// One queue's scanner: the flags of the run in progress, the flags of the
/// next run, and the open directories of the walk.
#[derive(Debug)]
pub struct Scanner {
    queue: &'static str,
    flags: ScanFlags,
    nflags: ScanFlags,
    walk: Option<Vec<(PathBuf, ReadDir)>>,
}

impl Scanner {
    /// A scanner for `queue` (a directory relative to the queue directory).
    pub fn new(queue: &'static str) -> Scanner {
        Scanner {
            queue,
            flags: ScanFlags::default(),
            nflags: ScanFlags::default(),
            walk: None,
        }
    }

    /// The queue this scanner walks.
    pub fn queue(&self) -> &'static str {
        self.queue
    }

    /// The flags of the run in progress.
    pub fn flags(&self) -> ScanFlags {
        self.flags
    }

    /// True while a run is in progress.
    pub fn in_progress(&self) -> bool {
        self.walk.is_some()
    }

    /// Requests a scan with `flags` (`qmgr_scan_request`). `ALL` and
    /// `FLUSH_DFXP` also apply to the run in progress. The caller handles
    /// `FLUSH_ONCE` (reviving dead transports and queues).
    pub fn request(&mut self, flags: ScanFlags) {
        if self.walk.is_some() {
            self.flags |= flags.intersection(ScanFlags::ALL | ScanFlags::FLUSH_DFXP);
        }
        self.nflags |= flags;
        if self.walk.is_none() && flags.contains(ScanFlags::START) {
            self.nflags = self.nflags.without(ScanFlags::START);
            self.start();
        }
    }

    fn start(&mut self) {
        self.flags = self.nflags;
        self.nflags = ScanFlags::default();
        let mut stack = Vec::new();
        match std::fs::read_dir(self.queue) {
            Ok(rd) => stack.push((PathBuf::from(self.queue), rd)),
            Err(e) => tracing::warn!(
                "open directory {}: {}",
                self.queue,
                crate::log::errno_text(&e)
            ),
        }
        self.walk = Some(stack);
    }

    /// The next candidate queue id, or `None` when the run is over and no
    /// further run was requested (`qmgr_scan_next`).
    pub fn next_id(&mut self) -> Option<String> {
        if self.walk.is_some() {
            if let Some(id) = self.walk_next() {
                return Some(id);
            }
            self.walk = None;
        }
        if self.nflags.contains(ScanFlags::START) {
            self.start();
            let id = self.walk_next();
            if id.is_none() {
                self.walk = None;
            }
            return id;
        }
        None
    }

    fn walk_next(&mut self) -> Option<String> {
        let stack = self.walk.as_mut()?;
        loop {
            let (dir, rd) = stack.last_mut()?;
            match rd.next() {
                None => {
                    stack.pop();
                }
                Some(Err(e)) => {
                    tracing::warn!(
                        "read directory {}: {}",
                        dir.display(),
                        crate::log::errno_text(&e)
                    );
                    stack.pop();
                }
                Some(Ok(entry)) => {
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.len() == 1 {
                        let sub = dir.join(name);
                        // Postfix follows a symbolic link here, out of the
                        // queue directory if it points there; rqmgr does not.
                        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                            tracing::warn!("{}: symbolic link: not scanned", sub.display());
                            continue;
                        }
                        match std::fs::read_dir(&sub) {
                            Ok(rd) => stack.push((sub, rd)),
                            // Postfix ends here (scan_dir_push's fatal);
                            // rqmgr says so and scans the rest.
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                tracing::warn!(
                                    "scan_dir_push: open directory {}: {}",
                                    sub.display(),
                                    crate::log::errno_text(&e)
                                );
                            }
                            Err(_) => {}
                        }
                    } else {
                        return Some(name.to_string());
                    }
                }
            }
        }
    }
}
