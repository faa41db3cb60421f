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

    fn try_parse(text: &str) -> Option<Feedback> {
        let t = text.trim();
        match t.split_once('/') {
            None => Some(Feedback {
                base: t.parse().ok()?,
                per_concurrency: false,
            }),
            Some((num, den)) => {
                let num: f64 = num.trim().parse().ok()?;
                let den = den.trim();
                if den == "concurrency" {
                    return Some(Feedback {
                        base: num,
                        per_concurrency: true,
                    });
                }
                let d: f64 = den.parse().ok()?;
                if !(0.0..=i32::MAX as f64).contains(&num)
                    || d < 1.0 / i32::MAX as f64
                    || d > i32::MAX as f64
                {
                    return None;
                }
                Some(Feedback {
                    base: num / d,
                    per_concurrency: false,
                })
            }
        }
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
    }
}
