//! Changes to the deferred queue behind the queue manager's back: released
//! from hold (`postsuper -H`), requeued (`postsuper -r`), deleted
//! (`postsuper -d`), flushed (`postqueue -f`), moved in by hand, re-stamped
//! by hand; and mail deferred again while a scan walks the queue. rqmgr does not walk the deferred queue at every scan (it keeps
//! an index kept honest by inotify, see src/spool/deferred.rs); each test
//! shows that the mail goes out when, and only when, Postfix's qmgr and
//! oqmgr would send it.

#[macro_use]
mod support;

use std::os::unix::fs::{chown, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use support::{sys, Instance, Opts, Qmgr};

dropin_tests!(
    released_from_hold_goes_out_at_the_next_scan,
    moved_in_by_hand_goes_out_when_due,
    restamped_by_hand_goes_out_when_due,
    requeued_and_deleted_mail,
    flush_sends_what_is_not_due,
    deferred_again_by_a_flush_is_retried_when_due,
    released_into_hash_directories_fixed_by_hand_goes_out,
);

/// A deferred scan every second; mail to `held.example` arrives on hold
/// and goes to discard(8) once released.
fn opts(name: &str, q: Qmgr) -> Opts {
    Opts::new(name, q)
        .transport("held.example", "discard:")
        .main_cf("queue_run_delay", "1s")
        .main_cf(
            "smtpd_recipient_restrictions",
            "check_recipient_access inline:{held.example=HOLD}",
        )
        .timeout(Duration::from_secs(40))
}

/// A message on hold; returns its queue id.
fn held(inst: &Instance, what: &str) -> String {
    let from = inst.local_addr("sender");
    let token = inst.unique_token(what);
    let id = inst.send_smtp(&from, &["x@held.example"], what, &token);
    inst.wait_until("the message on hold", || {
        inst.queue_ids("hold").contains(&id)
    });
    id
}

/// Moves a held message into the deferred queue by hand, time-stamped
/// `mtime`, as an administrator with `mv` and `touch` would.
fn move_into_deferred(inst: &Instance, id: &str, mtime: SystemTime) -> PathBuf {
    let from = inst.queue_file("hold", id).expect("the held file");
    let dir = inst.spool().join("deferred").join(&id[..1]);
    if !dir.exists() {
        std::fs::create_dir(&dir).expect("mkdir hash directory");
        chown(&dir, Some(sys::uid_of("postfix")), None).expect("chown");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let to = dir.join(id);
    // Stamp first, then move: the move is what a scan can see.
    set_mtime(&from, mtime);
    std::fs::rename(&from, &to).expect("move into deferred");
    to
}

fn set_mtime(path: &std::path::Path, t: SystemTime) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open queue file");
    f.set_modified(t).expect("set mtime");
}

fn delivered(inst: &Instance, id: &str) -> bool {
    inst.lines_for(id)
        .iter()
        .any(|l| l.status() == Some("sent"))
}

/// Several deferred scans go by without the message being taken.
fn not_taken_over_scans(inst: &Instance, id: &str) {
    std::thread::sleep(Duration::from_secs(4));
    inst.check(
        !inst.lines_for(id).iter().any(|l| l.is_queue_active()),
        &format!("{id} is not taken while it is not due"),
    );
}

/// `postsuper -H` moves a held message into deferred; the next periodic
/// deferred scan delivers it.
fn released_from_hold_goes_out_at_the_next_scan(q: Qmgr) {
    let inst = Instance::start(opts("defhold", q));
    let id = held(&inst, "hold");
    inst.postsuper(&["-H", &id]);
    inst.wait_removed(&id);
    inst.check(delivered(&inst, &id), "delivered after the release");
}

/// A queue file moved into deferred by hand, due already: delivered by a
/// periodic scan, without any trigger.
fn moved_in_by_hand_goes_out_when_due(q: Qmgr) {
    let inst = Instance::start(opts("defmv", q));
    let id = held(&inst, "mv");
    move_into_deferred(&inst, &id, SystemTime::now() - Duration::from_secs(60));
    inst.wait_removed(&id);
    inst.check(delivered(&inst, &id), "delivered after the move");
}

/// A file in deferred due in an hour is left alone; stamped back by hand
/// (`touch`), it goes out at a periodic scan.
fn restamped_by_hand_goes_out_when_due(q: Qmgr) {
    let inst = Instance::start(opts("deftouch", q));
    let id = held(&inst, "touch");
    let path = move_into_deferred(&inst, &id, SystemTime::now() + Duration::from_secs(3600));
    not_taken_over_scans(&inst, &id);
    set_mtime(&path, SystemTime::now() - Duration::from_secs(1));
    inst.wait_removed(&id);
    inst.check(delivered(&inst, &id), "delivered after the new time stamp");
}

/// `postsuper -d` of a deferred message: gone, nothing logged against it
/// but the removal; `postsuper -r` of another: it is queued again (as a
/// new queue file) and delivered.
fn requeued_and_deleted_mail(q: Qmgr) {
    let inst = Instance::start(opts("defsuper", q));
    let later = SystemTime::now() + Duration::from_secs(3600);
    let gone = held(&inst, "delete");
    move_into_deferred(&inst, &gone, later);
    let again = held(&inst, "requeue");
    move_into_deferred(&inst, &again, later);
    not_taken_over_scans(&inst, &gone);
    inst.postsuper(&["-d", &gone]);
    inst.postsuper(&["-r", &again]);
    // The requeued message waits in maildrop for pickup(8): wake it.
    inst.postkick("pickup", "W");
    let line = inst.wait_for_line("the requeued message delivered", |l| {
        l.is_from("discard") && l.status() == Some("sent")
    });
    let new_id = line.queue_id().unwrap_or("").to_string();
    inst.wait_removed(&new_id);
    inst.check(
        inst.queue_file("deferred", &gone).is_none() && !delivered(&inst, &gone),
        "the deleted message is gone, not delivered",
    );
    inst.check(
        !inst
            .log_lines()
            .iter()
            .any(|l| l.is_from("qmgr") && l.text.contains("warning")),
        "no queue manager warning",
    );
}

/// `postqueue -f` sends deferred mail that is not due yet.
fn flush_sends_what_is_not_due(q: Qmgr) {
    let inst = Instance::start(opts("defflush", q));
    let id = held(&inst, "flush");
    move_into_deferred(&inst, &id, SystemTime::now() + Duration::from_secs(3600));
    not_taken_over_scans(&inst, &id);
    inst.postqueue_f();
    inst.wait_removed(&id);
    inst.check(delivered(&inst, &id), "delivered by the flush");
}

/// Mail that a `postqueue -f` tries and defers again is retried when it is
/// due, like any deferred mail: none of it waits for the next full walk of
/// the queue. 600 messages and room for 50 in the active queue: the
/// flush's walk waits for room again and again, and meanwhile the first
/// messages it took come back deferred.
fn deferred_again_by_a_flush_is_retried_when_due(q: Qmgr) {
    const N: usize = 600;
    let inst = Instance::start(
        Opts::new("defagain", q)
            .transport("down.example", "smtp:[127.0.0.1]:{closed_port}")
            .main_cf("queue_run_delay", "1s")
            .main_cf("minimal_backoff_time", "2s")
            .main_cf("maximal_backoff_time", "4s")
            .main_cf("qmgr_message_active_limit", "50")
            .timeout(Duration::from_secs(90)),
    );
    let from = inst.local_addr("sender");
    let n = N.to_string();
    inst.smtp_source(&["-s", "5", "-m", &n, "-f", &from, "-t", "x@down.example"]);
    let deferred = |l: &support::LogLine| l.status() == Some("deferred");
    inst.wait_for_log("every message deferred once", |lines| {
        distinct_ids(lines.iter().filter(|l| deferred(l))) == N
    });
    let flushed_at = inst.log_lines().len();
    inst.postqueue_f();
    // For each message: its first attempt after the flush, then one more.
    inst.wait_progress(
        "every message tried again after the flush was tried",
        || {
            let lines = inst.log_lines();
            let mut first_after: std::collections::HashMap<&str, usize> = Default::default();
            let mut again = std::collections::HashSet::new();
            for (i, l) in lines.iter().enumerate().skip(flushed_at) {
                let (true, Some(id)) = (deferred(l), l.queue_id()) else {
                    continue;
                };
                match first_after.get(id) {
                    None => {
                        first_after.insert(id, i);
                    }
                    Some(_) => {
                        again.insert(id);
                    }
                }
            }
            if again.len() == N {
                Ok(())
            } else {
                Err(format!(
                    "{} of {N} tried after the flush, {} of them tried again since",
                    first_after.len(),
                    again.len()
                ))
            }
        },
    );
}

fn distinct_ids<'a>(lines: impl Iterator<Item = &'a support::LogLine>) -> usize {
    lines
        .filter_map(|l| l.queue_id())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// The deferred queue's hash directories are re-made by hand as root with
/// mode 0700 (unreadable for the queue manager), and fixed with `chown` a
/// few seconds later; then held mail is released into them. It goes out
/// at the next deferred scan (`postkick qmgr D`), since the queue
/// manager can read the directories again: neither a failed look into a
/// directory nor a failed inotify watch may leave them out of the scans.
fn released_into_hash_directories_fixed_by_hand_goes_out(q: Qmgr) {
    let inst = Instance::start(
        opts("defdirs", q)
            // Postfix's qmgr ends at the unreadable directory (fatal:
            // scan_dir_push) and master starts it again: expected here.
            .main_cf("service_throttle_time", "1s")
            .fail_fast(false),
    );
    let ids: Vec<String> = (0..4).map(|i| held(&inst, &format!("dirs{i}"))).collect();
    let deferred = inst.spool().join("deferred");
    for e in std::fs::read_dir(&deferred).expect("read deferred") {
        let e = e.expect("deferred entry");
        if e.path().is_dir() {
            std::fs::remove_dir_all(e.path()).expect("remove a hash directory");
        }
    }
    let hex = "0123456789ABCDEF";
    for c in hex.chars() {
        let dir = deferred.join(c.to_string());
        std::fs::create_dir(&dir).expect("mkdir hash directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    // Several deferred scans (one a second) find them unreadable.
    std::thread::sleep(Duration::from_secs(3));
    for c in hex.chars() {
        chown(
            deferred.join(c.to_string()),
            Some(sys::uid_of("postfix")),
            None,
        )
        .expect("chown");
    }
    inst.postsuper(&["-H", "ALL"]);
    // A deferred scan now (and a new Postfix qmgr, whose predecessor
    // ended at the unreadable directory).
    inst.postkick_qmgr("D");
    for id in &ids {
        inst.wait_removed(id);
        inst.check(
            delivered(&inst, id),
            &format!("{id} delivered after the release"),
        );
    }
}
