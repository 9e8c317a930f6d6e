//! Unit tests of `frame.rs` (kept beside it, out of the code's way): the RFC 6455 §5.7
//! examples and their short prefixes, length encodings, close reasons and codes, each rule
//! failing from the first byte that breaks it, and header round trips (proptest).

use proptest::prelude::*;

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const NO_CAP: u64 = u64::MAX >> 1;

/// The §5.7 examples as (bytes, role that receives them).
fn rfc_single_frames() -> Vec<(Vec<u8>, Role)> {
    vec![
        (vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], Role::Client),
        (
            vec![
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            Role::Server,
        ),
        (vec![0x01, 0x03, 0x48, 0x65, 0x6c], Role::Client),
        (vec![0x80, 0x02, 0x6c, 0x6f], Role::Client),
        (vec![0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], Role::Client),
        (
            vec![
                0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ],
            Role::Server,
        ),
    ]
}

#[test]
fn rfc_headers_parse_and_short_prefixes_wait() {
    for (bytes, role) in rfc_single_frames() {
        let header = parse(&bytes, role, NO_CAP).unwrap().unwrap();
        assert_eq!(
            header.header_len as u64 + header.payload_len,
            bytes.len() as u64
        );
        for cut in 0..header.header_len {
            assert_eq!(
                parse(&bytes[..cut], role, NO_CAP),
                Ok(None),
                "{bytes:x?} cut {cut}"
            );
        }
    }
}

#[test]
fn rfc_extended_lengths() {
    let header = parse(&[0x82, 0x7e, 0x01, 0x00], Role::Client, NO_CAP)
        .unwrap()
        .unwrap();
    assert_eq!((header.payload_len, header.header_len), (256, 4));
    let bytes = [0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00];
    let header = parse(&bytes, Role::Client, NO_CAP).unwrap().unwrap();
    assert_eq!((header.payload_len, header.header_len), (65536, 10));
}

