//! Unit tests of `message.rs` (kept beside it, out of the code's way).

use proptest::prelude::*;

use super::*;
use crate::ws::frame::{encode_into, encode_masked};
use crate::ws::mask::MaskGen;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const SERVER: Limits = Limits {
    role: Role::Server,
    message_bytes_max: 1 << 20,
};
const CLIENT: Limits = Limits {
    role: Role::Client,
    message_bytes_max: 1 << 20,
};

/// An event copied out of the callback, so tests can collect and compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<CloseCode>, String),
}

impl From<Event<'_>> for Owned {
    fn from(event: Event<'_>) -> Owned {
        match event {
            Event::Text(text) => Owned::Text(String::from_utf8(text.to_vec()).unwrap()),
            Event::Binary(bytes) => Owned::Binary(bytes.to_vec()),
            Event::Ping(bytes) => Owned::Ping(bytes.to_vec()),
            Event::Pong(bytes) => Owned::Pong(bytes.to_vec()),
            Event::Close(code, reason) => Owned::Close(code, reason.to_owned()),
        }
    }
}

/// Feeds a copy of `bytes` to `decoder` in pieces cut at the sorted positions `cuts`.
fn feed_cut(
    decoder: &mut Decoder,
    bytes: &[u8],
    cuts: &[usize],
    limits: &Limits,
) -> Result<Vec<Owned>, ProtocolError> {
    let mut input = bytes.to_vec();
    let mut events = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        decoder.feed(&mut input[start..end], limits, |event| {
            events.push(Owned::from(event));
            ControlFlow::Continue(())
        })?;
        start = end;
    }
    Ok(events)
}

/// Decodes `bytes` with a fresh decoder, cut at `cuts`, and checks it ends idle.
fn decode_cut(bytes: &[u8], cuts: &[usize], limits: &Limits) -> Vec<Owned> {
    let mut decoder = Decoder::default();
    let events = feed_cut(&mut decoder, bytes, cuts, limits).unwrap();
    assert!(decoder.is_idle(), "not idle after cuts {cuts:?}");
    events
}

/// Decodes `bytes` in one piece and returns the error it must produce.
fn decode_err(bytes: &[u8], limits: &Limits) -> ProtocolError {
    let mut decoder = Decoder::default();
    let error = feed_cut(&mut decoder, bytes, &[], limits).unwrap_err();
    // A failed decoder holds no memory and repeats its error.
    assert_eq!(decoder.message_buf.capacity(), 0);
    assert_eq!(feed_cut(&mut decoder, b"", &[], limits), Err(error.clone()));
    error
}

/// Decodes `bytes` at every split point in two calls, and one byte at a time.
fn check_every_split(bytes: &[u8], limits: &Limits, expected: &[Owned]) {
    for cut in 0..=bytes.len() {
        assert_eq!(decode_cut(bytes, &[cut], limits), expected, "cut at {cut}");
    }
    let every_byte: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(
        decode_cut(bytes, &every_byte, limits),
        expected,
        "byte at a time"
    );
}

fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = bytes::BytesMut::new();
    encode_into(&mut frame, fin, opcode, payload, Some(KEY));
    frame.to_vec()
}

fn text(text: &str) -> Owned {
    Owned::Text(text.to_owned())
}

// RFC 6455 §5.7 examples.

const RFC_UNMASKED_HELLO: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
const RFC_MASKED_HELLO: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];
const RFC_FRAGMENTED_HELLO: [u8; 9] = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
const RFC_UNMASKED_PING: [u8; 7] = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
const RFC_MASKED_PONG: [u8; 11] = [
    0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

/// A recognisable binary payload of `len` bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 256) as u8).collect()
}

#[test]
fn rfc_single_frame_unmasked_text() {
    check_every_split(&RFC_UNMASKED_HELLO, &CLIENT, &[text("Hello")]);
}

#[test]
fn rfc_single_frame_masked_text() {
    check_every_split(&RFC_MASKED_HELLO, &SERVER, &[text("Hello")]);
}

