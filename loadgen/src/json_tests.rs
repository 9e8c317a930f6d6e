//! The JSON client reader against the node's own encoders (`ringpush::json_proto`).

use bytes::BytesMut;
use ringpush::json_proto::{self, Command, ErrorCode, Recovery, Since};

use super::*;

fn encoded_message(channel: &str, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    json_proto::encode_message(&mut out, channel, offset, payload);
    out.to_vec()
}

fn payloads() -> Vec<Vec<u8>> {
    let mut stamped = crate::payload::template(64);
    crate::payload::write_stamp(&mut stamped, 1_764_000_000_123_456_789, 7, false);
    vec![
        b"hello".to_vec(),
        Vec::new(),
        "quotes \" and \\ and \u{1} \n \t and é 🎉"
            .as_bytes()
            .to_vec(),
        vec![0xff, 0x00, 0x80],
        vec![0, 0, 0, 0, 0, 0, 0, 5, 0x7f],
        stamped,
    ]
}

#[test]
fn messages_of_the_node_encoder_read_back_exactly() {
    let mut scratch = Vec::new();
    for payload in payloads() {
        let text = encoded_message("room.7", 1201, &payload);
        assert!(
            scan_message(&text).is_some(),
            "{}",
            String::from_utf8_lossy(&text)
        );
        match parse(&text, &mut scratch) {
            Server::Message {
                channel,
                offset,
                payload: got,
            } => {
                assert_eq!(channel, "room.7");
                assert_eq!(offset, 1201);
                assert_eq!(got, payload.as_slice());
            }
            other => panic!("not a message: {other:?}"),
        }
    }
}

#[test]
fn messages_in_another_shape_go_through_serde_json() {
    let mut scratch = Vec::new();
    let reordered = br#"{"offset":3,"data_b64":"AP8=","channel":"c","extra":1}"#;
    assert!(scan_message(reordered).is_none());
    assert_eq!(
        parse(reordered, &mut scratch),
        Server::Message {
            channel: Cow::Borrowed("c"),
            offset: 3,
            payload: &[0x00, 0xff],
        }
    );
    let added = br#"{"channel":"c","offset":4,"data":"x","ts":5}"#;
    assert!(matches!(
        parse(added, &mut scratch),
        Server::Message {
            offset: 4,
            payload: b"x",
            ..
        }
    ));
}

#[test]
fn broken_messages_are_unreadable() {
    let mut scratch = Vec::new();
    for text in [
        &br#"{"channel":"c","offset":1,"data":"a"b"}"#[..],
        br#"{"channel":"c","offset":1,"data":"\q"}"#,
        br#"{"channel":"c","offset":1,"data_b64":"!!"}"#,
        br#"{"channel":"c","offset":99999999999999999999999,"data":"a"}"#,
        br#"{"channel":"c","offset":1}"#,
        b"not json",
        b"[1,2]",
    ] {
        assert_eq!(
            parse(text, &mut scratch),
            Server::Unreadable,
            "{}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn control_objects_of_the_node_encoder() {
    let mut scratch = Vec::new();
    let mut out = BytesMut::new();
    json_proto::encode_ping(&mut out);
    assert_eq!(parse(&out, &mut scratch), Server::Ping);
    out.clear();
    json_proto::encode_subscribed(
        &mut out,
        Some(3),
        "news",
        "a0d3b7e9c1f24865",
        1204,
        Recovery::Recovered,
    );
    assert_eq!(
        parse(&out, &mut scratch),
        Server::Subscribed(Subscribed {
            id: Some(3),
            channel: "news".into(),
            epoch: "a0d3b7e9c1f24865".into(),
            offset: 1204,
            recovered: true,
        })
    );
    out.clear();
    json_proto::encode_subscribed(&mut out, None, "n", "e", 0, Recovery::NotRecovered);
    assert!(matches!(
        parse(&out, &mut scratch),
        Server::Subscribed(Subscribed {
            id: None,
            recovered: false,
            ..
        })
    ));
    out.clear();
    json_proto::encode_error(&mut out, Some(9), ErrorCode::TooMany, "too many");
    assert_eq!(
        parse(&out, &mut scratch),
        Server::Error {
            id: Some(9),
            code: 429
        }
    );
    out.clear();
    json_proto::encode_unsubscribed(&mut out, 4, "news");
    assert_eq!(parse(&out, &mut scratch), Server::OtherOp);
}

#[test]
fn commands_are_what_the_node_parses() {
    assert_eq!(json_proto::parse_command(PONG), Ok(Command::Pong));
    let mut out = Vec::new();
    write_subscribe(&mut out, 1, "bench", Some(("6f1c0e54a3b29d17", 41)));
    assert_eq!(
        json_proto::parse_command(&out),
        Ok(Command::Subscribe {
            id: 1,
            channel: "bench".into(),
            since: Some(Since {
                epoch: "6f1c0e54a3b29d17".into(),
                offset: 41
            }),
        })
    );
    out.clear();
    write_subscribe(&mut out, 2, "bench.2", None);
    assert_eq!(
        json_proto::parse_command(&out),
        Ok(Command::Subscribe {
            id: 2,
            channel: "bench.2".into(),
            since: None,
        })
    );
}
