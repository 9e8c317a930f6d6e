//! One WebSocket frame header (RFC 6455 §5.2): parsing, encoding and the rules it breaks.
//!
//! Owns the wire layout of a header and `ProtocolError`, the list of RFC rules a peer can
//! break, together with the close code each one earns (`From<&ProtocolError> for
//! CloseCode`). Payload reassembly lives in `message`; this file sees one header at a time.
//!
//! Invariants:
//! - `parse` consumes nothing and returns `Ok(None)` while the header is incomplete, and it
//!   fails as soon as the bytes present break a rule, before the rest of the header arrives.
//! - `parse` never returns a header that breaks a rule: no RSV bit, a known opcode, control
//!   frames final and at most 125 bytes, the mask bit right for the role, and
//!   `payload_len <= payload_max`.
//! - Encoders write the minimal length encoding (§5.2) and never more than
//!   `HEADER_BYTES_MAX` bytes of header; every `encode*` returning `Bytes` allocates once.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::ws::close::{CloseCode, CLOSE_REASON_BYTES_MAX};
use crate::ws::mask;

/// The longest frame header: 2 fixed bytes, 8 bytes of extended length, 4 of mask key.
pub const HEADER_BYTES_MAX: usize = 14;

/// The largest payload of a control frame (§5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// The frame opcode (§5.2, §11.8). Opcodes 3-7 and 11-15 are reserved and rejected.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// A further fragment of the message in progress.
    Continuation = 0,
    /// The first frame of a UTF-8 text message.
    Text = 1,
    /// The first frame of a binary message.
    Binary = 2,
    /// A close frame (§5.5.1).
    Close = 8,
    /// A ping, which the receiver answers with a pong (§5.5.2).
    Ping = 9,
    /// A pong, answering a ping or sent unsolicited as a heartbeat (§5.5.3).
    Pong = 10,
}

impl OpCode {
    /// Decodes the low four bits of the first header byte; `None` for reserved opcodes.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0 => Some(OpCode::Continuation),
            1 => Some(OpCode::Text),
            2 => Some(OpCode::Binary),
            8 => Some(OpCode::Close),
            9 => Some(OpCode::Ping),
            10 => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Whether this is a control opcode: the high bit of the opcode is set (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x08 != 0
    }
}

/// Which end of the connection this codec plays; it decides the masking rule (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Decodes masked client frames (an unmasked one is an error) and sends unmasked ones.
    Server,
    /// Decodes unmasked server frames (a masked one is an error) and sends masked ones.
    Client,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// FIN: this frame ends its message.
    pub fin: bool,
    /// What the payload is.
    pub opcode: OpCode,
    /// The masking key, present exactly when the mask bit is set.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
    /// The header length in bytes (2 to `HEADER_BYTES_MAX`); the payload starts there.
    pub header_len: usize,
}

