//! The admin API's HTTP/1.1 request parser, sans-IO: one request (head and body) at a time from
//! the front of a buffer, with keep-alive and pipelining.
//!
//! This file owns what the admin listener accepts: the endpoints (`POST /publish/<channel>`,
//! `POST /send/<session>`, `POST /broadcast`, `GET`/`HEAD` `/metrics`, `/healthz`,
//! `/history/<channel>`, `/channels` and `/channels/<channel>`, and the demo's files unless
//! `--no-demo`), their query parameters, the bearer-token check, the framing of request
//! bodies, and the text/binary choice for a published message. [`parse`] either asks for
//! more bytes (`Ok(None)`), returns one [`AdminRequest`] with the number of bytes it used,
//! or refuses with an [`AdminError`] that knows its status, its metrics label and how
//! to write its own response. [`write_json_ok`] writes the 200 for a publish or a send.
//! [`head_complete`] tells the caller when a request's head is in, so its body can get a
//! deadline of its own; [`AdminError::RequestTimeout`] (408) is the one refusal the caller's
//! timer decides rather than [`parse`].
//!
//! Invariants:
//! - Nothing here touches a file descriptor; input is a borrowed slice and output is appended to
//!   a caller-owned `Vec`.
//! - `Ok(None)` consumes nothing; the caller appends what it reads next and calls again with
//!   the whole buffer. A returned request has consumed exactly its head and its
//!   `Content-Length` bytes of body, so the bytes after it are the next pipelined request.
//! - httparse never looks past `head_bytes_max`, so the work per call is bounded, and a head that
//!   does not end within the cap is refused (431) whether or not the rest has arrived.
//! - Every refusal that the head alone decides (size, syntax, auth, path, method, name, framing,
//!   body cap) is reported as soon as the head is complete, before any of the body arrives; only
//!   the UTF-8 check of a text body waits for the body. A request that breaks several rules is
//!   refused for the first, in this order: 431, 400 malformed, 401, 404, 405, 400 name, 400
//!   query, 501 transfer coding, 411, 413, 400 UTF-8.
//! - Query parameters are read only on the endpoints that take them; elsewhere the query is
//!   ignored, as it always was. Unknown parameters are ignored (room for additions); a known
//!   one repeated, empty where a value is needed, or out of its syntax is refused 400. A
//!   `limit` above its endpoint's cap is lowered to the cap (the answer says `truncated`).
//! - Bodies are framed by `Content-Length` alone. Any `Transfer-Encoding` is refused with 501
//!   (RFC 9112 §6.1: a coding the server does not implement), not 411: the refusal names the
//!   header that broke the rule, and it also covers a request carrying both headers, the classic
//!   smuggling shape, without ever guessing which one frames the body.
//! - After any [`AdminError`] the caller writes its response and closes the connection: once a
//!   request is refused, where the next one starts is unknown. The refusal is written with
//!   `Connection: close` accordingly.
//! - The configured tokens are compared in constant time over the longer of the two lengths,
//!   so neither the first differing byte nor a length mismatch ends the comparison early
//!   (`admin_scope::AdminTokens`). A wrong token is refused (401) before routing; the
//!   publish-only token on an endpoint outside its scope is refused 403 once it is routed.
//!   The demo's files (`http::demo`) are public and the one exception: they skip the check.

use std::ops::Range;

use httparse::Status;

use crate::http::admin_scope::AdminTokens;
use crate::http::demo::{Demo, DemoAsset};
use crate::http::handshake::HEADER_LINES_MAX;
use crate::http::headers::{has_token, single_value, trim_whitespace, values};
use crate::http::response::write_response;

pub use crate::http::admin_error::AdminError;

/// Longest channel name or session id, in bytes.
pub const NAME_BYTES_MAX: usize = 128;

/// The `Allow` value for `/publish/<channel>` and `/send/<session>`.
const ALLOW_POST: &str = "POST";

/// The `Allow` value for `/metrics` and `/healthz`.
const ALLOW_GET_HEAD: &str = "GET, HEAD";

/// `GET /history/<channel>` without `limit`: entries returned at most.
pub const HISTORY_LIMIT_DEFAULT: usize = 100;

/// `GET /history/<channel>`: the largest `limit` honoured (a larger one is lowered to it).
pub const HISTORY_LIMIT_MAX: usize = 1000;

/// `GET /channels` without `limit`: channels listed at most.
pub const CHANNELS_LIMIT_DEFAULT: usize = 100;

/// `GET /channels`: the largest `limit` honoured (a larger one is lowered to it).
pub const CHANNELS_LIMIT_MAX: usize = 1000;

