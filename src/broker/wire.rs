//! What ringpush keeps in Redis and sends through it: the key and pub/sub channel names of a
//! channel, the publish script (offset, epoch, history and the pub/sub message in one atomic
//! step) and the pub/sub message's layout. Pure functions; the connections are in
//! `publisher.rs` and `subscriber.rs`.
//!
//! Per channel `C` (all three names share the hash tag `{C}`, so a later Redis Cluster keeps
//! them on one shard):
//! - `ringpush:{C}:meta`, a hash: `epoch` (16 hex digits) and `offset` (the last one taken);
//! - `ringpush:{C}:log`, a stream of the kept messages with IDs `0-<offset>` (fields `k`, the
//!   kind, and `p`, the payload), capped by `MAXLEN` at `--history-size`;
//! - `ringpush:{C}`, the pub/sub channel every node holding `C` subscribes to.
//!
//! Invariants:
//! - Offsets are taken, the message kept and published in one script run: Redis runs
//!   scripts one at a time, so every subscriber connection sees a channel's messages in
//!   offset order, and offsets are +1 per publish within an epoch.
//! - A channel whose `meta` is gone (never published, expired past the key TTL, or a Redis
//!   that lost its data) starts a new epoch at offset 1 and drops the old stream.

use bytes::Bytes;

use crate::history::{Epoch, Page, PayloadKind, Position, Retained};

/// The prefix of every key and pub/sub channel the node uses.
pub const PREFIX: &str = "ringpush:";

/// The publish script. KEYS: meta, log. ARGV: epoch candidate, kind (`t`/`b`), payload,
/// history size (0: keep nothing), key TTL in ms, pub/sub channel, origin tag, publish
/// command (`publish_command`: PUBLISH, or SPUBLISH in a cluster). Returns `{epoch, offset}`.
pub const PUBLISH_SCRIPT: &str = r"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', log, 'MAXLEN', size, '0-' .. offset, 'k', ARGV[2], 'p', ARGV[3])
  redis.call('PEXPIRE', log, ARGV[5])
end
redis.call('PEXPIRE', meta, ARGV[5])
redis.call(ARGV[8], ARGV[6],
  epoch .. ' ' .. offset .. ' ' .. ARGV[2] .. ' ' .. ARGV[7] .. '\n' .. ARGV[3])
return {epoch, offset}
";

/// The position script. KEYS: meta, log. ARGV: epoch candidate, key TTL in ms, the offset
/// after which kept messages are wanted (empty: none). Gives the channel an epoch when it
/// has none (as a publish would), and returns `{epoch, offset, entries}` in one step, so
/// the entries end exactly at the offset.
pub const POSITION_SCRIPT: &str = r"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', meta, ARGV[2])
end
local offset = tonumber(redis.call('HGET', meta, 'offset'))
local entries = {}
if ARGV[3] ~= '' then
  entries = redis.call('XRANGE', log, '(0-' .. ARGV[3], '+')
end
return {epoch, offset, entries}
";

