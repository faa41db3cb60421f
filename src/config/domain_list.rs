//! Postfix's domain lists, as `fast_flush_domains` uses them
//! (`util/match_list.c`, `util/match_ops.c:match_hostname`,
//! `global/domain_list.c`): patterns separated by commas or white space,
//! first match wins, `!` negates; a name matches itself, `.example` matches
//! subdomains, and with parent-domain matching `example` matches its
//! subdomains too. Lookup tables (`type:name`) and `/file` patterns are not
//! read here: a list that has one leaves the decision to the server that
//! owns the list.

/// What a list says about a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// A table or file decides: ask the service that checks the list itself.
    AskServer,
}

/// A parsed domain list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainList {
    /// (matches when found, pattern), lower case.
    patterns: Vec<(bool, String)>,
    parent_matches: bool,
}

impl DomainList {
    /// The list `text` (already `$`-expanded); `parent_matches`: the
    /// list's parameter is named in `parent_domain_matches_subdomains`.
    pub fn parse(text: &str, parent_matches: bool) -> DomainList {
        let patterns = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(|p| {
                let bangs = p.len() - p.trim_start_matches('!').len();
                (bangs % 2 == 0, p[bangs..].to_ascii_lowercase())
            })
            .collect();
        DomainList {
            patterns,
            parent_matches,
        }
    }

    /// True if the list has no patterns (nothing ever matches).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `domain` is on the list.
    pub fn verdict(&self, domain: &str) -> Verdict {
        let name = domain.to_ascii_lowercase();
        for (found, pat) in &self.patterns {
            if pat.starts_with('/') || (!pat.starts_with('[') && pat.contains(':')) {
                return Verdict::AskServer;
            }
            if self.hostname_matches(&name, pat) {
                return if *found {
                    Verdict::Match
                } else {
                    Verdict::NoMatch
                };
            }
        }
        Verdict::NoMatch
    }

    /// `match_hostname` for a pattern that is not a table.
    fn hostname_matches(&self, name: &str, pat: &str) -> bool {
        if name == pat {
            return true;
        }
        let Some(start) = name.len().checked_sub(pat.len()).filter(|&s| s > 0) else {
            return false;
        };
        let tail = &name[start..];
        if self.parent_matches {
            name.as_bytes()[start - 1] == b'.' && tail == pat
        } else {
            pat.starts_with('.') && tail == pat
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_list_matching() {
        let l = DomainList::parse("Example.COM, !bad.example.com,, .dot.test", true);
        assert_eq!(l.verdict("example.com"), Verdict::Match);
        assert_eq!(l.verdict("sub.Example.com"), Verdict::Match);
        assert_eq!(
            l.verdict("bad.example.com"),
            Verdict::Match,
            "first match wins"
        );
        assert_eq!(l.verdict("xexample.com"), Verdict::NoMatch);
        // With parent matching, a leading dot needs one more label.
        assert_eq!(l.verdict("a.dot.test"), Verdict::NoMatch);
        assert_eq!(l.verdict("a.b.dot.test"), Verdict::NoMatch);
        let l = DomainList::parse("!bad.example.com example.com .dot.test", false);
        assert_eq!(l.verdict("bad.example.com"), Verdict::NoMatch);
        assert_eq!(l.verdict("sub.example.com"), Verdict::NoMatch);
        assert_eq!(l.verdict("a.dot.test"), Verdict::Match);
        assert_eq!(
            DomainList::parse("hash:/etc/postfix/ff", true).verdict("x"),
            Verdict::AskServer
        );
        assert!(DomainList::parse(" , ", true).is_empty());
    }
}
