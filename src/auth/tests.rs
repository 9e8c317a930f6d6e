//! The `--auth` decision, refresh, refusal labels and where a token travels in a request.

use std::sync::Arc;

use super::extract::{
    find_credential, token_from_authorization, token_from_query, token_from_subprotocols,
    Credential, TokenSource,
};
use super::*;
use crate::http::upgrade_headers::UpgradeHeaders;

/// No header line.
const NONE: [&[u8]; 0] = [];

const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl";

fn scope(subscribe: &[&str], publish: &[&str]) -> Arc<Scope> {
    Arc::new(Scope {
        subscribe: Patterns::parse(subscribe).unwrap(),
        publish: Patterns::parse(publish).unwrap(),
    })
}

fn grant(session: &str, subscribe: &[&str]) -> Grant {
    Grant {
        session: session.into(),
        tab: None,
        expires_at_s: 100,
        scope: scope(subscribe, &[]),
    }
}

fn credential() -> Option<Credential<'static>> {
    Some(Credential {
        token: JWT,
        source: TokenSource::Query,
    })
}

#[test]
fn auth_off_never_looks_at_a_token() {
    let anonymous = scope(&[], &[]);
    let verify = |_: &str| -> Result<Grant, Refusal> { panic!("verified with auth off") };
    let access = admit(AuthMode::Off, &anonymous, credential(), verify, &["x"]).unwrap();
    assert_eq!(access, Access::Open);
    assert!(access.may_subscribe("anything"));
    assert!(access.may_publish("x", true) && !access.may_publish("x", false));
    assert_eq!((access.session(), access.expires_at_s()), (None, None));
}

#[test]
fn auth_required_needs_a_valid_token_within_its_channels() {
    let anonymous = scope(&["public"], &[]);
    let ok = |_: &str| Ok(grant("u1", &["news.*"]));
    let no_token = admit(AuthMode::Required, &anonymous, None, ok, &["public"]);
    assert_eq!(no_token, Err(Refusal::Missing));
    let access = admit(
        AuthMode::Required,
        &anonymous,
        credential(),
        ok,
        &["news.eu"],
    )
    .unwrap();
    assert_eq!(access.session(), Some(("u1", None)));
    assert_eq!(access.expires_at_s(), Some(100));
    let outside = admit(AuthMode::Required, &anonymous, credential(), ok, &["sport"]);
    assert_eq!(outside, Err(Refusal::ChannelNotAllowed));
    assert_eq!(Refusal::ChannelNotAllowed.status(), 403);
    let expired = |_: &str| Err(Refusal::Expired);
    let refused = admit(AuthMode::Required, &anonymous, credential(), expired, &[]);
    assert_eq!(refused, Err(Refusal::Expired));
}

#[test]
fn auth_optional_lets_tokenless_clients_into_the_anonymous_channels_only() {
    let anonymous = scope(&["public", "lobby.*"], &[]);
    let ok = |_: &str| Ok(grant("u1", &["private"]));
    let access = admit(AuthMode::Optional, &anonymous, None, ok, &["lobby.1"]).unwrap();
    assert!(matches!(access, Access::Anonymous(_)));
    assert_eq!(access.session(), None, "an anonymous client has no session");
    assert!(!access.may_publish("public", true));
    let more = admit(AuthMode::Optional, &anonymous, None, ok, &["private"]);
    assert_eq!(more, Err(Refusal::Missing), "a token would help: 401");
    let token = admit(
        AuthMode::Optional,
        &anonymous,
        credential(),
        ok,
        &["private"],
    );
    assert!(matches!(token, Ok(Access::Token(_))));
    // A token that fails is refused, not downgraded to anonymous.
    let bad = |_: &str| Err(Refusal::BadSignature);
    let failing = admit(
        AuthMode::Optional,
        &anonymous,
        credential(),
        bad,
        &["public"],
    );
    assert_eq!(failing, Err(Refusal::BadSignature));
}

#[test]
fn a_refresh_keeps_the_session_and_the_subscriptions() {
    let current = grant("u1", &["a", "b"]);
    let fresh = Grant {
        expires_at_s: 200,
        ..grant("u1", &["a", "b", "c"])
    };
    assert_eq!(
        refresh(&current, fresh.clone(), ["a"])
            .unwrap()
            .expires_at_s,
        200
    );
    let other = grant("u2", &["a"]);
    assert_eq!(
        refresh(&current, other, ["a"]),
        Err(Refusal::SessionMismatch)
    );
    let narrower = grant("u1", &["a"]);
    assert_eq!(
        refresh(&current, narrower, ["a", "b"]),
        Err(Refusal::ChannelNotAllowed)
    );
}

#[test]
fn every_refusal_has_a_stable_label_and_a_status() {
    let all = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::WrongAlgorithm,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::ChannelNotAllowed,
        Refusal::SessionMismatch,
    ];
    assert_eq!(all.len(), Refusal::COUNT);
    for (slot, refusal) in all.iter().enumerate() {
        assert_eq!(refusal.slot(), slot);
        assert_eq!(refusal.label(), refusal::ALL_LABELS[slot]);
        let expected = if slot >= 7 { 403 } else { 401 };
        assert_eq!(refusal.status(), expected, "{refusal:?}");
        assert!(refusal.www_authenticate().starts_with("Bearer realm="));
    }
    assert_eq!(Refusal::Expired.label(), "token_expired");
    assert_eq!(AuthMode::parse("required"), Some(AuthMode::Required));
    assert_eq!(AuthMode::parse("on"), None);
    assert_eq!(AuthMode::default(), AuthMode::Off);
}

