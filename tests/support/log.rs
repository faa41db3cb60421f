//! Parsing the maillog that postlogd(8) writes for an instance.
//!
//! A line looks like
//! `Nov 30 11:15:57 rqmgr-test postfix/qmgr[4868]: 2E87398C1A5: removed`.

use std::fmt;

/// One maillog line, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The whole line, as written.
    pub raw: String,
    /// The program, e.g. `postfix/qmgr` (empty if the line has no `prog[pid]:`).
    pub program: String,
    /// Its pid (0 if none).
    pub pid: u32,
    /// What follows `prog[pid]: `, e.g. `2E87398C1A5: removed`.
    pub text: String,
}

impl LogLine {
    pub fn parse(raw: &str) -> LogLine {
        let raw = raw.trim_end_matches(['\r', '\n']).to_string();
        if let Some(close) = raw.find("]: ") {
            let head = &raw[..close];
            if let Some(open) = head.rfind('[') {
                let prog_start = head[..open].rfind(' ').map(|i| i + 1).unwrap_or(0);
                if let Ok(pid) = head[open + 1..].parse::<u32>() {
                    return LogLine {
                        program: head[prog_start..open].to_string(),
                        pid,
                        text: raw[close + 3..].to_string(),
                        raw,
                    };
                }
            }
        }
        LogLine {
            program: String::new(),
            pid: 0,
            text: raw.clone(),
            raw,
        }
    }

    /// The daemon name: `qmgr` for `postfix/qmgr`.
    pub fn daemon(&self) -> &str {
        self.program.rsplit('/').next().unwrap_or("")
    }

    /// Whether this line was logged by `postfix/<daemon>`.
    pub fn is_from(&self, daemon: &str) -> bool {
        self.daemon() == daemon
    }

    /// The queue id the text starts with (`ID: ...`), if any.
    pub fn queue_id(&self) -> Option<&str> {
        let (id, _) = self.text.split_once(": ")?;
        let plausible = id.len() >= 6
            && id.chars().all(|c| c.is_ascii_alphanumeric())
            && id
                .chars()
                .any(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
        plausible.then_some(id)
    }

    /// The text after `ID: ` (the whole text if there is no queue id).
    pub fn body(&self) -> &str {
        match self.queue_id() {
            Some(id) => &self.text[id.len() + 2..],
            None => &self.text,
        }
    }

    /// The value of `name=value` in the text (value ends at `,` or space; a
    /// `<...>` value is returned with its brackets).
    pub fn field(&self, name: &str) -> Option<&str> {
        let body = self.body();
        let needle = format!("{name}=");
        let mut search = 0;
        while let Some(pos) = body[search..].find(&needle) {
            let start = search + pos;
            let at_boundary = start == 0 || matches!(body.as_bytes()[start - 1], b' ' | b',');
            let value_start = start + needle.len();
            if at_boundary {
                let rest = &body[value_start..];
                let end = if rest.starts_with('<') {
                    rest.find('>').map(|i| i + 1).unwrap_or(rest.len())
                } else {
                    rest.find([',', ' ']).unwrap_or(rest.len())
                };
                return Some(&rest[..end]);
            }
            search = value_start;
        }
        None
    }

    /// `status=` value: `sent`, `deferred`, `bounced`...
    pub fn status(&self) -> Option<&str> {
        self.field("status")
    }

    /// The text in the last parentheses, e.g. the reason of a deferral.
    pub fn reason(&self) -> Option<&str> {
        let body = self.body();
        let open = body.find(" (")?;
        let rest = &body[open + 2..];
        Some(rest.strip_suffix(')').unwrap_or(rest))
    }

    /// `postfix/qmgr[pid]: ID: removed`
    pub fn is_removed(&self) -> bool {
        self.is_from("qmgr") && self.queue_id().is_some() && self.body() == "removed"
    }

    /// `postfix/qmgr[pid]: ID: from=<...>, size=N, nrcpt=N (queue active)`
    pub fn is_queue_active(&self) -> bool {
        self.is_from("qmgr") && self.queue_id().is_some() && self.body().ends_with("(queue active)")
    }

    /// A delivery status line (`to=<...>, ..., status=...`) from any agent.
    pub fn is_delivery(&self) -> bool {
        self.queue_id().is_some() && self.field("to").is_some() && self.status().is_some()
    }

    /// `postfix-script` warnings about the symlinks in ROOT/libexec: expected.
    pub fn is_symlink_noise(&self) -> bool {
        self.text.contains("symlink leaves directory")
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Parses a whole maillog.
pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(LogLine::parse)
        .collect()
}

/// Signs in the log that the queue manager under test is broken, so that a
/// wait can stop at once instead of running into its timeout.
pub fn qmgr_trouble(lines: &[LogLine]) -> Option<&LogLine> {
    lines.iter().find(|l| {
        let master_about_qmgr = l.is_from("master") && l.text.contains("/qmgr");
        (master_about_qmgr
            && (l.text.contains("bad command startup")
                || l.text.contains("exit status")
                || l.text.contains("killed by signal")))
            || (l.is_from("qmgr") && (l.text.starts_with("fatal:") || l.text.starts_with("panic:")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let l = LogLine::parse("Nov 30 11:15:57 h postfix/local[4881]: 2E87398C1A5: to=<alice@h>, relay=local, delay=0.03, dsn=2.0.0, status=sent (delivered to file: /x)");
        assert_eq!(l.program, "postfix/local");
        assert_eq!(l.pid, 4881);
        assert_eq!(l.queue_id(), Some("2E87398C1A5"));
        assert_eq!(l.field("to"), Some("<alice@h>"));
        assert_eq!(l.field("relay"), Some("local"));
        assert_eq!(l.status(), Some("sent"));
        assert_eq!(l.reason(), Some("delivered to file: /x"));
        assert!(l.is_delivery());
        let w =
            LogLine::parse("Nov 30 11:15:57 h postfix/qmgr[1]: warning: saving corrupt file \"X\"");
        assert_eq!(w.queue_id(), None);
    }
}
