//! The defer logfile (`defer/X/QUEUE_ID`) as Postfix's bounce_log reader
//! reads it (`global/bounce_log.c`): records separated by blank lines,
//! new-style `name = value` attributes (`recipient`, `status`, `action`,
//! `reason`, ...), or old-style `<recipient>: text` lines. Outside bytes:
//! anything malformed is skipped, nothing panics.

/// One recipient's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferRecord {
    /// The recipient (`(MAILER-DAEMON)` for the empty address).
    pub recipient: String,
    /// The DSN status (`4.0.0` when absent, as for old-style records).
    pub status: String,
    /// The DSN action (`delayed` when absent).
    pub action: String,
    /// Why (`(description unavailable)` when absent).
    pub reason: String,
}

/// Non-printable bytes as `?`, as Postfix's `printable()` (UTF-8 is kept).
fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| {
            if c.is_control() || c == char::REPLACEMENT_CHARACTER {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[derive(Default)]
struct Partial {
    recipient: Option<String>,
    status: Option<String>,
    action: Option<String>,
    reason: Option<String>,
}

impl Partial {
    fn finish(self) -> DeferRecord {
        let or = |v: Option<String>, d: &str| v.filter(|s| !s.is_empty()).unwrap_or(d.into());
        DeferRecord {
            recipient: or(self.recipient, "(recipient address unavailable)"),
            status: or(self.status, "4.0.0"),
            action: or(self.action, "delayed"),
            reason: or(self.reason, "(description unavailable)"),
        }
    }
}

/// Every record of a defer logfile, in file order.
pub fn parse(data: &[u8]) -> Vec<DeferRecord> {
    let mut out = Vec::new();
    let mut cur: Option<Partial> = None;
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    for raw in data.split(|&b| b == b'\n') {
        if raw.is_empty() {
            if let Some(p) = cur.take() {
                out.push(p.finish());
            }
            continue;
        }
        let line = printable(raw);
        let p = cur.get_or_insert_with(Partial::default);
        if line.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            let Ok((name, value)) = crate::config::split_nameval(&line) else {
                continue;
            };
            let value = value.to_string();
            match name {
                "recipient" => {
                    p.recipient = Some(if value.is_empty() {
                        "(MAILER-DAEMON)".into()
                    } else {
                        value
                    })
                }
                "status" => p.status = Some(value),
                "action" => p.action = Some(value),
                "reason" => p.reason = Some(value),
                _ => {}
            }
        } else if let Some(rest) = line.strip_prefix('<') {
            if let Some(end) = rest.find(">: ") {
                let rcpt = &rest[..end];
                p.recipient = Some(if rcpt.is_empty() {
                    "(MAILER-DAEMON)".into()
                } else {
                    rcpt.to_string()
                });
                p.reason = Some(rest[end + 2..].trim_start().to_string());
            }
        }
    }
    // A last record without its blank line is dropped, as bounce_log_read
    // does at end of file.
    out
}

/// The last record of each recipient, in the order the recipients first
/// appear: the latest reason per recipient.
pub fn last_per_recipient(records: Vec<DeferRecord>) -> Vec<DeferRecord> {
    let mut out: Vec<DeferRecord> = Vec::new();
    for r in records {
        match out.iter_mut().find(|o| o.recipient == r.recipient) {
            Some(o) => *o = r,
            None => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_and_old_style_records() {
        let data = b"recipient=a@x.example\noffset=123\ndsn_orig_rcpt=rfc822;a@x.example\n\
            status=4.4.1\naction=delayed\nreason=connect to x.example[1.2.3.4]:25: Connection refused\n\n\
            <b@y.example>: host y said: 451 try later\n\n\
            recipient=a@x.example\nstatus=4.4.2\nreason=lost connection\n\n\
            recipient=c@z.example\nstatus=4.0.0\n";
        let r = parse(data);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].recipient, "a@x.example");
        assert_eq!(r[0].status, "4.4.1");
        assert_eq!(
            r[0].reason,
            "connect to x.example[1.2.3.4]:25: Connection refused"
        );
        assert_eq!(r[1].recipient, "b@y.example");
        assert_eq!(r[1].status, "4.0.0");
        assert_eq!(r[1].reason, "host y said: 451 try later");
        let last = last_per_recipient(r);
        assert_eq!(last.len(), 2);
        assert_eq!(last[0].reason, "lost connection");
        assert_eq!(last[0].action, "delayed");
    }

    #[test]
    fn control_bytes_are_sanitised() {
        let r = parse(b"recipient=a\x01b@x\nreason=bad\xff\x1b[31m\n\n");
        assert_eq!(r[0].recipient, "a?b@x");
        assert_eq!(r[0].reason, "bad??[31m");
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = last_per_recipient(parse(&data));
        }
    }
}