/// The history script (`GET /history/<channel>` under `--broker`). KEYS: meta, log. ARGV:
/// the offset after which kept messages are wanted (empty: none), the most to return
/// (the script returns one more, to tell whether more follow). Returns nil for a channel
/// without an epoch, else `{epoch, offset, retained, first, entries}` read in one step
/// (`first`: the oldest kept entry, or an empty array). Changes nothing.
pub const HISTORY_SCRIPT: &str = r"
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  return false
end
local offset = tonumber(redis.call('HGET', meta, 'offset'))
local retained = redis.call('XLEN', log)
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', log, '(0-' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]) + 1)
end
return {epoch, offset, retained, first, entries}
";

/// The history script's `since` argument: empty when nothing can follow it (the stream
/// refuses an exclusive range from the largest ID).
pub fn history_since(since: u64) -> String {
    if since == u64::MAX {
        String::new()
    } else {
        since.to_string()
    }
}

/// Reads the history script's answer as the page `History::read` would give for `limit`:
/// `Some(None)` for a channel Redis has no entry for, `None` for any other shape.
pub fn parse_history(value: redis::Value, limit: usize) -> Option<Option<Page>> {
    use redis::Value;
    let mut parts = match value {
        Value::Nil => return Some(None),
        Value::Array(parts) if parts.len() == 5 => parts,
        _ => return None,
    };
    let mut entries = parse_entries(parts.pop()?)?;
    let first = parse_entries(parts.pop()?)?;
    let retained = match parts.pop()? {
        Value::Int(n) => u64::try_from(n).ok()?,
        _ => return None,
    };
    let position = Position {
        offset: parse_offset(parts.pop()?)?,
        epoch: parse_epoch(parts.pop()?)?,
    };
    let more = entries.len() > limit;
    entries.truncate(limit);
    let entries = entries
        .into_iter()
        .map(|(offset, kind, payload)| Retained {
            offset,
            payload,
            kind,
        })
        .collect();
    Some(Some(Page {
        position,
        oldest_offset: first.first().map(|(offset, _, _)| *offset),
        retained,
        entries,
        more,
    }))
}

fn parse_offset(value: redis::Value) -> Option<u64> {
    match value {
        redis::Value::Int(offset) => u64::try_from(offset).ok(),
        _ => None,
    }
}

fn parse_epoch(value: redis::Value) -> Option<Epoch> {
    match value {
        redis::Value::BulkString(text) => Epoch::parse(std::str::from_utf8(&text).ok()?),
        _ => None,
    }
}

/// Reads the position script's answer: the position and the kept messages, oldest first.
/// `None` for any other shape.
pub fn parse_position(value: redis::Value) -> Option<(Position, Vec<crate::broker::Kept>)> {
    use redis::Value;
    let Value::Array(mut parts) = value else {
        return None;
    };
    if parts.len() != 3 {
        return None;
    }
    let entries = parse_entries(parts.pop()?)?;
    let offset = parse_offset(parts.pop()?)?;
    let epoch = parse_epoch(parts.pop()?)?;
    Some((Position { epoch, offset }, entries))
}

/// Reads an XRANGE answer: the kept messages, oldest first; `None` for any other shape.
fn parse_entries(entries: redis::Value) -> Option<Vec<crate::broker::Kept>> {
    use redis::Value;
    let Value::Array(entries) = entries else {
        return None;
    };
    let mut kept = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut pair) = entry else {
            return None;
        };
        let fields = pair.pop()?;
        let id = match pair.pop()? {
            Value::BulkString(id) => String::from_utf8(id).ok()?,
            _ => return None,
        };
        let entry_offset: u64 = id.strip_prefix("0-")?.parse().ok()?;
        let Value::Array(fields) = fields else {
            return None;
        };
        let (mut kind, mut payload) = (None, None);
        for field in fields.chunks(2) {
            match field {
                [Value::BulkString(name), Value::BulkString(value)] => match &name[..] {
                    b"k" => {
                        kind = Some(if value == b"t" {
                            PayloadKind::Text
                        } else {
                            PayloadKind::Binary
                        })
                    }
                    b"p" => payload = Some(Bytes::copy_from_slice(value)),
                    _ => {}
                },
                _ => return None,
            }
        }
        kept.push((entry_offset, kind?, payload?));
    }
    Some(kept)
}

/// The hash of channel `name`'s epoch and last offset.
pub fn meta_key(name: &str) -> String {
    format!("{PREFIX}{{{name}}}:meta")
}

/// The stream of channel `name`'s kept messages.
pub fn log_key(name: &str) -> String {
    format!("{PREFIX}{{{name}}}:log")
}

/// The pub/sub channel of channel `name`.
pub fn pubsub_channel(name: &str) -> String {
    format!("{PREFIX}{{{name}}}")
}

/// The command that publishes a channel's message: ordinary pub/sub on one Redis, sharded
/// pub/sub (to the master owning the channel's slot, never broadcast over the cluster bus)
/// in a cluster.
pub fn publish_command(mode: super::BrokerMode) -> &'static str {
    match mode {
        super::BrokerMode::Single => "PUBLISH",
        super::BrokerMode::Cluster => "SPUBLISH",
    }
}

/// The channel name inside a pub/sub channel name, if it is one of ours.
pub fn channel_of(pubsub: &str) -> Option<&str> {
    pubsub
        .strip_prefix(PREFIX)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// The kind's one-letter code in Redis.
pub fn kind_code(kind: PayloadKind) -> &'static str {
    match kind {
        PayloadKind::Text => "t",
        PayloadKind::Binary => "b",
    }
}

/// Who is waiting for a publish's local count: the publishing node (its random tag) and
/// the publish's sequence number there. Messages of other nodes, and client publishes,
/// carry `-`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginTag {
    pub node: u64,
    pub seq: u32,
}

/// The origin field of the pub/sub message.
pub fn origin_text(origin: Option<OriginTag>) -> String {
    match origin {
        Some(tag) => format!("{:016x}.{}", tag.node, tag.seq),
        None => "-".to_string(),
    }
}

/// One message as a subscriber connection receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub position: Position,
    pub kind: PayloadKind,
    pub origin: Option<OriginTag>,
    pub payload: Bytes,
}

