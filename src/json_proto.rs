//! The JSON mode of the client protocol (`GET /ws?format=json`, specified in PROTOCOL.md):
//! parsing one client command from a text frame, and encoding every node → client object.
//!
//! Sans-IO: commands come in as the bytes of one complete text message, answers go out
//! appended to a `BytesMut` (JSON text only; the caller frames it) or, for a published
//! message, as one complete WebSocket text frame in `Bytes` (`message_frame`).
//!
//! Invariants:
//! - `parse_command` never panics and never allocates more than a small multiple of
//!   `COMMAND_BYTES_MAX`: the length is checked before any parsing.
//! - Every parse failure is a `CommandError` naming the rule broken and, when the command
//!   carried a usable `id`, that id; its `code()` is what the client hears.
//! - A message's encoding is a function of (channel, offset, payload) only, so one publish
//!   can be encoded once for every JSON subscriber: text when the payload is valid UTF-8,
//!   `data_b64` otherwise, whatever frame opcode the publisher used.
//! - Channel names follow the one rule of the raw route and the admin API
//!   (`route::valid_name`), so a channel reads the same in every interface.
//! - Unknown fields of a command are ignored (newer clients may send more); unknown ops are
//!   an error: the protocol only ever adds fields and ops.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::route::valid_name;
use crate::ws::frame::{encode_header, header_len, HEADER_BYTES_MAX};
use crate::ws::OpCode;

/// The largest client command, in bytes of its text frame; a longer one closes with 1009.
pub const COMMAND_BYTES_MAX: usize = 4096;

/// Malformed or unknown commands in a row (no valid one between them) that close the
/// connection with 1008: the first `MALFORMED_COMMANDS_MAX - 1` get error replies, the
/// next one gets the close instead.
pub const MALFORMED_COMMANDS_MAX: u32 = 8;

/// The largest `id` a command may carry: the largest integer a JavaScript number holds
/// exactly, so a browser client can echo it back unchanged.
pub const ID_MAX: u64 = (1 << 53) - 1;

/// The longest epoch string accepted in `since` (the node's own are 16 characters).
pub const EPOCH_BYTES_MAX: usize = 64;

/// The longest token accepted by `refresh`.
pub const TOKEN_BYTES_MAX: usize = 2048;

/// Close code for a command over `COMMAND_BYTES_MAX` (message too big).
pub const CLOSE_TOO_LARGE: u16 = 1009;

/// Close code after `MALFORMED_COMMANDS_MAX` malformed commands in a row (policy).
pub const CLOSE_GARBAGE: u16 = 1008;

/// A position a resuming client has reached: the last message it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Since {
    /// The epoch the client saw that offset in (opaque to the client).
    pub epoch: Box<str>,
    /// The offset of the last message the client saw (0: none of this epoch).
    pub offset: u64,
}

/// A client publish's payload; its kind chooses the raw subscribers' frame opcode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// From `"data"`: UTF-8 text, sent to raw subscribers as a text frame.
    Text(Bytes),
    /// From `"data_b64"`: any bytes, sent to raw subscribers as a binary frame.
    Binary(Bytes),
}

impl Payload {
    /// The payload bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Payload::Text(bytes) | Payload::Binary(bytes) => bytes,
        }
    }
}

/// One client → node command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `{"op":"subscribe","id":N,"channel":"A"[,"since":{"epoch":"E","offset":K}]}`.
    Subscribe {
        id: u64,
        channel: Box<str>,
        since: Option<Since>,
    },
    /// `{"op":"unsubscribe","id":N,"channel":"A"}`.
    Unsubscribe { id: u64, channel: Box<str> },
    /// `{"op":"publish","id":N,"channel":"A","data":"…"}` or `"data_b64":"…"`.
    Publish {
        id: u64,
        channel: Box<str>,
        data: Payload,
    },
    /// `{"op":"pong"}`: the answer to the node's application-level ping.
    Pong,
    /// `{"op":"refresh","id":N,"token":"…"}`: reserved for token authentication; a node
    /// without it answers 400 "unsupported op".
    Refresh { id: u64, token: Box<str> },
}

