//! Issue 11, black-box, the parts wired into the node: the admin token scopes. The parts not
//! wired yet (connection tokens, per-address admission, rate limits, proxies) are in
//! `tests/auth_pending.rs`, kept out of the default run by `test = false` in Cargo.toml.
//! The flags, labels and close codes these tests use are the ones `SECURITY.md` documents.

mod util;

use util::admin;
use util::auth::start_listening_with_env;

#[test]
fn issue_11_a_publish_only_admin_token_cannot_read_metrics() {
    let dir = std::env::temp_dir().join(format!("ringpush-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let admin_file = dir.join("admin.token");
    std::fs::write(&admin_file, "full-admin-token-0123456789\n").unwrap();
    let node = start_listening_with_env(
        "127.0.0.1:0",
        &[
            "--admin-token-file",
            admin_file.to_str().unwrap(),
            "--admin-publish-token-env",
            "RINGPUSH_TEST_PUBLISH_TOKEN",
        ],
        &[(
            "RINGPUSH_TEST_PUBLISH_TOKEN",
            "publish-only-token-0123456789",
        )],
    );
    let full = [("Authorization", "Bearer full-admin-token-0123456789")];
    let publish_only = [("Authorization", "Bearer publish-only-token-0123456789")];
    let text = ("Content-Type", "text/plain");

    let resp = admin(&node, "GET", "/metrics", &publish_only, b"");
    assert_eq!(resp.status, 403, "{}", resp.text());
    let resp = admin(&node, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 401, "{}", resp.text());
    let resp = admin(&node, "GET", "/metrics", &full, b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    for path in ["/publish/news", "/send/someone"] {
        let resp = admin(&node, "POST", path, &[publish_only[0], text], b"x");
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let resp = admin(&node, "POST", path, &[full[0], text], b"x");
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
