//! Unit tests of the admin request parser (`admin_request.rs`), kept beside it.

#[test]
fn expect_continue_is_recognised_only_in_a_complete_head() {
    let head = b"POST /publish/c HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\r\n";
    assert!(expects_continue(head));
    assert!(!expects_continue(&head[..head.len() - 2]));
    assert!(!expects_continue(
        b"POST /publish/c HTTP/1.1\r\nHost: a\r\n\r\n"
    ));
}

#[test]
fn head_complete_needs_the_blank_line_only() {
    let head = b"POST /publish/c HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n";
    assert!(head_complete(head));
    assert!(head_complete(&[&head[..], b"part of the body"].concat()));
    assert!(!head_complete(&head[..head.len() - 1]));
    assert!(!head_complete(b""));
}

use super::*;

const TOKEN: &str = "s3cret-token";
const AUTH: &str = "Authorization: Bearer s3cret-token";

fn config() -> AdminConfig {
    AdminConfig {
        head_bytes_max: 1024,
        body_bytes_max: 64,
        tokens: AdminTokens::new(Some(TOKEN.as_bytes().into()), None).unwrap(),
        demo: Demo::Served { ws_port: 8080 },
    }
}

fn open_config() -> AdminConfig {
    AdminConfig {
        tokens: AdminTokens::default(),
        ..config()
    }
}

