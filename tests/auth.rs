//! Issue 11, black-box, the parts wired into the node: connection tokens before the upgrade
//! (raw and JSON mode, and JSON `subscribe` within the claims), expiry (4003) and JSON
//! `refresh`, and the admin token scopes, against the real binary. Per-address admission,
//! rate limits and proxies are in `tests/admission.rs`. The flags, labels and close codes
//! these tests use are the ones `SECURITY.md` documents.

mod util;

use std::time::{Duration, Instant};

use serde_json::json;

use util::auth::{
    claims, expect_silence, fixture, forge, header, news_claims, none_token, now_s, publish,
    refused, required_node, sign, start_listening_with_env, upgrade, Signer,
};
use util::json_client::JsonClient;
use util::{admin, metric_at_least, spawn_node, Msg, Node};

#[test]
fn issue_11_valid_hs256_rs256_and_es256_tokens_upgrade_from_each_place() {
    let node = required_node(&[]);
    let hs = sign(&Signer::Hs("hs1.secret"), None, &news_claims());
    let rs = sign(&Signer::Rs, None, &news_claims());
    let es = sign(&Signer::Es, Some("es1"), &news_claims());

    let mut by_query = upgrade(node.addr, &format!("/ws/news?token={hs}"), &[]).unwrap();
    let bearer = format!("Bearer {rs}");
    let mut by_header =
        upgrade(node.addr, "/ws/news", &[("Authorization", bearer.as_str())]).unwrap();
    let offer = format!("ringpush.v1, bearer.{es}");
    let mut by_protocol = upgrade(
        node.addr,
        "/ws/news",
        &[("Sec-WebSocket-Protocol", offer.as_str())],
    )
    .unwrap();
    // The node echoes the protocol, never the token.
    assert_eq!(
        header(&by_protocol.head, "Sec-WebSocket-Protocol"),
        Some("ringpush.v1"),
        "{}",
        by_protocol.head
    );
    assert!(!by_protocol.head.contains(&es), "{}", by_protocol.head);

    publish(&node, "news", "hello");
    for client in [&mut by_query, &mut by_header, &mut by_protocol] {
        assert_eq!(client.recv(), Msg::Text("hello".into()));
    }

    let (status, head) = refused(node.addr, "/ws/news", &[]);
    assert_eq!(status, 401, "{head}");
    assert!(header(&head, "WWW-Authenticate").is_some_and(|v| v.starts_with("Bearer")));
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"token_missing\"}",
        1,
    );
}

#[test]
fn issue_11_forged_unsigned_and_key_confused_tokens_are_refused_401() {
    let node = required_node(&[]);
    let good = sign(&Signer::Hs("hs1.secret"), None, &news_claims());
    let forged = forge(&good, &claims("admin", &["*"], 600));
    let unsigned = none_token(&news_claims());
    // HS256 with the RS256 public key's PEM bytes as the secret.
    let public_pem = std::fs::read(fixture("rs1.pem")).unwrap();
    let confused = sign(&Signer::HsBytes(public_pem.clone()), None, &news_claims());
    let confused_kid = sign(&Signer::HsBytes(public_pem), Some("rs1"), &news_claims());
    let stranger = sign(&Signer::Hs("hs-removed.secret"), None, &news_claims());

    for (name, token) in [
        ("forged", &forged),
        ("alg none", &unsigned),
        ("key confusion", &confused),
        ("key confusion with kid", &confused_kid),
        ("unknown secret", &stranger),
        ("garbage", &"not-a-token".to_string()),
    ] {
        let (status, head) = refused(node.addr, &format!("/ws/news?token={token}"), &[]);
        assert_eq!(status, 401, "{name}: {head}");
    }
    for (reason, at_least) in [
        ("token_bad_signature", 3),
        ("token_wrong_algorithm", 2),
        ("token_malformed", 1),
    ] {
        let series = format!("ringpush_connections_refused_total{{reason=\"{reason}\"}}");
        metric_at_least(&node, &series, at_least);
    }
    node.expect_log("token_bad_signature");
}

