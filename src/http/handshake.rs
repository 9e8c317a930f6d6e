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
use crate::http::response::{push_header, write_refusal};
use crate::http::upgrade_headers::UpgradeHeaders;

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
    // The connection-token refusals, in the token layer's order ([`TokenRefusal::index`]).
    "token_missing",
    "token_malformed",
    "token_wrong_algorithm",
    "token_unknown_key",
    "token_bad_signature",
    "token_expired",
    "token_not_yet_valid",
    "channel_not_allowed",
    "token_session_mismatch",
    // The per-address admission refusals and the PROXY header refusals.
    "too_many_per_ip",
    "connect_rate_per_ip",
    "address_table_full",
    "proxy_header_untrusted",
    "proxy_header_invalid",
];

/// Where the per-address and PROXY header refusals start in [`ALL_REASONS`] (right after
/// the token refusals).
pub const ADMISSION_REASONS_START: usize = 24;

/// Where the token refusals start in [`ALL_REASONS`].
pub const TOKEN_REASONS_START: usize = 15;

/// The token layer's verdict on an upgrade, as plain data: this module names nothing of the
/// crate outside `http/`, so the caller translates its own refusal into this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRefusal {
    /// The refusal's index among the token labels: its label is
    /// `ALL_REASONS[TOKEN_REASONS_START + index]`.
    pub index: u8,
    /// 401 (a different token could succeed) or 403 (the token is valid, the request is
    /// outside it).
    pub status: u16,
    /// The refusal's body.
    pub message: &'static str,
    /// The `WWW-Authenticate` value (RFC 6750 §3).
    pub challenge: &'static str,
}

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
    /// The `Authorization`, `Sec-WebSocket-Protocol` and `X-Forwarded-For` lines, copied
    /// for the token and proxy layers.
    pub headers: UpgradeHeaders,
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
    /// The connection token is missing or refused (401), or the request is outside it
    /// (403); decided by the caller after the parse, before the 101.
    Token(TokenRefusal),
    /// The client address holds `--max-conns-per-ip` connections already (429, with
    /// `Retry-After`).
    TooManyPerIp {
        /// Seconds after which a retry can succeed.
        retry_after_s: u32,
    },
    /// The client address opened connections faster than `--connect-rate-per-ip` (429,
    /// with `Retry-After`).
    ConnectRatePerIp {
        /// Seconds after which the address's bucket holds a token again.
        retry_after_s: u32,
    },
    /// The per-address table cannot remember another address (503).
    AddressTableFull,
    /// A PROXY protocol header from a peer outside `--trusted-proxy` (400): anyone can
    /// write one, so it is refused rather than believed or skipped.
    ProxyHeaderUntrusted,
    /// A trusted peer's PROXY header that breaks the protocol; the text names the rule
    /// (400).
    ProxyHeaderInvalid(&'static str),
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
            Self::Token(refusal) => TOKEN_REASONS_START + refusal.index as usize,
            Self::TooManyPerIp { .. } => ADMISSION_REASONS_START,
            Self::ConnectRatePerIp { .. } => ADMISSION_REASONS_START + 1,
            Self::AddressTableFull => ADMISSION_REASONS_START + 2,
            Self::ProxyHeaderUntrusted => ADMISSION_REASONS_START + 3,
            Self::ProxyHeaderInvalid(_) => ADMISSION_REASONS_START + 4,
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
            | Self::BadKey
            | Self::ProxyHeaderUntrusted
            | Self::ProxyHeaderInvalid(_) => 400,
            Self::OriginNotAllowed => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedVersion => 426,
            Self::HeaderTooLarge | Self::TooManyHeaders => 431,
            Self::TooManyPerIp { .. } | Self::ConnectRatePerIp { .. } => 429,
            Self::Overloaded | Self::ShuttingDown | Self::AddressTableFull => 503,
            Self::Token(refusal) => refusal.status,
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
            Self::Token(_)
            | Self::TooManyPerIp { .. }
            | Self::ConnectRatePerIp { .. }
            | Self::AddressTableFull
            | Self::ProxyHeaderUntrusted
            | Self::ProxyHeaderInvalid(_) => ALL_REASONS[self.slot()],
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
            Self::Token(refusal) => refusal.message,
            Self::TooManyPerIp { .. } => "too many connections from this address; retry later",
            Self::ConnectRatePerIp { .. } => "connecting too fast from this address; retry later",
            Self::AddressTableFull => "server tracks too many client addresses; retry later",
            Self::ProxyHeaderUntrusted => "PROXY protocol header from an untrusted peer",
            Self::ProxyHeaderInvalid(detail) => detail,
        }
    }

    /// Appends the complete refusal to `dst`: status, any header the status calls for, a short
    /// text body, and `Connection: close`, since the connection is not worth keeping.
    pub fn write_refusal(&self, dst: &mut Vec<u8>) {
        let challenge;
        let retry_after;
        let retry_header;
        let extra_headers: &[(&str, &str)] = match self {
            Self::Token(refusal) => {
                challenge = [("WWW-Authenticate", refusal.challenge)];
                &challenge
            }
            Self::TooManyPerIp { retry_after_s } | Self::ConnectRatePerIp { retry_after_s } => {
                retry_after = retry_after_s.max(&1).to_string();
                retry_header = [("Retry-After", retry_after.as_str())];
                &retry_header
            }
            Self::MethodNotAllowed => &[("Allow", "GET")],
            Self::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        };
        write_refusal(dst, self.status(), extra_headers, self.message());
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
        headers: UpgradeHeaders::collect(headers),
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
#[path = "handshake_tests.rs"]
mod tests;
