//! Email addresses as Postfix splits them: at the last `@`
//! (`strrchr(addr, '@')` throughout Postfix, e.g. `global/split_addr.c`,
//! `qmgr/qmgr_message.c`, `global/verp_sender.c`).

/// Splits `address` at its last `@`: the local part, and the domain
/// (without the `@`) if there is an `@`. The domain may be empty
/// (`user@`).
pub fn split(address: &[u8]) -> (&[u8], Option<&[u8]>) {
    match address.iter().rposition(|&c| c == b'@') {
        Some(at) => (&address[..at], Some(&address[at + 1..])),
        None => (address, None),
    }
}

/// The local part of `address` (all of it without an `@`).
pub fn local_part(address: &[u8]) -> &[u8] {
    split(address).0
}

/// The domain of `address`, if it has a non-empty one.
pub fn domain(address: &[u8]) -> Option<&[u8]> {
    split(address).1.filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_last_at() {
        assert_eq!(split(b"a@b@c"), (&b"a@b"[..], Some(&b"c"[..])));
        assert_eq!(split(b"user"), (&b"user"[..], None));
        assert_eq!(split(b"user@"), (&b"user"[..], Some(&b""[..])));
        assert_eq!(domain(b"user@"), None);
        assert_eq!(local_part(b"joe@x"), b"joe");
    }
}
