//! rqmgr's parsers on bytes that real Postfix daemons wrote, taken from two
//! private instances:
//!
//! - queue files as cleanup(8) writes them (one recipient, many, VERP,
//!   8-bit sender, extracted recipients, DSN options, SMTP-submitted),
//!   copied from incoming/ while no queue manager runs, and a deferred file
//!   with a done recipient after Postfix's qmgr delivered part of it, with
//!   its defer logfile: rqmgr's reader reads each to the end and finds the
//!   recipients cleanup wrote;
//! - everything Postfix's own qmgr exchanged with trivial-rewrite, the
//!   delivery agents, bounce/defer/trace and flush, through recording
//!   proxies ([`support::proxy`]): every byte a peer sent parses as complete
//!   attribute lists (an announcement, then replies), nothing left over;
//! - rqmgr's status socket answers (`status`, `explain`, `backlog`) with a
//!   backlog of deferred mail and mail behind a slow sink: each parses as
//!   the `Answer` the client reads; defer logfiles parse into records.
//!
//! With RQMGR_SEEDS_OUT=DIR the test also writes these bytes as fuzz seeds
//! to DIR/<target>/real-* in each target's input layout (fuzz/seeds/capture
//! runs it so); without it, it only checks.

mod support;

use rqmgr::ipc::attr::AttrList;
use rqmgr::qfile::{read_batch, Envelope, ReadOptions, Recipient};
use rqmgr::status::{deferlog, Answer};
use std::collections::BTreeSet;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::proxy::RecordingProxy;
use support::{Instance, Opts, Qmgr, HOSTNAME};

/// Where seeds go (RQMGR_SEEDS_OUT), if anywhere.
struct Seeds {
    dir: Option<PathBuf>,
    /// Root paths of the instances, replaced by a fixed text in seeds.
    roots: Vec<String>,
}

impl Seeds {
    fn from_env() -> Seeds {
        Seeds {
            dir: std::env::var_os("RQMGR_SEEDS_OUT").map(PathBuf::from),
            roots: Vec::new(),
        }
    }

    fn write(&self, target: &str, name: &str, bytes: &[u8]) {
        let Some(dir) = &self.dir else { return };
        let dir = dir.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        assert!(bytes.len() <= 64 << 10, "seed {target}/{name} over 64 KiB");
        std::fs::write(dir.join(format!("real-{name}")), bytes).expect("write seed");
    }

    /// `text` with each instance's ROOT replaced by `/tmp/rqmgr-seeds`.
    fn normalize(&self, text: &str) -> String {
        let mut t = text.to_string();
        for r in &self.roots {
            t = t.replace(r.as_str(), "/tmp/rqmgr-seeds");
        }
        t
    }
}

/// Reads a whole queue file as the daemon does, batch by batch.
fn read_queue_file(bytes: &[u8], queue: &str) -> Vec<Recipient> {
    let opts = ReadOptions {
        queue,
        verp_filter: b"-=+",
        confirm_delay_cleared: false,
    };
    let mut env = Envelope::default();
    let mut all = Vec::new();
    for _ in 0..100 {
        read_batch(
            Cursor::new(bytes),
            bytes.len() as u64,
            "incoming/ID",
            "ID",
            &mut env,
            10,
            &opts,
            &mut all,
        )
        .unwrap_or_else(|_| panic!("rqmgr rejected a queue file cleanup wrote"));
        if env.rcpt_offset == 0 {
            return all;
        }
    }
    panic!("the batches of a real queue file do not end");
}

/// The attribute lists in `bytes`, which must be whole lists.
fn lists(bytes: &[u8], what: &str) -> Vec<AttrList> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match AttrList::parse(rest) {
            Ok(Some((list, used))) => {
                out.push(list);
                rest = &rest[used..];
            }
            other => panic!("{what}: bytes left that are no whole list ({other:?}): {rest:?}"),
        }
    }
    out
}

