//! A JSON-mode connection (`GET /ws?format=json`, PROTOCOL.md): its subscriptions, its
//! commands (subscribe with or without resume, unsubscribe, publish, pong) and their
//! answers.
//!
//! `Conn` keeps its 96 bytes: a JSON connection's state lives in `Core::json_conns`, a side
//! table keyed by slab key (`JsonConn`: one `Subscription` token per channel and the count
//! of malformed commands in a row), created at the upgrade and freed with the slot.
//!
//! Invariants:
//! - A connection holds at most `--max-subscriptions` tokens, at most one per channel. A
//!   token names its slot in the channel's subscriber list, or `WAITING` while the client
//!   is ahead of this shard (it saw offsets through another shard that this one has not
//!   delivered yet): it joins the list when the shard's watermark reaches its offset.
//! - Answers leave in command order, and before anything delivered after them: the
//!   answers encoded so far are queued (`flush_out`) before a publish is delivered and
//!   before replayed messages, so a `subscribed` answer always precedes its replay, and the
//!   replay (up to the watermark) precedes every live message (above it).
//! - A command over `COMMAND_BYTES_MAX` closes 1009 at once; the `MALFORMED_COMMANDS_MAX`th
//!   malformed command in a row closes 1008 instead of its error answer; a valid command
//!   resets the count.

use std::time::Instant;

use bytes::BytesMut;

use crate::channels::{Subscription, WAITING};
use crate::conn::end::End;
use crate::conn::{self, State};
use crate::history::Replay;
use crate::json_proto::{
    self as proto, Broken, Command, CommandError, ErrorCode, Payload, Recovery, Since,
};
use crate::shard::Core;
use crate::ws::{frame, OpCode};

/// The application-level heartbeat `{"op":"ping"}` as one complete text frame, shared by
/// every JSON connection.
pub(crate) const PING_FRAME: &[u8] = b"\x81\x0d{\"op\":\"ping\"}";

/// A JSON-mode connection's state beyond `Conn`.
#[derive(Default)]
pub struct JsonConn {
    /// One token per subscribed channel (slot `WAITING` while ahead of this shard).
    pub subs: Vec<Subscription>,
    /// Malformed commands since the last valid one.
    pub malformed: u32,
}

impl JsonConn {
    /// This connection's token for channel `id`, if it is subscribed to it.
    pub fn token_mut(&mut self, id: u32) -> Option<&mut Subscription> {
        self.subs.iter_mut().find(|sub| sub.channel == id)
    }
}

/// Parses one data message of a JSON connection (called in the decoder's callback).
pub(crate) fn parse(payload: &[u8], opcode: OpCode) -> Result<Command, CommandError> {
    let broken = if payload.len() > proto::COMMAND_BYTES_MAX {
        Broken::TooLarge
    } else if opcode != OpCode::Text {
        Broken::BinaryFrame
    } else {
        return proto::parse_command(payload);
    };
    Err(CommandError { id: None, broken })
}

impl Core {
    /// A JSON connection was upgraded: its side-table entry, then the query's channels
    /// subscribed in order, each answered without `id`.
    pub(crate) fn json_open(&mut self, key: usize, channels: Vec<Box<str>>) {
        let conn = JsonConn {
            subs: Vec::with_capacity(channels.len()),
            malformed: 0,
        };
        self.json_conns.insert(key, conn);
        for name in &channels {
            self.json_subscribe(key, None, name, None);
        }
        self.flush_out(key);
    }

    /// Applies the commands parsed from one receive, in order, until the connection closes.
    pub(crate) fn json_apply_commands(&mut self, key: usize) {
        let mut commands = std::mem::take(&mut self.json_commands);
        for command in commands.drain(..) {
            let c = &self.conns[key];
            if c.state != State::Open || c.has(conn::CLOSE_SENT) {
                break;
            }
            match command {
                Ok(command) => {
                    if let Some(j) = self.json_conns.get_mut(&key) {
                        j.malformed = 0;
                    }
                    self.json_command(key, command);
                }
                Err(err) => self.json_malformed(key, err),
            }
        }
        self.json_commands = commands;
    }

    /// Queues the answers encoded so far (in `out`) for `key`.
    pub(crate) fn flush_out(&mut self, key: usize) {
        if !self.out.is_empty() {
            let replies = self.take_replies();
            self.enqueue(key, replies);
        }
    }

    fn json_command(&mut self, key: usize, command: Command) {
        match command {
            Command::Subscribe { id, channel, since } => {
                self.json_subscribe(key, Some(id), &channel, since)
            }
            Command::Unsubscribe { id, channel } => self.json_unsubscribe(key, id, &channel),
            Command::Publish { id, channel, data } => self.json_publish(key, id, channel, data),
            Command::Pong => self.counters.pongs_received += 1,
            Command::Refresh { id, token } => self.json_refresh(key, id, &token),
        }
    }

    /// A malformed command: its error answer, or the close it earns.
    fn json_malformed(&mut self, key: usize, err: CommandError) {
        if err.close_code().is_some() {
            self.flush_out(key);
            self.end(key, End::JsonCommandTooLarge);
            return;
        }
        let malformed = match self.json_conns.get_mut(&key) {
            Some(j) => {
                j.malformed += 1;
                j.malformed
            }
            None => return,
        };
        if malformed >= proto::MALFORMED_COMMANDS_MAX {
            self.flush_out(key);
            self.end(key, End::JsonMalformedCommands);
            return;
        }
        self.json_error(err.id, err.code(), err.reason());
    }

