//! Privileges and hostile spool contents: the queue manager runs as
//! mail_owner, does not follow a symbolic link out of the queue directory,
//! and survives a queue directory it should not trust. Checked against
//! rqmgr, Postfix's qmgr and oqmgr; where rqmgr is stricter than Postfix,
//! the test says what each does (man/rqmgr.8 lists the differences).

#[macro_use]
mod support;

use std::os::unix::fs::{chown, symlink};
use std::path::{Path, PathBuf};
use support::{sys, Instance, Opts, Qmgr};

dropin_tests!(
    runs_as_mail_owner,
    symlinked_queue_file_is_not_followed,
    symlinked_hash_directory_is_not_scanned,
    one_letter_file_in_a_queue_does_not_stop_delivery,
);

/// The uids of a process (real, effective, saved, file system).
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|u| {
            u.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The options of these tests: mail to `held.example` arrives on hold.
/// (They never reload: `postfix reload` runs postsuper in the background,
/// which removes symbolic links from the queue.)
fn opts(name: &str, q: Qmgr) -> Opts {
    Opts::new(name, q)
        .transport("held.example", "discard:")
        .main_cf(
            "smtpd_recipient_restrictions",
            "check_recipient_access inline:{held.example=HOLD}",
        )
}

/// A queue file that lives outside the queue directory: mail that arrived
/// on hold, moved from hold to ROOT/outside. Returns its queue id and new
/// path.
fn file_outside(inst: &Instance, what: &str) -> (String, PathBuf) {
    let outside = inst.root.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    let postfix = sys::uid_of("postfix");
    chown(&outside, Some(postfix), None).expect("chown outside");
    let from = inst.local_addr("sender");
    let token = inst.unique_token(what);
    let id = inst.send_smtp(&from, &["x@held.example"], what, &token);
    inst.wait_until("the message on hold", || {
        inst.queue_ids("hold").contains(&id)
    });
    let inside = inst
        .queue_file("hold", &id)
        .unwrap_or_else(|| inst.fail(&format!("{id} is not on hold")));
    let path = outside.join(&id);
    std::fs::rename(&inside, &path).expect("move the queue file outside");
    (id, path)
}

fn delivered(inst: &Instance, id: &str) -> bool {
    inst.lines_for(id)
        .iter()
        .any(|l| l.status() == Some("sent"))
}

/// master.cf runs the queue manager unprivileged: it runs as mail_owner
/// (every uid), and the queue subdirectory it creates is mail_owner's.
fn runs_as_mail_owner(q: Qmgr) {
    let inst = Instance::start(Opts::new("privs", q));
    let from = inst.local_addr("sender");
    let token = inst.unique_token("privs");
    let id = inst.sendmail(&from, &["p@closed.example"], "privs", &token);
    inst.wait_until("the message in deferred", || {
        inst.queue_ids("deferred").contains(&id)
    });
    let postfix = sys::uid_of("postfix");
    let pids = inst.qmgr_pids();
    inst.check(!pids.is_empty(), "a queue manager process");
    for pid in pids {
        let u = uids(pid);
        inst.check(
            u.len() == 4 && u.iter().all(|&x| x == postfix),
            &format!("queue manager {pid} runs as postfix ({postfix}): uids {u:?}"),
        );
    }
    let file = inst.queue_file("deferred", &id).expect("the deferred file");
    let dir = file.parent().expect("its hash directory");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).expect("stat"));
    inst.check(
        owner == postfix,
        &format!("{} is postfix's, not {owner}'s", dir.display()),
    );
}