#[test]
fn issue_11_expired_and_not_yet_valid_tokens_are_refused_401() {
    let node = required_node(&[]);
    let expired = sign(
        &Signer::Hs("hs1.secret"),
        None,
        &claims("user-1", &["news"], -60),
    );
    let mut early = claims("user-1", &["news"], 600);
    // Beyond the 30 s clock leeway (CLOCK_LEEWAY_S).
    early["nbf"] = json!(now_s() + 300);
    let early = sign(&Signer::Rs, None, &early);
    for token in [&expired, &early] {
        let (status, head) = refused(node.addr, &format!("/ws/news?token={token}"), &[]);
        assert_eq!(status, 401, "{head}");
    }
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"token_expired\"}",
        1,
    );
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"token_not_yet_valid\"}",
        1,
    );
}

#[test]
fn issue_11_a_rotated_key_still_verifies_and_a_removed_one_is_refused() {
    let (hs1, hs2) = (fixture("hs1.secret"), fixture("hs2.secret"));
    let old = sign(&Signer::Hs("hs1.secret"), None, &news_claims());
    let old_with_kid = sign(&Signer::Hs("hs1.secret"), Some("hs1"), &news_claims());
    let new = sign(&Signer::Hs("hs2.secret"), Some("hs2"), &news_claims());

    // During the rotation both keys verify.
    let both = Node::start(&[
        "--auth",
        "required",
        "--token-key",
        &hs1,
        "--token-key",
        &hs2,
    ]);
    for token in [&old, &old_with_kid, &new] {
        upgrade(both.addr, &format!("/ws/news?token={token}"), &[]).unwrap();
    }
    // After it, the old key is gone.
    let rotated = Node::start(&["--auth", "required", "--token-key", &hs2]);
    for token in [&old, &old_with_kid] {
        let (status, head) = refused(rotated.addr, &format!("/ws/news?token={token}"), &[]);
        assert_eq!(status, 401, "{head}");
    }
    upgrade(rotated.addr, &format!("/ws/news?token={new}"), &[]).unwrap();
}

