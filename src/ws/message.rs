//! The per-connection streaming decoder: bytes in, whole messages and control frames out.
//!
//! Owns reassembly (RFC 6455 §5.4), the message cap (§10.4), incremental UTF-8 checks
//! (§8.1) and close-payload checks (§5.5.1) for one connection. The caller hands in each
//! received chunk, which may cut frames at any byte; the decoder unmasks it in place and
//! reports `Event`s through a callback while the chunk is still borrowed, so a frame that
//! lies wholly inside the chunk is reported without a copy.
//!
//! Invariants:
//! - `Decoder::default()` allocates nothing, and a decoder between messages holds no heap
//!   memory: `message_buf` is dropped (not cleared) when a message completes, and
//!   `control_buf` when a control frame completes. `is_idle()` checks exactly this.
//! - Limits come before memory: the message cap is checked from each frame header, before
//!   a byte of its payload is reserved.
//! - `message_buf` only ever holds data of the message in progress, so it is empty
//!   whenever `message` is `None`; `message_bytes` counts that message's payload so far,
//!   kept or not, and is 0 whenever `message` is `None`.
//! - In `DataMode::Discard` nothing of a data message is kept: its framing, the message
//!   cap and its UTF-8 are checked as the bytes arrive, and it is reported with an empty
//!   payload, so a route that ignores client messages holds no memory for them.
//! - `size_of::<Decoder>() <= DECODER_BYTES_MAX`, checked at compile time.
//! - After an error the decoder is `Failed` and repeats the error; after a close frame it
//!   is `Closed` and ignores input. Either way it holds no heap memory.

use std::ops::ControlFlow;

use crate::ws::close::{self, CloseCode};
use crate::ws::frame::{
    self, Header, OpCode, ProtocolError, Role, CONTROL_PAYLOAD_BYTES_MAX, HEADER_BYTES_MAX,
};
use crate::ws::mask;
use crate::ws::utf8::Utf8Validator;

/// The most a `Decoder` may occupy inline; a reactor boxes one per busy connection. Set to
/// its size on 64-bit targets, so that growth is a deliberate change.
pub const DECODER_BYTES_MAX: usize = 104;

const _: () = assert!(std::mem::size_of::<Decoder>() <= DECODER_BYTES_MAX);

/// What the decoder accepts on one connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Which end this decoder plays; it decides which masking is required.
    pub role: Role,
    /// The largest message, summed over its fragments, in payload bytes.
    pub message_bytes_max: usize,
}

/// What the decoder does with the payload of data messages, chosen per `feed_with` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMode {
    /// Reassemble each message and report it with its payload.
    Keep,
    /// Check each message (framing, the message cap, UTF-8) as its bytes arrive, keep none
    /// of it, and report it with an empty payload: for routes that ignore client messages.
    /// Switching to it in the middle of a message drops what was kept of that message.
    Discard,
}

/// Something the peer said, borrowed from the input chunk or the decoder's buffer for
/// the duration of the callback.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message, already validated as UTF-8 (empty in `DataMode::Discard`).
    Text(&'a [u8]),
    /// A whole binary message (empty in `DataMode::Discard`).
    Binary(&'a [u8]),
    /// A ping; the caller owes a pong with the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame with its validated code and reason; the decoder is now closed.
    Close(Option<CloseCode>, &'a str),
}

/// The streaming decoder of one connection.
///
/// A control frame split across chunks is stashed in `control_buf`, a separate `Vec`
/// allocated only for that frame, rather than in an inline `[u8; 125]`: split control
/// frames are rare, and the inline array would double the size every decoder pays.
#[derive(Default, Debug)]
pub struct Decoder {
    /// The start of a frame header cut off at the end of the last chunk.
    header_stash: [u8; HEADER_BYTES_MAX],
    /// How many bytes of `header_stash` are in use; 0 unless the header is incomplete.
    header_stash_len: u8,
    /// The frame whose payload is being read: Some from its complete header until its
    /// last payload byte.
    frame: Option<Frame>,
    /// The data message in progress: Some from its first frame's header until its final
    /// frame completes.
    message: Option<MessageKind>,
    /// The payload of the data message in progress, when it cannot be borrowed from the
    /// input; capacity 0 outside a message.
    message_buf: Vec<u8>,
    /// Payload bytes of the data message in progress so far, kept or discarded: the
    /// message cap is checked against it.
    message_bytes: usize,
    /// The payload of a control frame split across chunks; capacity 0 otherwise.
    control_buf: Vec<u8>,
    /// UTF-8 state of the text message in progress, fed as payload bytes arrive.
    utf8: Utf8Validator,
    /// Whether the decoder still accepts input.
    status: Status,
}

/// The kind of data message being assembled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageKind {
    /// Its bytes must be UTF-8.
    Text,
    /// Any bytes.
    Binary,
}

/// What a frame's payload is for, decided once its header has passed the §5.4 rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameKind {
    /// Part (or all) of the data message in `Decoder::message`, which is of this kind.
    Data(MessageKind),
    /// A control frame, reported on its own.
    Control(ControlKind),
}

