//! Issue 10, item 6: `GET /history/<channel>` and the history fields of
//! `GET /channels/<name>` with history on, on the real binary (the shards publish through
//! the history store).

mod util;

use serde_json::{json, Value};
use util::{admin, Node};

fn get_json(node: &Node, path: &str) -> Value {
    let response = admin(node, "GET", path, &[], b"");
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn publish(node: &Node, channel: &str, content_type: &str, body: &[u8]) -> Value {
    let path = format!("/publish/{channel}");
    let response = admin(node, "POST", &path, &[("Content-Type", content_type)], body);
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).expect("a JSON answer")
}

#[test]
fn history_pages_through_the_retained_messages_with_the_publish_offsets() {
    let node = Node::start(&["--shards", "2", "--history-size", "3"]);
    let mut answers = Vec::new();
    for text in ["one", "two", "three", "four"] {
        answers.push(publish(&node, "news", "text/plain", text.as_bytes()));
    }
    let binary = publish(&node, "news", "application/octet-stream", &[0, 0xff]);
    let epoch = binary["epoch"]
        .as_str()
        .expect("the publish answer has an epoch");
    assert_eq!(binary["offset"], 5);
    assert!(answers.iter().all(|a| a["epoch"] == epoch));

    let all = get_json(&node, "/history/news");
    assert_eq!(
        all,
        json!({"channel":"news","epoch":epoch,"offset":5,"oldest_offset":3,"messages":[
            {"channel":"news","offset":3,"data":"three"},
            {"channel":"news","offset":4,"data":"four"},
            {"channel":"news","offset":5,"data_b64":"AP8="}],
            "truncated":false})
    );
    let page = get_json(&node, "/history/news?since=3&limit=1");
    assert_eq!(
        page["messages"],
        json!([{"channel":"news","offset":4,"data":"four"}])
    );
    assert_eq!(page["truncated"], true);
    let rest = get_json(&node, "/history/news?since=4&limit=10");
    assert_eq!(rest["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["truncated"], false);
    let none = get_json(&node, "/history/news?since=5");
    assert_eq!(none["messages"], json!([]));

    let one = get_json(&node, "/channels/news");
    assert_eq!(
        one,
        json!({"channel":"news","subscribers":0,"epoch":epoch,"offset":5,
               "history_entries":3,"history_oldest_offset":3})
    );
    let response = admin(&node, "GET", "/history/never.published", &[], b"");
    assert_eq!(response.status, 404);
}
