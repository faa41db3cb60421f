//! The deferred queue's scanner, indexed. Postfix's qmgr walks the whole
//! deferred queue and stats every file at every scan (`qmgr_scan.c` with
//! `qmgr_active_feed`'s time-stamp test), so a scan costs as much as the
//! queue is large. rqmgr walks it in full only now and then (the first
//! scan, `postqueue -f`, once an hour, after an inotify overflow): that walk
//! stats each file, hands out the due ones, and remembers the files due
//! within the next [`HORIZON`]. The scans in between only hand out the
//! remembered files that are due, so their cost follows the mail that is
//! due, not the size of the queue.
//!
//! The memory stays right when other programs change the queue behind
//! rqmgr's back: inotify watches the deferred queue and its hash
//! directories, and every file created, moved in or out, deleted or
//! re-stamped (`postsuper -H`/`-r`/`-d`, `postqueue -f`, `mv`, `touch`) is
//! looked at again, and so is each file rqmgr itself defers again while a
//! full walk runs (a `postqueue -f` larger than the active queue): behind
//! the walk, only the events see it. Where inotify is not available every
//! scan is a full walk, as in Postfix. Whatever the index says, the feed
//! checks each file again (`mail_open_ok`, the time stamp) before it takes
//! it.

use super::scan::{DirWalk, ScanRequests};
use crate::qmgr::ScanFlags;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How far ahead the index remembers due times, seconds; also the interval
/// of the full walks that keep it honest.
pub const HORIZON: i64 = 3600;

/// Files a full walk looks at before it lets the event loop turn.
const WALK_CHUNK: usize = 256;

/// What the scanner has next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A queue id to feed.
    Id(String),
    /// A full walk is under way: call again (nothing due in this chunk).
    Again,
    /// Nothing (the run ended and no other was requested).
    Done,
}

/// How a chunk of a full walk ended.
enum Step {
    Id(String),
    Chunk,
    End,
}

/// inotify on the deferred queue's directories.
struct Watch {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

/// The run in progress.
enum Run {
    /// A full walk; `started`: when (its index is good until started +
    /// HORIZON); `trusted`: no inotify event was lost since it started
    /// and every directory was read and watched, so that at its end the
    /// index is complete.
    Walk {
        walk: DirWalk,
        started: i64,
        trusted: bool,
    },
    /// The remembered files that were due when the run started.
    Indexed(std::vec::IntoIter<String>),
}

/// The deferred queue's scanner.
pub struct DeferredScanner {
    requests: ScanRequests,
    run: Option<Run>,
    watch: Option<Watch>,
    /// Files due before `horizon_end`: id -> modification time.
    index: HashMap<Box<str>, i64>,
    /// The index is complete for files due before this (0: no full walk
    /// yet, or an overflow lost events).
    horizon_end: i64,
}

fn mtime(path: &Path) -> Option<i64> {
    let md = std::fs::symlink_metadata(path).ok()?;
    md.file_type().is_file().then(|| md.mtime())
}

impl DeferredScanner {
    /// A scanner of `queue` (the deferred queue), with an index if inotify
    /// can watch it.
    pub fn new(queue: &'static str) -> DeferredScanner {
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map(|inotify| Watch {
                inotify,
                dirs: HashMap::new(),
            })
            .map_err(|e| {
                tracing::warn!(
                    "inotify: {}: every deferred queue scan walks the whole queue",
                    e.desc()
                )
            })
            .ok();
        DeferredScanner {
            requests: ScanRequests::new(queue),
            run: None,
            watch,
            index: HashMap::new(),
            horizon_end: 0,
        }
    }

    /// The queue, the flags of the run in progress, the last run's time.
    pub fn requests(&mut self) -> &mut ScanRequests {
        &mut self.requests
    }

    /// True while a run is in progress.
    pub fn in_progress(&self) -> bool {
        self.run.is_some()
    }

    /// A duplicate of the inotify descriptor, for the event loop to wait
    /// on (readable: call [`DeferredScanner::apply_events`]); None without
    /// inotify, or if `dup` failed.
    pub fn watch_fd(&self) -> Option<OwnedFd> {
        let w = self.watch.as_ref()?;
        w.inotify
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| tracing::warn!("inotify: dup: {}", crate::log::errno_text(&e)))
            .ok()
    }

    /// Requests a scan with `flags`, as [`super::Scanner::request`].
    pub fn request(&mut self, flags: ScanFlags, now: i64) {
        if self.requests.request(flags, self.run.is_some()) {
            self.start(now);
        }
    }

    fn start(&mut self, now: i64) {
        self.requests.begin();
        self.apply_events();
        let indexed = self.watch.is_some()
            && !self.requests.flags().contains(ScanFlags::ALL)
            && now < self.horizon_end;
        self.run = Some(if indexed {
            let mut due: Vec<(i64, Box<str>)> = self
                .index
                .iter()
                .filter(|(_, &t)| t <= now.saturating_add(1))
                .map(|(id, &t)| (t, id.clone()))
                .collect();
            due.sort();
            for (_, id) in &due {
                self.index.remove(id);
            }
            let ids: Vec<String> = due.into_iter().map(|(_, id)| id.into()).collect();
            Run::Indexed(ids.into_iter())
        } else {
            self.index.clear();
            self.horizon_end = 0;
            Run::Walk {
                walk: DirWalk::new(self.requests.queue()),
                started: now,
                trusted: true,
            }
        });
    }

