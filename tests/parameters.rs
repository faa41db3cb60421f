//! Every parameter Postfix 3.7's qmgr reads (`rqmgr::config::table`): the
//! names and defaults are Postfix's (`postconf -d`), rqmgr's own defaults
//! agree with them, and the man page says what rqmgr does with each.

#[allow(unused_macros)]
mod support;

use rqmgr::config::table::{QMGR_PARAMETERS, TRANSPORT_SUFFIXES};
use rqmgr::config::{MainCf, Params};
use std::path::Path;
use std::process::Command;

fn postconf_d(names: &[String]) -> Vec<String> {
    support::require_postfix();
    let out = Command::new("/usr/sbin/postconf")
        .arg("-d")
        .arg("-h")
        .args(names)
        .output()
        .expect("run postconf -d");
    assert!(out.status.success(), "postconf -d failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn names_and_defaults_are_postfixs() {
    let names: Vec<String> = QMGR_PARAMETERS.iter().map(|p| p.name.to_string()).collect();
    let defaults = postconf_d(&names);
    assert_eq!(defaults.len(), names.len());
    for (p, d) in QMGR_PARAMETERS.iter().zip(&defaults) {
        assert_eq!(p.default, d, "postconf -d {}", p.name);
    }
    let per_transport: Vec<String> = TRANSPORT_SUFFIXES
        .iter()
        .map(|(suffix, _)| format!("smtp{suffix}"))
        .collect();
    for ((_, fallback), d) in TRANSPORT_SUFFIXES.iter().zip(postconf_d(&per_transport)) {
        assert_eq!(d, format!("${fallback}"));
    }
}

#[test]
fn rqmgrs_defaults_are_postfixs() {
    let read = |text: &str| {
        let mut cf = MainCf::parse(text, Path::new("main.cf")).expect("main.cf");
        let (p, _) = Params::read(&mut cf).expect("parameters");
        let smtp = p.transport(&mut cf, "smtp").expect("smtp").0;
        let local = p.transport(&mut cf, "local").expect("local").0;
        (p, smtp, local)
    };
    let base = "myhostname = host.example\n";
    let mut explicit = base.to_string();
    for p in QMGR_PARAMETERS {
        explicit.push_str(&format!("{} = {}\n", p.name, p.default));
    }
    for (suffix, fallback) in TRANSPORT_SUFFIXES {
        explicit.push_str(&format!("smtp{suffix} = ${fallback}\n"));
    }
    assert_eq!(read(base), read(&explicit));
}

#[test]
fn the_man_page_names_each_parameter() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/rqmgr.8"))
        .expect("man/rqmgr.8");
    for p in QMGR_PARAMETERS {
        assert!(man.contains(p.name), "man/rqmgr.8 does not name {}", p.name);
    }
}
