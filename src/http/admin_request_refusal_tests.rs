//! Unit tests of the admin parser's refusals: each status, its label and its response,
//! and the order the checks run in.

use super::*;

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
