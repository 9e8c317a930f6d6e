//! Admin token scopes.

use super::*;

fn tokens() -> AdminTokens {
    AdminTokens::new(Some((*b"full-token").into()), Some((*b"pub-token").into())).unwrap()
}

fn publish() -> Target {
    Target::Publish("news".into())
}

#[test]
fn the_publish_token_reaches_publish_send_and_healthz_but_not_metrics() {
    let t = tokens();
    let with = |value: &str| [value.as_bytes().to_vec()];
    let publish_only = with("Bearer pub-token");
    assert_eq!(
        t.check(&publish_only, &publish()),
        Ok(AdminScope::PublishOnly)
    );
    let send = Target::Send("s".into());
    assert_eq!(t.check(&publish_only, &send), Ok(AdminScope::PublishOnly));
    assert_eq!(
        t.check(&publish_only, &Target::Healthz),
        Ok(AdminScope::PublishOnly)
    );
    assert_eq!(
        t.check(&publish_only, &Target::Metrics),
        Err(AdminDenial::Forbidden)
    );
    assert_eq!(AdminDenial::Forbidden.status(), 403);
    let full = with("bearer  full-token ");
    assert_eq!(t.check(&full, &Target::Metrics), Ok(AdminScope::Full));
    assert_eq!(t.check(&full, &publish()), Ok(AdminScope::Full));
}

#[test]
fn anything_else_is_unauthorized() {
    let t = tokens();
    let none: [&[u8]; 0] = [];
    assert_eq!(t.check(&none, &publish()), Err(AdminDenial::Unauthorized));
    for value in [
        "Bearer wrong",
        "Basic full-token",
        "Bearer",
        "full-token",
        "Bearer pub-toke",
    ] {
        let values = [value.as_bytes()];
        assert_eq!(
            t.check(&values, &publish()),
            Err(AdminDenial::Unauthorized),
            "{value:?}"
        );
    }
    let twice: [&[u8]; 2] = [b"Bearer full-token", b"Bearer full-token"];
    assert_eq!(t.check(&twice, &publish()), Err(AdminDenial::Unauthorized));
    assert_eq!(AdminDenial::Unauthorized.status(), 401);
}

#[test]
fn without_a_full_token_the_api_is_open_and_a_lone_publish_token_is_refused() {
    let open = AdminTokens::default();
    assert!(open.is_open());
    let none: [&[u8]; 0] = [];
    assert_eq!(open.check(&none, &Target::Metrics), Ok(AdminScope::Full));
    assert!(AdminTokens::new(None, Some((*b"p").into())).is_err());
    let same: Box<[u8]> = (*b"same").into();
    assert!(AdminTokens::new(Some(same.clone()), Some(same)).is_err());
    let empty: Box<[u8]> = (*b"").into();
    assert!(AdminTokens::new(Some(empty), None).is_err());
}

#[test]
fn debug_output_never_shows_a_token() {
    let shown = format!("{:?}", tokens());
    assert!(
        !shown.contains("full-token") && !shown.contains("pub-token"),
        "{shown}"
    );
}
