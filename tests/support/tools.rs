//! The tools an administrator reads a Postfix with, run against an
//! instance: pflogsumm (its "Grand Totals" and detail sections),
//! prometheus-postfix-exporter (started on the instance's maillog and
//! showq socket, scraped over HTTP on 127.0.0.1), and a small JSON reader
//! for `postqueue -j`. All of them are Debian packages that
//! .ci/setup-postfix installs; a missing one fails the test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{sys, Instance};

pub const PFLOGSUMM: &str = "/usr/sbin/pflogsumm";
pub const EXPORTER: &str = "/usr/bin/prometheus-postfix-exporter";
pub const QSHAPE: &str = "/usr/sbin/qshape";
pub const POSTCAT: &str = "/usr/sbin/postcat";
pub const POSTLOG: &str = "/usr/sbin/postlog";

/// Panics unless every tool is installed.
pub fn require_tools() {
    let missing: Vec<&str> = [PFLOGSUMM, EXPORTER, QSHAPE, POSTCAT, POSTLOG]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        panic!(
            "the administrator's tools are not installed: run .ci/setup-postfix as root (missing: {})",
            missing.join(", ")
        );
    }
}

// ---- pflogsumm -------------------------------------------------------------------

/// `pflogsumm FILE`: the report, as text.
pub fn pflogsumm(log: &Path) -> String {
    let out = Command::new(PFLOGSUMM)
        .arg(log)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PFLOGSUMM}: {e}"));
    assert!(
        out.status.success(),
        "pflogsumm {} failed: {}",
        log.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The numbers of pflogsumm's "Grand Totals" section, by label:
/// `received`, `delivered`, `forwarded`, `deferred`, `deferrals` (from
/// "deferred (N deferrals)"), `bounced`, `rejected`, `bytes received`...
pub fn grand_totals(report: &str) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    let mut in_totals = false;
    for line in report.lines() {
        if line.trim() == "Grand Totals" {
            in_totals = true;
            continue;
        }
        if !in_totals {
            continue;
        }
        if line.contains("Traffic Summary") {
            break;
        }
        let t = line.trim();
        let Some((num, rest)) = t.split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(n) = num.parse::<u64>() else {
            continue;
        };
        let (label, extra) = match rest.split_once('(') {
            Some((l, x)) => (l.trim(), Some(x)),
            None => (rest.trim(), None),
        };
        totals.insert(label.to_string(), n);
        if let Some(x) = extra.and_then(|x| x.strip_suffix(" deferrals)")) {
            if let Ok(d) = x.trim().parse::<u64>() {
                totals.insert("deferrals".to_string(), d);
            }
        }
    }
    totals
}

/// One of pflogsumm's nested detail sections (e.g. "message deferral
/// detail"): `(group, total)` for each `  group (total: N)` line, and the
/// section's text.
pub fn detail_section(report: &str, heading: &str) -> (BTreeMap<String, u64>, String) {
    let mut groups = BTreeMap::new();
    let mut text = String::new();
    let mut lines = report.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != heading {
            continue;
        }
        // the underline, then the groups until an empty line
        lines.next();
        for l in lines.by_ref() {
            if l.trim().is_empty() {
                break;
            }
            text.push_str(l);
            text.push('\n');
            if let Some((group, rest)) = l.trim().split_once(" (total: ") {
                if let Ok(n) = rest.trim_end_matches(')').parse::<u64>() {
                    groups.insert(group.to_string(), n);
                }
            }
        }
        break;
    }
    (groups, text)
}

// ---- prometheus-postfix-exporter ----------------------------------------------

/// A prometheus-postfix-exporter reading one instance's maillog and showq
/// socket, listening on a free port of 127.0.0.1. Dropping it kills it (by
/// its pid: it is our child).
pub struct Exporter {
    child: Child,
    pub port: u16,
    pub log_path: PathBuf,
}