    /// The next queue id to try (`qmgr_scan_next`).
    pub fn next_id(&mut self, now: i64) -> Next {
        loop {
            match &mut self.run {
                None => {
                    if !self.requests.another() {
                        return Next::Done;
                    }
                    self.start(now);
                }
                Some(Run::Indexed(ids)) => match ids.next() {
                    Some(id) => return Next::Id(id),
                    None => {
                        self.run = None;
                        self.requests.end();
                    }
                },
                Some(Run::Walk {
                    walk,
                    started,
                    trusted,
                }) => {
                    let (started, trusted) = (*started, *trusted);
                    let all =
                        self.requests.flags().contains(ScanFlags::ALL) || self.watch.is_none();
                    let mut step = Step::Chunk;
                    for _ in 0..WALK_CHUNK {
                        let Some((dir, id)) = walk.next_file() else {
                            step = Step::End;
                            break;
                        };
                        if all {
                            step = Step::Id(id);
                            break;
                        }
                        match mtime(&dir.join(&id)) {
                            Some(t) if t <= now.saturating_add(1) => {
                                step = Step::Id(id);
                                break;
                            }
                            Some(t) if t < started + HORIZON => {
                                self.index.insert(id.into(), t);
                            }
                            _ => {}
                        }
                    }
                    let entered = walk.take_entered();
                    let mut watched = true;
                    if let Some(w) = &mut self.watch {
                        for dir in entered {
                            watched &= w.add(dir);
                        }
                    }
                    let missed = walk.incomplete();
                    let trusted = trusted && watched && !missed;
                    if !trusted {
                        // What inotify cannot see, or the walk could not
                        // read, only a later walk finds.
                        self.forget();
                    }
                    match step {
                        Step::Id(id) => return Next::Id(id),
                        Step::Chunk => return Next::Again,
                        Step::End => {
                            self.run = None;
                            self.requests.end();
                            if self.watch.is_some() && trusted {
                                self.horizon_end = started + HORIZON;
                            }
                        }
                    }
                }
            }
        }
    }

    /// rqmgr moved `id` into the deferred queue, due at `due` (seconds).
    pub fn added(&mut self, id: &str, due: i64) {
        if due < self.remember_before() {
            self.index.insert(id.into(), due);
        }
    }

    /// Files due before this are remembered: the index's horizon or, while
    /// a full walk runs, the horizon the walk vouches for at its end. A
    /// file that comes back into the queue behind the walk is seen only
    /// here: the walk has passed it.
    fn remember_before(&self) -> i64 {
        match &self.run {
            Some(Run::Walk {
                started,
                trusted: true,
                ..
            }) => started + HORIZON,
            _ => self.horizon_end,
        }
    }

    /// Events were lost: the index is incomplete until a full walk that
    /// starts after now.
    fn forget(&mut self) {
        self.horizon_end = 0;
        if let Some(Run::Walk { trusted, .. }) = &mut self.run {
            *trusted = false;
        }
    }

    /// Reads what inotify reported and brings the index up to date.
    pub fn apply_events(&mut self) {
        let keep_before = self.remember_before();
        let Some(w) = &mut self.watch else { return };
        let mut lost = false;
        loop {
            let events = match w.inotify.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!("inotify: read: {}", e.desc());
                    lost = true;
                    break;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    // Events were lost: the next scan walks everything.
                    lost = true;
                    continue;
                }
                let (Some(dir), Some(name)) = (w.dirs.get(&ev.wd), ev.name) else {
                    continue;
                };
                let Some(name) = name.to_str() else { continue };
                let path = dir.join(name);
                if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                    if name.len() == 1
                        && ev
                            .mask
                            .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                    {
                        // A new hash directory: watch it; what came into it
                        // before the watch is seen by a full walk, next.
                        let _ = w.add(path);
                        lost = true;
                    }
                    continue;
                }
                if ev
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                {
                    self.index.remove(name);
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_MOVED_TO) && self.index.contains_key(name) {
                    continue; // rqmgr's own move, already indexed
                }
                match mtime(&path) {
                    Some(t) if t < keep_before => {
                        self.index.insert(name.into(), t);
                    }
                    _ => {
                        self.index.remove(name);
                    }
                }
            }
        }
        if lost {
            self.forget();
        }
    }
}

impl Watch {
    /// Watches `dir`; false (warned about) if inotify cannot.
    fn add(&mut self, dir: PathBuf) -> bool {
        let flags = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB
            // A new modification time alone is reported as IN_MODIFY.
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        match self.inotify.add_watch(&dir, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, dir);
                true
            }
            Err(e) => {
                tracing::warn!("inotify: watch {}: {}", dir.display(), e.desc());
                false
            }
        }
    }
}
