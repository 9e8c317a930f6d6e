//! Unit tests of the channel views' JSON (`channels.rs`).

use std::time::Instant;

use super::*;
use crate::history::{History, HistoryConfig, PayloadKind};

fn text(body: Vec<u8>) -> String {
    String::from_utf8(body).expect("JSON is UTF-8")
}

#[test]
fn a_listing_keeps_the_first_names_with_subscribers() {
    let counts: BTreeMap<Box<str>, u64> = [("b", 2), ("a", 1), ("gone", 0), ("c", 5)]
        .into_iter()
        .map(|(n, c)| (Box::from(n), c))
        .collect();
    assert_eq!(
        text(list_json(&counts, 2, false)),
        concat!(
            r#"{"channels":[{"channel":"a","subscribers":1},"#,
            r#"{"channel":"b","subscribers":2}],"truncated":true}"#
        )
    );
    assert_eq!(
        text(list_json(&counts, 3, false)),
        concat!(
            r#"{"channels":[{"channel":"a","subscribers":1},"#,
            r#"{"channel":"b","subscribers":2},{"channel":"c","subscribers":5}],"#,
            r#""truncated":false}"#
        )
    );
    assert_eq!(
        text(list_json(&counts, 3, true)),
        text(list_json(&counts, 3, false)).replace("false", "true"),
        "a shard that had more makes the listing truncated"
    );
    assert_eq!(
        text(list_json(&BTreeMap::new(), 10, false)),
        r#"{"channels":[],"truncated":false}"#
    );
}

#[test]
fn history_and_one_channel_answers_carry_the_position() {
    let history = History::with_seed(
        HistoryConfig {
            size: 2,
            ..HistoryConfig::default()
        },
        3,
    );
    let now = Instant::now();
    for payload in [&b"one"[..], b"two", b"\"3\"", b"\xff\x00"] {
        let sent: Result<_, ()> = history.publish(
            "a",
            &Bytes::copy_from_slice(payload),
            PayloadKind::Text,
            now,
            Ok,
        );
        sent.expect("published");
    }
    let page = history.read("a", 0, 10, now).expect("a channel entry");
    let epoch = page.position.epoch.to_string();
    assert_eq!(
        text(history_json("a", &page)),
        format!(
            concat!(
                r#"{{"channel":"a","epoch":"{}","offset":4,"oldest_offset":3,"messages":["#,
                r#"{{"channel":"a","offset":3,"data":"\"3\""}},"#,
                r#"{{"channel":"a","offset":4,"data_b64":"/wA="}}],"truncated":false}}"#
            ),
            epoch
        )
    );
    let page = history.read("a", 0, 1, now).expect("a channel entry");
    assert!(text(history_json("a", &page)).ends_with(r#""data":"\"3\""}],"truncated":true}"#));
    assert_eq!(
        text(one_json(
            "a",
            7,
            history.read("a", u64::MAX, 0, now).as_ref()
        )),
        format!(
            concat!(
                r#"{{"channel":"a","subscribers":7,"epoch":"{}","offset":4,"#,
                r#""history_entries":2,"history_oldest_offset":3}}"#
            ),
            epoch
        )
    );
    assert_eq!(
        text(one_json("b", 0, None)),
        r#"{"channel":"b","subscribers":0}"#
    );
}

#[test]
fn a_history_answer_stops_past_its_byte_cap_but_holds_one_message() {
    let history = History::with_seed(
        HistoryConfig {
            size: 8,
            memory_bytes_max: 64 << 20,
            ..HistoryConfig::default()
        },
        4,
    );
    let now = Instant::now();
    let big = Bytes::from(vec![b'x'; HISTORY_BODY_BYTES_MAX]);
    for _ in 0..3 {
        let sent: Result<_, ()> = history.publish("big", &big, PayloadKind::Text, now, Ok);
        sent.expect("published");
    }
    let page = history.read("big", 0, 10, now).expect("a channel entry");
    assert_eq!(page.entries.len(), 3);
    let body = text(history_json("big", &page));
    assert_eq!(
        body.matches(r#""offset":"#).count(),
        1 + 1,
        "the head and one message"
    );
    assert!(body.ends_with(r#""truncated":true}"#));
}