impl Exporter {
    /// Starts the exporter on `inst`'s maillog (which must exist: the
    /// exporter follows it from its end) and public/showq, and waits until
    /// /metrics answers.
    pub fn start(inst: &Instance) -> Exporter {
        require_tools();
        let port = sys::free_port();
        let log_path = inst.root.join("log/exporter.log");
        let log = std::fs::File::create(&log_path).expect("create exporter log");
        let child = Command::new(EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--postfix.logfile_path={}",
                inst.maillog_path().display()
            ))
            .arg(format!(
                "--postfix.showq_path={}",
                inst.spool().join("public/showq").display()
            ))
            .arg("--log.unsupported")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup exporter log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {EXPORTER}: {e}"));
        let mut exporter = Exporter {
            child,
            port,
            log_path,
        };
        let start = Instant::now();
        loop {
            if exporter.metrics().is_ok() {
                return exporter;
            }
            if let Ok(Some(status)) = exporter.child.try_wait() {
                inst.fail(&format!(
                    "prometheus-postfix-exporter exited ({status}): {}",
                    exporter.log()
                ));
            }
            if start.elapsed() > inst.opts.timeout {
                inst.fail(&format!(
                    "prometheus-postfix-exporter did not answer on 127.0.0.1:{port}: {}",
                    exporter.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the exporter printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Scrapes /metrics.
    pub fn metrics(&self) -> Result<Metrics, String> {
        http_get(self.port, "/metrics").map(|body| Metrics::parse(&body))
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1; the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("HTTP answer {head:?}"));
    }
    Ok(body.to_string())
}

/// Prometheus text exposition: series (`name{labels}` as written) to value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut m = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    m.insert(series.to_string(), v);
                }
            }
        }
        Metrics(m)
    }

    /// One series, e.g. `postfix_qmgr_messages_removed_total` or
    /// `postfix_unsupported_log_entries_total{service="qmgr"}`; 0 if absent
    /// (the exporter shows a labelled series only once it is non-zero).
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series of metric `name`, whatever its labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.as_str() == name
                    || k.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// `after - self` for every series of `after` (counters only grow).
    pub fn delta(&self, after: &Metrics) -> Metrics {
        Metrics(
            after
                .0
                .iter()
                .map(|(k, v)| (k.clone(), v - self.get(k)))
                .collect(),
        )
    }
}

// ---- JSON, for postqueue -j ---------------------------------------------------

/// A JSON value (what `postqueue -j` writes: objects, arrays, strings,
/// numbers, booleans).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    /// Parses one JSON text (with nothing but white space after it).
    pub fn parse(text: &str) -> Result<Json, String> {
        let b = text.as_bytes();
        let mut pos = 0;
        let v = parse_value(b, &mut pos)?;
        skip_ws(b, &mut pos);
        if pos != b.len() {
            return Err(format!("trailing bytes at {pos} in {text:?}"));
        }
        Ok(v)
    }

    /// A member of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.get(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }
}

fn skip_ws(b: &[u8], pos: &mut usize) {
    while *pos < b.len() && b[*pos].is_ascii_whitespace() {
        *pos += 1;
    }
}