/// What the admin listener accepts.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The longest request head accepted, in bytes, counting the blank line that ends it.
    pub head_bytes_max: usize,
    /// The longest request body accepted, in bytes, judged from `Content-Length`.
    pub body_bytes_max: usize,
    /// The admin tokens (`--admin-token`, `--admin-publish-token`): without a full token
    /// every request is accepted; with one, each request must carry a configured token, and
    /// the publish-only one reaches only its endpoints (`AdminScope::allows`).
    pub tokens: AdminTokens,
    /// Whether `GET /demo` is served (`--no-demo` turns it off), and the port its page uses.
    pub demo: Demo,
}

/// Which endpoint a request is for, with its validated name where the path carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `POST /publish/<channel>`: the body goes to every subscriber of the channel.
    Publish(String),
    /// `POST /send/<session>`: the body goes to every connection of the session.
    Send(String),
    /// `GET /metrics` or `HEAD /metrics`.
    Metrics,
    /// `GET /healthz` or `HEAD /healthz`.
    Healthz,
    /// `GET /history/<channel>?since=K&limit=M`: the retained messages after offset `since`
    /// (default 0), at most `limit` of them (default [`HISTORY_LIMIT_DEFAULT`], at most
    /// [`HISTORY_LIMIT_MAX`]).
    History {
        /// The channel, validated.
        channel: String,
        /// Messages at or below this offset are left out.
        since: u64,
        /// Messages returned at most, already lowered to the cap.
        limit: usize,
    },
    /// `GET /channels?prefix=P&limit=N`: the active channels whose names start with `prefix`
    /// (default: all), in name order, at most `limit` (default [`CHANNELS_LIMIT_DEFAULT`], at
    /// most [`CHANNELS_LIMIT_MAX`]).
    Channels {
        /// Names listed start with this (validated: name bytes only, at most 128).
        prefix: String,
        /// Channels listed at most, already lowered to the cap.
        limit: usize,
    },
    /// `GET /channels/<channel>`: one channel's subscribers and position.
    Channel(String),
    /// `POST /broadcast`: one payload to several channels, named in the JSON body (read by
    /// the admin service, not here).
    Broadcast,
    /// `GET /demo` and the files it loads, when the demo is served.
    Demo(DemoAsset),
}

/// Which WebSocket message a body becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A text message: the media type is `text/*` or `application/json`, and the body has been
    /// checked to be valid UTF-8.
    Text,
    /// A binary message: any other media type, or no `Content-Type`. Also the kind of every
    /// `GET`/`HEAD` request, whose body (if any) is skipped, never inspected.
    Binary,
}

/// One accepted request.
#[derive(Debug)]
pub struct AdminRequest {
    /// The endpoint, with its validated name.
    pub target: Target,
    /// Text or binary, decided from `Content-Type`.
    pub kind: BodyKind,
    /// Where the body lies in the buffer given to [`parse`]; empty when there is no body.
    pub body: Range<usize>,
    /// Whether the connection stays open after the response: HTTP/1.1 unless `Connection:
    /// close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// A `HEAD` request: respond with the head a `GET` would get, without its body.
    pub head_only: bool,
}

/// Whether `buf` starts with a complete request head that asks for `100 Continue`
/// (curl sends `Expect: 100-continue` for bodies over 1 KiB and waits a second for it).
pub fn expects_continue(buf: &[u8]) -> bool {
    let mut header_storage = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
    let mut request = httparse::Request::new(&mut header_storage);
    matches!(request.parse(buf), Ok(httparse::Status::Complete(_)))
        && has_token(request.headers, "expect", b"100-continue")
}

/// Whether `buf` starts with a complete request head (whatever its validity): from then on the
/// request's body has its own deadline.
pub fn head_complete(buf: &[u8]) -> bool {
    let mut header_storage = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
    let mut request = httparse::Request::new(&mut header_storage);
    matches!(request.parse(buf), Ok(httparse::Status::Complete(_)))
}

