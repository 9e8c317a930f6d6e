//! Unit tests of the admin parser's routes past publish and send: history, channels,
//! token scopes per path, and the demo files.

use super::*;

/// A `GET` of `target` with `Host` and the valid token.
fn get(target: &str) -> Vec<u8> {
    request(&format!("GET {target} HTTP/1.1"), &[], b"")
}

#[test]
fn history_takes_since_and_limit_with_defaults_and_a_cap() {
    let target = |t: &str| accepted(&get(t), &config()).0.target;
    let history = |since, limit| Target::History {
        channel: "news".to_owned(),
        since,
        limit,
    };
    assert_eq!(target("/history/news"), history(0, HISTORY_LIMIT_DEFAULT));
    assert_eq!(target("/history/news?since=41&limit=5"), history(41, 5));
    assert_eq!(target("/history/news?limit=0&since=0"), history(0, 0));
    assert_eq!(
        target("/history/news?limit=999999999999"),
        history(0, HISTORY_LIMIT_MAX),
        "a larger limit is lowered to the cap"
    );
    assert_eq!(
        target("/history/news?since=18446744073709551615&x=y&flag"),
        history(u64::MAX, HISTORY_LIMIT_DEFAULT),
        "unknown parameters are ignored"
    );
    let (head, _) = accepted(&request("HEAD /history/news HTTP/1.1", &[], b""), &config());
    assert!(head.head_only);
}

#[test]
fn history_refuses_bad_names_and_bad_parameters_with_the_rule() {
    assert_eq!(
        refused(&get("/history/"), &config()),
        AdminError::InvalidName
    );
    assert_eq!(
        refused(&get("/history/a%20b"), &config()),
        AdminError::InvalidName
    );
    for bad in [
        "since=-1",
        "since=",
        "since=1e3",
        "since=18446744073709551616",
        "since=+4",
        "limit=ten",
        "since=1&since=2",
    ] {
        let error = refused(&get(&format!("/history/news?{bad}")), &config());
        assert!(
            matches!(error, AdminError::InvalidQuery(_)),
            "{bad}: {error:?}"
        );
        assert_eq!(error.status(), 400);
        assert_eq!(error.reason(), "invalid_query");
    }
    let error = refused(&get("/history/news?since=x"), &config());
    assert!(response_text(&error).ends_with("since: a decimal offset"));
    let error = refused(&get("/history/news?limit=-2"), &config());
    assert!(response_text(&error).ends_with("limit: a decimal count"));
    let error = refused(&get("/history/news?limit=1&limit=1"), &config());
    assert!(response_text(&error).ends_with("a query parameter is repeated"));
}

#[test]
fn channels_take_a_prefix_and_a_limit() {
    let target = |t: &str| accepted(&get(t), &config()).0.target;
    let channels = |prefix: &str, limit| Target::Channels {
        prefix: prefix.to_owned(),
        limit,
    };
    assert_eq!(target("/channels"), channels("", CHANNELS_LIMIT_DEFAULT));
    assert_eq!(
        target("/channels?prefix=room.&limit=3"),
        channels("room.", 3)
    );
    assert_eq!(
        target("/channels?prefix="),
        channels("", CHANNELS_LIMIT_DEFAULT)
    );
    assert_eq!(
        target("/channels?limit=5000"),
        channels("", CHANNELS_LIMIT_MAX)
    );
    assert_eq!(
        target("/channels/user.42"),
        Target::Channel("user.42".to_owned())
    );
    let error = refused(&get("/channels?prefix=a/b"), &config());
    assert!(matches!(error, AdminError::InvalidQuery(_)), "{error:?}");
    let long = format!("/channels?prefix={}", "a".repeat(NAME_BYTES_MAX + 1));
    assert!(matches!(
        refused(&get(&long), &config()),
        AdminError::InvalidQuery(_)
    ));
    assert_eq!(
        refused(&get("/channels/"), &config()),
        AdminError::InvalidName
    );
    assert_eq!(refused(&get("/channelsx"), &config()), AdminError::NotFound);
}

