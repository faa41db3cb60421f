//! Queue scanners (`qmgr/qmgr_scan.c`, `global/mail_scan_dir.c`): walk one
//! queue directory in readdir order, descending into one-character (hash)
//! subdirectories, and return candidate queue ids one at a time. A scan
//! requested while one runs results in exactly one more complete pass.

use crate::qmgr::ScanFlags;
use std::fs::ReadDir;
use std::path::{Path, PathBuf};

/// A walk of one queue directory (`mail_scan_dir_next`): names in readdir
/// order, descending into one-character subdirectories but never through a
/// symbolic link.
#[derive(Debug)]
pub struct DirWalk {
    stack: Vec<(PathBuf, ReadDir)>,
    /// Directories entered since the last [`DirWalk::take_entered`].
    entered: Vec<PathBuf>,
}

impl DirWalk {
    /// Starts a walk of `queue`; an unreadable directory is a warning and an
    /// empty walk.
    pub fn new(queue: &str) -> DirWalk {
        let mut walk = DirWalk {
            stack: Vec::new(),
            entered: Vec::new(),
        };
        walk.enter(PathBuf::from(queue), true);
        walk
    }

    fn enter(&mut self, dir: PathBuf, top: bool) {
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                self.entered.push(dir.clone());
                self.stack.push((dir, rd));
            }
            Err(e) if top => tracing::warn!(
                "open directory {}: {}",
                dir.display(),
                crate::log::errno_text(&e)
            ),
            // Postfix ends here (scan_dir_push's fatal); rqmgr says so and
            // scans the rest.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!(
                "scan_dir_push: open directory {}: {}",
                dir.display(),
                crate::log::errno_text(&e)
            ),
            Err(_) => {}
        }
    }

    /// The directories entered since the last call.
    pub fn take_entered(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.entered)
    }

    /// The next name and the directory it is in, or `None` at the end.
    pub fn next_file(&mut self) -> Option<(&Path, String)> {
        loop {
            let (dir, rd) = self.stack.last_mut()?;
            match rd.next() {
                None => {
                    self.stack.pop();
                }
                Some(Err(e)) => {
                    tracing::warn!(
                        "read directory {}: {}",
                        dir.display(),
                        crate::log::errno_text(&e)
                    );
                    self.stack.pop();
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
                        self.enter(sub, false);
                        continue;
                    }
                    let name = name.to_string();
                    let dir = &self.stack.last().expect("the directory just read").0;
                    return Some((dir.as_path(), name));
                }
            }
        }
    }
}

/// One queue's scanner: the flags of the run in progress, the flags of the
/// next run, and the walk.
/// `qmgr_scan_start`'s `-v` line; "restart" when another scan was asked
/// for meanwhile.
pub(super) fn log_scan_start(nflags: ScanFlags, queue: &str) {
    let re = if nflags.contains(ScanFlags::START) {
        "re"
    } else {
        ""
    };
    tracing::debug!("qmgr_scan_start: {re}start {queue} queue scan");
}

/// `qmgr_scan_next`'s `-v` line at the end of a run (none when another
/// follows at once).
pub(super) fn log_scan_done(nflags: ScanFlags, queue: &str) {
    if !nflags.contains(ScanFlags::START) {
        tracing::debug!("done {queue} queue scan");
    }
}

#[derive(Debug)]
pub struct Scanner {
    queue: &'static str,
    flags: ScanFlags,
    nflags: ScanFlags,
    walk: Option<DirWalk>,
    /// When the run in progress started, and how long the last one took.
    started: Option<std::time::Instant>,
    finished: Option<std::time::Duration>,
}

impl Scanner {
    /// A scanner for `queue` (a directory relative to the queue directory).
    pub fn new(queue: &'static str) -> Scanner {
        Scanner {
            queue,
            flags: ScanFlags::default(),
            nflags: ScanFlags::default(),
            walk: None,
            started: None,
            finished: None,
        }
    }

    /// How long the last finished run took, once.
    pub fn take_finished(&mut self) -> Option<std::time::Duration> {
        self.finished.take()
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
        log_scan_start(self.nflags, self.queue);
        self.started = Some(std::time::Instant::now());
        self.flags = self.nflags;
        self.nflags = ScanFlags::default();
        self.walk = Some(DirWalk::new(self.queue));
    }

    /// The next candidate queue id, or `None` when the run is over and no
    /// further run was requested (`qmgr_scan_next`).
    pub fn next_id(&mut self) -> Option<String> {
        if let Some(walk) = &mut self.walk {
            if let Some((_, id)) = walk.next_file() {
                return Some(id);
            }
            self.walk = None;
            self.finished = self.started.take().map(|t| t.elapsed());
            log_scan_done(self.nflags, self.queue);
        }
        if self.nflags.contains(ScanFlags::START) {
            self.start();
            let id = self
                .walk
                .as_mut()
                .and_then(|w| w.next_file())
                .map(|(_, id)| id);
            if id.is_none() {
                self.walk = None;
            }
            return id;
        }
        None
    }
}