/// Parses one request (head and body) from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and shorter than the cap, or while the head is
/// complete and accepted but the body is not all there yet; the caller reads more and calls
/// again with the whole buffer. Refusals the head decides are reported as soon as the head is
/// complete, without waiting for the body. On success the `usize` is the bytes consumed (head
/// plus body); nothing after them has been looked at.
pub fn parse(buf: &[u8], cfg: &AdminConfig) -> Result<Option<(AdminRequest, usize)>, AdminError> {
    // Parsing only the first `head_bytes_max` bytes bounds the work per call and folds both
    // oversize cases into one: a head that does not end within the cap is partial there.
    let capped = &buf[..buf.len().min(cfg.head_bytes_max)];
    let mut header_storage = [httparse::EMPTY_HEADER; HEADER_LINES_MAX];
    let mut request = httparse::Request::new(&mut header_storage);
    let head_bytes = match request.parse(capped) {
        Ok(Status::Complete(head_bytes)) => head_bytes,
        Ok(Status::Partial) if buf.len() >= cfg.head_bytes_max => {
            return Err(AdminError::HeadTooLarge);
        }
        Ok(Status::Partial) => return Ok(None),
        // 431 names header fields as well as the head's size, so too many lines fit it too.
        Err(httparse::Error::TooManyHeaders) => return Err(AdminError::HeadTooLarge),
        // httparse takes only `HTTP/1.0` and `HTTP/1.1`, so other versions land here as well.
        Err(_) => return Err(AdminError::Malformed),
    };
    debug_assert!(head_bytes <= cfg.head_bytes_max);

    let head = Head::read(&request)?;
    let routed = route(head.path, cfg.demo);
    // The demo's files are public (they hold no secret), so they alone skip the token check.
    let scope = match routed {
        Some((Endpoint::Demo(_), _)) => None,
        _ => Some(
            cfg.tokens
                .scope(single_value(request.headers, "Authorization"))
                .map_err(|_| AdminError::Unauthorized)?,
        ),
    };
    let (endpoint, name) = routed.ok_or(AdminError::NotFound)?;
    let head_only = match (endpoint.is_post(), head.method) {
        (true, "POST") | (false, "GET") => false,
        (false, "HEAD") => true,
        _ => return Err(AdminError::MethodNotAllowed(endpoint.allow())),
    };
    let target = match endpoint {
        Endpoint::Publish | Endpoint::Send | Endpoint::History | Endpoint::Channel
            if !valid_name(name) =>
        {
            return Err(AdminError::InvalidName);
        }
        Endpoint::Publish => Target::Publish(name.to_owned()),
        Endpoint::Send => Target::Send(name.to_owned()),
        Endpoint::Metrics => Target::Metrics,
        Endpoint::Healthz => Target::Healthz,
        Endpoint::History => {
            let query = Query::read(head.query, &["since", "limit"])?;
            Target::History {
                channel: name.to_owned(),
                since: query.number(0, "since: a decimal offset")?.unwrap_or(0),
                limit: query.limit(1, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX)?,
            }
        }
        Endpoint::Channels => {
            let query = Query::read(head.query, &["prefix", "limit"])?;
            let prefix = query.values[0].unwrap_or("");
            if prefix.len() > NAME_BYTES_MAX || !prefix.bytes().all(name_byte) {
                return Err(AdminError::InvalidQuery(
                    "prefix: at most 128 of [A-Za-z0-9_.:-]",
                ));
            }
            Target::Channels {
                prefix: prefix.to_owned(),
                limit: query.limit(1, CHANNELS_LIMIT_DEFAULT, CHANNELS_LIMIT_MAX)?,
            }
        }
        Endpoint::Channel => Target::Channel(name.to_owned()),
        Endpoint::Broadcast => Target::Broadcast,
        Endpoint::Demo(asset) => Target::Demo(asset),
    };
    if scope.is_some_and(|scope| !scope.allows(&target)) {
        return Err(AdminError::Forbidden);
    }
    if head.transfer_encoding {
        return Err(AdminError::ChunkedUnsupported);
    }
    // A GET or HEAD without `Content-Length` has no body (RFC 9112 §6.3); one with a body is
    // framed like a POST so the next pipelined request is found, and its body is skipped.
    let body_bytes = match head.content_length {
        Some(body_bytes) => body_bytes,
        None if endpoint.is_post() => return Err(AdminError::LengthRequired),
        None => 0,
    };
    let body_bytes = match usize::try_from(body_bytes) {
        Ok(body_bytes) if body_bytes <= cfg.body_bytes_max => body_bytes,
        _ => return Err(AdminError::BodyTooLarge),
    };

    // The cap keeps this sum far below `usize::MAX` in any sane configuration; `checked_add`
    // keeps an absurd one from wrapping into a short body.
    let request_bytes = head_bytes
        .checked_add(body_bytes)
        .ok_or(AdminError::BodyTooLarge)?;
    if buf.len() < request_bytes {
        return Ok(None);
    }
    let body = head_bytes..request_bytes;

    let kind = if endpoint.is_post() && head.text {
        BodyKind::Text
    } else {
        BodyKind::Binary
    };
    if kind == BodyKind::Text && std::str::from_utf8(&buf[body.clone()]).is_err() {
        return Err(AdminError::InvalidUtf8);
    }

    Ok(Some((
        AdminRequest {
            target,
            kind,
            body,
            keep_alive: head.keep_alive,
            head_only,
        },
        request_bytes,
    )))
}