#[test]
fn issue_11_the_session_comes_from_sub_and_a_query_session_displaces_nobody() {
    let node = required_node(&[]);
    let alice = sign(
        &Signer::Hs("hs1.secret"),
        None,
        &claims("alice", &["news"], 600),
    );
    let mallory = sign(
        &Signer::Hs("hs1.secret"),
        None,
        &claims("mallory", &["news"], 600),
    );
    let mut alice_client =
        upgrade(node.addr, &format!("/ws/news?token={alice}&tab=t1"), &[]).unwrap();
    // Mallory names Alice's session and tab in the query; the token's `sub` wins.
    let mut mallory_client = upgrade(
        node.addr,
        &format!("/ws/news?session=alice&tab=default&token={mallory}"),
        &[],
    )
    .unwrap();
    let resp = admin(
        &node,
        "POST",
        "/send/alice",
        &[("Content-Type", "text/plain")],
        b"for alice",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(alice_client.recv(), Msg::Text("for alice".into()));
    expect_silence(&mut mallory_client, Duration::from_millis(500));
    let resp = admin(
        &node,
        "POST",
        "/send/mallory",
        &[("Content-Type", "text/plain")],
        b"for mallory",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(mallory_client.recv(), Msg::Text("for mallory".into()));
    expect_silence(&mut alice_client, Duration::from_millis(300));
}

#[test]
fn issue_11_auth_optional_admits_tokenless_clients_to_anonymous_channels_only() {
    let hs1 = fixture("hs1.secret");
    let node = Node::start(&[
        "--auth",
        "optional",
        "--token-key",
        &hs1,
        "--anonymous-channels",
        "lobby,public.*",
    ]);
    upgrade(node.addr, "/ws/lobby", &[]).unwrap();
    upgrade(node.addr, "/ws/public.eu", &[]).unwrap();
    let (status, head) = refused(node.addr, "/ws/news", &[]);
    assert_eq!(status, 401, "{head}");
    let token = sign(&Signer::Hs("hs1.secret"), None, &news_claims());
    upgrade(node.addr, &format!("/ws/news?token={token}"), &[]).unwrap();
    // A failing token is refused, not downgraded to anonymous.
    let expired = sign(
        &Signer::Hs("hs1.secret"),
        None,
        &claims("u", &["lobby"], -60),
    );
    let (status, head) = refused(node.addr, &format!("/ws/lobby?token={expired}"), &[]);
    assert_eq!(status, 401, "{head}");
}

#[test]
fn issue_11_bad_key_files_stop_the_start_and_auth_off_warns() {
    for args in [
        vec!["--auth".to_string(), "required".to_string()],
        vec![
            "--auth".into(),
            "required".into(),
            "--token-key".into(),
            fixture("private/rs1.pem"),
        ],
        vec!["--token-key".into(), fixture("es384.pem")],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_node(
            &[
                &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
                &args[..],
            ]
            .concat(),
            &[],
        );
        let deadline = Instant::now() + util::WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{args:?}: the node started");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{args:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            stderr.contains("token") || stderr.contains("auth"),
            "{args:?}: {stderr}"
        );
    }
    let open = Node::start(&[]);
    open.expect_log("anyone may subscribe");
}

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

#[test]
fn issue_11_a_channel_outside_the_claims_is_403_before_the_upgrade_and_an_error_after() {
    let node = required_node(&[]);
    let token = sign(&Signer::Hs("hs1.secret"), None, &news_claims());
    for path in [
        format!("/ws/weather?token={token}"),
        format!("/ws?format=json&channel=news&channel=weather&token={token}"),
    ] {
        let (status, head) = refused(node.addr, &path, &[]);
        assert_eq!(status, 403, "{path}: {head}");
    }
    metric_at_least(
        &node,
        "ringpush_connections_refused_total{reason=\"channel_not_allowed\"}",
        2,
    );
    upgrade(node.addr, &format!("/ws/scores.eu?token={token}"), &[]).unwrap();

    // In JSON mode a subscribe outside the claims is an error 403 and the connection stays.
    let mut json_client = JsonClient::connect(&node, &format!("&token={token}")).unwrap();
    json_client.send(&json!({"op":"subscribe","id":1,"channel":"weather"}));
    json_client.expect_error(Some(1), 403);
    json_client.subscribe(2, "news", None);
    publish(&node, "news", "still here");
    assert_eq!(json_client.expect_message().data, b"still here");
}

#[test]
fn issue_11_expiry_closes_4003_and_a_refresh_prevents_it() {
    let node = required_node(&[]);
    let short = |sub: &str| sign(&Signer::Hs("hs1.secret"), None, &claims(sub, &["news"], 3));
    let started = Instant::now();
    let mut expiring = JsonClient::connect(&node, &format!("&channel=news&token={}", short("u1")))
        .expect("upgrade");
    let mut refreshed = JsonClient::connect(&node, &format!("&channel=news&token={}", short("u2")))
        .expect("upgrade");
    // The query's channel is answered `subscribed` (PROTOCOL.md) before anything else.
    for client in [&mut expiring, &mut refreshed] {
        assert_eq!(client.recv_op("subscribed")["channel"], "news");
    }

    // A refresh for another session is refused and changes nothing.
    let other = sign(
        &Signer::Hs("hs1.secret"),
        None,
        &claims("u3", &["news"], 600),
    );
    refreshed.send(&json!({"op":"refresh","id":1,"token":other}));
    refreshed.expect_error(Some(1), 403);
    let fresh = sign(
        &Signer::Hs("hs1.secret"),
        None,
        &claims("u2", &["news"], 600),
    );
    refreshed.send(&json!({"op":"refresh","id":2,"token":fresh}));
    let answer = refreshed.recv_op("refreshed");
    assert_eq!(answer["id"], 2, "{answer}");

    expiring.expect_close(4003);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed after {elapsed:?}"
    );
    metric_at_least(
        &node,
        "ringpush_connections_closed_total{reason=\"token_expired\"}",
        1,
    );

    // Past the first token's expiry the refreshed connection is still served.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(started.elapsed()));
    publish(&node, "news", "after expiry");
    assert_eq!(refreshed.expect_message().data, b"after expiry");
}