#[test]
fn rfc_fragmented_unmasked_text() {
    check_every_split(&RFC_FRAGMENTED_HELLO, &CLIENT, &[text("Hello")]);
}

#[test]
fn rfc_unmasked_ping_and_masked_pong() {
    check_every_split(
        &RFC_UNMASKED_PING,
        &CLIENT,
        &[Owned::Ping(b"Hello".to_vec())],
    );
    check_every_split(&RFC_MASKED_PONG, &SERVER, &[Owned::Pong(b"Hello".to_vec())]);
}

#[test]
fn rfc_256_byte_binary_with_16_bit_length() {
    let mut bytes = vec![0x82, 0x7e, 0x01, 0x00];
    bytes.extend_from_slice(&pattern(256));
    check_every_split(&bytes, &CLIENT, &[Owned::Binary(pattern(256))]);
    assert_eq!(frame::encode(OpCode::Binary, &pattern(256)), bytes);
}

#[test]
fn rfc_64_kib_binary_with_64_bit_length() {
    let payload = pattern(65536);
    let mut bytes = vec![0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];
    bytes.extend_from_slice(&payload);
    assert_eq!(frame::encode(OpCode::Binary, &payload), bytes);
    // The every-split check, with comparisons done in place: copying 64 KiB out per
    // event would dominate the run time of this test.
    let mut input = bytes.clone();
    let mut check = |cuts: &[usize]| {
        input.copy_from_slice(&bytes);
        let mut decoder = Decoder::default();
        let mut events = 0;
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let result = decoder.feed(&mut input[start..end], &CLIENT, |event| {
                assert!(event == Event::Binary(&payload), "cuts {cuts:?}");
                events += 1;
                ControlFlow::Continue(())
            });
            assert_eq!(result, Ok(()));
            start = end;
        }
        assert_eq!(events, 1);
        assert!(decoder.is_idle());
    };
    for cut in 0..=bytes.len() {
        check(&[cut]);
    }
    check(&(1..bytes.len()).collect::<Vec<usize>>());
}

#[test]
fn rfc_examples_back_to_back_at_every_split() {
    let mut client_stream = Vec::new();
    for frame in [
        &RFC_UNMASKED_HELLO[..],
        &RFC_FRAGMENTED_HELLO,
        &RFC_UNMASKED_PING,
    ] {
        client_stream.extend_from_slice(frame);
    }
    let expected = [text("Hello"), text("Hello"), Owned::Ping(b"Hello".to_vec())];
    check_every_split(&client_stream, &CLIENT, &expected);

    let server_stream = [&RFC_MASKED_HELLO[..], &RFC_MASKED_PONG].concat();
    check_every_split(
        &server_stream,
        &SERVER,
        &[text("Hello"), Owned::Pong(b"Hello".to_vec())],
    );
}

// Memory and zero-copy behaviour.

#[test]
fn default_decoder_is_idle_small_and_unallocated() {
    let decoder = Decoder::default();
    assert!(decoder.is_idle());
    assert!(!decoder.is_closed());
    assert_eq!(decoder.message_buf.capacity(), 0);
    assert_eq!(decoder.control_buf.capacity(), 0);
    assert!(std::mem::size_of::<Decoder>() <= DECODER_BYTES_MAX);
}

