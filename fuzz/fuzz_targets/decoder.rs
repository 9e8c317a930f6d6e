//! Fuzzes `ws::Decoder`, the per-connection streaming decoder, differentially: the same
//! stream is fed in one piece and cut into chunks, and both must report the same events
//! and end the same way.
//!
//! Input layout (so that seeds stay readable):
//! - byte 0: bit 0 picks the role (0 server, 1 client), bits 1-4 index `CAPS` for
//!   `message_bytes_max`, bits 5-7 pick how the stream is cut (see `cuts`);
//! - bytes 1-3: the cut sizes, used cyclically;
//! - the rest: the bytes received on the connection.
//!
//! Checked besides "no panic": text is UTF-8, data messages fit the cap, control payloads
//! fit 125 bytes, a close carries a code a peer may send and a reason of at most 123
//! bytes; after a close nothing more is reported, after an error every feed repeats it;
//! and a decoder stopped by the callback takes further input without panicking.

#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;

use ringpush::ws::close::CLOSE_REASON_BYTES_MAX;
use ringpush::ws::frame::CONTROL_PAYLOAD_BYTES_MAX;
use ringpush::ws::{CloseCode, Decoder, Event, Limits, ProtocolError, Role};

/// Message caps: the edges of the 7-bit and 16-bit lengths, tiny caps below the control
/// limit, and the node's default (1 MiB). All stay far below libFuzzer's malloc limit,
/// since the decoder reserves a whole frame once its header passes the cap.
const CAPS: [usize; 16] = [
    0,
    1,
    2,
    3,
    7,
    8,
    16,
    124,
    125,
    126,
    1000,
    0xffff,
    0x1_0000,
    0x1_0001,
    1 << 20,
    16 << 20,
];

/// The bytes before the stream: the config byte and three cut sizes.
const PREFIX_BYTES: usize = 4;

/// An event copied out of the callback, so that runs can be compared.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<CloseCode>, String),
}

/// How a run ended: the events in order, and the first error if any.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Owned>,
    error: Option<ProtocolError>,
    closed: bool,
    idle: bool,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < PREFIX_BYTES {
        return;
    }
    let config = data[0];
    let role = if config & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let limits = Limits {
        role,
        message_bytes_max: CAPS[usize::from((config >> 1) & 0x0f)],
    };
    let mode = config >> 5;
    let sizes = [data[1], data[2], data[3]];
    let stream = &data[PREFIX_BYTES..];

    let whole = run(stream, &[stream.len()], &limits);
    let chunks = cuts(stream.len(), mode, sizes);
    let split = run(stream, &chunks, &limits);
    assert_eq!(
        whole, split,
        "one piece and {chunks:?} disagree, limits {limits:?}"
    );
    // Byte at a time is the harshest cut; bound it so that big inputs stay fast.
    if stream.len() <= 256 {
        let bytes = vec![1; stream.len()];
        assert_eq!(
            whole,
            run(stream, &bytes, &limits),
            "byte at a time, {limits:?}"
        );
    }

    stop_early(stream, &chunks, &limits, usize::from(sizes[0] % 4));
});

/// Chunk lengths summing to `len`. An empty chunk is a legal (if useless) feed, so modes
/// 0 and 1 produce some.
fn cuts(len: usize, mode: u8, sizes: [u8; 3]) -> Vec<usize> {
    let pick: fn(u8) -> usize = match mode {
        0 => |b| usize::from(b % 4),
        1 => |b| usize::from(b % 17),
        2 => |b| usize::from(b % 15) + 1,
        3 => |b| usize::from(b) + 1,
        4 => |b| usize::from(b) * 64 + 1,
        // Two pieces, cut where the three bytes point.
        5 => {
            let at = (usize::from(sizes[0]) << 8 | usize::from(sizes[1])) % (len + 1);
            return vec![at, len - at];
        }
        // Three pieces, so a header can be cut twice.
        6 => {
            let first = usize::from(sizes[0]) % (len + 1);
            let second = usize::from(sizes[1]) % (len - first + 1);
            return vec![first, second, len - first - second];
        }
        _ => |b| usize::from(b % 3) + 1,
    };
    let mut chunks = Vec::new();
    let mut done = 0;
    let mut empty_run = 0;
    for &size in sizes.iter().cycle() {
        if done == len {
            break;
        }
        let mut size = pick(size).min(len - done);
        if size == 0 {
            empty_run += 1;
            // Three empty chunks in a row would loop forever.
            if empty_run == sizes.len() {
                size = 1;
            }
        }
        if size > 0 {
            empty_run = 0;
        }
        chunks.push(size);
        done += size;
    }
    chunks
}

