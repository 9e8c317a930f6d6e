//! The subscriber thread: the node's one pub/sub connection. It keeps which shards hold
//! which channel (`holders`), subscribes while any shard holds a channel and unsubscribes
//! when the last one lets go, and hands each message to the shards that should see it.
//!
//! It also holds `wire::SESSIONS_CHANNEL` for the connection's whole life: other nodes'
//! `/send` bodies and (session, tab) claims go to every client shard (`forward_session`),
//! and a claim moves the node's claim clock past its order first.
//!
//! Invariants:
//! - Redis is subscribed to a channel exactly while `holders` has an entry for it (after a
//!   reconnect, every held channel is subscribed again before any message is read).
//! - Messages are pushed into inboxes in the order the connection received them, so every
//!   shard sees a channel's messages in Redis' publish order.
//! - A message goes to the shards holding its channel when it is read; one this node
//!   published and waits for a count of goes to every client shard (those holding nothing
//!   answer 0), so the count's wait always ends.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Connection, PubSub, Script};

use super::wire::{self, Delivered, SessionNote};
use super::{connect, random_u64, Backoff, Broker, HoldJob, Kept, Reach};
use crate::fanout::{Claim, Publish, ShardMsg, Target};
use crate::history::{PayloadKind, Position};
use crate::ws::{frame, OpCode};

/// How long one read waits for a message before the thread looks at its hold queue again
/// (the longest a new hold waits before it is subscribed).
pub(super) const READ_SLICE_MS: u64 = 10;

/// Which shards hold each channel.
pub(super) type Holders = HashMap<Box<str>, Vec<usize>>;

/// The thread's loop, until the node shuts down.
pub(super) fn run(mut reach: Reach, jobs: Receiver<HoldJob>) {
    let mut holders = Holders::new();
    // Position requests that came while the connection was down, served after it is back.
    let mut deferred: Vec<HoldJob> = Vec::new();
    let mut backoff = Backoff::new(random_u64());
    let mut ever_connected = false;
    loop {
        if reach.stopping() {
            return;
        }
        match connect(&reach.broker.config).and_then(|c| Ok((c, connect(&reach.broker.config)?))) {
            Ok((mut con, mut cmd)) => {
                backoff.reset();
                if ever_connected {
                    reach
                        .broker
                        .stats
                        .reconnects
                        .fetch_add(1, Ordering::Relaxed);
                }
                ever_connected = true;
                crate::elog!("ringpush event=broker_connected role=subscribe");
                let mut link = Session {
                    cmd: &mut cmd,
                    script: Script::new(wire::POSITION_SCRIPT),
                };
                let ended = session(
                    &mut reach,
                    &mut con,
                    &mut link,
                    &jobs,
                    &mut holders,
                    &mut deferred,
                );
                reach
                    .broker
                    .stats
                    .subscriber_up
                    .store(false, Ordering::Relaxed);
                reach
                    .broker
                    .subscriber_losses
                    .fetch_add(1, Ordering::Relaxed);
                reach.broker.clear_subscribed();
                match ended {
                    Ended::Stopped => return,
                    Ended::Lost(e) => {
                        crate::elog!("ringpush event=broker_lost role=subscribe error={e}");
                    }
                }
            }
            Err(e) => {
                crate::elog!("ringpush event=broker_connect_failed role=subscribe error={e}");
            }
        }
        // Holds and releases keep being applied while the connection is down.
        let retry_at = Instant::now() + backoff.next_wait();
        while Instant::now() < retry_at {
            if reach.stopping() {
                return;
            }
            while let Ok(job) = jobs.try_recv() {
                apply_offline(&mut holders, &mut deferred, job);
            }
            std::thread::sleep(Duration::from_millis(READ_SLICE_MS));
        }
    }
}

/// How a connection's session ended.
enum Ended {
    Stopped,
    Lost(redis::RedisError),
}

