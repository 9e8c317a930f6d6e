//! Issue 13, black box: JSON-mode connections bound to a (session, tab), as raw ones are, so
//! the JavaScript client's tabs work: `POST /send/<session>` reaches every tab of the
//! session as `{"session":"S","data":"…"}`, and a newer connection of the same tab replaces
//! only that tab (4001).

mod util;

use serde_json::json;
use util::json_client::JsonClient;
use util::{admin, Node};

/// Sends `body` (with `content_type`) to `session`; returns how many connections got it.
fn send(node: &Node, session: &str, content_type: &str, body: &[u8]) -> u64 {
    let answer = admin(
        node,
        "POST",
        &format!("/send/{session}"),
        &[("Content-Type", content_type)],
        body,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let value: serde_json::Value = serde_json::from_str(&answer.text()).expect("JSON answer");
    assert_eq!(value["session"], session, "{value}");
    value["connections"].as_u64().expect("a connection count")
}

/// A JSON connection of `session`'s `tab`, subscribed to `news` by its query.
fn tab(node: &Node, session: &str, tab: &str) -> JsonClient {
    let query = format!("&session={session}&tab={tab}&channel=news");
    let mut client = JsonClient::connect(node, &query).expect("JSON upgrade");
    client.recv_op("subscribed");
    client
}

#[test]
fn issue_13_json_tabs_of_one_session_each_get_a_send_and_replace_only_their_own_tab() {
    let node = Node::start(&["--shards", "2"]);
    let mut t1 = tab(&node, "alice", "t1");
    let mut t2 = tab(&node, "alice", "t2");
    let mut other = tab(&node, "bob", "t1");

    assert_eq!(send(&node, "alice", "text/plain", b"to both"), 2);
    for client in [&mut t1, &mut t2] {
        assert_eq!(
            client.recv(),
            json!({"session": "alice", "data": "to both"})
        );
    }
    assert_eq!(
        send(&node, "alice", "application/octet-stream", &[0, 255]),
        2
    );
    for client in [&mut t1, &mut t2] {
        assert_eq!(
            client.recv(),
            json!({"session": "alice", "data_b64": "AP8="})
        );
    }

    // The same tab again (a reload): the older connection of t1 goes, t2 and bob stay.
    let mut t1_again = tab(&node, "alice", "t1");
    t1.expect_close(4001);
    assert_eq!(send(&node, "alice", "text/plain", b"after"), 2);
    for client in [&mut t1_again, &mut t2] {
        assert_eq!(client.recv(), json!({"session": "alice", "data": "after"}));
    }
    assert_eq!(send(&node, "bob", "text/plain", b"bob"), 1);
    assert_eq!(other.recv(), json!({"session": "bob", "data": "bob"}));
}

#[test]
fn issue_13_a_json_tab_without_a_session_is_refused_before_the_upgrade() {
    let node = Node::start(&[]);
    let refused = JsonClient::connect(&node, "&tab=t1")
        .err()
        .expect("refused");
    assert!(refused.contains("400"), "{refused}");
}