fn parse_value(b: &[u8], pos: &mut usize) -> Result<Json, String> {
    skip_ws(b, pos);
    let Some(&c) = b.get(*pos) else {
        return Err("unexpected end".into());
    };
    match c {
        b'{' => {
            *pos += 1;
            let mut m = BTreeMap::new();
            skip_ws(b, pos);
            if b.get(*pos) == Some(&b'}') {
                *pos += 1;
                return Ok(Json::Obj(m));
            }
            loop {
                skip_ws(b, pos);
                let Json::Str(k) = parse_value(b, pos)? else {
                    return Err(format!("object key expected at {pos}"));
                };
                skip_ws(b, pos);
                if b.get(*pos) != Some(&b':') {
                    return Err(format!("':' expected at {pos}"));
                }
                *pos += 1;
                let v = parse_value(b, pos)?;
                m.insert(k, v);
                skip_ws(b, pos);
                match b.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b'}') => {
                        *pos += 1;
                        return Ok(Json::Obj(m));
                    }
                    _ => return Err(format!("',' or '}}' expected at {pos}")),
                }
            }
        }
        b'[' => {
            *pos += 1;
            let mut a = Vec::new();
            skip_ws(b, pos);
            if b.get(*pos) == Some(&b']') {
                *pos += 1;
                return Ok(Json::Arr(a));
            }
            loop {
                a.push(parse_value(b, pos)?);
                skip_ws(b, pos);
                match b.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b']') => {
                        *pos += 1;
                        return Ok(Json::Arr(a));
                    }
                    _ => return Err(format!("',' or ']' expected at {pos}")),
                }
            }
        }
        b'"' => {
            *pos += 1;
            let mut s = Vec::new();
            loop {
                let Some(&c) = b.get(*pos) else {
                    return Err("unterminated string".into());
                };
                *pos += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        let Some(&e) = b.get(*pos) else {
                            return Err("unterminated escape".into());
                        };
                        *pos += 1;
                        match e {
                            b'n' => s.push(b'\n'),
                            b't' => s.push(b'\t'),
                            b'r' => s.push(b'\r'),
                            b'b' => s.push(8),
                            b'f' => s.push(12),
                            b'u' => {
                                let hex = b
                                    .get(*pos..*pos + 4)
                                    .and_then(|h| std::str::from_utf8(h).ok())
                                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                                    .ok_or("bad \\u escape")?;
                                *pos += 4;
                                let ch = char::from_u32(hex).unwrap_or('?');
                                let mut buf = [0u8; 4];
                                s.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            }
                            other => s.push(other),
                        }
                    }
                    other => s.push(other),
                }
            }
            Ok(Json::Str(String::from_utf8_lossy(&s).into_owned()))
        }
        b't' if b[*pos..].starts_with(b"true") => {
            *pos += 4;
            Ok(Json::Bool(true))
        }
        b'f' if b[*pos..].starts_with(b"false") => {
            *pos += 5;
            Ok(Json::Bool(false))
        }
        b'n' if b[*pos..].starts_with(b"null") => {
            *pos += 4;
            Ok(Json::Null)
        }
        _ => {
            let start = *pos;
            while *pos < b.len()
                && matches!(b[*pos], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                *pos += 1;
            }
            std::str::from_utf8(&b[start..*pos])
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .map(Json::Num)
                .ok_or_else(|| format!("bad value at {start}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_postqueue_j_lines() {
        let v = Json::parse(r#"{"queue_name": "deferred", "queue_id": "4A1", "arrival_time": 1764, "message_size": 523, "forced_expire": false, "sender": "s@x", "recipients": [{"address": "u@closed.example", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:2: Connection refused \"q\" \u00e9"}]}"#).unwrap();
        assert_eq!(v.get("queue_id").and_then(Json::as_str), Some("4A1"));
        let r = &v.get("recipients").unwrap().as_array()[0];
        assert_eq!(
            r.get("delay_reason").and_then(Json::as_str),
            Some("connect to 127.0.0.1[127.0.0.1]:2: Connection refused \"q\" é")
        );
        assert_eq!(v.get("forced_expire"), Some(&Json::Bool(false)));
    }

    #[test]
    fn reads_pflogsumm_totals() {
        let r = "Grand Totals\n------------\nmessages\n\n      6   received\n      9   delivered\n      2   deferred  (3 deferrals)\n      2   bounced\n      0   rejected (0%)\n\n   3082   bytes received\n\nPer-Hour Traffic Summary\n      7   x\n";
        let t = grand_totals(r);
        assert_eq!(t["received"], 6);
        assert_eq!(t["delivered"], 9);
        assert_eq!(t["deferred"], 2);
        assert_eq!(t["deferrals"], 3);
        assert_eq!(t["rejected"], 0);
        assert_eq!(t["bytes received"], 3082);
        assert!(!t.contains_key("x"));
    }

    #[test]
    fn reads_metrics() {
        let m = Metrics::parse("# HELP x\nfoo 3\nbar{a=\"1\"} 2\nbar{a=\"2\"} 5\nbarn 7\n");
        assert_eq!(m.get("foo"), 3.0);
        assert_eq!(m.sum("bar"), 7.0);
        assert_eq!(m.get("bar{a=\"3\"}"), 0.0);
    }
}