#[test]
fn whole_frame_is_borrowed_from_the_input() {
    let mut input = [
        masked(OpCode::Binary, true, b"zero copy"),
        RFC_MASKED_HELLO.to_vec(),
    ]
    .concat();
    let input_range = input.as_ptr_range();
    let expected_start = input[6..].as_ptr();
    let mut pointers = Vec::new();
    let mut decoder = Decoder::default();
    decoder
        .feed(&mut input, &SERVER, |event| {
            if let Event::Binary(payload) | Event::Text(payload) = event {
                pointers.push(payload.as_ptr_range());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(pointers.len(), 2);
    assert_eq!(pointers[0].start, expected_start);
    assert!(pointers
        .iter()
        .all(|range| input_range.contains(&range.start)));
    assert_eq!(decoder.message_buf.capacity(), 0);
    assert!(decoder.is_idle());
}

#[test]
fn buffer_is_released_after_a_fragmented_message() {
    let mut decoder = Decoder::default();
    let first = masked(OpCode::Binary, false, &[1; 300]);
    assert_eq!(feed_cut(&mut decoder, &first, &[], &SERVER), Ok(vec![]));
    assert!(!decoder.is_idle());
    assert!(decoder.message_buf.capacity() >= 300);

    let last = masked(OpCode::Continuation, true, &[2; 100]);
    let events = feed_cut(&mut decoder, &last, &[], &SERVER).unwrap();
    assert_eq!(
        events,
        [Owned::Binary([vec![1; 300], vec![2; 100]].concat())]
    );
    assert_eq!(decoder.message_buf.capacity(), 0);
    assert!(decoder.is_idle());
}

#[test]
fn split_control_frame_stash_is_released() {
    let ping = masked(OpCode::Ping, true, b"are you there");
    let mut decoder = Decoder::default();
    assert_eq!(feed_cut(&mut decoder, &ping[..9], &[], &SERVER), Ok(vec![]));
    assert!(decoder.control_buf.capacity() > 0);
    let events = feed_cut(&mut decoder, &ping[9..], &[], &SERVER).unwrap();
    assert_eq!(events, [Owned::Ping(b"are you there".to_vec())]);
    assert_eq!(decoder.control_buf.capacity(), 0);
    assert!(decoder.is_idle());
}

#[test]
fn header_alone_allocates_nothing() {
    // The header of a frame exactly at the cap: accepted, and nothing reserved until
    // payload bytes arrive.
    let limits = Limits {
        role: Role::Server,
        message_bytes_max: 1000,
    };
    let frame = masked(OpCode::Binary, true, &[0; 1000]);
    let mut decoder = Decoder::default();
    assert_eq!(
        feed_cut(&mut decoder, &frame[..8], &[], &limits),
        Ok(vec![])
    );
    assert!(!decoder.is_idle());
    assert_eq!(decoder.message_buf.capacity(), 0);
}

#[test]
fn announced_length_reserves_nothing_beyond_what_arrived() {
    // A header announcing 1 MiB followed by one payload byte holds memory for the
    // bytes that arrived, not for the announced length.
    let limits = Limits {
        role: Role::Server,
        message_bytes_max: 1 << 20,
    };
    let frame = masked(OpCode::Binary, true, &vec![7; 1 << 20]);
    let mut decoder = Decoder::default();
    assert_eq!(
        feed_cut(&mut decoder, &frame[..15], &[], &limits),
        Ok(vec![])
    );
    assert!(
        decoder.message_buf.capacity() < 1024,
        "{}",
        decoder.message_buf.capacity()
    );
}

// §5.4 fragmentation.

#[test]
fn control_frame_between_fragments_is_allowed() {
    let stream = [
        masked(OpCode::Text, false, b"Hel"),
        masked(OpCode::Ping, true, b"p"),
        masked(OpCode::Continuation, false, b""),
        masked(OpCode::Pong, true, b""),
        masked(OpCode::Continuation, true, b"lo"),
    ]
    .concat();
    let expected = [
        Owned::Ping(b"p".to_vec()),
        Owned::Pong(vec![]),
        text("Hello"),
    ];
    check_every_split(&stream, &SERVER, &expected);
}

#[test]
fn empty_fragments_make_an_empty_message() {
    let stream = [
        masked(OpCode::Text, false, b""),
        masked(OpCode::Continuation, true, b""),
        masked(OpCode::Binary, true, b""),
    ]
    .concat();
    check_every_split(&stream, &SERVER, &[text(""), Owned::Binary(vec![])]);
}

#[test]
fn utf8_code_point_split_across_fragments_is_accepted() {
    let euro = "€".as_bytes();
    let stream = [
        masked(OpCode::Text, false, &[b'a', euro[0]]),
        masked(OpCode::Continuation, false, &euro[1..2]),
        masked(OpCode::Continuation, true, &[euro[2], b'b']),
    ]
    .concat();
    check_every_split(&stream, &SERVER, &[text("a€b")]);
}

// Round trips.

/// One message of a generated stream.
#[derive(Clone, Debug)]
struct Message {
    /// Text (true) or binary.
    is_text: bool,
    /// The payload; valid UTF-8 when `is_text`.
    payload: Vec<u8>,
    /// Where the payload is cut into fragments, as fractions of its length.
    cuts: Vec<prop::sample::Index>,
    /// A ping payload to inject after the first fragment, if any.
    ping: Option<Vec<u8>>,
}

fn any_message() -> impl Strategy<Value = Message> {
    let payload = prop_oneof![
        any::<String>().prop_map(|text| (true, text.into_bytes())),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|bytes| (false, bytes)),
    ];
    (
        payload,
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        proptest::option::of(prop::collection::vec(any::<u8>(), 0..=125)),
    )
        .prop_map(|((is_text, payload), cuts, ping)| Message {
            is_text,
            payload,
            cuts,
            ping,
        })
}

/// Encodes `messages` as `role`'s peer would send them, with the expected events.
fn encode_stream(messages: &[Message], role: Role, seed: u64) -> (Vec<u8>, Vec<Owned>) {
    let mut keys = MaskGen::new(seed);
    let mut key = || match role {
        Role::Server => Some(keys.next_key()),
        Role::Client => None,
    };
    let mut stream = bytes::BytesMut::new();
    let mut expected = Vec::new();
    for message in messages {
        let mut bounds: Vec<usize> = message
            .cuts
            .iter()
            .map(|cut| cut.index(message.payload.len() + 1))
            .collect();
        bounds.push(0);
        bounds.push(message.payload.len());
        bounds.sort_unstable();
        bounds.dedup();
        if bounds.len() == 1 {
            // An empty payload still needs one frame.
            bounds.push(0);
        }
        let fragments = bounds.len() - 1;
        let message_event = if message.is_text {
            Owned::Text(String::from_utf8(message.payload.clone()).unwrap())
        } else {
            Owned::Binary(message.payload.clone())
        };
        for (i, pair) in bounds.windows(2).enumerate() {
            let opcode = match (i, message.is_text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let fin = i + 1 == fragments;
            encode_into(
                &mut stream,
                fin,
                opcode,
                &message.payload[pair[0]..pair[1]],
                key(),
            );
            if fin {
                expected.push(message_event.clone());
            }
            // The ping follows the first fragment: inside the message when it has more
            // fragments, after it otherwise.
            if let (0, Some(ping)) = (i, &message.ping) {
                encode_into(&mut stream, true, OpCode::Ping, ping, key());
                expected.push(Owned::Ping(ping.clone()));
            }
        }
    }
    (stream.to_vec(), expected)
}

/// Feeds `bytes` in `DataMode::Discard`, cut at `cuts`, checking after every piece that
/// nothing of a data message is kept.
fn discard_cut(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Owned>, ProtocolError> {
    let mut decoder = Decoder::default();
    let mut input = bytes.to_vec();
    let mut events = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        decoder.feed_with(
            &mut input[start..end],
            &SERVER,
            DataMode::Discard,
            |event| {
                events.push(Owned::from(event));
                ControlFlow::Continue(())
            },
        )?;
        assert_eq!(decoder.message_buf.capacity(), 0, "kept data at {end}");
        start = end;
    }
    assert!(decoder.is_idle());
    Ok(events)
}

#[test]
fn discard_mode_validates_fragments_and_keeps_nothing() {
    let stream = [
        masked(OpCode::Text, false, "Hel".as_bytes()),
        masked(OpCode::Ping, true, b"p"),
        masked(OpCode::Continuation, false, "lo, wörld".as_bytes()),
        masked(OpCode::Continuation, true, "!".as_bytes()),
        masked(OpCode::Binary, true, &pattern(300)),
    ]
    .concat();
    let expected = [
        Owned::Ping(b"p".to_vec()),
        Owned::Text(String::new()),
        Owned::Binary(Vec::new()),
    ];
    for cut in 0..=stream.len() {
        assert_eq!(
            discard_cut(&stream, &[cut]),
            Ok(expected.to_vec()),
            "cut {cut}"
        );
    }
    let every_byte: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(discard_cut(&stream, &every_byte), Ok(expected.to_vec()));
}

#[test]
fn discard_mode_still_fails_bad_utf8_framing_and_the_cap() {
    // "ö" cut between fragments is fine; a lone continuation byte is not (1007).
    let bad_utf8 = [
        masked(OpCode::Text, false, b"ok \xc3"),
        masked(OpCode::Continuation, true, &[0xb6, 0xff]),
    ]
    .concat();
    for cut in 0..=bad_utf8.len() {
        assert_eq!(
            discard_cut(&bad_utf8, &[cut]),
            Err(ProtocolError::InvalidUtf8)
        );
    }
    assert_eq!(
        CloseCode::from(&ProtocolError::InvalidUtf8),
        CloseCode::INVALID_PAYLOAD
    );
    let stray = masked(OpCode::Continuation, true, b"x");
    assert_eq!(
        discard_cut(&stray, &[]),
        Err(ProtocolError::UnexpectedContinuation)
    );
    // The cap counts discarded bytes across fragments.
    let limits = Limits {
        role: Role::Server,
        message_bytes_max: 1000,
    };
    let mut decoder = Decoder::default();
    let mut input = [
        masked(OpCode::Binary, false, &pattern(600)),
        masked(OpCode::Continuation, true, &pattern(600)),
    ]
    .concat();
    let result = decoder.feed_with(&mut input, &limits, DataMode::Discard, |_| {
        ControlFlow::Continue(())
    });
    assert_eq!(result, Err(ProtocolError::MessageTooBig));
}

#[test]
fn switching_to_discard_mid_message_drops_what_was_kept() {
    let mut decoder = Decoder::default();
    let mut first = masked(OpCode::Binary, false, &pattern(4096));
    decoder
        .feed(&mut first, &SERVER, |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(decoder.buffered_bytes() >= 4096);
    let mut rest = masked(OpCode::Continuation, true, &pattern(10));
    let mut events = Vec::new();
    decoder
        .feed_with(&mut rest, &SERVER, DataMode::Discard, |event| {
            events.push(Owned::from(event));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(events, [Owned::Binary(Vec::new())]);
    assert_eq!(decoder.buffered_bytes(), 0);
    assert!(decoder.is_idle());
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(
        messages in prop::collection::vec(any_message(), 1..5),
        server in any::<bool>(),
        seed in any::<u64>(),
        cut_a in any::<prop::sample::Index>(),
        cut_b in any::<prop::sample::Index>(),
    ) {
        let limits = if server { SERVER } else { CLIENT };
        let (stream, expected) = encode_stream(&messages, limits.role, seed);
        prop_assert_eq!(&decode_cut(&stream, &[], &limits), &expected);
        let mut cuts = [cut_a.index(stream.len() + 1), cut_b.index(stream.len() + 1)];
        cuts.sort_unstable();
        prop_assert_eq!(&decode_cut(&stream, &cuts[..1], &limits), &expected);
        prop_assert_eq!(&decode_cut(&stream, &cuts, &limits), &expected);
    }

    #[test]
    fn single_frame_round_trips(
        opcode in prop_oneof![
            Just(OpCode::Binary), Just(OpCode::Ping), Just(OpCode::Pong)
        ],
        payload in prop::collection::vec(any::<u8>(), 0..=125),
        key in proptest::option::of(any::<[u8; 4]>()),
        cut in any::<prop::sample::Index>(),
    ) {
        let (bytes, limits) = match key {
            Some(key) => (encode_masked(opcode, &payload, key), SERVER),
            None => (frame::encode(opcode, &payload), CLIENT),
        };
        let expected = match opcode {
            OpCode::Ping => Owned::Ping(payload),
            OpCode::Pong => Owned::Pong(payload),
            _ => Owned::Binary(payload),
        };
        let cut = cut.index(bytes.len() + 1);
        prop_assert_eq!(decode_cut(&bytes, &[cut], &limits), vec![expected]);
    }
}

#[path = "message_error_tests.rs"]
mod errors;