/// The error codes of the protocol (HTTP-like numbers, see PROTOCOL.md).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed command, unknown op, bad field.
    BadRequest = 400,
    /// A `refresh` token that does not verify (SECURITY.md).
    Unauthorized = 401,
    /// Not allowed (client publish disabled, channel refused).
    Forbidden = 403,
    /// Unsubscribe from a channel the connection is not subscribed to.
    NotSubscribed = 404,
    /// Subscribe to a channel the connection is already subscribed to.
    AlreadySubscribed = 409,
    /// Command over `COMMAND_BYTES_MAX` (the connection is closed 1009 with it).
    TooLarge = 413,
    /// Too many subscriptions on this connection, or publishing too fast.
    TooMany = 429,
    /// The node cannot take it now (an inbox is full, draining); retry later.
    Busy = 503,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn number(self) -> u16 {
        self as u16
    }
}

/// The rule a command broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Longer than `COMMAND_BYTES_MAX`.
    TooLarge,
    /// A binary frame: commands are text frames (the caller reports it with this rule).
    BinaryFrame,
    /// Not a JSON text (or not UTF-8).
    NotJson,
    /// JSON, but not an object.
    NotObject,
    /// No `op` field, or not a string.
    MissingOp,
    /// An `op` this node does not know.
    UnknownOp,
    /// A required field is missing.
    MissingField(&'static str),
    /// A field has the wrong JSON type or is out of range.
    BadField(&'static str),
    /// The channel name breaks `[A-Za-z0-9_.:-]{1,128}`.
    InvalidChannel,
    /// `data_b64` is not padded standard base64.
    BadBase64,
    /// A publish carried both `data` and `data_b64`, or neither.
    DataAndDataB64,
}

/// Why a command was refused, and what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandError {
    /// The command's `id`, when it had a usable one (echoed in the error reply).
    pub id: Option<u64>,
    /// The rule broken.
    pub broken: Broken,
}

impl CommandError {
    /// The error code of the reply.
    pub fn code(&self) -> ErrorCode {
        match self.broken {
            Broken::TooLarge => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }

    /// The reason of the reply (also the close reason when the command is too large).
    pub fn reason(&self) -> &'static str {
        match self.broken {
            Broken::TooLarge => "command too large",
            Broken::BinaryFrame => "binary frame",
            Broken::NotJson => "malformed json",
            Broken::NotObject => "command is not an object",
            Broken::MissingOp => "missing op",
            Broken::UnknownOp => "unknown op",
            Broken::MissingField("id") => "missing id",
            Broken::MissingField("channel") => "missing channel",
            Broken::MissingField("token") => "missing token",
            Broken::MissingField(_) => "missing field",
            Broken::BadField("id") => "bad id",
            Broken::BadField("channel") => "bad channel",
            Broken::BadField("since") => "bad since",
            Broken::BadField("since.epoch") => "bad since.epoch",
            Broken::BadField("since.offset") => "bad since.offset",
            Broken::BadField("data") => "bad data",
            Broken::BadField("data_b64") => "bad data_b64",
            Broken::BadField("token") => "bad token",
            Broken::BadField(_) => "bad field",
            Broken::InvalidChannel => "invalid channel name",
            Broken::BadBase64 => "bad data_b64",
            Broken::DataAndDataB64 => "need exactly one of data, data_b64",
        }
    }

    /// The close code the connection gets at once, if any (only a too large command).
    pub fn close_code(&self) -> Option<u16> {
        (self.broken == Broken::TooLarge).then_some(CLOSE_TOO_LARGE)
    }
}

/// Whether a subscribe's resume found every missed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Every message after `since` follows, then live ones: nothing missed.
    Recovered,
    /// History was lost or never kept: the application must reload its state.
    NotRecovered,
}

/// Why an upgrade's query was refused (HTTP 400 before the upgrade, with this reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// `format` is given but is not `json`.
    UnknownFormat,
    /// A `channel` breaks `[A-Za-z0-9_.:-]{1,128}`.
    InvalidChannel,
    /// The same `channel` twice.
    RepeatedChannel,
    /// More `channel`s than `--max-subscriptions`.
    TooManyChannels,
}

impl QueryError {
    /// The reason in the 400 answer.
    pub fn reason(self) -> &'static str {
        match self {
            QueryError::UnknownFormat => "unknown format",
            QueryError::InvalidChannel => "invalid channel name",
            QueryError::RepeatedChannel => "repeated channel",
            QueryError::TooManyChannels => "too many channels",
        }
    }
}