/// Reads a pub/sub message the script published: `<epoch> <offset> <kind> <origin>\n`
/// then the payload. `None` for anything else (counted by the caller, never delivered).
pub fn parse_message(message: Bytes) -> Option<Delivered> {
    let head_len = message.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&message[..head_len]).ok()?;
    let mut fields = head.split(' ');
    let epoch = Epoch::parse(fields.next()?)?;
    let offset = fields.next()?.parse().ok()?;
    let kind = match fields.next()? {
        "t" => PayloadKind::Text,
        "b" => PayloadKind::Binary,
        _ => return None,
    };
    let origin = match fields.next()? {
        "-" => None,
        tag => {
            let (node, seq) = tag.split_once('.')?;
            Some(OriginTag {
                node: u64::from_str_radix(node, 16).ok()?,
                seq: seq.parse().ok()?,
            })
        }
    };
    if fields.next().is_some() {
        return None;
    }
    Some(Delivered {
        position: Position { epoch, offset },
        kind,
        origin,
        payload: message.slice(head_len + 1..),
    })
}

/// The one pub/sub channel every node subscribes to under `--broker` for session traffic:
/// `/send` bodies and (session, tab) claims. Outside the `{C}` names, so no channel can
/// take it.
pub const SESSIONS_CHANNEL: &str = "ringpush:sessions";

/// One message on `SESSIONS_CHANNEL`, as `session_message` writes it and
/// `parse_session_message` reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionNote {
    /// `/send/<session>` on node `node`: deliver `payload` to the session's connections.
    Send {
        node: u64,
        session: Box<str>,
        kind: PayloadKind,
        payload: Bytes,
    },
    /// A connection of (session, tab) opened on node `node` with claim order `seq`.
    Claim {
        node: u64,
        session: Box<str>,
        tab: Box<str>,
        seq: u64,
    },
}

/// Writes a session message: `s <node> <kind> <session bytes>\n<session><payload>` or
/// `c <node> <seq> <session bytes>\n<session><tab>`. Lengths, not separators, split the
/// names, so no session or tab text can be misread.
pub fn session_message(note: &SessionNote) -> Bytes {
    let mut out = Vec::new();
    match note {
        SessionNote::Send {
            node,
            session,
            kind,
            payload,
        } => {
            let head = format!("s {node:016x} {} {}\n", kind_code(*kind), session.len());
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(session.as_bytes());
            out.extend_from_slice(payload);
        }
        SessionNote::Claim {
            node,
            session,
            tab,
            seq,
        } => {
            let head = format!("c {node:016x} {seq} {}\n", session.len());
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(session.as_bytes());
            out.extend_from_slice(tab.as_bytes());
        }
    }
    Bytes::from(out)
}

/// Reads a session message back; `None` for anything else.
pub fn parse_session_message(message: Bytes) -> Option<SessionNote> {
    let head_len = message.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&message[..head_len]).ok()?;
    let fields: Vec<&str> = head.split(' ').collect();
    let [verb, node, third, session_len] = fields[..] else {
        return None;
    };
    let node = u64::from_str_radix(node, 16).ok()?;
    let session_len: usize = session_len.parse().ok()?;
    let body = message.slice(head_len + 1..);
    if body.len() < session_len {
        return None;
    }
    let session: Box<str> = std::str::from_utf8(&body[..session_len]).ok()?.into();
    let rest = body.slice(session_len..);
    match verb {
        "s" => Some(SessionNote::Send {
            node,
            session,
            kind: match third {
                "t" => PayloadKind::Text,
                "b" => PayloadKind::Binary,
                _ => return None,
            },
            payload: rest,
        }),
        "c" => Some(SessionNote::Claim {
            node,
            session,
            tab: std::str::from_utf8(&rest).ok()?.into(),
            seq: third.parse().ok()?,
        }),
        _ => None,
    }
}