    /// Appends an answer object (encoded by `encode`) as one text frame to `out`.
    pub(crate) fn json_answer(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        let mut text = BytesMut::with_capacity(128);
        encode(&mut text);
        frame::encode_into(&mut self.out, true, OpCode::Text, &text, None);
    }

    pub(crate) fn json_error(&mut self, id: Option<u64>, code: ErrorCode, reason: &str) {
        self.json_answer(|out| proto::encode_error(out, id, code, reason));
    }

    /// Subscribes `key` to `name`: from the live stream (no `since`), or resuming after
    /// `since` (replayed when this shard can, waiting when the client is ahead of it).
    fn json_subscribe(&mut self, key: usize, id: Option<u64>, name: &str, since: Option<Since>) {
        if !self.may_subscribe(key, name) {
            self.json_error(id, ErrorCode::Forbidden, "channel not allowed by the token");
            return;
        }
        let Some(j) = self.json_conns.get(&key) else {
            return;
        };
        let known = self.channels.id(name);
        if known.is_some_and(|cid| j.subs.iter().any(|s| s.channel == cid)) {
            self.json_error(id, ErrorCode::AlreadySubscribed, "already subscribed");
            return;
        }
        if j.subs.len() >= self.cfg.max_subscriptions as usize {
            self.json_error(id, ErrorCode::TooMany, "too many subscriptions");
            return;
        }
        if self.shared.broker.is_some() {
            self.json_subscribe_brokered(key, id, name, since);
            return;
        }
        let cid = self.channels.open(name);
        let mark = self.attach(cid);
        let epoch = mark.epoch.text();
        let subscribed = |offset, recovery| {
            move |out: &mut BytesMut| {
                proto::encode_subscribed(out, id, name, epoch.as_str(), offset, recovery)
            }
        };
        let token = match since {
            None => {
                self.json_answer(subscribed(mark.offset, Recovery::NotRecovered));
                self.channels.join(key as u32, cid)
            }
            Some(since) => {
                let mut replayed = Vec::new();
                let replay = self.shared.history.resume(
                    name,
                    &since.epoch,
                    since.offset,
                    mark.offset,
                    Instant::now(),
                    |offset, payload, _| replayed.push(proto::message_frame(name, offset, payload)),
                );
                match replay {
                    Replay::Recovered { .. } => {
                        self.json_answer(subscribed(mark.offset, Recovery::Recovered));
                        self.flush_out(key);
                        for frame in replayed {
                            self.enqueue(key, frame);
                        }
                        self.channels.join(key as u32, cid)
                    }
                    Replay::Ahead => {
                        self.json_answer(subscribed(since.offset, Recovery::Recovered));
                        self.channels.wait(key as u32, cid, since.offset)
                    }
                    Replay::NotRecovered { .. } => {
                        self.json_answer(subscribed(mark.offset, Recovery::NotRecovered));
                        self.channels.join(key as u32, cid)
                    }
                }
            }
        };
        self.counters.subscriptions += 1;
        let open = self.conns[key].state == State::Open;
        if let Some(j) = self.json_conns.get_mut(&key).filter(|_| open) {
            j.subs.push(token);
            return;
        }
        // A replay past --max-pending closed the connection, and its channels were left
        // before this token existed: it goes too.
        self.unsubscribe_token(key, token);
        self.detach_freed();
    }

    fn json_unsubscribe(&mut self, key: usize, id: u64, name: &str) {
        let cid = self.channels.id(name);
        let at = self.json_conns.get(&key).and_then(|j| {
            let cid = cid?;
            j.subs.iter().position(|s| s.channel == cid)
        });
        let Some(at) = at else {
            self.json_error(Some(id), ErrorCode::NotSubscribed, "not subscribed");
            return;
        };
        let Some(token) = self
            .json_conns
            .get_mut(&key)
            .map(|j| j.subs.swap_remove(at))
        else {
            return;
        };
        if token.slot == WAITING {
            self.forget_broker_join(key, token.channel);
        }
        self.unsubscribe_token(key, token);
        self.detach_freed();
        self.json_answer(|out| proto::encode_unsubscribed(out, id, name));
    }

    fn json_publish(&mut self, key: usize, id: u64, name: Box<str>, data: Payload) {
        // Answers so far go out before the delivery this publish may make to `key`.
        self.flush_out(key);
        if !self.may_publish(key, &name) {
            self.json_error(Some(id), ErrorCode::Forbidden, "publish not allowed");
            return;
        }
        if self.draining.is_some() {
            self.json_error(Some(id), ErrorCode::Busy, "draining");
            return;
        }
        if !self.publish_allowed(self.owner(key)) {
            self.json_error(Some(id), ErrorCode::TooMany, "publish rate");
            return;
        }
        let frame = match &data {
            Payload::Text(bytes) => frame::encode(OpCode::Text, bytes),
            Payload::Binary(bytes) => frame::encode(OpCode::Binary, bytes),
        };
        if self.shared.broker.is_some() {
            self.json_publish_brokered(key, id, name, frame);
            return;
        }
        match self.publish_channel(name.clone(), frame, None) {
            Ok(position) => {
                let epoch = position.epoch.text();
                self.json_answer(|out| {
                    proto::encode_published(out, id, &name, epoch.as_str(), position.offset)
                });
            }
            Err(_) => self.json_error(Some(id), ErrorCode::Busy, "shard inbox full"),
        }
    }
}
