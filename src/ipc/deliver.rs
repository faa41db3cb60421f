//! The delivery agent protocol (`qmgr/qmgr_deliver.c`,
//! `global/deliver_request.c`): the request qmgr writes on
//! `private/<transport>` (a common attribute list, then one list per
//! recipient), the `MSG_STATS` time stamps, and the agent's reply.

use super::attr::{parse_int, AttrError, AttrList, AttrWriter};
use super::Dsn;
use crate::proto::{deliver_flag as del_flag, smtputf8};
use crate::qfile::{Envelope, Recipient, Text};
use base64::Engine as _;

/// The agent's announcement (`MAIL_ATTR_PROTO_DELIVER`).
pub const PROTOCOL: &str = "delivery_request_protocol";

/// Size of `MSG_STATS` on LP64 Linux: five `struct timeval` and an int,
/// padded to 88 bytes; agents reject any other length.
pub const MSG_STATS_LEN: usize = 88;

/// Encodes `MSG_STATS` with only the incoming and active arrival times set,
/// as qmgr does (`QMGR_MSG_STATS`). Times are (seconds, microseconds).
pub fn msg_stats(incoming: (i64, i64), active: (i64, i64)) -> [u8; MSG_STATS_LEN] {
    let mut b = [0u8; MSG_STATS_LEN];
    b[0..8].copy_from_slice(&incoming.0.to_ne_bytes());
    b[8..16].copy_from_slice(&incoming.1.to_ne_bytes());
    b[16..24].copy_from_slice(&active.0.to_ne_bytes());
    b[24..32].copy_from_slice(&active.1.to_ne_bytes());
    b
}

fn all_ascii(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii)
}

/// The VERP sender (`global/verp_sender.c`): `local` d1 `rlocal` d2 `rdomain`
/// `@domain`, where r is the recipient's original address if it has one.
pub fn verp_sender(delims: &[u8], sender: &[u8], rcpt: &Recipient) -> Vec<u8> {
    let r = if rcpt.orig_rcpt().is_empty() {
        rcpt.address()
    } else {
        rcpt.orig_rcpt()
    };
    let (s_local, s_domain) = crate::address::split(sender);
    let mut out = s_local.to_vec();
    if !r.is_empty() {
        out.push(delims[0]);
        match crate::address::split(r) {
            (local, Some(domain)) => {
                out.extend_from_slice(local);
                out.push(delims[1]);
                out.extend_from_slice(domain);
            }
            (all, None) => out.extend_from_slice(all),
        }
    }
    if let Some(d) = s_domain {
        out.push(b'@');
        out.extend_from_slice(d);
    }
    out
}

/// What a delivery request is built from.
pub struct Request<'a> {
    pub queue_id: &'a str,
    pub env: &'a Envelope,
    /// The queue's nexthop.
    pub nexthop: &'a [u8],
    /// Per-queue connection-cache flags (`CONN_LOAD`/`CONN_STORE`).
    pub queue_dflags: u32,
    pub recipients: &'a [Recipient],
    /// When the message entered qmgr's memory: (seconds, microseconds).
    pub active_arrival: (i64, i64),
    /// `smtputf8_enable`.
    pub smtputf8_enable: bool,
}

/// Serialises a delivery request exactly as `qmgr_deliver_send_request`
/// does: 23 common attributes, the list terminator, then each recipient's
/// five attributes and terminator.
pub fn encode_request(req: &Request<'_>) -> Vec<u8> {
    let env = req.env;
    let mut utf8_flags = env.smtputf8;
    if req.smtputf8_enable {
        for r in req.recipients {
            if !r.address().is_empty()
                && !all_ascii(r.address())
                && std::str::from_utf8(r.address()).is_ok()
            {
                utf8_flags |= smtputf8::RECIPIENT;
                if env.texts.is_set(Text::VerpDelims) {
                    utf8_flags |= smtputf8::SENDER;
                }
            }
        }
    }
    let plain_sender = env.texts.or_empty(Text::Sender);
    let verp;
    let sender = match (env.texts.get(Text::VerpDelims), req.recipients.first()) {
        (Some(d), Some(first)) => {
            verp = verp_sender(d, plain_sender, first);
            &verp[..]
        }
        _ => plain_sender,
    };
    let flags = env.tflags
        | req.queue_dflags
        | if env.texts.is_set(Text::Inspect) {
            del_flag::BOUNCE
        } else {
            del_flag::DEFLT
        };
    let stats = msg_stats(env.arrival, req.active_arrival);
    let s = |t| env.texts.or_empty(t);
    let mut w = AttrWriter::new();
    w.int("flags", flags)
        .str("queue_name", b"active")
        .str("queue_id", req.queue_id.as_bytes())
        .long("offset", env.data_offset)
        .long("size", env.cont_length)
        .str("nexthop", req.nexthop)
        .str("encoding", s(Text::Encoding))
        .int("smtputf8", utf8_flags)
        .str("sender", sender)
        .str("envelope_id", s(Text::DsnEnvid))
        .int("ret_flags", env.dsn_ret)
        .data("time", &stats)
        .str("log_client_name", s(Text::ClientName))
        .str("log_client_address", s(Text::ClientAddr))
        .str("log_client_port", s(Text::ClientPort))
        .str("log_protocol_name", s(Text::ClientProto))
        .str("log_helo_name", s(Text::ClientHelo))
        .str("sasl_method", s(Text::SaslMethod))
        .str("sasl_username", s(Text::SaslUsername))
        .str("sasl_sender", s(Text::SaslSender))
        .str("log_ident", s(Text::LogIdent))
        .str(
            "rewrite_context",
            env.texts.get(Text::RewriteContext).unwrap_or(b"local"),
        )
        .int("recipient_count", req.recipients.len() as u32)
        .end();
    for r in req.recipients {
        w.str("original_recipient", r.orig_rcpt())
            .str("recipient", r.address())
            .long("offset", r.offset)
            .str("dsn_orig_rcpt", r.dsn_orcpt())
            .int("notify_flags", r.dsn_notify)
            .end();
    }
    w.into_bytes()
}