#[test]
fn encoders_reproduce_rfc_examples() {
    assert_eq!(&encode(OpCode::Text, b"Hello")[..], b"\x81\x05Hello");
    assert_eq!(
        &encode_masked(OpCode::Text, b"Hello", KEY)[..],
        [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
    );
    assert_eq!(&encode(OpCode::Ping, b"Hello")[..], b"\x89\x05Hello");
    assert_eq!(
        &encode_masked(OpCode::Pong, b"Hello", KEY)[..],
        [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
    );
    let mut fragments = BytesMut::new();
    encode_into(&mut fragments, false, OpCode::Text, b"Hel", None);
    encode_into(&mut fragments, true, OpCode::Continuation, b"lo", None);
    assert_eq!(&fragments[..], b"\x01\x03Hel\x80\x02lo");

    let payload = vec![0xab; 256];
    let frame = encode(OpCode::Binary, &payload);
    assert_eq!(&frame[..4], [0x82, 0x7e, 0x01, 0x00]);
    assert_eq!(&frame[4..], &payload[..]);
    let payload = vec![0xcd; 65536];
    let frame = encode(OpCode::Binary, &payload);
    assert_eq!(&frame[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
    assert_eq!(frame.len(), 10 + 65536);
}

#[test]
fn encode_allocates_exactly_the_frame() {
    // `Bytes::from(Vec)` keeps the allocation when length equals capacity; the
    // debug_assert in `encode_once` pins that, and here the length is checked.
    for len in [0, 1, 125, 126, 65535, 65536] {
        let frame = encode(OpCode::Binary, &vec![0; len]);
        assert_eq!(frame.len(), header_len(len, false) + len);
    }
}

#[test]
fn minimal_length_boundaries() {
    for (len, expected) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let mut header = [0u8; HEADER_BYTES_MAX];
        assert_eq!(
            encode_header(&mut header, true, OpCode::Binary, len, None),
            expected
        );
        assert_eq!(
            encode_header(&mut header, true, OpCode::Binary, len, Some(KEY)),
            expected + 4
        );
    }
}

#[test]
fn non_minimal_length_is_accepted() {
    // 5 bytes announced through a 16-bit and a 64-bit extended length.
    let header = parse(&[0x82, 0x7e, 0x00, 0x05], Role::Client, NO_CAP)
        .unwrap()
        .unwrap();
    assert_eq!(header.payload_len, 5);
    let bytes = [0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 5];
    assert_eq!(
        parse(&bytes, Role::Client, NO_CAP)
            .unwrap()
            .unwrap()
            .payload_len,
        5
    );
}

#[test]
fn close_reason_is_cut_on_a_char_boundary() {
    // 61 two-byte characters are 122 bytes; one more would reach 124, over the 123
    // left after the code, so exactly 61 survive.
    let reason = "é".repeat(70);
    let frame = encode_close(CloseCode::GOING_AWAY, &reason);
    assert_eq!(frame[1] as usize, 2 + 122);
    let (code, text) = crate::ws::close::parse_close_payload(&frame[2..]).unwrap();
    assert_eq!(
        (code, text),
        (Some(CloseCode::GOING_AWAY), "é".repeat(61).as_str())
    );
    let frame = encode_close(CloseCode::NORMAL, &"a".repeat(200));
    assert_eq!(frame.len(), 2 + 125);

    let frame = encode_close_masked(CloseCode::NORMAL, "bye", KEY);
    let header = parse(&frame, Role::Server, NO_CAP).unwrap().unwrap();
    let mut payload = frame[header.header_len..].to_vec();
    mask::unmask(&mut payload, KEY, 0);
    assert_eq!(payload, b"\x03\xe8bye");
}

#[test]
fn close_codes_map_per_rule() {
    let protocol = [
        ProtocolError::RsvBitsSet,
        ProtocolError::UnknownOpcode(3),
        ProtocolError::FragmentedControl,
        ProtocolError::ControlTooLong,
        ProtocolError::UnmaskedClientFrame,
        ProtocolError::MaskedServerFrame,
        ProtocolError::LengthTooLarge,
        ProtocolError::UnexpectedContinuation,
        ProtocolError::ExpectedContinuation,
        ProtocolError::CloseTooShort,
        ProtocolError::InvalidCloseCode(1005),
    ];
    for error in &protocol {
        assert_eq!(CloseCode::from(error), CloseCode::PROTOCOL, "{error}");
    }
    assert_eq!(
        CloseCode::from(&ProtocolError::InvalidUtf8),
        CloseCode::INVALID_PAYLOAD
    );
    assert_eq!(
        CloseCode::from(&ProtocolError::CloseReasonNotUtf8),
        CloseCode::INVALID_PAYLOAD
    );
    assert_eq!(
        CloseCode::from(&ProtocolError::MessageTooBig),
        CloseCode::TOO_BIG
    );
}

#[test]
fn rsv_bits_fail_from_the_first_byte() {
    for rsv in [0x40, 0x20, 0x10] {
        assert_eq!(
            parse(&[0x81 | rsv], Role::Server, NO_CAP),
            Err(ProtocolError::RsvBitsSet)
        );
    }
}

#[test]
fn reserved_opcodes_fail_from_the_first_byte() {
    for bits in (3..=7).chain(11..=15) {
        let error = parse(&[0x80 | bits], Role::Server, NO_CAP);
        assert_eq!(error, Err(ProtocolError::UnknownOpcode(bits)));
    }
}

#[test]
fn fragmented_control_fails_from_the_first_byte() {
    assert_eq!(
        parse(&[0x09], Role::Server, NO_CAP),
        Err(ProtocolError::FragmentedControl)
    );
}

#[test]
fn long_control_fails_from_the_second_byte() {
    // 126 announces a 16-bit length, so a 126-byte ping fails before the length arrives.
    let error = parse(&[0x89, 0x80 | 126], Role::Server, NO_CAP);
    assert_eq!(error, Err(ProtocolError::ControlTooLong));
    assert_eq!(
        parse(&[0x88, 127], Role::Client, NO_CAP),
        Err(ProtocolError::ControlTooLong)
    );
    assert!(parse(&[0x89, 0x80 | 125], Role::Server, NO_CAP).is_ok());
}

#[test]
fn mask_bit_must_match_the_role() {
    let error = parse(&[0x81, 0x05], Role::Server, NO_CAP);
    assert_eq!(error, Err(ProtocolError::UnmaskedClientFrame));
    let error = parse(&[0x81, 0x85], Role::Client, NO_CAP);
    assert_eq!(error, Err(ProtocolError::MaskedServerFrame));
}

#[test]
fn length_msb_fails_before_the_mask_key() {
    let bytes = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        parse(&bytes, Role::Server, NO_CAP),
        Err(ProtocolError::LengthTooLarge)
    );
}

#[test]
fn payload_cap_fails_before_the_mask_key() {
    let bytes = [0x82, 0xfe, 0x01, 0x00];
    assert_eq!(
        parse(&bytes, Role::Server, 255),
        Err(ProtocolError::MessageTooBig)
    );
    assert_eq!(parse(&bytes, Role::Server, 256), Ok(None));
}

fn any_opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![
        Just(OpCode::Continuation),
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Close),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
    ]
}

proptest! {
    #[test]
    fn header_round_trips(
        opcode in any_opcode(),
        fin in any::<bool>(),
        len in prop_oneof![0usize..=130, 65530usize..=65540, 0usize..=1 << 40],
        mask in proptest::option::of(any::<[u8; 4]>()),
    ) {
        // Control frames are final and short by rule, so bend the inputs to fit.
        let fin = fin || opcode.is_control();
        let len = if opcode.is_control() { len % 126 } else { len };
        let role = if mask.is_some() { Role::Server } else { Role::Client };
        let mut bytes = [0u8; HEADER_BYTES_MAX];
        let written = encode_header(&mut bytes, fin, opcode, len, mask);
        let header = parse(&bytes[..written], role, NO_CAP).unwrap().unwrap();
        prop_assert_eq!(header, Header {
            fin,
            opcode,
            mask,
            payload_len: len as u64,
            header_len: written,
        });
        prop_assert_eq!(parse(&bytes[..written - 1], role, NO_CAP), Ok(None));
    }
}
