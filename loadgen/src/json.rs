//! The client side of the node's JSON mode (PROTOCOL.md): reading the objects the node
//! sends, and writing the few commands the load generator sends (`pong`, `subscribe`).
//!
//! Messages are the hot path (one per delivery), so they are read by a scan of the exact
//! shape `ringpush::json_proto::encode_message` writes (`{"channel":"A","offset":K,"data":…}`
//! or `"data_b64"`), decoding the payload into a caller's scratch buffer that is reused from
//! one message to the next. Anything else (control objects, or a message with fields a
//! newer node may add) goes through `serde_json`, which also covers any shape the scan does
//! not recognise.
//!
//! Invariants:
//! - `parse` never panics on any input; what it cannot read is `Server::Unreadable`.
//! - A message read by the scan and the same message read by `serde_json` give the same
//!   channel, offset and payload bytes (checked by the tests below on the node's encoder).
//! - The scan allocates nothing: it borrows the channel from the frame and writes the
//!   payload into the scratch buffer.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;

/// One object from the node, borrowed from the frame (or the scratch buffer).
#[derive(Debug, PartialEq, Eq)]
pub enum Server<'a> {
    /// A published message; `payload` is the decoded `data` or `data_b64`.
    Message {
        /// The channel it was published on (borrowed from the frame by the scan).
        channel: Cow<'a, str>,
        /// Its offset in the channel.
        offset: u64,
        /// Its payload bytes.
        payload: &'a [u8],
    },
    /// `{"op":"ping"}`: answer with `{"op":"pong"}`.
    Ping,
    /// `{"op":"subscribed",…}`.
    Subscribed(Subscribed),
    /// `{"op":"error",…}`.
    Error {
        /// The command's id, if it had one.
        id: Option<u64>,
        /// The error code (0 when missing).
        code: u16,
    },
    /// Another op (`unsubscribed`, `published`, or one a newer node adds): ignored.
    OtherOp,
    /// Not a JSON object the protocol describes.
    Unreadable,
}

/// A `subscribed` answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Subscribed {
    /// The subscribe's id (None for a channel of the upgrade's query).
    pub id: Option<u64>,
    /// The channel.
    pub channel: String,
    /// The channel's epoch.
    pub epoch: String,
    /// Where the live stream starts.
    pub offset: u64,
    /// Whether every missed message follows.
    pub recovered: bool,
}

/// The application-level heartbeat answer.
pub const PONG: &[u8] = br#"{"op":"pong"}"#;

/// Reads one text message from the node; `scratch` receives a message's payload.
pub fn parse<'a>(text: &'a [u8], scratch: &'a mut Vec<u8>) -> Server<'a> {
    if let Some((channel, offset, data)) = scan_message(text) {
        let ok = match data {
            Data::Text(escaped) => unescape(escaped, scratch),
            Data::Base64(encoded) => decode_base64(encoded, scratch),
        };
        if ok {
            return Server::Message {
                channel: Cow::Borrowed(channel),
                offset,
                payload: scratch.as_slice(),
            };
        }
        return Server::Unreadable;
    }
    parse_general(text, scratch)
}

