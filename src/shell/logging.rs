//! The core's events as Postfix's log lines, byte for byte: the
//! `destination_concurrency_feedback_debug` lines of `qmgr/qmgr_queue.c`
//! (with C's `%g`), the clog warnings of `qmgr/qmgr_entry.c`, and the
//! parameter warnings of `qmgr/qmgr_feedback.c` and `qmgr_transport.c`.
//! Events Postfix does not log (dead or revived destinations, deliveries,
//! finished messages) give no line. With `-v`, [`trace_line`] gives the
//! `msg_verbose` lines of `qmgr/qmgr_*.c` in Postfix's words.

use crate::proto::service;
use crate::qmgr::{ClogAdvice, Event, MessageId, Settings, Trace};

/// A log line's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A plain line.
    Info,
    /// A `warning:` line.
    Warning,
}

/// The lines `event` gives, in order.
pub fn event_lines(event: &Event, settings: &Settings) -> Vec<(Level, String)> {
    let debug = |transport: &str| {
        settings.feedback_debug && transport != service::ERROR && transport != service::RETRY
    };
    match event {
        Event::TransportWarning { text } => vec![(Level::Warning, text.clone())],
        Event::MalformedFeedback { parameter, value } => vec![(
            Level::Warning,
            format!("{parameter}: ignoring malformed or unreasonable feedback: {value}"),
        )],
        Event::FeedbackInit {
            transport,
            parameter,
            per_concurrency,
            initial_concurrency,
            value,
        } if settings.feedback_debug => vec![(
            Level::Info,
            format!(
                "{transport}: {parameter} feedback type {} value at {initial_concurrency}: {}",
                u8::from(*per_concurrency),
                percent_g(*value)
            ),
        )],
        Event::Feedback {
            func,
            transport,
            value,
        } if debug(transport) => vec![(
            Level::Info,
            format!("{}: feedback {}", func.name(), percent_g(*value)),
        )],
        Event::Window {
            func,
            transport,
            queue,
            limit,
            window,
            success,
            failure,
            fail_cohorts,
        } if debug(transport) => vec![(
            Level::Info,
            format!(
                "{}: queue {queue}: limit {limit} window {window} success {} failure {} fail_cohorts {}",
                func.name(),
                percent_g(*success),
                percent_g(*failure),
                percent_g(*fail_cohorts)
            ),
        )],
        Event::Clogged {
            transport,
            nexthop,
            length,
            count,
            slows_others,
            advice,
        } => {
            let mut lines = vec![format!(
                "mail for {nexthop} is using up {length} of {count} active queue entries"
            )];
            if *slows_others {
                lines.push("this may slow down other mail deliveries".into());
            }
            match advice {
                ClogAdvice::ConcurrencyLimit { limit } => lines.push(format!(
                    "you may need to increase the main.cf {transport}_destination_concurrency_limit from {limit}"
                )),
                ClogAdvice::ActiveLimit { limit } => lines.push(format!(
                    "you may need to increase the main.cf qmgr_message_active_limit from {limit}"
                )),
                ClogAdvice::SeparateTransport => lines.push(format!(
                    "you may need a separate master.cf transport for {nexthop}"
                )),
                ClogAdvice::Timeouts => {
                    lines.push(format!(
                        "you may need to reduce {transport} connect and helo timeouts"
                    ));
                    lines.push("so that Postfix quickly skips unavailable hosts".into());
                    lines.push(
                        "you may need to increase the main.cf minimal_backoff_time and maximal_backoff_time"
                            .into(),
                    );
                    lines.push("so that Postfix wastes less time on undeliverable mail".into());
                    lines.push(format!(
                        "you may need to increase the master.cf {transport} process limit"
                    ));
                }
            }
            lines.push("please avoid flushing the whole queue when you have".into());
            lines.push("lots of deferred mail, that is bad for performance".into());
            lines.push("to turn off these warnings specify: qmgr_clog_warn_time = 0".into());
            lines.into_iter().map(|l| (Level::Warning, l)).collect()
        }
        _ => Vec::new(),
    }
}

/// The `-v` line of `trace`, in Postfix's words; `queue_id` names a
/// message of the core by its queue id.
pub fn trace_line(trace: &Trace, queue_id: impl Fn(MessageId) -> String) -> String {
    match trace {
        Trace::TransportCreate {
            transport,
            concurrency,
            recipients,
        } => format!(
            "qmgr_transport_create: {transport} concurrency {concurrency} recipients {recipients}"
        ),
        Trace::TransportSelect { transport } => format!("qmgr_transport_select: {transport}"),
        Trace::Allocate { transport } => format!("qmgr_active_drain: allocate {transport}"),
        Trace::TransportEvent { transport } => format!("transport_event: {transport}"),
        Trace::TransportThrottle { transport, reason } => format!(
            "qmgr_transport_throttle: transport {transport}: status: {} reason: {}",
            reason.status, reason.text
        ),
        Trace::TransportUnthrottle { transport } => {
            format!("qmgr_transport_unthrottle: transport {transport}")
        }
        Trace::QueueThrottle { queue, reason } => format!(
            "qmgr_queue_throttle: queue {queue}: {} {}",
            reason.status, reason.text
        ),
        Trace::QueueUnthrottle { queue } => format!("qmgr_queue_unthrottle: queue {queue}"),
        Trace::DeferTransport { transport, reason } => format!(
            "defer transport {transport}: {} {}",
            reason.status, reason.text
        ),
        Trace::DeferSite { queue, reason } => {
            format!("defer site {queue}: {} {}", reason.status, reason.text)
        }
        Trace::EnableAll => "qmgr_enable_all".into(),
        Trace::EnableTransport { transport } => format!("enable transport {transport}"),
        Trace::EnableSite { transport, queue } => format!("enable site {transport}/{queue}"),
        Trace::SessionCaching { queue, allow } => format!(
            "qmgr_entry_select: {} on-demand session caching for {queue}",
            if *allow { "allowing" } else { "disallowing" }
        ),
        Trace::QueueSelect { queue } => format!("qmgr_queue_select: {queue}"),
        Trace::PeerSelect {
            msg,
            transport,
            queue,
            busy,
            window,
        } => format!(
            "qmgr_peer_select: {} {transport} {queue} ({busy} of {window})",
            queue_id(*msg)
        ),
        Trace::JobRetire { msg } => format!("qmgr_job_retire: {}", queue_id(*msg)),
        Trace::JobFree { msg, transport } => {
            format!("qmgr_job_free: {} {transport}", queue_id(*msg))
        }
        Trace::JobPreempt { current, by, level } => format!(
            "qmgr_job_preempt: {} by {}, level {level}",
            queue_id(*current),
            queue_id(*by)
        ),
        Trace::JobPop { msg } => format!("qmgr_job_pop: {}", queue_id(*msg)),
    }
}

