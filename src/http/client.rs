//! The client side of the RFC 6455 §4.1 opening handshake, for the load generator.
//!
//! [`client_key`] makes the nonce, [`write_client_request`] writes the upgrade request and
//! [`parse_response`] checks the server's answer. The server side is in
//! `crate::http::handshake`, which re-exports this API so callers name one module.
//!
//! Invariants:
//! - Nothing here touches a file descriptor; input is a borrowed slice and output is appended to
//!   a caller-owned `Vec`.
//! - Parsing consumes nothing past the head: a server may push frames right behind its 101, and
//!   `ClientHandshake::header_bytes` leaves them in the buffer.
//! - The request never offers an extension, so any `Sec-WebSocket-Extensions` in the answer
//!   fails the handshake.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::http::handshake::{HEADER_LINES_MAX, KEY_BYTES};
use crate::http::headers::{has_token, single_value, trim_whitespace, values};
use crate::http::response::push_header;

/// The cap on a 101 response head read by [`parse_response`], in bytes.
pub const RESPONSE_HEADER_BYTES_MAX: usize = 8 * 1024;

/// A client's accepted handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// Bytes of the response head consumed; anything after is already WebSocket frames.
    pub header_bytes: usize,
    /// The subprotocol the server chose. The caller checks it is one it offered, as RFC 6455
    /// §4.1 requires, since this parser does not know the offer.
    pub subprotocol: Option<String>,
}

/// Why a client failed the server's handshake response (RFC 6455 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHandshakeError {
    /// The head is not valid HTTP/1.1 syntax, or `Sec-WebSocket-Protocol` is not one token.
    Malformed,
    /// The status is not 101; the server refused the upgrade with this code.
    Status(u16),
    /// `Upgrade: websocket` or `Connection: upgrade` is missing from the 101.
    MissingUpgrade,
    /// `Sec-WebSocket-Accept` is missing, repeated, or does not match the key sent.
    BadAccept,
    /// The server answered `Sec-WebSocket-Extensions`, which this client never offers.
    UnexpectedExtension,
    /// The head does not end within [`RESPONSE_HEADER_BYTES_MAX`] bytes or has more than
    /// [`HEADER_LINES_MAX`] lines.
    HeaderTooLarge,
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed handshake response"),
            Self::Status(status) => write!(f, "server answered {status} instead of 101"),
            Self::MissingUpgrade => f.write_str("101 without Upgrade: websocket"),
            Self::BadAccept => f.write_str("Sec-WebSocket-Accept does not match the key"),
            Self::UnexpectedExtension => f.write_str("server answered an extension never offered"),
            Self::HeaderTooLarge => f.write_str("handshake response head too large"),
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

/// A `Sec-WebSocket-Key` value for a 16-byte nonce, which the caller draws at random for each
/// connection (RFC 6455 §4.1).
pub fn client_key(random: [u8; KEY_BYTES]) -> String {
    BASE64.encode(random)
}

/// Appends a client upgrade request for `path` on `host`, offering `subprotocols` in order of
/// preference and no extensions.
pub fn write_client_request(
    dst: &mut Vec<u8>,
    host: &str,
    path: &str,
    key: &str,
    subprotocols: &[&str],
) {
    write_client_request_with(dst, host, path, key, subprotocols, &[]);
}

