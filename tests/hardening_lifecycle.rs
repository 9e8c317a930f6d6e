//! Issue 8, node life cycle and cross-shard messages: shutdown that always ends, shard
//! start-up failures, drain refusals, back-pressure on publishes, a second node on the same
//! ports, and duration flags out of range. Each test runs the real binary.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringpush::ws::OpCode;
use util::*;

/// Waits up to `within` for `child` to exit; kills it and returns None if it does not.
fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn read_all(stream: Option<impl Read>) -> String {
    let mut out = String::new();
    if let Some(mut s) = stream {
        let _ = s.read_to_string(&mut out);
    }
    out
}

/// Waits until `f` holds (shards publish their counters every 50 ms tick).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Signals SIGTERM and waits until the admin shard reports the drain (healthz 503).
fn start_drain(node: &Node) -> Instant {
    let signalled = Instant::now();
    node.signal(15);
    eventually("healthz says draining", || {
        admin(node, "GET", "/healthz", &[], b"").status == 503
    });
    signalled
}

/// A subscriber that will never answer the node's close: its shard drains to the timeout.
fn stubborn_subscriber(node: &Node, channel: &str) -> Client {
    let c = node.ws(&format!("/ws/{channel}"));
    eventually("the subscription is counted", || {
        metric_sum(node, "ringpush_subscriptions") >= 1
    });
    c
}

#[test]
fn issue_8_item_13_a_huge_duration_is_a_usage_error_not_an_abort() {
    for flag in ["--idle-timeout", "--drain-timeout", "--handshake-timeout"] {
        let mut child = spawn_node(
            &[
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                flag,
                "99999999999999999999",
            ],
            &[],
        );
        let status = wait_child(&mut child, WAIT).expect("the node exits at once");
        let err = read_all(child.stderr.take());
        assert_eq!(status.code(), Some(2), "{flag}: {status:?} {err}");
        assert!(err.contains(flag) && err.contains("too long"), "{err}");
    }
}

#[test]
fn issue_8_item_11_a_second_node_on_the_same_ports_is_refused_unless_asked() {
    let a = Node::start(&["--shards", "1"]);
    let listen = a.addr.to_string();
    let admin_addr = a.admin.to_string();
    // The client port taken, the admin port free: the error names the client address.
    let mut b = spawn_node(
        &[
            "--shards",
            "1",
            "--listen",
            &listen,
            "--admin",
            "127.0.0.1:0",
        ],
        &[],
    );
    let status = wait_child(&mut b, WAIT).expect("node B must exit, not share the port");
    let err = read_all(b.stderr.take());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&listen) && err.contains("already"), "{err}");
    // The admin port taken: named as well.
    let mut b = spawn_node(
        &[
            "--shards",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            &admin_addr,
        ],
        &[],
    );
    let status = wait_child(&mut b, WAIT).expect("node B must exit, not share the port");
    let err = read_all(b.stderr.take());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&admin_addr) && err.contains("already"),
        "{err}"
    );
    // Asked for explicitly, B joins both ports.
    let mut b = spawn_node(
        &[
            "--shards",
            "1",
            "--listen",
            &listen,
            "--admin",
            &admin_addr,
            "--reuse-port-with-others",
        ],
        &[],
    );
    let (tx, rx) = mpsc::channel();
    let out = b.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("node B prints its listening line");
    assert!(line.contains("listening on"), "{line}");
    let _ = b.kill();
    let _ = b.wait();
}

#[test]
fn issue_8_item_3_a_shard_that_fails_to_start_is_named_and_the_node_exits() {
    let started = Instant::now();
    let mut child = spawn_node(
        &[
            "--shards",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        &[("RINGPUSH_TEST_FAIL_SHARD", "1")],
    );
    let status = wait_child(&mut child, Duration::from_secs(5))
        .expect("the node hung after a shard failed to start");
    let err = read_all(child.stderr.take());
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("shard 1") && err.contains("failed"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn issue_8_item_2_a_publish_during_the_drain_is_answered_503_and_the_node_exits() {
    let mut node = Node::start(&[
        "--shards",
        "2",
        "--drain-timeout",
        "2s",
        "--close-timeout",
        "30s",
    ]);
    // One shard holds a subscriber that never answers close (it drains for the full
    // timeout); the other has nothing and finishes at once.
    let _sub = stubborn_subscriber(&node, "news");
    let signalled = start_drain(&node);
    let resp = admin(&node, "POST", "/publish/news", &[], b"late");
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.head.contains("Connection: close"), "{}", resp.head);
    let resp = admin(&node, "POST", "/send/s1", &[], b"late");
    assert_eq!(resp.status, 503, "{}", resp.text());
    let (code, out) = node.wait_exit(Duration::from_secs(8));
    assert_eq!(code, 0, "{out}");
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "exit took {took:?} with a 2 s drain"
    );
}

#[test]
fn issue_8_item_2_a_second_signal_exits_at_once() {
    let mut node = Node::start(&[
        "--shards",
        "2",
        "--drain-timeout",
        "60s",
        "--close-timeout",
        "60s",
    ]);
    let _sub = stubborn_subscriber(&node, "news");
    start_drain(&node);
    let again = Instant::now();
    node.signal(15);
    let (code, out) = node.wait_exit(Duration::from_secs(5));
    assert!(
        again.elapsed() < Duration::from_secs(3),
        "{:?}",
        again.elapsed()
    );
    assert_eq!(code, 128 + 15, "{out}");
    assert!(out.contains("signal=15 again"), "{out}");
    assert!(out.contains("final "), "{out}");
}

#[test]
fn issue_8_item_2_a_publish_after_a_client_shard_stopped_is_answered() {
    // The test hook stops shard 1 on its first tick, as a ring error would.
    let node = Node::start_with_env(&["--shards", "2"], &[("RINGPUSH_TEST_FAIL_SHARD", "1:run")]);
    node.expect_log("shard=1 event=shard_stopped");
    // Logged by the admin shard once shard 1's thread is gone (its listener closed).
    node.expect_log("event=shard_gone shard=1");
    let mut sub = node.ws("/ws/news");
    eventually("the subscription is counted", || {
        metric_sum(&node, "ringpush_subscriptions") >= 1
    });
    let started = Instant::now();
    let resp = admin(&node, "POST", "/publish/news", &[], b"hi");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.text().contains("\"subscribers\":1"), "{}", resp.text());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(sub.recv(), Msg::Binary(b"hi".to_vec()));
}

