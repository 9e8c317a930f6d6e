//! Why the admin parser refused a request (`AdminError`): one status, one metrics label,
//! one message and one complete response for each refusal.

use std::fmt;

use crate::http::response::write_refusal;

/// Why the parser refused a request. Each variant maps to one status and one metrics label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// The head is not valid HTTP/1.0 or HTTP/1.1 syntax, an HTTP/1.1 head has no single `Host`,
    /// or `Content-Length` or `Content-Type` is repeated or `Content-Length` is not a decimal
    /// number (400).
    Malformed,
    /// The head does not end within `head_bytes_max` bytes, or has more than
    /// [`HEADER_LINES_MAX`] header lines (431).
    HeadTooLarge,
    /// A token is configured and the request lacks a single `Authorization: Bearer <token>`
    /// carrying it (401, with `WWW-Authenticate: Bearer`).
    Unauthorized,
    /// No admin endpoint at the request target's path (404).
    NotFound,
    /// The path is known but the method is not allowed on it; the value is the `Allow` header
    /// to send (405).
    MethodNotAllowed(&'static str),
    /// A `POST` without `Content-Length` (411).
    LengthRequired,
    /// `Content-Length` exceeds `body_bytes_max` (413), judged before the body arrives.
    BodyTooLarge,
    /// The body of a text message is not valid UTF-8 (400).
    InvalidUtf8,
    /// The channel or session name in the path is not `[A-Za-z0-9_.:-]{1,128}` (400).
    InvalidName,
    /// The request has a `Transfer-Encoding` header; only `Content-Length` framing is
    /// implemented (501).
    ChunkedUnsupported,
    /// The request's head was not complete within the admin request deadline of its first
    /// byte, or its body not within the same deadline again after its head (408). The parser
    /// never returns it: the connection's timer decides it.
    RequestTimeout,
    /// A query parameter of an endpoint that reads them is repeated, empty or out of its
    /// syntax; the value says which rule (400).
    InvalidQuery(&'static str),
    /// A JSON body (`POST /broadcast`) is not what the endpoint takes; the value says which
    /// rule (400). The parser never returns it: the admin service reads the body.
    InvalidBody(&'static str),
    /// The publish-only admin token on an endpoint outside its scope: `/metrics`,
    /// `/history`, `/channels` (403).
    Forbidden,
}

impl AdminError {
    /// Every value [`AdminError::reason`] can return, so metrics can start each label at zero.
    pub const ALL_REASONS: &'static [&'static str] = &[
        "malformed",
        "head_too_large",
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "length_required",
        "body_too_large",
        "invalid_utf8",
        "invalid_name",
        "chunked_unsupported",
        "request_timeout",
        "invalid_query",
        "invalid_body",
        "forbidden",
    ];

    /// How many refusal labels there are: the length of the per-reason counters.
    pub const COUNT: usize = Self::ALL_REASONS.len();

    /// This refusal's index in [`AdminError::ALL_REASONS`] (and in the per-reason
    /// counters), so counting a refusal is an index, not a search.
    pub const fn slot(&self) -> usize {
        match self {
            Self::Malformed => 0,
            Self::HeadTooLarge => 1,
            Self::Unauthorized => 2,
            Self::NotFound => 3,
            Self::MethodNotAllowed(_) => 4,
            Self::LengthRequired => 5,
            Self::BodyTooLarge => 6,
            Self::InvalidUtf8 => 7,
            Self::InvalidName => 8,
            Self::ChunkedUnsupported => 9,
            Self::RequestTimeout => 10,
            Self::InvalidQuery(_) => 11,
            Self::InvalidBody(_) => 12,
            Self::Forbidden => 13,
        }
    }

    /// The HTTP status code of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed
            | Self::InvalidUtf8
            | Self::InvalidName
            | Self::InvalidQuery(_)
            | Self::InvalidBody(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed(_) => 405,
            Self::RequestTimeout => 408,
            Self::LengthRequired => 411,
            Self::BodyTooLarge => 413,
            Self::HeadTooLarge => 431,
            Self::ChunkedUnsupported => 501,
        }
    }

    /// A short snake_case label for metrics; one of [`AdminError::ALL_REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::HeadTooLarge => "head_too_large",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::LengthRequired => "length_required",
            Self::BodyTooLarge => "body_too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidName => "invalid_name",
            Self::ChunkedUnsupported => "chunked_unsupported",
            Self::RequestTimeout => "request_timeout",
            Self::InvalidQuery(_) => "invalid_query",
            Self::InvalidBody(_) => "invalid_body",
            Self::Forbidden => "forbidden",
        }
    }

    /// A one-line description for a person, used as the refusal's body.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed HTTP request",
            Self::HeadTooLarge => "request head too large",
            Self::Unauthorized => "missing or wrong bearer token",
            Self::NotFound => "no admin endpoint at this path",
            Self::MethodNotAllowed(_) => "method not allowed on this path",
            Self::LengthRequired => "a POST needs a Content-Length",
            Self::BodyTooLarge => "request body too large",
            Self::InvalidUtf8 => "a text message body must be valid UTF-8",
            Self::InvalidName => "names must match [A-Za-z0-9_.:-]{1,128}",
            Self::ChunkedUnsupported => "Transfer-Encoding is not supported; send Content-Length",
            Self::RequestTimeout => "request not completed in time",
            Self::InvalidQuery(rule) | Self::InvalidBody(rule) => rule,
            Self::Forbidden => "this token may only publish, send and broadcast",
        }
    }

    /// Appends the complete refusal to `dst`: status, `Allow` or `WWW-Authenticate` where the
    /// status calls for one, a short text body, and `Connection: close`, since the caller closes
    /// the connection after any refusal.
    ///
    /// The body is written even when the refused request was a `HEAD`: the parser may refuse a
    /// request before knowing its method, and the close ends the response either way.
    pub fn write_response(&self, dst: &mut Vec<u8>) {
        let allow;
        let extra_headers: &[(&str, &str)] = match self {
            Self::MethodNotAllowed(allowed) => {
                allow = [("Allow", *allowed)];
                &allow
            }
            Self::Unauthorized => &[("WWW-Authenticate", "Bearer")],
            _ => &[],
        };
        write_refusal(dst, self.status(), extra_headers, self.message());
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AdminError {}