/// Waits until queue file `id` in incoming is complete (cleanup sets the
/// owner-execute bit last) and returns its bytes.
fn incoming_file(inst: &Instance, id: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    inst.wait_until(&format!("{id} complete in incoming"), || {
        let Some(p) = inst.queue_file("incoming", id) else {
            return false;
        };
        let done = std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o100 != 0);
        if done {
            bytes = std::fs::read(&p).expect("read queue file");
        }
        done
    });
    bytes
}

/// A message with Message-ID `<token@HOSTNAME>` and free headers.
fn text_with(headers: &str, token: &str, body: &str) -> String {
    format!("{headers}Subject: seed {token}\nMessage-ID: <{token}@{HOSTNAME}>\n\n{body}token: {token}\n")
}

#[test]
fn real_postfix_bytes_parse() {
    let mut seeds = Seeds::from_env();
    queue_files_and_peer_replies(&mut seeds);
    status_answers(&mut seeds);
}

/// The services Postfix's qmgr talks to, each behind a proxy
/// `rec-<service>`: (proxy, the real service).
const PROXIED: &[(&str, &str)] = &[
    ("rec-rewrite", "rewrite"),
    ("rec-bounce", "bounce"),
    ("rec-defer", "defer"),
    ("rec-trace", "trace"),
    ("rec-flush", "flush"),
    ("rec-smtp", "smtp"),
    ("rec-error", "error"),
    ("rec-discard", "discard"),
    ("rec-local", "local"),
];

