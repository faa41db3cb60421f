//! The parameters rqmgr reads, with Postfix 3.7's names, defaults, bounds and
//! units: the tables in `qmgr/qmgr.c:main`, the globals of
//! `global/mail_params.c` that qmgr depends on, the post-init adjustments of
//! `qmgr/qmgr.c:qmgr_post_init`, and the per-transport lookups of
//! `qmgr/qmgr_transport.c:qmgr_transport_create`.

use super::{ConfigError, MainCf};

/// Global parameters, all times in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    // Locations and identity.
    pub queue_directory: String,
    pub mail_owner: String,
    pub myhostname: String,
    pub syslog_name: String,
    pub syslog_facility: String,
    pub maillog_file: String,
    pub maillog_file_prefixes: String,
    pub postlog_service_name: String,
    pub compatibility_level: String,
    // Service names.
    pub rewrite_service_name: String,
    pub bounce_service_name: String,
    pub defer_service_name: String,
    pub trace_service_name: String,
    // Addresses.
    pub double_bounce_sender: String,
    pub recipient_delimiter: String,
    pub info_log_address_format_internal: bool,
    pub smtputf8_enable: bool,
    pub delay_logging_resolution_limit: i64,
    // Queue layout.
    pub hash_queue_names: Vec<String>,
    pub hash_queue_depth: usize,
    // IPC and flow control.
    pub ipc_timeout: i64,
    pub ipc_idle: i64,
    pub ipc_ttl: i64,
    pub daemon_timeout: i64,
    pub in_flow_delay: i64,
    pub default_process_limit: i64,
    pub helpful_warnings: bool,
    // qmgr(8) parameters (qmgr/qmgr.c tables).
    pub qmgr_message_active_limit: i64,
    pub qmgr_message_recipient_limit: i64,
    pub qmgr_message_recipient_minimum: i64,
    pub qmgr_fudge_factor: i64,
    pub default_recipient_limit: i64,
    pub default_extra_recipient_limit: i64,
    pub default_recipient_refill_limit: i64,
    pub default_recipient_refill_delay: i64,
    pub default_delivery_slot_cost: i64,
    pub default_delivery_slot_loan: i64,
    pub default_delivery_slot_discount: i64,
    pub default_minimum_delivery_slots: i64,
    pub initial_destination_concurrency: i64,
    pub default_destination_concurrency_limit: i64,
    pub default_destination_recipient_limit: i64,
    pub default_destination_concurrency_failed_cohort_limit: i64,
    pub default_destination_concurrency_positive_feedback: String,
    pub default_destination_concurrency_negative_feedback: String,
    pub default_destination_rate_delay: i64,
    pub default_transport_rate_delay: i64,
    pub destination_concurrency_feedback_debug: bool,
    pub address_verify_pending_request_limit: i64,
    pub address_verify_service_name: String,
    pub address_verify_negative_cache: bool,
    /// `fast_flush_domains`, expanded (default `$relay_domains`).
    pub fast_flush_domains: String,
    pub flush_service_name: String,
    /// `parent_domain_matches_subdomains`: the lists where `example.com`
    /// also matches its subdomains.
    pub parent_domain_matches_subdomains: Vec<String>,
    pub defer_transports: Vec<String>,
    pub default_filter_nexthop: String,
    pub disable_verp_bounces: bool,
    pub confirm_delay_cleared: bool,
    pub queue_run_delay: i64,
    pub minimal_backoff_time: i64,
    pub maximal_backoff_time: i64,
    pub maximal_queue_lifetime: i64,
    pub bounce_queue_lifetime: i64,
    pub transport_retry_time: i64,
    pub qmgr_clog_warn_time: i64,
    pub qmgr_daemon_timeout: i64,
    pub qmgr_ipc_timeout: i64,
}

