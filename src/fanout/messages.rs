//! What crosses between shards (`ShardMsg`: publishes, claims, censuses, replies; `Peers`,
//! the inboxes and their bounds) and what a shard keeps while a publish is out (`Fanout`,
//! `Pending`, `PublishWindow`). Plain data and its encoding helpers; the fan-out itself is
//! in `fanout.rs`.

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;

use crate::history::{PayloadKind, Position};
use crate::ring::Owner;

/// Every shard's inbox and ring fd, indexed by shard (the admin shard last).
#[derive(Default)]
pub struct Peers {
    /// Inbox senders.
    pub inboxes: Vec<Sender<ShardMsg>>,
    /// Ring fds (the same number in every file table: rings exist before any unshare).
    pub ring_fds: Vec<std::os::fd::RawFd>,
    /// Number of client shards (indices `0..clients`).
    pub clients: usize,
    /// Per inbox: publishes and claims sent and not yet taken out (replies not counted).
    pub queued: Vec<AtomicUsize>,
    /// `--max-shard-inbox`: the bound on `queued`.
    pub inbox_max: usize,
}

/// Why a message did not reach a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsent {
    /// The target's inbox holds `--max-shard-inbox` messages.
    Full,
    /// The target shard has exited and dropped its inbox.
    Gone,
}

/// Where a publish goes.
#[derive(Debug)]
pub enum Target {
    /// Every subscriber of a channel.
    Channel(Box<str>),
    /// Every connection of a session (all tabs).
    Session(Box<str>),
}

/// One message for many connections, encoded once.
#[derive(Debug)]
pub struct Publish {
    /// Channel or session.
    pub target: Target,
    /// The complete WebSocket frame.
    pub frame: Bytes,
    /// When the publish was accepted (fan-out latency starts here).
    pub accepted: Instant,
    /// The admin shard and request id awaiting the delivery count, if any.
    pub origin: Option<(usize, u32)>,
    /// The channel position the publish took (`None` for a session send, which has none).
    pub position: Option<Position>,
    /// The JSON-mode message frame, encoded by the first shard with a JSON subscriber and
    /// shared by all of them.
    pub json: OnceLock<Bytes>,
    /// Received from the broker (`--broker`): its position is Redis', and the count goes
    /// back as `ShardMsg::BrokerReply` under the origin's publish sequence number.
    pub brokered: bool,
}

impl Publish {
    /// The JSON-mode frame of this channel publish (encoded on first use).
    pub(crate) fn json_frame(&self, channel: &str) -> &Bytes {
        self.json.get_or_init(|| {
            let offset = self.position.map_or(0, |p| p.offset);
            crate::json_proto::message_frame(channel, offset, &frame_payload(&self.frame))
        })
    }

    /// The JSON-mode frame of this session send (encoded on first use):
    /// `{"session":"S","data":"…"}`, or `data_b64` for a payload that is not UTF-8. A session
    /// send has no channel and no offset, so it is told apart from a channel message by its
    /// missing `channel`.
    pub(crate) fn session_json_frame(&self) -> &Bytes {
        self.json.get_or_init(|| {
            let session = match &self.target {
                Target::Session(session) => &**session,
                Target::Channel(channel) => channel,
            };
            let payload = frame_payload(&self.frame);
            let object = match std::str::from_utf8(&payload) {
                Ok(text) => serde_json::json!({ "session": session, "data": text }),
                Err(_) => {
                    serde_json::json!({ "session": session, "data_b64": BASE64.encode(&payload) })
                }
            };
            let text = serde_json::to_vec(&object).expect("a JSON value always serializes");
            crate::ws::frame::encode(crate::ws::OpCode::Text, &text)
        })
    }
}

/// The payload of a complete unmasked frame the node encoded.
pub(crate) fn frame_payload(frame: &Bytes) -> Bytes {
    let head = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(head.min(frame.len())..)
}

/// The kind of a complete frame the node encoded (text or anything else).
pub(crate) fn frame_kind(frame: &Bytes) -> PayloadKind {
    match frame.first().map(|b| b & 0x0f) {
        Some(1) => PayloadKind::Text,
        _ => PayloadKind::Binary,
    }
}

impl crate::channels::Mark for Position {
    fn offset(&self) -> u64 {
        self.offset
    }
}

/// A (session, tab) claimed by a new connection.
#[derive(Debug)]
pub struct Claim {
    /// Session id.
    pub session: Box<str>,
    /// Tab id.
    pub tab: Box<str>,
    /// Node-wide order of claims.
    pub seq: u64,
}