/// The agent's final reply: the hop status (empty unless the destination
/// itself is the problem) and the request status (0 = every recipient is
/// finished; anything else = some recipient must be retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub hop: Dsn,
    pub status: i32,
}

/// The attribute names of a delivery agent's final reply, in order
/// (`global/deliver_request.c`: `deliver_request_final`).
pub const REPLY_ATTRS: [&str; 8] = [
    "status",
    "diag_type",
    "diag_text",
    "mta_type",
    "mta_mname",
    "action",
    "reason",
    "status",
];

/// Parses the reply list (`deliver_request_final` / `qmgr_deliver_final_reply`).
///
/// Errors: any deviation from the 8 attributes of [`REPLY_ATTRS`].
pub fn parse_reply(list: &AttrList) -> Result<Reply, AttrError> {
    let v = list.expect(&REPLY_ATTRS)?;
    Ok(Reply {
        hop: Dsn {
            status: v[0].to_vec(),
            diag_type: v[1].to_vec(),
            diag_text: v[2].to_vec(),
            mta_type: v[3].to_vec(),
            mta_mname: v[4].to_vec(),
            action: v[5].to_vec(),
            reason: v[6].to_vec(),
        },
        status: parse_int("status", v[7])?,
    })
}

/// Decodes a base64 `MSG_STATS` (for tests and fake agents).
pub fn decode_msg_stats(text: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_layout() {
        let b = msg_stats((1795393402, 847387), (1795393402, 862672));
        let enc = base64::engine::general_purpose::STANDARD.encode(b);
        assert_eq!(enc.len(), 120);
        assert!(enc.starts_with("eocDawAAAAAb7gwAAAAAAHqHA2sAAAAA0CkNAAAA"));
    }

    #[test]
    fn verp() {
        let r = Recipient::new(0, b"joe@example.net", b"", b"", 0).unwrap();
        assert_eq!(
            verp_sender(b"+=", b"owner-list@example.com", &r),
            b"owner-list+joe=example.net@example.com"
        );
        assert_eq!(verp_sender(b"+=", b"owner", &r), b"owner+joe=example.net");
    }

    #[test]
    fn request_matches_live_capture() {
        let mut env = Envelope {
            data_offset: 375,
            cont_length: 267,
            arrival: (1795393402, 847387),
            ..Default::default()
        };
        env.texts.set(Text::Sender, b"sender@discard.example");
        let rcpts = vec![Recipient::new(
            260,
            b"user1@capture.example",
            b"user1@capture.example",
            b"rfc822;user1@capture.example",
            0,
        )
        .unwrap()];
        let req = Request {
            queue_id: "D0D39992097",
            env: &env,
            nexthop: b"[cap.host]:25",
            queue_dflags: 0,
            recipients: &rcpts,
            active_arrival: (1795393402, 862672),
            smtputf8_enable: true,
        };
        let bytes = encode_request(&req);
        let (common, used) = AttrList::parse(&bytes).unwrap().unwrap();
        assert_eq!(common.len(), 23);
        assert_eq!(common.get(0), Some((&b"flags"[..], &b"3"[..])));
        assert_eq!(
            common.get(21),
            Some((&b"rewrite_context"[..], &b"local"[..]))
        );
        let (r, _) = AttrList::parse(&bytes[used..]).unwrap().unwrap();
        let v = r
            .expect(&[
                "original_recipient",
                "recipient",
                "offset",
                "dsn_orig_rcpt",
                "notify_flags",
            ])
            .unwrap();
        assert_eq!(v[2], b"260");
    }

    #[test]
    fn replies() {
        let (ok, _) = AttrList::parse(b"status\0\0diag_type\0\0diag_text\0\0mta_type\0\0mta_mname\0\0action\0\0reason\0\0status\x000\0\0")
            .unwrap()
            .unwrap();
        assert_eq!(parse_reply(&ok).unwrap().status, 0);
        let (d, _) = AttrList::parse(
            b"status\x004.4.1\0diag_type\0\0diag_text\0\0mta_type\0\0mta_mname\0\0action\0\0reason\0refused\0status\x004294967295\0\0",
        )
        .unwrap()
        .unwrap();
        let r = parse_reply(&d).unwrap();
        assert_eq!((r.status, r.hop.reason.as_slice()), (-1, &b"refused"[..]));
    }
}
