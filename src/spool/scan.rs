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
    /// A directory could not be opened or read: the walk missed what is
    /// in it.
    incomplete: bool,
}

impl DirWalk {
    /// Starts a walk of `queue`; an unreadable directory is a warning and an
    /// empty walk.
    pub fn new(queue: &str) -> DirWalk {
        let mut walk = DirWalk {
            stack: Vec::new(),
            entered: Vec::new(),
            incomplete: false,
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
            Err(e) if top => {
                self.incomplete = true;
                tracing::warn!(
                    "open directory {}: {}",
                    dir.display(),
                    crate::log::errno_text(&e)
                )
            }
            // Postfix ends here (scan_dir_push's fatal); rqmgr says so and
            // scans the rest.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                self.incomplete = true;
                tracing::warn!(
                    "scan_dir_push: open directory {}: {}",
                    dir.display(),
                    crate::log::errno_text(&e)
                )
            }
            Err(_) => {}
        }
    }

    /// True once a directory could not be opened or read (warned about):
    /// the walk has not seen everything.
    pub fn incomplete(&self) -> bool {
        self.incomplete
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
                    self.incomplete = true;
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

/// What `qmgr_scan.c` keeps of one queue's scans besides the walk: the
/// flags of the run in progress and of the next run (`QMGR_SCAN`'s
/// `flags` and `nflags`), and how long the last run took. Both
/// [`Scanner`] and [`super::deferred::DeferredScanner`] keep their
/// requests here.
#[derive(Debug)]
pub struct ScanRequests {
    queue: &'static str,
    flags: ScanFlags,
    nflags: ScanFlags,
    /// When the run in progress started, and how long the last one took.
    started: Option<std::time::Instant>,
    finished: Option<std::time::Duration>,
}

impl ScanRequests {
    pub(super) fn new(queue: &'static str) -> ScanRequests {
        ScanRequests {
            queue,
            flags: ScanFlags::default(),
            nflags: ScanFlags::default(),
            started: None,
            finished: None,
        }
    }

    /// The queue (a directory relative to the queue directory).
    pub fn queue(&self) -> &'static str {
        self.queue
    }

    /// The flags of the run in progress.
    pub fn flags(&self) -> ScanFlags {
        self.flags
    }

    /// How long the last finished run took, once.
    pub fn take_finished(&mut self) -> Option<std::time::Duration> {
        self.finished.take()
    }

    /// Records a request for a scan with `flags` (`qmgr_scan_request`),
    /// `running` telling whether a run is in progress: `ALL` and
    /// `FLUSH_DFXP` also apply to that run. Returns true when a run must
    /// start now (none runs and `START` was asked); the caller then calls
    /// [`ScanRequests::begin`].
    pub(super) fn request(&mut self, flags: ScanFlags, running: bool) -> bool {
        if running {
            self.flags |= flags.intersection(ScanFlags::ALL | ScanFlags::FLUSH_DFXP);
        }
        self.nflags |= flags;
        if !running && flags.contains(ScanFlags::START) {
            self.nflags = self.nflags.without(ScanFlags::START);
            return true;
        }
        false
    }

    /// Whether another run was asked for while one ran.
    pub(super) fn another(&self) -> bool {
        self.nflags.contains(ScanFlags::START)
    }

    /// A run begins (`qmgr_scan_start`): the next run's flags become the
    /// run's.
    pub(super) fn begin(&mut self) {
        log_scan_start(self.nflags, self.queue);
        self.started = Some(std::time::Instant::now());
        self.flags = self.nflags;
        self.nflags = ScanFlags::default();
    }

    /// The run in progress ended.
    pub(super) fn end(&mut self) {
        self.finished = self.started.take().map(|t| t.elapsed());
        log_scan_done(self.nflags, self.queue);
    }
}

/// One queue's scanner: its requests and the walk of the run in progress.
#[derive(Debug)]
pub struct Scanner {
    requests: ScanRequests,
    walk: Option<DirWalk>,
}

impl Scanner {
    /// A scanner for `queue` (a directory relative to the queue directory).
    pub fn new(queue: &'static str) -> Scanner {
        Scanner {
            requests: ScanRequests::new(queue),
            walk: None,
        }
    }

    /// The queue, the flags of the run in progress, the last run's time.
    pub fn requests(&mut self) -> &mut ScanRequests {
        &mut self.requests
    }

    /// True while a run is in progress.
    pub fn in_progress(&self) -> bool {
        self.walk.is_some()
    }

    /// Requests a scan with `flags` (`qmgr_scan_request`, see
    /// [`ScanRequests::request`]). The caller handles `FLUSH_ONCE`
    /// (reviving dead transports and queues).
    pub fn request(&mut self, flags: ScanFlags) {
        if self.requests.request(flags, self.walk.is_some()) {
            self.start();
        }
    }

    fn start(&mut self) {
        self.requests.begin();
        self.walk = Some(DirWalk::new(self.requests.queue));
    }

    /// The next candidate queue id, or `None` when the run is over and no
    /// further run was requested (`qmgr_scan_next`).
    pub fn next_id(&mut self) -> Option<String> {
        if let Some(walk) = &mut self.walk {
            if let Some((_, id)) = walk.next_file() {
                return Some(id);
            }
            self.walk = None;
            self.requests.end();
        }
        if self.requests.another() {
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
