//! Issue 12, Redis Cluster: `--broker redis://A,B,C` (a comma list of seed nodes) routes
//! each channel's publish script to the master owning its slot (SPUBLISH there) and holds
//! sharded subscriptions (SSUBSCRIBE) on one connection per master. Each test starts its own
//! 3-master cluster on free loopback ports (`util::redis_cluster`) and real nodes.

mod util;

use std::time::{Duration, Instant};

use util::json_client::{JsonClient, Publisher};
use util::redis_cluster::RedisCluster;
use util::{admin, expect_no_more, next_text, Client, Node, WAIT};

/// `--broker-timeout` of the nodes here.
const TIMEOUT_MS: u64 = 1_000;

/// Starts a node joined to `cluster` (seeds listed from master `first`), two shards.
fn cluster_node(cluster: &RedisCluster, first: usize, extra: &[&str]) -> Node {
    let url = cluster.url(first);
    let timeout = format!("{TIMEOUT_MS}ms");
    let flags = [
        "--broker",
        url.as_str(),
        "--shards",
        "2",
        "--broker-timeout",
        timeout.as_str(),
    ];
    Node::start(&[&flags[..], extra].concat())
}

/// One channel name per master: `<prefix>0`, `<prefix>1`, ... until each master owns one,
/// as `CLUSTER KEYSLOT` and `CLUSTER SLOTS` say. Indexed by master.
fn channel_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut found: Vec<Option<String>> = vec![None; cluster.masters.len()];
    for i in 0.. {
        let name = format!("{prefix}{i}");
        let owner = cluster.owner(cluster.keyslot(&format!("ringpush:{{{name}}}")));
        // The node's own slot function agrees with Redis on every name it routes.
        let meta = cluster.keyslot(&format!("ringpush:{{{name}}}:meta"));
        assert_eq!(meta, cluster.keyslot(&format!("ringpush:{{{name}}}")));
        found[owner].get_or_insert(name);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
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

/// An admin publish answer's offset.
fn offset_of(body: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(body).expect("a JSON answer");
    value["offset"].as_u64().expect("offset")
}

#[test]
fn issue_12_cluster_delivers_every_channel_once_in_order_on_every_node() {
    let cluster = RedisCluster::start();
    let channels = channel_per_master(&cluster, "c");
    let history = ["--history-size", "100"];
    let nodes: Vec<Node> = (0..3)
        .map(|n| cluster_node(&cluster, n, &history))
        .collect();
    // On each node one subscriber per channel: the three channels live on three masters.
    let mut subscribers: Vec<(usize, Client)> = Vec::new();
    for node in &nodes {
        for (c, channel) in channels.iter().enumerate() {
            subscribers.push((c, node.ws(&format!("/ws/{channel}"))));
        }
    }
    for node in &nodes {
        eventually("every node subscribed to the three channels", || {
            metric(node, "ringpush_broker_subscriptions") == 3
        });
    }
    for channel in &channels {
        let name = format!("ringpush:{{{channel}}}");
        assert_eq!(cluster.shard_numsub(&name), 3, "one SSUBSCRIBE per node");
    }
    // Publishes through every node to every channel, at once.
    const EACH: usize = 10;
    let threads: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let admin_addr = node.admin;
            let channels = channels.clone();
            std::thread::spawn(move || {
                let mut publisher = Publisher::connect_to(admin_addr);
                let mut sent = Vec::new();
                for i in 0..EACH {
                    for (c, channel) in channels.iter().enumerate() {
                        let text = format!("node{n}-{i}");
                        let (status, body) = publisher.publish(channel, &text);
                        assert_eq!(status, 200, "{body}");
                        sent.push((c, offset_of(&body), text));
                    }
                }
                sent
            })
        })
        .collect();
    let mut published: Vec<(usize, u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("publisher thread"))
        .collect();
    published.sort();
    for (c, channel) in channels.iter().enumerate() {
        let offsets: Vec<u64> = published.iter().filter(|p| p.0 == c).map(|p| p.1).collect();
        let expected: Vec<u64> = (1..=(3 * EACH) as u64).collect();
        assert_eq!(offsets, expected, "{channel}: one offset per publish");
    }
    for (c, client) in &mut subscribers {
        let expected: Vec<&str> = published
            .iter()
            .filter(|p| p.0 == *c)
            .map(|p| p.2.as_str())
            .collect();
        let got: Vec<String> = (0..expected.len()).map(|_| next_text(client)).collect();
        assert_eq!(
            got, expected,
            "{}: every message once, in order",
            channels[*c]
        );
    }
    for (_, client) in &mut subscribers {
        expect_no_more(client, Duration::from_millis(100));
    }
    // Each channel's history is read from its own master, through any node.
    for (c, channel) in channels.iter().enumerate() {
        let node = &nodes[(c + 1) % nodes.len()];
        let answer = admin(
            node,
            "GET",
            &format!("/history/{channel}?since=25"),
            &[],
            b"",
        );
        assert_eq!(answer.status, 200, "{channel}: {}", answer.text());
        let page: serde_json::Value = serde_json::from_str(&answer.text()).expect("JSON");
        assert_eq!(page["offset"], 3 * EACH as u64, "{channel}: {page}");
        let offsets: Vec<u64> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["offset"].as_u64().expect("offset"))
            .collect();
        assert_eq!(
            offsets,
            (26..=(3 * EACH) as u64).collect::<Vec<_>>(),
            "{page}"
        );
    }
    // Sharded pub/sub only: nothing subscribed the ordinary way to a channel.
    let mut con = cluster.masters[0].connection();
    let (_, plain): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("ringpush:{{{}}}", channels[0]))
        .query(&mut con)
        .expect("PUBSUB NUMSUB");
    assert_eq!(plain, 0);
}

