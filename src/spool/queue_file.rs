//! The queue file qmgr holds open while it reads a message
//! (`qmgr/qmgr_message.c:qmgr_message_open`, `qmgr_message_alloc`): opened
//! read-write in the active queue, locked against another process still
//! delivering it, and edited in place: a recipient marked done, the
//! `trace_flags` record killed, the delay warning marked as sent
//! (`global/deliver_completed.c`, `qmgr_message_kill_record`,
//! `qmgr_message_update_warn`), and the file mode reset.

use super::QueuePath;
use super::{must, IfVanished, Spool, ACTIVE};
use crate::qfile;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// An open queue file of the active queue.
#[derive(Debug)]
pub struct QueueFile {
    file: File,
    path: QueuePath,
    /// The size as the caller already knows it (from the lstat before the
    /// file was moved into active), to spare an fstat.
    known_size: Option<u64>,
}

/// The outcome of [`QueueFile::try_lock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// qmgr holds the exclusive lock now.
    Taken,
    /// Another process (a delivery agent of an earlier qmgr) holds it.
    Busy,
}

impl QueueFile {
    /// Opens `active/<id>` read-write (`qmgr_message_open`): a file that
    /// vanished is `warning: open active <id>: ...` and `None`; any other
    /// failure is fatal.
    pub fn open(spool: &Spool, id: &str) -> Option<QueueFile> {
        let path = spool.path(ACTIVE, id);
        let file = must(
            OpenOptions::new().read(true).write(true).open(&path),
            IfVanished::Warn,
            || format!("open {ACTIVE} {id}"),
        )?;
        Some(QueueFile {
            file,
            path,
            known_size: None,
        })
    }

    /// The open file, for reading records.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path, relative to the queue directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file size in bytes (0 if it cannot be read).
    pub fn size(&self) -> u64 {
        self.known_size
            .unwrap_or_else(|| self.file.metadata().map(|md| md.len()).unwrap_or(0))
    }

    /// Records the size the caller already knows (bytes).
    pub fn with_size(mut self, size: u64) -> QueueFile {
        self.known_size = Some(size);
        self
    }

    /// Takes the exclusive, non-blocking lock Postfix's delivery agents
    /// share with qmgr (`myflock(..., INTERNAL_LOCK, EXCLUSIVE|NOWAIT)`).
    pub fn try_lock(&self) -> Lock {
        // SAFETY: flock on the descriptor of a file we hold open.
        let rc = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            Lock::Taken
        } else {
            Lock::Busy
        }
    }

    /// Sets the file mode (clearing the unthrottle bit after reading); a
    /// failure is fatal, as in `qmgr_message_alloc`.
    pub fn set_mode(&self, mode: u32) {
        if let Err(e) = self
            .file
            .set_permissions(std::fs::Permissions::from_mode(mode))
        {
            crate::log::fatal(&format!(
                "fchmod {}: {}",
                self.path.display(),
                crate::log::errno_text(&e)
            ));
        }
    }

    /// True unless the recipient whose record starts at `offset` was
    /// marked done (an agent that died may have finished some of its
    /// recipients first). A read error counts as not done.
    pub fn recipient_pending(&self, offset: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let mut byte = [0u8];
        !matches!(self.file.read_exact_at(&mut byte, offset), Ok(()) if byte[0] == qfile::rec::DONE)
    }

    /// Marks the recipient whose record starts at `offset` as done
    /// (`deliver_completed`). A failed write is fatal.
    pub fn mark_done(&self, offset: u64) {
        self.edit(qfile::mark_done(&self.file, offset));
    }

    /// Kills the `trace_flags` record at `offset` (`qmgr_message_kill_record`).
    pub fn kill_record(&self, offset: u64) {
        self.edit(qfile::kill_record(&self.file, offset));
    }

    /// Marks the delay warning as sent (`qmgr_message_update_warn`).
    pub fn mark_warning_sent(&self, offset: u64) {
        self.edit(qfile::mark_warning_sent(&self.file, offset));
    }

    /// An in-place write failed: fatal, as Postfix's `update queue file`.
    fn edit(&self, result: io::Result<()>) {
        if let Err(e) = result {
            crate::log::fatal(&format!(
                "update queue file {}: {}",
                self.path.display(),
                crate::log::errno_text(&e)
            ));
        }
    }
}