/// A symbolic link named like a queue file in incoming, to a valid queue
/// file outside the queue directory: not followed (`mail_open_ok`'s
/// lstat: "not a regular file"), the file outside is left alone.
fn symlinked_queue_file_is_not_followed(q: Qmgr) {
    let inst = Instance::start(opts("symfile", q));
    let (id, outside) = file_outside(&inst, "symfile");
    let link = inst.spool().join("incoming").join(&id);
    symlink(&outside, &link).expect("symlink in incoming");
    // A message sent after it starts an incoming scan, and goes through.
    let from = inst.local_addr("sender");
    let token = inst.unique_token("after");
    let after = inst.sendmail(&from, &["a@discard.example"], "after", &token);
    inst.wait_removed(&after);
    let want = format!("warning: incoming/{id}: uid 0: not a regular file");
    inst.wait_for_line("the warning about the link", |l| {
        l.is_from("qmgr") && l.body() == want
    });
    inst.check(!delivered(&inst, &id), "the file outside was not delivered");
    inst.check(outside.exists(), "the file outside is still there");
    inst.check(
        std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
        "the link is left as it was",
    );
}

/// A hash subdirectory of deferred that is a symbolic link to a directory
/// outside the queue directory. Postfix's scan follows it and delivers
/// the queue file it finds there (moving it into the queue); rqmgr logs
/// `deferred/X: symbolic link: not scanned` and leaves it alone.
fn symlinked_hash_directory_is_not_scanned(q: Qmgr) {
    let rqmgr = q == Qmgr::Rqmgr;
    let inst = Instance::start(opts("symdir", q));
    let (id, path) = file_outside(&inst, "symdir");
    let hash = &id[..1];
    let outside_dir = inst.root.join("outside-hash");
    std::fs::create_dir_all(&outside_dir).expect("mkdir");
    chown(&outside_dir, Some(sys::uid_of("postfix")), None).expect("chown");
    let file = outside_dir.join(&id);
    std::fs::rename(&path, &file).expect("move");
    let deferred = inst.spool().join("deferred");
    let hash_dir: &Path = &deferred.join(hash);
    let _ = std::fs::remove_dir(hash_dir);
    symlink(&outside_dir, hash_dir).expect("symlink the hash directory");
    inst.postqueue_f();
    if rqmgr {
        let want = format!("warning: deferred/{hash}: symbolic link: not scanned");
        inst.wait_for_line("the warning about the link", |l| {
            l.is_from("qmgr") && l.body() == want
        });
        let from = inst.local_addr("sender");
        let token = inst.unique_token("after");
        let after = inst.sendmail(&from, &["a@discard.example"], "after", &token);
        inst.wait_removed(&after);
        inst.check(!delivered(&inst, &id), "the file outside was not delivered");
        inst.check(file.exists(), "the file outside is still there");
    } else {
        inst.wait_removed(&id);
        inst.check(
            delivered(&inst, &id),
            "Postfix follows the link and delivers the file outside",
        );
    }
}

/// A one-letter file where a queue's hash subdirectories are. Postfix's
/// queue manager ends at every scan (`fatal: scan_dir_push: open directory
/// incoming/Z: Not a directory`), so no mail moves; rqmgr warns and keeps
/// delivering.
fn one_letter_file_in_a_queue_does_not_stop_delivery(q: Qmgr) {
    let rqmgr = q == Qmgr::Rqmgr;
    let inst = Instance::start(opts("oneletter", q).fail_fast(false));
    let junk = inst.spool().join("incoming").join("Z");
    std::fs::write(&junk, b"junk").expect("write incoming/Z");
    chown(&junk, Some(sys::uid_of("postfix")), None).expect("chown");
    // New mail starts an incoming scan.
    let from = inst.local_addr("sender");
    let token = inst.unique_token("after");
    let after = inst.sendmail(&from, &["a@discard.example"], "after", &token);
    let text = "incoming/Z: Not a directory";
    let line = inst.wait_for_line("the queue manager's line about incoming/Z", |l| {
        l.is_from("qmgr") && l.body().ends_with(text)
    });
    if rqmgr {
        inst.check(
            line.body() == format!("warning: scan_dir_push: open directory {text}"),
            &line.raw,
        );
        inst.wait_removed(&after);
    } else {
        inst.check(
            line.body() == format!("fatal: scan_dir_push: open directory {text}"),
            &line.raw,
        );
    }
}
