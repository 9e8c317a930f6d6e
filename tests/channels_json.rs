//! Issue 10, black box: the JSON mode (PROTOCOL.md), offsets and epochs, history and
//! resume, over the real binary and real sockets. The storm test runs 20 s by default
//! (`RINGPUSH_STORM_SECS`).

mod util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use util::json_client::{delivery, published, JsonClient, Publisher};
use util::{admin, metric, metric_sum, wait_metric, Msg, Node};

/// How long the storm test runs, in seconds (`RINGPUSH_STORM_SECS`, 20 by default).
fn storm_secs() -> u64 {
    std::env::var("RINGPUSH_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// Publishes `text` on `channel` through the admin API; returns (subscribers, epoch, offset).
fn publish(node: &Node, channel: &str, text: &str) -> (u64, String, u64) {
    let answer = admin(
        node,
        "POST",
        &format!("/publish/{channel}"),
        &[("Content-Type", "text/plain")],
        text.as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    published(&answer.text())
}

/// Opens `n` JSON connections, each subscribed to `channels` by its query.
fn subscribers(node: &Node, n: usize, channels: &[&str]) -> Vec<JsonClient> {
    let query: String = channels.iter().map(|c| format!("&channel={c}")).collect();
    (0..n)
        .map(|_| {
            let mut client = JsonClient::connect(node, &query).expect("JSON upgrade");
            for channel in channels {
                let answer = client.recv_op("subscribed");
                assert_eq!(answer["channel"], *channel, "{answer}");
                assert!(
                    answer.get("id").is_none(),
                    "a query channel has no id: {answer}"
                );
            }
            client
        })
        .collect()
}

#[test]
fn issue_10_several_subscriptions_on_one_connection_across_shards() {
    let node = Node::start(&["--shards", "3"]);
    // Six connections spread over three shards, each with three channels: one from the
    // query, two by command.
    let mut clients = subscribers(&node, 6, &["a"]);
    for client in &mut clients {
        let b = client.subscribe(1, "b", None);
        assert!(!b.recovered, "a first subscription is not a resume");
        assert_eq!(client.subscribe(2, "c.x:y-z_1", None).offset, 0);
    }
    for (channel, text) in [("c.x:y-z_1", "three"), ("a", "one"), ("b", "two")] {
        let (count, _, offset) = publish(&node, channel, text);
        assert_eq!((count, offset), (6, 1));
    }
    for client in &mut clients {
        let got: Vec<_> = (0..3).map(|_| client.expect_message()).collect();
        let got: Vec<_> = got
            .into_iter()
            .map(|m| (m.channel, m.offset, String::from_utf8(m.data).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("c.x:y-z_1".to_string(), 1, "three".to_string()),
                ("a".to_string(), 1, "one".to_string()),
                ("b".to_string(), 1, "two".to_string()),
            ]
        );
    }
}

#[test]
fn issue_10_unsubscribe_stops_delivery() {
    let node = Node::start(&["--shards", "2"]);
    let mut client = subscribers(&node, 1, &["a", "b"]).remove(0);
    client.send(&json!({"op":"unsubscribe","id":5,"channel":"a"}));
    let answer = client.recv_op("unsubscribed");
    assert_eq!(
        (answer["id"].as_u64(), answer["channel"].as_str()),
        (Some(5), Some("a"))
    );
    publish(&node, "a", "not for you");
    publish(&node, "b", "for you");
    let next = client.expect_message();
    assert_eq!((next.channel.as_str(), next.offset), ("b", 1));
    client.expect_silence(Duration::from_millis(300));
    // Unsubscribing again: not subscribed.
    client.send(&json!({"op":"unsubscribe","id":6,"channel":"a"}));
    client.expect_error(Some(6), 404);
    // Subscribing again resumes delivery.
    client.subscribe(7, "a", None);
    publish(&node, "a", "again");
    assert_eq!(client.expect_message().offset, 2);
}

#[test]
fn issue_10_malformed_unknown_duplicate_and_forbidden_commands_are_error_replies() {
    let node = Node::start(&["--max-subscriptions", "2"]);
    let mut client = subscribers(&node, 1, &[]).remove(0);
    client.send_text("{");
    client.expect_error(None, 400);
    client.send(&json!({"op":"dance","id":1}));
    client.expect_error(Some(1), 400);
    client.send(&json!({"op":"subscribe","id":2,"channel":"bad name"}));
    client.expect_error(Some(2), 400);
    client.ws.send(ringpush::ws::OpCode::Binary, b"{}");
    client.expect_error(None, 400);
    // Without --client-publish a publish is not allowed.
    client.send(&json!({"op":"publish","id":3,"channel":"a","data":"x"}));
    client.expect_error(Some(3), 403);
    client.subscribe(4, "a", None);
    client.send(&json!({"op":"subscribe","id":5,"channel":"a"}));
    client.expect_error(Some(5), 409);
    client.subscribe(6, "b", None);
    // Past --max-subscriptions: 429, and the connection stays with its subscriptions.
    client.send(&json!({"op":"subscribe","id":7,"channel":"c"}));
    client.expect_error(Some(7), 429);
    publish(&node, "b", "still here");
    let message = client.expect_message();
    assert_eq!(
        (message.channel.as_str(), message.data),
        ("b", b"still here".to_vec())
    );
}

#[test]
fn issue_10_repeated_garbage_closes_1008() {
    let node = Node::start(&[]);
    let mut client = subscribers(&node, 1, &[]).remove(0);
    // A valid command resets the count: 7 malformed, one valid, then 8 malformed.
    for _ in 0..7 {
        client.send_text("not json");
        client.expect_error(None, 400);
    }
    client.subscribe(1, "a", None);
    for _ in 0..7 {
        client.send_text("[]");
        client.expect_error(None, 400);
    }
    client.send_text("{}");
    client.expect_close(1008);
}

#[test]
fn issue_10_a_command_over_4_kib_closes_1009() {
    let node = Node::start(&[]);
    let mut client = subscribers(&node, 1, &[]).remove(0);
    let pad = "x".repeat(4096);
    client.send(&json!({"op":"subscribe","id":1,"channel":"a","pad":pad}));
    client.expect_close(1009);
    // Exactly 4096 bytes is a command like any other.
    let mut client = subscribers(&node, 1, &[]).remove(0);
    let head = json!({"op":"subscribe","id":1,"channel":"a","pad":""}).to_string();
    let pad = "y".repeat(4096 - head.len());
    let command = json!({"op":"subscribe","id":1,"channel":"a","pad":pad}).to_string();
    assert_eq!(command.len(), 4096);
    client.send_text(&command);
    assert_eq!(client.recv_op("subscribed")["id"], 1);
}

#[test]
fn issue_10_app_level_ping_keeps_a_pong_answering_client_and_closes_a_silent_one() {
    let node = Node::start(&["--ping-interval", "300ms", "--idle-timeout", "900ms"]);
    let mut silent = subscribers(&node, 1, &["a"]).remove(0);
    silent.answer_pings = false;
    let mut live = subscribers(&node, 1, &["a"]).remove(0);
    live.answer_pings = false;
    let started = Instant::now();
    // The heartbeat is a JSON text frame a browser can see, not a WebSocket ping.
    match silent.ws.recv() {
        Msg::Text(text) => assert_eq!(text, r#"{"op":"ping"}"#),
        other => panic!("expected {{\"op\":\"ping\"}}, got {other:?}"),
    }
    // The live client answers for 2 s, and on until the silent one's close is seen: the
    // silent client's EOF comes only after --close-timeout (it never answers the close),
    // and a live client left unread that long would be silent too.
    let silent_closed = Arc::new(AtomicBool::new(false));
    let keep = thread::spawn({
        let silent_closed = Arc::clone(&silent_closed);
        move || {
            let until = Instant::now() + Duration::from_millis(2000);
            let mut pongs = 0;
            while Instant::now() < until || !silent_closed.load(Ordering::Relaxed) {
                let value = live.recv();
                assert_eq!(value, json!({"op":"ping"}));
                live.send(&json!({"op":"pong"}));
                if Instant::now() < until {
                    pongs += 1;
                }
            }
            (live, pongs)
        }
    });
    silent.expect_close(1001);
    silent_closed.store(true, Ordering::Relaxed);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    let (mut live, pongs) = keep.join().unwrap();
    assert!(
        pongs >= 3,
        "pinged {pongs} times in 2 s at a 300 ms interval"
    );
    live.answer_pings = true;
    // Alive well past the idle timeout, and still subscribed.
    publish(&node, "a", "alive");
    assert_eq!(live.expect_message().data, b"alive");
}

#[test]
fn issue_10_offsets_are_identical_on_every_shard() {
    let node = Node::start(&["--shards", "4"]);
    let mut clients = subscribers(&node, 12, &["c"]);
    let mut epochs = HashSet::new();
    for i in 1..=50u64 {
        let (count, epoch, offset) = publish(&node, "c", &format!("m{i}"));
        assert_eq!((count, offset), (12, i));
        epochs.insert(epoch);
    }
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    for client in &mut clients {
        for i in 1..=50u64 {
            let message = client.expect_message();
            assert_eq!(
                (message.offset, message.data),
                (i, format!("m{i}").into_bytes())
            );
        }
    }
    // A later subscriber on any shard sees the same epoch and position.
    let epoch = epochs.into_iter().next().unwrap();
    for client in &mut clients {
        let position = client.subscribe(9, "c2", None);
        assert_eq!(position.offset, 0);
        client.send(&json!({"op":"unsubscribe","id":10,"channel":"c"}));
        client.recv_op("unsubscribed");
        let again = client.subscribe(11, "c", Some((&epoch, 50)));
        assert_eq!(
            (again.epoch.as_str(), again.offset, again.recovered),
            (&*epoch, 50, true)
        );
    }
}

#[test]
fn issue_10_the_admin_publish_answer_has_offset_and_epoch() {
    let node = Node::start(&[]);
    let (count, epoch, offset) = publish(&node, "news", "one");
    assert_eq!((count, offset), (0, 1));
    assert!(!epoch.is_empty());
    let (_, again, offset) = publish(&node, "news", "two");
    assert_eq!((again, offset), (epoch.clone(), 2));
    let (_, other, offset) = publish(&node, "other", "x");
    assert_eq!(offset, 1);
    assert_ne!(other, epoch, "each channel has its own epoch");
}

#[test]
fn issue_10_resume_with_a_retained_offset_replays_exactly_then_goes_live() {
    let node = Node::start(&["--shards", "2", "--history-size", "100"]);
    let mut client = subscribers(&node, 1, &[]).remove(0);
    let first = client.subscribe(1, "r", None);
    for i in 1..=5 {
        publish(&node, "r", &format!("m{i}"));
    }
    for i in 1..=3 {
        assert_eq!(client.expect_message().offset, i);
    }
    drop(client);
    for i in 6..=10 {
        publish(&node, "r", &format!("m{i}"));
    }
    let mut client = subscribers(&node, 1, &[]).remove(0);
    let resumed = client.subscribe(2, "r", Some((&first.epoch, 3)));
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(
        (resumed.epoch.as_str(), resumed.offset),
        (first.epoch.as_str(), 10)
    );
    for i in 4..=10 {
        let message = client.expect_message();
        assert_eq!(
            (message.offset, message.data),
            (i, format!("m{i}").into_bytes())
        );
    }
    publish(&node, "r", "m11");
    assert_eq!(client.expect_message().offset, 11);
    client.expect_silence(Duration::from_millis(200));
}

#[test]
fn issue_10_resume_with_an_evicted_offset_is_not_recovered() {
    let node = Node::start(&["--history-size", "3"]);
    let mut client = subscribers(&node, 1, &[]).remove(0);
    let first = client.subscribe(1, "e", None);
    drop(client);
    for i in 1..=10 {
        publish(&node, "e", &format!("m{i}"));
    }
    let mut client = subscribers(&node, 1, &[]).remove(0);
    // Offsets 3..=7 are gone (only 8..=10 are kept): nothing is replayed.
    let resumed = client.subscribe(2, "e", Some((&first.epoch, 2)));
    assert!(!resumed.recovered, "{resumed:?}");
    assert_eq!(
        (resumed.epoch.as_str(), resumed.offset),
        (first.epoch.as_str(), 10)
    );
    publish(&node, "e", "m11");
    let live = client.expect_message();
    assert_eq!((live.offset, live.data), (11, b"m11".to_vec()));
    // From a retained offset the same channel recovers.
    let mut other = subscribers(&node, 1, &[]).remove(0);
    let resumed = other.subscribe(3, "e", Some((&first.epoch, 8)));
    assert!(resumed.recovered);
    let replayed: Vec<u64> = (0..3).map(|_| other.expect_message().offset).collect();
    assert_eq!(replayed, [9, 10, 11]);
}

#[test]
fn issue_10_resume_with_a_foreign_epoch_is_not_recovered() {
    let node = Node::start(&["--history-size", "100"]);
    let (_, epoch, _) = publish(&node, "f", "m1");
    let mut client = subscribers(&node, 1, &[]).remove(0);
    for (id, foreign) in [(1, "0000000000000000"), (2, "from-another-node")] {
        let resumed = client.subscribe(id, "f", Some((foreign, 1)));
        assert!(!resumed.recovered, "{foreign}: {resumed:?}");
        assert_eq!(
            (resumed.epoch.as_str(), resumed.offset),
            (epoch.as_str(), 1)
        );
        client.send(&json!({"op":"unsubscribe","id":id + 10,"channel":"f"}));
        client.recv_op("unsubscribed");
    }
    // An offset the channel never reached, in its own epoch, is not recovered either.
    let resumed = client.subscribe(3, "f", Some((&epoch, 99)));
    assert!(!resumed.recovered, "{resumed:?}");
    client.expect_silence(Duration::from_millis(200));
}

#[test]
fn issue_10_metrics_count_json_subscriptions_history_and_resumes() {
    let node = Node::start(&["--shards", "2", "--history-size", "2"]);
    let mut client = subscribers(&node, 1, &["m", "n"]).remove(0);
    let first = client.subscribe(1, "o", None);
    for i in 1..=3 {
        publish(&node, "o", &format!("m{i}"));
    }
    for i in 1..=3 {
        assert_eq!(client.expect_message().offset, i);
    }
    // Three JSON subscriptions on one connection count as three.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&node, "ringpush_subscriptions") != 3 {
        assert!(
            Instant::now() < deadline,
            "subscriptions gauge never reached 3"
        );
        thread::sleep(Duration::from_millis(30));
    }
    // Two kept (--history-size 2), the first evicted by size.
    assert_eq!(metric(&node, "ringpush_history_entries"), 2);
    assert_eq!(
        metric(&node, "ringpush_history_evictions_total{reason=\"size\"}"),
        1
    );
    assert!(metric(&node, "ringpush_history_bytes") >= 4);
    // A resume from offset 1 replays 2 and 3; one from offset 0 is not recovered.
    let mut again = subscribers(&node, 1, &[]).remove(0);
    assert!(again.subscribe(2, "o", Some((&first.epoch, 1))).recovered);
    let mut lost = subscribers(&node, 1, &[]).remove(0);
    assert!(!lost.subscribe(3, "o", Some((&first.epoch, 0))).recovered);
    wait_metric(&node, "ringpush_resumes_total{result=\"recovered\"}", 1);
    wait_metric(&node, "ringpush_resumes_total{result=\"not_recovered\"}", 1);
    wait_metric(&node, "ringpush_replayed_messages_total", 2);
}

/// Issue 10's storm: steady publishes while 200 clients reconnect with `since` again and
/// again; every client's offsets are contiguous, in order, with no duplicate.
#[test]
fn issue_10_storm_of_resumes_loses_nothing_and_repeats_nothing() {
    const CLIENTS: usize = 200;
    const CHANNEL: &str = "storm";
    let node = Node::start(&[
        "--shards",
        "4",
        "--history-size",
        "100000",
        "--history-memory",
        "268435456",
    ]);
    let deadline = Instant::now() + Duration::from_secs(storm_secs());
    let stop = Arc::new(AtomicBool::new(false));
    let published_count = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, count) = (Arc::clone(&stop), Arc::clone(&published_count));
        let admin_addr = node.admin;
        thread::spawn(move || {
            let mut admin = Publisher::connect_to(admin_addr);
            let mut epoch = None;
            while !stop.load(Ordering::Relaxed) {
                let n = count.load(Ordering::Relaxed) + 1;
                let (status, body) = admin.publish(CHANNEL, &format!("m{n}"));
                assert_eq!(status, 200, "{body}");
                let (_, got_epoch, offset) = published(&body);
                assert_eq!(offset, n, "admin offsets are +1 per publish");
                assert_eq!(epoch.get_or_insert(got_epoch.clone()), &got_epoch);
                count.store(n, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let workers: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let addr = node.addr;
            thread::spawn(move || storm_client(addr, index, deadline))
        })
        .collect();
    let mut sessions = 0;
    let mut recovered = 0;
    let mut messages = 0;
    for worker in workers {
        let report = worker.join().expect("a storm client failed");
        sessions += report.sessions;
        recovered += report.recovered;
        messages += report.messages;
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("the publisher failed");
    let total = published_count.load(Ordering::Relaxed);
    println!(
        "storm: {total} publishes, {sessions} sessions, {recovered} recovered, \
         {messages} messages checked"
    );
    assert!(total > 100, "the publisher kept a steady rate: {total}");
    // Every resume (all sessions after each client's first) found its history.
    assert_eq!(recovered, sessions - CLIENTS as u64);
}

/// What one storm client saw.
struct StormReport {
    sessions: u64,
    recovered: u64,
    messages: u64,
}

/// Connects, subscribes (resuming from its last offset after the first time), reads for a
/// varying short while, drops the connection, and again until `deadline`; panics on any
/// gap, reordering or duplicate.
fn storm_client(addr: std::net::SocketAddr, index: usize, deadline: Instant) -> StormReport {
    let mut report = StormReport {
        sessions: 0,
        recovered: 0,
        messages: 0,
    };
    let mut position: Option<(String, u64)> = None;
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let mut client = JsonClient::connect_to(addr, "").expect("JSON upgrade");
        let since = position
            .as_ref()
            .map(|(epoch, offset)| (epoch.as_str(), *offset));
        let answer = client.subscribe(round, "storm", since);
        report.sessions += 1;
        let mut last = match since {
            Some((epoch, offset)) => {
                assert!(answer.recovered, "client {index} round {round}: {answer:?}");
                assert_eq!(answer.epoch, epoch, "client {index}: the epoch changed");
                report.recovered += 1;
                offset
            }
            None => answer.offset,
        };
        // Read for 20 to 300 ms, varying per client and round.
        let read_for = Duration::from_millis(20 + (index as u64 * 37 + round * 101) % 280);
        let until = Instant::now() + read_for;
        while Instant::now() < until {
            let value = client.recv();
            let message = delivery(&value)
                .unwrap_or_else(|| panic!("client {index}: expected a message, got {value}"));
            assert_eq!(
                message.offset,
                last + 1,
                "client {index} round {round}: gap, duplicate or reorder after {last}"
            );
            assert_eq!(message.data, format!("m{}", message.offset).into_bytes());
            last = message.offset;
            report.messages += 1;
        }
        position = Some((answer.epoch, last));
    }
    report
}

/// Found by the browser client's tests (session 4): after a client answered a ping, the
/// node looked again only at the idle deadline, so a live client was pinged every
/// `--idle-timeout` minus `--ping-interval` (45 s with the defaults), not after
/// `--ping-interval` of silence as PROTOCOL.md says.
#[test]
fn issue_13_a_client_that_answers_is_pinged_after_each_ping_interval_of_silence() {
    let node = Node::start(&["--ping-interval", "400ms", "--idle-timeout", "8s"]);
    let mut client = subscribers(&node, 1, &["a"]).remove(0);
    client.answer_pings = false;
    let mut pings = Vec::new();
    let started = Instant::now();
    while pings.len() < 4 && started.elapsed() < Duration::from_secs(6) {
        assert_eq!(client.recv(), json!({"op":"ping"}));
        pings.push(started.elapsed());
        client.send(&json!({"op":"pong"}));
    }
    // Four pings within 6 s: with the idle deadline as the only check there would have been
    // one (the next due 7.6 s after the first answer).
    assert_eq!(pings.len(), 4, "pings at {pings:?}");
    for gap in pings.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap < Duration::from_secs(3), "pings at {pings:?}");
    }
}
