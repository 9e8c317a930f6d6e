//! Cross-shard fan-out, and the glue between connections and their channels and sessions.
//!
//! A publish is encoded once into a `Bytes` frame. The shard that accepted it pushes one
//! `Arc<Publish>` into every client shard's inbox (a lock-free `std::sync::mpsc` queue) and
//! rings that shard's io_uring with a MsgRingData doorbell; each shard hands the same
//! `Bytes` to every local subscriber's send queue and, for admin requests, answers with
//! the count it handed out. Session claims travel the same way.
//!
//! A channel publish first takes the channel's next offset from the node-wide `History`
//! (`publish_channel`): the inbox pushes run under the channel's lock, so every inbox gets
//! a channel's publishes in offset order. Each shard keeps a watermark per channel (see
//! history.rs) and skips a publish at or below it. JSON-mode subscribers get the publish's
//! JSON message frame, encoded once node-wide by the first shard that needs it
//! (`Publish::json`); raw subscribers get the bare frame, and a raw-only audience never
//! encodes JSON.
//!
//! Back-pressure: publishes and claims are counted per inbox (`Peers::queued`) and refused
//! past `--max-shard-inbox`. A publish reserves a place in every target inbox before it
//! sends to any, so it reaches all client shards or none: the admin publisher gets 503,
//! a client publisher is closed with 1008. Replies to the admin shard are not bounded by
//! it: they are at most one per client shard for each waiting admin request.
//!
//! A shard that has exited (drained, stopped on a ring error, or failed to start) sets its
//! `Shared::exited` flag after dropping its inbox; it counts as having answered every
//! request still waiting for it with 0 connections, so no admin request waits for it.
//!
//! Who is subscribed to what lives in `Channels` (channels.rs), which never touches a
//! `Conn`: the methods here store its `Subscription` tokens in connections, apply the
//! `Moved` reports, and close the older holders a session `claim` names.
//!
//! Invariants:
//! - A connection's `sub` is `Subscription::NONE` or names its own slot in `Channels`: the
//!   glue here is the only writer, and it applies every `Moved` report.
//! - A delivery walks `Channels` directly (no copy of the subscriber list): a subscriber
//!   closed during the walk leaves at `walk_end` (see channels.rs).
//! - Per-subscriber cost of a delivery is one `Bytes` clone in its queue: no copy.
//! - A shard's own publishes go through its own inbox (drained right after the push, with
//!   no doorbell): delivering one at once while an older one of the same channel still
//!   waits in the inbox would move the watermark past it and skip it.
//! - A (session, tab) is held by at most one live connection node-wide: the newest claim
//!   (highest `Shared::session_seq`) wins and older holders are closed with 4001.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::channels::{Audience, Moved, SessionTag, Subscription};
use crate::conn::end::End;
use crate::conn::json::JsonConn;
use crate::conn::{Conn, State};
use crate::history::{PayloadKind, Position};
use crate::reactor::Conns;
use crate::ring::Owner;
use crate::route::RouteKind;
use crate::shard::{Core, TICK_MS};

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
}

