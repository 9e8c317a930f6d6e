//! Cross-shard fan-out, and the glue between connections and their channels and sessions.
//!
//! A publish is encoded once into a `Bytes` frame. The shard that accepted it pushes one
//! `Arc<Publish>` into every client shard's inbox (a lock-free `std::sync::mpsc` queue) and
//! rings that shard's io_uring with a MsgRingData doorbell; each shard hands the same
//! `Bytes` to every local subscriber's send queue and, for admin requests, answers with
//! the count it handed out. Session claims travel the same way.
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
//! - A (session, tab) is held by at most one live connection node-wide: the newest claim
//!   (highest `Shared::session_seq`) wins and older holders are closed with 4001.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::channels::{Audience, SessionTag, Subscription};
use crate::conn::end::End;
use crate::conn::State;
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
        self.conns[key].sub = self.channels.subscribe(key as u32, name);
        self.counters.subscriptions += 1;
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
        self.doorbells[target] = true;
        Ok(())
    }

    /// Sends a publish to every client shard (this one included, delivered at once), or to
    /// none when any inbox is full. A shard that is gone counts as answering 0.
    pub(crate) fn publish_to_clients(&mut self, publish: Publish) -> Result<(), Unsent> {
        let (clients, me) = (self.peers.clients, self.index);
        for target in (0..clients).filter(|&t| t != me) {
            if !self.reserve(target) {
                for undo in (0..target).filter(|&t| t != me) {
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
        for target in (0..clients).filter(|&t| t != me) {
            if self.send_to(target, ShardMsg::Publish(Arc::clone(&publish))) == Err(Unsent::Gone) {
                if let Some((origin, id)) = publish.origin {
                    debug_assert_eq!(origin, self.index, "only the admin shard asks for counts");
                    self.admin_reply(id, target, 0);
                }
            }
        }
        if me < clients {
            self.deliver(&publish);
        }
        Ok(())
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
            let sent = self.publish_to_clients(Publish {
                target: Target::Channel(name.clone()),
                frame: frame.clone(),
                accepted: Instant::now(),
                origin: None,
            });
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
    fn publish_allowed(&mut self, owner: Owner) -> bool {
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
        let audience = match &publish.target {
            Target::Channel(name) => Audience::Channel(name),
            Target::Session(session) => Audience::Session(session),
        };
        let mut handed = 0u32;
        if let Some(mut walk) = self.channels.walk_start(audience) {
            // A subscriber closed here (a slow consumer closed by `enqueue`) leaves its
            // channel only at `walk_end`, so the walk goes over the live vector, uncopied.
            while let Some(key) = self.channels.walk_next(&mut walk) {
                let key = key as usize;
                if self.conns[key].route != RouteKind::Channel as u8 {
                    continue;
                }
                if self.enqueue(key, publish.frame.clone()) == crate::conn::send::Queued::Yes {
                    handed += 1;
                }
            }
            let conns = &mut self.conns;
            self.channels
                .walk_end(|moved| conns[moved.key as usize].sub.slot = moved.slot);
        }
        self.counters.deliveries += u64::from(handed);
        if handed > 0 {
            let ptr = publish.frame.as_ptr() as usize;
            let f = self.fanouts.entry(ptr).or_insert(Fanout {
                accepted: publish.accepted,
                remaining: 0,
            });
            f.remaining += handed;
        }
        if let Some((origin, id)) = publish.origin {
            let from = self.index;
            let count = u64::from(handed);
            // A gone admin shard has no one left to answer: nothing to do.
            let _ = self.send_to(origin, ShardMsg::Reply { id, from, count });
        }
    }
}
