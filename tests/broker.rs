//! Issue 12: nodes joined through Redis (`--broker`). Each test starts its own
//! `redis-server` on a free loopback port and several real nodes pointed at it.

mod util;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use util::json_client::{JsonClient, Publisher};
use util::redis_server::RedisServer;
use util::{admin, expect_no_more, next_text, Client, Msg, Node, WAIT};

/// Starts a node joined to `redis` with two shards and `extra` flags.
fn broker_node(redis: &RedisServer, extra: &[&str]) -> Node {
    let url = redis.url();
    Node::start(&[&["--broker", url.as_str(), "--shards", "2"], extra].concat())
}

/// A metric's value in the node's exposition (0 when absent).
fn metric(node: &Node, name: &str) -> u64 {
    let text = admin(node, "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Waits until `check` holds, or fails with `what`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never happened: {what}");
}

/// The offset of an admin publish answer.
fn offset_of(body: &str) -> (u64, u64) {
    let value: serde_json::Value = serde_json::from_str(body).expect("a JSON answer");
    let offset = value["offset"].as_u64().expect("offset");
    let subscribers = value["subscribers"].as_u64().expect("subscribers");
    assert_eq!(value["epoch"].as_str().map(str::len), Some(16), "{body}");
    (offset, subscribers)
}

