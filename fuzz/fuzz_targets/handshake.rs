//! Fuzzes both sides of the opening handshake with the raw input as the bytes received so
//! far: `http::handshake::parse_request` (server) and `parse_response` (client).
//!
//! The request is parsed under two configs: the default (8 KiB cap, any origin, no
//! subprotocol) and a strict one (256-byte cap, one allowed origin, two subprotocols), with
//! a router that accepts `/echo` (with or without a query) and refuses anything else with
//! `NotFound`. Checked besides "no panic":
//! - an accepted head lies inside the input and the cap, nothing past it matters, and one
//!   byte less of it is still incomplete;
//! - the accept value is 28 characters of padded base64, the subprotocol is one the config
//!   speaks, and the 101 written from it passes the client's `parse_response`;
//! - a refusal's response starts with a status line, carries `Content-Length:`, and its
//!   reason is one of `ALL_REASONS`;
//! - `parse_response` never claims more bytes than it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;

use ringpush::http::handshake::{
    parse_request, parse_response, write_switching_protocols, Config, HandshakeError, Upgrade,
    ALL_REASONS, RESPONSE_HEADER_BYTES_MAX,
};

/// The `Sec-WebSocket-Accept` for the RFC 6455 §1.3 key, which the response seeds carry.
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The length of a `Sec-WebSocket-Accept` value: a 20-byte SHA-1 in padded base64.
const ACCEPT_BYTES: usize = 28;

/// The router: `/echo` is the only endpoint.
fn route(target: &str) -> Result<(), HandshakeError> {
    match target.split_once('?').map_or(target, |(path, _query)| path) {
        "/echo" => Ok(()),
        _ => Err(HandshakeError::NotFound),
    }
}

fuzz_target!(|data: &[u8]| {
    let strict = Config {
        header_bytes_max: 256,
        allow_origins: vec!["https://example.com".to_owned()],
        subprotocols: vec!["chat.v2".to_owned(), "chat.v1".to_owned()],
    };
    for cfg in [Config::default(), strict] {
        check_request(data, &cfg);
    }
    check_response(data, RFC_ACCEPT);
});

fn check_request(data: &[u8], cfg: &Config) {
    match parse_request(data, cfg, route) {
        Ok(None) => {
            assert!(data.len() < cfg.header_bytes_max, "Ok(None) past the cap");
        }
        Ok(Some(upgrade)) => check_upgrade(data, cfg, &upgrade),
        Err(error) => check_refusal(&error),
    }
}

fn check_upgrade(data: &[u8], cfg: &Config, upgrade: &Upgrade<()>) {
    let header_bytes = upgrade.header_bytes;
    assert!(
        header_bytes <= data.len(),
        "head of {header_bytes} in {}",
        data.len()
    );
    assert!(
        header_bytes <= cfg.header_bytes_max,
        "head of {header_bytes} past the cap"
    );
    assert!(
        data[..header_bytes].ends_with(b"\n"),
        "head does not end a line"
    );
    assert_eq!(route(&upgrade.path), Ok(()), "accepted {:?}", upgrade.path);

    assert_eq!(
        upgrade.accept.len(),
        ACCEPT_BYTES,
        "accept {:?}",
        upgrade.accept
    );
    assert!(upgrade.accept.ends_with('='), "accept {:?}", upgrade.accept);
    assert!(
        upgrade.accept[..ACCEPT_BYTES - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
        "accept {:?}",
        upgrade.accept
    );
    if let Some(subprotocol) = &upgrade.subprotocol {
        assert!(
            cfg.subprotocols.contains(subprotocol),
            "picked {subprotocol:?}"
        );
    }

    // Nothing past the head was looked at, and the head minus a byte is incomplete.
    let exact = parse_request(&data[..header_bytes], cfg, route);
    assert_eq!(exact.as_ref(), Ok(&Some(upgrade.clone())));
    let short = parse_request(&data[..header_bytes - 1], cfg, route);
    assert_eq!(short, Ok(None), "a head one byte short");

    // The 101 written for this upgrade satisfies our own client.
    let mut response = Vec::new();
    write_switching_protocols(
        &mut response,
        &upgrade.accept,
        upgrade.subprotocol.as_deref(),
    );
    let answer = parse_response(&response, &upgrade.accept)
        .expect("our 101 passes our client")
        .expect("our 101 is complete");
    assert_eq!(answer.header_bytes, response.len());
    assert_eq!(answer.subprotocol, upgrade.subprotocol);
}

fn check_refusal(error: &HandshakeError) {
    assert!(
        ALL_REASONS.contains(&error.reason()),
        "reason {}",
        error.reason()
    );
    let status = error.status();
    assert!((400..600).contains(&status), "status {status}");
    let mut response = Vec::new();
    error.write_refusal(&mut response);
    assert!(response.starts_with(b"HTTP/1.1 "), "refusal {response:?}");
    let status_line = format!("HTTP/1.1 {status} ");
    assert!(
        response.starts_with(status_line.as_bytes()),
        "refusal {response:?}"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("Content-Length:"), "refusal {text:?}");
    let (head, body) = text.split_once("\r\n\r\n").expect("the refusal head ends");
    let length = format!("Content-Length: {}", body.len());
    assert!(
        head.split("\r\n").any(|line| line == length),
        "refusal {text:?}"
    );
}

fn check_response(data: &[u8], expected_accept: &str) {
    match parse_response(data, expected_accept) {
        Ok(None) => {
            assert!(
                data.len() < RESPONSE_HEADER_BYTES_MAX,
                "Ok(None) past the cap"
            );
        }
        Ok(Some(answer)) => {
            assert!(
                answer.header_bytes <= data.len(),
                "response head past the input"
            );
            assert!(answer.header_bytes <= RESPONSE_HEADER_BYTES_MAX);
            if let Some(subprotocol) = &answer.subprotocol {
                assert!(!subprotocol.is_empty() && !subprotocol.contains(','));
            }
            let exact = parse_response(&data[..answer.header_bytes], expected_accept);
            assert_eq!(exact, Ok(Some(answer)));
        }
        Err(_) => {}
    }
}
