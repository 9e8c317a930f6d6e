//! Unit tests of `json_proto`: every op, every refusal with its field and code, the
//! encoders checked by a real JSON parser, and no panic on arbitrary or mutated input.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn parsed(text: &str) -> Result<Command, CommandError> {
    parse_command(text.as_bytes())
}

fn refused(text: &str) -> (Option<u64>, Broken, u16) {
    let error = parsed(text).expect_err(text);
    (error.id, error.broken, error.code().number())
}

fn json_of(out: &BytesMut) -> Value {
    serde_json::from_slice(out).expect("the encoder wrote valid JSON")
}

#[test]
fn every_op_parses() {
    assert_eq!(
        parsed(r#"{"op":"subscribe","id":1,"channel":"news.eu:1-x_y"}"#),
        Ok(Command::Subscribe {
            id: 1,
            channel: "news.eu:1-x_y".into(),
            since: None
        })
    );
    assert_eq!(
        parsed(r#"{"id":7,"channel":"a","since":{"epoch":"e1","offset":42},"op":"subscribe"}"#),
        Ok(Command::Subscribe {
            id: 7,
            channel: "a".into(),
            since: Some(Since {
                epoch: "e1".into(),
                offset: 42
            })
        })
    );
    assert_eq!(
        parsed(r#"{"op":"unsubscribe","id":2,"channel":"a"}"#),
        Ok(Command::Unsubscribe {
            id: 2,
            channel: "a".into()
        })
    );
    assert_eq!(
        parsed(r#"{"op":"publish","id":3,"channel":"a","data":"hé\n"}"#),
        Ok(Command::Publish {
            id: 3,
            channel: "a".into(),
            data: Payload::Text(Bytes::from_static("hé\n".as_bytes()))
        })
    );
    assert_eq!(
        parsed(r#"{"op":"publish","id":4,"channel":"a","data_b64":"AP8="}"#),
        Ok(Command::Publish {
            id: 4,
            channel: "a".into(),
            data: Payload::Binary(Bytes::from_static(&[0, 0xff]))
        })
    );
    assert_eq!(parsed(r#"{"op":"pong"}"#), Ok(Command::Pong));
    assert_eq!(
        parsed(r#"{"op":"refresh","id":5,"token":"t"}"#),
        Ok(Command::Refresh {
            id: 5,
            token: "t".into()
        })
    );
}

#[test]
fn unknown_fields_and_a_null_since_are_accepted() {
    assert_eq!(
        parsed(r#"{"op":"subscribe","id":1,"channel":"a","since":null,"future":[1,2]}"#),
        Ok(Command::Subscribe {
            id: 1,
            channel: "a".into(),
            since: None
        })
    );
}

#[test]
fn refusals_name_the_rule_the_id_and_the_code() {
    assert_eq!(refused("{"), (None, Broken::NotJson, 400));
    assert_eq!(refused("[1]"), (None, Broken::NotObject, 400));
    assert_eq!(refused(r#"{"id":3}"#), (Some(3), Broken::MissingOp, 400));
    assert_eq!(
        refused(r#"{"op":1,"id":3}"#),
        (Some(3), Broken::MissingOp, 400)
    );
    assert_eq!(
        refused(r#"{"op":"dance","id":3}"#),
        (Some(3), Broken::UnknownOp, 400)
    );
    assert_eq!(refused(r#"{"op":"dance"}"#), (None, Broken::UnknownOp, 400));
    let missing_id = refused(r#"{"op":"subscribe","channel":"a"}"#);
    assert_eq!(missing_id, (None, Broken::MissingField("id"), 400));
    for bad_id in ["-1", "1.5", "\"1\"", "9007199254740992"] {
        let text = format!(r#"{{"op":"subscribe","id":{bad_id},"channel":"a"}}"#);
        assert_eq!(
            refused(&text),
            (None, Broken::BadField("id"), 400),
            "{text}"
        );
    }
    let text = r#"{"op":"subscribe","id":9007199254740991,"channel":"a"}"#;
    assert!(parsed(text).is_ok());
    let cases = [
        (
            r#"{"op":"subscribe","id":1}"#,
            Broken::MissingField("channel"),
        ),
        (
            r#"{"op":"subscribe","id":1,"channel":5}"#,
            Broken::BadField("channel"),
        ),
        (
            r#"{"op":"subscribe","id":1,"channel":"a b"}"#,
            Broken::InvalidChannel,
        ),
        (
            r#"{"op":"subscribe","id":1,"channel":""}"#,
            Broken::InvalidChannel,
        ),
        (
            r#"{"op":"subscribe","id":1,"channel":"a","since":3}"#,
            Broken::BadField("since"),
        ),
        (
            r#"{"op":"subscribe","id":1,"channel":"a","since":{"offset":3}}"#,
            Broken::BadField("since.epoch"),
        ),
        (
            r#"{"op":"subscribe","id":1,"channel":"a","since":{"epoch":"e","offset":-3}}"#,
            Broken::BadField("since.offset"),
        ),
        (
            r#"{"op":"publish","id":1,"channel":"a"}"#,
            Broken::DataAndDataB64,
        ),
        (
            r#"{"op":"publish","id":1,"channel":"a","data":"x","data_b64":"eA=="}"#,
            Broken::DataAndDataB64,
        ),
        (
            r#"{"op":"publish","id":1,"channel":"a","data":{"x":1}}"#,
            Broken::BadField("data"),
        ),
        (
            r#"{"op":"publish","id":1,"channel":"a","data_b64":"%%"}"#,
            Broken::BadBase64,
        ),
        (
            r#"{"op":"publish","id":1,"channel":"a","data_b64":7}"#,
            Broken::BadField("data_b64"),
        ),
        (r#"{"op":"refresh","id":1}"#, Broken::MissingField("token")),
    ];
    for (text, broken) in cases {
        assert_eq!(refused(text), (Some(1), broken, 400), "{text}");
    }
    let long_channel = format!(
        r#"{{"op":"subscribe","id":1,"channel":"{}"}}"#,
        "a".repeat(129)
    );
    assert_eq!(refused(&long_channel).1, Broken::InvalidChannel);
}

#[test]
fn a_command_over_4_kib_is_too_large_and_closes_1009() {
    let pad = "x".repeat(COMMAND_BYTES_MAX);
    let text = format!(r#"{{"op":"publish","id":1,"channel":"a","data":"{pad}"}}"#);
    let error = parsed(&text).unwrap_err();
    assert_eq!(error.broken, Broken::TooLarge);
    assert_eq!(error.code(), ErrorCode::TooLarge);
    assert_eq!(error.close_code(), Some(1009));
    assert_eq!(refused("{").1, Broken::NotJson);
    assert_eq!(parsed("{").unwrap_err().close_code(), None);
    // Exactly at the bound is still parsed.
    let head = r#"{"op":"publish","id":1,"channel":"a","data":""}"#;
    let fill = "y".repeat(COMMAND_BYTES_MAX - head.len());
    let text = format!(r#"{{"op":"publish","id":1,"channel":"a","data":"{fill}"}}"#);
    assert_eq!(text.len(), COMMAND_BYTES_MAX);
    assert!(parsed(&text).is_ok());
}

#[test]
fn every_reason_is_short_and_every_error_encodes_as_json() {
    let rules = [
        Broken::TooLarge,
        Broken::BinaryFrame,
        Broken::NotJson,
        Broken::NotObject,
        Broken::MissingOp,
        Broken::UnknownOp,
        Broken::MissingField("id"),
        Broken::MissingField("other"),
        Broken::BadField("since.offset"),
        Broken::BadField("other"),
        Broken::InvalidChannel,
        Broken::BadBase64,
        Broken::DataAndDataB64,
    ];
    for broken in rules {
        let error = CommandError {
            id: Some(9),
            broken,
        };
        // A close reason must fit a control frame; every reason can be one.
        assert!(error.reason().len() <= 123);
        let mut out = BytesMut::new();
        encode_error(&mut out, error.id, error.code(), error.reason());
        let value = json_of(&out);
        assert_eq!(value["op"], "error");
        assert_eq!(value["id"], 9);
        assert_eq!(value["reason"], error.reason());
    }
}

#[test]
fn node_objects_are_the_documented_json() {
    let mut out = BytesMut::new();
    encode_subscribed(&mut out, Some(3), "a", "0123abcd", 17, Recovery::Recovered);
    assert_eq!(
        json_of(&out),
        json!({"op":"subscribed","id":3,"channel":"a","epoch":"0123abcd","offset":17,
               "recovered":true})
    );
    out.clear();
    encode_subscribed(&mut out, None, "b", "e", 0, Recovery::NotRecovered);
    assert_eq!(
        json_of(&out),
        json!({"op":"subscribed","channel":"b","epoch":"e","offset":0,"recovered":false})
    );
    out.clear();
    encode_error(&mut out, None, ErrorCode::TooMany, "too many subscriptions");
    assert_eq!(
        json_of(&out),
        json!({"op":"error","code":429,"reason":"too many subscriptions"})
    );
    out.clear();
    encode_ping(&mut out);
    assert_eq!(&out[..], br#"{"op":"ping"}"#);
    out.clear();
    encode_unsubscribed(&mut out, 4, "a");
    assert_eq!(
        json_of(&out),
        json!({"op":"unsubscribed","id":4,"channel":"a"})
    );
    out.clear();
    encode_gap(&mut out, "a\"b", "e", 7);
    assert_eq!(
        json_of(&out),
        json!({"op":"gap","channel":"a\"b","epoch":"e","offset":7})
    );
    out.clear();
    encode_published(&mut out, u64::MAX, "a", "e", 5);
    assert_eq!(
        json_of(&out),
        json!({"op":"published","id":u64::MAX,"channel":"a","epoch":"e","offset":5})
    );
}

#[test]
fn messages_carry_text_as_data_and_other_bytes_as_data_b64() {
    let mut out = BytesMut::new();
    encode_message(
        &mut out,
        "a",
        1,
        "quote \" slash \\ nl \n nul \0 é 😀".as_bytes(),
    );
    assert_eq!(
        json_of(&out),
        json!({"channel":"a","offset":1,"data":"quote \" slash \\ nl \n nul \0 é 😀"})
    );
    out.clear();
    encode_message(&mut out, "a", u64::MAX, &[0xff, 0, 1]);
    assert_eq!(
        json_of(&out),
        json!({"channel":"a","offset":u64::MAX,"data_b64":"/wAB"})
    );
    out.clear();
    encode_message(&mut out, "a", 2, b"");
    assert_eq!(json_of(&out), json!({"channel":"a","offset":2,"data":""}));
}

/// Decodes a server frame written by `message_frame` into its JSON.
fn frame_json(frame: &[u8]) -> Value {
    let header = crate::ws::frame::parse(frame, crate::ws::Role::Client, u64::MAX)
        .expect("a valid frame")
        .expect("a complete header");
    assert_eq!(header.opcode, OpCode::Text);
    assert!(header.fin);
    let body = &frame[header.header_len..];
    assert_eq!(body.len() as u64, header.payload_len);
    serde_json::from_slice(body).expect("JSON body")
}

#[test]
fn a_message_frame_is_one_exact_text_frame() {
    for len in [0, 10, 125, 126, 200, 70_000] {
        let payload = "é".repeat(len / 2);
        let frame = message_frame("ch", 9, payload.as_bytes());
        assert_eq!(
            frame_json(&frame),
            json!({"channel":"ch","offset":9,"data":payload})
        );
        // An empty payload is valid UTF-8, so the binary case needs at least one byte.
        let binary = vec![0xfe; len.max(1)];
        let frame = message_frame("ch", 9, &binary);
        assert_eq!(frame_json(&frame)["data_b64"], BASE64.encode(&binary));
    }
}

#[test]
fn the_upgrade_query_names_the_mode_and_the_first_channels() {
    assert_eq!(parse_query("", 64), Ok(None));
    assert_eq!(parse_query("session=u&tab=t", 64), Ok(None));
    assert_eq!(parse_query("format=json", 64), Ok(Some(vec![])));
    assert_eq!(
        parse_query("channel=a&format=json&x=1&channel=b.c", 64),
        Ok(Some(vec!["a".into(), "b.c".into()]))
    );
    assert_eq!(
        parse_query("format=xml", 64),
        Err(QueryError::UnknownFormat)
    );
    assert_eq!(
        parse_query("format=json&channel=a%20b", 64),
        Err(QueryError::InvalidChannel)
    );
    assert_eq!(
        parse_query("format=json&channel=", 64),
        Err(QueryError::InvalidChannel)
    );
    assert_eq!(
        parse_query("format=json&channel=a&channel=a", 64),
        Err(QueryError::RepeatedChannel)
    );
    assert_eq!(
        parse_query("format=json&channel=a&channel=b&channel=c", 2),
        Err(QueryError::TooManyChannels)
    );
    assert!(parse_query("format=json&channel=a&channel=b", 2).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_command(&bytes);
    }

    #[test]
    fn mutated_commands_parse_without_panic(
        seed in 0usize..7,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let seeds = [
            r#"{"op":"subscribe","id":1,"channel":"a","since":{"epoch":"e","offset":4}}"#,
            r#"{"op":"unsubscribe","id":2,"channel":"b"}"#,
            r#"{"op":"publish","id":3,"channel":"c","data":"x\"y"}"#,
            r#"{"op":"publish","id":3,"channel":"c","data_b64":"AAEC"}"#,
            r#"{"op":"pong"}"#,
            r#"{"op":"refresh","id":9,"token":"abc"}"#,
            r#"{"op":"subscribe","id":1e3,"channel":"a","since":{"epoch":1,"offset":1.5}}"#,
        ];
        let mut bytes = seeds[seed].as_bytes().to_vec();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        if let Err(error) = parse_command(&bytes) {
            prop_assert!(error.reason().len() <= 123);
        }
    }

    #[test]
    fn messages_round_trip_through_a_json_parser(
        channel in "[A-Za-z0-9_.:-]{1,20}",
        offset in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut out = BytesMut::new();
        encode_message(&mut out, &channel, offset, &payload);
        prop_assert_eq!(out.len(), message_len(&channel, offset, &payload));
        let value: Value = serde_json::from_slice(&out).expect("valid JSON");
        prop_assert_eq!(&value["channel"], &json!(channel));
        prop_assert_eq!(&value["offset"], &json!(offset));
        let got = match (value.get("data"), value.get("data_b64")) {
            (Some(Value::String(text)), None) => text.as_bytes().to_vec(),
            (None, Some(Value::String(b64))) => BASE64.decode(b64).expect("base64"),
            other => panic!("neither data nor data_b64: {other:?}"),
        };
        prop_assert_eq!(got, payload);
    }

    #[test]
    fn publish_data_round_trips(text in any::<String>()) {
        let command = json!({"op":"publish","id":1,"channel":"a","data":text}).to_string();
        if command.len() <= COMMAND_BYTES_MAX {
            let parsed = parse_command(command.as_bytes());
            let expected = Command::Publish {
                id: 1,
                channel: "a".into(),
                data: Payload::Text(Bytes::copy_from_slice(text.as_bytes())),
            };
            prop_assert_eq!(parsed, Ok(expected));
        }
    }
}
