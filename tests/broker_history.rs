//! Issue 12: the admin API's history views under `--broker`. `GET /history/<channel>` and
//! `GET /channels/<name>` read the channel's stream and position from Redis, so any node
//! answers for publishes made through any other, and a Redis that is down or frozen gets
//! a 503 within `--broker-timeout`, never a hang.

mod util;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::json_client::{JsonClient, Publisher};
use util::redis_server::RedisServer;
use util::{admin, Node};

fn broker_node(redis: &RedisServer, extra: &[&str]) -> Node {
    let url = redis.url();
    Node::start(&[&["--broker", url.as_str(), "--shards", "2"], extra].concat())
}

fn get_json(node: &Node, path: &str) -> Value {
    let answer = admin(node, "GET", path, &[], b"");
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    serde_json::from_str(&answer.text()).expect("a JSON answer")
}

#[test]
fn issue_12_history_through_another_node_reads_redis() {
    let redis = RedisServer::start();
    let a = broker_node(&redis, &["--history-size", "100"]);
    let b = broker_node(&redis, &["--history-size", "100"]);
    let mut publisher = Publisher::connect(&a);
    let mut epoch = String::new();
    for i in 1..=5 {
        let (status, body) = publisher.publish("news", &format!("m{i}"));
        assert_eq!(status, 200, "{body}");
        let value: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value["offset"], i, "{body}");
        epoch = value["epoch"].as_str().expect("epoch").to_string();
    }
    let message = |i: u64| json!({"channel":"news","offset":i,"data":format!("m{i}")});
    // The same shape as without a broker: a page, cut by `limit`, `truncated` for more.
    assert_eq!(
        get_json(&b, "/history/news?since=2&limit=2"),
        json!({"channel":"news","epoch":epoch,"offset":5,"oldest_offset":1,
            "messages":[message(3), message(4)],"truncated":true})
    );
    assert_eq!(
        get_json(&b, "/history/news"),
        json!({"channel":"news","epoch":epoch,"offset":5,"oldest_offset":1,
            "messages":(1..=5).map(message).collect::<Vec<_>>(),"truncated":false})
    );
    assert_eq!(
        get_json(&b, "/history/news?since=5"),
        json!({"channel":"news","epoch":epoch,"offset":5,"oldest_offset":1,
            "messages":[],"truncated":false})
    );
    // `limit=0` still says whether messages follow `since`, as the node's own store does.
    assert_eq!(
        get_json(&b, "/history/news?since=4&limit=0"),
        json!({"channel":"news","epoch":epoch,"offset":5,"oldest_offset":1,
            "messages":[],"truncated":true})
    );
    let none = admin(&b, "GET", "/history/nothing", &[], b"");
    assert_eq!(none.status, 404, "{}", none.text());
    assert!(none.text().starts_with("no history"), "{}", none.text());
    // `/channels/<name>` takes its position from Redis too (node B never saw a message).
    assert_eq!(
        get_json(&b, "/channels/news"),
        json!({"channel":"news","subscribers":0,"epoch":epoch,"offset":5,
            "history_entries":5,"history_oldest_offset":1})
    );
    assert_eq!(
        get_json(&b, "/channels/nothing"),
        json!({"channel":"nothing","subscribers":0})
    );
    // A HEAD gets the status and no body.
    let head = admin(&b, "HEAD", "/history/news", &[], b"");
    assert_eq!((head.status, head.body.len()), (200, 0));
}

/// Reads `path` and checks it is a broker 503 answered well within the timeout.
fn expect_503_in_time(node: &Node, path: &str) -> String {
    let started = Instant::now();
    let answer = admin(node, "GET", path, &[], b"");
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{path}: {}", answer.text());
    // Not a timing target: only "no hang" (500 ms plus the admin tick and slack).
    assert!(took < Duration::from_secs(3), "{path} hung {took:?}");
    answer.text()
}

#[test]
fn issue_12_history_with_redis_frozen_or_down_is_503_in_time() {
    let mut redis = RedisServer::start();
    let node = broker_node(
        &redis,
        &["--history-size", "10", "--broker-timeout", "500ms"],
    );
    let (status, body) = Publisher::connect(&node).publish("ice", "one");
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_json(&node, "/history/ice")["offset"], 1);
    // SIGSTOP: the connection stays open and nothing answers.
    redis.signal("STOP");
    let frozen = expect_503_in_time(&node, "/history/ice");
    let frozen_channel = expect_503_in_time(&node, "/channels/ice");
    redis.signal("CONT");
    assert!(frozen.starts_with("broker"), "{frozen}");
    assert!(frozen_channel.starts_with("broker"), "{frozen_channel}");
    redis.kill();
    let down = expect_503_in_time(&node, "/history/ice");
    assert!(down.starts_with("broker"), "{down}");
    // Back (with nothing kept: this Redis keeps no data): answered from Redis again.
    redis.restart();
    let deadline = Instant::now() + util::WAIT;
    loop {
        let answer = admin(&node, "GET", "/history/ice", &[], b"");
        if answer.status == 404 {
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert!(Instant::now() < deadline, "history never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue_12_a_json_subscribe_while_redis_is_down_is_refused_in_time_and_retried() {
    let mut redis = RedisServer::start();
    let node = broker_node(
        &redis,
        &["--history-size", "10", "--broker-timeout", "500ms"],
    );
    let healthz = |node: &Node| admin(node, "GET", "/healthz", &[], b"").status;
    let deadline = Instant::now() + util::WAIT;
    while healthz(&node) != 200 {
        assert!(Instant::now() < deadline, "never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.kill();
    while healthz(&node) != 503 {
        assert!(Instant::now() < deadline, "the node never saw Redis go");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut client = JsonClient::connect(&node, "").expect("JSON upgrade");
    let started = Instant::now();
    client.send(&json!({"op":"subscribe","id":4,"channel":"late"}));
    let error = client.expect_error(Some(4), 503);
    let took = started.elapsed();
    assert_eq!(error["reason"], "broker unreachable", "{error}");
    // Not a timing target: only "no hang" (500 ms plus a wheel step and slack).
    assert!(took < Duration::from_secs(3), "the subscribe hung {took:?}");
    // The connection stays, and holds no subscription: unsubscribing is refused.
    client.send(&json!({"op":"unsubscribe","id":5,"channel":"late"}));
    client.expect_error(Some(5), 404);
    // Redis back: the same subscribe on the same connection succeeds and delivers.
    redis.restart();
    let mut id = 6;
    let got = loop {
        client.send(&json!({"op":"subscribe","id":id,"channel":"late"}));
        let answer = client.recv();
        if answer["op"] == "subscribed" {
            break util::json_client::subscribed(&answer);
        }
        assert_eq!(answer["code"], 503, "{answer}");
        assert!(Instant::now() < started + util::WAIT, "never subscribed");
        id += 1;
    };
    assert_eq!(got.offset, 0, "a new epoch starts at 0");
    let (status, body) = Publisher::connect(&node).publish("late", "first");
    assert_eq!(status, 200, "{body}");
    let message = client.expect_message();
    assert_eq!((message.offset, message.data), (1, b"first".to_vec()));
}
