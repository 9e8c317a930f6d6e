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
//! With `--broker` (broker/), channel publishes do not take a local offset: they are queued
//! for the broker's publisher thread (`broker_publish`), and the subscriber thread hands
//! every message Redis publishes to the holding shards' inboxes as a `brokered` `Publish`
//! carrying Redis' position. A shard holds a channel (`attach` → `HoldJob::Hold`) from its
//! first local subscriber until the channel is freed (`detach_freed` → `Release`); its
//! watermark starts `Position::UNKNOWN` and takes the epoch of the first message (or of a
//! JSON subscription's `Attached`), and a brokered message of another epoch starts it again
//! (Redis lost the channel's keys). Sessions span nodes through one node-wide pub/sub
//! channel (`wire::SESSIONS_CHANNEL`, subscribed while the subscriber connection is up):
//! `/send` delivers locally and publishes the body there, and `bind_session` publishes its
//! claim there; the subscriber thread hands other nodes' sends and claims to every client
//! shard's inbox. A brokered claim order is a Lamport clock with the node's tag in its low
//! bits (`Broker::next_claim_seq`), so every node ranks two claims alike.
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
//!   (highest `Shared::session_seq`) wins and older holders are closed with 4001. Under
//!   `--broker` the same holds across nodes once each node has read the others' claims.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::broker::wire::SessionNote;
use crate::broker::{HoldJob, JobTo, PublishJob};
use crate::channels::{Audience, Moved, Subscription, Tab, NO_SESSION};
use crate::conn::end::End;
use crate::conn::json::JsonConn;
use crate::conn::{Conn, State};
use crate::history::Position;
use crate::reactor::Conns;
use crate::ring::Owner;
use crate::route::RouteKind;
use crate::shard::{Core, TICK_MS};