/// The kind of control frame being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControlKind {
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// A close frame.
    Close,
}

/// The frame whose payload is being read.
#[derive(Clone, Copy, Debug)]
struct Frame {
    /// What the payload is for.
    kind: FrameKind,
    /// Whether this frame ends its message.
    fin: bool,
    /// The masking key, if the frame is masked.
    mask: Option<[u8; 4]>,
    /// The payload length, already checked against the limits.
    payload_len: usize,
    /// How many payload bytes have been read.
    payload_done: usize,
}

/// Whether the decoder accepts input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Status {
    /// Decoding.
    #[default]
    Open,
    /// A close frame was reported; further input is ignored.
    Closed,
    /// The peer broke a rule; every further feed repeats the error.
    Failed(ProtocolError),
}

/// How the feed loop goes on after a step.
enum Progress {
    /// A frame completed; decode the next one.
    Next,
    /// The input ran out in the middle of a frame.
    NeedMore,
    /// The callback asked to stop, or a close frame was reported.
    Stop,
}

impl Progress {
    /// Maps the callback's answer onto the feed loop.
    fn after(flow: ControlFlow<()>) -> Progress {
        match flow {
            ControlFlow::Continue(()) => Progress::Next,
            ControlFlow::Break(()) => Progress::Stop,
        }
    }
}