/// Appends a 200 with a JSON body `{"<key>":"<name>","<count_key>":<count>}`, such as
/// `{"channel":"news","subscribers":3}` for a publish or `{"session":"s1","connections":2}` for
/// a send.
///
/// `name` must be a valid name ([`valid_name`]) and the keys plain identifiers, so nothing needs
/// escaping; both are checked with `debug_assert!`.
pub fn write_json_ok(
    dst: &mut Vec<u8>,
    key: &str,
    name: &str,
    count_key: &str,
    count: u64,
    keep_alive: bool,
) {
    debug_assert!(valid_name(name), "name {name:?} would need JSON escaping");
    debug_assert!(is_plain_key(key), "key {key:?} would need JSON escaping");
    debug_assert!(
        is_plain_key(count_key),
        "key {count_key:?} would need JSON escaping"
    );
    let body = format!("{{\"{key}\":\"{name}\",\"{count_key}\":{count}}}");
    write_response(
        dst,
        200,
        &[],
        Some("application/json"),
        body.as_bytes(),
        keep_alive,
    );
}

/// Whether `a` and `b` are equal, taking the same time for any two inputs of the same longer
/// length.
///
/// Every byte position up to the longer length is compared, the shorter input reading as zeros
/// past its end, and a length mismatch is folded into the result rather than returned early. So
/// the time depends on `max(a.len(), b.len())` only, never on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        // `black_box` keeps the optimiser from proving `diff` saturated and leaving the loop.
        diff = std::hint::black_box(diff | (x ^ y));
    }
    diff == 0
}

/// Whether `name` is a valid channel name or session id: `[A-Za-z0-9_.:-]{1,128}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_BYTES_MAX && name.bytes().all(name_byte)
}

/// Whether `b` may appear in a channel name or session id.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// The known parameters of one query string, by position in the list given to `read`.
struct Query<'b> {
    values: [Option<&'b str>; 2],
}

impl<'b> Query<'b> {
    /// Reads `query` (`a=1&b=2`, no percent-decoding: every accepted value is plain ASCII)
    /// for the parameters named in `known`; other parameters are ignored.
    fn read(query: &'b str, known: &[&'static str; 2]) -> Result<Query<'b>, AdminError> {
        let mut values = [None; 2];
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(at) = known.iter().position(|k| *k == key) else {
                continue;
            };
            if values[at].replace(value).is_some() {
                return Err(AdminError::InvalidQuery("a query parameter is repeated"));
            }
        }
        Ok(Query { values })
    }

    /// Parameter `at` as a decimal `u64`, if present; `rule` is the refusal's text.
    fn number(&self, at: usize, rule: &'static str) -> Result<Option<u64>, AdminError> {
        let Some(text) = self.values[at] else {
            return Ok(None);
        };
        let valid =
            !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit());
        match text.parse::<u64>() {
            Ok(n) if valid => Ok(Some(n)),
            _ => Err(AdminError::InvalidQuery(rule)),
        }
    }

    /// Parameter `at` as a `limit`: `default` when absent, lowered to `max`.
    fn limit(&self, at: usize, default: usize, max: usize) -> Result<usize, AdminError> {
        let n = self.number(at, "limit: a decimal count")?;
        Ok(n.map_or(default, |n| {
            usize::try_from(n).unwrap_or(usize::MAX).min(max)
        }))
    }
}

/// The endpoints, before the name in the path is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Publish,
    Send,
    Metrics,
    Healthz,
    History,
    Channels,
    Channel,
    Broadcast,
    Demo(DemoAsset),
}

impl Endpoint {
    /// Whether the endpoint takes `POST` (with a body) rather than `GET`/`HEAD`.
    fn is_post(self) -> bool {
        matches!(self, Self::Publish | Self::Send | Self::Broadcast)
    }

    /// The `Allow` value for a 405 on this endpoint.
    fn allow(self) -> &'static str {
        if self.is_post() {
            ALLOW_POST
        } else {
            ALLOW_GET_HEAD
        }
    }
}

