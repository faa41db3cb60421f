//! The address verification client qmgr uses for probes it disposes of
//! itself (`global/verify.c:verify_append`, `global/verify_clnt.c:
//! verify_clnt_update`): the probe's result goes into verify(8)'s
//! database, and the `status=deliverable|undeliverable` line is logged.

use super::attr::AttrWriter;
use crate::proto::service::CLASS_PRIVATE;
use std::time::Duration;

/// verify(8)'s announcement (`MAIL_ATTR_PROTO_VERIFY`, spelled as Postfix
/// spells it).
pub const PROTOCOL: &str = "address_verification_prrotocol";

/// `VRFY_STAT_OK`.
pub const STAT_OK: i32 = 0;

/// A recipient's verification status (`DEL_RCPT_STAT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptStatus {
    Ok = 0,
    Defer = 1,
    Bounce = 2,
}

/// The verify client's configuration.
#[derive(Debug, Clone)]
pub struct Verify {
    /// `address_verify_service_name`.
    pub service: String,
    /// `address_verify_negative_cache`.
    pub negative_cache: bool,
    pub timeout: Duration,
}

impl Verify {
    /// `verify_clnt_update`: records `status` and `why` for `address`.
    /// Like Postfix, connects as `mail_connect_wait` does (`connect #N to
    /// subsystem private/verify: ...`, 10 s apart, until it works), and
    /// retries every second until verify(8) answers; a failure other
    /// than a broken pipe is logged as `warning: problem talking to
    /// service verify: ...`. Returns the service's status ([`STAT_OK`] on
    /// success).
    pub async fn update(&self, address: &[u8], status: RcptStatus, why: &[u8]) -> i32 {
        let mut w = AttrWriter::new();
        w.str("request", b"update")
            .str("address", address)
            .int("recipient_status", status as u32)
            .str("reason", why)
            .end();
        loop {
            let mut peer =
                super::connect_wait(CLASS_PRIVATE, &self.service, tokio::time::sleep).await;
            match super::exchange(
                &mut peer,
                CLASS_PRIVATE,
                &self.service,
                PROTOCOL,
                w.bytes(),
                self.timeout,
            )
            .await
            {
                Ok(status) => return status,
                Err(e) => {
                    if !e.gone_away() {
                        tracing::warn!(
                            "problem talking to service {}: {}",
                            self.service,
                            e.cause()
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