/// Per-transport scheduling parameters (`qmgr/qmgr_transport.c`), each
/// `<transport><suffix>` with the `default_...` value as fallback. Times in
/// seconds; 0 limits mean "no limit".
#[derive(Debug, Clone, PartialEq)]
pub struct TransportParams {
    /// `_destination_concurrency_limit` (0 = no limit; forced to 1 by a rate delay).
    pub dest_concurrency_limit: i64,
    /// `_destination_recipient_limit`: recipients per delivery request (0 = no limit).
    pub recipient_limit: i64,
    /// `_initial_destination_concurrency` (at most the limit).
    pub init_dest_concurrency: i64,
    /// `_transport_rate_delay`, seconds.
    pub xport_rate_delay: i64,
    /// `_destination_rate_delay`, seconds.
    pub rate_delay: i64,
    /// `_delivery_slot_cost`.
    pub slot_cost: i64,
    /// `_delivery_slot_loan`.
    pub slot_loan: i64,
    /// 100 - `_delivery_slot_discount`.
    pub slot_loan_factor: i64,
    /// `_minimum_delivery_slots`.
    pub min_slots: i64,
    /// `_recipient_limit`: the transport's in-core recipient pool.
    pub rcpt_unused: i64,
    /// `_extra_recipient_limit`.
    pub rcpt_per_stack: i64,
    /// `_recipient_refill_limit`.
    pub refill_limit: i64,
    /// `_recipient_refill_delay`, seconds.
    pub refill_delay: i64,
    /// `_destination_concurrency_positive_feedback`.
    pub pos_feedback: FeedbackParam,
    /// `_destination_concurrency_negative_feedback`.
    pub neg_feedback: FeedbackParam,
    /// `_destination_concurrency_failed_cohort_limit` (0 = never declare dead).
    pub fail_cohort_limit: i64,
}

/// The warning for a negative concurrency limit: Postfix takes it as it
/// stands (its initial window becomes negative) and never delivers on the
/// transports it applies to; rqmgr does the same, and says so.
fn stall_warning(name: &str, value: i64) -> Option<String> {
    (value < 0).then(|| {
        format!("{name} = {value} is negative: no mail will be delivered where it applies")
    })
}

/// A concurrency feedback parameter as `qmgr_feedback_init` reads it: the
/// value (unparsed), and the name Postfix shows in its warning and debug
/// lines: the transport's own parameter when its value differs from the
/// default's, else the default's name.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackParam {
    pub name: String,
    pub value: String,
}

impl FeedbackParam {
    /// A value with the name to show.
    pub fn new(name: &str, value: &str) -> FeedbackParam {
        FeedbackParam {
            name: name.to_string(),
            value: value.to_string(),
        }
    }
}