fn queue_files_and_peer_replies(seeds: &mut Seeds) {
    let mut args = Vec::new();
    for name in ["rewrite", "bounce", "defer", "trace", "flush"] {
        args.push("-o".to_string());
        args.push(format!("{name}_service_name=rec-{name}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut inst = Instance::start(
        Opts::new("seeds-qfile", Qmgr::PostfixQmgr)
            .qmgr_disabled()
            .in_flow_delay_zero()
            .qmgr_args(&args)
            .transport("rec-sink.example", "rec-smtp:[127.0.0.1]:{sink_port}")
            .transport("rec-closed.example", "rec-smtp:[127.0.0.1]:{closed_port}")
            .transport("rec-error.example", "rec-error:5.1.1 mailbox unavailable")
            .transport("rec-discard.example", "rec-discard:")
            .transport(HOSTNAME, "rec-local:")
            .timeout(Duration::from_secs(60)),
    );
    seeds.roots.push(inst.root.display().to_string());
    let owner = support::sys::uid_of("postfix");
    let proxies: Vec<RecordingProxy> = PROXIED
        .iter()
        .map(|(name, target)| RecordingProxy::serve(&inst.spool(), name, target, owner))
        .collect();

    // Queue files, while no queue manager runs. (name, control byte of the
    // qfile_read seed, id, undone recipients cleanup wrote.)
    let from = inst.local_addr("sender");
    let mut files: Vec<(&str, u8, String, usize)> = Vec::new();
    let t = inst.unique_token("one");
    let id = inst.sendmail(&from, &["x@rec-sink.example"], "one", &t);
    files.push(("one-rcpt", 0x0a, id, 1));
    let many: Vec<String> = (0..25)
        .map(|i| format!("m{i:02}@rec-sink.example"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let t = inst.unique_token("many");
    let id = inst.sendmail(&from, &many, "many", &t);
    files.push(("many-rcpts", 0x04, id, 25));
    let alice = inst.local_addr("alice");
    let t = inst.unique_token("partial");
    let partial = inst.sendmail(&from, &[&alice, "y@rec-closed.example"], "partial", &t);
    files.push(("partial", 0x00, partial.clone(), 2));
    // SMTPUTF8: cleanup sees the 8-bit sender (smtputf8_autodetect_classes
    // names sendmail by default) and flags the file.
    let t = inst.unique_token("utf8");
    let utf8_from = format!("jörg.müller@{HOSTNAME}");
    let text = text_with(
        &format!("From: <{utf8_from}>\nTo: <bob@{HOSTNAME}>\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n"),
        &t,
        "Grüße aus Köln, 8-bit body.\n",
    );
    let id = inst.sendmail_with(&[], &utf8_from, &[&inst.local_addr("bob")], &text, &t);
    files.push(("utf8-sender", 0x03, id, 1));
    let t = inst.unique_token("verp");
    let list = format!("owner-list@{HOSTNAME}");
    let text = text_with(&format!("From: <{list}>\n"), &t, "A VERP list message.\n");
    let id = inst.sendmail_with(
        &["-XV"],
        &list,
        &[
            "v1@rec-sink.example",
            "v2@rec-sink.example",
            "v3@rec-discard.example",
        ],
        &text,
        &t,
    );
    files.push(("verp", 0x02, id, 3));
    let t = inst.unique_token("extract");
    let text = text_with(
        "To: x1@rec-sink.example\nCc: \"Doe, John\" <x2@rec-sink.example>\nBcc: x3@rec-discard.example\n",
        &t,
        "Recipients from the headers (sendmail -t).\n",
    );
    let id = inst.sendmail_with(&["-t"], &from, &[], &text, &t);
    files.push(("extracted", 0x01, id, 3));
    let t = inst.unique_token("dsn");
    // Local delivery with NOTIFY=SUCCESS: a success notice (trace(8)).
    let text = text_with("", &t, "DSN success and an envelope id.\n");
    let bob = inst.local_addr("bob");
    let id = inst.sendmail_with(
        &["-N", "success", "-V", "seed-envid-1"],
        &from,
        &[&bob],
        &text,
        &t,
    );
    files.push(("dsn-success", 0x43, id, 1));
    let t = inst.unique_token("bounce");
    let text = text_with("", &t, "This one bounces.\n");
    let id = inst.sendmail_with(
        &["-N", "failure"],
        &from,
        &["e@rec-error.example"],
        &text,
        &t,
    );
    files.push(("to-bounce", 0x83, id, 1));
    let t = inst.unique_token("smtp");
    let id = inst.send_smtp(
        &from,
        &["s@rec-discard.example", "\"john doe\"@rec-discard.example"],
        "smtp",
        &t,
    );
    files.push(("smtp-submitted", 0xc5, id, 2));

    for (name, ctl, id, rcpts) in &files {
        let bytes = incoming_file(&inst, id);
        let got = read_queue_file(&bytes, "incoming");
        inst.check(
            got.len() == *rcpts,
            &format!(
                "{name}: rqmgr reads {} recipients, cleanup wrote {rcpts}",
                got.len()
            ),
        );
        let mut seed = vec![*ctl];
        seed.extend_from_slice(&bytes);
        seeds.write("qfile_read", name, &seed);
    }

    // Postfix's qmgr delivers through the proxies: all but the partial
    // message leave the queue (the bounce and the success notice too); the
    // partial message is deferred with alice done.
    inst.enable_qmgr();
    for (_, _, id, _) in files.iter().filter(|f| f.2 != partial) {
        inst.wait_removed(id);
    }
    inst.wait_until("only the partial message left, deferred", || {
        let q = inst.queue_listing();
        q.len() == 1 && q.get("deferred") == Some(&vec![partial.clone()])
    });
    inst.wait_until(
        "the bounce and the success notice in the sender's mailbox",
        || {
            inst.mailbox("sender")
                .lines()
                .filter(|l| l.starts_with("From "))
                .count()
                >= 2
        },
    );
    let deferred = std::fs::read(inst.queue_file("deferred", &partial).unwrap()).unwrap();
    let got = read_queue_file(&deferred, "deferred");
    inst.check(
        got.len() == 1 && got[0].address() == b"y@rec-closed.example",
        &format!("the deferred file has one recipient left, alice is done: {got:?}"),
    );
    seeds.write(
        "qfile_read",
        "deferred-done",
        &[&[0x01][..], &deferred].concat(),
    );
    let log = std::fs::read(inst.queue_file("defer", &partial).unwrap()).unwrap();
    let recs = deferlog::last_per_recipient(deferlog::parse(&log));
    inst.check(
        recs.len() == 1 && recs[0].recipient == "y@rec-closed.example",
        &format!("the defer logfile names the deferred recipient: {recs:?}"),
    );
    seeds.write("status_input", "deferlog-partial", &log);

    let main_cf = std::fs::read_to_string(inst.etc().join("main.cf")).unwrap();
    seeds.write(
        "main_cf",
        "instance-main.cf",
        seeds.normalize(&main_cf).as_bytes(),
    );
    let c = inst.config_dir();
    for (name, flag) in [("postconf-d.cf", "-d"), ("postconf-n.cf", "-n")] {
        let out = std::process::Command::new("/usr/sbin/postconf")
            .args(["-c", &c, flag])
            .output()
            .expect("run postconf");
        inst.check(out.status.success(), &format!("postconf {flag}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let cf = rqmgr::config::MainCf::parse(&text, Path::new("main.cf"));
        inst.check(
            cf.is_ok(),
            &format!("postconf {flag} output parses as main.cf"),
        );
        seeds.write("main_cf", name, seeds.normalize(&text).as_bytes());
    }
    inst.stop();

    // Every byte a peer sent is whole attribute lists; the first is its
    // announcement.
    let mut texts: BTreeSet<(Vec<u8>, String)> = BTreeSet::new();
    let mut n_seeds = 0;
    for p in &proxies {
        let conns = p.conns();
        for (i, c) in conns.iter().enumerate() {
            let replies = lists(&c.from_peer, &format!("{} connection {i}", p.name));
            let requests = lists(&c.to_peer, &format!("to {} connection {i}", p.name));
            assert!(
                replies
                    .first()
                    .is_some_and(|l| l.get(0).is_some_and(|(n, _)| n == b"protocol")),
                "{} connection {i} starts with an announcement: {replies:?}",
                p.name
            );
            for l in replies.iter().chain(&requests) {
                for (name, value) in l.pairs() {
                    let keep: &[&[u8]] = &[
                        b"reason",
                        b"status",
                        b"recipient",
                        b"address",
                        b"nexthop",
                        b"sender",
                        b"original_recipient",
                        b"dsn_orig_rcpt",
                        b"msg_stats",
                        b"diag_text",
                    ];
                    let text = seeds.normalize(&String::from_utf8_lossy(value));
                    let seen = texts.iter().filter(|(n, _)| n[..] == *name).count();
                    if keep.contains(&name) && !value.is_empty() && seen < 3 {
                        texts.insert((name.to_vec(), text));
                    }
                }
            }
            // Seeds: the first two connections of each service, what the
            // peer sent (announcement and replies) and, for the first, the
            // queue manager's requests too.
            if i < 2 && !c.from_peer.is_empty() {
                let ctl = [0x3f, 0x07][i];
                let bytes = [&[ctl][..], &c.from_peer[..c.from_peer.len().min(60_000)]].concat();
                seeds.write("attr_parse", &format!("{}-{i}-reply", p.name), &bytes);
                n_seeds += 1;
            }
            if i == 0 && !c.to_peer.is_empty() {
                let bytes = [&[0x00][..], &c.to_peer[..c.to_peer.len().min(60_000)]].concat();
                seeds.write("attr_parse", &format!("{}-{i}-request", p.name), &bytes);
            }
        }
    }
    assert!(n_seeds >= 6, "too few services answered: {n_seeds}");
    // Peer texts: up to three values of each attribute that carries an
    // address, a DSN status or text, a nexthop.
    for (i, (name, t)) in texts.iter().enumerate() {
        let name = String::from_utf8_lossy(name);
        seeds.write("peer_text", &format!("{name}-{i:02}"), t.as_bytes());
    }
}

/// One request on rqmgr's status socket; the raw answer.
fn raw_request(inst: &Instance, line: &str) -> Vec<u8> {
    let path = inst.spool().join(rqmgr::status::SOCKET);
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .unwrap_or_else(|e| inst.fail(&format!("connect {}: {e}", path.display())));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn status_answers(seeds: &mut Seeds) {
    let inst = Instance::start(
        Opts::new("seeds-status", Qmgr::Rqmgr)
            .main_cf("initial_destination_concurrency", "1")
            .slow_sink(4)
            .timeout(Duration::from_secs(60)),
    );
    seeds.roots.push(inst.root.display().to_string());
    let from = inst.local_addr("sender");
    let mut slow = Vec::new();
    for i in 0..3 {
        let t = inst.unique_token(&format!("slow{i}"));
        slow.push(inst.send_smtp(&from, &[&format!("s{i}@slow.example")], "slow", &t));
    }
    let t = inst.unique_token("dead");
    let dead = inst.send_smtp(&from, &["x@closed.example"], "dead", &t);
    let t = inst.unique_token("part");
    let alice = inst.local_addr("alice");
    let part = inst.send_smtp(
        &from,
        &[&alice, "p1@closed.example", "p2@closed.example"],
        "part",
        &t,
    );
    for id in [&dead, &part] {
        inst.wait_until(&format!("{id} deferred"), || {
            inst.queue_ids("deferred").contains(id)
        });
    }
    let mut answers = vec![
        ("status", raw_request(&inst, "status\n")),
        ("backlog", raw_request(&inst, "backlog\n")),
        (
            "explain-deferred",
            raw_request(&inst, &format!("explain {part}\n")),
        ),
        (
            "explain-active",
            raw_request(&inst, &format!("explain {}\n", slow[2])),
        ),
        (
            "explain-unknown",
            raw_request(&inst, "explain ABCDEF0123\n"),
        ),
        ("bad-request", raw_request(&inst, "explain ../x\n")),
    ];
    for (name, bytes) in &answers {
        let a: Result<Answer, _> = serde_json::from_slice(bytes);
        inst.check(
            a.is_ok(),
            &format!(
                "the {name} answer parses as an Answer: {}",
                String::from_utf8_lossy(bytes)
            ),
        );
    }
    for (name, args) in [
        ("cli-status-json", vec!["--json"]),
        ("cli-explain-json", vec!["--json", part.as_str()]),
    ] {
        let command = if name.contains("status") {
            "status"
        } else {
            "explain"
        };
        let out = inst.rqmgr_command(command, &args);
        inst.check(
            out.success(),
            &format!("rqmgr {command} {args:?}: {}", out.stderr),
        );
        let v: Result<serde_json::Value, _> = serde_json::from_str(&out.stdout);
        inst.check(v.is_ok(), &format!("rqmgr {command} --json prints JSON"));
        // What --json prints is the answer's body: in the daemon's
        // envelope (`{"explain": ...}`) it is an Answer again.
        let wrapped = format!("{{\"{command}\":{}}}", out.stdout.trim_end());
        let a: Result<Answer, _> = serde_json::from_str(&wrapped);
        inst.check(
            a.is_ok(),
            &format!("rqmgr {command} --json is an Answer's body: {wrapped}"),
        );
        answers.push((name, out.stdout.into_bytes()));
        let wrapped_name = if command == "status" {
            "cli-status-answer"
        } else {
            "cli-explain-answer"
        };
        answers.push((wrapped_name, wrapped.into_bytes()));
    }
    for (name, bytes) in &answers {
        seeds.write(
            "status_input",
            name,
            seeds.normalize(&String::from_utf8_lossy(bytes)).as_bytes(),
        );
    }
    for id in [&dead, &part] {
        let log = std::fs::read(inst.queue_file("defer", id).unwrap()).unwrap();
        let recs = deferlog::last_per_recipient(deferlog::parse(&log));
        inst.check(
            !recs.is_empty(),
            &format!("the defer logfile of {id} has records"),
        );
        let name = if id == &dead {
            "deferlog-dead"
        } else {
            "deferlog-two"
        };
        seeds.write("status_input", name, &log);
    }
}
