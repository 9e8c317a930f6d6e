//! The server side of the RFC 6455 §4.2 opening handshake over HTTP/1.1, sans-IO.
//!
//! [`parse_request`] reads the bytes received so far and either asks for more (`Ok(None)`),
//! accepts the head as an [`Upgrade`], or refuses it with a [`HandshakeError`] that knows its
//! status, its metrics label and how to write its own response. [`write_switching_protocols`]
//! writes the 101 that starts the WebSocket stream. The client side, for the load generator,
//! lives in `crate::http::client` and is re-exported here so both sides are named from one
//! module.
//!
//! Invariants:
//! - Nothing here touches a file descriptor; input is a borrowed slice and output is appended to
//!   a caller-owned `Vec`.
//! - Parsing consumes nothing past the head: `header_bytes` is the head's length, and any bytes
//!   after it belong to the WebSocket stream.
//! - httparse never looks past the header cap, so the work done on each call is bounded and a
//!   head longer than the cap is refused whether or not it is complete.
//! - The server checks run in the order of RFC 6455 §4.2.1, except that the version is judged
//!   before the key: a client of an older draft then hears 426 with the version to retry with,
//!   not a 400 about a key format that draft never used. A request that breaks several rules is
//!   refused for the first one.
//! - The server never echoes a subprotocol it does not support and never answers an extension
//!   offer; not answering `Sec-WebSocket-Extensions` is how an offer is declined.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

pub use crate::http::client::{
    client_key, parse_response, write_client_request, ClientHandshake, ClientHandshakeError,
    RESPONSE_HEADER_BYTES_MAX,
};
use crate::http::headers::{has_token, single_value, tokens, trim_whitespace};
use crate::http::response::{push_header, write_response};

/// The GUID appended to the client's key before hashing (RFC 6455 §1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The request head cap used by `Config::default()`, in bytes. Browsers send 0.5–2 KiB.
pub const HEADER_BYTES_MAX_DEFAULT: usize = 8 * 1024;

/// How many header lines a head may have, on either side. httparse fills a fixed array of this
/// many entries, so it is also the stack cost of a parse (32 bytes each).
pub const HEADER_LINES_MAX: usize = 64;

/// The length of the nonce that `Sec-WebSocket-Key` carries, in bytes (RFC 6455 §4.1).
pub const KEY_BYTES: usize = 16;

/// The length of a valid `Sec-WebSocket-Key` value: 16 bytes in padded base64.
const KEY_ENCODED_BYTES: usize = 24;

/// Every value [`HandshakeError::reason`] can return, so metrics can start each label at zero.
pub const ALL_REASONS: &[&str] = &[
    "malformed",
    "header_too_large",
    "too_many_headers",
    "method_not_allowed",
    "http_version",
    "not_found",
    "bad_request",
    "missing_host",
    "not_websocket_upgrade",
    "missing_connection_upgrade",
    "unsupported_version",
    "bad_key",
    "origin_not_allowed",
    "overloaded",
    "shutting_down",
];

/// What the server accepts in a handshake.
#[derive(Clone, Debug)]
pub struct Config {
    /// The longest request head accepted, in bytes, counting the blank line that ends it.
    pub header_bytes_max: usize,
    /// Serialized origins (`https://example.com`) allowed to connect, compared ASCII
    /// case-insensitively. Empty allows any origin, including none.
    pub allow_origins: Vec<String>,
    /// Subprotocols this server speaks, compared exactly. The client's order decides the pick.
    pub subprotocols: Vec<String>,
}

impl Default for Config {
    /// A derived default would cap heads at 0 bytes and refuse every request, so the default
    /// uses [`HEADER_BYTES_MAX_DEFAULT`] and allows any origin and no subprotocol.
    fn default() -> Self {
        Self {
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            allow_origins: Vec::new(),
            subprotocols: Vec::new(),
        }
    }
}

/// An accepted upgrade request: what the server needs to answer it and start the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade<R> {
    /// What the router made of the request target.
    pub route: R,
    /// The request target as sent, including any query.
    pub path: String,
    /// The `Sec-WebSocket-Accept` value for the 101.
    pub accept: String,
    /// The subprotocol chosen from the client's offer, if any.
    pub subprotocol: Option<String>,
    /// Bytes of the request head consumed; anything after belongs to the WebSocket stream.
    pub header_bytes: usize,
}