/// Appends `{"op":"subscribe","id":N,"channel":"C"[,"since":{"epoch":"E","offset":K}]}`.
/// Channel names and the node's epochs need no escaping (`[A-Za-z0-9_.:-]`, hex digits).
pub fn write_subscribe(out: &mut Vec<u8>, id: u64, channel: &str, since: Option<(&str, u64)>) {
    use std::io::Write as _;
    let _ = write!(out, r#"{{"op":"subscribe","id":{id},"channel":"{channel}""#);
    if let Some((epoch, offset)) = since {
        let _ = write!(out, r#","since":{{"epoch":"{epoch}","offset":{offset}}}"#);
    }
    out.push(b'}');
}

/// A message's payload as it stands in the frame.
enum Data<'a> {
    /// The inside of the `data` string, still escaped.
    Text(&'a [u8]),
    /// The inside of the `data_b64` string.
    Base64(&'a [u8]),
}

/// The scan of `encode_message`'s exact shape; None for anything else.
fn scan_message(text: &[u8]) -> Option<(&str, u64, Data<'_>)> {
    let rest = text.strip_prefix(br#"{"channel":""#)?;
    // Channel names are `[A-Za-z0-9_.:-]`: the name ends at the first quote.
    let end = rest.iter().position(|&b| b == b'"')?;
    let channel = std::str::from_utf8(&rest[..end]).ok()?;
    let rest = rest[end + 1..].strip_prefix(br#","offset":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut offset = 0u64;
    for &d in &rest[..digits] {
        offset = offset.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let rest = &rest[digits..];
    let body = rest.strip_suffix(br#""}"#)?;
    if let Some(escaped) = body.strip_prefix(br#","data":""#) {
        // The string must end exactly at the closing quote: no unescaped quote inside.
        let mut at = 0;
        while at < escaped.len() {
            match escaped[at] {
                b'\\' => at += 2,
                b'"' => return None,
                _ => at += 1,
            }
        }
        (at == escaped.len()).then_some((channel, offset, Data::Text(escaped)))
    } else {
        let encoded = body.strip_prefix(br#","data_b64":""#)?;
        Some((channel, offset, Data::Base64(encoded)))
    }
}

/// Decodes the inside of a JSON string into `out`; false if it is not a valid one.
fn unescape(escaped: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut at = 0;
    while at < escaped.len() {
        let start = at;
        while at < escaped.len() && escaped[at] != b'\\' {
            at += 1;
        }
        out.extend_from_slice(&escaped[start..at]);
        if at == escaped.len() {
            break;
        }
        let Some(&kind) = escaped.get(at + 1) else {
            return false;
        };
        at += 2;
        match kind {
            b'"' | b'\\' | b'/' => out.push(kind),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let Some(unit) = escaped.get(at..at + 4).and_then(hex4) else {
                    return false;
                };
                at += 4;
                let code = if (0xd800..0xdc00).contains(&unit) {
                    // A surrogate pair: the low half follows as another \u escape.
                    let Some(low) = escaped
                        .get(at..at + 6)
                        .filter(|s| s.starts_with(b"\\u"))
                        .and_then(|s| hex4(&s[2..]))
                        .filter(|low| (0xdc00..0xe000).contains(low))
                    else {
                        return false;
                    };
                    at += 6;
                    0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                } else {
                    unit
                };
                let Some(c) = char::from_u32(code) else {
                    return false;
                };
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return false,
        }
    }
    std::str::from_utf8(out).is_ok()
}

fn hex4(digits: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

/// Decodes padded standard base64 into `out`, reusing its capacity.
fn decode_base64(encoded: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.resize(encoded.len() / 4 * 3 + 3, 0);
    match BASE64.decode_slice(encoded, out) {
        Ok(n) => {
            out.truncate(n);
            true
        }
        Err(_) => false,
    }
}

/// Any object, through `serde_json`.
fn parse_general<'a>(text: &'a [u8], scratch: &'a mut Vec<u8>) -> Server<'a> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(text) else {
        return Server::Unreadable;
    };
    let id = fields.get("id").and_then(Value::as_u64);
    match fields.get("op").map(|op| op.as_str()) {
        Some(Some("ping")) => Server::Ping,
        Some(Some("error")) => Server::Error {
            id,
            code: fields
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
        },
        Some(Some("subscribed")) => {
            let text = |name: &str| fields.get(name).and_then(Value::as_str).map(String::from);
            match (
                text("channel"),
                text("epoch"),
                fields.get("offset").and_then(Value::as_u64),
                fields.get("recovered").and_then(Value::as_bool),
            ) {
                (Some(channel), Some(epoch), Some(offset), Some(recovered)) => {
                    Server::Subscribed(Subscribed {
                        id,
                        channel,
                        epoch,
                        offset,
                        recovered,
                    })
                }
                _ => Server::Unreadable,
            }
        }
        Some(Some(_)) => Server::OtherOp,
        Some(None) => Server::Unreadable,
        None => general_message(&fields, scratch),
    }
}

/// A message with a shape the scan did not take (fields in another order, or added ones).
fn general_message<'a>(
    fields: &serde_json::Map<String, Value>,
    scratch: &'a mut Vec<u8>,
) -> Server<'a> {
    let channel = fields.get("channel").and_then(Value::as_str);
    let offset = fields.get("offset").and_then(Value::as_u64);
    let (Some(channel), Some(offset)) = (channel, offset) else {
        return Server::Unreadable;
    };
    match (fields.get("data"), fields.get("data_b64")) {
        (Some(Value::String(text)), None) => {
            scratch.clear();
            scratch.extend_from_slice(text.as_bytes());
        }
        (None, Some(Value::String(encoded))) => {
            if !decode_base64(encoded.as_bytes(), scratch) {
                return Server::Unreadable;
            }
        }
        _ => return Server::Unreadable,
    }
    Server::Message {
        channel: Cow::Owned(channel.to_string()),
        offset,
        payload: scratch.as_slice(),
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