/// A rule of RFC 6455 broken by the peer. Each is fatal: the connection is failed with
/// the close code `CloseCode::from(&error)` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// §5.2: RSV1-3 MUST be 0 unless an extension defining them was negotiated, and this
    /// node negotiates none.
    RsvBitsSet,
    /// §5.2: an endpoint receiving a reserved opcode (3-7, 11-15) MUST fail the
    /// connection. Carries the opcode.
    UnknownOpcode(u8),
    /// §5.5: control frames MUST NOT be fragmented (FIN clear on a control opcode).
    FragmentedControl,
    /// §5.5: control frames MUST have a payload of 125 bytes or less.
    ControlTooLong,
    /// §5.1: a server MUST close the connection on a frame from the client that is not
    /// masked.
    UnmaskedClientFrame,
    /// §5.1: a client MUST close the connection on a masked frame from the server.
    MaskedServerFrame,
    /// §5.2: in a 64-bit payload length the most significant bit MUST be 0.
    LengthTooLarge,
    /// §10.4: the message would exceed this endpoint's message cap (1009).
    MessageTooBig,
    /// §5.4: a continuation frame arrived while no fragmented message was in progress.
    UnexpectedContinuation,
    /// §5.4: a new text or binary frame arrived while a fragmented message was in
    /// progress; only continuation and control frames may come between its fragments.
    ExpectedContinuation,
    /// §8.1: a text message was not valid UTF-8 (1007).
    InvalidUtf8,
    /// §5.5.1: a close payload that is not empty must start with a 2-byte code, and this
    /// one has a single byte.
    CloseTooShort,
    /// §7.4: the close code is one a peer may not send (reserved, local-only such as
    /// 1005/1006/1015, or unassigned). Carries the code.
    InvalidCloseCode(u16),
    /// §5.5.1: the close reason after the code was not valid UTF-8 (1007).
    CloseReasonNotUtf8,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::RsvBitsSet => f.write_str("RSV bits set with no extension"),
            ProtocolError::UnknownOpcode(bits) => write!(f, "reserved opcode {bits}"),
            ProtocolError::FragmentedControl => f.write_str("fragmented control frame"),
            ProtocolError::ControlTooLong => f.write_str("control frame payload over 125 bytes"),
            ProtocolError::UnmaskedClientFrame => f.write_str("unmasked frame from a client"),
            ProtocolError::MaskedServerFrame => f.write_str("masked frame from a server"),
            ProtocolError::LengthTooLarge => f.write_str("64-bit payload length with MSB set"),
            ProtocolError::MessageTooBig => f.write_str("message over the size cap"),
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame with no message in progress")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new data frame inside a fragmented message")
            }
            ProtocolError::InvalidUtf8 => f.write_str("text message is not valid UTF-8"),
            ProtocolError::CloseTooShort => f.write_str("close payload of one byte"),
            ProtocolError::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            ProtocolError::CloseReasonNotUtf8 => f.write_str("close reason is not valid UTF-8"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<&ProtocolError> for CloseCode {
    /// What the peer hears when it breaks `error`: 1007 for bad UTF-8, 1009 for a message
    /// over the cap, and 1002 for every other protocol rule.
    fn from(error: &ProtocolError) -> CloseCode {
        match error {
            ProtocolError::InvalidUtf8 | ProtocolError::CloseReasonNotUtf8 => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::MessageTooBig => CloseCode::TOO_BIG,
            ProtocolError::RsvBitsSet
            | ProtocolError::UnknownOpcode(_)
            | ProtocolError::FragmentedControl
            | ProtocolError::ControlTooLong
            | ProtocolError::UnmaskedClientFrame
            | ProtocolError::MaskedServerFrame
            | ProtocolError::LengthTooLarge
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::CloseTooShort
            | ProtocolError::InvalidCloseCode(_) => CloseCode::PROTOCOL,
        }
    }
}

/// The 7-bit length value announcing a 16-bit extended length.
const LEN_16_MARKER: u8 = 126;
/// The 7-bit length value announcing a 64-bit extended length.
const LEN_64_MARKER: u8 = 127;

/// Parses the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is too short to hold the whole header; nothing is
/// consumed, and the caller retries with more bytes. Rules are checked as soon as the bytes
/// they need are present, in this order: RSV bits, opcode, fragmented control, control
/// length, mask bit for `role`, 64-bit length MSB, and `payload_len <= payload_max`.
///
/// Non-minimal length encodings are accepted. §5.2 says the minimal encoding MUST be
/// used, but rejecting a longer one protects nothing, and common implementations accept
/// it. The exception is a control frame: any extended length there is rejected as
/// `ControlTooLong` from the second byte alone, because a payload of at most 125 bytes
/// never needs one.
pub fn parse(buf: &[u8], role: Role, payload_max: u64) -> Result<Option<Header>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(ProtocolError::RsvBitsSet);
    }
    let bits = first & 0x0f;
    let opcode = OpCode::from_bits(bits).ok_or(ProtocolError::UnknownOpcode(bits))?;
    let fin = first & 0x80 != 0;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControl);
    }

    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    let masked = second & 0x80 != 0;
    let len_7 = second & 0x7f;
    if opcode.is_control() && usize::from(len_7) > CONTROL_PAYLOAD_BYTES_MAX {
        return Err(ProtocolError::ControlTooLong);
    }
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
        (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
        (Role::Server, true) | (Role::Client, false) => {}
    }

    let (payload_len, len_end) = match len_7 {
        LEN_16_MARKER => {
            let Some(bytes) = buf.get(2..4).and_then(|s| <[u8; 2]>::try_from(s).ok()) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes(bytes)), 4)
        }
        LEN_64_MARKER => {
            let Some(bytes) = buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthTooLarge);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    if payload_len > payload_max {
        return Err(ProtocolError::MessageTooBig);
    }

    let (mask, header_len) = if masked {
        let Some(key) = buf
            .get(len_end..len_end + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
        else {
            return Ok(None);
        };
        (Some(key), len_end + 4)
    } else {
        (None, len_end)
    };
    debug_assert!(header_len <= HEADER_BYTES_MAX);
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// The header length `encode_header` writes for this payload length and masking.
pub fn header_len(payload_len: usize, masked: bool) -> usize {
    let len_bytes = match payload_len {
        0..=125 => 0,
        126..=0xffff => 2,
        _ => 8,
    };
    2 + len_bytes + if masked { 4 } else { 0 }
}

/// Writes a frame header into `dst` with the minimal length encoding and returns its
/// length. `mask` is written as given; the caller masks the payload.
pub fn encode_header(
    dst: &mut [u8; HEADER_BYTES_MAX],
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    debug_assert!(!opcode.is_control() || (fin && payload_len <= CONTROL_PAYLOAD_BYTES_MAX));
    dst[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = 2;
    match payload_len {
        0..=125 => dst[1] = mask_bit | payload_len as u8,
        126..=0xffff => {
            dst[1] = mask_bit | LEN_16_MARKER;
            dst[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            len = 4;
        }
        _ => {
            dst[1] = mask_bit | LEN_64_MARKER;
            dst[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            len = 10;
        }
    }
    if let Some(key) = mask {
        dst[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    debug_assert_eq!(len, header_len(payload_len, mask.is_some()));
    len
}

/// Encodes a final, unmasked (server-to-client) frame in one allocation of exactly
/// header plus payload.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_once(opcode, payload, None)
}

/// Encodes a final, masked (client-to-server) frame in one allocation.
pub fn encode_masked(opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Bytes {
    encode_once(opcode, payload, Some(key))
}

/// Encodes an unmasked close frame. `reason` is cut on a character boundary so the
/// payload stays within the 125 bytes of a control frame.
pub fn encode_close(code: CloseCode, reason: &str) -> Bytes {
    let (payload, len) = close_payload(code, reason);
    encode(OpCode::Close, &payload[..len])
}

/// Encodes a masked close frame, with `reason` cut as in `encode_close`.
pub fn encode_close_masked(code: CloseCode, reason: &str, key: [u8; 4]) -> Bytes {
    let (payload, len) = close_payload(code, reason);
    encode_masked(OpCode::Close, &payload[..len], key)
}

/// Appends one frame to `dst`, masking the appended payload when `mask` is given; used to
/// coalesce several frames into one send.
pub fn encode_into(
    dst: &mut BytesMut,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let mut header = [0u8; HEADER_BYTES_MAX];
    let header_len = encode_header(&mut header, fin, opcode, payload.len(), mask);
    dst.reserve(header_len + payload.len());
    dst.put_slice(&header[..header_len]);
    let payload_start = dst.len();
    dst.put_slice(payload);
    if let Some(key) = mask {
        mask::unmask(&mut dst[payload_start..], key, 0);
    }
}

/// Encodes one final frame into a buffer whose capacity is exactly the frame length, so
/// that turning it into `Bytes` does not allocate again.
fn encode_once(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let mut header = [0u8; HEADER_BYTES_MAX];
    let header_len = encode_header(&mut header, true, opcode, payload.len(), mask);
    let mut frame = Vec::with_capacity(header_len + payload.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(payload);
    if let Some(key) = mask {
        mask::unmask(&mut frame[header_len..], key, 0);
    }
    debug_assert_eq!(frame.len(), frame.capacity());
    Bytes::from(frame)
}

/// Builds a close payload on the stack: the code, then as much of `reason` as fits
/// without splitting a character.
fn close_payload(code: CloseCode, reason: &str) -> ([u8; CONTROL_PAYLOAD_BYTES_MAX], usize) {
    debug_assert!(
        code.is_valid_on_wire(),
        "the node never sends close code {code}"
    );
    let mut reason_len = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let mut payload = [0u8; CONTROL_PAYLOAD_BYTES_MAX];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + reason_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
    (payload, 2 + reason_len)
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
