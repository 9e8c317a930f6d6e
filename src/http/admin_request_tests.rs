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
fn status_400_malformed() {
    let cfg = config();
    for buf in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    ] {
        assert_eq!(refused(buf, &cfg), AdminError::Malformed, "{buf:?}");
    }
    // HTTP/1.1 needs exactly one `Host`; HTTP/1.0 does not.
    let no_host = format!("GET /healthz HTTP/1.1\r\n{AUTH}\r\n\r\n");
    assert_eq!(refused(no_host.as_bytes(), &cfg), AdminError::Malformed);
    let two_hosts = request("GET /healthz HTTP/1.1", &["Host: b"], b"");
    assert_eq!(refused(&two_hosts, &cfg), AdminError::Malformed);
    let old = format!("GET /healthz HTTP/1.0\r\n{AUTH}\r\n\r\n");
    assert_eq!(accepted(old.as_bytes(), &cfg).0.target, Target::Healthz);
}

#[test]
fn status_400_malformed_content_length_and_type() {
    let cfg = config();
    for lines in [
        &["Content-Length: abc"][..],
        &["Content-Length: -1"],
        &["Content-Length: +2"],
        &["Content-Length: "],
        &["Content-Length: 2, 2"],
        &["Content-Length: 2", "Content-Length: 2"],
        &[
            "Content-Length: 2",
            "Content-Type: text/plain",
            "Content-Type: text/plain",
        ],
    ] {
        let buf = request("POST /publish/news HTTP/1.1", lines, b"hi");
        assert_eq!(refused(&buf, &cfg), AdminError::Malformed, "{lines:?}");
    }
    // Whitespace around the digits is optional whitespace, not part of the value.
    let buf = request(
        "POST /publish/news HTTP/1.1",
        &["Content-Length: \t2 "],
        b"hi",
    );
    assert_eq!(accepted(&buf, &cfg).1, buf.len());
}

#[test]
fn status_431_head_too_large() {
    let cfg = AdminConfig {
        head_bytes_max: 128,
        ..config()
    };
    let filler = format!("X-Filler: {}", "a".repeat(200));
    let buf = request("GET /healthz HTTP/1.1", &[&filler], b"");
    assert_eq!(refused(&buf, &cfg), AdminError::HeadTooLarge);
    // Refused as soon as the cap is reached, before the head could end.
    assert_eq!(refused(&buf[..128], &cfg), AdminError::HeadTooLarge);
    assert!(matches!(parse(&buf[..127], &cfg), Ok(None)));
}

#[test]
fn head_exactly_at_the_cap_is_accepted() {
    let buf = request("GET /healthz HTTP/1.1", &[], b"");
    let exact = AdminConfig {
        head_bytes_max: buf.len(),
        ..config()
    };
    assert_eq!(accepted(&buf, &exact).1, buf.len());
    let short = AdminConfig {
        head_bytes_max: buf.len() - 1,
        ..config()
    };
    assert_eq!(refused(&buf, &short), AdminError::HeadTooLarge);
}