/// Why a server refused a handshake. Each variant maps to one status and one metrics label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.x syntax (400).
    Malformed,
    /// The head does not end within `Config::header_bytes_max` bytes (431).
    HeaderTooLarge,
    /// The head has more than [`HEADER_LINES_MAX`] header lines (431).
    TooManyHeaders,
    /// The method is not `GET`, which RFC 6455 §4.2.1 requires (405, with `Allow: GET`).
    MethodNotAllowed,
    /// The version is below HTTP/1.1, or not HTTP/1.x at all (400).
    HttpVersion,
    /// The router knows no endpoint at the request target (404).
    NotFound,
    /// The router refused the request target; the text names the problem (400).
    BadRequest(&'static str),
    /// `Host` is missing, empty, or sent more than once (400, RFC 9112 §3.2).
    MissingHost,
    /// `Upgrade` is missing or lacks the token `websocket` (400).
    NotWebSocketUpgrade,
    /// `Connection` is missing or lacks the token `upgrade` (400).
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` is missing or not exactly `13` (426, with
    /// `Sec-WebSocket-Version: 13` so the client can retry).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing, sent more than once, or not the padded standard base64 of
    /// exactly 16 bytes (400).
    BadKey,
    /// An origin allow-list is set and `Origin` is absent, duplicated or not on it (403).
    OriginNotAllowed,
    /// The node is at its connection limit (`--max-conns`) (503).
    Overloaded,
    /// The node is draining for shutdown and takes no new connections (503).
    ShuttingDown,
}

impl HandshakeError {
    /// Every value [`HandshakeError::reason`] can return; the same list as [`ALL_REASONS`].
    pub const ALL_REASONS: &'static [&'static str] = ALL_REASONS;

    /// How many refusal labels there are: the length of the per-reason counters.
    pub const COUNT: usize = ALL_REASONS.len();

    /// This refusal's index in [`ALL_REASONS`] (and in the per-reason counters), so
    /// counting a refusal is an index, not a search.
    pub const fn slot(&self) -> usize {
        match self {
            Self::Malformed => 0,
            Self::HeaderTooLarge => 1,
            Self::TooManyHeaders => 2,
            Self::MethodNotAllowed => 3,
            Self::HttpVersion => 4,
            Self::NotFound => 5,
            Self::BadRequest(_) => 6,
            Self::MissingHost => 7,
            Self::NotWebSocketUpgrade => 8,
            Self::MissingConnectionUpgrade => 9,
            Self::UnsupportedVersion => 10,
            Self::BadKey => 11,
            Self::OriginNotAllowed => 12,
            Self::Overloaded => 13,
            Self::ShuttingDown => 14,
        }
    }

    /// The HTTP status code of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed
            | Self::HttpVersion
            | Self::BadRequest(_)
            | Self::MissingHost
            | Self::NotWebSocketUpgrade
            | Self::MissingConnectionUpgrade
            | Self::BadKey => 400,
            Self::OriginNotAllowed => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedVersion => 426,
            Self::HeaderTooLarge | Self::TooManyHeaders => 431,
            Self::Overloaded | Self::ShuttingDown => 503,
        }
    }

    /// A short snake_case label for metrics; one of [`ALL_REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::HeaderTooLarge => "header_too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::HttpVersion => "http_version",
            Self::NotFound => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::MissingHost => "missing_host",
            Self::NotWebSocketUpgrade => "not_websocket_upgrade",
            Self::MissingConnectionUpgrade => "missing_connection_upgrade",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadKey => "bad_key",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// A one-line description for a person, used as the refusal's body.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed HTTP request",
            Self::HeaderTooLarge => "request head too large",
            Self::TooManyHeaders => "too many request header fields",
            Self::MethodNotAllowed => "a WebSocket handshake must be a GET request",
            Self::HttpVersion => "a WebSocket handshake needs HTTP/1.1",
            Self::NotFound => "no WebSocket endpoint at this path",
            Self::BadRequest(detail) => detail,
            Self::MissingHost => "missing, empty or repeated Host header",
            Self::NotWebSocketUpgrade => "Upgrade header must include websocket",
            Self::MissingConnectionUpgrade => "Connection header must include upgrade",
            Self::UnsupportedVersion => "unsupported Sec-WebSocket-Version; this server speaks 13",
            Self::BadKey => "Sec-WebSocket-Key must be one padded base64 value of 16 bytes",
            Self::OriginNotAllowed => "origin not allowed",
            Self::Overloaded => "server at its connection limit; retry later",
            Self::ShuttingDown => "server shutting down; retry later",
        }
    }

    /// Appends the complete refusal to `dst`: status, any header the status calls for, a short
    /// text body, and `Connection: close`, since the connection is not worth keeping.
    pub fn write_refusal(&self, dst: &mut Vec<u8>) {
        let extra_headers: &[(&str, &str)] = match self {
            Self::MethodNotAllowed => &[("Allow", "GET")],
            Self::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        };
        write_response(
            dst,
            self.status(),
            extra_headers,
            Some("text/plain; charset=utf-8"),
            self.message().as_bytes(),
            false,
        );
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for HandshakeError {}

/// Parses an upgrade request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and shorter than the cap; the caller reads
/// more and calls again with the whole buffer. `route` receives the full request target
/// (including any query) and its error is returned as is. On success nothing past
/// `Upgrade::header_bytes` has been looked at.
pub fn parse_request<R>(
    buf: &[u8],
    cfg: &Config,
    route: impl FnOnce(&str) -> Result<R, HandshakeError>,
) -> Result<Option<Upgrade<R>>, HandshakeError> {
    // Parsing only the first `header_bytes_max` bytes bounds the work per call and folds both
    // oversize cases into one: a head that does not end within the cap is partial there.
    let capped = &buf[..buf.len().min(cfg.header_bytes_max)];
    let mut header_storage = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
    let mut request = httparse::Request::new(&mut header_storage);
    let header_bytes = match request.parse(capped) {
        Ok(httparse::Status::Complete(header_bytes)) => header_bytes,
        Ok(httparse::Status::Partial) if buf.len() >= cfg.header_bytes_max => {
            return Err(HandshakeError::HeaderTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        // httparse only takes `HTTP/1.x`, so a version error means some other HTTP version. It
        // stops at that token, so a non-GET method on such a line is reported as the version.
        Err(httparse::Error::Version) => return Err(HandshakeError::HttpVersion),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    debug_assert!(header_bytes <= cfg.header_bytes_max);

    // A complete parse fills method, path and version; the `ok_or` only keeps peer input from
    // reaching an `unwrap`.
    let method = request.method.ok_or(HandshakeError::Malformed)?;
    let path = request.path.ok_or(HandshakeError::Malformed)?;
    let version = request.version.ok_or(HandshakeError::Malformed)?;
    let headers: &[httparse::Header<'_>] = request.headers;

    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    let route = route(path)?;

    match single_value(headers, "Host") {
        Some(host) if !trim_whitespace(host).is_empty() => {}
        _ => return Err(HandshakeError::MissingHost),
    }
    if !has_token(headers, "Upgrade", b"websocket") {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !has_token(headers, "Connection", b"upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if single_value(headers, "Sec-WebSocket-Version").map(trim_whitespace) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match single_value(headers, "Sec-WebSocket-Key").map(trim_whitespace) {
        Some(key) if key_is_valid(key) => key,
        _ => return Err(HandshakeError::BadKey),
    };
    if !origin_allowed(headers, &cfg.allow_origins) {
        return Err(HandshakeError::OriginNotAllowed);
    }

    // The client lists protocols in its order of preference (RFC 6455 §11.3.4), so the first
    // offered one this server speaks wins. Comparison is exact: protocol names are
    // case-sensitive.
    let subprotocol = tokens(headers, "Sec-WebSocket-Protocol").find_map(|offered| {
        cfg.subprotocols
            .iter()
            .find(|supported| supported.as_bytes() == offered)
            .cloned()
    });

    Ok(Some(Upgrade {
        route,
        path: path.to_owned(),
        accept: accept_key(key),
        subprotocol,
        header_bytes,
    }))
}

/// The `Sec-WebSocket-Accept` value for `key` as sent by the client: the base64 of the SHA-1 of
/// the key followed by [`WEBSOCKET_GUID`] (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let digest = Sha1::new()
        .chain_update(key)
        .chain_update(WEBSOCKET_GUID.as_bytes())
        .finalize();
    BASE64.encode(digest)
}

/// Appends the 101 that accepts an upgrade. The WebSocket stream starts right after it.
pub fn write_switching_protocols(dst: &mut Vec<u8>, accept: &str, subprotocol: Option<&str>) {
    dst.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    push_header(dst, "Upgrade", "websocket");
    push_header(dst, "Connection", "Upgrade");
    push_header(dst, "Sec-WebSocket-Accept", accept);
    if let Some(subprotocol) = subprotocol {
        push_header(dst, "Sec-WebSocket-Protocol", subprotocol);
    }
    dst.extend_from_slice(b"\r\n");
}

/// Whether `key` is the padded standard base64 of exactly [`KEY_BYTES`] bytes.
fn key_is_valid(key: &[u8]) -> bool {
    // Sixteen bytes always encode to 24 characters, the last two `=`, so the length check leaves
    // only the alphabet and canonical padding for the decoder to judge. base64 wants room for its
    // estimate (3 bytes per 4 characters), hence 18 bytes of output for 16 decoded.
    if key.len() != KEY_ENCODED_BYTES {
        return false;
    }
    let mut decoded = [0u8; KEY_ENCODED_BYTES / 4 * 3];
    matches!(BASE64.decode_slice(key, &mut decoded), Ok(KEY_BYTES))
}

/// Whether the request's origin passes `allow_origins`. An allow-list with no single `Origin`
/// line fails: browsers always send one, so a missing origin means a client the list was not
/// written for.
fn origin_allowed(headers: &[httparse::Header<'_>], allow_origins: &[String]) -> bool {
    if allow_origins.is_empty() {
        return true;
    }
    match single_value(headers, "Origin").map(trim_whitespace) {
        Some(origin) => allow_origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from RFC 6455 §1.3.
    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// A request as a current browser sends it, extension offer included.
    const BROWSER_REQUEST: &str = "GET /chat?room=lobby HTTP/1.1\r\n\
        Host: push.example.com\r\n\
        Connection: Upgrade\r\n\
        Pragma: no-cache\r\n\
        Cache-Control: no-cache\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n\
        Upgrade: websocket\r\n\
        Origin: https://example.com\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br\r\n\
        Accept-Language: en-US,en;q=0.9\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        \r\n";

    /// The header lines of a minimal valid request, for tests that replace one of them.
    const VALID_LINES: [&str; 5] = [
        "Host: push.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];

    fn config() -> Config {
        Config {
            header_bytes_max: 4096,
            ..Config::default()
        }
    }

    /// Routes `/chat` (any query) and `/bad`, the shape of the real router.
    fn route(target: &str) -> Result<&'static str, HandshakeError> {
        match target.split_once('?').map_or(target, |(path, _query)| path) {
            "/chat" => Ok("chat"),
            "/bad" => Err(HandshakeError::BadRequest("bad topic")),
            _ => Err(HandshakeError::NotFound),
        }
    }

    fn head(request_line: &str, lines: &[&str]) -> Vec<u8> {
        let mut text = format!("{request_line}\r\n");
        for line in lines {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.into_bytes()
    }

    /// The valid lines with every line named `name` dropped and `replacements` appended.
    fn replacing<'a>(name: &str, replacements: &[&'a str]) -> Vec<&'a str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let mut lines: Vec<&str> = VALID_LINES
            .iter()
            .copied()
            .filter(|line| !line.to_ascii_lowercase().starts_with(&prefix))
            .collect();
        lines.extend_from_slice(replacements);
        lines
    }

    fn parse(buf: &[u8], cfg: &Config) -> Result<Option<Upgrade<&'static str>>, HandshakeError> {
        parse_request(buf, cfg, route)
    }

    fn accepted(buf: &[u8], cfg: &Config) -> Upgrade<&'static str> {
        match parse(buf, cfg) {
            Ok(Some(upgrade)) => upgrade,
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    fn refused(buf: &[u8], cfg: &Config) -> HandshakeError {
        match parse(buf, cfg) {
            Err(error) => error,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn refused_with(name: &str, replacements: &[&str]) -> HandshakeError {
        refused(
            &head("GET /chat HTTP/1.1", &replacing(name, replacements)),
            &config(),
        )
    }

    fn refusal_text(error: &HandshakeError) -> String {
        let mut dst = Vec::new();
        error.write_refusal(&mut dst);
        String::from_utf8(dst).expect("refusals are ASCII")
    }

    /// One of each variant. The match makes adding a variant without listing it here a compile
    /// error, so the label and refusal tests cannot silently skip one.
    fn every_error() -> Vec<HandshakeError> {
        let all = vec![
            HandshakeError::Malformed,
            HandshakeError::HeaderTooLarge,
            HandshakeError::TooManyHeaders,
            HandshakeError::MethodNotAllowed,
            HandshakeError::HttpVersion,
            HandshakeError::NotFound,
            HandshakeError::BadRequest("bad topic"),
            HandshakeError::MissingHost,
            HandshakeError::NotWebSocketUpgrade,
            HandshakeError::MissingConnectionUpgrade,
            HandshakeError::UnsupportedVersion,
            HandshakeError::BadKey,
            HandshakeError::OriginNotAllowed,
            HandshakeError::Overloaded,
            HandshakeError::ShuttingDown,
        ];
        for error in &all {
            match error {
                HandshakeError::Malformed
                | HandshakeError::HeaderTooLarge
                | HandshakeError::TooManyHeaders
                | HandshakeError::MethodNotAllowed
                | HandshakeError::HttpVersion
                | HandshakeError::NotFound
                | HandshakeError::BadRequest(_)
                | HandshakeError::MissingHost
                | HandshakeError::NotWebSocketUpgrade
                | HandshakeError::MissingConnectionUpgrade
                | HandshakeError::UnsupportedVersion
                | HandshakeError::BadKey
                | HandshakeError::OriginNotAllowed
                | HandshakeError::Overloaded
                | HandshakeError::ShuttingDown => {}
            }
        }
        all
    }

    #[test]
    fn rfc_6455_example_key() {
        assert_eq!(accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
    }

    #[test]
    fn browser_request_accepted() {
        let upgrade = accepted(BROWSER_REQUEST.as_bytes(), &config());
        assert_eq!(
            upgrade,
            Upgrade {
                route: "chat",
                path: "/chat?room=lobby".to_owned(),
                accept: RFC_ACCEPT.to_owned(),
                subprotocol: None,
                header_bytes: BROWSER_REQUEST.len(),
            }
        );
    }

    #[test]
    fn incomplete_until_the_last_byte() {
        let request = BROWSER_REQUEST.as_bytes();
        for split in 0..request.len() {
            assert_eq!(
                parse(&request[..split], &config()),
                Ok(None),
                "split at {split}"
            );
        }
        assert_eq!(accepted(request, &config()).header_bytes, request.len());
    }

    #[test]
    fn pipelined_frame_bytes_are_not_consumed() {
        // A masked text frame "Hi" the client sent without waiting for the 101.
        let frame = [0x81, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x93];
        let mut buf = BROWSER_REQUEST.as_bytes().to_vec();
        buf.extend_from_slice(&frame);
        let upgrade = accepted(&buf, &config());
        assert_eq!(upgrade.header_bytes, BROWSER_REQUEST.len());
        assert_eq!(&buf[upgrade.header_bytes..], &frame);
    }

    #[test]
    fn switching_protocols_is_exact() {
        let mut dst = Vec::new();
        write_switching_protocols(&mut dst, RFC_ACCEPT, None);
        assert_eq!(
            dst,
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              \r\n"
        );

        dst.clear();
        write_switching_protocols(&mut dst, RFC_ACCEPT, Some("chat.v2"));
        assert_eq!(
            dst,
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: chat.v2\r\n\
              \r\n"
        );
    }

    #[test]
    fn permessage_deflate_offer_is_not_answered() {
        let upgrade = accepted(BROWSER_REQUEST.as_bytes(), &config());
        let mut dst = Vec::new();
        write_switching_protocols(&mut dst, &upgrade.accept, upgrade.subprotocol.as_deref());
        let text = String::from_utf8(dst).expect("101 is ASCII");
        assert!(!text.to_ascii_lowercase().contains("extensions"), "{text}");
    }

    #[test]
    fn malformed_heads() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET /chat HTTP/1.1\r\nHost push.example.com\r\n\r\n",
            b"GET  /chat HTTP/1.1\r\n\r\n",
            b"GET /chat HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert_eq!(
                refused(garbage, &config()),
                HandshakeError::Malformed,
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn method_must_be_get() {
        for request_line in [
            "POST /chat HTTP/1.1",
            "get /chat HTTP/1.1",
            "HEAD /chat HTTP/1.1",
        ] {
            let error = refused(&head(request_line, &VALID_LINES), &config());
            assert_eq!(error, HandshakeError::MethodNotAllowed, "{request_line}");
        }
        let text = refusal_text(&HandshakeError::MethodNotAllowed);
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"),
            "{text}"
        );
    }

    #[test]
    fn version_must_be_http_1_1() {
        let error = refused(&head("GET /chat HTTP/1.0", &VALID_LINES), &config());
        assert_eq!(error, HandshakeError::HttpVersion);
        let error = refused(&head("GET /chat HTTP/2.0", &VALID_LINES), &config());
        assert_eq!(error, HandshakeError::HttpVersion);
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn router_decides_the_path() {
        let error = refused(&head("GET /nowhere HTTP/1.1", &VALID_LINES), &config());
        assert_eq!(error, HandshakeError::NotFound);
        assert_eq!(error.status(), 404);
        let error = refused(&head("GET /bad?x=1 HTTP/1.1", &VALID_LINES), &config());
        assert_eq!(error, HandshakeError::BadRequest("bad topic"));
        assert_eq!(error.status(), 400);
        assert!(refusal_text(&error).ends_with("\r\n\r\nbad topic"));
    }

    #[test]
    fn router_sees_the_full_target() {
        let mut seen = String::new();
        let buf = head("GET /chat?room=a&since=9 HTTP/1.1", &VALID_LINES);
        let upgrade = parse_request(&buf, &config(), |target| {
            seen = target.to_owned();
            Ok(())
        });
        assert!(matches!(upgrade, Ok(Some(_))));
        assert_eq!(seen, "/chat?room=a&since=9");
    }

    #[test]
    fn host_required_once() {
        assert_eq!(refused_with("Host", &[]), HandshakeError::MissingHost);
        assert_eq!(
            refused_with("Host", &["Host: "]),
            HandshakeError::MissingHost
        );
        assert_eq!(
            refused_with("Host", &["Host: a.example", "Host: b.example"]),
            HandshakeError::MissingHost
        );
    }

    #[test]
    fn upgrade_must_name_websocket() {
        assert_eq!(
            refused_with("Upgrade", &[]),
            HandshakeError::NotWebSocketUpgrade
        );
        for value in [
            "Upgrade: h2c",
            "Upgrade: websocket/13",
            "Upgrade: websockets",
        ] {
            assert_eq!(
                refused_with("Upgrade", &[value]),
                HandshakeError::NotWebSocketUpgrade,
                "{value}"
            );
        }
    }

    #[test]
    fn connection_must_name_upgrade() {
        for replacement in [
            &[][..],
            &["Connection: keep-alive"],
            &["Connection: upgraded"],
            &["Connection: keep-alive-upgrade"],
        ] {
            assert_eq!(
                refused_with("Connection", replacement),
                HandshakeError::MissingConnectionUpgrade,
                "{replacement:?}"
            );
        }
    }

    #[test]
    fn token_lists_any_case_whitespace_and_lines() {
        let variants: [(&[&'static str], &[&'static str]); 5] = [
            (
                &["Upgrade: websocket"],
                &["Connection: keep-alive, Upgrade"],
            ),
            (&["upgrade: WebSocket"], &["connection: UPGRADE"]),
            (
                &["Upgrade: h2c ,\tWEBSOCKET "],
                &["Connection:keep-alive,,upgrade"],
            ),
            (
                &["Upgrade: h2c", "Upgrade: websocket"],
                &["Connection: keep-alive", "Connection: Upgrade"],
            ),
            (
                &["UPGRADE: websocket, h2c"],
                &["CONNECTION: Upgrade , keep-alive"],
            ),
        ];
        for (upgrade_lines, connection_lines) in variants {
            let mut lines = replacing("Upgrade", upgrade_lines);
            lines.retain(|line| !line.starts_with("Connection:"));
            lines.extend_from_slice(connection_lines);
            let buf = head("GET /chat HTTP/1.1", &lines);
            assert_eq!(accepted(&buf, &config()).accept, RFC_ACCEPT, "{lines:?}");
        }
    }

    #[test]
    fn version_must_be_13() {
        for replacement in [
            &[][..],
            &["Sec-WebSocket-Version: 8"],
            &["Sec-WebSocket-Version: 13, 8"],
            &["Sec-WebSocket-Version: 013"],
            &["Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13"],
        ] {
            assert_eq!(
                refused_with("Sec-WebSocket-Version", replacement),
                HandshakeError::UnsupportedVersion,
                "{replacement:?}"
            );
        }
        let lines = replacing("Sec-WebSocket-Version", &["sec-websocket-version:  13 "]);
        assert_eq!(
            accepted(&head("GET /chat HTTP/1.1", &lines), &config()).accept,
            RFC_ACCEPT
        );
    }

    #[test]
    fn unsupported_version_refusal_is_exact() {
        let error = refused_with("Sec-WebSocket-Version", &["Sec-WebSocket-Version: 8"]);
        let body = error.message();
        let expected = format!(
            "HTTP/1.1 426 Upgrade Required\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\
             Connection: close\r\n\
             \r\n\
             {body}",
            body.len()
        );
        assert_eq!(refusal_text(&error), expected);
    }

    #[test]
    fn key_must_be_16_bytes_of_padded_base64() {
        let bad_keys = [
            BASE64.encode([7u8; 15]),
            BASE64.encode([7u8; 17]),
            // Sixteen bytes, but unpadded, URL-safe, or with trailing bits set.
            "dGhlIHNhbXBsZSBub25jZQ".to_owned(),
            "-_-_-_-_-_-_-_-_-_-_-w==".to_owned(),
            "dGhlIHNhbXBsZSBub25jZR==".to_owned(),
            "not base64 at all!!!!!==".to_owned(),
            String::new(),
        ];
        for key in bad_keys {
            let line = format!("Sec-WebSocket-Key: {key}");
            assert_eq!(
                refused_with("Sec-WebSocket-Key", &[&line]),
                HandshakeError::BadKey,
                "{key}"
            );
        }
        assert_eq!(
            refused_with("Sec-WebSocket-Key", &[]),
            HandshakeError::BadKey
        );
        let twice = [
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ];
        assert_eq!(
            refused_with("Sec-WebSocket-Key", &twice),
            HandshakeError::BadKey
        );
    }

    #[test]
    fn origin_allow_list() {
        let cfg = Config {
            allow_origins: vec!["https://example.com".to_owned()],
            ..config()
        };
        let with_origin = |origin: &'static str| {
            let mut lines = VALID_LINES.to_vec();
            lines.push(origin);
            head("GET /chat HTTP/1.1", &lines)
        };
        accepted(&with_origin("Origin: https://example.com"), &cfg);
        accepted(&with_origin("origin: HTTPS://Example.COM"), &cfg);
        for origin in [
            "Origin: https://evil.example",
            "Origin: https://example.com.evil.example",
            "Origin: http://example.com",
            "Origin: null",
        ] {
            assert_eq!(
                refused(&with_origin(origin), &cfg),
                HandshakeError::OriginNotAllowed,
                "{origin}"
            );
        }
        let absent = head("GET /chat HTTP/1.1", &VALID_LINES);
        assert_eq!(refused(&absent, &cfg), HandshakeError::OriginNotAllowed);
        assert_eq!(HandshakeError::OriginNotAllowed.status(), 403);
        // Without an allow-list any origin, or none, is fine.
        accepted(&with_origin("Origin: https://evil.example"), &config());
        accepted(&absent, &config());
    }

    #[test]
    fn checks_run_in_rfc_order() {
        // POST with nothing else valid: the method is reported first.
        let error = refused(&head("POST /nowhere HTTP/1.0", &[]), &config());
        assert_eq!(error, HandshakeError::MethodNotAllowed);
        // The version is judged before the route and the route before any header.
        let error = refused(&head("GET /nowhere HTTP/1.0", &[]), &config());
        assert_eq!(error, HandshakeError::HttpVersion);
        let error = refused(&head("GET /nowhere HTTP/1.1", &[]), &config());
        assert_eq!(error, HandshakeError::NotFound);
        let error = refused(
            &head("GET /chat HTTP/1.1", &["Upgrade: websocket"]),
            &config(),
        );
        assert_eq!(error, HandshakeError::MissingHost);
        let cfg = Config {
            allow_origins: vec!["https://example.com".to_owned()],
            ..config()
        };
        let lines = replacing("Sec-WebSocket-Key", &["Sec-WebSocket-Key: short"]);
        assert_eq!(
            refused(&head("GET /chat HTTP/1.1", &lines), &cfg),
            HandshakeError::BadKey
        );
    }

    #[test]
    fn subprotocol_first_offered_that_is_supported() {
        let cfg = Config {
            subprotocols: vec!["chat.v2".to_owned(), "chat.v1".to_owned()],
            ..config()
        };
        let cases: [(&[&'static str], Option<&str>); 7] = [
            (
                &["Sec-WebSocket-Protocol: chat.v1, chat.v2"],
                Some("chat.v1"),
            ),
            (
                &["Sec-WebSocket-Protocol: chat.v3,chat.v2"],
                Some("chat.v2"),
            ),
            (
                &[
                    "Sec-WebSocket-Protocol: chat.v3",
                    "sec-websocket-protocol: chat.v1",
                ],
                Some("chat.v1"),
            ),
            (&["Sec-WebSocket-Protocol: Chat.V1, CHAT.v2"], None),
            (&["Sec-WebSocket-Protocol: mqtt, wamp"], None),
            (&["Sec-WebSocket-Protocol: chat"], None),
            (&[], None),
        ];
        for (lines, expected) in cases {
            let mut all = VALID_LINES.to_vec();
            all.extend_from_slice(lines);
            let upgrade = accepted(&head("GET /chat HTTP/1.1", &all), &cfg);
            assert_eq!(upgrade.subprotocol.as_deref(), expected, "{lines:?}");

            let mut response = Vec::new();
            write_switching_protocols(&mut response, &upgrade.accept, expected);
            let text = String::from_utf8(response).expect("101 is ASCII");
            assert_eq!(
                text.contains("Sec-WebSocket-Protocol"),
                expected.is_some(),
                "{text}"
            );
        }

        let offered = head(
            "GET /chat HTTP/1.1",
            &replacing("Host", &["Host: h", "Sec-WebSocket-Protocol: chat.v1"]),
        );
        assert_eq!(accepted(&offered, &config()).subprotocol, None);
    }

    #[test]
    fn header_cap_for_incomplete_head() {
        let request = BROWSER_REQUEST.as_bytes();
        let cap = 100;
        let cfg = Config {
            header_bytes_max: cap,
            ..config()
        };
        assert_eq!(parse(&request[..cap - 1], &cfg), Ok(None));
        assert_eq!(
            refused(&request[..cap], &cfg),
            HandshakeError::HeaderTooLarge
        );
        assert_eq!(refused(request, &cfg), HandshakeError::HeaderTooLarge);
        assert_eq!(HandshakeError::HeaderTooLarge.status(), 431);
    }

    #[test]
    fn header_cap_for_complete_head() {
        let request = BROWSER_REQUEST.as_bytes();
        let exact = Config {
            header_bytes_max: request.len(),
            ..config()
        };
        assert_eq!(accepted(request, &exact).header_bytes, request.len());
        let one_short = Config {
            header_bytes_max: request.len() - 1,
            ..config()
        };
        assert_eq!(refused(request, &one_short), HandshakeError::HeaderTooLarge);

        // A cookie far past the cap, with the head complete in the buffer.
        let cookie = format!("Cookie: {}", "c".repeat(10_000));
        let mut lines: Vec<&str> = VALID_LINES.to_vec();
        lines.push(&cookie);
        let buf = head("GET /chat HTTP/1.1", &lines);
        assert_eq!(refused(&buf, &config()), HandshakeError::HeaderTooLarge);
    }

    #[test]
    fn too_many_header_lines() {
        let mut lines = VALID_LINES.to_vec();
        lines.extend(std::iter::repeat_n(
            "X-Filler: 1",
            HEADER_LINES_MAX - VALID_LINES.len(),
        ));
        accepted(&head("GET /chat HTTP/1.1", &lines), &config());
        lines.push("X-Filler: 1");
        let error = refused(&head("GET /chat HTTP/1.1", &lines), &config());
        assert_eq!(error, HandshakeError::TooManyHeaders);
        assert_eq!(error.status(), 431);
    }

    #[test]
    fn default_config_accepts_a_browser() {
        accepted(BROWSER_REQUEST.as_bytes(), &Config::default());
    }

    #[test]
    fn every_refusal_is_complete_and_closes() {
        for error in every_error() {
            let mut dst = Vec::new();
            error.write_refusal(&mut dst);
            let mut storage = [httparse::EMPTY_HEADER; 8];
            let mut response = httparse::Response::new(&mut storage);
            let header_bytes = match response.parse(&dst) {
                Ok(httparse::Status::Complete(header_bytes)) => header_bytes,
                other => panic!("{error:?}: refusal head does not parse: {other:?}"),
            };
            assert_eq!(response.code, Some(error.status()), "{error:?}");
            let headers: &[httparse::Header<'_>] = response.headers;
            let header = |name: &str| single_value(headers, name);
            assert_eq!(header("Connection"), Some(&b"close"[..]), "{error:?}");
            let body = &dst[header_bytes..];
            let length = body.len().to_string();
            assert_eq!(
                header("Content-Length"),
                Some(length.as_bytes()),
                "{error:?}"
            );
            assert_eq!(body, error.message().as_bytes(), "{error:?}");
            assert!(!body.is_empty(), "{error:?}");
            let expect_version = error == HandshakeError::UnsupportedVersion;
            assert_eq!(
                header("Sec-WebSocket-Version").is_some(),
                expect_version,
                "{error:?}"
            );
            let expect_allow = error == HandshakeError::MethodNotAllowed;
            assert_eq!(header("Allow").is_some(), expect_allow, "{error:?}");
        }
    }

    #[test]
    fn statuses_per_variant() {
        let statuses: Vec<u16> = every_error().iter().map(HandshakeError::status).collect();
        assert_eq!(
            statuses,
            [400, 431, 431, 405, 400, 404, 400, 400, 400, 400, 426, 400, 403, 503, 503]
        );
    }

    #[test]
    fn reasons_are_listed_once_each() {
        let errors = every_error();
        assert_eq!(ALL_REASONS.len(), errors.len());
        assert_eq!(HandshakeError::ALL_REASONS, ALL_REASONS);
        for error in &errors {
            let reason = error.reason();
            assert_eq!(
                ALL_REASONS
                    .iter()
                    .filter(|listed| **listed == reason)
                    .count(),
                1
            );
            assert!(
                reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{reason}"
            );
        }
    }

    #[test]
    fn each_refusal_has_its_own_slot_holding_its_label() {
        let errors = every_error();
        assert_eq!(HandshakeError::COUNT, errors.len());
        let mut seen = [false; HandshakeError::COUNT];
        for error in &errors {
            let slot = error.slot();
            assert!(!seen[slot], "{error:?} shares slot {slot}");
            seen[slot] = true;
            assert_eq!(ALL_REASONS[slot], error.reason(), "{error:?}");
        }
    }
}
