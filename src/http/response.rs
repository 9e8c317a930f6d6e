//! Writing complete HTTP/1.1 responses: status line, headers and body in one call.
//!
//! This file owns the wire format of every response the node sends outside a WebSocket stream:
//! handshake refusals today, the admin API later. The 101 that starts a WebSocket stream is
//! written by `crate::http::handshake::write_switching_protocols`, because it carries neither a
//! body nor a `Connection: close`/`keep-alive` choice. Writers append to a caller-owned `Vec`, so
//! a connection can reuse one send buffer.
//!
//! Invariants:
//! - A response is self-delimiting: `Content-Length` is always written, except for the statuses
//!   that RFC 9110 §8.6 forbids it on (1xx and 204), which never carry a body.
//! - Header names and values never contain CR or LF (checked with `debug_assert!`), so a value
//!   cannot smuggle in a header line or end the head early.

/// The reason phrase for `status`, or `""` for a code this node never sends.
///
/// An empty phrase is still a valid status line (`HTTP/1.1 299 \r\n`, RFC 9112 §4), so an
/// unlisted code degrades to a bare number rather than a wrong word.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends a refusal: `status`, `extra_headers`, the one-line plain-text `message` as the
/// body, and `Connection: close` (a refused peer is never kept).
pub fn write_refusal(
    dst: &mut Vec<u8>,
    status: u16,
    extra_headers: &[(&str, &str)],
    message: &str,
) {
    write_response(
        dst,
        status,
        extra_headers,
        Some("text/plain; charset=utf-8"),
        message.as_bytes(),
        false,
    );
}

/// Appends a complete HTTP/1.1 response to `dst`.
///
/// The head is the status line with its standard reason phrase, then `extra_headers` in order,
/// then `Content-Type` if given, `Content-Length`, and `Connection: keep-alive` or `close`. The
/// body follows the blank line. For 1xx and 204 no `Content-Length` is written and `body` must
/// be empty; a 101 for a WebSocket upgrade is written by
/// `crate::http::handshake::write_switching_protocols` instead.
pub fn write_response(
    dst: &mut Vec<u8>,
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
    keep_alive: bool,
) {
    debug_assert!(
        (100..=599).contains(&status),
        "status {status} is not a 3-digit HTTP code"
    );
    let body_forbidden = status_forbids_body(status);
    debug_assert!(
        !body_forbidden || body.is_empty(),
        "status {status} cannot carry a body"
    );

    dst.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(dst, usize::from(status));
    dst.push(b' ');
    dst.extend_from_slice(reason_phrase(status).as_bytes());
    dst.extend_from_slice(b"\r\n");
    for (name, value) in extra_headers {
        push_header(dst, name, value);
    }
    if let Some(content_type) = content_type {
        push_header(dst, "Content-Type", content_type);
    }
    if !body_forbidden {
        dst.extend_from_slice(b"Content-Length: ");
        push_decimal(dst, body.len());
        dst.extend_from_slice(b"\r\n");
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    push_header(dst, "Connection", connection);
    dst.extend_from_slice(b"\r\n");
    dst.extend_from_slice(body);
}

/// Appends one `name: value\r\n` header line to `dst`.
pub(crate) fn push_header(dst: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(!name.is_empty() && !name.bytes().any(|b| b == b':' || is_line_break(b)));
    debug_assert!(
        !value.bytes().any(is_line_break),
        "header {name} value contains CR or LF"
    );
    dst.extend_from_slice(name.as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// Whether RFC 9110 §8.6 forbids `Content-Length` (and so a body) on `status`.
fn status_forbids_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204
}

fn is_line_break(byte: u8) -> bool {
    byte == b'\r' || byte == b'\n'
}

/// Appends `value` in decimal ASCII without going through `fmt`, which would need an
/// `io::Write` whose infallible `Result` still has to be handled.
fn push_decimal(dst: &mut Vec<u8>, mut value: usize) {
    // Twenty digits hold `u64::MAX`, the widest `usize` this crate builds for.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(
        status: u16,
        extra_headers: &[(&str, &str)],
        content_type: Option<&str>,
        body: &[u8],
        keep_alive: bool,
    ) -> String {
        let mut dst = Vec::new();
        write_response(
            &mut dst,
            status,
            extra_headers,
            content_type,
            body,
            keep_alive,
        );
        String::from_utf8(dst).expect("responses in these tests are ASCII")
    }

    #[test]
    fn refusal_shape_is_exact() {
        let written = response(
            405,
            &[("Allow", "GET")],
            Some("text/plain; charset=utf-8"),
            b"use GET",
            false,
        );
        assert_eq!(
            written,
            "HTTP/1.1 405 Method Not Allowed\r\n\
             Allow: GET\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 7\r\n\
             Connection: close\r\n\
             \r\n\
             use GET"
        );
    }

    #[test]
    fn keep_alive_without_content_type_or_body() {
        let written = response(200, &[], None, b"", true);
        assert_eq!(
            written,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn appends_after_existing_bytes() {
        let mut dst = b"earlier".to_vec();
        write_response(&mut dst, 404, &[], None, b"", false);
        assert!(dst.starts_with(b"earlierHTTP/1.1 404 Not Found\r\n"));
        assert!(dst.ends_with(b"Connection: close\r\n\r\n"));
    }

    #[test]
    fn no_content_length_where_forbidden() {
        let written = response(204, &[], None, b"", true);
        assert_eq!(
            written,
            "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn content_length_counts_body_bytes() {
        let body = vec![b'x'; 12_345];
        let mut dst = Vec::new();
        write_response(
            &mut dst,
            200,
            &[],
            Some("application/octet-stream"),
            &body,
            true,
        );
        let head_end = dst
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head ends")
            + 4;
        let head = std::str::from_utf8(&dst[..head_end]).expect("head is ASCII");
        assert!(head.contains("\r\nContent-Length: 12345\r\n"));
        assert_eq!(&dst[head_end..], &body[..]);
    }

    #[test]
    fn reason_phrases_cover_the_codes_the_node_sends() {
        let expected = [
            (101, "Switching Protocols"),
            (200, "OK"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (413, "Content Too Large"),
            (426, "Upgrade Required"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
            (505, "HTTP Version Not Supported"),
        ];
        for (status, phrase) in expected {
            assert_eq!(reason_phrase(status), phrase, "status {status}");
        }
    }

    #[test]
    fn unknown_code_keeps_a_valid_status_line() {
        assert_eq!(reason_phrase(299), "");
        let written = response(299, &[], None, b"", false);
        assert!(written.starts_with("HTTP/1.1 299 \r\n"));
    }

    #[test]
    fn decimal_edges() {
        for value in [0, 9, 10, 99, 100, 65_535, usize::MAX] {
            let mut dst = Vec::new();
            push_decimal(&mut dst, value);
            assert_eq!(dst, value.to_string().into_bytes());
        }
    }
}
