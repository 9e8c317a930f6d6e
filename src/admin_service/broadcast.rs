//! `POST /broadcast`: one payload to several channels, named in a JSON body
//! `{"channels":["A","B",…],"data":"…"}` (or `"data_b64"`: standard padded base64 of a
//! binary payload).
//!
//! The payload is encoded once into one WebSocket frame, and every channel's publish shares
//! it (one `Publish` per channel, as `/publish` sends, so each channel's publish can take its
//! own place in that channel's order). Each channel's publish waits for the client shards'
//! counts in the `pending` slab like a `/publish`; `broadcast_parts` maps each of those
//! pending ids to its broadcast and channel, and the last count answers
//! `{"channels":[{"channel":"A","subscribers":N},…],"subscribers":TOTAL}`. The answer's
//! objects only ever gain fields (e.g. a channel's `epoch` and `offset`).
//!
//! Invariants:
//! - A broadcast reaches every client shard for each of its channels, or is refused whole
//!   (503) before any is sent, when an inbox lacks room for all of its channels. A channel
//!   whose publish is refused anyway (another publisher filled the inbox in between) is
//!   reported `"refused":true` with 0 subscribers, never silently dropped.
//! - A body error is a 400 naming the rule broken; the connection stays (the request was
//!   framed, so the next one is found).
//! - In its connection's response order a broadcast is `BROADCAST_SLOT_TAG | id`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use crate::fanout::{Pending, Unsent};
use crate::http::admin_request::{valid_name, AdminError};
use crate::ring::Owner;
use crate::shard::Core;
use crate::ws::{frame, OpCode};

use super::channels::{json_response, BROADCAST_SLOT_TAG};
use super::{unavailable, AdminSlot};

/// Channels one broadcast may name.
pub const BROADCAST_CHANNELS_MAX: usize = 256;

/// A broadcast body, read.
#[derive(Debug, PartialEq, Eq)]
pub struct BroadcastBody {
    /// The channels, in the body's order, each named once.
    pub channels: Vec<Box<str>>,
    /// The payload's bytes.
    pub payload: Vec<u8>,
    /// Text (from `"data"`) or binary (from `"data_b64"`): the raw subscribers' opcode.
    pub opcode: OpCode,
}

/// Reads a broadcast body; the error is the rule broken, for the 400's text. Unknown fields
/// are ignored (the body only ever gains fields).
pub fn parse_body(body: &[u8]) -> Result<BroadcastBody, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "the body is not valid JSON")?;
    let Value::Object(fields) = value else {
        return Err("the body is not a JSON object");
    };
    let Some(Value::Array(names)) = fields.get("channels") else {
        return Err("\"channels\" must be an array of channel names");
    };
    if names.is_empty() {
        return Err("\"channels\" is empty");
    }
    if names.len() > BROADCAST_CHANNELS_MAX {
        return Err("\"channels\" names more than 256 channels");
    }
    let mut seen = HashSet::with_capacity(names.len());
    let mut channels = Vec::with_capacity(names.len());
    for name in names {
        let Value::String(name) = name else {
            return Err("\"channels\" must be an array of channel names");
        };
        if !valid_name(name) {
            return Err("a channel name must match [A-Za-z0-9_.:-]{1,128}");
        }
        if !seen.insert(name.as_str()) {
            return Err("a channel is named twice");
        }
        channels.push(Box::from(name.as_str()));
    }
    let (payload, opcode) = match (fields.get("data"), fields.get("data_b64")) {
        (Some(Value::String(text)), None) => (text.clone().into_bytes(), OpCode::Text),
        (None, Some(Value::String(encoded))) => {
            let payload = BASE64
                .decode(encoded)
                .map_err(|_| "\"data_b64\" is not standard padded base64")?;
            (payload, OpCode::Binary)
        }
        (Some(_), Some(_)) | (None, None) => {
            return Err("exactly one of \"data\" and \"data_b64\" is needed")
        }
        _ => return Err("\"data\" and \"data_b64\" must be strings"),
    };
    Ok(BroadcastBody {
        channels,
        payload,
        opcode,
    })
}

/// A broadcast waiting for its channels' counts.
pub(crate) struct BroadcastWait {
    owner: Owner,
    keep_alive: bool,
    channels: Vec<Box<str>>,
    /// Per channel: its count once every client shard answered; `None` while waiting.
    counts: Vec<Option<u64>>,
    /// Per channel: its publish was refused (an inbox filled in between).
    refused: Vec<bool>,
    waiting: usize,
}