/// An epoch candidate for the script (used only when the channel has none): 16 hex digits
/// that are never all zero, which `Attached`'s "no epoch yet" uses.
pub fn epoch_candidate(random: u64) -> String {
    format!("{:016x}", random.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_channel_hash_tag() {
        assert_eq!(meta_key("news"), "ringpush:{news}:meta");
        assert_eq!(log_key("news"), "ringpush:{news}:log");
        assert_eq!(pubsub_channel("news"), "ringpush:{news}");
        assert_eq!(channel_of("ringpush:{news}"), Some("news"));
        assert_eq!(channel_of("other:{news}"), None);
    }

    #[test]
    fn a_message_reads_back_with_its_binary_payload() {
        let tag = OriginTag {
            node: 0xabc,
            seq: 7,
        };
        let mut text = format!("00000000000000ff 42 b {}\n", origin_text(Some(tag))).into_bytes();
        text.extend_from_slice(&[0, 10, 255]);
        let got = parse_message(Bytes::from(text)).expect("parses");
        assert_eq!(got.position.offset, 42);
        assert_eq!(
            got.position.epoch,
            Epoch::parse("00000000000000ff").unwrap()
        );
        assert_eq!(got.kind, PayloadKind::Binary);
        assert_eq!(got.origin, Some(tag));
        assert_eq!(&got.payload[..], &[0, 10, 255]);
        let plain = parse_message(Bytes::from_static(b"00000000000000ff 1 t -\nhi")).unwrap();
        assert_eq!((plain.origin, &plain.payload[..]), (None, &b"hi"[..]));
    }

    #[test]
    fn a_position_answer_reads_back_with_its_kept_messages() {
        use redis::Value::{Array, BulkString, Int};
        let entry = |id: &str, kind: &str, payload: &[u8]| {
            Array(vec![
                BulkString(id.as_bytes().to_vec()),
                Array(vec![
                    BulkString(b"k".to_vec()),
                    BulkString(kind.as_bytes().to_vec()),
                    BulkString(b"p".to_vec()),
                    BulkString(payload.to_vec()),
                ]),
            ])
        };
        let answer = Array(vec![
            BulkString(b"00000000000000ff".to_vec()),
            Int(5),
            Array(vec![entry("0-4", "t", b"four"), entry("0-5", "b", &[5])]),
        ]);
        let (position, kept) = parse_position(answer).expect("parses");
        assert_eq!(position.offset, 5);
        assert_eq!(position.epoch, Epoch::parse("00000000000000ff").unwrap());
        assert_eq!(
            kept,
            vec![
                (4, PayloadKind::Text, Bytes::from_static(b"four")),
                (5, PayloadKind::Binary, Bytes::from_static(&[5])),
            ]
        );
        assert!(parse_position(Array(vec![Int(1)])).is_none());
        assert!(parse_position(Int(1)).is_none());
    }

    #[test]
    fn a_history_answer_reads_back_as_a_page_with_its_limit() {
        use redis::Value::{Array, BulkString, Int, Nil};
        let entry = |offset: u64| {
            Array(vec![
                BulkString(format!("0-{offset}").into_bytes()),
                Array(vec![
                    BulkString(b"k".to_vec()),
                    BulkString(b"t".to_vec()),
                    BulkString(b"p".to_vec()),
                    BulkString(format!("m{offset}").into_bytes()),
                ]),
            ])
        };
        let answer = |entries: Vec<redis::Value>| {
            Array(vec![
                BulkString(b"00000000000000ff".to_vec()),
                Int(9),
                Int(7),
                Array(vec![entry(3)]),
                Array(entries),
            ])
        };
        // The script returns one more than the limit: `more` says so and it is cut.
        let page = parse_history(answer(vec![entry(5), entry(6), entry(7)]), 2)
            .expect("parses")
            .expect("a page");
        assert_eq!(page.position.offset, 9);
        assert_eq!(
            (page.retained, page.oldest_offset, page.more),
            (7, Some(3), true)
        );
        let offsets: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![5, 6]);
        assert_eq!(&page.entries[1].payload[..], b"m6");
        let page = parse_history(answer(vec![entry(8), entry(9)]), 2)
            .unwrap()
            .unwrap();
        assert!(!page.more);
        assert_eq!(parse_history(Nil, 5), Some(None));
        assert_eq!(parse_history(Int(1), 5), None);
        assert_eq!(history_since(u64::MAX), "");
        assert_eq!(history_since(0), "0");
    }

    #[test]
    fn session_messages_read_back_whatever_their_names_hold() {
        let notes = [
            SessionNote::Send {
                node: 7,
                session: "a b\nc".into(),
                kind: PayloadKind::Binary,
                payload: Bytes::from_static(b"\x00\n x"),
            },
            SessionNote::Claim {
                node: u64::MAX,
                session: "s 1".into(),
                tab: "t\n2".into(),
                seq: (9 << 16) | 3,
            },
        ];
        for note in notes {
            let wire = session_message(&note);
            assert_eq!(parse_session_message(wire), Some(note));
        }
        assert_eq!(
            parse_session_message(Bytes::from_static(b"s 1 t 9\nab")),
            None
        );
        assert_eq!(
            parse_session_message(Bytes::from_static(b"x 1 t 0\n")),
            None
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b"no newline"[..],
            b"zz 1 t -\n",
            b"00000000000000ff x t -\n",
            b"00000000000000ff 1 q -\n",
            b"00000000000000ff 1 t abc\n",
            b"00000000000000ff 1 t - extra\n",
        ] {
            assert_eq!(parse_message(Bytes::from_static(bad)), None, "{bad:?}");
        }
    }
}
