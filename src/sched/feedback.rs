//! Concurrency feedback values (`qmgr/qmgr_feedback.c`): a constant `N`,
//! a fraction `N/M`, or `N/concurrency` (divided by the current window).
//! Values outside [0, 1] are replaced by 1 with Postfix's warning.

/// A parsed `_destination_concurrency_{positive,negative}_feedback` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Feedback {
    base: f64,
    per_concurrency: bool,
}

impl Feedback {
    /// Parses `text`; `name` is the parameter named in the warning.
    pub fn parse(text: &str, name: &str) -> Feedback {
        match Self::try_parse(text) {
            Some(f) if (0.0..=1.0).contains(&f.base) => f,
            _ => {
                tracing::warn!("{name}: ignoring malformed or unreasonable feedback: {text}");
                Feedback {
                    base: 1.0,
                    per_concurrency: false,
                }
            }
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
        assert_eq!(Feedback::parse("1", "x").value(5), 1.0);
        assert_eq!(Feedback::parse("1/4", "x").value(5), 0.25);
        assert_eq!(Feedback::parse("1/concurrency", "x").value(4), 0.25);
        assert_eq!(Feedback::parse("2", "x").value(5), 1.0);
        assert_eq!(Feedback::parse("junk", "x").value(5), 1.0);
        assert_eq!(Feedback::parse("1 / 2", "x").value(5), 0.5);
    }
}