/// A message between shards.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver to local subscribers (and reply to the origin, if any).
    Publish(Arc<Publish>),
    /// Close local holders of an older claim of this (session, tab).
    Claim(Arc<Claim>),
    /// A shard's delivery count for request `id` of the admin shard.
    Reply {
        /// Request id in the admin shard's `pending` slab.
        id: u32,
        /// The shard that counted.
        from: usize,
        /// Connections the message was handed to on that shard.
        count: u64,
    },
    /// The admin shard asks for this shard's subscriber counts (`GET /channels`).
    Census(Arc<Census>),
    /// The broker's answer to a publish this shard queued (`--broker`), by its sequence
    /// number: the position Redis gave it, or why it did not get there.
    Brokered {
        seq: u32,
        outcome: crate::broker::Outcome,
    },
    /// The broker's answer to `HoldJob::Position` (ticket `ticket`): `channel`'s position
    /// read after this node's subscription was confirmed, and the kept messages after the
    /// asked offset (none unless asked).
    Attached {
        channel: Box<str>,
        ticket: u64,
        position: Position,
        kept: Vec<crate::broker::Kept>,
    },
    /// The broker's answer to a history read (`JobTo::History`) of query `id` under
    /// `ticket` (a late answer for a query answered at its deadline names another ticket).
    BrokerRead {
        id: u32,
        ticket: u32,
        outcome: crate::broker::ReadOutcome,
    },
    /// A shard's delivery count for the brokered publish of sequence number `seq`.
    BrokerReply { seq: u32, from: usize, count: u64 },
    /// A shard's answer to a `Census`.
    CensusReply {
        /// Query id in the admin shard's `queries` slab.
        id: u32,
        /// The shard that counted.
        from: usize,
        /// Matching channels in name order with their local subscriber counts.
        channels: Vec<(Box<str>, u64)>,
        /// Whether more channels matched than the census' limit.
        truncated: bool,
    },
}

impl ShardMsg {
    /// Whether the message takes a place in the target's inbox bound (`--max-shard-inbox`):
    /// requests do; answers to the admin shard never do, so they can always be sent.
    pub fn bounded(&self) -> bool {
        !matches!(
            self,
            ShardMsg::Reply { .. }
                | ShardMsg::CensusReply { .. }
                | ShardMsg::Brokered { .. }
                | ShardMsg::Attached { .. }
                | ShardMsg::BrokerRead { .. }
                | ShardMsg::BrokerReply { .. }
        )
    }
}

/// Which channels a census counts.
#[derive(Debug)]
pub enum CensusOf {
    /// The first `limit` names (in byte order) starting with `prefix`.
    Prefix { prefix: Box<str>, limit: usize },
    /// One channel.
    One(Box<str>),
}

/// A request for every client shard's subscriber counts.
#[derive(Debug)]
pub struct Census {
    /// What to count.
    pub of: CensusOf,
    /// The admin shard and query id awaiting the counts.
    pub origin: (usize, u32),
}

/// A broadcast frame whose local sends are still in flight.
pub struct Fanout {
    /// When the publish was accepted.
    pub accepted: Instant,
    /// Local copies not yet sent or dropped.
    pub remaining: u32,
}

/// An admin publish waiting for every client shard's count.
pub struct Pending {
    /// The admin connection to answer.
    pub owner: Owner,
    /// Channel or session name, for the JSON answer.
    pub name: Box<str>,
    /// Whether the target is a session (`/send`).
    pub session: bool,
    /// Per client shard: whether its count is still awaited.
    pub waiting_on: Vec<bool>,
    /// Shards that have not answered yet (the `true`s in `waiting_on`).
    pub waiting: usize,
    /// Connections handed the message so far.
    pub count: u64,
    /// Keep the admin connection open after answering.
    pub keep_alive: bool,
    /// A channel publish's position, for the answer's `epoch` and `offset`.
    pub position: Option<Position>,
    /// A brokered publish (`--broker`): its sequence number and the time by which it is
    /// answered with the counts so far. Answered once Redis accepted it and every client
    /// shard counted.
    pub broker: Option<(u32, Instant)>,
}

/// A publishing connection's current one-second window (`--client-publish-rate`).
pub struct PublishWindow {
    /// Generation of the connection the window belongs to (slots are reused).
    pub gen: u32,
    /// Tick at which the window started.
    pub start: u32,
    /// Publishes in the window.
    pub count: u32,
}

/// The JSON `gap` notice sent before the brokered message at `position` of `channel`.
pub(crate) fn gap_frame(channel: &str, position: Position) -> Bytes {
    let mut text = bytes::BytesMut::with_capacity(96);
    let epoch = position.epoch.text();
    crate::json_proto::encode_gap(&mut text, channel, epoch.as_str(), position.offset);
    crate::ws::frame::encode(crate::ws::OpCode::Text, &text)
}