/// Reads the query of `GET /ws?…`: `Ok(None)` without `format` (not a JSON-mode request),
/// `Ok(Some(channels))` with `format=json` (the `channel` parameters in order, each valid
/// and distinct, at most `subscriptions_max`). Other parameters are ignored. Channel names
/// need no percent-decoding: a valid one has no character that would be encoded.
pub fn parse_query(
    query: &str,
    subscriptions_max: usize,
) -> Result<Option<Vec<Box<str>>>, QueryError> {
    let mut json = false;
    let mut channels: Vec<Box<str>> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "format" if value == "json" => json = true,
            "format" => return Err(QueryError::UnknownFormat),
            "channel" => {
                if !valid_name(value) {
                    return Err(QueryError::InvalidChannel);
                }
                if channels.iter().any(|known| **known == *value) {
                    return Err(QueryError::RepeatedChannel);
                }
                if channels.len() == subscriptions_max {
                    return Err(QueryError::TooManyChannels);
                }
                channels.push(value.into());
            }
            _ => {}
        }
    }
    Ok(json.then_some(channels))
}

/// Parses one client command from the bytes of a text message.
pub fn parse_command(text: &[u8]) -> Result<Command, CommandError> {
    let fail = |id, broken| Err(CommandError { id, broken });
    if text.len() > COMMAND_BYTES_MAX {
        return fail(None, Broken::TooLarge);
    }
    let Ok(value) = serde_json::from_slice::<Value>(text) else {
        return fail(None, Broken::NotJson);
    };
    let Value::Object(fields) = value else {
        return fail(None, Broken::NotObject);
    };
    let Some(Value::String(op)) = fields.get("op") else {
        return fail(id_if_valid(&fields), Broken::MissingOp);
    };
    match op.as_str() {
        "pong" => return Ok(Command::Pong),
        "subscribe" | "unsubscribe" | "publish" | "refresh" => {}
        _ => return fail(id_if_valid(&fields), Broken::UnknownOp),
    }
    let id = match fields.get("id") {
        None => return fail(None, Broken::MissingField("id")),
        Some(value) => match value.as_u64().filter(|&id| id <= ID_MAX) {
            Some(id) => id,
            None => return fail(None, Broken::BadField("id")),
        },
    };
    let broken = |broken| CommandError {
        id: Some(id),
        broken,
    };
    if op == "refresh" {
        let token = string_field(&fields, "token").map_err(broken)?;
        if token.len() > TOKEN_BYTES_MAX {
            return Err(broken(Broken::BadField("token")));
        }
        return Ok(Command::Refresh {
            id,
            token: token.into(),
        });
    }
    let channel = string_field(&fields, "channel").map_err(broken)?;
    if !valid_name(channel) {
        return Err(broken(Broken::InvalidChannel));
    }
    let channel: Box<str> = channel.into();
    match op.as_str() {
        "subscribe" => {
            let since = match fields.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::Object(since)) => Some(parse_since(since).map_err(broken)?),
                Some(_) => return Err(broken(Broken::BadField("since"))),
            };
            Ok(Command::Subscribe { id, channel, since })
        }
        "unsubscribe" => Ok(Command::Unsubscribe { id, channel }),
        _ => {
            let data = parse_data(&fields).map_err(broken)?;
            Ok(Command::Publish { id, channel, data })
        }
    }
}

/// The command's `id` if it is a valid one, for errors found before the id is required.
fn id_if_valid(fields: &Map<String, Value>) -> Option<u64> {
    fields
        .get("id")
        .and_then(Value::as_u64)
        .filter(|&id| id <= ID_MAX)
}

/// A required string field.
fn string_field<'a>(fields: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, Broken> {
    match fields.get(name) {
        None => Err(Broken::MissingField(name)),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(Broken::BadField(name)),
    }
}

/// `"since":{"epoch":"E","offset":K}`.
fn parse_since(since: &Map<String, Value>) -> Result<Since, Broken> {
    let epoch = match since.get("epoch") {
        Some(Value::String(epoch)) if epoch.len() <= EPOCH_BYTES_MAX => epoch,
        _ => return Err(Broken::BadField("since.epoch")),
    };
    let Some(offset) = since.get("offset").and_then(Value::as_u64) else {
        return Err(Broken::BadField("since.offset"));
    };
    Ok(Since {
        epoch: epoch.as_str().into(),
        offset,
    })
}