impl Core {
    /// While the node drains, a publish or broadcast is refused 503 "draining" and the
    /// connection closed after the answer: says whether it did so for `key`.
    pub(super) fn refused_while_draining(&mut self, key: usize) -> bool {
        if self.draining.is_none() {
            return false;
        }
        self.counters.admin_publishes_refused_draining += 1;
        self.log(format_args!("event=admin_publish_refused reason=draining"));
        let response = unavailable(&[], b"draining: the node is shutting down\n", false);
        self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), true));
        true
    }

    /// Answers `POST /broadcast` with body `body`: refused (503) while draining or when an
    /// inbox lacks room, 400 for a bad body; otherwise one publish per channel, answered
    /// when every channel's counts are in.
    pub(super) fn admin_broadcast(&mut self, key: usize, body: &[u8], keep_alive: bool) {
        if self.refused_while_draining(key) {
            return;
        }
        let request = match parse_body(body) {
            Ok(request) => request,
            Err(rule) => {
                let err = AdminError::InvalidBody(rule);
                self.counters.admin_refused[err.slot()] += 1;
                self.log(format_args!(
                    "event=admin_refused status=400 reason={}",
                    err.reason()
                ));
                let mut text = rule.to_owned();
                text.push('\n');
                let mut response = Vec::new();
                let media = Some("text/plain; charset=utf-8");
                crate::http::response::write_response(
                    &mut response,
                    400,
                    &[],
                    media,
                    text.as_bytes(),
                    keep_alive,
                );
                self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), !keep_alive));
                return;
            }
        };
        if !self.inboxes_have_room(request.channels.len()) {
            self.counters.shard_inbox_full += 1;
            self.log(format_args!("event=shard_inbox_full msg=broadcast"));
            let response = unavailable(
                &[("Retry-After", "1")],
                b"shard inbox full: the node is behind on publishes; retry later\n",
                keep_alive,
            );
            self.admin_slot(key, AdminSlot::Ready(Bytes::from(response), !keep_alive));
            return;
        }
        // The one copy of the payload: into the frame every subscriber of every channel shares.
        let frame = frame::encode(request.opcode, &request.payload);
        let owner = self.owner(key);
        let n = request.channels.len();
        let id = self.broadcasts.insert(BroadcastWait {
            owner,
            keep_alive,
            channels: request.channels.clone(),
            counts: vec![None; n],
            refused: vec![false; n],
            waiting: n,
        }) as u32;
        debug_assert!(id < BROADCAST_SLOT_TAG, "ids stay below the tags");
        self.admin_slot(key, AdminSlot::Waiting(BROADCAST_SLOT_TAG | id));
        let clients = self.peers.clients;
        for (at, name) in request.channels.into_iter().enumerate() {
            let part = self.pending.insert(Pending {
                owner,
                name: name.clone(),
                session: false,
                waiting_on: vec![true; clients],
                waiting: clients,
                count: 0,
                keep_alive,
                position: None,
                broker: None,
            }) as u32;
            // Before the publish: a gone shard's count is taken at once, inside it.
            self.broadcast_parts.insert(part, (id, at));
            // Each channel takes its next offset, as any channel publish does (with
            // `--broker`, in Redis: a channel Redis does not take is reported refused).
            let origin = Some((self.index, part));
            let sent = if self.shared.broker.is_some() {
                self.admin_broker_publish(part, name, frame.clone())
            } else {
                self.publish_channel(name, frame.clone(), origin)
                    .map(|_| ())
            };
            if sent == Err(Unsent::Full) {
                self.pending.remove(part as usize);
                self.broadcast_parts.remove(&part);
                if let Some(b) = self.broadcasts.get_mut(id as usize) {
                    b.refused[at] = true;
                }
                self.broadcast_part(id, at, 0);
            }
        }
    }

    /// Whether every other client shard's inbox has room for `n` more messages now.
    fn inboxes_have_room(&self, n: usize) -> bool {
        (0..self.peers.clients)
            .filter(|&t| t != self.index)
            .all(|t| self.peers.queued[t].load(Ordering::Relaxed) + n <= self.peers.inbox_max)
    }

    /// If pending publish `id` is part of a broadcast, records its count there and returns
    /// true (the broadcast answers once all its channels are in).
    pub(super) fn broadcast_counted(&mut self, id: u32, count: u64) -> bool {
        let Some((broadcast, at)) = self.broadcast_parts.remove(&id) else {
            return false;
        };
        self.broadcast_part(broadcast, at, count);
        true
    }

    /// If pending publish `id` is part of a broadcast, records it there as refused (with
    /// `--broker`: Redis did not take it) and returns true.
    pub(super) fn broadcast_refused(&mut self, id: u32) -> bool {
        let Some((broadcast, at)) = self.broadcast_parts.remove(&id) else {
            return false;
        };
        if let Some(b) = self.broadcasts.get_mut(broadcast as usize) {
            b.refused[at] = true;
        }
        self.broadcast_part(broadcast, at, 0);
        true
    }

    /// Channel `at` of broadcast `id` has its count; the last one answers.
    fn broadcast_part(&mut self, id: u32, at: usize, count: u64) {
        let Some(b) = self.broadcasts.get_mut(id as usize) else {
            return;
        };
        debug_assert!(b.counts[at].is_none());
        b.counts[at] = Some(count);
        b.waiting -= 1;
        if b.waiting > 0 {
            return;
        }
        let b = self.broadcasts.remove(id as usize);
        if !self.live(b.owner) {
            return;
        }
        let key = b.owner.key as usize;
        let response = json_response(200, &answer_json(&b), false, b.keep_alive);
        self.admin_ready(key, BROADCAST_SLOT_TAG | id, response, !b.keep_alive);
        // Requests held back by the pipeline cap may go on now.
        self.process_admin(key);
    }
}

/// `{"channels":[{"channel":"A","subscribers":N},…],"subscribers":TOTAL}`.
fn answer_json(b: &BroadcastWait) -> Vec<u8> {
    let mut body = String::from(r#"{"channels":["#);
    let mut total = 0;
    for (at, name) in b.channels.iter().enumerate() {
        let count = b.counts[at].unwrap_or(0);
        total += count;
        let comma = if at == 0 { "" } else { "," };
        let _ = write!(body, r#"{comma}{{"channel":"{name}","subscribers":{count}"#);
        if b.refused[at] {
            body.push_str(r#","refused":true"#);
        }
        body.push('}');
    }
    let _ = write!(body, r#"],"subscribers":{total}}}"#);
    body.into_bytes()
}

#[cfg(test)]
#[path = "broadcast_tests.rs"]
mod tests;