mod messages;
pub use messages::*;

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
        if let Some(sub) = json.get_mut(&key).and_then(|j| j.token_mut(id)) {
            sub.slot = moved.slot;
        }
    } else {
        conns[key].sub.slot = moved.slot;
    }
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
        let mark = match &self.shared.broker {
            // Redis keeps the position: this shard delivers every message the broker hands
            // it from now on, the first one setting the epoch.
            Some(broker) => {
                broker.hold(HoldJob::Hold {
                    shard: self.index,
                    channel: self.channels.name(id).into(),
                });
                Position::UNKNOWN
            }
            None => self
                .shared
                .history
                .attach(self.channels.name(id), Instant::now()),
        };
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
            match &self.shared.broker {
                Some(broker) => broker.hold(HoldJob::Release {
                    shard: self.index,
                    channel: name,
                }),
                None => self.shared.history.detach(&name, now),
            }
        }
    }

    /// Takes `key` out of its channel and session (called once it stops being Open).
    /// During a delivery `Channels` applies this after the walk (see channels.rs).
    pub(crate) fn leave(&mut self, key: usize) {
        let owner = self.owner(key);
        let c = &mut self.conns[key];
        let sub = std::mem::replace(&mut c.sub, Subscription::NONE);
        let session = std::mem::replace(&mut c.session, NO_SESSION);
        if sub.is_some() {
            if let Some(moved) = self.channels.unsubscribe(key as u32, sub) {
                self.conns[moved.key as usize].sub.slot = moved.slot;
            }
            self.counters.subscriptions -= 1;
        }
        if session != NO_SESSION {
            self.channels.unbind_id(session, owner);
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
                    brokered: false,
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

    /// Queues a publish of `frame` to channel `name` for the broker (`--broker`): Redis takes
    /// its offset and hands it to every node, this one included. `reply` is the sequence
    /// number under which the outcome comes back (`ShardMsg::Brokered`), if anyone waits.
    pub(crate) fn broker_publish(
        &mut self,
        name: Box<str>,
        frame: Bytes,
        reply: Option<u32>,
    ) -> Result<(), Unsent> {
        let broker = self.shared.broker.as_ref().expect("called with --broker");
        let job = PublishJob {
            to: JobTo::Channel,
            channel: name,
            payload: frame_payload(&frame),
            kind: frame_kind(&frame),
            deadline: Instant::now() + broker.config.timeout,
            reply: reply.map(|seq| (self.index, seq)),
        };
        if !broker.publish(job) {
            self.counters.shard_inbox_full += 1;
            self.log(format_args!(
                "event=shard_inbox_full target=broker msg=publish"
            ));
            return Err(Unsent::Full);
        }
        self.counters.publishes += 1;
        Ok(())
    }

    /// Binds `key` to (session, tab): older holders here are replaced now, holders on
    /// other shards when our claim reaches them.
    pub(crate) fn bind_session(&mut self, key: usize, session: String, tab: String) {
        let seq = match &self.shared.broker {
            Some(broker) => broker.next_claim_seq(&self.shared.session_seq),
            None => self.shared.session_seq.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let claim = Arc::new(Claim {
            session: session.into(),
            tab: tab.into(),
            seq,
        });
        if let Some(broker) = &self.shared.broker {
            // Other nodes close their older holders when the claim reaches them: one
            // message per session-bound connect, none when it leaves.
            broker.publish_session(&SessionNote::Claim {
                node: broker.node,
                session: claim.session.clone(),
                tab: claim.tab.clone(),
                seq,
            });
        }
        self.apply_claim(&claim);
        let owner = self.owner(key);
        let tab = Tab::of(&claim.tab, self.index, owner);
        self.conns[key].session = self.channels.bind_tab(&claim.session, tab, owner, seq);
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
            let sent = if self.shared.broker.is_some() {
                self.broker_publish(name.clone(), frame.clone(), None)
            } else {
                self.publish_channel(name.clone(), frame.clone(), None)
                    .map(|_| ())
            };
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
                ShardMsg::Brokered { seq, outcome } if self.index < self.peers.clients => {
                    self.json_brokered(seq, outcome)
                }
                ShardMsg::Brokered { seq, outcome } => self.brokered(seq, outcome),
                ShardMsg::Attached {
                    channel,
                    ticket,
                    position,
                    kept,
                } => self.broker_attached(&channel, ticket, position, kept),
                ShardMsg::BrokerRead {
                    id,
                    ticket,
                    outcome,
                } => self.broker_read(id, ticket, outcome),
                ShardMsg::BrokerReply { seq, from, count } => {
                    if let Some(&id) = self.broker_waits.get(&seq) {
                        self.admin_reply(id, from, count);
                    }
                }
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
        // A brokered message that does not follow the watermark (the subscriber connection
        // was down, or Redis lost the channel) tells JSON subscribers before it arrives.
        let mut gap = None;
        if let (Some(name), Some(position)) = (channel, publish.position) {
            if let Some(id) = self.channels.id(name) {
                match self.channels.mark(id) {
                    Some(mark) if mark.epoch == position.epoch && position.offset > mark.offset => {
                        if publish.brokered && position.offset > mark.offset + 1 {
                            gap = Some(gap_frame(name, position));
                        }
                        mark.offset = position.offset;
                        sequenced = Some(id);
                    }
                    // Redis started a new epoch (the first message since the hold, or its
                    // keys expired or were lost): its messages come in its publish order.
                    Some(mark) if publish.brokered && mark.epoch != position.epoch => {
                        if *mark != Position::UNKNOWN {
                            gap = Some(gap_frame(name, position));
                        }
                        *mark = position;
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
                        if let Some(gap) = &gap {
                            let _ = self.enqueue(key, gap.clone());
                        }
                        (publish.json_frame(name).clone(), &mut handed_json)
                    }
                    (RouteKind::Json, None) => {
                        (publish.session_json_frame().clone(), &mut handed_json)
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
                if let Some(token) = json.get_mut(&(key as usize)).and_then(|j| j.token_mut(id)) {
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
            let reply = if publish.brokered {
                ShardMsg::BrokerReply {
                    seq: id,
                    from,
                    count,
                }
            } else {
                ShardMsg::Reply { id, from, count }
            };
            // A gone admin shard has no one left to answer: nothing to do.
            let _ = self.send_to(origin, reply);
        }
    }
}