/// Logs the lines of `event`. A [`Event::BadParameter`] ends the process
/// with its `fatal:` line, as Postfix's qmgr does at that moment.
pub fn log_event(event: &Event, settings: &Settings) {
    if let Event::BadParameter { text } = event {
        crate::log::fatal(text);
    }
    for (level, line) in event_lines(event, settings) {
        match level {
            Level::Info => crate::log::info(&line),
            Level::Warning => crate::log::warning(&line),
        }
    }
}

/// C's `%g`: six significant digits, trailing zeros dropped, exponent form
/// for very small or large values.
pub fn percent_g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v.is_infinite() {
            if v > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            }
        } else {
            "0".into()
        };
    }
    let exp = v.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..6).contains(&exp) {
        let s = format!("{:.5e}", v);
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        format!(
            "{}e{}{:02}",
            trim(mant.to_string()),
            if e < 0 { '-' } else { '+' },
            e.abs()
        )
    } else {
        let decimals = (5 - exp).max(0) as usize;
        trim(format!("{:.*}", decimals, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmgr::{FeedbackFn, Strategy};

    #[test]
    fn c_percent_g() {
        assert_eq!(percent_g(0.0), "0");
        assert_eq!(percent_g(1.0), "1");
        assert_eq!(percent_g(0.2), "0.2");
        assert_eq!(percent_g(1.0 / 3.0), "0.333333");
        assert_eq!(percent_g(1.0333333333), "1.03333");
        assert_eq!(percent_g(-1.0), "-1");
        assert_eq!(percent_g(0.00001), "1e-05");
        assert_eq!(percent_g(1234567.0), "1.23457e+06");
    }

    #[test]
    fn feedback_debug_lines() {
        let mut settings = Settings::postfix_defaults(Strategy::Nqmgr);
        let fb = Event::Feedback {
            func: FeedbackFn::Unthrottle,
            transport: "smtp".into(),
            value: 1.0,
        };
        let window = Event::Window {
            func: FeedbackFn::Throttle,
            transport: "smtp".into(),
            queue: "d.example".into(),
            limit: 20,
            window: 3,
            success: 0.0,
            failure: 0.5,
            fail_cohorts: 0.2,
        };
        assert!(event_lines(&fb, &settings).is_empty(), "off by default");
        settings.feedback_debug = true;
        assert_eq!(
            event_lines(&fb, &settings),
            vec![(Level::Info, "qmgr_queue_unthrottle: feedback 1".to_string())]
        );
        assert_eq!(
            event_lines(&window, &settings),
            vec![(
                Level::Info,
                "qmgr_queue_throttle: queue d.example: limit 20 window 3 success 0 failure 0.5 fail_cohorts 0.2"
                    .to_string()
            )]
        );
        let init = Event::FeedbackInit {
            transport: "smtp".into(),
            parameter: "default_destination_concurrency_positive_feedback".into(),
            per_concurrency: false,
            initial_concurrency: 5,
            value: 1.0,
        };
        assert_eq!(
            event_lines(&init, &settings),
            vec![(
                Level::Info,
                "smtp: default_destination_concurrency_positive_feedback feedback type 0 value at 5: 1"
                    .to_string()
            )]
        );
        let retry = Event::Feedback {
            func: FeedbackFn::Unthrottle,
            transport: "retry".into(),
            value: 1.0,
        };
        assert!(event_lines(&retry, &settings).is_empty());
    }

    #[test]
    fn clog_warning_lines() {
        let settings = Settings::postfix_defaults(Strategy::Nqmgr);
        let e = Event::Clogged {
            transport: "smtp".into(),
            nexthop: "clog.example".into(),
            length: 3,
            count: 3,
            slows_others: false,
            advice: ClogAdvice::Timeouts,
        };
        let lines: Vec<String> = event_lines(&e, &settings)
            .into_iter()
            .map(|(l, t)| {
                assert_eq!(l, Level::Warning);
                t
            })
            .collect();
        assert_eq!(
            lines[0],
            "mail for clog.example is using up 3 of 3 active queue entries"
        );
        assert_eq!(
            lines[1],
            "you may need to reduce smtp connect and helo timeouts"
        );
        assert_eq!(
            lines.last().unwrap(),
            "to turn off these warnings specify: qmgr_clog_warn_time = 0"
        );
        assert_eq!(lines.len(), 9);
    }
}
