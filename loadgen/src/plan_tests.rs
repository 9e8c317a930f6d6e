//! The plan's checks: URLs, sources, backoff, shares, and JSON mode's targets.

use clap::Parser as _;

use super::*;
use crate::cli::{Cli, Publisher};
use crate::target::RESUME_TARGET;

#[test]
fn urls() {
    assert_eq!(
        parse_ws_url("ws://127.0.0.1:8080/ws/news"),
        Ok(("127.0.0.1:8080".into(), "/ws/news".into()))
    );
    assert_eq!(
        parse_ws_url("ws://localhost"),
        Ok(("localhost:80".into(), "/".into()))
    );
    assert_eq!(
        parse_ws_url("ws://[::1]:9000/echo?x=1"),
        Ok(("[::1]:9000".into(), "/echo?x=1".into()))
    );
    assert!(parse_ws_url("wss://x/").is_err());
    assert!(parse_ws_url("http://x/").is_err());
}

#[test]
fn source_ranges() {
    let mut out = Vec::new();
    parse_source_range("127.0.1.1-127.0.1.3", &mut out).expect("range");
    parse_source_range("127.0.2.254-127.0.3.1", &mut out).expect("range");
    parse_source_range("10.0.0.7", &mut out).expect("single");
    let text: Vec<String> = out.iter().map(|ip| ip.to_string()).collect();
    assert_eq!(
        text,
        [
            "127.0.1.1",
            "127.0.1.2",
            "127.0.1.3",
            "127.0.2.254",
            "127.0.3.1",
            "10.0.0.7"
        ]
    );
    assert!(parse_source_range("127.0.1.5-127.0.1.1", &mut out).is_err());
    assert!(parse_source_range("nonsense", &mut out).is_err());
}

#[test]
fn backoff_doubles_to_its_cap() {
    let b = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    assert_eq!(b.ceiling(1), Duration::from_millis(100));
    assert_eq!(b.ceiling(2), Duration::from_millis(200));
    assert_eq!(b.ceiling(4), Duration::from_millis(800));
    assert_eq!(b.ceiling(5), Duration::from_secs(1));
    assert_eq!(b.ceiling(200), Duration::from_secs(1));
}

#[test]
fn shares_cover_every_connection_once() {
    let cli = Cli::parse_from(["x", "connect", "-n", "10", "--workers", "3"]);
    let plan = Plan::from_cli(cli).expect("plan");
    let shares: Vec<usize> = (0..3).map(|w| plan.share(w)).collect();
    assert_eq!(shares, [4, 3, 3]);
}

#[test]
fn json_targets_name_the_scenario_channel_first() {
    let parse = |args: &[&str]| Plan::from_cli(Cli::parse_from(args));
    let plan = parse(&[
        "x",
        "connect",
        "--format",
        "json",
        "--channels-per-conn",
        "3",
        "--channel",
        "room",
    ])
    .expect("plan");
    let shared = "/ws?format=json&channel=room&channel=room.2&channel=room.3";
    assert_eq!(plan.target(0, false), shared);
    assert_eq!(plan.target(41, false), shared);
    assert_eq!(plan.target(41, true), RESUME_TARGET);
    assert_eq!(plan.path, shared);
    let plan = parse(&[
        "x",
        "broadcast",
        "--format",
        "json",
        "--channels-per-conn",
        "2",
        "--fillers",
        "distinct",
    ])
    .expect("plan");
    assert_eq!(
        plan.target(7, false),
        "/ws?format=json&channel=bench&channel=bench.7.2"
    );
    let plan = parse(&["x", "resume", "--messages", "5"]).expect("plan");
    assert!(matches!(plan.mode, Mode::Json(_)));
    assert_eq!(plan.target(3, false), "/ws?format=json&channel=bench");
    // Raw mode is unchanged: the connect default path, or the channel's raw route.
    assert_eq!(
        parse(&["x", "connect"]).expect("plan").target(0, false),
        "/echo"
    );
    let plan = parse(&["x", "connect", "--channel", "c"]).expect("plan");
    assert_eq!(plan.target(0, false), "/ws/c");
    for bad in [
        &["x", "connect", "--channels-per-conn", "2"][..],
        &["x", "echo", "--format", "json"],
        &["x", "resume", "--format", "raw"],
        &["x", "connect", "--format", "json", "--path", "/ws/a"],
        &[
            "x",
            "connect",
            "--format",
            "json",
            "--channels-per-conn",
            "0",
        ],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_token_file_becomes_the_authorization_of_every_upgrade() {
    let dir = std::env::temp_dir().join(format!("loadgen-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    std::fs::write(&good, "aGVhZA.Ym9keQ.c2ln\n").unwrap();
    std::fs::write(&bad, "aGVhZA.Ym9keQ.c2ln\nsecond line\n").unwrap();
    let parse = |file: &std::path::Path| {
        let file = file.to_str().unwrap();
        Plan::from_cli(Cli::parse_from(["x", "connect", "--token-file", file]))
    };
    let plan = parse(&good).expect("plan");
    assert_eq!(
        plan.authorization.as_deref(),
        Some("Bearer aGVhZA.Ym9keQ.c2ln")
    );
    assert_eq!(
        plan.upgrade_headers(),
        [("Authorization", "Bearer aGVhZA.Ym9keQ.c2ln")]
    );
    let mut request = Vec::new();
    ringpush::http::client::write_client_request_with(
        &mut request,
        "h",
        "/echo",
        "k",
        &[],
        &plan.upgrade_headers(),
    );
    let request = String::from_utf8(request).unwrap();
    assert!(
        request.ends_with("Authorization: Bearer aGVhZA.Ym9keQ.c2ln\r\n\r\n"),
        "{request}"
    );
    assert!(parse(&bad).unwrap_err().contains("not one compact JWT"));
    assert!(parse(&dir.join("missing")).is_err());
    let plan = Plan::from_cli(Cli::parse_from(["x", "connect"])).expect("plan");
    assert!(plan.upgrade_headers().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_subscribe_only_broadcast_needs_the_count_published_elsewhere() {
    let parse = |args: &[&str]| Plan::from_cli(Cli::parse_from(args));
    let error = parse(&["x", "broadcast", "--publisher", "none"]).expect_err("no --count");
    assert!(error.contains("--count"), "{error}");
    let plan = parse(&["x", "broadcast", "--publisher", "none", "--count", "3"]).expect("plan");
    match plan.scenario {
        Scenario::Broadcast(b) => {
            assert_eq!(b.publisher, Publisher::None);
            assert_eq!(b.count, Some(3));
        }
        other => panic!("not a broadcast plan: {other:?}"),
    }
}
