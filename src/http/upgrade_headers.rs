//! The request header lines the token and admission layers read, copied out of an upgrade
//! head so they outlive the receive buffer: `Authorization`, `Sec-WebSocket-Protocol` and
//! `X-Forwarded-For`.
//!
//! The handshake calls [`UpgradeHeaders::collect`] on an accepted head and carries the result
//! in its `Upgrade`; the token layer (`auth::find_credential`) and the proxy layer
//! (`http::proxy::client_from_forwarded_for`) read it as raw values.
//!
//! Invariants:
//! - Values are kept byte for byte and line by line, in order: a repeated `Authorization` line
//!   must stay visible to be refused, and list headers keep their own comma structure.
//! - Nothing is allocated for a header the request does not carry, so a request without
//!   them costs three empty `Vec`s.
//! - At most [`LINES_MAX`] lines of each are kept; the head itself is already capped, so
//!   this only bounds the copies.

use crate::http::headers::values;

/// The most lines of each header kept.
pub const LINES_MAX: usize = 8;

/// The raw values of the headers that name the client or carry its token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeHeaders {
    /// Every `Authorization` line.
    pub authorization: Vec<Box<[u8]>>,
    /// Every `Sec-WebSocket-Protocol` line (comma lists, as sent).
    pub subprotocols: Vec<Box<[u8]>>,
    /// Every `X-Forwarded-For` line (comma lists, as sent).
    pub forwarded_for: Vec<Box<[u8]>>,
}

impl UpgradeHeaders {
    /// Copies the three headers out of a parsed head.
    pub fn collect(headers: &[httparse::Header<'_>]) -> UpgradeHeaders {
        let copy = |name: &str| -> Vec<Box<[u8]>> {
            values(headers, name)
                .take(LINES_MAX)
                .map(Box::<[u8]>::from)
                .collect()
        };
        UpgradeHeaders {
            authorization: copy("Authorization"),
            subprotocols: copy("Sec-WebSocket-Protocol"),
            forwarded_for: copy("X-Forwarded-For"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'b>(name: &'b str, value: &'b str) -> httparse::Header<'b> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn collects_the_three_headers_line_by_line() {
        let headers = [
            field("Host", "x"),
            field("authorization", "Bearer a.b.c"),
            field("Sec-WebSocket-Protocol", "ringpush.v1"),
            field("X-Forwarded-For", "1.2.3.4, 5.6.7.8"),
            field("SEC-WEBSOCKET-PROTOCOL", "bearer.a.b.c"),
            field("Authorization", "Basic x"),
        ];
        let got = UpgradeHeaders::collect(&headers);
        let lines = |list: &[Box<[u8]>]| list.iter().map(|v| v.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            lines(&got.authorization),
            [b"Bearer a.b.c".to_vec(), b"Basic x".to_vec()]
        );
        assert_eq!(
            lines(&got.subprotocols),
            [b"ringpush.v1".to_vec(), b"bearer.a.b.c".to_vec()]
        );
        assert_eq!(lines(&got.forwarded_for), [b"1.2.3.4, 5.6.7.8".to_vec()]);
        assert_eq!(
            UpgradeHeaders::collect(&[field("Host", "x")]),
            UpgradeHeaders::default()
        );
    }

    #[test]
    fn keeps_a_bounded_number_of_lines() {
        let headers: Vec<_> = (0..20)
            .map(|_| field("X-Forwarded-For", "1.1.1.1"))
            .collect();
        assert_eq!(
            UpgradeHeaders::collect(&headers).forwarded_for.len(),
            LINES_MAX
        );
    }
}
