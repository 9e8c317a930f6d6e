//! Fuzzes `ws::frame::parse`, the frame header parser, with the raw input as the bytes
//! received so far.
//!
//! Each input is parsed for both roles and a handful of payload caps. Besides "no panic",
//! it checks what `frame.rs` promises:
//! - a header is at most `HEADER_BYTES_MAX` bytes and lies inside the input;
//! - it breaks no rule: payload within the cap, mask bit right for the role, control
//!   frames final and at most 125 bytes;
//! - nothing past the header is looked at, and every shorter prefix of a good header is
//!   `Ok(None)`, never an error (rules fail only on bytes that break them);
//! - re-encoding the header with `encode_header` parses back to the same frame;
//! - the word-at-a-time `mask::unmask` agrees with `mask::unmask_scalar` on the payload.

#![no_main]

use libfuzzer_sys::fuzz_target;

use ringpush::ws::frame::{self, Role, CONTROL_PAYLOAD_BYTES_MAX, HEADER_BYTES_MAX};
use ringpush::ws::mask;

/// Payload caps worth telling apart: none, the control limit, the 16-bit edge, the
/// 64-bit edge (MSB must be clear) and no cap at all.
const PAYLOAD_MAXES: [u64; 6] = [0, 125, 126, 0xffff, i64::MAX as u64, u64::MAX];

fuzz_target!(|data: &[u8]| {
    for role in [Role::Server, Role::Client] {
        for payload_max in PAYLOAD_MAXES {
            check(data, role, payload_max);
        }
    }
});

fn check(data: &[u8], role: Role, payload_max: u64) {
    let result = frame::parse(data, role, payload_max);
    let header = match result {
        Ok(Some(header)) => header,
        Ok(None) => {
            // Short input: no complete header can be this short unless it is incomplete.
            assert!(
                data.len() < HEADER_BYTES_MAX,
                "Ok(None) on {} bytes",
                data.len()
            );
            return;
        }
        Err(error) => {
            // More bytes never undo an error: the rule was broken by the bytes present.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0xff; HEADER_BYTES_MAX]);
            assert_eq!(frame::parse(&longer, role, payload_max), Err(error));
            return;
        }
    };

    assert!(header.header_len <= HEADER_BYTES_MAX, "{header:?}");
    assert!(
        header.header_len <= data.len(),
        "{header:?} from {} bytes",
        data.len()
    );
    assert!(header.header_len >= 2, "{header:?}");
    assert!(
        header.payload_len <= payload_max,
        "{header:?} over {payload_max}"
    );
    assert_eq!(header.payload_len >> 63, 0, "{header:?}");
    match role {
        Role::Server => assert!(header.mask.is_some(), "unmasked client frame {header:?}"),
        Role::Client => assert!(header.mask.is_none(), "masked server frame {header:?}"),
    }
    if header.opcode.is_control() {
        assert!(header.fin, "fragmented control {header:?}");
        assert!(
            header.payload_len <= CONTROL_PAYLOAD_BYTES_MAX as u64,
            "long control {header:?}"
        );
    }

    // Nothing past the header matters, and no prefix of it is an error.
    let exact = &data[..header.header_len];
    assert_eq!(frame::parse(exact, role, payload_max), Ok(Some(header)));
    for cut in 0..header.header_len {
        assert_eq!(
            frame::parse(&data[..cut], role, payload_max),
            Ok(None),
            "prefix of {cut} bytes of {header:?}"
        );
    }

    // Re-encoding gives the minimal encoding of the same frame.
    if let Ok(payload_len) = usize::try_from(header.payload_len) {
        let mut encoded = [0u8; HEADER_BYTES_MAX];
        let encoded_len = frame::encode_header(
            &mut encoded,
            header.fin,
            header.opcode,
            payload_len,
            header.mask,
        );
        assert_eq!(
            encoded_len,
            frame::header_len(payload_len, header.mask.is_some())
        );
        assert!(
            encoded_len <= header.header_len,
            "{header:?} re-encoded in {encoded_len}"
        );
        let reparsed = frame::parse(&encoded[..encoded_len], role, payload_max)
            .expect("a re-encoded header breaks no rule")
            .expect("a re-encoded header is complete");
        assert_eq!(reparsed.fin, header.fin);
        assert_eq!(reparsed.opcode, header.opcode);
        assert_eq!(reparsed.mask, header.mask);
        assert_eq!(reparsed.payload_len, header.payload_len);
        assert_eq!(reparsed.header_len, encoded_len);
    }

    // The fast unmask agrees with the scalar one at every key phase and alignment.
    if let Some(key) = header.mask {
        let payload = &data[header.header_len..];
        let offset = usize::from(data[0]);
        let align = data.len() % 8;
        let mut fast = vec![0u8; align];
        fast.extend_from_slice(payload);
        let mut scalar = payload.to_vec();
        mask::unmask(&mut fast[align..], key, offset);
        mask::unmask_scalar(&mut scalar, key, offset);
        assert_eq!(
            fast[align..],
            scalar[..],
            "unmask at offset {offset}, align {align}"
        );
        // Masking is its own inverse.
        mask::unmask(&mut fast[align..], key, offset);
        assert_eq!(&fast[align..], payload);
    }
}