#[test]
fn a_token_in_the_query() {
    assert_eq!(
        token_from_query(&format!("format=json&token={JWT}")),
        Ok(Some(JWT))
    );
    assert_eq!(token_from_query("channel=a&tokens=x"), Ok(None));
    assert_eq!(token_from_query(""), Ok(None));
    let twice = format!("token={JWT}&token={JWT}");
    assert_eq!(token_from_query(&twice), Err(Refusal::Malformed));
    assert_eq!(token_from_query("token=a%2Eb.c"), Err(Refusal::Malformed));
    assert_eq!(token_from_query("token="), Err(Refusal::Malformed));
}

#[test]
fn a_token_as_a_subprotocol_needs_ringpush_v1_beside_it() {
    let offer = format!("ringpush.v1, bearer.{JWT}");
    assert_eq!(token_from_subprotocols(&[offer.as_bytes()]), Ok(Some(JWT)));
    // Across two header lines, in any order.
    let bearer = format!("bearer.{JWT}");
    let lines: [&[u8]; 2] = [bearer.as_bytes(), b"chat, ringpush.v1"];
    assert_eq!(token_from_subprotocols(&lines), Ok(Some(JWT)));
    assert_eq!(token_from_subprotocols(&[b"chat, ringpush.v1"]), Ok(None));
    assert_eq!(
        token_from_subprotocols(&[bearer.as_bytes()]),
        Err(Refusal::Malformed),
        "the node could echo nothing but the token"
    );
    let twice = format!("ringpush.v1, bearer.{JWT}, bearer.{JWT}");
    assert_eq!(
        token_from_subprotocols(&[twice.as_bytes()]),
        Err(Refusal::Malformed)
    );
    let offers = [offer.as_bytes()];
    let found = find_credential("", &offers, &NONE).unwrap().unwrap();
    assert_eq!(found.source, TokenSource::Subprotocol);
    assert_eq!(found.echo(), Some(SUBPROTOCOL));
}

#[test]
fn a_token_as_an_authorization_bearer() {
    let value = format!("Bearer {JWT}");
    assert_eq!(token_from_authorization(&[value.as_bytes()]), Ok(Some(JWT)));
    let lower = format!("bearer   {JWT} ");
    assert_eq!(token_from_authorization(&[lower.as_bytes()]), Ok(Some(JWT)));
    assert_eq!(token_from_authorization(&[b"Basic dXNlcjpwYXNz"]), Ok(None));
    assert_eq!(token_from_authorization(&NONE), Ok(None));
    assert_eq!(
        token_from_authorization(&[b"Bearer"]),
        Err(Refusal::Malformed)
    );
    let two: [&[u8]; 2] = [value.as_bytes(), value.as_bytes()];
    assert_eq!(token_from_authorization(&two), Err(Refusal::Malformed));
    let values = [value.as_bytes()];
    let found = find_credential("a=b", &NONE, &values).unwrap().unwrap();
    assert_eq!(found.source, TokenSource::Authorization);
    assert_eq!(found.echo(), None);
}

#[test]
fn a_token_is_taken_from_exactly_one_place() {
    let query = format!("token={JWT}");
    let auth = format!("Bearer {JWT}");
    let found = find_credential(&query, &NONE, &NONE).unwrap().unwrap();
    assert_eq!((found.token, found.source), (JWT, TokenSource::Query));
    assert_eq!(find_credential("", &NONE, &NONE), Ok(None));
    // The handshake's owned copies work the same.
    let owned = UpgradeHeaders {
        authorization: vec![auth.as_bytes().into()],
        ..UpgradeHeaders::default()
    };
    let found = find_credential("", &owned.subprotocols, &owned.authorization);
    assert_eq!(found.unwrap().unwrap().source, TokenSource::Authorization);
    assert_eq!(
        find_credential(&query, &NONE, &[auth.as_bytes()]),
        Err(Refusal::Malformed)
    );
}

#[test]
fn the_configuration_is_checked_at_start_up() {
    let none = KeySet::default();
    let empty = Scope::default();
    let lobby = Scope {
        subscribe: Patterns::parse(&["lobby"]).unwrap(),
        publish: Patterns::none(),
    };
    assert!(check_config(AuthMode::Off, &none, &empty).is_ok());
    let error = check_config(AuthMode::Required, &none, &empty).unwrap_err();
    assert!(error.contains("--token-key"), "{error}");
    assert!(check_config(AuthMode::Optional, &none, &lobby).is_err());
    let error = check_config(AuthMode::Off, &none, &lobby).unwrap_err();
    assert!(error.contains("--auth optional"), "{error}");
    let keys = KeySet::new(vec![TokenKey::hmac("k".into(), &[7; 32]).unwrap()]).unwrap();
    assert!(check_config(AuthMode::Optional, &keys, &lobby).is_ok());
    assert!(check_config(AuthMode::Required, &keys, &empty).is_ok());
    assert!(AUTH_OFF_WARNING.contains("anyone may subscribe"));
}
