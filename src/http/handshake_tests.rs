//! Unit tests of the upgrade handshake (`handshake.rs`), kept beside it.

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
    // One token refusal per token label: 401 but for the two about scope (indexes 7, 8).
    let all = all.into_iter().chain((0..9u8).map(|index| {
        HandshakeError::Token(TokenRefusal {
            index,
            status: if index >= 7 { 403 } else { 401 },
            message: "token refused",
            challenge: "Bearer realm=\"ringpush\"",
        })
    }));
    let admission = [
        HandshakeError::TooManyPerIp { retry_after_s: 5 },
        HandshakeError::ConnectRatePerIp { retry_after_s: 1 },
        HandshakeError::AddressTableFull,
        HandshakeError::ProxyHeaderUntrusted,
        HandshakeError::ProxyHeaderInvalid("bad PROXY protocol header"),
    ];
    let all: Vec<HandshakeError> = all.chain(admission).collect();
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
            | HandshakeError::ShuttingDown
            | HandshakeError::Token(_)
            | HandshakeError::TooManyPerIp { .. }
            | HandshakeError::ConnectRatePerIp { .. }
            | HandshakeError::AddressTableFull
            | HandshakeError::ProxyHeaderUntrusted
            | HandshakeError::ProxyHeaderInvalid(_) => {}
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
            headers: UpgradeHeaders::default(),
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
fn default_config_accepts_a_browser() {
    accepted(BROWSER_REQUEST.as_bytes(), &Config::default());
}

#[path = "handshake_refusal_tests.rs"]
mod refusals;
