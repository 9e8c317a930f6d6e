//! Unit tests of the handshake's size caps and of its refusals as written on the wire:
//! complete closing responses, a status per variant, one label each.

use super::*;

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
        // A 429 says when to retry: the per-address limits' promise to the client.
        let expect_retry = error.status() == 429;
        assert_eq!(header("Retry-After").is_some(), expect_retry, "{error:?}");
    }
}

#[test]
fn statuses_per_variant() {
    let statuses: Vec<u16> = every_error().iter().map(HandshakeError::status).collect();
    assert_eq!(
        statuses,
        [
            400, 431, 431, 405, 400, 404, 400, 400, 400, 400, 426, 400, 403, 503, 503, 401, 401,
            401, 401, 401, 401, 401, 403, 403, 429, 429, 503, 400, 400
        ]
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
