//! A full disk: the queue directory is a small tmpfs
//! ([`Opts::spool_tmpfs`]) that fills up during a drain and during a
//! flush. Mail that needs no room (discard) keeps being delivered; mail
//! that must be deferred stays queued, whole; once there is room again,
//! `postqueue -f` delivers everything exactly once, and nothing is left in
//! any queue or in corrupt/.
//!
//! Where the queue manager itself hits the full disk (the hashed
//! subdirectory `deferred/X` cannot be made: no inode left), Postfix's qmgr
//! ends with `fatal: qmgr_active_defer: rename ID from active to deferred:
//! No space left on device` and master starts it again, over and over until
//! there is room; rqmgr logs the same text as a warning, keeps the message
//! in incoming, due when its deferral would have been, and keeps running
//! (man/rqmgr.8, DIFFERENCES).

#[macro_use]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Instance, LogLine, Opts, Qmgr};

dropin_tests!(disk_full_during_a_drain, disk_full_during_a_flush);

const NO_SPACE: &str = "No space left on device";

/// Mail to `down.example` goes to a closed port (deferred) until the test
/// points the route at smtp-sink.
fn opts(name: &str, q: Qmgr) -> Opts {
    Opts::new(name, q)
        .spool_tmpfs("8m")
        .transport("down.example", "smtp:[127.0.0.1]:{closed_port}")
        // smtpd wants 1.5 x message_size_limit free in the queue (10 MB
        // by default) before it takes mail.
        .main_cf("message_size_limit", "1048576")
        .main_cf("service_throttle_time", "1s")
        // Postfix's qmgr ends with a fatal error on the full disk, and
        // master logs its exit: expected here.
        .fail_fast(false)
        .timeout(Duration::from_secs(60))
}

/// Submits `n` messages to `rcpt_fmt` (with `{i}`), each with its own
/// token; returns (queue id, token) pairs.
fn submit(inst: &Instance, n: usize, rcpt_fmt: &str, what: &str) -> Vec<(String, String)> {
    let from = inst.local_addr("sender");
    let mut smtp = inst.smtp();
    let mut out = Vec::new();
    for i in 0..n {
        let token = inst.unique_token(what);
        let rcpt = rcpt_fmt.replace("{i}", &i.to_string());
        let text = inst.message_text(&from, &[&rcpt], what, &token);
        let id = smtp
            .send(&from, &[&rcpt], &text)
            .unwrap_or_else(|e| inst.fail(&format!("SMTP submission: {e}")));
        out.push((id, token));
    }
    smtp.quit();
    out
}

/// After room came back: `postqueue -f` every 2 s until the queue is empty
/// (Postfix's qmgr may need several tries: master throttles it after its
/// fatal exits).
fn flush_until_empty(inst: &Instance) {
    let mut last = Instant::now() - Duration::from_secs(10);
    inst.wait_progress("the queue to be empty after room came back", || {
        if inst.queue_is_empty() {
            return Ok(());
        }
        if last.elapsed() > Duration::from_secs(2) {
            inst.postqueue_f();
            last = Instant::now();
        }
        Err(format!("{:?}", inst.queue_listing()))
    });
}

/// Every token at smtp-sink exactly once, complete (the token is the last
/// line of the body); the queue empty, as postqueue -p says, and nothing in
/// corrupt/.
fn check_all_delivered_once(inst: &Instance, msgs: &[(String, String)]) {
    inst.wait_until("smtp-sink to hold every message", || {
        let all = inst.sink.messages();
        msgs.iter()
            .all(|(_, t)| all.iter().any(|m| m.contains(&format!("token: {t}\n"))))
    });
    let all = inst.sink.messages();
    for (id, token) in msgs {
        let copies: Vec<&String> = all
            .iter()
            .filter(|m| m.contains(&format!("token: {token}\n")))
            .collect();
        inst.check(
            copies.len() == 1,
            &format!(
                "{id} ({token}) reached smtp-sink once, {} times",
                copies.len()
            ),
        );
        inst.check(
            copies[0].contains("This is a test message for rqmgr's acceptance tests.\n"),
            &format!("{id}: the copy at smtp-sink is whole: {}", copies[0]),
        );
    }
    inst.check(
        inst.queue_ids("corrupt").is_empty(),
        &format!("nothing in corrupt/: {:?}", inst.queue_listing()),
    );
    let listing = inst.postqueue_p();
    inst.check(
        listing.trim() == "Mail queue is empty",
        &format!("postqueue -p: {listing}"),
    );
}