#[test]
fn issue_11_auth_off_reads_no_token_and_keeps_the_query_session() {
    let node = Node::start(&[]);
    // Malformed under auth, ignored without it: the upgrade succeeds and the session is the
    // query's, as before issue 11.
    let mut client = upgrade(
        node.addr,
        "/ws/news?token=not-a-token&session=s1",
        &[("Authorization", "Bearer also-not-a-token")],
    )
    .unwrap();
    let resp = admin(
        &node,
        "POST",
        "/send/s1",
        &[("Content-Type", "text/plain")],
        b"for s1",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(client.recv(), Msg::Text("for s1".into()));
}

#[test]
fn issue_11_echo_needs_a_token_and_a_refusal_logs_the_key_id_never_the_token() {
    let node = required_node(&[]);
    let (status, head) = refused(node.addr, "/echo", &[]);
    assert_eq!(status, 401, "{head}");
    let token = sign(&Signer::Hs("hs1.secret"), Some("hs1"), &news_claims());
    let mut echo = upgrade(node.addr, &format!("/echo?token={token}"), &[]).unwrap();
    echo.send(ringpush::ws::OpCode::Text, b"with a token");
    assert_eq!(echo.recv(), Msg::Text("with a token".into()));

    let forged = forge(&token, &claims("admin", &["*"], 600));
    let (status, head) = refused(node.addr, &format!("/echo?token={forged}"), &[]);
    assert_eq!(status, 401, "{head}");
    let line = node.expect_log("kid=hs1");
    assert!(line.contains("reason=token_bad_signature"), "{line}");
    for part in forged.split('.') {
        assert!(
            !line.contains(part),
            "the log line holds part of the token: {line}"
        );
    }
}

#[test]
fn issue_11_json_mode_binds_the_session_from_sub_and_a_query_session_displaces_nobody() {
    let node = required_node(&[]);
    let tabbed = |sub: &str| {
        let mut claims = claims(sub, &["news"], 600);
        claims["tab"] = json!("t1");
        sign(&Signer::Hs("hs1.secret"), None, &claims)
    };
    let (bob, alice) = (tabbed("bob"), tabbed("alice"));
    let mut bob_client = upgrade(node.addr, &format!("/ws/news?token={bob}"), &[]).unwrap();
    // Alice names Bob's session and tab in a JSON-mode query: the token's `sub` wins.
    let mut alice_first = JsonClient::connect(
        &node,
        &format!("&channel=news&session=bob&tab=t1&token={alice}"),
    )
    .unwrap();
    alice_first.recv_op("subscribed");
    expect_silence(&mut bob_client, Duration::from_millis(300));
    publish(&node, "news", "both");
    assert_eq!(bob_client.recv(), Msg::Text("both".into()));
    assert_eq!(alice_first.expect_message().data, b"both");
    // The JSON connection holds (alice, t1): a newer one of the same tab replaces it, as
    // in raw mode, and Bob is still untouched.
    let mut alice_second = JsonClient::connect(&node, &format!("&token={alice}")).unwrap();
    alice_first.expect_close(4001);
    alice_second.subscribe(1, "news", None);
    publish(&node, "news", "again");
    assert_eq!(bob_client.recv(), Msg::Text("again".into()));
    assert_eq!(alice_second.expect_message().data, b"again");
}
