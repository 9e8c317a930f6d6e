//! Unit tests of the broadcast body (`broadcast.rs`): what is accepted and the rule each
//! refusal names.

use super::*;

fn names(body: &BroadcastBody) -> Vec<&str> {
    body.channels.iter().map(|n| &**n).collect()
}

#[test]
fn a_text_broadcast_keeps_its_channels_in_order() {
    let body = parse_body(br#"{"channels":["b","a","c.1"],"data":"h\u00e9","extra":1}"#)
        .expect("a valid body");
    assert_eq!(names(&body), ["b", "a", "c.1"]);
    assert_eq!(body.payload, "hé".as_bytes());
    assert_eq!(body.opcode, OpCode::Text);
}

#[test]
fn a_binary_broadcast_is_decoded_from_base64() {
    let body = parse_body(br#"{"channels":["a"],"data_b64":"AP8A"}"#).expect("a valid body");
    assert_eq!(body.payload, [0, 0xff, 0]);
    assert_eq!(body.opcode, OpCode::Binary);
    let empty = parse_body(br#"{"channels":["a"],"data":""}"#).expect("an empty payload");
    assert!(empty.payload.is_empty());
}

#[test]
fn the_channel_cap_is_inclusive() {
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("\"c{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let at_cap = format!(
        r#"{{"channels":[{}],"data":"x"}}"#,
        list(BROADCAST_CHANNELS_MAX)
    );
    assert_eq!(
        parse_body(at_cap.as_bytes()).map(|b| b.channels.len()),
        Ok(BROADCAST_CHANNELS_MAX)
    );
    let over = format!(
        r#"{{"channels":[{}],"data":"x"}}"#,
        list(BROADCAST_CHANNELS_MAX + 1)
    );
    assert_eq!(
        parse_body(over.as_bytes()),
        Err("\"channels\" names more than 256 channels")
    );
}

#[test]
fn each_refusal_names_its_rule() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "the body is not valid JSON"),
        (
            b"{\"channels\":[\"a\"],\"data\":\"\xff\"}",
            "the body is not valid JSON",
        ),
        (b"[1]", "the body is not a JSON object"),
        (
            br#"{"channels":"a","data":"x"}"#,
            "\"channels\" must be an array of channel names",
        ),
        (
            br#"{"channels":[1],"data":"x"}"#,
            "\"channels\" must be an array of channel names",
        ),
        (br#"{"channels":[],"data":"x"}"#, "\"channels\" is empty"),
        (
            br#"{"channels":[""],"data":"x"}"#,
            "a channel name must match [A-Za-z0-9_.:-]{1,128}",
        ),
        (
            br#"{"channels":["a","b","a"],"data":"x"}"#,
            "a channel is named twice",
        ),
        (
            br#"{"channels":["a"]}"#,
            "exactly one of \"data\" and \"data_b64\" is needed",
        ),
        (
            br#"{"channels":["a"],"data":"x","data_b64":"eA=="}"#,
            "exactly one of \"data\" and \"data_b64\" is needed",
        ),
        (
            br#"{"channels":["a"],"data_b64":"eA"}"#,
            "\"data_b64\" is not standard padded base64",
        ),
        (
            br#"{"channels":["a"],"data":null}"#,
            "\"data\" and \"data_b64\" must be strings",
        ),
        (
            br#"{"channels":["a"],"data_b64":[]}"#,
            "\"data\" and \"data_b64\" must be strings",
        ),
    ];
    for (body, rule) in cases {
        assert_eq!(
            parse_body(body),
            Err(*rule),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let long = format!(r#"{{"channels":["{}"],"data":"x"}}"#, "a".repeat(129));
    assert!(parse_body(long.as_bytes()).is_err());
}