impl Publish {
    /// The JSON-mode frame of this channel publish (encoded on first use).
    fn json_frame(&self, channel: &str) -> &Bytes {
        self.json.get_or_init(|| {
            let offset = self.position.map_or(0, |p| p.offset);
            crate::json_proto::message_frame(channel, offset, &frame_payload(&self.frame))
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
fn frame_kind(frame: &Bytes) -> PayloadKind {
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

/// Applies a swap-remove's report: the moved subscriber's token for channel `id` names
/// its new slot (a JSON-mode connection keeps one token per channel in its side table).
pub(crate) fn fix_moved(
    conns: &mut Conns<Conn>,
    json: &mut HashMap<usize, JsonConn>,
    id: u32,
    moved: Moved,
) {
    let key = moved.key as usize;
    if conns[key].route == RouteKind::Json as u8 {
        if let Some(sub) = json
            .get_mut(&key)
            .and_then(|j| j.subs.iter_mut().find(|s| s.channel == id))
        {
            sub.slot = moved.slot;
        }
    } else {
        conns[key].sub.slot = moved.slot;
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
        !matches!(self, ShardMsg::Reply { .. } | ShardMsg::CensusReply { .. })
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

impl Core {
    /// Subscribes `key` to `name`, creating the channel on first use.
    pub(crate) fn subscribe(&mut self, key: usize, name: &str) {
        debug_assert!(!self.conns[key].sub.is_some());
        let id = self.channels.open(name);
        self.attach(id);
        self.conns[key].sub = self.channels.join(key as u32, id);
        self.counters.subscriptions += 1;
    }

    /// Channel `id`'s watermark, taken from the history (`attach`) when the channel has
    /// none yet: its first local subscriber holds the channel until the last one leaves.
    pub(crate) fn attach(&mut self, id: u32) -> Position {
        if let Some(mark) = *self.channels.mark(id) {
            return mark;
        }
        let mark = self
            .shared
            .history
            .attach(self.channels.name(id), Instant::now());
        *self.channels.mark(id) = Some(mark);
        mark
    }

    /// Releases the history hold of every channel freed on this shard since the last call.
    pub(crate) fn detach_freed(&mut self) {
        if !self.channels.any_freed() {
            return;
        }
        let now = Instant::now();
        for name in self.channels.take_freed() {
            self.shared.history.detach(&name, now);
        }
    }

    /// Takes `key` out of its channel and session (called once it stops being Open).
    /// During a delivery `Channels` applies this after the walk (see channels.rs).
    pub(crate) fn leave(&mut self, key: usize) {
        let owner = self.owner(key);
        let c = &mut self.conns[key];
        let sub = std::mem::replace(&mut c.sub, Subscription::NONE);
        let tag = c.session.take();
        if sub.is_some() {
            if let Some(moved) = self.channels.unsubscribe(key as u32, sub) {
                self.conns[moved.key as usize].sub.slot = moved.slot;
            }
            self.counters.subscriptions -= 1;
        }
        if let Some(tag) = tag {
            self.channels.unbind(&tag.session, owner);
        }
        if self.conns[key].route == RouteKind::Json as u8 {
            let subs = self
                .json_conns
                .get_mut(&key)
                .map(|j| std::mem::take(&mut j.subs))
                .unwrap_or_default();
            for sub in &subs {
                self.unsubscribe_token(key, *sub);
            }
        }
        self.detach_freed();
    }

    /// Takes one token of `key` out of its channel, fixing the slot of whoever moved.
    pub(crate) fn unsubscribe_token(&mut self, key: usize, sub: Subscription) {
        if let Some(moved) = self.channels.unsubscribe(key as u32, sub) {
            fix_moved(&mut self.conns, &mut self.json_conns, sub.channel, moved);
        }
        self.counters.subscriptions -= 1;
    }

    /// Publishes `frame` (a complete frame the node encoded) to channel `name`: takes its
    /// next offset and pushes it into every client shard's inbox under the channel's lock,
    /// then, on a client shard, delivers this shard's inbox (its own copy included).
    pub(crate) fn publish_channel(
        &mut self,
        name: Box<str>,
        frame: Bytes,
        origin: Option<(usize, u32)>,
    ) -> Result<Position, Unsent> {
        let shared = Arc::clone(&self.shared);
        let payload = frame_payload(&frame);
        let kind = frame_kind(&frame);
        let now = Instant::now();
        let sent = shared
            .history
            .publish(&name, &payload, kind, now, |position| {
                self.push_to_clients(Publish {
                    target: Target::Channel(name.clone()),
                    frame,
                    accepted: now,
                    origin,
                    position: Some(position),
                    json: OnceLock::new(),
                })
            });
        if let (Some((_, id)), Ok((position, ()))) = (origin, &sent) {
            // The admin answer carries the position: kept before any count can complete it.
            if let Some(pending) = self.pending.get_mut(id as usize) {
                pending.position = Some(*position);
            }
        }
        self.answer_gone();
        if self.index < self.peers.clients {
            self.drain_inbox();
        }
        sent.map(|(position, ())| position)
    }

    /// Binds `key` to (session, tab): older holders here are replaced now, holders on
    /// other shards when our claim reaches them.
    pub(crate) fn bind_session(&mut self, key: usize, session: String, tab: String) {
        let seq = self.shared.session_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let claim = Arc::new(Claim {
            session: session.into(),
            tab: tab.into(),
            seq,
        });
        self.apply_claim(&claim);
        let owner = self.owner(key);
        self.channels.bind(&claim.session, &claim.tab, owner, seq);
        self.conns[key].session = Some(Box::new(SessionTag {
            session: claim.session.clone(),
            tab: claim.tab.clone(),
        }));
        for target in 0..self.peers.clients {
            if target == self.index {
                continue;
            }
            if !self.reserve(target) {
                // The older tab on that shard stays open: counted and logged, not fatal.
                self.counters.shard_inbox_full += 1;
                self.log(format_args!(
                    "event=shard_inbox_full target={target} msg=claim"
                ));
                continue;
            }
            let _ = self.send_to(target, ShardMsg::Claim(Arc::clone(&claim)));
        }
    }

    /// Closes local holders of the claimed (session, tab) whose claim is older.
    fn apply_claim(&mut self, claim: &Claim) {
        let older = self.channels.claim(&claim.session, &claim.tab, claim.seq);
        for owner in older {
            if self.live(owner) && self.conns[owner.key as usize].state == State::Open {
                self.end(owner.key as usize, End::Replaced);
            }
        }
    }

    /// Takes a place in `target`'s inbox for a publish or claim; false when it is full.
    pub(crate) fn reserve(&self, target: usize) -> bool {
        let queued = &self.peers.queued[target];
        if queued.fetch_add(1, Ordering::Relaxed) >= self.peers.inbox_max {
            queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Pushes a message into `target`'s inbox and schedules its doorbell. A publish or
    /// claim must have reserved its place (`reserve`); a reply needs none.
    pub(crate) fn send_to(&mut self, target: usize, msg: ShardMsg) -> Result<(), Unsent> {
        let counted = msg.bounded();
        if self.peers.inboxes[target].send(msg).is_err() {
            if counted {
                self.peers.queued[target].fetch_sub(1, Ordering::Relaxed);
            }
            return Err(Unsent::Gone);
        }
        // A shard's own copy is delivered by its caller draining the inbox: no doorbell.
        if target != self.index {
            self.doorbells[target] = true;
        }
        Ok(())
    }

    /// Sends a publish to every client shard's inbox (this one's included: the caller
    /// drains it), or to none when any inbox is full. A shard that is gone counts as
    /// answering 0.
    pub(crate) fn publish_to_clients(&mut self, publish: Publish) -> Result<(), Unsent> {
        let sent = self.push_to_clients(publish);
        self.answer_gone();
        sent
    }

    /// As `publish_to_clients`, but the counts of gone shards wait in `gone_counts` for
    /// `answer_gone`: under the history's lock, answering an admin request could start the
    /// next pipelined publish, which would take the same lock again.
    fn push_to_clients(&mut self, publish: Publish) -> Result<(), Unsent> {
        let clients = self.peers.clients;
        for target in 0..clients {
            if !self.reserve(target) {
                for undo in 0..target {
                    self.peers.queued[undo].fetch_sub(1, Ordering::Relaxed);
                }
                self.counters.shard_inbox_full += 1;
                self.log(format_args!(
                    "event=shard_inbox_full target={target} msg=publish"
                ));
                return Err(Unsent::Full);
            }
        }
        self.counters.publishes += 1;
        let publish = Arc::new(publish);
        for target in 0..clients {
            if self.send_to(target, ShardMsg::Publish(Arc::clone(&publish))) == Err(Unsent::Gone) {
                if let Some((origin, id)) = publish.origin {
                    debug_assert_eq!(origin, self.index, "only the admin shard asks for counts");
                    self.gone_counts.push((id, target));
                }
            }
        }
        Ok(())
    }

    /// Answers 0 for each gone shard `push_to_clients` met (outside the history's lock).
    fn answer_gone(&mut self) {
        while let Some((id, target)) = self.gone_counts.pop() {
            self.admin_reply(id, target, 0);
        }
    }

    /// Data messages a subscriber sent with `--client-publish` on: publish each to its
    /// channel, sender included, within the connection's `--client-publish-rate`.
    pub(crate) fn client_publish(&mut self, key: usize) {
        let sub = self.conns[key].sub;
        let frames = std::mem::take(&mut self.client_frames);
        if !sub.is_some() {
            self.client_frames = frames;
            self.client_frames.clear();
            return;
        }
        let name: Box<str> = self.channels.name(sub.channel).into();
        let owner = self.owner(key);
        for frame in &frames {
            if !self.publish_allowed(owner) {
                let rate = self.cfg.client_publish_rate;
                let detail = format_args!("rate_per_s={rate}");
                self.end_logged(key, End::PublishRate, Some(detail));
                break;
            }
            let sent = self.publish_channel(name.clone(), frame.clone(), None);
            if sent == Err(Unsent::Full) {
                self.end(key, End::PublishQueueFull);
                break;
            }
        }
        self.client_frames = frames;
        self.client_frames.clear();
    }

    /// Counts one publish of `owner` in its current one-second window; false past
    /// `--client-publish-rate`. Windows live in `publish_windows` only for connections that
    /// published, so a connection that never publishes pays nothing for the limit.
    pub(crate) fn publish_allowed(&mut self, owner: Owner) -> bool {
        let now = self.wheel.now();
        let window_ticks = (1000 / TICK_MS) as u32;
        let w = self
            .publish_windows
            .entry(owner.key as usize)
            .or_insert(PublishWindow {
                gen: owner.gen,
                start: now,
                count: 0,
            });
        if w.gen != owner.gen || now.wrapping_sub(w.start) >= window_ticks {
            *w = PublishWindow {
                gen: owner.gen,
                start: now,
                count: 0,
            };
        }
        w.count = w.count.saturating_add(1);
        w.count <= self.cfg.client_publish_rate
    }

    /// Handles every message waiting in this shard's inbox.
    pub(crate) fn drain_inbox(&mut self) {
        let Some(inbox) = self.inbox.take() else {
            return;
        };
        while let Ok(msg) = inbox.try_recv() {
            if msg.bounded() {
                self.peers.queued[self.index].fetch_sub(1, Ordering::Relaxed);
            }
            match msg {
                ShardMsg::Publish(publish) => self.deliver(&publish),
                ShardMsg::Claim(claim) => self.apply_claim(&claim),
                ShardMsg::Reply { id, from, count } => self.admin_reply(id, from, count),
                ShardMsg::Census(census) => self.answer_census(&census),
                ShardMsg::CensusReply {
                    id,
                    from,
                    channels,
                    truncated,
                } => self.census_reply(id, from, channels, truncated),
            }
        }
        self.inbox = Some(inbox);
    }

    /// Hands the publish's frame to every local subscriber (or session connection) and
    /// reports the count to the origin.
    fn deliver(&mut self, publish: &Publish) {
        let (audience, channel) = match &publish.target {
            Target::Channel(name) => (Audience::Channel(name), Some(&**name)),
            Target::Session(session) => (Audience::Session(session), None),
        };
        let (mut handed, mut handed_json) = (0u32, 0u32);
        let mut sequenced = None;
        if let (Some(name), Some(position)) = (channel, publish.position) {
            if let Some(id) = self.channels.id(name) {
                match self.channels.mark(id) {
                    Some(mark) if mark.epoch == position.epoch && position.offset > mark.offset => {
                        mark.offset = position.offset;
                        sequenced = Some(id);
                    }
                    // Published before this shard attached: its subscribers came later.
                    Some(_) => {
                        self.reply_count(publish, 0);
                        return;
                    }
                    None => {}
                }
            }
        }
        if let Some(mut walk) = self.channels.walk_start(audience) {
            // A subscriber closed here (a slow consumer closed by `enqueue`) leaves its
            // channel only at `walk_end`, so the walk goes over the live vector, uncopied.
            while let Some(key) = self.channels.walk_next(&mut walk) {
                let key = key as usize;
                let (frame, count) = match (RouteKind::from_u8(self.conns[key].route), channel) {
                    (RouteKind::Channel, _) => (publish.frame.clone(), &mut handed),
                    (RouteKind::Json, Some(name)) => {
                        (publish.json_frame(name).clone(), &mut handed_json)
                    }
                    _ => continue,
                };
                if self.enqueue(key, frame) == crate::conn::send::Queued::Yes {
                    *count += 1;
                }
            }
            let (conns, json) = (&mut self.conns, &mut self.json_conns);
            self.channels
                .walk_end_in(|id, moved| fix_moved(conns, json, id, moved));
            self.detach_freed();
        }
        if let Some(id) = sequenced.filter(|&id| self.channels.has_waiting(id)) {
            let json = &mut self.json_conns;
            self.channels.promote(id, |key, sub| {
                if let Some(token) = json
                    .get_mut(&(key as usize))
                    .and_then(|j| j.subs.iter_mut().find(|s| s.channel == id))
                {
                    *token = sub;
                }
            });
        }
        self.counters.deliveries += u64::from(handed + handed_json);
        // Fan-out latency is tracked per frame: the bare one and the JSON one each end
        // when their last local copy is sent.
        self.track_fanout(&publish.frame, publish.accepted, handed);
        if let Some(json) = publish.json.get() {
            self.track_fanout(json, publish.accepted, handed_json);
        }
        self.reply_count(publish, handed + handed_json);
    }

    /// Counts `handed` local copies of `frame` in flight, for its fan-out latency.
    fn track_fanout(&mut self, frame: &Bytes, accepted: Instant, handed: u32) {
        if handed > 0 {
            let f = self
                .fanouts
                .entry(frame.as_ptr() as usize)
                .or_insert(Fanout {
                    accepted,
                    remaining: 0,
                });
            f.remaining += handed;
        }
    }

    /// Reports this shard's delivery count to the publish's origin, if it asked.
    fn reply_count(&mut self, publish: &Publish, handed: u32) {
        if let Some((origin, id)) = publish.origin {
            let from = self.index;
            let count = u64::from(handed);
            // A gone admin shard has no one left to answer: nothing to do.
            let _ = self.send_to(origin, ShardMsg::Reply { id, from, count });
        }
    }
}