/// One connection's life: subscribe to everything held, then alternate between the hold
/// queue and the messages.
fn session(
    reach: &mut Reach,
    con: &mut Connection,
    link: &mut Session<'_>,
    jobs: &Receiver<HoldJob>,
    holders: &mut Holders,
    deferred: &mut Vec<HoldJob>,
) -> Ended {
    let timeout = reach.broker.config.timeout;
    let mut pubsub = con.as_pubsub();
    let mut held: Vec<String> = holders.keys().map(|c| wire::pubsub_channel(c)).collect();
    // Session traffic has one node-wide channel, held for the connection's whole life.
    held.push(wire::SESSIONS_CHANNEL.to_string());
    if let Err(e) = pubsub.subscribe(&held) {
        return Ended::Lost(e);
    }
    for channel in holders.keys() {
        reach.broker.set_subscribed(channel, true);
    }
    reach
        .broker
        .stats
        .subscriber_up
        .store(true, Ordering::Relaxed);
    let mut waiting = std::mem::take(deferred).into_iter();
    while let Some(job) = waiting.next() {
        if let Err((e, retry)) = apply(reach, &mut pubsub, link, holders, job) {
            deferred.extend(retry);
            deferred.extend(waiting);
            return Ended::Lost(e);
        }
    }
    loop {
        if reach.stopping() {
            return Ended::Stopped;
        }
        loop {
            let job = match jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ended::Stopped,
            };
            // Subscribing waits for Redis' confirmation within --broker-timeout.
            let _ = pubsub.set_read_timeout(Some(timeout));
            if let Err((e, retry)) = apply(reach, &mut pubsub, link, holders, job) {
                deferred.extend(retry);
                return Ended::Lost(e);
            }
        }
        let _ = pubsub.set_read_timeout(Some(Duration::from_millis(READ_SLICE_MS)));
        match pubsub.get_message() {
            Ok(message) => {
                let channel = message.get_channel_name().to_string();
                let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                if channel == wire::SESSIONS_CHANNEL {
                    forward_session(reach, payload);
                } else {
                    forward(reach, holders, &channel, payload);
                }
                reach.ring_doorbells();
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Ended::Lost(e),
        }
    }
}

/// Applies a hold or release with the connection up: the first holder subscribes, the
/// last one to leave unsubscribes.
fn apply(
    reach: &mut Reach,
    pubsub: &mut PubSub<'_>,
    link: &mut Session<'_>,
    holders: &mut Holders,
    job: HoldJob,
) -> Result<(), (redis::RedisError, Option<HoldJob>)> {
    match job {
        HoldJob::Hold { shard, channel } => {
            let shards = holders.entry(channel.clone()).or_default();
            let first = shards.is_empty();
            if !shards.contains(&shard) {
                shards.push(shard);
            }
            if first {
                pubsub
                    .subscribe(wire::pubsub_channel(&channel))
                    .map_err(|e| (e, None))?;
                reach.broker.set_subscribed(&channel, true);
            }
        }
        HoldJob::Release { shard, channel } => {
            let Some(shards) = holders.get_mut(&channel) else {
                return Ok(());
            };
            shards.retain(|&s| s != shard);
            if shards.is_empty() {
                holders.remove(&channel);
                reach.broker.set_subscribed(&channel, false);
                pubsub
                    .unsubscribe(wire::pubsub_channel(&channel))
                    .map_err(|e| (e, None))?;
            }
        }
        HoldJob::Position {
            shard,
            channel,
            ticket,
            since,
        } => {
            let (position, kept) = match link.position(reach, &channel, since) {
                Ok(answer) => answer,
                // The connection is gone: asked again once it is back.
                Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                    let retry = HoldJob::Position {
                        shard,
                        channel,
                        ticket,
                        since,
                    };
                    return Err((e, Some(retry)));
                }
                // Redis refused the script: nothing to retry (the subscription waits).
                Err(e) => {
                    crate::elog!("ringpush event=broker_refused role=subscribe error={e}");
                    return Ok(());
                }
            };
            let attached = ShardMsg::Attached {
                channel,
                ticket,
                position,
                kept,
            };
            reach.push(shard, attached);
            reach.ring_doorbells();
        }
    }
    Ok(())
}

/// The subscriber's command connection (positions and kept messages).
pub(super) struct Session<'c> {
    pub(super) cmd: &'c mut Connection,
    pub(super) script: Script,
}

