//! Concurrency feedback values (`qmgr/qmgr_feedback.c`): a constant `N`,
//! a fraction `N/M`, or `N/concurrency` (divided by the current window).

/// A parsed `_destination_concurrency_{positive,negative}_feedback` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feedback {
    base: f64,
    per_concurrency: bool,
}

/// A feedback value that is malformed or outside [0, 1]; Postfix warns and
/// uses 1 (`qmgr_feedback_init`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ignoring malformed or unreasonable feedback: {0}")]
pub struct BadFeedback(pub String);

impl Feedback {
    /// The value Postfix falls back to: a constant 1.
    pub const ONE: Feedback = Feedback {
        base: 1.0,
        per_concurrency: false,
    };

    /// Parses `text`.
    ///
    /// Errors: [`BadFeedback`] for a malformed value or one outside [0, 1].
    pub fn parse(text: &str) -> Result<Feedback, BadFeedback> {
        match Self::try_parse(text) {
            Some(f) if (0.0..=1.0).contains(&f.base) => Ok(f),
            _ => Err(BadFeedback(text.to_string())),
        }
    }

    /// `sscanf(text, "%lf %1[/] %30s%c", ...)` as `qmgr_feedback_init`
    /// does it: a number, optionally `/` and a denominator (a number or
    /// `concurrency`); anything after a lone number is ignored, anything
    /// after the denominator is an error.
    fn try_parse(text: &str) -> Option<Feedback> {
        let (num, rest) = strtod(text)?;
        let Some(rest) = rest.trim_start().strip_prefix('/') else {
            return Some(Feedback {
                base: num,
                per_concurrency: false,
            });
        };
        let rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (den, after) = rest.split_at(end);
        if den.is_empty() || den.chars().count() > 30 || !after.is_empty() {
            return None;
        }
        if den == "concurrency" {
            return Some(Feedback {
                base: num,
                per_concurrency: true,
            });
        }
        let (d, junk) = strtod(den)?;
        let max = f64::from(i32::MAX);
        if !junk.is_empty() || !(0.0..=max).contains(&num) || !(1.0 / max..=max).contains(&d) {
            return None;
        }
        Some(Feedback {
            base: num / d,
            per_concurrency: false,
        })
    }

    /// True for `N/concurrency` (Postfix's `QMGR_FEEDBACK_IDX_CONCURRENCY`).
    pub fn per_concurrency(&self) -> bool {
        self.per_concurrency
    }

    /// The feedback amount at concurrency `window` (`QMGR_FEEDBACK_VAL`).
    pub fn value(&self, window: i32) -> f64 {
        if self.per_concurrency {
            self.base / f64::from(window.max(1))
        } else {
            self.base
        }
    }
}

/// The longest prefix of `text` (after leading white space) that C's
/// `strtod` reads as a decimal number, and what follows it.
fn strtod(text: &str) -> Option<(f64, &str)> {
    let t = text.trim_start();
    let b = t.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut n = digits(&mut i);
    if i < b.len() && b[i] == b'.' {
        i += 1;
        n += digits(&mut i);
    }
    if n == 0 {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if digits(&mut j) > 0 {
            i = j;
        }
    }
    Some((t[..i].parse().ok()?, &t[i..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntaxes() {
        let v = |t: &str| Feedback::parse(t).map(|f| f.value(5));
        assert_eq!(v("1"), Ok(1.0));
        assert_eq!(v("1/4"), Ok(0.25));
        assert_eq!(Feedback::parse("1/concurrency").unwrap().value(4), 0.25);
        assert_eq!(v("1 / 2"), Ok(0.5));
        assert!(v("2").is_err());
        assert!(v("junk").is_err());
        // As sscanf reads it: junk after a lone number is ignored, junk
        // after a denominator is not.
        assert_eq!(v("0.5x"), Ok(0.5));
        assert_eq!(v("1 x"), Ok(1.0));
        assert!(v("1/2x").is_err());
        assert!(v("1/").is_err());
        assert!(v("1/0").is_err());
        assert_eq!(v("1e-1"), Ok(0.1));
        assert!(Feedback::parse("1/concurrency").unwrap().per_concurrency());
    }
}