/// Feeds `stream` cut into `chunks` to a fresh decoder, checking every event and what the
/// decoder does after it closes or fails.
fn run(stream: &[u8], chunks: &[usize], limits: &Limits) -> Outcome {
    let mut input = stream.to_vec();
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    let mut error = None;
    let mut start = 0;
    for &len in chunks {
        let chunk = &mut input[start..start + len];
        start += len;
        let closed_before = decoder.is_closed();
        let before = events.len();
        let result = decoder.feed(chunk, limits, |event| {
            events.push(check_event(event, limits));
            ControlFlow::Continue(())
        });
        if closed_before {
            assert_eq!(result, Ok(()), "a closed decoder failed");
            assert_eq!(
                events.len(),
                before,
                "a closed decoder reported {:?}",
                events
            );
        }
        match (&error, result) {
            (None, Ok(())) => {}
            (None, Err(new)) => error = Some(new),
            (Some(old), result) => {
                assert_eq!(
                    result.as_ref(),
                    Err(old),
                    "a failed decoder changed its mind"
                );
                assert_eq!(
                    events.len(),
                    before,
                    "a failed decoder reported {:?}",
                    events
                );
            }
        }
        if let Some(Owned::Close(..)) = events.last() {
            assert!(
                decoder.is_closed(),
                "a close frame did not close the decoder"
            );
        }
    }
    assert_eq!(start, stream.len());

    // Whatever follows a close or an error changes nothing.
    let closed = decoder.is_closed();
    let idle = decoder.is_idle();
    if error.is_some() || closed {
        assert!(!idle, "a closed or failed decoder claims to be idle");
        let mut more = stream.to_vec();
        more.extend_from_slice(&[0x81, 0x80, 0, 0, 0, 0, 0x81, 0x00]);
        let again = decoder.feed(&mut more, limits, |event| {
            panic!("reported {event:?} after a close or an error")
        });
        assert_eq!(again.err(), error);
        assert_eq!(decoder.is_closed(), closed);
    }
    Outcome {
        events,
        error,
        closed,
        idle,
    }
}

/// Checks one event against the limits and copies it out.
fn check_event(event: Event<'_>, limits: &Limits) -> Owned {
    match event {
        Event::Text(text) => {
            assert!(text.len() <= limits.message_bytes_max, "text over the cap");
            assert!(
                std::str::from_utf8(text).is_ok(),
                "text is not UTF-8: {text:?}"
            );
            Owned::Text(text.to_vec())
        }
        Event::Binary(bytes) => {
            assert!(
                bytes.len() <= limits.message_bytes_max,
                "binary over the cap"
            );
            Owned::Binary(bytes.to_vec())
        }
        Event::Ping(bytes) => {
            assert!(bytes.len() <= CONTROL_PAYLOAD_BYTES_MAX, "long ping");
            Owned::Ping(bytes.to_vec())
        }
        Event::Pong(bytes) => {
            assert!(bytes.len() <= CONTROL_PAYLOAD_BYTES_MAX, "long pong");
            Owned::Pong(bytes.to_vec())
        }
        Event::Close(code, reason) => {
            if let Some(code) = code {
                assert!(code.is_valid_on_wire(), "close code {code} passed");
            } else {
                assert!(reason.is_empty(), "a reason without a code");
            }
            assert!(reason.len() <= CLOSE_REASON_BYTES_MAX, "long close reason");
            Owned::Close(code, reason.to_owned())
        }
    }
}

/// Stops decoding at event number `stop_at` (the caller is closing), then keeps feeding
/// the remaining chunks: nothing may panic, and events keep their guarantees.
fn stop_early(stream: &[u8], chunks: &[usize], limits: &Limits, stop_at: usize) {
    let mut input = stream.to_vec();
    let mut decoder = Decoder::default();
    let mut seen = 0;
    let mut start = 0;
    for &len in chunks {
        let chunk = &mut input[start..start + len];
        start += len;
        let result = decoder.feed(chunk, limits, |event| {
            check_event(event, limits);
            seen += 1;
            if seen == stop_at + 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if result.is_err() {
            break;
        }
    }
}