impl Session<'_> {
    /// Runs the position script for `channel`. Read after the subscription was confirmed:
    /// every message above the position arrives on the pub/sub connection after it.
    pub(super) fn position(
        &mut self,
        reach: &Reach,
        channel: &str,
        since: Option<u64>,
    ) -> redis::RedisResult<(Position, Vec<Kept>)> {
        let config = &reach.broker.config;
        let value: redis::Value = self
            .script
            .key(wire::meta_key(channel))
            .key(wire::log_key(channel))
            .arg(wire::epoch_candidate(random_u64()))
            .arg(config.key_ttl_ms)
            .arg(since.map_or(String::new(), |s| s.to_string()))
            .invoke(self.cmd)?;
        wire::parse_position(value).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected answer to the position script",
            ))
        })
    }
}

/// Applies a hold or release while there is no connection (the next one subscribes to
/// whatever is held then).
pub(super) fn apply_offline(holders: &mut Holders, deferred: &mut Vec<HoldJob>, job: HoldJob) {
    match job {
        HoldJob::Hold { shard, channel } => {
            let shards = holders.entry(channel).or_default();
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        HoldJob::Release { shard, channel } => {
            if let Some(shards) = holders.get_mut(&channel) {
                shards.retain(|&s| s != shard);
                if shards.is_empty() {
                    holders.remove(&channel);
                }
            }
        }
        HoldJob::Position { .. } => deferred.push(job),
    }
}

/// Hands one received message to the shards that should see it.
pub(super) fn forward(reach: &mut Reach, holders: &Holders, pubsub_channel: &str, message: Bytes) {
    let stats = &reach.broker.stats;
    stats.messages.fetch_add(1, Ordering::Relaxed);
    let parsed = wire::channel_of(pubsub_channel).zip(wire::parse_message(message));
    let Some((
        channel,
        Delivered {
            position,
            kind,
            origin,
            payload,
        },
    )) = parsed
    else {
        stats.unreadable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let opcode = match kind {
        PayloadKind::Text => OpCode::Text,
        PayloadKind::Binary => OpCode::Binary,
    };
    let clients = reach.peers.clients;
    let admin = clients;
    let own = origin.filter(|tag| tag.node == reach.broker.node);
    let publish = Arc::new(Publish {
        target: Target::Channel(channel.into()),
        frame: frame::encode(opcode, &payload),
        accepted: Instant::now(),
        origin: own.map(|tag| (admin, tag.seq)),
        position: Some(position),
        json: OnceLock::new(),
        brokered: true,
    });
    let targets: Vec<usize> = match own {
        Some(_) => (0..clients).collect(),
        None => holders.get(channel).cloned().unwrap_or_default(),
    };
    for target in targets {
        let _ = reach.push(target, ShardMsg::Publish(Arc::clone(&publish)));
    }
}

/// Hands another node's `/send` or claim to every client shard (this node's own were
/// applied when they were made).
pub(super) fn forward_session(reach: &mut Reach, message: Bytes) {
    let stats = &reach.broker.stats;
    stats.messages.fetch_add(1, Ordering::Relaxed);
    let Some(note) = wire::parse_session_message(message) else {
        stats.unreadable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let (publish, claim) = match note {
        SessionNote::Send { node, .. } | SessionNote::Claim { node, .. }
            if node == reach.broker.node =>
        {
            return;
        }
        SessionNote::Send {
            session,
            kind,
            payload,
            ..
        } => {
            let opcode = match kind {
                PayloadKind::Text => OpCode::Text,
                PayloadKind::Binary => OpCode::Binary,
            };
            let publish = Arc::new(Publish {
                target: Target::Session(session),
                frame: frame::encode(opcode, &payload),
                accepted: Instant::now(),
                origin: None,
                position: None,
                json: OnceLock::new(),
                brokered: false,
            });
            (Some(publish), None)
        }
        SessionNote::Claim {
            session, tab, seq, ..
        } => {
            Broker::seen_claim(&reach.shared.session_seq, seq);
            (None, Some(Arc::new(Claim { session, tab, seq })))
        }
    };
    for target in 0..reach.peers.clients {
        let msg = match (&publish, &claim) {
            (Some(publish), _) => ShardMsg::Publish(Arc::clone(publish)),
            (None, Some(claim)) => ShardMsg::Claim(Arc::clone(claim)),
            (None, None) => return,
        };
        let _ = reach.push(target, msg);
    }
}
