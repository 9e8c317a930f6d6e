//! Unit tests of the decoder's failures (one test per rule, each with the close code the
//! peer hears) and of closing, stopping and failing.

use super::*;

// The error table: one test per rule, each with the close code the peer hears.

#[test]
fn error_rsv_bits_set() {
    let mut frame = masked(OpCode::Text, true, b"x");
    frame[0] |= 0x40;
    let error = decode_err(&frame, &SERVER);
    assert_eq!(error, ProtocolError::RsvBitsSet);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_unknown_opcode() {
    for bits in [3u8, 7, 11, 15] {
        let error = decode_err(&[0x80 | bits, 0x80, 0, 0, 0, 0], &SERVER);
        assert_eq!(error, ProtocolError::UnknownOpcode(bits));
        assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
    }
}

#[test]
fn error_fragmented_control() {
    let mut frame = masked(OpCode::Ping, true, b"x");
    frame[0] &= 0x7f;
    let error = decode_err(&frame, &SERVER);
    assert_eq!(error, ProtocolError::FragmentedControl);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_ping_of_126_bytes() {
    let mut frame = vec![0x89, 0x80 | 126, 0x00, 126];
    frame.extend_from_slice(&KEY);
    frame.extend_from_slice(&[0; 126]);
    let error = decode_err(&frame, &SERVER);
    assert_eq!(error, ProtocolError::ControlTooLong);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
    // 125 bytes is the largest legal control payload.
    let ping = masked(OpCode::Ping, true, &[7; 125]);
    assert_eq!(decode_cut(&ping, &[], &SERVER), [Owned::Ping(vec![7; 125])]);
}

#[test]
fn error_unmasked_client_frame() {
    let error = decode_err(&RFC_UNMASKED_HELLO, &SERVER);
    assert_eq!(error, ProtocolError::UnmaskedClientFrame);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_masked_server_frame() {
    let error = decode_err(&RFC_MASKED_HELLO, &CLIENT);
    assert_eq!(error, ProtocolError::MaskedServerFrame);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_length_too_large() {
    let error = decode_err(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 1], &CLIENT);
    assert_eq!(error, ProtocolError::LengthTooLarge);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_message_too_big_from_the_header_alone() {
    let limits = Limits {
        role: Role::Server,
        message_bytes_max: 1000,
    };
    // Only the header of a 1001-byte frame is fed: the error needs no payload, and
    // nothing is reserved on the way (see `header_alone_allocates_nothing`).
    let frame = masked(OpCode::Binary, true, &[0; 1001]);
    let error = decode_err(&frame[..8], &limits);
    assert_eq!(error, ProtocolError::MessageTooBig);
    assert_eq!(CloseCode::from(&error), CloseCode::TOO_BIG);
    // A 64-bit length fails before the mask key arrives.
    let error = decode_err(&[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0], &limits);
    assert_eq!(error, ProtocolError::MessageTooBig);
}

#[test]
fn error_message_too_big_across_fragments() {
    let limits = Limits {
        role: Role::Server,
        message_bytes_max: 1000,
    };
    let mut decoder = Decoder::default();
    let first = masked(OpCode::Text, false, &[b'a'; 600]);
    assert_eq!(feed_cut(&mut decoder, &first, &[], &limits), Ok(vec![]));
    // A ping in between is not counted against the message.
    let ping = masked(OpCode::Ping, true, &[0; 125]);
    assert_eq!(
        feed_cut(&mut decoder, &ping, &[], &limits).unwrap().len(),
        1
    );
    let second = masked(OpCode::Continuation, true, &[b'a'; 401]);
    let result = feed_cut(&mut decoder, &second[..8], &[], &limits);
    assert_eq!(result, Err(ProtocolError::MessageTooBig));
    assert_eq!(decoder.message_buf.capacity(), 0);
}

#[test]
fn error_unexpected_continuation() {
    let error = decode_err(&masked(OpCode::Continuation, true, b"lo"), &SERVER);
    assert_eq!(error, ProtocolError::UnexpectedContinuation);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_expected_continuation() {
    let stream = [
        masked(OpCode::Text, false, b"Hel"),
        masked(OpCode::Binary, true, b"lo"),
    ];
    let error = decode_err(&stream.concat(), &SERVER);
    assert_eq!(error, ProtocolError::ExpectedContinuation);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_invalid_utf8_before_the_frame_completes() {
    let frame = masked(OpCode::Text, true, b"ab\xffcdefghij");
    // Header (6 bytes) plus "ab\xff": the rest of the frame never arrives.
    let mut decoder = Decoder::default();
    let result = feed_cut(&mut decoder, &frame[..9], &[], &SERVER);
    assert_eq!(result, Err(ProtocolError::InvalidUtf8));
    assert_eq!(
        CloseCode::from(&ProtocolError::InvalidUtf8),
        CloseCode::INVALID_PAYLOAD
    );
    // The same holds one byte at a time, and inside a later fragment.
    // The first fragment is 8 bytes and the second header 6, so "ab\xff" ends at 17.
    let stream = [
        masked(OpCode::Text, false, b"ok"),
        masked(OpCode::Continuation, true, b"ab\xffcdefghij"),
    ]
    .concat();
    let cuts: Vec<usize> = (1..17).collect();
    let result = feed_cut(&mut Decoder::default(), &stream[..17], &cuts, &SERVER);
    assert_eq!(result, Err(ProtocolError::InvalidUtf8));
}

#[test]
fn error_invalid_utf8_in_a_whole_frame_and_at_message_end() {
    let error = decode_err(&masked(OpCode::Text, true, b"\xc3\x28"), &SERVER);
    assert_eq!(error, ProtocolError::InvalidUtf8);
    // A code point cut off by the final fragment.
    let stream = [
        masked(OpCode::Text, false, b"a"),
        masked(OpCode::Continuation, true, b"\xe2\x82"),
    ];
    assert_eq!(
        decode_err(&stream.concat(), &SERVER),
        ProtocolError::InvalidUtf8
    );
}

#[test]
fn error_close_too_short() {
    let error = decode_err(&masked(OpCode::Close, true, &[0x03]), &SERVER);
    assert_eq!(error, ProtocolError::CloseTooShort);
    assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
}

#[test]
fn error_invalid_close_code() {
    for code in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let frame = masked(OpCode::Close, true, &code.to_be_bytes());
        let error = decode_err(&frame, &SERVER);
        assert_eq!(error, ProtocolError::InvalidCloseCode(code));
        assert_eq!(CloseCode::from(&error), CloseCode::PROTOCOL);
    }
}

#[test]
fn valid_close_codes_are_reported() {
    for code in [1000u16, 1003, 1007, 1014, 3000, 4999] {
        let frame = frame::encode_close_masked(CloseCode(code), "bye", KEY);
        let events = decode_err_free(&frame);
        assert_eq!(
            events,
            [Owned::Close(Some(CloseCode(code)), "bye".to_owned())]
        );
    }
}

#[test]
fn error_close_reason_not_utf8() {
    let error = decode_err(&masked(OpCode::Close, true, b"\x03\xe8\xff"), &SERVER);
    assert_eq!(error, ProtocolError::CloseReasonNotUtf8);
    assert_eq!(CloseCode::from(&error), CloseCode::INVALID_PAYLOAD);
}

// Closing, stopping and failing.

#[test]
fn close_ends_decoding() {
    let stream = [
        frame::encode_close_masked(CloseCode::NORMAL, "", KEY).to_vec(),
        masked(OpCode::Text, true, b"ignored"),
    ]
    .concat();
    for cut in 0..=stream.len() {
        let mut decoder = Decoder::default();
        let events = feed_cut(&mut decoder, &stream, &[cut], &SERVER).unwrap();
        assert_eq!(
            events,
            [Owned::Close(Some(CloseCode::NORMAL), String::new())]
        );
        assert!(decoder.is_closed());
        assert!(!decoder.is_idle());
        assert_eq!(feed_cut(&mut decoder, &[0xff; 4], &[], &SERVER), Ok(vec![]));
    }
    let empty_close = masked(OpCode::Close, true, b"");
    assert_eq!(
        decode_err_free(&empty_close),
        [Owned::Close(None, String::new())]
    );
}

/// Decodes a stream that must not fail, without requiring the decoder to end idle.
fn decode_err_free(bytes: &[u8]) -> Vec<Owned> {
    feed_cut(&mut Decoder::default(), bytes, &[], &SERVER).unwrap()
}

#[test]
fn break_stops_the_feed_at_once() {
    let mut input = [
        masked(OpCode::Ping, true, b"1"),
        masked(OpCode::Ping, true, b"2"),
    ]
    .concat();
    let mut decoder = Decoder::default();
    let mut seen = 0;
    let result = decoder.feed(&mut input, &SERVER, |_| {
        seen += 1;
        ControlFlow::Break(())
    });
    assert_eq!((result, seen), (Ok(()), 1));
}

#[test]
fn failed_decoder_repeats_its_error() {
    let mut decoder = Decoder::default();
    let error = feed_cut(&mut decoder, &RFC_UNMASKED_HELLO, &[], &SERVER).unwrap_err();
    let again = feed_cut(&mut decoder, &RFC_MASKED_HELLO, &[], &SERVER);
    assert_eq!(again, Err(error));
    assert!(!decoder.is_idle());
}