fn qmgr_fatal(l: &LogLine) -> bool {
    l.is_from("qmgr") && (l.text.starts_with("fatal:") || l.text.starts_with("panic:"))
}

/// A drain hits the full disk: mail that arrived just before the spool
/// filled up (the messages were submitted with no queue manager running,
/// and are put back into incoming after the fill), half to discard(8),
/// half to a destination that is down. The discard mail is delivered
/// while the disk is full. The other half cannot be deferred: the bounce
/// daemon cannot write the defer logs, and the queue manager cannot make
/// the hashed `deferred/X` directory. The queue manager says so in its log;
/// no message is lost or damaged; once there is room again and the
/// destination is back, `postqueue -f` delivers each message once.
fn disk_full_during_a_drain(q: Qmgr) {
    const N: usize = 8;
    let mut inst = Instance::start(
        opts("diskfull-drain", q.clone())
            .qmgr_disabled()
            .in_flow_delay_zero(),
    );
    let down = submit(&inst, N, "d{i}@down.example", "down");
    let discard = submit(&inst, N, "x{i}@discard.example", "discard");
    inst.wait_until("every message in incoming", || {
        inst.queue_ids("incoming").len() == 2 * N
    });
    // Park the finished queue files while master creates the qmgr socket
    // (that needs an inode too), fill the disk, then put them back.
    let parking = inst.spool().join("parking");
    std::fs::create_dir(&parking).expect("mkdir parking");
    for id in inst.queue_ids("incoming") {
        std::fs::rename(inst.spool().join("incoming").join(&id), parking.join(&id))
            .expect("park a queue file");
    }
    inst.enable_qmgr();
    inst.wait_until("a queue manager to run", || !inst.qmgr_pids().is_empty());
    let (bytes, files) = inst.fill_spool();
    let (free_blocks, free_inodes) = inst.spool_free();
    inst.check(
        free_inodes == 0,
        &format!(
            "the spool is full: wrote {bytes} bytes and {files} files; \
             {free_blocks} blocks and {free_inodes} inodes free"
        ),
    );
    // First the mail to the down destination: removing a delivered file
    // would free an inode, and with it room for a `deferred/X`.
    let unpark = |msgs: &[(String, String)]| {
        for (id, _) in msgs {
            std::fs::rename(parking.join(id), inst.spool().join("incoming").join(id))
                .expect("unpark a queue file");
        }
        inst.postkick_qmgr("I");
    };
    unpark(&down);
    // The queue manager says what happened.
    let said = inst.wait_for_line("the queue manager to log the full disk", |l| {
        l.is_from("qmgr") && l.text.contains(NO_SPACE)
    });
    if q == Qmgr::Rqmgr {
        inst.check(
            said.text.starts_with("warning: qmgr_active_defer: rename ")
                && said.text.contains(&format!(
                    " from active to deferred: {NO_SPACE}; moved to incoming instead, due in "
                )),
            &format!("rqmgr warns that it could not defer the message, and where it is: {said}"),
        );
        // Every message to the down destination waits in incoming (or
        // deferred, where a hashed directory already existed); rqmgr runs.
        inst.wait_progress("rqmgr to put the undeliverable mail aside", || {
            let waiting = inst.queue_ids("incoming").len() + inst.queue_ids("deferred").len();
            if waiting == N && inst.queue_ids("active").is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}", inst.queue_listing()))
            }
        });
        inst.check(
            !inst.log_lines().iter().any(qmgr_fatal),
            "rqmgr logged no fatal error",
        );
        inst.check(
            inst.qmgr_pids().len() == 1,
            "rqmgr still runs on the full disk",
        );
    } else {
        inst.check(
            said.text.starts_with("fatal: qmgr_active_defer: rename ")
                && said
                    .text
                    .contains(&format!(" from active to deferred: {NO_SPACE}")),
            &format!("Postfix's qmgr ends on the full disk: {said}"),
        );
    }

    // Discard mail needs no room: it is delivered on the full disk (kicks:
    // master starts Postfix's qmgr again only when it is woken).
    unpark(&discard);
    let mut last = Instant::now();
    inst.wait_progress("the discard mail to be delivered on the full disk", || {
        let lines = inst.log_lines();
        let left = discard
            .iter()
            .filter(|(id, _)| {
                !lines
                    .iter()
                    .any(|l| l.is_removed() && l.queue_id() == Some(id))
            })
            .count();
        if left == 0 {
            return Ok(());
        }
        if last.elapsed() > Duration::from_secs(2) {
            inst.postkick_qmgr("I");
            last = Instant::now();
        }
        Err(format!("{left} not removed yet"))
    });
    for (id, _) in &discard {
        let lines = inst.lines_for(id);
        inst.check(
            lines
                .iter()
                .filter(|l| l.is_delivery() && l.status() == Some("sent"))
                .count()
                == 1,
            &format!("{id}: delivered once by discard: {lines:?}"),
        );
    }
    // Nothing lost while the disk is full: every message to the down
    // destination is still in some queue.
    let listing = inst.queue_listing();
    for (id, _) in &down {
        inst.check(
            listing
                .iter()
                .any(|(q, ids)| q != "corrupt" && ids.contains(id)),
            &format!("{id} is still queued on the full disk: {listing:?}"),
        );
    }

    // Room again, and the destination back.
    inst.unfill_spool();
    inst.set_transport("down.example", "smtp:[127.0.0.1]:{sink_port}");
    flush_until_empty(&inst);
    check_all_delivered_once(&inst, &down);
    for (id, _) in &down {
        let sent = inst
            .lines_for(id)
            .iter()
            .filter(|l| l.is_delivery() && l.status() == Some("sent"))
            .count();
        inst.check(
            sent == 1,
            &format!("{id}: one status=sent line, saw {sent}"),
        );
    }
    inst.stop();
}