impl Decoder {
    /// Decodes all of `data`, unmasking it in place and calling `on_event` for each
    /// message and control frame that completes.
    ///
    /// Frames may be cut at any byte; what does not complete is kept for the next call.
    /// If `on_event` returns `Break`, decoding stops at once and the rest of `data` is
    /// dropped (the caller is closing). On a close frame, the decoder reports it and then
    /// ignores all further input. On an error the decoder is failed for good.
    pub fn feed<F>(
        &mut self,
        data: &mut [u8],
        limits: &Limits,
        on_event: F,
    ) -> Result<(), ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        self.feed_with(data, limits, DataMode::Keep, on_event)
    }

    /// `feed`, with data messages kept or discarded as `mode` says.
    pub fn feed_with<F>(
        &mut self,
        data: &mut [u8],
        limits: &Limits,
        mode: DataMode,
        mut on_event: F,
    ) -> Result<(), ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        match &self.status {
            Status::Open => {}
            Status::Closed => return Ok(()),
            Status::Failed(error) => return Err(error.clone()),
        }
        self.feed_open(data, limits, mode, &mut on_event)
            .inspect_err(|error| {
                // The connection is being failed: drop the buffers now rather than with it.
                *self = Decoder {
                    status: Status::Failed(error.clone()),
                    ..Decoder::default()
                };
            })
    }

    /// Whether the decoder holds nothing: no partial header, frame or message and no
    /// heap memory, so it equals `Decoder::default()` and the caller may drop it.
    ///
    /// A closed or failed decoder is not idle, because dropping it would forget that.
    pub fn is_idle(&self) -> bool {
        let idle = self.header_stash_len == 0
            && self.frame.is_none()
            && self.message.is_none()
            && self.utf8.is_clean()
            && self.status == Status::Open;
        if idle {
            debug_assert_eq!(self.message_buf.capacity(), 0);
            debug_assert_eq!(self.control_buf.capacity(), 0);
        }
        idle
    }

    /// Heap bytes this decoder holds (reassembly and split control frames): what a shard's
    /// reassembly budget counts.
    pub fn buffered_bytes(&self) -> usize {
        self.message_buf.capacity() + self.control_buf.capacity()
    }

    /// Drops what is kept of the data message in progress, keeping the framing state; the
    /// rest of that message must then be fed in `DataMode::Discard`.
    pub fn discard_message(&mut self) {
        self.message_buf = Vec::new();
    }

    /// Whether a close frame has been reported; further input is ignored.
    pub fn is_closed(&self) -> bool {
        self.status == Status::Closed
    }

    /// The feed loop of an open decoder: headers and payloads in turn until `data` ends.
    fn feed_open<F>(
        &mut self,
        data: &mut [u8],
        limits: &Limits,
        mode: DataMode,
        on_event: &mut F,
    ) -> Result<(), ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        let mut pos = 0;
        loop {
            let frame = match self.frame {
                Some(frame) => frame,
                None => {
                    if pos == data.len() {
                        return Ok(());
                    }
                    let Some(header) = self.read_header(data, &mut pos, limits)? else {
                        return Ok(());
                    };
                    self.begin_frame(&header, limits)?
                }
            };
            match self.read_payload(frame, data, &mut pos, mode, on_event)? {
                Progress::Next => {}
                Progress::NeedMore | Progress::Stop => return Ok(()),
            }
        }
    }

    /// Reads the next header from the stash and `data[*pos..]`, advancing `pos` past the
    /// bytes used. Returns `None` when `data` ended first; its bytes are then stashed.
    fn read_header(
        &mut self,
        data: &[u8],
        pos: &mut usize,
        limits: &Limits,
    ) -> Result<Option<Header>, ProtocolError> {
        // The exact message cap is checked in `begin_frame`; this bound lets `parse` fail
        // a hopeless frame early while never rejecting a legal control frame.
        let frame_bytes_max = limits.message_bytes_max.max(CONTROL_PAYLOAD_BYTES_MAX) as u64;
        let input = &data[*pos..];
        let stash_len = usize::from(self.header_stash_len);
        if stash_len == 0 {
            return match frame::parse(input, limits.role, frame_bytes_max)? {
                Some(header) => {
                    *pos += header.header_len;
                    Ok(Some(header))
                }
                None => {
                    debug_assert!(input.len() < HEADER_BYTES_MAX);
                    self.header_stash[..input.len()].copy_from_slice(input);
                    self.header_stash_len = input.len() as u8;
                    *pos = data.len();
                    Ok(None)
                }
            };
        }

        // Top the stash up to the longest header; bytes past the real header end are
        // copied but not consumed.
        let take = (HEADER_BYTES_MAX - stash_len).min(input.len());
        self.header_stash[stash_len..stash_len + take].copy_from_slice(&input[..take]);
        match frame::parse(
            &self.header_stash[..stash_len + take],
            limits.role,
            frame_bytes_max,
        )? {
            Some(header) => {
                // The stash alone was too short, so the header ends inside `input`.
                debug_assert!(header.header_len > stash_len);
                *pos += header.header_len - stash_len;
                self.header_stash_len = 0;
                Ok(Some(header))
            }
            None => {
                // Fewer than `HEADER_BYTES_MAX` bytes in all, so `input` was used up.
                debug_assert_eq!(take, input.len());
                self.header_stash_len = (stash_len + take) as u8;
                *pos = data.len();
                Ok(None)
            }
        }
    }

    /// Applies the §5.4 fragmentation rules and the message cap to a new header, and
    /// records the frame whose payload follows.
    fn begin_frame(&mut self, header: &Header, limits: &Limits) -> Result<Frame, ProtocolError> {
        debug_assert!(self.message.is_some() || self.message_buf.capacity() == 0);
        debug_assert!(self.message.is_some() || self.message_bytes == 0);
        let kind = match (header.opcode, self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Continuation, Some(message)) => FrameKind::Data(message),
            (OpCode::Text, None) => FrameKind::Data(MessageKind::Text),
            (OpCode::Binary, None) => FrameKind::Data(MessageKind::Binary),
            // §5.4: control frames MAY be injected in the middle of a fragmented message.
            (OpCode::Ping, _) => FrameKind::Control(ControlKind::Ping),
            (OpCode::Pong, _) => FrameKind::Control(ControlKind::Pong),
            (OpCode::Close, _) => FrameKind::Control(ControlKind::Close),
        };
        if let FrameKind::Data(message) = kind {
            // Saturating, in case a caller lowers the cap in the middle of a message.
            let budget = limits.message_bytes_max.saturating_sub(self.message_bytes);
            if header.payload_len > budget as u64 {
                return Err(ProtocolError::MessageTooBig);
            }
            self.message = Some(message);
        }
        // Data frames fit the cap (a `usize`) and control frames fit 125 bytes, so the
        // conversion only fails on a bug, which is reported as the cap it would break.
        let payload_len =
            usize::try_from(header.payload_len).map_err(|_| ProtocolError::MessageTooBig)?;
        let frame = Frame {
            kind,
            fin: header.fin,
            mask: header.mask,
            payload_len,
            payload_done: 0,
        };
        self.frame = Some(frame);
        Ok(frame)
    }

    /// Reads as much of `frame`'s payload as `data[*pos..]` holds, unmasking it in place,
    /// and reports the frame or its message if that completes it.
    fn read_payload<F>(
        &mut self,
        frame: Frame,
        data: &mut [u8],
        pos: &mut usize,
        mode: DataMode,
        on_event: &mut F,
    ) -> Result<Progress, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        let available = (data.len() - *pos).min(frame.payload_len - frame.payload_done);
        let chunk = &mut data[*pos..*pos + available];
        *pos += available;
        if let Some(key) = frame.mask {
            mask::unmask(chunk, key, frame.payload_done);
        }
        match frame.kind {
            FrameKind::Control(kind) => self.read_control(frame, kind, chunk, on_event),
            FrameKind::Data(kind) => self.read_data(frame, kind, chunk, mode, on_event),
        }
    }

    /// Takes the next unmasked `chunk` of a control frame's payload.
    fn read_control<F>(
        &mut self,
        frame: Frame,
        kind: ControlKind,
        chunk: &[u8],
        on_event: &mut F,
    ) -> Result<Progress, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        if frame.payload_done == 0 && chunk.len() == frame.payload_len {
            self.frame = None;
            return self.control_complete(kind, chunk, on_event);
        }
        if chunk.is_empty() {
            // The input ended with the header: reserve nothing until payload arrives, so
            // that a payload then arriving whole is still borrowed.
            return Ok(Progress::NeedMore);
        }
        if self.control_buf.capacity() == 0 {
            self.control_buf.reserve_exact(frame.payload_len);
        }
        self.control_buf.extend_from_slice(chunk);
        let payload_done = frame.payload_done + chunk.len();
        if payload_done < frame.payload_len {
            self.frame = Some(Frame {
                payload_done,
                ..frame
            });
            return Ok(Progress::NeedMore);
        }
        self.frame = None;
        // Taking the buffer out drops it once reported, so no memory is kept.
        let payload = std::mem::take(&mut self.control_buf);
        self.control_complete(kind, &payload, on_event)
    }

    /// Takes the next unmasked `chunk` of a data frame's payload.
    fn read_data<F>(
        &mut self,
        frame: Frame,
        kind: MessageKind,
        chunk: &[u8],
        mode: DataMode,
        on_event: &mut F,
    ) -> Result<Progress, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        let whole = frame.payload_done == 0 && chunk.len() == frame.payload_len;
        if whole && frame.fin && self.message_bytes == 0 {
            // The whole message is this payload, inside the input: report it without a
            // copy. Earlier fragments, if any, were empty, so the UTF-8 state is clean.
            debug_assert!(self.utf8.is_clean());
            debug_assert_eq!(self.message_buf.capacity(), 0);
            self.frame = None;
            self.message = None;
            let payload = match mode {
                DataMode::Keep => chunk,
                DataMode::Discard => &[],
            };
            let event = match kind {
                MessageKind::Text => {
                    std::str::from_utf8(chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
                    Event::Text(payload)
                }
                MessageKind::Binary => Event::Binary(payload),
            };
            return Ok(Progress::after(on_event(event)));
        }

        if kind == MessageKind::Text {
            // Checked before buffering, so bad bytes fail before the frame completes.
            self.utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.message_bytes += chunk.len();
        match mode {
            DataMode::Keep if !chunk.is_empty() => {
                // Grow with the bytes that actually arrived, never with what the header
                // announces: a peer that announces 1 MiB and sends one byte holds one byte
                // (found while writing the decoder fuzz target). Doubling keeps it
                // amortised.
                self.message_buf.extend_from_slice(chunk);
            }
            DataMode::Keep => {}
            // Anything kept before the switch to discarding goes now.
            DataMode::Discard if self.message_buf.capacity() > 0 => self.discard_message(),
            DataMode::Discard => {}
        }
        let payload_done = frame.payload_done + chunk.len();
        if payload_done < frame.payload_len {
            self.frame = Some(Frame {
                payload_done,
                ..frame
            });
            return Ok(Progress::NeedMore);
        }
        self.frame = None;
        if !frame.fin {
            return Ok(Progress::Next);
        }

        if kind == MessageKind::Text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.message = None;
        self.message_bytes = 0;
        // Taking the buffer out releases it once reported: an idle decoder holds no memory.
        let message = std::mem::take(&mut self.message_buf);
        let event = match kind {
            MessageKind::Text => Event::Text(&message),
            MessageKind::Binary => Event::Binary(&message),
        };
        Ok(Progress::after(on_event(event)))
    }

    /// Reports a complete control frame.
    fn control_complete<F>(
        &mut self,
        kind: ControlKind,
        payload: &[u8],
        on_event: &mut F,
    ) -> Result<Progress, ProtocolError>
    where
        F: FnMut(Event<'_>) -> ControlFlow<()>,
    {
        match kind {
            ControlKind::Ping => Ok(Progress::after(on_event(Event::Ping(payload)))),
            ControlKind::Pong => Ok(Progress::after(on_event(Event::Pong(payload)))),
            ControlKind::Close => {
                let (code, reason) = close::parse_close_payload(payload)?;
                // Decoding ends here whatever the callback answers.
                let _ = on_event(Event::Close(code, reason));
                *self = Decoder {
                    status: Status::Closed,
                    ..Decoder::default()
                };
                Ok(Progress::Stop)
            }
        }
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
