//! Sans-IO RFC 6455 codec: this module never touches a file descriptor.
//!
//! It owns the WebSocket wire format and nothing else. Bytes come in as slices that the
//! caller owns (a receive buffer lent by the ring); answers go out as values (`Event`s to
//! react to, `Bytes` frames to send). Nothing here reads a clock, a socket or a global.
//!
//! - `frame`: one frame header, parsed or encoded, and the `ProtocolError` rules.
//! - `message`: the per-connection streaming `Decoder` (reassembly, §5.4 fragmentation,
//!   incremental UTF-8, the message cap).
//! - `mask`: the payload XOR mask and a fast mask-key source for the load generator.
//! - `utf8`: a UTF-8 validator that carries an incomplete code point between chunks.
//! - `close`: close codes and close-frame payloads.
//!
//! Invariants:
//! - No `unsafe` anywhere in `ws/`.
//! - Limits are checked from the frame header before any memory is reserved.
//! - A `Decoder` between messages holds no heap memory (`is_idle()`).

pub mod close;
pub mod frame;
pub mod mask;
pub mod message;
pub mod utf8;

pub use close::CloseCode;
pub use frame::{Header, OpCode, ProtocolError, Role};
pub use message::{DataMode, Decoder, Event, Limits};
