//! Issue 12, second slice: a JSON client of a node joined through Redis (`--broker`) learns
//! of messages its node may have missed while it was cut off from Redis: the node sends
//! `{"op":"gap",...}` (PROTOCOL.md) before the first message after the loss.

mod util;

use std::time::{Duration, Instant};

use serde_json::json;
use util::json_client::{JsonClient, Publisher};
use util::redis_server::RedisServer;
use util::{admin, Node, WAIT};

/// Starts a node joined to `redis` with two shards.
fn broker_node(redis: &RedisServer) -> Node {
    let url = redis.url();
    Node::start(&[
        "--broker",
        url.as_str(),
        "--shards",
        "2",
        "--broker-timeout",
        "1s",
    ])
}

/// Waits until `count` nodes are subscribed to channel `name` in Redis.
fn wait_numsub(redis: &RedisServer, name: &str, count: u64) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        // A fresh connection each time: Redis may have been restarted.
        let found = redis::Client::open(redis.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut con| {
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(format!("ringpush:{{{name}}}"))
                    .query::<(String, u64)>(&mut con)
            });
        if found.is_ok_and(|(_, n)| n == count) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never happened: {count} nodes subscribed to {name}");
}

/// Publishes through `node` until Redis takes it (the node may still be reconnecting).
fn publish_when_up(node: &Node, channel: &str, text: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = Publisher::connect(node).publish(channel, text);
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never published: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue_12_json_clients_get_a_gap_notice_after_redis_was_killed_and_restarted() {
    let mut redis = RedisServer::start();
    let nodes: Vec<Node> = (0..2).map(|_| broker_node(&redis)).collect();
    let mut json_client = JsonClient::connect(&nodes[0], "&channel=live").expect("JSON upgrade");
    let first = json_client.recv_op("subscribed");
    wait_numsub(&redis, "live", 1);
    publish_when_up(&nodes[1], "live", "before");
    let before = json_client.recv();
    assert_eq!(before["data"], "before", "{before}");
    assert_eq!(before["offset"], 1, "{before}");
    assert_eq!(first["epoch"].as_str().map(str::len), Some(16), "{first}");

    redis.kill();
    redis.restart();
    wait_numsub(&redis, "live", 1);
    for node in &nodes {
        let deadline = Instant::now() + WAIT;
        while admin(node, "GET", "/healthz", &[], b"").status != 200 {
            assert!(Instant::now() < deadline, "the node never reconnected");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    publish_when_up(&nodes[1], "live", "after");
    // Redis lost the channel: a new epoch. The client is told before the message.
    let gap = json_client.recv_op("gap");
    let epoch = gap["epoch"].as_str().expect("an epoch").to_string();
    assert_ne!(json!(epoch), first["epoch"], "{gap}");
    assert_eq!(
        gap,
        json!({"op":"gap","channel":"live","epoch":epoch,"offset":1})
    );
    let after = json_client.recv();
    assert_eq!(
        (after["data"].clone(), after["offset"].clone()),
        (json!("after"), json!(1)),
        "{after}"
    );
    // One notice per loss: the next message comes alone.
    publish_when_up(&nodes[1], "live", "later");
    let later = json_client.recv();
    assert_eq!(later["data"], "later", "{later}");
}

#[test]
fn issue_12_json_clients_get_a_gap_notice_when_their_node_missed_messages() {
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (0..2).map(|_| broker_node(&redis)).collect();
    let mut json_client = JsonClient::connect(&nodes[0], "&channel=live").expect("JSON upgrade");
    let first = json_client.recv_op("subscribed");
    wait_numsub(&redis, "live", 1);
    publish_when_up(&nodes[1], "live", "one");
    assert_eq!(json_client.recv()["offset"], 1);

    // Redis drops a pub/sub connection whose unsent output passes the hard limit: the
    // node's subscriber connection goes with the big message, which never reaches it.
    let mut con = redis.connection();
    let set_limit = |con: &mut redis::Connection, limit: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("client-output-buffer-limit")
            .arg(limit)
            .query::<()>(con)
            .expect("CONFIG SET");
    };
    set_limit(&mut con, "pubsub 1 1 0");
    let big = "x".repeat(48 * 1024);
    publish_when_up(&nodes[1], "live", &big);
    set_limit(&mut con, "pubsub 33554432 8388608 60");
    // The node subscribes again (after its backoff) and the next message skips offset 2.
    std::thread::sleep(Duration::from_millis(100));
    wait_numsub(&redis, "live", 1);
    publish_when_up(&nodes[1], "live", "three");
    let gap = json_client.recv_op("gap");
    assert_eq!(
        gap,
        json!({"op":"gap","channel":"live","epoch":first["epoch"],"offset":3})
    );
    let three = json_client.recv();
    assert_eq!(
        (three["data"].clone(), three["offset"].clone()),
        (json!("three"), json!(3))
    );
}
