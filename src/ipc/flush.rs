//! The fast flush client (`global/flush_clnt.c:flush_add`): a deferred
//! recipient's domain, if `fast_flush_domains` lists it, gets the queue id
//! added to flush(8)'s per-site log, so that `postqueue -s site` and ETRN
//! find the mail.

use super::attr::AttrWriter;
use super::ServiceError;
use crate::config::{DomainList, Verdict};
use crate::proto::service::CLASS_PUBLIC;
use std::time::Duration;

/// flush(8)'s announcement (`MAIL_ATTR_PROTO_FLUSH`).
pub const PROTOCOL: &str = "queue_flush_protocol";

/// `FLUSH_STAT_OK`: the queue id was logged.
pub const STAT_OK: i32 = 0;
/// `FLUSH_STAT_DENY`: the site is not eligible.
pub const STAT_DENY: i32 = 4;

/// The fast flush client's configuration.
#[derive(Debug, Clone)]
pub struct Flush {
    /// `flush_service_name` (a public service).
    pub service: String,
    /// `fast_flush_domains`.
    pub domains: DomainList,
    pub timeout: Duration,
}

impl Flush {
    /// `flush_add(site, queue_id)`: asks flush(8) only when the list
    /// matches `site` (or only flush(8) can tell, for a table); else the
    /// site is not eligible.
    ///
    /// Errors: [`ServiceError`] when the service cannot be asked (logged
    /// as `mail_command_client` does).
    pub async fn add(&self, site: &str, queue_id: &str) -> Result<i32, ServiceError> {
        if self.domains.is_empty() || self.domains.verdict(site) == Verdict::NoMatch {
            return Ok(STAT_DENY);
        }
        let mut w = AttrWriter::new();
        w.str("request", b"add")
            .str("site", site.as_bytes())
            .str("queue_id", queue_id.as_bytes())
            .end();
        super::command_client(
            CLASS_PUBLIC,
            &self.service,
            PROTOCOL,
            w.bytes(),
            self.timeout,
        )
        .await
    }
}
