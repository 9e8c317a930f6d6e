//! Loading the admin tokens.

use std::path::Path;

use super::*;

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
