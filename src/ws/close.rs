//! Close codes (RFC 6455 §7.4) and close-frame payloads (§5.5.1).
//!
//! Owns the rule for which status codes may appear on the wire and the parsing of a
//! received close payload: an optional 2-byte big-endian code followed by a UTF-8 reason.
//!
//! Invariants:
//! - `parse_close_payload` never returns a code for which `is_valid_on_wire` is false.
//! - The node never sends 1005, 1006 or 1015: those are reserved for local reporting
//!   (§7.4.1), and the encoders in `frame` assert it in debug builds.

use std::fmt;

use crate::ws::frame::ProtocolError;

/// A close status code as carried in the first two bytes of a close payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, browser navigating away).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke a protocol rule.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1003: the peer sent a kind of data this endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007: a text message (or close reason) was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violated the endpoint's policy.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message was larger than the endpoint accepts.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 4001 (private range): another connection took over this session.
    pub const REPLACED: CloseCode = CloseCode(4001);
    /// 4002 (private range): the node is draining (`--drain-spread`); reconnect now, and a
    /// load balancer will send the client to another node.
    pub const RECONNECT_ELSEWHERE: CloseCode = CloseCode(4002);

    /// Whether this code may be sent in a close frame (§7.4.1, §7.4.2 and the IANA
    /// registry): 1000-1003, 1007-1014 and the 3000-4999 ranges for libraries and
    /// applications. 1004 is reserved, and 1005, 1006 and 1015 exist only to report a
    /// condition locally, so a peer that sends them broke the protocol.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The largest close reason, in bytes: a control payload holds at most 125 bytes and
/// the code takes two of them.
pub const CLOSE_REASON_BYTES_MAX: usize = 123;

/// Splits a received close payload into its code and reason.
///
/// An empty payload is legal and carries no code (§5.5.1). A payload of one byte cannot
/// hold a code, a code must be one a peer may send (§7.4), and the reason that follows
/// the code must be UTF-8-encoded data (§5.5.1).
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<CloseCode>, &str), ProtocolError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(ProtocolError::CloseTooShort),
        [high, low, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*high, *low]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::CloseReasonNotUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_matches_the_registry() {
        for code in [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 0, u16::MAX] {
            assert!(
                !CloseCode(code).is_valid_on_wire(),
                "{code} must be rejected"
            );
        }
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4001, 4999] {
            assert!(
                CloseCode(code).is_valid_on_wire(),
                "{code} must be accepted"
            );
        }
    }

    #[test]
    fn empty_payload_has_no_code() {
        assert_eq!(parse_close_payload(&[]), Ok((None, "")));
    }

    #[test]
    fn one_byte_payload_is_too_short() {
        assert_eq!(
            parse_close_payload(&[0x03]),
            Err(ProtocolError::CloseTooShort)
        );
    }

    #[test]
    fn code_and_reason_are_split() {
        let payload = [0x03, 0xe8, b'b', b'y', b'e'];
        assert_eq!(
            parse_close_payload(&payload),
            Ok((Some(CloseCode::NORMAL), "bye"))
        );
    }

    #[test]
    fn reserved_code_is_rejected() {
        let payload = 1005u16.to_be_bytes();
        assert_eq!(
            parse_close_payload(&payload),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
    }

    #[test]
    fn reason_must_be_utf8() {
        let payload = [0x03, 0xe8, 0xff];
        assert_eq!(
            parse_close_payload(&payload),
            Err(ProtocolError::CloseReasonNotUtf8)
        );
    }
}