/// A flush hits the full disk: deferred mail (destination down) is flushed
/// while something else keeps taking every inode and block that becomes
/// free, so that the defer logs of the new attempt cannot be written. No
/// message is lost or damaged: each is back in deferred after the flush;
/// once there is room and the destination is back, `postqueue -f` delivers
/// each once.
fn disk_full_during_a_flush(q: Qmgr) {
    const N: usize = 12;
    let mut inst = Instance::start(opts("diskfull-flush", q.clone()));
    let down = submit(&inst, N, "d{i}@down.example", "down");
    inst.wait_until("every message deferred", || {
        inst.queue_ids("deferred").len() == N && inst.queue_ids("active").is_empty()
    });
    let mark = inst.log_lines().len();

    // A filler that keeps the spool full: whatever the queue manager frees
    // (a removed defer log), it takes at once.
    inst.fill_spool();
    let stop = Arc::new(AtomicBool::new(false));
    let filler = {
        let dir = inst.spool_filler();
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut f) = std::fs::File::create(dir.join(format!("again{n}"))) {
                    n += 1;
                    while f.write_all(&[b'x'; 4096]).is_ok() {}
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    inst.postqueue_f();
    // Each message was tried again and is back in deferred, whole.
    inst.wait_progress("every message tried during the flush", || {
        let lines = inst.log_lines();
        let tried = down
            .iter()
            .filter(|(id, _)| {
                lines[mark..]
                    .iter()
                    .any(|l| l.queue_id() == Some(id) && l.is_queue_active())
            })
            .count();
        if tried == N
            && inst.queue_ids("active").is_empty()
            && inst.queue_ids("deferred").len() + inst.queue_ids("incoming").len() == N
        {
            Ok(())
        } else {
            Err(format!("{tried} tried; {:?}", inst.queue_listing()))
        }
    });
    stop.store(true, Ordering::Relaxed);
    filler.join().expect("filler thread");
    inst.check(
        inst.queue_ids("corrupt").is_empty(),
        &format!(
            "nothing in corrupt/ after the flush: {:?}",
            inst.queue_listing()
        ),
    );
    if q == Qmgr::Rqmgr {
        inst.check(
            !inst.log_lines().iter().any(qmgr_fatal),
            "rqmgr logged no fatal error",
        );
    }
    let failures = inst.log_lines()[mark..]
        .iter()
        .filter(|l| l.text.contains(NO_SPACE) || l.text.contains("service failure"))
        .count();
    eprintln!("dropin_diskfull: {failures} log lines about the full disk during the flush");

    inst.unfill_spool();
    inst.set_transport("down.example", "smtp:[127.0.0.1]:{sink_port}");
    flush_until_empty(&inst);
    check_all_delivered_once(&inst, &down);
    inst.stop();
}