#[test]
fn issue_12_three_nodes_deliver_every_publish_once_in_one_order() {
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (0..3).map(|_| broker_node(&redis, &[])).collect();
    let mut subscribers: Vec<Client> = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            subscribers.push(node.ws("/ws/news"));
        }
    }
    for node in &nodes {
        eventually("every node subscribed to news", || {
            metric(node, "ringpush_broker_subscriptions") == 1
        });
    }
    // Three publishers, one per node, all at once.
    const EACH: usize = 30;
    let admins: Vec<_> = nodes.iter().map(|n| n.admin).collect();
    let threads: Vec<_> = admins
        .into_iter()
        .enumerate()
        .map(|(n, admin_addr)| {
            std::thread::spawn(move || {
                let mut publisher = Publisher::connect_to(admin_addr);
                (0..EACH)
                    .map(|i| {
                        let text = format!("node{n}-{i}");
                        let (status, body) = publisher.publish("news", &text);
                        assert_eq!(status, 200, "{body}");
                        let (offset, local) = offset_of(&body);
                        (offset, local, text)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut published: Vec<(u64, u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("publisher thread"))
        .collect();
    published.sort();
    let offsets: Vec<u64> = published.iter().map(|p| p.0).collect();
    let expected_offsets: Vec<u64> = (1..=(3 * EACH) as u64).collect();
    assert_eq!(
        offsets, expected_offsets,
        "one offset per publish, none shared"
    );
    for (_, local, text) in &published {
        assert_eq!(*local, 2, "each node has two local subscribers ({text})");
    }
    let expected: Vec<&str> = published.iter().map(|p| p.2.as_str()).collect();
    for (i, client) in subscribers.iter_mut().enumerate() {
        let got: Vec<String> = (0..expected.len()).map(|_| next_text(client)).collect();
        assert_eq!(
            got, expected,
            "subscriber {i}: every message once, in offset order"
        );
        expect_no_more(client, Duration::from_millis(300));
    }
    // History is kept in Redis: the stream holds the messages under their offsets.
    let mut con = redis.connection();
    let length: u64 = redis::cmd("XLEN")
        .arg("ringpush:{news}:log")
        .query(&mut con)
        .expect("XLEN");
    assert_eq!(length, 0, "history off by default: nothing kept");
}

#[test]
fn issue_12_one_subscription_per_node_counted_across_shards() {
    let redis = RedisServer::start();
    let node = broker_node(&redis, &["--history-size", "10"]);
    let mut con = redis.connection();
    let numsub = |con: &mut redis::Connection| -> u64 {
        let answer: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("ringpush:{sports}")
            .query(con)
            .expect("PUBSUB NUMSUB");
        answer.1
    };
    assert_eq!(numsub(&mut con), 0, "no subscriber, no subscription");
    // Eight connections: over two shards, one broker subscription for all of them.
    let mut clients: Vec<Client> = (0..8).map(|_| node.ws("/ws/sports")).collect();
    eventually("the node subscribed", || numsub(&mut con) == 1);
    assert_eq!(metric(&node, "ringpush_broker_subscriptions"), 1);
    let (status, body) = Publisher::connect(&node).publish("sports", "goal");
    assert_eq!(status, 200, "{body}");
    assert_eq!(offset_of(&body), (1, 8));
    for client in &mut clients {
        assert_eq!(next_text(client), "goal");
    }
    let kept: u64 = redis::cmd("XLEN")
        .arg("ringpush:{sports}:log")
        .query(&mut con)
        .expect("XLEN");
    assert_eq!(kept, 1, "--history-size keeps the message in Redis");
    // All but one leave: still subscribed; the last one leaves: unsubscribed.
    for mut client in clients.drain(1..) {
        client.close(1000, "");
        client.expect_close(1000);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(numsub(&mut con), 1, "one local subscriber left");
    let mut last = clients.pop().expect("one left");
    last.close(1000, "");
    last.expect_close(1000);
    eventually("the node unsubscribed", || numsub(&mut con) == 0);
    assert_eq!(metric(&node, "ringpush_broker_subscriptions"), 0);
    // A publish with no local subscriber is answered at once with 0.
    let (status, body) = Publisher::connect(&node).publish("sports", "nobody");
    assert_eq!(status, 200, "{body}");
    assert_eq!(offset_of(&body), (2, 0));
    // The admin history view reads Redis' stream (it answered 501 before it did).
    let history = admin(&node, "GET", "/history/sports", &[], b"");
    assert_eq!(history.status, 200, "{}", history.text());
    let value: serde_json::Value = serde_json::from_str(&history.text()).expect("JSON");
    let texts: Vec<&str> = value["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["data"].as_str().expect("text data"))
        .collect();
    assert_eq!(texts, ["goal", "nobody"], "{value}");
    assert_eq!(value["offset"], 2, "{value}");
}

#[test]
fn issue_12_redis_killed_and_restarted_mid_stream() {
    let mut redis = RedisServer::start();
    let nodes: Vec<Node> = (0..2)
        .map(|_| broker_node(&redis, &["--broker-timeout", "1s"]))
        .collect();
    let mut subscribers: Vec<Client> = nodes.iter().map(|n| n.ws("/ws/live")).collect();
    for node in &nodes {
        eventually("subscribed", || {
            metric(node, "ringpush_broker_subscriptions") == 1
        });
        let health = admin(node, "GET", "/healthz", &[], b"");
        assert_eq!(
            (health.status, health.text()),
            (200, "ok broker=up\n".into())
        );
    }
    let mut publisher = Publisher::connect(&nodes[0]);
    assert_eq!(publisher.publish("live", "before").0, 200);
    for client in &mut subscribers {
        assert_eq!(next_text(client), "before");
    }

    redis.kill();
    // Publishes fail fast, within --broker-timeout, on the same admin connection.
    for attempt in 0..3 {
        let started = Instant::now();
        let (status, body) = publisher.publish("live", &format!("lost-{attempt}"));
        let took = started.elapsed();
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("broker"), "{body}");
        // Not a timing target: only "no hang" (the timeout plus the admin tick).
        assert!(took < Duration::from_secs(3), "publish hung {took:?}");
    }
    for node in &nodes {
        eventually("healthz says the broker is down", || {
            let health = admin(node, "GET", "/healthz", &[], b"");
            health.status == 503 && health.text() == "broker=down\n"
        });
    }
    // Local connections stay open: they still answer a ping.
    for client in &mut subscribers {
        client.send(ringpush::ws::OpCode::Ping, b"still-here");
        assert_eq!(client.recv(), Msg::Pong(b"still-here".to_vec()));
    }

    redis.restart();
    for node in &nodes {
        eventually("the node reconnected and subscribed again", || {
            let health = admin(node, "GET", "/healthz", &[], b"");
            health.status == 200 && metric(node, "ringpush_broker_subscriptions") == 1
        });
    }
    let (status, body) = Publisher::connect(&nodes[1]).publish("live", "after");
    assert_eq!(status, 200, "{body}");
    // Redis lost everything: a new epoch, offsets from 1 again.
    assert_eq!(offset_of(&body).0, 1);
    for client in &mut subscribers {
        assert_eq!(next_text(client), "after", "delivery resumed on every node");
        expect_no_more(client, Duration::from_millis(200));
    }
    let totals: HashMap<&str, u64> = [
        "ringpush_broker_reconnects_total",
        "ringpush_broker_publish_failures_total",
    ]
    .into_iter()
    .map(|name| (name, metric(&nodes[0], name)))
    .collect();
    assert!(
        totals["ringpush_broker_reconnects_total"] >= 2,
        "{totals:?}"
    );
    assert!(
        totals["ringpush_broker_publish_failures_total"] >= 3,
        "{totals:?}"
    );
}

#[test]
fn issue_12_resume_on_another_node_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let a = broker_node(&redis, &["--history-size", "100"]);
    let b = broker_node(&redis, &["--history-size", "100", "--client-publish"]);
    // B already delivers the channel live (its watermark is known) when the client comes.
    let mut watcher = b.ws("/ws/feed");
    let mut client = JsonClient::connect(&a, "").expect("JSON upgrade on A");
    let first = client.subscribe(1, "feed", None);
    assert!(!first.recovered, "a first subscription is not a resume");
    assert_eq!(first.offset, 0, "a new channel starts at offset 0");
    eventually("B subscribed", || {
        metric(&b, "ringpush_broker_subscriptions") == 1
    });
    let mut publisher_a = Publisher::connect(&a);
    let mut publisher_b = Publisher::connect(&b);
    for i in 1..=5u64 {
        let (status, body) = publisher_b.publish("feed", &format!("m{i}"));
        assert_eq!(status, 200, "{body}");
        let (_, epoch, offset) = util::json_client::published(&body);
        assert_eq!(
            (epoch.as_str(), offset),
            (first.epoch.as_str(), i),
            "Redis' epoch"
        );
    }
    for i in 1..=3u64 {
        let got = client.expect_message();
        assert_eq!((got.offset, got.data), (i, format!("m{i}").into_bytes()));
    }
    // The client goes away having seen offset 3; more is published meanwhile.
    drop(client);
    for i in 6..=9u64 {
        let (status, body) = publisher_a.publish("feed", &format!("m{i}"));
        assert_eq!(status, 200, "{body}");
    }
    for i in 1..=9u64 {
        assert_eq!(next_text(&mut watcher), format!("m{i}"));
    }
    // It comes back on B, resuming after 3.
    let mut back = JsonClient::connect(&b, "").expect("JSON upgrade on B");
    let resumed = back.subscribe(7, "feed", Some((&first.epoch, 3)));
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(resumed.epoch, first.epoch);
    assert_eq!(resumed.offset, 9, "live follows offset 9");
    for i in 4..=9u64 {
        let got = back.expect_message();
        assert_eq!((got.offset, got.data), (i, format!("m{i}").into_bytes()));
    }
    let (status, body) = publisher_a.publish("feed", "m10");
    assert_eq!(status, 200, "{body}");
    let got = back.expect_message();
    assert_eq!((got.offset, got.data), (10, b"m10".to_vec()));
    back.expect_silence(Duration::from_millis(300));
    // A JSON publish goes through Redis too and is answered with its offset.
    back.send(&serde_json::json!({"op":"publish","id":8,"channel":"feed","data":"m11"}));
    let mut answered = false;
    let mut delivered = false;
    while !(answered && delivered) {
        let value = back.recv();
        if value["op"] == "published" {
            assert_eq!(
                (value["id"].as_u64(), value["offset"].as_u64()),
                (Some(8), Some(11))
            );
            answered = true;
        } else {
            let got = util::json_client::delivery(&value).unwrap_or_else(|| panic!("{value}"));
            assert_eq!((got.offset, got.data), (11, b"m11".to_vec()));
            delivered = true;
        }
    }
    assert_eq!(next_text(&mut watcher), "m10");
    assert_eq!(next_text(&mut watcher), "m11");
    // A resume from an offset Redis no longer keeps, or another epoch, is not recovered.
    let mut stranger = JsonClient::connect(&a, "").expect("JSON upgrade on A");
    let lost = stranger.subscribe(1, "feed", Some(("0123456789abcdef", 3)));
    assert!(!lost.recovered);
    assert_eq!((lost.epoch, lost.offset), (first.epoch.clone(), 11));
    stranger.expect_silence(Duration::from_millis(200));
}

#[test]
fn issue_12_broker_password_from_env_or_file() {
    let redis = RedisServer::start_with_password(Some("s3cret"));
    let url = redis.url();
    let with_env = Node::start_with_env(
        &[
            "--broker",
            url.as_str(),
            "--broker-password-env",
            "RP_BROKER_PASSWORD",
        ],
        &[("RP_BROKER_PASSWORD", "s3cret")],
    );
    let mut subscriber = with_env.ws("/ws/vault");
    eventually("authenticated and subscribed", || {
        metric(&with_env, "ringpush_broker_subscriptions") == 1
    });
    let (status, body) = Publisher::connect(&with_env).publish("vault", "open");
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_text(&mut subscriber), "open");
    // A wrong password: the node runs, says the broker is down and refuses publishes.
    let dir = std::env::temp_dir().join(format!("ringpush-broker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("password");
    std::fs::write(&file, "wrong\n").unwrap();
    let file = file.to_str().unwrap().to_string();
    let wrong = Node::start(&["--broker", url.as_str(), "--broker-password-file", &file]);
    let health = admin(&wrong, "GET", "/healthz", &[], b"");
    assert_eq!(
        (health.status, health.text()),
        (503, "broker=down\n".into())
    );
    let (status, body) = Publisher::connect(&wrong).publish("vault", "nope");
    assert_eq!(status, 503, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn issue_12_a_frozen_redis_gets_503_by_the_timeout_and_no_hang() {
    let redis = RedisServer::start();
    let node = broker_node(&redis, &["--broker-timeout", "500ms"]);
    let mut subscriber = node.ws("/ws/ice");
    eventually("subscribed", || {
        metric(&node, "ringpush_broker_subscriptions") == 1
    });
    let mut publisher = Publisher::connect(&node);
    assert_eq!(publisher.publish("ice", "one").0, 200);
    assert_eq!(next_text(&mut subscriber), "one");
    // SIGSTOP: the sockets stay open and nothing answers, the worst case for a client.
    redis.signal("STOP");
    let started = Instant::now();
    let (status, body) = publisher.publish("ice", "frozen");
    let took = started.elapsed();
    redis.signal("CONT");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("broker timeout"), "{body}");
    // Not a timing target: only "no hang" (500 ms plus the admin tick and slack).
    assert!(took < Duration::from_secs(3), "publish hung {took:?}");
    // Thawed: the next publishes go through and reach the subscriber.
    eventually("publishes go through again", || {
        publisher.publish("ice", "thawed").0 == 200
    });
    // The frozen publish may or may not have run in Redis once it thawed (its answer came
    // too late): the subscriber sees it at most once, before "thawed".
    let mut frozen = 0;
    loop {
        match next_text(&mut subscriber).as_str() {
            "frozen" => frozen += 1,
            "thawed" => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(frozen <= 1, "a publish delivered {frozen} times");
}

#[test]
fn issue_12_broadcast_goes_through_redis_to_every_node() {
    let mut redis = RedisServer::start();
    let a = broker_node(&redis, &[]);
    let b = broker_node(&redis, &[]);
    let mut on_a = a.ws("/ws/left");
    let mut on_b = b.ws("/ws/right");
    for (node, n) in [(&a, 1), (&b, 1)] {
        eventually("subscribed", || {
            metric(node, "ringpush_broker_subscriptions") == n
        });
    }
    let body = serde_json::json!({"channels":["left","right"],"data":"both"}).to_string();
    let answer = admin(&a, "POST", "/broadcast", &[], body.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.text());
    let value: serde_json::Value = serde_json::from_str(&answer.text()).expect("JSON");
    // Local counts: A holds "left" only.
    assert_eq!(
        value,
        serde_json::json!({"channels":[
            {"channel":"left","subscribers":1},
            {"channel":"right","subscribers":0}],
            "subscribers":1})
    );
    assert_eq!(next_text(&mut on_a), "both");
    assert_eq!(next_text(&mut on_b), "both");
    // Redis down: every channel is reported refused, nothing hangs.
    redis.kill();
    let answer = admin(&a, "POST", "/broadcast", &[], body.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.text());
    let value: serde_json::Value = serde_json::from_str(&answer.text()).expect("JSON");
    assert_eq!(value["channels"][0]["refused"], true, "{value}");
    assert_eq!(value["channels"][1]["refused"], true, "{value}");
}

#[test]
fn issue_12_a_node_killed_leaves_the_others_delivering() {
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (0..3).map(|_| broker_node(&redis, &[])).collect();
    let mut subscribers: Vec<Client> = nodes.iter().map(|n| n.ws("/ws/news")).collect();
    for node in &nodes {
        eventually("subscribed", || {
            metric(node, "ringpush_broker_subscriptions") == 1
        });
    }
    nodes[1].signal(9);
    subscribers[1].expect_eof();
    for (i, via) in [0, 2].into_iter().enumerate() {
        let text = format!("after-kill-{i}");
        let (status, body) = Publisher::connect(&nodes[via]).publish("news", &text);
        assert_eq!(status, 200, "{body}");
        for at in [0, 2] {
            assert_eq!(next_text(&mut subscribers[at]), text, "node {at}");
        }
    }
    for at in [0, 2] {
        expect_no_more(&mut subscribers[at], Duration::from_millis(200));
    }
}

#[test]
fn issue_12_a_subscription_made_while_redis_is_down_is_answered_once_it_is_back() {
    let mut redis = RedisServer::start();
    let node = broker_node(&redis, &["--history-size", "10"]);
    eventually("connected", || {
        admin(&node, "GET", "/healthz", &[], b"").status == 200
    });
    redis.kill();
    eventually("the node saw Redis go", || {
        admin(&node, "GET", "/healthz", &[], b"").status == 503
    });
    let mut client = JsonClient::connect(&node, "").expect("JSON upgrade");
    client.send(
        &serde_json::json!({"op":"subscribe","id":4,"channel":"late",
        "since":{"epoch":"00000000000000aa","offset":2}}),
    );
    // No position without Redis: the answer waits (the connection stays open).
    client.expect_silence(Duration::from_millis(300));
    redis.restart();
    let answer = client.recv_op("subscribed");
    assert_eq!(answer["id"], 4, "{answer}");
    let got = util::json_client::subscribed(&answer);
    assert!(!got.recovered, "Redis lost everything: not recovered");
    assert_eq!(got.offset, 0, "a new epoch starts at 0");
    let (status, body) = Publisher::connect(&node).publish("late", "first");
    assert_eq!(status, 200, "{body}");
    let message = client.expect_message();
    assert_eq!((message.offset, message.data), (1, b"first".to_vec()));
}