#[test]
fn issue_12_cluster_resume_on_another_node_and_send_across_nodes() {
    let cluster = RedisCluster::start();
    let a = cluster_node(&cluster, 0, &["--history-size", "100"]);
    let b = cluster_node(&cluster, 1, &["--history-size", "100"]);
    let mut client = JsonClient::connect(&a, "").expect("JSON upgrade on A");
    let first = client.subscribe(1, "feed", None);
    assert!(!first.recovered);
    eventually("A subscribed", || {
        metric(&a, "ringpush_broker_subscriptions") == 1
    });
    let mut publisher_b = Publisher::connect(&b);
    for i in 1..=5u64 {
        let (status, body) = publisher_b.publish("feed", &format!("m{i}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(offset_of(&body), i);
    }
    for i in 1..=3u64 {
        let got = client.expect_message();
        assert_eq!((got.offset, got.data), (i, format!("m{i}").into_bytes()));
    }
    drop(client);
    // It comes back on B after offset 3: 4 and 5 from the cluster's stream, then live.
    let mut back = JsonClient::connect(&b, "").expect("JSON upgrade on B");
    let resumed = back.subscribe(2, "feed", Some((&first.epoch, 3)));
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(
        (resumed.epoch.as_str(), resumed.offset),
        (first.epoch.as_str(), 5)
    );
    for i in 4..=5u64 {
        let got = back.expect_message();
        assert_eq!((got.offset, got.data), (i, format!("m{i}").into_bytes()));
    }
    let (status, body) = Publisher::connect(&a).publish("feed", "m6");
    assert_eq!(status, 200, "{body}");
    let got = back.expect_message();
    assert_eq!((got.offset, got.data), (6, b"m6".to_vec()));
    back.expect_silence(Duration::from_millis(200));

    // Sessions cross nodes in cluster mode too.
    eventually("both nodes up", || {
        admin(&a, "GET", "/healthz", &[], b"").status == 200
            && admin(&b, "GET", "/healthz", &[], b"").status == 200
    });
    let mut alice = a.ws("/ws/news?session=alice&tab=t1");
    let mut witness = b.ws("/ws/news?session=alice&tab=w");
    // Node a published alice's claim before this send: once the send reached node b, so
    // had the claim, and a connection node b opens after it is the newer one.
    send(&a, "alice", b"marker");
    assert_eq!(next_text(&mut alice), "marker");
    assert_eq!(next_text(&mut witness), "marker");
    send(&b, "alice", b"from b");
    assert_eq!(next_text(&mut alice), "from b");
    assert_eq!(next_text(&mut witness), "from b");
    let mut newer = b.ws("/ws/news?session=alice&tab=t1");
    alice.expect_close(4001);
    send(&a, "alice", b"from a");
    assert_eq!(next_text(&mut newer), "from a");
    assert_eq!(next_text(&mut witness), "from a");
}

/// `POST /send/<session>` on `node`, answered 200.
fn send(node: &Node, session: &str, body: &[u8]) {
    let path = format!("/send/{session}");
    let answer = admin(node, "POST", &path, &[("Content-Type", "text/plain")], body);
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[test]
fn issue_12_cluster_master_killed_fails_only_its_slots_and_recovers() {
    let mut cluster = RedisCluster::start();
    let channels = channel_per_master(&cluster, "k");
    let nodes: Vec<Node> = (0..2).map(|n| cluster_node(&cluster, n, &[])).collect();
    let mut subscribers: Vec<Vec<Client>> = channels
        .iter()
        .map(|c| nodes.iter().map(|n| n.ws(&format!("/ws/{c}"))).collect())
        .collect();
    for node in &nodes {
        eventually("subscribed to the three channels", || {
            metric(node, "ringpush_broker_subscriptions") == 3
        });
    }
    // A JSON client of the channel whose master dies: told of the loss afterwards.
    let dead = 1;
    let query = format!("&channel={}", channels[dead]);
    let mut json_client = JsonClient::connect(&nodes[0], &query).expect("JSON upgrade");
    let first = json_client.recv_op("subscribed");
    let mut publisher = Publisher::connect(&nodes[0]);
    for (c, channel) in channels.iter().enumerate() {
        let (status, body) = publisher.publish(channel, "before");
        assert_eq!(status, 200, "{body}");
        for client in &mut subscribers[c] {
            assert_eq!(next_text(client), "before");
        }
    }

    for node in &nodes {
        eventually("three masters, all up", || {
            metric(node, "ringpush_broker_cluster_masters") == 3
                && metric(node, "ringpush_broker_cluster_masters_up") == 3
        });
    }
    assert_eq!(json_client.recv()["data"], "before");
    cluster.masters[dead].kill();
    // Publishes for the dead master's slots fail within the timeout, never hang ...
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = Publisher::connect(&nodes[0]).publish(&channels[dead], "lost");
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < Duration::from_millis(TIMEOUT_MS + 500),
            "answered after {:?}",
            started.elapsed()
        );
    }
    // ... while the other masters' channels keep working through both nodes.
    for (c, channel) in channels.iter().enumerate().filter(|(c, _)| *c != dead) {
        for node in &nodes {
            let (status, body) = Publisher::connect(node).publish(channel, "alive");
            assert_eq!(status, 200, "{channel}: {body}");
        }
        for client in &mut subscribers[c] {
            assert_eq!(next_text(client), "alive");
            assert_eq!(next_text(client), "alive");
        }
    }
    assert_eq!(admin(&nodes[0], "GET", "/healthz", &[], b"").status, 503);
    for node in &nodes {
        eventually("one master down", || {
            metric(node, "ringpush_broker_cluster_masters_up") == 2
        });
    }

    // The master comes back with its slots (its config file): delivery resumes.
    cluster.masters[dead].restart();
    cluster.wait_ok(dead);
    let name = format!("ringpush:{{{}}}", channels[dead]);
    eventually("both nodes subscribed again", || {
        cluster.shard_numsub(&name) == 2
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = Publisher::connect(&nodes[1]).publish(&channels[dead], "back");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never published again: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for client in &mut subscribers[dead] {
        assert_eq!(next_text(client), "back", "resubscribed after the restart");
    }
    // The restarted master lost the channel (no persistence): a new epoch, and the JSON
    // client hears of it before the message.
    let gap = json_client.recv_op("gap");
    assert_ne!(gap["epoch"], first["epoch"], "{gap}");
    assert_eq!(gap["offset"], 1, "{gap}");
    let back = json_client.recv();
    assert_eq!(
        (back["data"].as_str(), back["offset"].as_u64()),
        (Some("back"), Some(1))
    );
    for node in &nodes {
        eventually("healthy again", || {
            admin(node, "GET", "/healthz", &[], b"").status == 200
        });
        eventually("three masters up again", || {
            metric(node, "ringpush_broker_cluster_masters_up") == 3
        });
    }
}
