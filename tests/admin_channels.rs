//! Issue 10, item 6: the admin API's channel views and broadcast, on the real binary over
//! real sockets. Subscribers are raw-mode clients (`/ws/<channel>`) spread over several
//! client shards by SO_REUSEPORT, so every count here is a sum over shards.

mod util;

use serde_json::{json, Value};
use util::{admin, Client, Msg, Node};

const TOKEN: &str = "t0ken";

/// A node of three client shards, with an admin token.
fn node() -> Node {
    Node::start(&["--shards", "3", "--admin-token", TOKEN])
}

/// An authorised admin request; the body as JSON when the answer is JSON.
fn ask(node: &Node, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let auth = format!("Bearer {TOKEN}");
    let response = admin(node, method, path, &[("Authorization", &auth)], body);
    (response.status, response.text())
}

fn ask_json(node: &Node, method: &str, path: &str, body: &[u8]) -> Value {
    let (status, text) = ask(node, method, path, body);
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// `n` raw subscribers of `channel`.
fn subscribe(node: &Node, channel: &str, n: usize) -> Vec<Client> {
    (0..n).map(|_| node.ws(&format!("/ws/{channel}"))).collect()
}

#[test]
fn channels_lists_subscriber_counts_summed_over_shards_with_prefix_and_limit() {
    let node = node();
    let _a = subscribe(&node, "room.a", 7);
    let _b = subscribe(&node, "room.b", 2);
    let _c = subscribe(&node, "room.c", 1);
    let _n = subscribe(&node, "news", 5);
    let all = ask_json(&node, "GET", "/channels", b"");
    assert_eq!(
        all,
        json!({"channels":[
            {"channel":"news","subscribers":5},
            {"channel":"room.a","subscribers":7},
            {"channel":"room.b","subscribers":2},
            {"channel":"room.c","subscribers":1}],
            "truncated":false})
    );
    let rooms = ask_json(&node, "GET", "/channels?prefix=room.&limit=2", b"");
    assert_eq!(
        rooms,
        json!({"channels":[
            {"channel":"room.a","subscribers":7},
            {"channel":"room.b","subscribers":2}],
            "truncated":true})
    );
    let none = ask_json(&node, "GET", "/channels?prefix=zzz", b"");
    assert_eq!(none, json!({"channels":[],"truncated":false}));
    // Subscribers that leave are no longer counted.
    drop(_c);
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = ask_json(&node, "GET", "/channels?prefix=room.c", b"");
        if listed["channels"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(listed, json!({"channels":[],"truncated":false}));
}

#[test]
fn one_channel_has_its_count_and_an_unknown_one_has_zero() {
    let node = node();
    let _a = subscribe(&node, "user.42", 4);
    let one = ask_json(&node, "GET", "/channels/user.42", b"");
    assert_eq!(one["channel"], "user.42");
    assert_eq!(one["subscribers"], 4);
    let none = ask_json(&node, "GET", "/channels/nobody", b"");
    assert_eq!(none["subscribers"], 0);
    let (status, text) = ask(&node, "GET", "/channels/bad%name", b"");
    assert_eq!(status, 400, "{text}");
}

#[test]
fn broadcast_reaches_every_subscriber_of_three_channels_with_their_counts() {
    let node = node();
    let mut a = subscribe(&node, "a", 3);
    let mut b = subscribe(&node, "b", 2);
    let mut c = subscribe(&node, "c", 4);
    let mut other = subscribe(&node, "other", 1);
    let body = json!({"channels":["a","b","c","empty"],"data":"hello all"}).to_string();
    let answer = ask_json(&node, "POST", "/broadcast", body.as_bytes());
    assert_eq!(
        answer,
        json!({"channels":[
            {"channel":"a","subscribers":3},
            {"channel":"b","subscribers":2},
            {"channel":"c","subscribers":4},
            {"channel":"empty","subscribers":0}],
            "subscribers":9})
    );
    for client in a.iter_mut().chain(&mut b).chain(&mut c) {
        assert_eq!(client.recv(), Msg::Text("hello all".into()));
    }
    // A binary payload arrives as a binary frame, to the named channels only: the next
    // message `other` gets is the publish made for it afterwards.
    let body = json!({"channels":["c"],"data_b64":"AP8A"}).to_string();
    let answer = ask_json(&node, "POST", "/broadcast", body.as_bytes());
    assert_eq!(answer["subscribers"], 4);
    for client in &mut c {
        assert_eq!(client.recv(), Msg::Binary(vec![0, 0xff, 0]));
    }
    let (status, _) = ask(&node, "POST", "/publish/other", b"only other");
    assert_eq!(status, 200);
    assert_eq!(other[0].recv(), Msg::Binary(b"only other".to_vec()));
}

#[test]
fn broadcast_and_the_views_refuse_with_precise_statuses() {
    // No token here, so the metrics page can be read; the token is checked on `tokened`.
    let node = Node::start(&["--shards", "2", "--max-message", "64"]);
    let bad = [
        (&b"not json"[..], "the body is not valid JSON"),
        (br#"["a"]"#, "the body is not a JSON object"),
        (
            br#"{"data":"x"}"#,
            "\"channels\" must be an array of channel names",
        ),
        (br#"{"channels":[],"data":"x"}"#, "\"channels\" is empty"),
        (
            br#"{"channels":["a b"],"data":"x"}"#,
            "a channel name must match",
        ),
        (
            br#"{"channels":["a","a"],"data":"x"}"#,
            "a channel is named twice",
        ),
        (
            br#"{"channels":["a"]}"#,
            "exactly one of \"data\" and \"data_b64\"",
        ),
        (
            br#"{"channels":["a"],"data":"x","data_b64":"eA=="}"#,
            "exactly one of",
        ),
        (
            br#"{"channels":["a"],"data_b64":"!!"}"#,
            "not standard padded base64",
        ),
        (br#"{"channels":["a"],"data":7}"#, "must be strings"),
    ];
    for (body, reason) in bad {
        let (status, text) = ask(&node, "POST", "/broadcast", body);
        assert_eq!(status, 400, "{}: {text}", String::from_utf8_lossy(body));
        assert!(text.contains(reason), "{text:?} should say {reason:?}");
    }
    let names: Vec<String> = (0..257).map(|i| format!("c{i}")).collect();
    let many = json!({"channels": names, "data":"x"}).to_string();
    let tokened = Node::start(&["--shards", "1", "--admin-token", TOKEN]);
    let (status, text) = ask(&tokened, "POST", "/broadcast", many.as_bytes());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("more than 256"), "{text}");
    let big = json!({"channels":["a"], "data": "x".repeat(80)}).to_string();
    let (status, _) = ask(&node, "POST", "/broadcast", big.as_bytes());
    assert_eq!(status, 413, "a body over --max-message");
    let (status, _) = ask(&node, "GET", "/broadcast", b"");
    assert_eq!(status, 405);
    for path in ["/channels", "/channels/a", "/history/a"] {
        let response = admin(&tokened, "GET", path, &[], b"");
        assert_eq!(response.status, 401, "{path} follows --admin-token");
    }
    let (status, text) = ask(&node, "GET", "/channels?limit=x", b"");
    assert_eq!((status, text.as_str()), (400, "limit: a decimal count"));
    let (status, text) = ask(&node, "GET", "/history/a?since=-1", b"");
    assert_eq!((status, text.as_str()), (400, "since: a decimal offset"));
    assert_eq!(
        util::metric(
            &node,
            r#"ringpush_admin_refused_total{reason="invalid_body"}"#
        ),
        bad.len() as u64
    );
}

#[test]
fn history_of_a_channel_the_node_never_saw_is_404() {
    let node = node();
    let (status, text) = ask(&node, "GET", "/history/never.seen", b"");
    assert_eq!(status, 404, "{text}");
    let (status, _) = ask(&node, "GET", "/history/never.seen?since=3&limit=2", b"");
    assert_eq!(status, 404);
}

#[test]
fn the_channel_views_and_broadcast_answer_after_a_client_shard_stopped() {
    // The test hook stops shard 1 on its first tick, as a ring error would.
    let node = Node::start_with_env(&["--shards", "2"], &[("RINGPUSH_TEST_FAIL_SHARD", "1:run")]);
    node.expect_log("event=shard_gone shard=1");
    let mut sub = node.ws("/ws/news");
    let listed = admin(&node, "GET", "/channels", &[], b"");
    assert_eq!(listed.status, 200, "{}", listed.text());
    let listed: Value = serde_json::from_slice(&listed.body).expect("JSON");
    assert_eq!(
        listed,
        json!({"channels":[{"channel":"news","subscribers":1}],"truncated":false})
    );
    let body = json!({"channels":["news","gone"],"data":"still here"}).to_string();
    let answer = admin(&node, "POST", "/broadcast", &[], body.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer.text().ends_with(r#""subscribers":1}"#),
        "{}",
        answer.text()
    );
    assert_eq!(sub.recv(), Msg::Text("still here".into()));
}