impl Default for TransportParams {
    /// Postfix's built-in defaults (`postconf -d`), for a transport whose
    /// main.cf values cannot be used.
    fn default() -> Self {
        TransportParams {
            dest_concurrency_limit: 20,
            recipient_limit: 50,
            init_dest_concurrency: 5,
            xport_rate_delay: 0,
            rate_delay: 0,
            slot_cost: 5,
            slot_loan: 3,
            slot_loan_factor: 50,
            min_slots: 3,
            rcpt_unused: 20000,
            rcpt_per_stack: 1000,
            refill_limit: 100,
            refill_delay: 5,
            pos_feedback: FeedbackParam::new(
                "default_destination_concurrency_positive_feedback",
                "1",
            ),
            neg_feedback: FeedbackParam::new(
                "default_destination_concurrency_negative_feedback",
                "1",
            ),
            fail_cohort_limit: 1,
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn default_hostname() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    if host.contains('.') {
        host
    } else {
        format!("{host}.localdomain")
    }
}

impl Params {
    /// Reads every parameter from `cf`, storing defaults back, and applies
    /// qmgr's post-init adjustments. Returns the parameters and the warnings
    /// Postfix would log for the adjustments.
    ///
    /// Errors: the first bad value, as Postfix's fatal startup error.
    pub fn read(cf: &mut MainCf) -> Result<(Params, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        // Globals that other defaults refer to come first.
        cf.get_str("compatibility_level", "0", 0, 0)?;
        let myhostname = match cf.lookup("myhostname")? {
            Some(h) if !h.is_empty() => h,
            _ => {
                let h = default_hostname();
                cf.set("myhostname", &h);
                h
            }
        };
        if cf.lookup("mydomain")?.is_none() {
            let d = myhostname
                .split_once('.')
                .map_or("localdomain", |(_, d)| d)
                .to_string();
            cf.set("mydomain", &d);
        }
        cf.get_str(
            "mydestination",
            "$myhostname, localhost.$mydomain, localhost",
            0,
            0,
        )?;
        cf.get_str("multi_instance_name", "", 0, 0)?;
        cf.get_str(
            "relay_domains",
            "${{$compatibility_level} <level {2} ? {$mydestination} : {}}",
            0,
            0,
        )?;

        let p = Params {
            queue_directory: cf.get_str("queue_directory", "/var/spool/postfix", 1, 0)?,
            mail_owner: cf.get_str("mail_owner", "postfix", 1, 0)?,
            myhostname,
            syslog_name: cf.get_str(
                "syslog_name",
                "${multi_instance_name?{$multi_instance_name}:{postfix}}",
                1,
                0,
            )?,
            syslog_facility: cf.get_str("syslog_facility", "mail", 1, 0)?,
            maillog_file: cf.get_str("maillog_file", "", 0, 0)?,
            maillog_file_prefixes: cf.get_str(
                "maillog_file_prefixes",
                "/var, /dev/stdout",
                0,
                0,
            )?,
            postlog_service_name: cf.get_str("postlog_service_name", "postlog", 1, 0)?,
            compatibility_level: cf.lookup("compatibility_level")?.unwrap_or_default(),
            rewrite_service_name: cf.get_str("rewrite_service_name", "rewrite", 1, 0)?,
            bounce_service_name: cf.get_str("bounce_service_name", "bounce", 1, 0)?,
            defer_service_name: cf.get_str("defer_service_name", "defer", 1, 0)?,
            trace_service_name: cf.get_str("trace_service_name", "trace", 1, 0)?,
            double_bounce_sender: cf.get_str("double_bounce_sender", "double-bounce", 1, 0)?,
            recipient_delimiter: cf.get_str("recipient_delimiter", "", 0, 0)?,
            info_log_address_format_internal: cf.get_str(
                "info_log_address_format",
                "external",
                1,
                0,
            )? == "internal",
            smtputf8_enable: cf.get_bool_expr(
                "smtputf8_enable",
                "${{$compatibility_level} <level {1} ? {no} : {yes}}",
            )?,
            delay_logging_resolution_limit: cf.get_int(
                "delay_logging_resolution_limit",
                2,
                0,
                6,
            )?,
            hash_queue_names: split_list(&cf.get_str(
                "hash_queue_names",
                "deferred, defer",
                0,
                0,
            )?),
            hash_queue_depth: cf.get_int("hash_queue_depth", 1, 1, 0)? as usize,
            ipc_idle: cf.get_time("ipc_idle", "5s", 1, 0)?,
            ipc_ttl: cf.get_time("ipc_ttl", "1000s", 1, 0)?,
            daemon_timeout: cf.get_time("daemon_timeout", "18000s", 1, 0)?,
            in_flow_delay: cf.get_time("in_flow_delay", "1s", 0, 10)?,
            default_process_limit: cf.get_int("default_process_limit", 100, 1, 0)?,
            helpful_warnings: cf.get_bool("helpful_warnings", true)?,
            // qmgr/qmgr.c: int table.
            qmgr_message_active_limit: cf.get_int("qmgr_message_active_limit", 20000, 1, 0)?,
            qmgr_message_recipient_limit: cf.get_int(
                "qmgr_message_recipient_limit",
                20000,
                1,
                0,
            )?,
            qmgr_message_recipient_minimum: cf.get_int(
                "qmgr_message_recipient_minimum",
                10,
                1,
                0,
            )?,
            qmgr_fudge_factor: cf.get_int("qmgr_fudge_factor", 100, 10, 100)?,
            default_recipient_limit: cf.get_int("default_recipient_limit", 20000, 0, 0)?,
            default_extra_recipient_limit: cf.get_int(
                "default_extra_recipient_limit",
                1000,
                0,
                0,
            )?,
            default_recipient_refill_limit: cf.get_int(
                "default_recipient_refill_limit",
                100,
                1,
                0,
            )?,
            default_delivery_slot_cost: cf.get_int("default_delivery_slot_cost", 5, 0, 0)?,
            default_delivery_slot_loan: cf.get_int("default_delivery_slot_loan", 3, 0, 0)?,
            default_delivery_slot_discount: cf.get_int(
                "default_delivery_slot_discount",
                50,
                0,
                100,
            )?,
            default_minimum_delivery_slots: cf.get_int(
                "default_minimum_delivery_slots",
                3,
                0,
                0,
            )?,
            initial_destination_concurrency: cf.get_int(
                "initial_destination_concurrency",
                5,
                1,
                0,
            )?,
            default_destination_concurrency_limit: cf.get_int(
                "default_destination_concurrency_limit",
                20,
                0,
                0,
            )?,
            default_destination_recipient_limit: cf.get_int(
                "default_destination_recipient_limit",
                50,
                0,
                0,
            )?,
            default_destination_concurrency_failed_cohort_limit: cf.get_int(
                "default_destination_concurrency_failed_cohort_limit",
                1,
                0,
                0,
            )?,
            address_verify_pending_request_limit: 0, // set below: depends on the active limit
            address_verify_service_name: cf.get_str("address_verify_service_name", "verify", 1, 0)?,
            address_verify_negative_cache: cf.get_bool("address_verify_negative_cache", true)?,
            fast_flush_domains: cf.get_str("fast_flush_domains", "$relay_domains", 0, 0)?,
            flush_service_name: cf.get_str("flush_service_name", "flush", 1, 0)?,
            parent_domain_matches_subdomains: split_list(&cf.get_str(
                "parent_domain_matches_subdomains",
                "debug_peer_list,fast_flush_domains,mynetworks,permit_mx_backup_networks,qmqpd_authorized_clients,relay_domains,smtpd_access_maps",
                0,
                0,
            )?),
            // str table.
            defer_transports: split_list(&cf.get_str("defer_transports", "", 0, 0)?),
            default_destination_concurrency_positive_feedback: cf.get_str(
                "default_destination_concurrency_positive_feedback",
                "1",
                1,
                0,
            )?,
            default_destination_concurrency_negative_feedback: cf.get_str(
                "default_destination_concurrency_negative_feedback",
                "1",
                1,
                0,
            )?,
            default_filter_nexthop: cf.get_str("default_filter_nexthop", "", 0, 0)?,
            // bool table.
            disable_verp_bounces: cf.get_bool("disable_verp_bounces", false)?,
            destination_concurrency_feedback_debug: cf
                .get_bool("destination_concurrency_feedback_debug", false)?,
            confirm_delay_cleared: cf.get_bool("confirm_delay_cleared", false)?,
            // time table.
            queue_run_delay: cf.get_time("queue_run_delay", "300s", 1, 0)?,
            minimal_backoff_time: cf.get_time("minimal_backoff_time", "300s", 1, 0)?,
            maximal_backoff_time: cf.get_time("maximal_backoff_time", "4000s", 1, 0)?,
            maximal_queue_lifetime: cf.get_time("maximal_queue_lifetime", "5d", 0, 8640000)?,
            bounce_queue_lifetime: cf.get_time("bounce_queue_lifetime", "5d", 0, 8640000)?,
            transport_retry_time: cf.get_time("transport_retry_time", "60s", 1, 0)?,
            qmgr_clog_warn_time: cf.get_time("qmgr_clog_warn_time", "300s", 0, 0)?,
            default_recipient_refill_delay: cf.get_time(
                "default_recipient_refill_delay",
                "5s",
                1,
                0,
            )?,
            default_transport_rate_delay: cf.get_time(
                "default_transport_rate_delay",
                "0s",
                0,
                0,
            )?,
            default_destination_rate_delay: cf.get_time(
                "default_destination_rate_delay",
                "0s",
                0,
                0,
            )?,
            qmgr_daemon_timeout: cf.get_time("qmgr_daemon_timeout", "1000s", 1, 0)?,
            qmgr_ipc_timeout: cf.get_time("qmgr_ipc_timeout", "60s", 1, 0)?,
            ipc_timeout: 0, // replaced by qmgr_ipc_timeout below
        };
        let mut p = p;
        // Postfix reads the limits below without a lower bound and uses a
        // negative value as it stands; so does rqmgr. A negative concurrency
        // limit means no mail is ever delivered on the transports it
        // applies to: say so (the value stays what the administrator wrote).
        if let Some(w) = stall_warning(
            "default_destination_concurrency_limit",
            p.default_destination_concurrency_limit,
        ) {
            warnings.push(w);
        }
        // qmgr reads these only so that get_mail_conf_int2("local", ...) sees them.
        cf.get_int("local_destination_concurrency_limit", 2, 0, 0)?;
        cf.get_int("local_destination_recipient_limit", 1, 0, 0)?;
        let verify_default = (p.qmgr_message_active_limit / 4).max(1);
        p.address_verify_pending_request_limit =
            cf.get_int("address_verify_pending_request_limit", verify_default, 1, 0)?;

        // qmgr/qmgr.c:qmgr_post_init.
        if p.qmgr_message_recipient_limit < p.qmgr_message_active_limit {
            warnings.push(
                "qmgr_message_recipient_limit is smaller than qmgr_message_active_limit - adjusting qmgr_message_recipient_limit"
                    .to_string(),
            );
            p.qmgr_message_recipient_limit = p.qmgr_message_active_limit;
        }
        if p.bounce_queue_lifetime > p.maximal_queue_lifetime {
            warnings.push(
                "bounce_queue_lifetime is larger than maximal_queue_lifetime - adjusting bounce_queue_lifetime".to_string(),
            );
            p.bounce_queue_lifetime = p.maximal_queue_lifetime;
        }
        p.ipc_timeout = p.qmgr_ipc_timeout;
        Ok((p, warnings))
    }

    /// True if `queue` is listed in `hash_queue_names` (case-insensitively).
    pub fn is_hashed(&self, queue: &str) -> bool {
        self.hash_queue_names
            .iter()
            .any(|q| q.eq_ignore_ascii_case(queue))
    }

    /// Reads the parameters of transport `name`, falling back to the global
    /// defaults (`qmgr_transport_create`), when the first recipient for the
    /// transport is resolved. Warnings come back with the parameters.
    ///
    /// Errors: [`ConfigError`] for a value Postfix's qmgr ends on (`fatal:
    /// bad numerical configuration: NAME = VALUE`, a value below its
    /// minimum, a bad time unit): the caller ends the process.
    pub fn transport(
        &self,
        cf: &mut MainCf,
        name: &str,
    ) -> Result<(TransportParams, Vec<String>), ConfigError> {
        let int = |cf: &mut MainCf, suffix: &str, fallback: i64, min: i64, max: i64| {
            cf.get_int2(name, suffix, fallback, min, max)
        };
        let time = |cf: &mut MainCf, suffix: &str, fallback: i64, min: i64| {
            cf.get_time2(name, suffix, fallback, 's', min, 0)
        };
        // In qmgr_transport_create's order, so that the first bad value is
        // the one Postfix would report.
        let dest_concurrency_limit = int(
            cf,
            "_destination_concurrency_limit",
            self.default_destination_concurrency_limit,
            0,
            0,
        )?;
        let recipient_limit = int(
            cf,
            "_destination_recipient_limit",
            self.default_destination_recipient_limit,
            0,
            0,
        )?;
        let init_dest_concurrency = int(
            cf,
            "_initial_destination_concurrency",
            self.initial_destination_concurrency,
            1,
            0,
        )?;
        let xport_rate_delay = time(
            cf,
            "_transport_rate_delay",
            self.default_transport_rate_delay,
            0,
        )?;
        let rate_delay = time(
            cf,
            "_destination_rate_delay",
            self.default_destination_rate_delay,
            0,
        )?;
        let slot_cost = int(
            cf,
            "_delivery_slot_cost",
            self.default_delivery_slot_cost,
            0,
            0,
        )?;
        let slot_loan = int(
            cf,
            "_delivery_slot_loan",
            self.default_delivery_slot_loan,
            0,
            0,
        )?;
        let slot_discount = int(
            cf,
            "_delivery_slot_discount",
            self.default_delivery_slot_discount,
            0,
            100,
        )?;
        let min_slots = int(
            cf,
            "_minimum_delivery_slots",
            self.default_minimum_delivery_slots,
            0,
            0,
        )?;
        let rcpt_unused = int(cf, "_recipient_limit", self.default_recipient_limit, 0, 0)?;
        let rcpt_per_stack = int(
            cf,
            "_extra_recipient_limit",
            self.default_extra_recipient_limit,
            0,
            0,
        )?;
        let refill_limit = int(
            cf,
            "_recipient_refill_limit",
            self.default_recipient_refill_limit,
            1,
            0,
        )?;
        let refill_delay = time(
            cf,
            "_recipient_refill_delay",
            self.default_recipient_refill_delay,
            1,
        )?;
        let feedback = |cf: &mut MainCf, tail: &str, default_name: &str, default: &str| {
            let own = format!("{name}{tail}");
            cf.get_str(&own, default, 1, 0).map(|value| {
                let shown = if value != default { &own } else { default_name };
                FeedbackParam::new(shown, &value)
            })
        };
        let pos_feedback = feedback(
            cf,
            "_destination_concurrency_positive_feedback",
            "default_destination_concurrency_positive_feedback",
            &self.default_destination_concurrency_positive_feedback,
        )?;
        let neg_feedback = feedback(
            cf,
            "_destination_concurrency_negative_feedback",
            "default_destination_concurrency_negative_feedback",
            &self.default_destination_concurrency_negative_feedback,
        )?;
        let fail_cohort_limit = int(
            cf,
            "_destination_concurrency_failed_cohort_limit",
            self.default_destination_concurrency_failed_cohort_limit,
            0,
            0,
        )?;
        let mut t = TransportParams {
            dest_concurrency_limit,
            recipient_limit,
            init_dest_concurrency,
            xport_rate_delay,
            rate_delay,
            slot_cost,
            slot_loan,
            slot_loan_factor: 100 - slot_discount,
            min_slots,
            rcpt_unused,
            rcpt_per_stack,
            refill_limit,
            refill_delay,
            pos_feedback,
            neg_feedback,
            fail_cohort_limit,
        };
        if t.rate_delay > 0 {
            t.dest_concurrency_limit = 1;
        }
        if t.dest_concurrency_limit != 0 && t.dest_concurrency_limit < t.init_dest_concurrency {
            t.init_dest_concurrency = t.dest_concurrency_limit;
        }
        let warnings = stall_warning(
            &format!("{name}_destination_concurrency_limit"),
            t.dest_concurrency_limit,
        )
        .into_iter()
        .collect();
        Ok((t, warnings))
    }
}

impl MainCf {
    /// A boolean whose default is an expression (e.g. `smtputf8_enable`).
    fn get_bool_expr(&mut self, name: &str, default_expr: &str) -> Result<bool, ConfigError> {
        if self.lookup(name)?.is_none() {
            self.set(name, default_expr);
        }
        let v = self.lookup(name)?.unwrap_or_default();
        match v.to_ascii_lowercase().as_str() {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => Err(ConfigError::BadBool {
                name: name.into(),
                value: v,
            }),
        }
    }
}

/// The per-transport parameter lookups the core is given
/// ([`crate::qmgr::TransportConfig`]): main.cf as it was loaded, with the
/// global defaults (`qmgr_transport_create`).
pub struct TransportTable {
    params: Params,
    cf: MainCf,
}

impl TransportTable {
    /// A table over `cf` with the defaults of `params`.
    pub fn new(params: Params, cf: MainCf) -> TransportTable {
        TransportTable { params, cf }
    }
}

impl crate::qmgr::TransportConfig for TransportTable {
    fn lookup(&mut self, transport: &str) -> Result<(TransportParams, Vec<String>), ConfigError> {
        self.params.transport(&mut self.cf, transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn defaults_match_postconf_d() {
        let mut cf = MainCf::parse(
            "compatibility_level = 3.6\nmyhostname = h.example\n",
            Path::new("m"),
        )
        .unwrap();
        let (p, w) = Params::read(&mut cf).unwrap();
        assert!(w.is_empty());
        assert_eq!(p.qmgr_message_active_limit, 20000);
        assert_eq!(p.minimal_backoff_time, 300);
        assert_eq!(p.maximal_backoff_time, 4000);
        assert_eq!(p.maximal_queue_lifetime, 5 * 86400);
        assert_eq!(p.address_verify_pending_request_limit, 5000);
        assert_eq!(p.ipc_timeout, 60);
        assert!(p.smtputf8_enable);
        assert_eq!(p.syslog_name, "postfix");
        assert!(p.is_hashed("deferred") && p.is_hashed("DEFER") && !p.is_hashed("incoming"));
        let (local, _) = p.transport(&mut cf, "local").unwrap();
        assert_eq!(
            (local.dest_concurrency_limit, local.recipient_limit),
            (2, 1)
        );
        let (smtp, _) = p.transport(&mut cf, "smtp").unwrap();
        assert_eq!(
            (
                smtp.dest_concurrency_limit,
                smtp.recipient_limit,
                smtp.init_dest_concurrency
            ),
            (20, 50, 5)
        );
        assert_eq!(smtp.slot_loan_factor, 50);
    }

    #[test]
    fn post_init_adjustments_and_rate_delay() {
        let mut cf = MainCf::parse(
            "myhostname = h.example\nqmgr_message_active_limit = 30000\nbounce_queue_lifetime = 9d\nslow_destination_rate_delay = 1s\nmaximal_queue_lifetime = 3\n",
            Path::new("m"),
        )
        .unwrap();
        let (p, w) = Params::read(&mut cf).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(p.qmgr_message_recipient_limit, 30000);
        assert_eq!(p.maximal_queue_lifetime, 3 * 86400);
        assert_eq!(p.bounce_queue_lifetime, 3 * 86400);
        let (slow, _) = p.transport(&mut cf, "slow").unwrap();
        assert_eq!(
            (
                slow.rate_delay,
                slow.dest_concurrency_limit,
                slow.init_dest_concurrency
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn negative_limits_are_taken_as_they_stand() {
        let mut cf = MainCf::parse(
            "myhostname = h.example\nsmtp_destination_concurrency_limit = -5\ndefault_destination_recipient_limit = -1\n",
            Path::new("m"),
        )
        .unwrap();
        let (p, w) = Params::read(&mut cf).unwrap();
        assert_eq!(p.default_destination_recipient_limit, -1);
        assert!(w.is_empty());
        let (smtp, w) = p.transport(&mut cf, "smtp").unwrap();
        assert_eq!(
            (smtp.dest_concurrency_limit, smtp.init_dest_concurrency),
            (-5, -5)
        );
        assert_eq!(smtp.recipient_limit, -1);
        assert_eq!(
            w,
            vec![
                "smtp_destination_concurrency_limit = -5 is negative: no mail will be delivered where it applies"
                    .to_string()
            ]
        );
    }

    #[test]
    fn bad_transport_value_is_fatal_when_the_transport_is_first_used() {
        let mut cf = MainCf::parse(
            "myhostname = h.example\nx_destination_concurrency_limit = lots\nx_initial_destination_concurrency = 0\ny_recipient_refill_delay = 0s\n",
            Path::new("m"),
        )
        .unwrap();
        let (p, _) = Params::read(&mut cf).unwrap();
        let e = p.transport(&mut cf, "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad numerical configuration: x_destination_concurrency_limit = lots"
        );
        let e = p.transport(&mut cf, "y").unwrap_err();
        assert_eq!(e.to_string(), "invalid y_recipient_refill_delay: 0 (min 1)");
        assert!(p.transport(&mut cf, "z").is_ok());
    }
}