#[test]
fn status_431_too_many_header_lines() {
    let lines: Vec<String> = (0..HEADER_LINES_MAX).map(|i| format!("X-{i}: v")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let buf = request("GET /healthz HTTP/1.1", &lines, b"");
    let cfg = AdminConfig {
        head_bytes_max: 64 * 1024,
        ..config()
    };
    assert_eq!(refused(&buf, &cfg), AdminError::HeadTooLarge);
}

#[test]
fn status_401_unauthorized() {
    let cfg = config();
    for auth in [
        "",
        "Authorization: Bearer wrong-token!",
        "Authorization: Bearer s3cret-toke",
        "Authorization: Bearer s3cret-token-and-more",
        "Authorization: Basic s3cret-token",
        "Authorization: Bearers3cret-token",
        "Authorization: s3cret-token",
    ] {
        let mut text = String::from("GET /metrics HTTP/1.1\r\nHost: a\r\n");
        if !auth.is_empty() {
            text.push_str(auth);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        assert_eq!(
            refused(text.as_bytes(), &cfg),
            AdminError::Unauthorized,
            "{auth:?}"
        );
    }
    // Two lines are refused even if one is right.
    let twice = request("GET /metrics HTTP/1.1", &[AUTH], b"");
    assert_eq!(refused(&twice, &cfg), AdminError::Unauthorized);
}

#[test]
fn bearer_scheme_is_case_insensitive_and_token_is_not() {
    let cfg = config();
    let lower = "GET /metrics HTTP/1.1\r\nHost: a\r\nauthorization: bearer  s3cret-token\r\n\r\n";
    assert_eq!(accepted(lower.as_bytes(), &cfg).0.target, Target::Metrics);
    let upper = "GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer S3CRET-TOKEN\r\n\r\n";
    assert_eq!(refused(upper.as_bytes(), &cfg), AdminError::Unauthorized);
}

#[test]
fn no_token_configured_needs_no_authorization() {
    let buf = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(accepted(buf, &open_config()).0.target, Target::Healthz);
    assert_eq!(refused(buf, &config()), AdminError::Unauthorized);
}

#[test]
fn status_404_not_found() {
    let cfg = config();
    for path in [
        "/",
        "/publish",
        "/send",
        "/metrics/",
        "/healthz/x",
        "/PUBLISH/news",
        "*",
    ] {
        let buf = request(&format!("GET {path} HTTP/1.1"), &[], b"");
        assert_eq!(refused(&buf, &cfg), AdminError::NotFound, "{path}");
    }
}

#[test]
fn status_405_with_allow() {
    let cfg = config();
    for (line, allow) in [
        ("GET /publish/news HTTP/1.1", "POST"),
        ("HEAD /send/s1 HTTP/1.1", "POST"),
        ("PUT /publish/news HTTP/1.1", "POST"),
        ("post /publish/news HTTP/1.1", "POST"),
        ("POST /metrics HTTP/1.1", "GET, HEAD"),
        ("DELETE /healthz HTTP/1.1", "GET, HEAD"),
    ] {
        let buf = request(line, &["Content-Length: 0"], b"");
        assert_eq!(
            refused(&buf, &cfg),
            AdminError::MethodNotAllowed(allow),
            "{line}"
        );
    }
    let written = response_text(&AdminError::MethodNotAllowed("GET, HEAD"));
    assert!(written.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"));
}

#[test]
fn status_400_invalid_name() {
    let cfg = config();
    let long = format!("/publish/{}", "a".repeat(NAME_BYTES_MAX + 1));
    for path in [
        "/publish/",
        "/send/",
        "/publish/a/b",
        "/publish/sp%20ace",
        "/send/caf\u{e9}",
        "/publish/a+b",
        long.as_str(),
    ] {
        let buf = request(
            &format!("POST {path} HTTP/1.1"),
            &["Content-Length: 0"],
            b"",
        );
        assert_eq!(refused(&buf, &cfg), AdminError::InvalidName, "{path}");
    }
    let longest = format!("/publish/{}", "a".repeat(NAME_BYTES_MAX));
    let buf = request(
        &format!("POST {longest} HTTP/1.1"),
        &["Content-Length: 0"],
        b"",
    );
    assert_eq!(accepted(&buf, &cfg).1, buf.len());
}

#[test]
fn status_501_transfer_encoding() {
    let cfg = config();
    for lines in [
        &["Transfer-Encoding: chunked"][..],
        &["Transfer-Encoding: gzip, chunked"],
        &["Transfer-Encoding: chunked", "Content-Length: 5"],
    ] {
        let buf = request(
            "POST /publish/news HTTP/1.1",
            lines,
            b"5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(
            refused(&buf, &cfg),
            AdminError::ChunkedUnsupported,
            "{lines:?}"
        );
    }
    assert_eq!(AdminError::ChunkedUnsupported.status(), 501);
}

#[test]
fn status_411_length_required() {
    let buf = request("POST /publish/news HTTP/1.1", &[], b"");
    assert_eq!(refused(&buf, &config()), AdminError::LengthRequired);
    let buf = request("POST /send/s1 HTTP/1.0", &[], b"");
    assert_eq!(refused(&buf, &config()), AdminError::LengthRequired);
}

#[test]
fn status_413_decided_from_the_head_alone() {
    let cfg = config();
    let too_long = format!("Content-Length: {}", cfg.body_bytes_max + 1);
    // No body byte has arrived, yet the answer is already known.
    let buf = request("POST /publish/news HTTP/1.1", &[&too_long], b"");
    assert_eq!(refused(&buf, &cfg), AdminError::BodyTooLarge);
    let absurd = request(
        "POST /publish/news HTTP/1.1",
        &["Content-Length: 99999999999999999999999999"],
        b"",
    );
    assert_eq!(refused(&absurd, &cfg), AdminError::BodyTooLarge);
    // Exactly the cap is fine, once the body is there.
    let at_cap = format!("Content-Length: {}", cfg.body_bytes_max);
    let head = request("POST /publish/news HTTP/1.1", &[&at_cap], b"");
    assert!(matches!(parse(&head, &cfg), Ok(None)));
    let mut full = head.clone();
    full.extend(std::iter::repeat_n(b'x', cfg.body_bytes_max));
    assert_eq!(accepted(&full, &cfg).1, full.len());
}

#[test]
fn status_400_invalid_utf8_waits_for_the_body() {
    let cfg = config();
    let buf = publish(&["Content-Type: text/plain; charset=utf-8"], b"ok \xff\xfe");
    assert_eq!(refused(&buf, &cfg), AdminError::InvalidUtf8);
    // The check needs the whole body, so a partial body is still `Ok(None)`.
    assert!(matches!(parse(&buf[..buf.len() - 1], &cfg), Ok(None)));
    // The same bytes are a fine binary message.
    let binary = publish(&["Content-Type: application/octet-stream"], b"ok \xff\xfe");
    assert_eq!(accepted(&binary, &cfg).0.kind, BodyKind::Binary);
}

#[test]
fn utf8_split_at_the_body_end_is_invalid() {
    // A multi-byte sequence cut by Content-Length is not valid text.
    let buf = publish(&["Content-Type: text/plain"], "é".as_bytes().split_at(1).0);
    assert_eq!(refused(&buf, &config()), AdminError::InvalidUtf8);
    let whole = publish(&["Content-Type: text/plain"], "héllo ✓".as_bytes());
    assert_eq!(accepted(&whole, &config()).0.kind, BodyKind::Text);
}

#[test]
fn head_errors_do_not_wait_for_the_body() {
    let cfg = config();
    let bad_token = "POST /publish/news HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(
        refused(bad_token.as_bytes(), &cfg),
        AdminError::Unauthorized
    );
    let unknown = request("POST /nope HTTP/1.1", &["Content-Length: 10"], b"");
    assert_eq!(refused(&unknown, &cfg), AdminError::NotFound);
    let wrong_method = request("PUT /publish/news HTTP/1.1", &["Content-Length: 10"], b"");
    assert_eq!(
        refused(&wrong_method, &cfg),
        AdminError::MethodNotAllowed("POST")
    );
    let bad_name = request("POST /publish/a%2F HTTP/1.1", &["Content-Length: 10"], b"");
    assert_eq!(refused(&bad_name, &cfg), AdminError::InvalidName);
}

#[test]
fn checks_run_in_the_documented_order() {
    let cfg = AdminConfig {
        head_bytes_max: 256,
        ..config()
    };
    let no_auth = |line: &str, lines: &[&str]| {
        let mut text = format!("{line}\r\nHost: a\r\n");
        for l in lines {
            text.push_str(l);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.into_bytes()
    };
    // Malformed before auth.
    let buf = no_auth("GET /nope HTTP/1.1", &["Content-Length: x"]);
    assert_eq!(refused(&buf, &cfg), AdminError::Malformed);
    // Auth before path.
    let buf = no_auth("GET /nope HTTP/1.1", &[]);
    assert_eq!(refused(&buf, &cfg), AdminError::Unauthorized);
    // Path before method.
    let buf = request("PUT /nope HTTP/1.1", &[], b"");
    assert_eq!(refused(&buf, &cfg), AdminError::NotFound);
    // Method before name.
    let buf = request("GET /publish/bad%name HTTP/1.1", &[], b"");
    assert_eq!(refused(&buf, &cfg), AdminError::MethodNotAllowed("POST"));
    // Name before transfer coding.
    let buf = request(
        "POST /publish/bad%name HTTP/1.1",
        &["Transfer-Encoding: chunked"],
        b"",
    );
    assert_eq!(refused(&buf, &cfg), AdminError::InvalidName);
    // Transfer coding before missing length.
    let buf = request(
        "POST /publish/news HTTP/1.1",
        &["Transfer-Encoding: chunked"],
        b"",
    );
    assert_eq!(refused(&buf, &cfg), AdminError::ChunkedUnsupported);
    // Missing length is judged before any size (nothing to compare), and size before
    // UTF-8: an oversize invalid text body is 413.
    let buf = request(
        "POST /publish/news HTTP/1.1",
        &["Content-Length: 1000", "Content-Type: text/plain"],
        &[0xff; 1000],
    );
    assert_eq!(refused(&buf, &cfg), AdminError::BodyTooLarge);
    // Head size before everything: an oversize garbage-free head with no auth is 431.
    let filler = format!("X-Filler: {}", "a".repeat(300));
    let buf = no_auth("GET /nope HTTP/1.1", &[&filler]);
    assert_eq!(refused(&buf, &cfg), AdminError::HeadTooLarge);
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

#[test]
fn statuses_and_labels() {
    let expected = [
        (AdminError::Malformed, 400),
        (AdminError::HeadTooLarge, 431),
        (AdminError::Unauthorized, 401),
        (AdminError::NotFound, 404),
        (AdminError::MethodNotAllowed("POST"), 405),
        (AdminError::LengthRequired, 411),
        (AdminError::BodyTooLarge, 413),
        (AdminError::InvalidUtf8, 400),
        (AdminError::InvalidName, 400),
        (AdminError::ChunkedUnsupported, 501),
        (AdminError::RequestTimeout, 408),
        (AdminError::InvalidQuery("limit: a decimal count"), 400),
        (
            AdminError::InvalidBody("the body is not a JSON object"),
            400,
        ),
        (AdminError::Forbidden, 403),
    ];
    assert_eq!(expected.len(), every_error().len());
    for (error, status) in expected {
        assert_eq!(error.status(), status, "{error:?}");
    }
    let labels: Vec<&str> = every_error().iter().map(AdminError::reason).collect();
    assert_eq!(labels, AdminError::ALL_REASONS);
}

#[test]
fn every_refusal_is_a_complete_closing_response() {
    for error in every_error() {
        let written = response_text(&error);
        let status_line = format!("HTTP/1.1 {} ", error.status());
        assert!(written.starts_with(&status_line), "{written}");
        // FIXME: `response::reason_phrase` lists no phrase for 411, so its status line is
        // the bare `HTTP/1.1 411 ` (valid per RFC 9112 §4); every other refusal has one.
        let bare = written.starts_with(&format!("{status_line}\r\n"));
        assert_eq!(bare, error.status() == 411, "{written}");
        assert!(written.contains("\r\nConnection: close\r\n"), "{written}");
        assert!(written.ends_with(error.message()), "{written}");
        let length = format!("\r\nContent-Length: {}\r\n", error.message().len());
        assert!(written.contains(&length), "{written}");
        assert_eq!(
            written.contains("\r\nWWW-Authenticate: Bearer\r\n"),
            error == AdminError::Unauthorized,
            "{written}"
        );
        assert_eq!(
            written.contains("\r\nAllow: "),
            matches!(error, AdminError::MethodNotAllowed(_)),
            "{written}"
        );
    }
    let written = response_text(&AdminError::Unauthorized);
    assert!(written.starts_with("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n"));
}

#[test]
fn each_refusal_has_its_own_slot_holding_its_label() {
    let errors = every_error();
    assert_eq!(AdminError::COUNT, errors.len());
    let mut seen = [false; AdminError::COUNT];
    for error in &errors {
        let slot = error.slot();
        assert!(!seen[slot], "{error:?} shares slot {slot}");
        seen[slot] = true;
        assert_eq!(AdminError::ALL_REASONS[slot], error.reason(), "{error:?}");
    }
}

/// A `GET` of `target` with `Host` and the valid token.
fn get(target: &str) -> Vec<u8> {
    request(&format!("GET {target} HTTP/1.1"), &[], b"")
}

#[test]
fn history_takes_since_and_limit_with_defaults_and_a_cap() {
    let target = |t: &str| accepted(&get(t), &config()).0.target;
    let history = |since, limit| Target::History {
        channel: "news".to_owned(),
        since,
        limit,
    };
    assert_eq!(target("/history/news"), history(0, HISTORY_LIMIT_DEFAULT));
    assert_eq!(target("/history/news?since=41&limit=5"), history(41, 5));
    assert_eq!(target("/history/news?limit=0&since=0"), history(0, 0));
    assert_eq!(
        target("/history/news?limit=999999999999"),
        history(0, HISTORY_LIMIT_MAX),
        "a larger limit is lowered to the cap"
    );
    assert_eq!(
        target("/history/news?since=18446744073709551615&x=y&flag"),
        history(u64::MAX, HISTORY_LIMIT_DEFAULT),
        "unknown parameters are ignored"
    );
    let (head, _) = accepted(&request("HEAD /history/news HTTP/1.1", &[], b""), &config());
    assert!(head.head_only);
}

#[test]
fn history_refuses_bad_names_and_bad_parameters_with_the_rule() {
    assert_eq!(
        refused(&get("/history/"), &config()),
        AdminError::InvalidName
    );
    assert_eq!(
        refused(&get("/history/a%20b"), &config()),
        AdminError::InvalidName
    );
    for bad in [
        "since=-1",
        "since=",
        "since=1e3",
        "since=18446744073709551616",
        "since=+4",
        "limit=ten",
        "since=1&since=2",
    ] {
        let error = refused(&get(&format!("/history/news?{bad}")), &config());
        assert!(
            matches!(error, AdminError::InvalidQuery(_)),
            "{bad}: {error:?}"
        );
        assert_eq!(error.status(), 400);
        assert_eq!(error.reason(), "invalid_query");
    }
    let error = refused(&get("/history/news?since=x"), &config());
    assert!(response_text(&error).ends_with("since: a decimal offset"));
    let error = refused(&get("/history/news?limit=-2"), &config());
    assert!(response_text(&error).ends_with("limit: a decimal count"));
    let error = refused(&get("/history/news?limit=1&limit=1"), &config());
    assert!(response_text(&error).ends_with("a query parameter is repeated"));
}

#[test]
fn channels_take_a_prefix_and_a_limit() {
    let target = |t: &str| accepted(&get(t), &config()).0.target;
    let channels = |prefix: &str, limit| Target::Channels {
        prefix: prefix.to_owned(),
        limit,
    };
    assert_eq!(target("/channels"), channels("", CHANNELS_LIMIT_DEFAULT));
    assert_eq!(
        target("/channels?prefix=room.&limit=3"),
        channels("room.", 3)
    );
    assert_eq!(
        target("/channels?prefix="),
        channels("", CHANNELS_LIMIT_DEFAULT)
    );
    assert_eq!(
        target("/channels?limit=5000"),
        channels("", CHANNELS_LIMIT_MAX)
    );
    assert_eq!(
        target("/channels/user.42"),
        Target::Channel("user.42".to_owned())
    );
    let error = refused(&get("/channels?prefix=a/b"), &config());
    assert!(matches!(error, AdminError::InvalidQuery(_)), "{error:?}");
    let long = format!("/channels?prefix={}", "a".repeat(NAME_BYTES_MAX + 1));
    assert!(matches!(
        refused(&get(&long), &config()),
        AdminError::InvalidQuery(_)
    ));
    assert_eq!(
        refused(&get("/channels/"), &config()),
        AdminError::InvalidName
    );
    assert_eq!(refused(&get("/channelsx"), &config()), AdminError::NotFound);
}

#[test]
fn the_new_paths_follow_the_token_and_their_methods() {
    for path in ["/history/news", "/channels", "/channels/news", "/broadcast"] {
        let bare = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            refused(bare.as_bytes(), &config()),
            AdminError::Unauthorized,
            "{path}"
        );
    }
    let post = request("POST /channels HTTP/1.1", &["Content-Length: 0"], b"");
    assert_eq!(
        refused(&post, &config()),
        AdminError::MethodNotAllowed(ALLOW_GET_HEAD)
    );
    assert_eq!(
        refused(&get("/broadcast"), &config()),
        AdminError::MethodNotAllowed(ALLOW_POST)
    );
    let body = br#"{"channels":["a"],"data":"x"}"#;
    let length = format!("Content-Length: {}", body.len());
    let post = request("POST /broadcast HTTP/1.1", &[&length], body);
    let (parsed, consumed) = accepted(&post, &config());
    assert_eq!(parsed.target, Target::Broadcast);
    assert_eq!(&post[parsed.body.clone()], body);
    assert_eq!(consumed, post.len());
    let too_long = request("POST /broadcast HTTP/1.1", &["Content-Length: 65"], b"");
    assert_eq!(refused(&too_long, &config()), AdminError::BodyTooLarge);
    // Query parameters on the endpoints that take none are still ignored.
    let (parsed, _) = accepted(&get("/metrics?since=x"), &open_config());
    assert_eq!(parsed.target, Target::Metrics);
}

#[test]
fn the_publish_only_token_is_refused_403_outside_its_scope() {
    let cfg = AdminConfig {
        tokens: AdminTokens::new(Some(TOKEN.as_bytes().into()), Some((*b"pub-only").into()))
            .unwrap(),
        ..config()
    };
    let with = |line: &str| format!("{line}\r\nHost: a\r\nAuthorization: Bearer pub-only\r\n\r\n");
    for line in [
        "GET /metrics HTTP/1.1",
        "GET /history/news HTTP/1.1",
        "GET /channels HTTP/1.1",
    ] {
        assert_eq!(
            refused(with(line).as_bytes(), &cfg),
            AdminError::Forbidden,
            "{line}"
        );
    }
    let publish = "POST /publish/news HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer pub-only\r\n\
         Content-Length: 1\r\n\r\nx";
    assert!(matches!(
        accepted(publish.as_bytes(), &cfg).0.target,
        Target::Publish(_)
    ));
    // A wrong token is still 401, before routing.
    let wrong = "GET /nowhere HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\n\r\n";
    assert_eq!(refused(wrong.as_bytes(), &cfg), AdminError::Unauthorized);
    let response = response_text(&AdminError::Forbidden);
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
}

#[test]
fn the_demo_files_need_no_token_and_vanish_with_no_demo() {
    let cfg = config();
    let bare = |line: &str| format!("{line}\r\nHost: a\r\n\r\n").into_bytes();
    let (page, _) = accepted(&bare("GET /demo HTTP/1.1"), &cfg);
    assert_eq!(page.target, Target::Demo(DemoAsset::Page));
    let (client, _) = accepted(&bare("HEAD /demo/ringpush.js?v=1 HTTP/1.1"), &cfg);
    assert_eq!(client.target, Target::Demo(DemoAsset::Client));
    assert!(client.head_only);
    assert_eq!(
        refused(&bare("POST /demo HTTP/1.1"), &cfg),
        AdminError::MethodNotAllowed("GET, HEAD")
    );
    // Everything else still needs the token, however close its path is to the demo's.
    assert_eq!(
        refused(&bare("GET /demo/x.js HTTP/1.1"), &cfg),
        AdminError::Unauthorized
    );
    assert_eq!(
        refused(&bare("GET /metrics HTTP/1.1"), &cfg),
        AdminError::Unauthorized
    );
    let off = AdminConfig {
        demo: Demo::Off,
        ..config()
    };
    assert_eq!(
        refused(&bare("GET /demo HTTP/1.1"), &off),
        AdminError::Unauthorized
    );
    assert_eq!(
        refused(&request("GET /demo HTTP/1.1", &[], b""), &off),
        AdminError::NotFound
    );
}
