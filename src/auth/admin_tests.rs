//! Admin token scopes and their loading.

use std::path::Path;

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
}

#[test]
fn tokens_load_from_one_of_a_literal_a_file_or_the_environment() {
    let none = TokenSources::default();
    assert_eq!(load_token("admin-token", &none), Ok(None));
    let literal = TokenSources {
        literal: Some("abc"),
        ..TokenSources::default()
    };
    assert_eq!(
        load_token("admin-token", &literal),
        Ok(Some((*b"abc").into()))
    );

    let dir = std::env::temp_dir().join(format!("ringpush-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    let from_file = TokenSources {
        file: Some(&file),
        ..TokenSources::default()
    };
    assert_eq!(
        load_token("admin-token", &from_file),
        Ok(Some((*b"from-file").into()))
    );
    std::fs::write(&file, "\n").unwrap();
    assert!(load_token("admin-token", &from_file)
        .unwrap_err()
        .contains("empty"));
    let missing = TokenSources {
        file: Some(Path::new("/nonexistent/ringpush-token")),
        ..TokenSources::default()
    };
    assert!(load_token("admin-token", &missing).is_err());
    let _ = std::fs::remove_dir_all(&dir);

    let var = "RINGPUSH_TEST_ADMIN_TOKEN_ADMIN_TESTS";
    std::env::set_var(var, "from-env");
    let from_env = TokenSources {
        env: Some(var),
        ..TokenSources::default()
    };
    assert_eq!(
        load_token("admin-publish-token", &from_env),
        Ok(Some((*b"from-env").into()))
    );
    let two = TokenSources {
        literal: Some("abc"),
        env: Some(var),
        ..TokenSources::default()
    };
    assert!(load_token("admin-token", &two)
        .unwrap_err()
        .contains("one way"));
}

#[test]
fn debug_output_never_shows_a_token() {
    let shown = format!("{:?}", tokens());
    assert!(
        !shown.contains("full-token") && !shown.contains("pub-token"),
        "{shown}"
    );
}