/// As [`write_client_request`], with extra header lines (`name`, `value`) before the blank
/// line, e.g. an `Authorization` carrying a connection token. The values must hold no
/// CR or LF.
pub fn write_client_request_with(
    dst: &mut Vec<u8>,
    host: &str,
    path: &str,
    key: &str,
    subprotocols: &[&str],
    headers: &[(&str, &str)],
) {
    debug_assert!(path.starts_with('/') && !path.bytes().any(|b| b.is_ascii_whitespace()));
    dst.extend_from_slice(b"GET ");
    dst.extend_from_slice(path.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(dst, "Host", host);
    push_header(dst, "Upgrade", "websocket");
    push_header(dst, "Connection", "Upgrade");
    push_header(dst, "Sec-WebSocket-Key", key);
    push_header(dst, "Sec-WebSocket-Version", "13");
    if let Some((first, rest)) = subprotocols.split_first() {
        dst.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        dst.extend_from_slice(first.as_bytes());
        for subprotocol in rest {
            dst.extend_from_slice(b", ");
            dst.extend_from_slice(subprotocol.as_bytes());
        }
        dst.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        debug_assert!(!value.bytes().any(|b| b == b'\r' || b == b'\n'));
        push_header(dst, name, value);
    }
    dst.extend_from_slice(b"\r\n");
}

/// Parses the server's answer to [`write_client_request`] from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete; `expected_accept` is
/// `accept_key(key.as_bytes())` for the key that was sent.
pub fn parse_response(
    buf: &[u8],
    expected_accept: &str,
) -> Result<Option<ClientHandshake>, ClientHandshakeError> {
    let capped = &buf[..buf.len().min(RESPONSE_HEADER_BYTES_MAX)];
    let mut header_storage = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
    let mut response = httparse::Response::new(&mut header_storage);
    let header_bytes = match response.parse(capped) {
        Ok(httparse::Status::Complete(header_bytes)) => header_bytes,
        Ok(httparse::Status::Partial) if buf.len() >= RESPONSE_HEADER_BYTES_MAX => {
            return Err(ClientHandshakeError::HeaderTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ClientHandshakeError::HeaderTooLarge),
        Err(_) => return Err(ClientHandshakeError::Malformed),
    };
    let headers: &[httparse::Header<'_>] = response.headers;

    if response.version != Some(1) {
        return Err(ClientHandshakeError::Malformed);
    }
    match response.code {
        Some(101) => {}
        Some(status) => return Err(ClientHandshakeError::Status(status)),
        None => return Err(ClientHandshakeError::Malformed),
    }
    if !has_token(headers, "Upgrade", b"websocket") || !has_token(headers, "Connection", b"upgrade")
    {
        return Err(ClientHandshakeError::MissingUpgrade);
    }
    let accept = single_value(headers, "Sec-WebSocket-Accept").map(trim_whitespace);
    if accept != Some(expected_accept.as_bytes()) {
        return Err(ClientHandshakeError::BadAccept);
    }
    if values(headers, "Sec-WebSocket-Extensions").next().is_some() {
        return Err(ClientHandshakeError::UnexpectedExtension);
    }
    // The server picks at most one protocol, so anything but a single token is a broken answer.
    let subprotocol = match values(headers, "Sec-WebSocket-Protocol").count() {
        0 => None,
        1 => {
            let chosen = single_value(headers, "Sec-WebSocket-Protocol").map(trim_whitespace);
            match chosen.map(std::str::from_utf8) {
                Some(Ok(chosen)) if !chosen.is_empty() && !chosen.contains(',') => {
                    Some(chosen.to_owned())
                }
                _ => return Err(ClientHandshakeError::Malformed),
            }
        }
        _ => return Err(ClientHandshakeError::Malformed),
    };

    Ok(Some(ClientHandshake {
        header_bytes,
        subprotocol,
    }))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::handshake::{
        accept_key, parse_request, write_switching_protocols, Config, HandshakeError, Upgrade,
    };

    /// The example from RFC 6455 §1.3.
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// What the server side makes of `request`, which these tests expect it to accept.
    fn accepted(request: &[u8], cfg: &Config) -> Upgrade<()> {
        match parse_request(request, cfg, |_target| Ok(())) {
            Ok(Some(upgrade)) => upgrade,
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    fn round_trip_request(subprotocols: &[&str]) -> (Vec<u8>, String) {
        let key = client_key(*b"0123456789abcdef");
        let mut request = Vec::new();
        write_client_request(
            &mut request,
            "push.example.com:8080",
            "/chat?room=a",
            &key,
            subprotocols,
        );
        (request, key)
    }

    #[test]
    fn client_request_is_exact() {
        let (request, key) = round_trip_request(&["chat.v1", "chat.v2"]);
        assert_eq!(key, "MDEyMzQ1Njc4OWFiY2RlZg==");
        assert_eq!(
            String::from_utf8(request).expect("request is ASCII"),
            "GET /chat?room=a HTTP/1.1\r\n\
             Host: push.example.com:8080\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n\
             \r\n"
        );
    }

    #[test]
    fn client_server_round_trip() {
        let cfg = Config {
            subprotocols: vec!["chat.v2".to_owned()],
            ..Config::default()
        };
        let (request, key) = round_trip_request(&["chat.v1", "chat.v2"]);
        let upgrade = accepted(&request, &cfg);
        assert_eq!(upgrade.header_bytes, request.len());
        assert_eq!(upgrade.path, "/chat?room=a");
        assert_eq!(upgrade.subprotocol.as_deref(), Some("chat.v2"));

        let mut response = Vec::new();
        write_switching_protocols(
            &mut response,
            &upgrade.accept,
            upgrade.subprotocol.as_deref(),
        );
        let head_len = response.len();
        // The server may push a frame right behind the 101; the client must leave it alone.
        response.extend_from_slice(&[0x81, 0x02, b'h', b'i']);

        let expected_accept = accept_key(key.as_bytes());
        for split in 0..head_len {
            assert_eq!(
                parse_response(&response[..split], &expected_accept),
                Ok(None)
            );
        }
        assert_eq!(
            parse_response(&response, &expected_accept),
            Ok(Some(ClientHandshake {
                header_bytes: head_len,
                subprotocol: Some("chat.v2".to_owned()),
            }))
        );

        let (request, key) = round_trip_request(&[]);
        let upgrade = accepted(&request, &cfg);
        response.clear();
        write_switching_protocols(
            &mut response,
            &upgrade.accept,
            upgrade.subprotocol.as_deref(),
        );
        let handshake = parse_response(&response, &accept_key(key.as_bytes()));
        assert_eq!(handshake.map(|h| h.map(|h| h.subprotocol)), Ok(Some(None)));
    }

    #[test]
    fn client_rejects_wrong_accept() {
        let mut response = Vec::new();
        write_switching_protocols(
            &mut response,
            &accept_key(b"MDEyMzQ1Njc4OWFiY2RlZg=="),
            None,
        );
        assert_eq!(
            parse_response(&response, RFC_ACCEPT),
            Err(ClientHandshakeError::BadAccept)
        );

        let missing = b"HTTP/1.1 101 Switching Protocols\r\n\
            Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(
            parse_response(missing, RFC_ACCEPT),
            Err(ClientHandshakeError::BadAccept)
        );
    }

    #[test]
    fn client_sees_refusal_status() {
        let mut response = Vec::new();
        HandshakeError::NotFound.write_refusal(&mut response);
        assert_eq!(
            parse_response(&response, RFC_ACCEPT),
            Err(ClientHandshakeError::Status(404))
        );
        response.clear();
        HandshakeError::Overloaded.write_refusal(&mut response);
        assert_eq!(
            parse_response(&response, RFC_ACCEPT),
            Err(ClientHandshakeError::Status(503))
        );
    }

    #[test]
    fn client_rejects_broken_101s() {
        let accept = format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n");
        let response = |lines: &str| format!("HTTP/1.1 101 Switching Protocols\r\n{lines}\r\n");
        let cases = [
            (
                format!("Connection: Upgrade\r\n{accept}"),
                ClientHandshakeError::MissingUpgrade,
            ),
            (
                format!("Upgrade: websocket\r\n{accept}"),
                ClientHandshakeError::MissingUpgrade,
            ),
            (
                format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n{accept}\
                     Sec-WebSocket-Extensions: permessage-deflate\r\n"
                ),
                ClientHandshakeError::UnexpectedExtension,
            ),
            (
                format!(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n{accept}\
                     Sec-WebSocket-Protocol: a, b\r\n"
                ),
                ClientHandshakeError::Malformed,
            ),
        ];
        for (lines, expected) in cases {
            let text = response(&lines);
            assert_eq!(
                parse_response(text.as_bytes(), RFC_ACCEPT),
                Err(expected),
                "{text}"
            );
        }
        let old = format!("HTTP/1.0 101 Switching Protocols\r\n{accept}\r\n");
        assert_eq!(
            parse_response(old.as_bytes(), RFC_ACCEPT),
            Err(ClientHandshakeError::Malformed)
        );
        assert_eq!(
            parse_response(b"SSH-2.0-OpenSSH\r\n", RFC_ACCEPT),
            Err(ClientHandshakeError::Malformed)
        );
    }

    #[test]
    fn client_header_cap() {
        let mut response = b"HTTP/1.1 101 Switching Protocols\r\nX-Filler: ".to_vec();
        response.resize(RESPONSE_HEADER_BYTES_MAX - 1, b'x');
        assert_eq!(parse_response(&response, RFC_ACCEPT), Ok(None));
        response.push(b'x');
        assert_eq!(
            parse_response(&response, RFC_ACCEPT),
            Err(ClientHandshakeError::HeaderTooLarge)
        );
    }
}