/// A publish's `data` (text) or `data_b64` (bytes): exactly one of them.
fn parse_data(fields: &Map<String, Value>) -> Result<Payload, Broken> {
    match (fields.get("data"), fields.get("data_b64")) {
        (Some(Value::String(text)), None) => {
            Ok(Payload::Text(Bytes::copy_from_slice(text.as_bytes())))
        }
        (Some(_), None) => Err(Broken::BadField("data")),
        (None, Some(Value::String(encoded))) => BASE64
            .decode(encoded)
            .map(|bytes| Payload::Binary(Bytes::from(bytes)))
            .map_err(|_| Broken::BadBase64),
        (None, Some(_)) => Err(Broken::BadField("data_b64")),
        _ => Err(Broken::DataAndDataB64),
    }
}

/// Appends `{"op":"subscribed","id":N,"channel":"A","epoch":"E","offset":K,"recovered":B}`,
/// without `id` for a channel subscribed by the upgrade's query. `offset` is where the live
/// stream starts: replayed messages (when recovered) end at it, live ones are above it.
pub fn encode_subscribed(
    out: &mut BytesMut,
    id: Option<u64>,
    channel: &str,
    epoch: &str,
    offset: u64,
    recovery: Recovery,
) {
    out.put_slice(br#"{"op":"subscribed","#);
    if let Some(id) = id {
        out.put_slice(br#""id":"#);
        put_u64(out, id);
        out.put_u8(b',');
    }
    out.put_slice(br#""channel":"#);
    put_string(out, channel.as_bytes());
    out.put_slice(br#","epoch":"#);
    put_string(out, epoch.as_bytes());
    out.put_slice(br#","offset":"#);
    put_u64(out, offset);
    out.put_slice(match recovery {
        Recovery::Recovered => br#","recovered":true}"#.as_slice(),
        Recovery::NotRecovered => br#","recovered":false}"#.as_slice(),
    });
}

/// Appends `{"op":"unsubscribed","id":N,"channel":"A"}`.
pub fn encode_unsubscribed(out: &mut BytesMut, id: u64, channel: &str) {
    out.put_slice(br#"{"op":"unsubscribed","id":"#);
    put_u64(out, id);
    out.put_slice(br#","channel":"#);
    put_string(out, channel.as_bytes());
    out.put_u8(b'}');
}

/// Appends `{"op":"published","id":N,"channel":"A","epoch":"E","offset":K}`.
pub fn encode_published(out: &mut BytesMut, id: u64, channel: &str, epoch: &str, offset: u64) {
    out.put_slice(br#"{"op":"published","id":"#);
    put_u64(out, id);
    out.put_slice(br#","channel":"#);
    put_string(out, channel.as_bytes());
    out.put_slice(br#","epoch":"#);
    put_string(out, epoch.as_bytes());
    out.put_slice(br#","offset":"#);
    put_u64(out, offset);
    out.put_u8(b'}');
}

/// Appends `{"op":"error","id":N,"code":C,"reason":"…"}`, without `id` when the command
/// had no usable one.
pub fn encode_error(out: &mut BytesMut, id: Option<u64>, code: ErrorCode, reason: &str) {
    out.put_slice(br#"{"op":"error","#);
    if let Some(id) = id {
        out.put_slice(br#""id":"#);
        put_u64(out, id);
        out.put_u8(b',');
    }
    out.put_slice(br#""code":"#);
    put_u64(out, u64::from(code.number()));
    out.put_slice(br#","reason":"#);
    put_string(out, reason.as_bytes());
    out.put_u8(b'}');
}

/// Appends `{"op":"gap","channel":"A","epoch":"E","offset":K}`: messages of `A` before
/// offset `K` of epoch `E` (the message that follows) may never arrive (`--broker`).
pub fn encode_gap(out: &mut BytesMut, channel: &str, epoch: &str, offset: u64) {
    out.put_slice(br#"{"op":"gap","channel":"#);
    put_string(out, channel.as_bytes());
    out.put_slice(br#","epoch":"#);
    put_string(out, epoch.as_bytes());
    out.put_slice(br#","offset":"#);
    put_u64(out, offset);
    out.put_u8(b'}');
}

/// Appends the application-level heartbeat `{"op":"ping"}`.
pub fn encode_ping(out: &mut BytesMut) {
    out.put_slice(br#"{"op":"ping"}"#);
}

/// Appends `{"channel":"A","offset":K,"data":"…"}`, or `"data_b64"` when `payload` is not
/// valid UTF-8.
pub fn encode_message(out: &mut BytesMut, channel: &str, offset: u64, payload: &[u8]) {
    out.reserve(message_len(channel, offset, payload));
    out.put_slice(br#"{"channel":"#);
    put_string(out, channel.as_bytes());
    out.put_slice(br#","offset":"#);
    put_u64(out, offset);
    if std::str::from_utf8(payload).is_ok() {
        out.put_slice(br#","data":"#);
        put_string(out, payload);
    } else {
        out.put_slice(br#","data_b64":""#);
        let start = out.len();
        out.resize(start + base64_len(payload.len()), 0);
        let written = BASE64
            .encode_slice(payload, &mut out[start..])
            .expect("base64_len is the exact padded length");
        debug_assert_eq!(written, base64_len(payload.len()));
        out.put_u8(b'"');
    }
    out.put_u8(b'}');
}

/// One complete, unmasked WebSocket text frame holding `encode_message`'s object, in one
/// allocation of exactly its length: the frame every JSON subscriber of this publish
/// shares.
pub fn message_frame(channel: &str, offset: u64, payload: &[u8]) -> Bytes {
    let json_len = message_len(channel, offset, payload);
    let mut header = [0u8; HEADER_BYTES_MAX];
    let head_len = encode_header(&mut header, true, OpCode::Text, json_len, None);
    let mut out = BytesMut::with_capacity(head_len + json_len);
    out.put_slice(&header[..head_len]);
    encode_message(&mut out, channel, offset, payload);
    debug_assert_eq!(out.len(), header_len(json_len, false) + json_len);
    out.freeze()
}

/// The exact length of `encode_message`'s output.
pub fn message_len(channel: &str, offset: u64, payload: &[u8]) -> usize {
    let fixed =
        r#"{"channel":,"offset":}"#.len() + string_len(channel.as_bytes()) + u64_len(offset);
    if std::str::from_utf8(payload).is_ok() {
        fixed + r#","data":"#.len() + string_len(payload)
    } else {
        fixed + r#","data_b64":"""#.len() + base64_len(payload.len())
    }
}

fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

fn u64_len(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

fn put_u64(out: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// The escape of one byte of a UTF-8 JSON string, if it needs one.
fn escape(byte: u8) -> Option<&'static [u8]> {
    const CONTROL: [&[u8]; 32] = [
        b"\\u0000", b"\\u0001", b"\\u0002", b"\\u0003", b"\\u0004", b"\\u0005", b"\\u0006",
        b"\\u0007", b"\\b", b"\\t", b"\\n", b"\\u000b", b"\\f", b"\\r", b"\\u000e", b"\\u000f",
        b"\\u0010", b"\\u0011", b"\\u0012", b"\\u0013", b"\\u0014", b"\\u0015", b"\\u0016",
        b"\\u0017", b"\\u0018", b"\\u0019", b"\\u001a", b"\\u001b", b"\\u001c", b"\\u001d",
        b"\\u001e", b"\\u001f",
    ];
    match byte {
        0..=0x1f => Some(CONTROL[byte as usize]),
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        _ => None,
    }
}

/// The length of `put_string`'s output for UTF-8 `text`.
fn string_len(text: &[u8]) -> usize {
    2 + text
        .iter()
        .map(|&b| escape(b).map_or(1, <[u8]>::len))
        .sum::<usize>()
}

/// Appends `text` (valid UTF-8) as a quoted JSON string, escaping only what JSON requires.
fn put_string(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'"');
    let mut clean_from = 0;
    for (at, &byte) in text.iter().enumerate() {
        if let Some(escaped) = escape(byte) {
            out.put_slice(&text[clean_from..at]);
            out.put_slice(escaped);
            clean_from = at + 1;
        }
    }
    out.put_slice(&text[clean_from..]);
    out.put_u8(b'"');
}

#[cfg(test)]
#[path = "json_proto_tests.rs"]
mod tests;