/// Maps a path (query already removed) to its endpoint and the name it carries (empty for the
/// endpoints without one), or `None` for an unknown path. The name is not judged here, so
/// `/publish/` with a bad name is a known path with a bad name (400), not an unknown path.
/// The demo's paths are unknown when the demo is off.
fn route(path: &str, demo: Demo) -> Option<(Endpoint, &str)> {
    if let (Demo::Served { .. }, Some(asset)) = (demo, crate::http::demo::route(path)) {
        return Some((Endpoint::Demo(asset), ""));
    }
    if let Some(name) = path.strip_prefix("/publish/") {
        return Some((Endpoint::Publish, name));
    }
    if let Some(name) = path.strip_prefix("/send/") {
        return Some((Endpoint::Send, name));
    }
    if let Some(name) = path.strip_prefix("/history/") {
        return Some((Endpoint::History, name));
    }
    if let Some(name) = path.strip_prefix("/channels/") {
        return Some((Endpoint::Channel, name));
    }
    match path {
        "/metrics" => Some((Endpoint::Metrics, "")),
        "/healthz" => Some((Endpoint::Healthz, "")),
        "/channels" => Some((Endpoint::Channels, "")),
        "/broadcast" => Some((Endpoint::Broadcast, "")),
        _ => None,
    }
}

/// What the checks after the syntax stage need from a head, read once.
struct Head<'b> {
    method: &'b str,
    /// The request target without its query.
    path: &'b str,
    /// The request target's query, after the `?` (empty when there is none).
    query: &'b str,
    /// `Content-Length`, saturated at `u64::MAX` so an absurd value is judged too large (413),
    /// not malformed.
    content_length: Option<u64>,
    /// Whether any `Transfer-Encoding` line is present.
    transfer_encoding: bool,
    /// Whether `Content-Type` names a text media type (`text/*` or `application/json`).
    text: bool,
    keep_alive: bool,
}

impl<'b> Head<'b> {
    /// Reads the fields of a complete head, refusing the syntax this parser will not guess
    /// about (400).
    fn read(request: &httparse::Request<'_, 'b>) -> Result<Self, AdminError> {
        // A complete parse fills method, path and version; the `ok_or` only keeps peer input
        // from reaching an `unwrap`.
        let method = request.method.ok_or(AdminError::Malformed)?;
        let target = request.path.ok_or(AdminError::Malformed)?;
        let version = request.version.ok_or(AdminError::Malformed)?;
        let headers: &[httparse::Header<'b>] = request.headers;

        // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without exactly one
        // `Host`. Its value may be empty, and this node serves one authority, so it is not read.
        if version >= 1 && single_value(headers, "Host").is_none() {
            return Err(AdminError::Malformed);
        }
        let content_length = match values(headers, "Content-Length").count() {
            0 => None,
            1 => Some(
                single_value(headers, "Content-Length")
                    .and_then(parse_content_length)
                    .ok_or(AdminError::Malformed)?,
            ),
            // Repeated lines, even with equal values, are refused rather than reconciled: a
            // body's length has one source or the request is not framed by this parser.
            _ => return Err(AdminError::Malformed),
        };
        let text = match values(headers, "Content-Type").count() {
            0 => false,
            1 => single_value(headers, "Content-Type").is_some_and(is_text_media_type),
            _ => return Err(AdminError::Malformed),
        };

        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Ok(Self {
            method,
            path,
            query,
            content_length,
            transfer_encoding: values(headers, "Transfer-Encoding").next().is_some(),
            text,
            keep_alive: keep_alive(version, headers),
        })
    }
}

/// `Content-Length` as a number: one or more ASCII digits, surrounding whitespace allowed,
/// saturating at `u64::MAX`. A list (`5, 5`), a sign or anything else is `None`.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_whitespace(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |length, digit| {
        length
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

/// Whether a `Content-Type` value names a text message: media type `text/<subtype>` or
/// `application/json`, compared ASCII case-insensitively, parameters ignored.
fn is_text_media_type(value: &[u8]) -> bool {
    let media_type = value.split(|&b| b == b';').next().unwrap_or_default();
    let media_type = trim_whitespace(media_type);
    if media_type.eq_ignore_ascii_case(b"application/json") {
        return true;
    }
    match media_type.iter().position(|&b| b == b'/') {
        Some(slash) => {
            media_type[..slash].eq_ignore_ascii_case(b"text") && slash + 1 < media_type.len()
        }
        None => false,
    }
}

/// Whether the connection stays open: `close` always wins; otherwise HTTP/1.1 stays open and
/// HTTP/1.0 only with `keep-alive` (RFC 9112 §9.3).
fn keep_alive(version: u8, headers: &[httparse::Header<'_>]) -> bool {
    if has_token(headers, "Connection", b"close") {
        return false;
    }
    version >= 1 || has_token(headers, "Connection", b"keep-alive")
}

/// Whether `key` can sit between JSON quotes unescaped: non-empty ASCII letters, digits and `_`.
fn is_plain_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
#[path = "admin_request_tests.rs"]
mod tests;