#[test]
fn the_new_paths_follow_the_token_and_their_methods() {
    for path in ["/history/news", "/channels", "/channels/news", "/broadcast"] {
        let bare = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            refused(bare.as_bytes(), &config()),
            AdminError::Unauthorized,
            "{path}"
        );
    }
    let post = request("POST /channels HTTP/1.1", &["Content-Length: 0"], b"");
    assert_eq!(
        refused(&post, &config()),
        AdminError::MethodNotAllowed(ALLOW_GET_HEAD)
    );
    assert_eq!(
        refused(&get("/broadcast"), &config()),
        AdminError::MethodNotAllowed(ALLOW_POST)
    );
    let body = br#"{"channels":["a"],"data":"x"}"#;
    let length = format!("Content-Length: {}", body.len());
    let post = request("POST /broadcast HTTP/1.1", &[&length], body);
    let (parsed, consumed) = accepted(&post, &config());
    assert_eq!(parsed.target, Target::Broadcast);
    assert_eq!(&post[parsed.body.clone()], body);
    assert_eq!(consumed, post.len());
    let too_long = request("POST /broadcast HTTP/1.1", &["Content-Length: 65"], b"");
    assert_eq!(refused(&too_long, &config()), AdminError::BodyTooLarge);
    // Query parameters on the endpoints that take none are still ignored.
    let (parsed, _) = accepted(&get("/metrics?since=x"), &open_config());
    assert_eq!(parsed.target, Target::Metrics);
}

#[test]
fn the_publish_only_token_is_refused_403_outside_its_scope() {
    let cfg = AdminConfig {
        tokens: AdminTokens::new(Some(TOKEN.as_bytes().into()), Some((*b"pub-only").into()))
            .unwrap(),
        ..config()
    };
    let with = |line: &str| format!("{line}\r\nHost: a\r\nAuthorization: Bearer pub-only\r\n\r\n");
    for line in [
        "GET /metrics HTTP/1.1",
        "GET /history/news HTTP/1.1",
        "GET /channels HTTP/1.1",
    ] {
        assert_eq!(
            refused(with(line).as_bytes(), &cfg),
            AdminError::Forbidden,
            "{line}"
        );
    }
    let publish = "POST /publish/news HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer pub-only\r\n\
         Content-Length: 1\r\n\r\nx";
    assert!(matches!(
        accepted(publish.as_bytes(), &cfg).0.target,
        Target::Publish(_)
    ));
    // A wrong token is still 401, before routing.
    let wrong = "GET /nowhere HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\n\r\n";
    assert_eq!(refused(wrong.as_bytes(), &cfg), AdminError::Unauthorized);
    let response = response_text(&AdminError::Forbidden);
    assert!(
        response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{response}"
    );
}

#[test]
fn the_demo_files_need_no_token_and_vanish_with_no_demo() {
    let cfg = config();
    let bare = |line: &str| format!("{line}\r\nHost: a\r\n\r\n").into_bytes();
    let (page, _) = accepted(&bare("GET /demo HTTP/1.1"), &cfg);
    assert_eq!(page.target, Target::Demo(DemoAsset::Page));
    let (client, _) = accepted(&bare("HEAD /demo/ringpush.js?v=1 HTTP/1.1"), &cfg);
    assert_eq!(client.target, Target::Demo(DemoAsset::Client));
    assert!(client.head_only);
    assert_eq!(
        refused(&bare("POST /demo HTTP/1.1"), &cfg),
        AdminError::MethodNotAllowed("GET, HEAD")
    );
    // Everything else still needs the token, however close its path is to the demo's.
    assert_eq!(
        refused(&bare("GET /demo/x.js HTTP/1.1"), &cfg),
        AdminError::Unauthorized
    );
    assert_eq!(
        refused(&bare("GET /metrics HTTP/1.1"), &cfg),
        AdminError::Unauthorized
    );
    let off = AdminConfig {
        demo: Demo::Off,
        ..config()
    };
    assert_eq!(
        refused(&bare("GET /demo HTTP/1.1"), &off),
        AdminError::Unauthorized
    );
    assert_eq!(
        refused(&request("GET /demo HTTP/1.1", &[], b""), &off),
        AdminError::NotFound
    );
}