#[test]
fn issue_8_item_4_a_connection_during_the_drain_gets_the_shutdown_503() {
    let mut node = Node::start(&[
        "--shards",
        "1",
        "--drain-timeout",
        "3s",
        "--close-timeout",
        "30s",
    ]);
    let mut sub = stubborn_subscriber(&node, "news");
    start_drain(&node);
    // The client shard drains too once its 1001 arrives (healthz is the admin shard's view).
    match sub.recv() {
        Msg::Close(code, _) => assert_eq!(code, Some(1001)),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let resp = http_raw(node.addr, &upgrade_request("/ws/news", ""));
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("Connection: close"), "{resp}");
    assert!(resp.contains("shutting down"), "{resp}");
    eventually("the refusal is counted as shutting_down", || {
        metric(
            &node,
            "ringpush_connections_refused_total{reason=\"shutting_down\"}",
        ) == 1
    });
    assert_eq!(
        metric(
            &node,
            "ringpush_connections_refused_total{reason=\"at_capacity\"}"
        ),
        0
    );
    node.expect_log("reason=shutting_down");
    let (code, out) = node.wait_exit(Duration::from_secs(10));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("refused_by=shutting_down:1"), "{out}");
}

#[test]
fn issue_8_item_10_a_client_publishing_past_its_rate_is_closed_1008() {
    let node = Node::start(&[
        "--shards",
        "1",
        "--client-publish",
        "--client-publish-rate",
        "5",
    ]);
    let mut c = node.ws("/ws/chat");
    let mut burst = Vec::new();
    for i in 0..30 {
        burst.extend(ringpush::ws::frame::encode_masked(
            OpCode::Text,
            format!("m{i}").as_bytes(),
            [1, 2, 3, 4],
        ));
    }
    c.send_raw(&burst);
    let mut echoed = 0;
    loop {
        match c.recv() {
            Msg::Text(_) => echoed += 1,
            Msg::Close(code, reason) => {
                assert_eq!(code, Some(1008));
                assert_eq!(reason, "publish rate");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(echoed <= 10, "{echoed} publishes passed a rate of 5/s");
    eventually("the close is counted", || {
        metric_sum(&node, "ringpush_client_publish_rate_closes_total") == 1
    });
    node.expect_log("event=client_publish_rate");
}

#[test]
fn issue_8_item_10_a_full_shard_inbox_is_answered() {
    let node = Node::start(&[
        "--shards",
        "2",
        "--client-publish",
        "--max-shard-inbox",
        "2",
    ]);
    // The admin publisher: 40 pipelined publishes in one write reach each client shard's
    // inbox before that shard runs; past 2 waiting messages the answer is 503.
    let mut req = Vec::new();
    for i in 0..40 {
        let body = format!("p{i}");
        req.extend(
            format!(
                "POST /publish/news HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        );
    }
    req.extend(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(node.admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&req).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let ok = raw.matches("HTTP/1.1 200").count();
    let full = raw.matches("HTTP/1.1 503").count();
    assert_eq!(ok + full, 41, "{raw}");
    assert!(full > 0, "no publish was refused: {raw}");
    assert!(raw.contains("inbox full"), "{raw}");
    // The client publisher: a burst in one segment fills the other shard's inbox.
    let mut c = node.ws("/ws/chat");
    let mut burst = Vec::new();
    for i in 0..200 {
        burst.extend(ringpush::ws::frame::encode_masked(
            OpCode::Text,
            format!("m{i}").as_bytes(),
            [1, 2, 3, 4],
        ));
    }
    c.send_raw(&burst);
    loop {
        match c.recv() {
            Msg::Text(_) => {}
            Msg::Close(code, reason) => {
                assert_eq!(code, Some(1008));
                assert_eq!(reason, "publish queue full");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    eventually("the refusals are counted", || {
        metric_sum(&node, "ringpush_shard_inbox_full_total") > full as u64
    });
}
