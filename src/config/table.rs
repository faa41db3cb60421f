//! Every parameter Postfix 3.7's qmgr reads: the tables of
//! `qmgr/qmgr.c:main` and the per-transport forms `qmgr_transport_create`
//! reads when a transport is first used, each with Postfix's default (as
//! `postconf -d` prints it) and what rqmgr does with it. The acceptance
//! tests check the names and defaults against `postconf -d`, that rqmgr's
//! defaults are Postfix's, and that man/rqmgr.8 names each one.

/// One parameter qmgr reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QmgrParameter {
    pub name: &'static str,
    /// Postfix's default, as `postconf -d` prints it.
    pub default: &'static str,
    /// What rqmgr does with it.
    pub effect: &'static str,
}

const fn p(name: &'static str, default: &'static str, effect: &'static str) -> QmgrParameter {
    QmgrParameter {
        name,
        default,
        effect,
    }
}

/// The tables of `qmgr/qmgr.c` (and `oqmgr/qmgr.c`'s `qmgr_fudge_factor`).
pub const QMGR_PARAMETERS: &[QmgrParameter] = &[
    p(
        "queue_run_delay",
        "300s",
        "interval of deferred queue scans",
    ),
    p(
        "minimal_backoff_time",
        "300s",
        "shortest retry wait; how long a dead destination stays dead",
    ),
    p("maximal_backoff_time", "4000s", "longest retry wait"),
    p(
        "maximal_queue_lifetime",
        "5d",
        "mail with a sender is returned after this",
    ),
    p(
        "bounce_queue_lifetime",
        "5d",
        "null-sender mail is returned after this",
    ),
    p(
        "default_destination_rate_delay",
        "0s",
        "per-destination rate delay",
    ),
    p(
        "default_transport_rate_delay",
        "0s",
        "per-transport rate delay",
    ),
    p(
        "transport_retry_time",
        "60s",
        "how long a dead transport stays dead",
    ),
    p(
        "qmgr_clog_warn_time",
        "300s",
        "interval of the clogged-queue warnings",
    ),
    p(
        "qmgr_daemon_timeout",
        "1000s",
        "watchdog: the event loop must turn within this",
    ),
    p(
        "qmgr_ipc_timeout",
        "60s",
        "limit on each step of talking to a service",
    ),
    p(
        "default_recipient_refill_delay",
        "5s",
        "nqmgr: refill a message's recipients after this",
    ),
    p(
        "qmgr_message_active_limit",
        "20000",
        "messages in the active queue",
    ),
    p(
        "qmgr_message_recipient_limit",
        "20000",
        "in-core recipients (and queue count guard)",
    ),
    p(
        "qmgr_message_recipient_minimum",
        "10",
        "first recipient slots of each message",
    ),
    p(
        "default_recipient_limit",
        "20000",
        "nqmgr: per-transport in-core recipient pool",
    ),
    p(
        "default_extra_recipient_limit",
        "1000",
        "nqmgr: extra recipients for a preempting job",
    ),
    p(
        "default_recipient_refill_limit",
        "100",
        "nqmgr: refill when this many slots are free",
    ),
    p(
        "default_delivery_slot_cost",
        "5",
        "nqmgr: slots a job earns before preemption (< 2: none)",
    ),
    p(
        "default_delivery_slot_loan",
        "3",
        "nqmgr: slots lent to a preempting job",
    ),
    p(
        "default_delivery_slot_discount",
        "50",
        "nqmgr: discount on the slots a preemption needs",
    ),
    p(
        "default_minimum_delivery_slots",
        "3",
        "nqmgr: smallest job that may be preempted",
    ),
    p(
        "initial_destination_concurrency",
        "5",
        "initial window of a new destination",
    ),
    p(
        "default_destination_concurrency_limit",
        "20",
        "largest window of a destination",
    ),
    p(
        "default_destination_recipient_limit",
        "50",
        "recipients per delivery request (1: per-recipient queues)",
    ),
    p(
        "local_destination_concurrency_limit",
        "2",
        "the local transport's window limit",
    ),
    p(
        "local_destination_recipient_limit",
        "1",
        "the local transport's recipients per request",
    ),
    p(
        "default_destination_concurrency_failed_cohort_limit",
        "1",
        "failed cohorts before a destination is dead",
    ),
    p(
        "address_verify_pending_request_limit",
        "5000",
        "probes in core beyond this are deferred",
    ),
    p(
        "defer_transports",
        "",
        "transports whose mail is deferred unless flushed",
    ),
    p(
        "default_destination_concurrency_positive_feedback",
        "1",
        "window growth per success",
    ),
    p(
        "default_destination_concurrency_negative_feedback",
        "1",
        "window shrink per failure",
    ),
    p(
        "default_filter_nexthop",
        "",
        "nexthop of a content filter without one",
    ),
    p(
        "disable_verp_bounces",
        "no",
        "one notice for all, not one per VERP recipient",
    ),
    p(
        "destination_concurrency_feedback_debug",
        "no",
        "log the feedback debug lines",
    ),
    p(
        "confirm_delay_cleared",
        "no",
        "notify the sender when a delayed message goes out",
    ),
    p(
        "qmgr_fudge_factor",
        "100",
        "oqmgr: in-core recipient budget, percent",
    ),
];

/// The per-transport forms: `<transport><suffix>`, with the global
/// parameter each falls back to (`qmgr_transport_create`, in its order).
pub const TRANSPORT_SUFFIXES: &[(&str, &str)] = &[
    (
        "_destination_concurrency_limit",
        "default_destination_concurrency_limit",
    ),
    (
        "_destination_recipient_limit",
        "default_destination_recipient_limit",
    ),
    (
        "_initial_destination_concurrency",
        "initial_destination_concurrency",
    ),
    ("_transport_rate_delay", "default_transport_rate_delay"),
    ("_destination_rate_delay", "default_destination_rate_delay"),
    ("_delivery_slot_cost", "default_delivery_slot_cost"),
    ("_delivery_slot_loan", "default_delivery_slot_loan"),
    ("_delivery_slot_discount", "default_delivery_slot_discount"),
    ("_minimum_delivery_slots", "default_minimum_delivery_slots"),
    ("_recipient_limit", "default_recipient_limit"),
    ("_extra_recipient_limit", "default_extra_recipient_limit"),
    ("_recipient_refill_limit", "default_recipient_refill_limit"),
    ("_recipient_refill_delay", "default_recipient_refill_delay"),
    (
        "_destination_concurrency_positive_feedback",
        "default_destination_concurrency_positive_feedback",
    ),
    (
        "_destination_concurrency_negative_feedback",
        "default_destination_concurrency_negative_feedback",
    ),
    (
        "_destination_concurrency_failed_cohort_limit",
        "default_destination_concurrency_failed_cohort_limit",
    ),
];
