//! Issue 12, second slice: sessions span nodes under `--broker`. Each test starts its own
//! `redis-server` on a free loopback port and several real nodes pointed at it; a
//! `/send/<session>` on any node reaches the session's connections on every node, and a
//! newer connection of a (session, tab) on another node replaces the older one (4001).

mod util;

use std::time::{Duration, Instant};

use util::redis_server::RedisServer;
use util::{admin, expect_no_more, next_text, Node, WAIT};

/// Starts a node joined to `redis` with two shards.
fn broker_node(redis: &RedisServer) -> Node {
    let url = redis.url();
    Node::start(&["--broker", url.as_str(), "--shards", "2"])
}

/// Waits until every one of `nodes` is subscribed to the node-wide sessions channel.
fn wait_sessions_subscribed(redis: &RedisServer, nodes: usize) {
    let mut con = redis.connection();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let (_, count): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("ringpush:sessions")
            .query(&mut con)
            .expect("PUBSUB NUMSUB");
        if count == nodes {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("never happened: {nodes} nodes subscribed to ringpush:sessions");
}

/// `POST /send/<session>` on `node`; the answer's local connection count.
fn send(node: &Node, session: &str, body: &[u8]) -> u64 {
    let answer = admin(
        node,
        "POST",
        &format!("/send/{session}"),
        &[("Content-Type", "text/plain")],
        body,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let value: serde_json::Value = serde_json::from_str(&answer.text()).expect("JSON answer");
    assert_eq!(value["session"], session, "{value}");
    value["connections"].as_u64().expect("a connection count")
}

#[test]
fn issue_12_send_reaches_a_session_on_every_node() {
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (0..3).map(|_| broker_node(&redis)).collect();
    wait_sessions_subscribed(&redis, 3);
    let mut alice_a = nodes[0].ws("/ws/news?session=alice&tab=t1");
    let mut alice_b = nodes[1].ws("/ws/news?session=alice&tab=t2");
    let mut bob_c = nodes[2].ws("/ws/news?session=bob&tab=t1");

    // Through the node holding none of alice's connections: both other nodes deliver,
    // and the answer counts the connections this node knows of (none).
    assert_eq!(send(&nodes[2], "alice", b"from c"), 0);
    assert_eq!(next_text(&mut alice_a), "from c");
    assert_eq!(next_text(&mut alice_b), "from c");
    // Through a node holding one: delivered there and on the other, once each.
    assert_eq!(send(&nodes[0], "alice", b"from a"), 1);
    assert_eq!(next_text(&mut alice_a), "from a");
    assert_eq!(next_text(&mut alice_b), "from a");
    assert_eq!(send(&nodes[1], "bob", b"to bob"), 0);
    assert_eq!(next_text(&mut bob_c), "to bob");
    expect_no_more(&mut alice_a, Duration::from_millis(300));
    expect_no_more(&mut alice_b, Duration::from_millis(50));
    expect_no_more(&mut bob_c, Duration::from_millis(50));
}

#[test]
fn issue_12_a_tab_opened_on_another_node_replaces_the_older_one_with_4001() {
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (0..3).map(|_| broker_node(&redis)).collect();
    wait_sessions_subscribed(&redis, 3);
    let mut witness_b = nodes[1].ws("/ws/news?session=alice&tab=w");
    let mut old_a = nodes[0].ws("/ws/news?session=alice&tab=t1");
    // Node a publishes its claim before this send: once the send reached node b, so had
    // the claim, and a connection node b opens now is the newer one.
    assert_eq!(send(&nodes[0], "alice", b"marker"), 1);
    assert_eq!(next_text(&mut old_a), "marker");
    assert_eq!(next_text(&mut witness_b), "marker");

    let mut new_b = nodes[1].ws("/ws/news?session=alice&tab=t1");
    old_a.expect_close(4001);
    // The newer tab stays, and so does the other tab of the session.
    assert_eq!(send(&nodes[2], "alice", b"after"), 0);
    assert_eq!(next_text(&mut new_b), "after");
    assert_eq!(next_text(&mut witness_b), "after");
    expect_no_more(&mut new_b, Duration::from_millis(300));

    // And back the other way, from node b to node c. The witness on c connects before the
    // send: a send reaches the other nodes through Redis after its answer, so a tab that
    // connected just after it could still be handed it.
    let mut witness_c = nodes[2].ws("/ws/news?session=alice&tab=w2");
    assert_eq!(send(&nodes[1], "alice", b"marker 2"), 2);
    assert_eq!(next_text(&mut new_b), "marker 2");
    assert_eq!(next_text(&mut witness_b), "marker 2");
    assert_eq!(next_text(&mut witness_c), "marker 2");
    assert_eq!(send(&nodes[1], "alice", b"marker 3"), 2);
    assert_eq!(next_text(&mut witness_c), "marker 3");
    assert_eq!(next_text(&mut new_b), "marker 3");
    assert_eq!(next_text(&mut witness_b), "marker 3");
    let mut newest_c = nodes[2].ws("/ws/news?session=alice&tab=t1");
    new_b.expect_close(4001);
    assert_eq!(send(&nodes[0], "alice", b"last"), 0);
    assert_eq!(next_text(&mut newest_c), "last");
}