/// A request with `Host` and the valid token, then `lines`, then `body`.
fn request(request_line: &str, lines: &[&str], body: &[u8]) -> Vec<u8> {
    let mut text = format!("{request_line}\r\nHost: admin.local\r\n{AUTH}\r\n");
    for line in lines {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A publish of `body` to `news` with a correct `Content-Length` and the extra `lines`.
fn publish(lines: &[&str], body: &[u8]) -> Vec<u8> {
    let length = format!("Content-Length: {}", body.len());
    let mut all = vec![length.as_str()];
    all.extend_from_slice(lines);
    request("POST /publish/news HTTP/1.1", &all, body)
}

fn accepted(buf: &[u8], cfg: &AdminConfig) -> (AdminRequest, usize) {
    match parse(buf, cfg) {
        Ok(Some(parsed)) => parsed,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn refused(buf: &[u8], cfg: &AdminConfig) -> AdminError {
    match parse(buf, cfg) {
        Err(error) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn response_text(error: &AdminError) -> String {
    let mut dst = Vec::new();
    error.write_response(&mut dst);
    String::from_utf8(dst).expect("refusals are ASCII")
}

/// One of each variant. The match makes adding a variant without listing it here a compile
/// error, so the label and response tests cannot silently skip one.
fn every_error() -> Vec<AdminError> {
    let all = vec![
        AdminError::Malformed,
        AdminError::HeadTooLarge,
        AdminError::Unauthorized,
        AdminError::NotFound,
        AdminError::MethodNotAllowed(ALLOW_POST),
        AdminError::LengthRequired,
        AdminError::BodyTooLarge,
        AdminError::InvalidUtf8,
        AdminError::InvalidName,
        AdminError::ChunkedUnsupported,
        AdminError::RequestTimeout,
        AdminError::InvalidQuery("limit: a decimal count"),
        AdminError::InvalidBody("the body is not a JSON object"),
        AdminError::Forbidden,
    ];
    for error in &all {
        match error {
            AdminError::Malformed
            | AdminError::HeadTooLarge
            | AdminError::Unauthorized
            | AdminError::NotFound
            | AdminError::MethodNotAllowed(_)
            | AdminError::LengthRequired
            | AdminError::BodyTooLarge
            | AdminError::InvalidUtf8
            | AdminError::InvalidName
            | AdminError::ChunkedUnsupported
            | AdminError::RequestTimeout
            | AdminError::InvalidQuery(_)
            | AdminError::InvalidBody(_)
            | AdminError::Forbidden => {}
        }
    }
    all
}

#[test]
fn publish_is_accepted_with_body_range() {
    let buf = publish(&["Content-Type: text/plain"], b"hello");
    let (parsed, consumed) = accepted(&buf, &config());
    assert_eq!(consumed, buf.len());
    assert_eq!(parsed.target, Target::Publish("news".to_owned()));
    assert_eq!(parsed.kind, BodyKind::Text);
    assert_eq!(&buf[parsed.body.clone()], b"hello");
    assert_eq!(parsed.body.end, buf.len());
    assert!(parsed.keep_alive);
    assert!(!parsed.head_only);
}

#[test]
fn send_is_accepted() {
    let buf = request(
        "POST /send/user:42.tab_1-a HTTP/1.1",
        &["Content-Length: 3"],
        b"\x00\x01\x02",
    );
    let (parsed, consumed) = accepted(&buf, &config());
    assert_eq!(consumed, buf.len());
    assert_eq!(parsed.target, Target::Send("user:42.tab_1-a".to_owned()));
    assert_eq!(parsed.kind, BodyKind::Binary);
    assert_eq!(&buf[parsed.body], b"\x00\x01\x02");
}

#[test]
fn metrics_and_healthz_take_get_and_head() {
    for (path, target) in [("/metrics", Target::Metrics), ("/healthz", Target::Healthz)] {
        for (method, head_only) in [("GET", false), ("HEAD", true)] {
            let buf = request(&format!("{method} {path} HTTP/1.1"), &[], b"");
            let (parsed, consumed) = accepted(&buf, &config());
            assert_eq!(consumed, buf.len(), "{method} {path}");
            assert_eq!(parsed.target, target, "{method} {path}");
            assert_eq!(parsed.head_only, head_only, "{method} {path}");
            assert_eq!(parsed.kind, BodyKind::Binary);
            assert!(parsed.body.is_empty());
        }
    }
}

#[test]
fn query_string_is_ignored() {
    let buf = request("GET /healthz?verbose=1&x HTTP/1.1", &[], b"");
    assert_eq!(accepted(&buf, &config()).0.target, Target::Healthz);
    let buf = request(
        "POST /publish/news?ttl=5 HTTP/1.1",
        &["Content-Length: 2"],
        b"hi",
    );
    let parsed = accepted(&buf, &config()).0;
    assert_eq!(parsed.target, Target::Publish("news".to_owned()));
}

#[test]
fn pipelined_requests_parse_one_at_a_time() {
    let cfg = config();
    let first = publish(&["Content-Type: application/json"], br#"{"a":1}"#);
    let second = request("GET /metrics HTTP/1.1", &[], b"");
    let third = request(
        "POST /send/s1 HTTP/1.1",
        &["Content-Length: 4"],
        b"\x01\x02\x03\x04",
    );
    let mut buf = first.clone();
    buf.extend_from_slice(&second);
    buf.extend_from_slice(&third);

    let (parsed, consumed) = accepted(&buf, &cfg);
    assert_eq!(consumed, first.len());
    assert_eq!(parsed.kind, BodyKind::Text);
    assert_eq!(&buf[parsed.body], br#"{"a":1}"#);

    let rest = &buf[consumed..];
    let (parsed, used) = accepted(rest, &cfg);
    assert_eq!(used, second.len());
    assert_eq!(parsed.target, Target::Metrics);

    let rest = &rest[used..];
    let (parsed, used) = accepted(rest, &cfg);
    assert_eq!(used, third.len());
    assert_eq!(parsed.target, Target::Send("s1".to_owned()));
    assert_eq!(&rest[parsed.body], b"\x01\x02\x03\x04");
}

#[test]
fn get_with_a_body_skips_it() {
    let cfg = config();
    let mut buf = request("GET /healthz HTTP/1.1", &["Content-Length: 3"], b"abc");
    let first_len = buf.len();
    buf.extend_from_slice(&request("GET /metrics HTTP/1.1", &[], b""));
    assert!(matches!(parse(&buf[..first_len - 1], &cfg), Ok(None)));
    let (parsed, consumed) = accepted(&buf, &cfg);
    assert_eq!(consumed, first_len);
    assert_eq!(parsed.target, Target::Healthz);
    assert_eq!(accepted(&buf[consumed..], &cfg).0.target, Target::Metrics);
}

#[test]
fn every_split_point_waits_until_complete() {
    let cfg = config();
    let buf = publish(
        &["Content-Type: text/plain; charset=utf-8"],
        "héllo wörld".as_bytes(),
    );
    for split in 0..buf.len() {
        assert!(
            matches!(parse(&buf[..split], &cfg), Ok(None)),
            "split at {split} of {}",
            buf.len()
        );
    }
    let (parsed, consumed) = accepted(&buf, &cfg);
    assert_eq!(consumed, buf.len());
    assert_eq!(&buf[parsed.body], "héllo wörld".as_bytes());
}

#[test]
fn content_type_matrix() {
    let cfg = config();
    let cases: [(Option<&str>, BodyKind); 12] = [
        (Some("text/plain; charset=utf-8"), BodyKind::Text),
        (Some("text/plain"), BodyKind::Text),
        (Some("TEXT/HTML"), BodyKind::Text),
        (Some("APPLICATION/JSON"), BodyKind::Text),
        (Some("application/json;charset=utf-8"), BodyKind::Text),
        (Some(" application/json ; x=y"), BodyKind::Text),
        (Some("application/octet-stream"), BodyKind::Binary),
        (Some("application/jsonx"), BodyKind::Binary),
        (Some("application/ld+json"), BodyKind::Binary),
        (Some("text/"), BodyKind::Binary),
        (Some("textual/plain"), BodyKind::Binary),
        (None, BodyKind::Binary),
    ];
    for (content_type, kind) in cases {
        let line = content_type.map(|value| format!("Content-Type: {value}"));
        let lines: Vec<&str> = line.iter().map(String::as_str).collect();
        let buf = publish(&lines, b"{}");
        assert_eq!(accepted(&buf, &cfg).0.kind, kind, "{content_type:?}");
    }
}

#[test]
fn keep_alive_matrix() {
    let cfg = config();
    let cases = [
        ("HTTP/1.1", None, true),
        ("HTTP/1.1", Some("close"), false),
        ("HTTP/1.1", Some("Close"), false),
        ("HTTP/1.1", Some("keep-alive"), true),
        ("HTTP/1.1", Some("keep-alive, close"), false),
        ("HTTP/1.1", Some("te"), true),
        ("HTTP/1.0", None, false),
        ("HTTP/1.0", Some("keep-alive"), true),
        ("HTTP/1.0", Some("Keep-Alive"), true),
        ("HTTP/1.0", Some("close"), false),
        ("HTTP/1.0", Some("keep-alive, close"), false),
    ];
    for (version, connection, keep_alive) in cases {
        let line = connection.map(|value| format!("Connection: {value}"));
        let lines: Vec<&str> = line.iter().map(String::as_str).collect();
        let buf = request(&format!("GET /healthz {version}"), &lines, b"");
        assert_eq!(
            accepted(&buf, &cfg).0.keep_alive,
            keep_alive,
            "{version} {connection:?}"
        );
    }
}

#[test]
fn constant_time_eq_is_equality() {
    assert!(constant_time_eq(b"", b""));
    assert!(constant_time_eq(b"token", b"token"));
    assert!(!constant_time_eq(b"token", b"tokem"));
    assert!(!constant_time_eq(b"token", b"Token"));
    // Different lengths, including a prefix and zero padding that would match if the
    // shorter side's missing bytes were compared as zeros alone.
    assert!(!constant_time_eq(b"token", b"toke"));
    assert!(!constant_time_eq(b"toke", b"token"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(!constant_time_eq(b"a", b""));
    assert!(!constant_time_eq(b"ab", b"ab\0"));
    assert!(!constant_time_eq(b"\0", b""));
    for a in 0..=u8::MAX {
        assert!(constant_time_eq(&[a], &[a]));
        assert!(!constant_time_eq(&[a], &[a.wrapping_add(1)]));
    }
}

#[test]
fn valid_name_charset_and_length() {
    assert!(valid_name("news"));
    assert!(valid_name("A-Z_a.z:0-9"));
    assert!(valid_name(&"x".repeat(NAME_BYTES_MAX)));
    assert!(!valid_name(""));
    assert!(!valid_name(&"x".repeat(NAME_BYTES_MAX + 1)));
    for bad in ["a b", "a/b", "a?b", "a%b", "a\"b", "a\\b", "é"] {
        assert!(!valid_name(bad), "{bad:?}");
    }
}

#[test]
fn json_ok_shape() {
    let mut dst = Vec::new();
    write_json_ok(&mut dst, "channel", "news", "subscribers", 3, true);
    let body = r#"{"channel":"news","subscribers":3}"#;
    let expected = format!(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: keep-alive\r\n\
         \r\n\
         {body}",
        body.len()
    );
    assert_eq!(String::from_utf8(dst).expect("ASCII"), expected);
    let mut dst = Vec::new();
    write_json_ok(&mut dst, "session", "s:1", "connections", u64::MAX, false);
    let text = String::from_utf8(dst).expect("ASCII");
    assert!(text.contains("\r\nConnection: close\r\n"));
    assert!(text.ends_with(r#"{"session":"s:1","connections":18446744073709551615}"#));
}

#[path = "admin_request_refusal_tests.rs"]
mod refusals;

#[path = "admin_request_route_tests.rs"]
mod routes;
