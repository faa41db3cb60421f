//! What happens to a message when none of its entries remain
//! (`qmgr/qmgr_active.c:qmgr_active_done*`): the pure decisions — expiry,
//! delay warnings and the backoff before the next attempt. The shell carries
//! out the bounce, trace and defer requests and the final move or removal.

/// Lifetime limits and backoff bounds, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// `maximal_queue_lifetime` (mail with a sender).
    pub maximal_queue_lifetime: i64,
    /// `bounce_queue_lifetime` (null-sender mail).
    pub bounce_queue_lifetime: i64,
    /// `minimal_backoff_time`.
    pub minimal_backoff_time: i64,
    /// `maximal_backoff_time`.
    pub maximal_backoff_time: i64,
}

/// Whether a message that must be retried has expired
/// (`qmgr_active_done_25_generic`): the status word for the
/// `status=...,  returned to sender` line, or `None`.
pub fn expiry(
    l: &Lifetimes,
    force_expire: bool,
    now: i64,
    create_time: i64,
    null_sender: bool,
) -> Option<&'static str> {
    if force_expire {
        return Some("force-expired");
    }
    let lifetime = if null_sender {
        l.bounce_queue_lifetime
    } else {
        l.maximal_queue_lifetime
    };
    (now >= create_time.saturating_add(lifetime)).then_some("expired")
}

/// Whether a delay warning is due: a `W` time was set, not yet sent (> 0),
/// and is (almost) reached.
pub fn warning_due(warn_time: i64, now: i64) -> bool {
    warn_time > 0 && now >= warn_time - 1
}

/// Seconds until the next attempt (`qmgr_active_done_3_generic`): the age
/// of the message, clamped to [minimal_backoff_time, maximal_backoff_time];
/// the minimum when the creation time is unknown.
pub fn backoff(l: &Lifetimes, now: i64, create_time: i64) -> i64 {
    if create_time > 0 {
        (now - create_time).clamp(
            l.minimal_backoff_time,
            l.maximal_backoff_time.max(l.minimal_backoff_time),
        )
    } else {
        l.minimal_backoff_time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Lifetimes = Lifetimes {
        maximal_queue_lifetime: 5 * 86400,
        bounce_queue_lifetime: 86400,
        minimal_backoff_time: 300,
        maximal_backoff_time: 4000,
    };

    #[test]
    fn backoff_doubles_with_age_within_bounds() {
        assert_eq!(backoff(&L, 1000, 1000 - 41), 300);
        assert_eq!(backoff(&L, 1000, 1000 - 600), 600);
        assert_eq!(backoff(&L, 100000, 1), 4000);
        assert_eq!(backoff(&L, 1000, 0), 300);
    }

    #[test]
    fn expiry_rules() {
        assert_eq!(expiry(&L, true, 0, 0, false), Some("force-expired"));
        assert_eq!(expiry(&L, false, 5 * 86400, 0, false), Some("expired"));
        assert_eq!(expiry(&L, false, 5 * 86400 - 1, 0, false), None);
        assert_eq!(expiry(&L, false, 86400, 0, true), Some("expired"));
    }

    #[test]
    fn warnings() {
        assert!(!warning_due(0, 100));
        assert!(!warning_due(-1, 100));
        assert!(warning_due(101, 100));
        assert!(!warning_due(102, 100));
    }
}
