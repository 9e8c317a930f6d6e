//! The subscriber thread in a Redis Cluster (`BrokerMode::Cluster`): one pub/sub connection
//! (and one command connection, for positions) per cluster master, read in turn by this one
//! thread. A held channel is SSUBSCRIBEd on the master owning its slot, reference-counted
//! across the node's shards as in single mode (`subscriber.rs`, whose `forward`,
//! `forward_session` and position script this reuses).
//!
//! The sessions channel stays ordinary pub/sub (`SUBSCRIBE wire::SESSIONS_CHANNEL`), held on
//! one connected master: a cluster broadcasts an ordinary PUBLISH to every node, so any
//! master hears every node's `/send` and claims (the cost: each session message crosses the
//! cluster bus to every cluster node).
//!
//! Invariants:
//! - A channel is SSUBSCRIBEd on at most one connection, the one of the master owning its
//!   slot in the last slot map read; it is in that connection's `channels` exactly from
//!   Redis' confirmation until it is released or the connection is lost.
//! - A lost connection, an error answer (MOVED, CLUSTERDOWN) or an SUNSUBSCRIBE nobody asked
//!   for (a slot moved) drops that master's connection and the slot map: the map is read
//!   again, the connection made again after the backoff, and its channels subscribed again.
//!   Other masters' connections keep their subscriptions meanwhile.
//! - A channel's messages come from one connection, read in order, and are pushed into the
//!   inboxes in that order.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Connection, IntoConnectionInfo, ProtocolVersion, Script, Value};

use super::cluster::{self, SlotMap};
use super::subscriber::READ_SLICE_MS;
use super::subscriber::{apply_offline, forward, forward_session, Holders, Session};
use super::{connect_to, random_u64, wire, Backoff, BrokerConfig, HoldJob, Reach};
use crate::fanout::ShardMsg;

/// Messages read from one connection before the next one gets its turn.
const READ_BURST_MAX: usize = 256;

/// The thread's loop, until the node shuts down.
pub(super) fn run(mut reach: Reach, jobs: Receiver<HoldJob>) {
    let mut state = Sharded {
        holders: Holders::new(),
        deferred: Vec::new(),
        slots: None,
        cons: Vec::new(),
        discover_at: Instant::now(),
        backoff: Backoff::new(random_u64()),
        script: Script::new(wire::POSITION_SCRIPT),
        dirty: false,
    };
    loop {
        if reach.stopping() {
            return;
        }
        state.connect_due(&mut reach);
        loop {
            match jobs.try_recv() {
                Ok(job) => state.apply(&mut reach, job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        for job in std::mem::take(&mut state.deferred) {
            state.apply(&mut reach, job);
        }
        let reading = state.read(&mut reach);
        state.report(&reach);
        if !reading {
            std::thread::sleep(Duration::from_millis(READ_SLICE_MS));
        }
    }
}

/// One master's connections.
struct ShardCon {
    url: String,
    /// The pub/sub connection (subscribed mode).
    pubsub: Option<Connection>,
    /// The command connection (position script), made and lost with `pubsub`.
    cmd: Option<Connection>,
    /// Channels SSUBSCRIBEd on `pubsub`, confirmed by Redis.
    channels: HashSet<Box<str>>,
    /// `pubsub` holds the sessions channel.
    sessions: bool,
    backoff: Backoff,
    /// No connect attempt before this.
    retry_at: Instant,
    ever_connected: bool,
}

/// The thread's state.
struct Sharded {
    holders: Holders,
    /// Position requests waiting for their master's connection.
    deferred: Vec<HoldJob>,
    slots: Option<SlotMap>,
    cons: Vec<ShardCon>,
    discover_at: Instant,
    backoff: Backoff,
    script: Script,
    /// Subscriptions may not match the holders and the slot map (after a discovery or an
    /// unasked SUNSUBSCRIBE): `reconcile` runs.
    dirty: bool,
}

impl Sharded {
    /// Every master has its connection up, and one of them holds the sessions channel.
    fn up(&self) -> bool {
        self.slots.is_some()
            && !self.cons.is_empty()
            && self.cons.iter().all(|c| c.pubsub.is_some())
            && self.cons.iter().any(|c| c.sessions)
    }

    /// Publishes the thread's state to `/healthz` and `/metrics`.
    fn report(&self, reach: &Reach) {
        let stats = &reach.broker.stats;
        stats.subscriber_up.store(self.up(), Ordering::Relaxed);
        let masters = self.slots.as_ref().map_or(0, |map| map.masters().len());
        let up = self.cons.iter().filter(|c| c.pubsub.is_some()).count();
        stats
            .cluster_masters
            .store(masters as u64, Ordering::Relaxed);
        stats.cluster_masters_up.store(up as u64, Ordering::Relaxed);
    }

    /// The index of the connection of the master owning `channel`'s slot.
    fn owner(&self, channel: &str) -> Option<usize> {
        let url = self
            .slots
            .as_ref()?
            .master_of(cluster::channel_slot(channel))?;
        self.cons.iter().position(|c| c.url == url)
    }

    /// Reads the slot map when due, connects each master whose backoff ended, and makes
    /// the subscriptions match the holders.
    fn connect_due(&mut self, reach: &mut Reach) {
        if self.slots.is_none() && Instant::now() >= self.discover_at {
            self.discover(reach);
        }
        for at in 0..self.cons.len() {
            let con = &self.cons[at];
            if con.pubsub.is_none() && Instant::now() >= con.retry_at {
                self.open(reach, at);
            }
        }
        if !self.cons.iter().any(|c| c.sessions) {
            if let Some(at) = self.cons.iter().position(|c| c.pubsub.is_some()) {
                let holders = &self.holders;
                let con = &mut self.cons[at];
                let pubsub = con.pubsub.as_mut().expect("connected");
                match subscribe(reach, holders, pubsub, "SUBSCRIBE", wire::SESSIONS_CHANNEL) {
                    Ok(()) => con.sessions = true,
                    Err(e) => self.lose(reach, at, &e),
                }
            }
        }
        if self.dirty && self.slots.is_some() {
            self.reconcile(reach);
        }
    }

    fn discover(&mut self, reach: &mut Reach) {
        let config = &reach.broker.config;
        let candidates = cluster::candidates(config, self.slots.as_ref());
        match cluster::discover(config, &candidates) {
            Ok(map) => {
                self.backoff.reset();
                let masters = map.masters();
                for at in (0..self.cons.len()).rev() {
                    if !masters.contains(&self.cons[at].url) {
                        self.lose(reach, at, "no longer a master");
                        self.cons.remove(at);
                    }
                }
                for url in masters {
                    if !self.cons.iter().any(|c| c.url == url) {
                        self.cons.push(ShardCon::new(url));
                    }
                }
                self.slots = Some(map);
                self.dirty = true;
            }
            Err(e) => {
                self.discover_at = Instant::now() + self.backoff.next_wait();
                crate::elog!("ringpush event=broker_connect_failed role=subscribe error={e}");
            }
        }
    }

    /// Connects master `at` and subscribes every held channel its slots own.
    fn open(&mut self, reach: &mut Reach, at: usize) {
        let config = &reach.broker.config;
        let url = self.cons[at].url.clone();
        let made = connect_pubsub(config, &url).and_then(|p| Ok((p, connect_to(config, &url)?)));
        let con = &mut self.cons[at];
        match made {
            Ok((pubsub, cmd)) => {
                con.pubsub = Some(pubsub);
                con.cmd = Some(cmd);
                con.backoff.reset();
                if con.ever_connected {
                    reach
                        .broker
                        .stats
                        .reconnects
                        .fetch_add(1, Ordering::Relaxed);
                }
                con.ever_connected = true;
                crate::elog!("ringpush event=broker_connected role=subscribe node={url}");
                self.dirty = true;
            }
            Err(e) => {
                con.retry_at = Instant::now() + con.backoff.next_wait();
                crate::elog!(
                    "ringpush event=broker_connect_failed role=subscribe node={url} error={e}"
                );
            }
        }
    }

    /// Subscribes each held channel on its owner's connection when it is not, and drops
    /// subscriptions a connection no longer owns.
    fn reconcile(&mut self, reach: &mut Reach) {
        self.dirty = false;
        for at in 0..self.cons.len() {
            let stray: Vec<Box<str>> = self.cons[at]
                .channels
                .iter()
                .filter(|c| self.owner(c) != Some(at))
                .cloned()
                .collect();
            for channel in stray {
                self.unsubscribe(reach, at, &channel);
            }
        }
        let held: Vec<Box<str>> = self.holders.keys().cloned().collect();
        for channel in held {
            self.hold(reach, &channel);
        }
    }

    /// SSUBSCRIBEs `channel` on its owner's connection, if that is up and it is not yet.
    fn hold(&mut self, reach: &mut Reach, channel: &str) {
        let Some(at) = self.owner(channel) else {
            return;
        };
        let holders = &self.holders;
        let con = &mut self.cons[at];
        let Some(pubsub) = con.pubsub.as_mut() else {
            return;
        };
        if con.channels.contains(channel) {
            return;
        }
        let name = wire::pubsub_channel(channel);
        match subscribe(reach, holders, pubsub, "SSUBSCRIBE", &name) {
            Ok(()) => {
                con.channels.insert(channel.into());
                reach.broker.set_subscribed(channel, true);
            }
            Err(e) => self.lose(reach, at, &e),
        }
    }

    /// SUNSUBSCRIBEs `channel` on connection `at` (the confirmation is read, and ignored,
    /// with the messages).
    fn unsubscribe(&mut self, reach: &mut Reach, at: usize, channel: &str) {
        let con = &mut self.cons[at];
        if !con.channels.remove(channel) {
            return;
        }
        reach.broker.set_subscribed(channel, false);
        let Some(pubsub) = con.pubsub.as_mut() else {
            return;
        };
        let packed = redis::cmd("SUNSUBSCRIBE")
            .arg(wire::pubsub_channel(channel))
            .get_packed_command();
        if let Err(e) = pubsub.send_packed_command(&packed) {
            self.lose(reach, at, &e.to_string());
        }
    }

    fn apply(&mut self, reach: &mut Reach, job: HoldJob) {
        match job {
            HoldJob::Hold { ref channel, .. } => {
                let channel = channel.clone();
                apply_offline(&mut self.holders, &mut self.deferred, job);
                self.hold(reach, &channel);
            }
            HoldJob::Release { ref channel, .. } => {
                let channel = channel.clone();
                apply_offline(&mut self.holders, &mut self.deferred, job);
                if !self.holders.contains_key(&channel) {
                    if let Some(at) = self.cons.iter().position(|c| c.channels.contains(&channel)) {
                        self.unsubscribe(reach, at, &channel);
                    }
                }
            }
            HoldJob::Position { .. } => self.position(reach, job),
        }
    }

    /// Answers a position request on the owner's command connection once the channel is
    /// subscribed there; until then it waits in `deferred`.
    fn position(&mut self, reach: &mut Reach, job: HoldJob) {
        let HoldJob::Position {
            shard,
            ref channel,
            ticket,
            since,
        } = job
        else {
            return;
        };
        let Some(at) = self.owner(channel).filter(|&at| {
            let con = &self.cons[at];
            con.cmd.is_some() && con.channels.contains(&**channel)
        }) else {
            self.deferred.push(job);
            return;
        };
        let cmd = self.cons[at].cmd.as_mut().expect("connected");
        let mut session = Session {
            cmd,
            script: self.script.clone(),
        };
        match session.position(reach, channel, since) {
            Ok((position, kept)) => {
                let attached = ShardMsg::Attached {
                    channel: channel.clone(),
                    ticket,
                    position,
                    kept,
                };
                reach.push(shard, attached);
                reach.ring_doorbells();
            }
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                self.deferred.push(job);
                self.lose(reach, at, &e.to_string());
            }
            Err(e) => {
                crate::elog!("ringpush event=broker_refused role=subscribe error={e}");
            }
        }
    }

    /// Reads what each connected master has sent; false when no connection is up.
    fn read(&mut self, reach: &mut Reach) -> bool {
        let up = self.cons.iter().filter(|c| c.pubsub.is_some()).count();
        if up == 0 {
            return false;
        }
        let slice = Duration::from_millis((READ_SLICE_MS / up as u64).max(1));
        for at in 0..self.cons.len() {
            if let Err(e) = self.read_one(reach, at, slice) {
                self.lose(reach, at, &e);
            }
        }
        true
    }

    fn read_one(&mut self, reach: &mut Reach, at: usize, slice: Duration) -> Result<(), String> {
        let holders = &self.holders;
        let con = &mut self.cons[at];
        let Some(pubsub) = con.pubsub.as_mut() else {
            return Ok(());
        };
        let _ = pubsub.set_read_timeout(Some(slice));
        for _ in 0..READ_BURST_MAX {
            let value = match pubsub.recv_response() {
                Ok(value) => value,
                Err(e) if e.is_timeout() => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            match pushed(value)? {
                Pushed::Message { channel, payload } => deliver(reach, holders, &channel, payload),
                Pushed::Notice { kind, channel } => {
                    let held = wire::channel_of(&channel).filter(|c| con.channels.contains(*c));
                    if kind == "sunsubscribe" && held.is_some() {
                        // A slot moved away from this master: read the map again.
                        return Err(format!("{channel} was unsubscribed by the cluster"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops master `at`'s connections after `reason`: its channels count as unsubscribed
    /// until it is back, and the slot map is read again.
    fn lose(&mut self, reach: &mut Reach, at: usize, reason: &str) {
        let con = &mut self.cons[at];
        if con.pubsub.is_none() {
            return;
        }
        con.pubsub = None;
        con.cmd = None;
        con.sessions = false;
        for channel in con.channels.drain() {
            reach.broker.set_subscribed(&channel, false);
        }
        con.retry_at = Instant::now() + con.backoff.next_wait();
        reach
            .broker
            .subscriber_losses
            .fetch_add(1, Ordering::Relaxed);
        self.slots = None;
        self.dirty = true;
        crate::elog!(
            "ringpush event=broker_lost role=subscribe node={} error={}",
            con.url,
            reason.replace(' ', "_")
        );
    }
}

impl ShardCon {
    fn new(url: String) -> ShardCon {
        ShardCon {
            url,
            pubsub: None,
            cmd: None,
            channels: HashSet::new(),
            sessions: false,
            backoff: Backoff::new(random_u64()),
            retry_at: Instant::now(),
            ever_connected: false,
        }
    }
}

/// Opens master `url`'s pub/sub connection, in RESP3: its messages and confirmations are
/// push values, which the client never drops (a read that timed out makes it skip the next
/// reply that is not a push, so a RESP2 message could be lost after an idle read slice).
/// The password goes into the handshake (HELLO 3 AUTH), as HELLO comes before any command.
fn connect_pubsub(config: &BrokerConfig, url: &str) -> redis::RedisResult<Connection> {
    let info = url.into_connection_info()?;
    let mut settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    if let Some(password) = &config.password {
        settings = settings.set_password(password);
    }
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let con = client.get_connection_with_timeout(config.timeout)?;
    con.set_read_timeout(Some(config.timeout))?;
    con.set_write_timeout(Some(config.timeout))?;
    Ok(con)
}

/// One value read on a pub/sub connection.
enum Pushed {
    /// `message` or `smessage`: a published message.
    Message { channel: String, payload: Bytes },
    /// A (s)subscribe or (s)unsubscribe confirmation, or a notice.
    Notice { kind: String, channel: String },
}

/// Classifies a value; an error answer (MOVED, CLUSTERDOWN) or any other shape is an error.
fn pushed(value: Value) -> Result<Pushed, String> {
    let parts = match value {
        Value::Array(parts) => parts,
        Value::Push { kind, data } => {
            let mut parts = vec![Value::BulkString(kind.to_string().into_bytes())];
            parts.extend(data);
            parts
        }
        Value::ServerError(e) => return Err(format!("{e:?}")),
        other => return Err(format!("unexpected pub/sub value {other:?}")),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let kind = parts.first().and_then(text).unwrap_or_default();
    let channel = parts.get(1).and_then(text).unwrap_or_default();
    match (kind.as_str(), parts.get(2)) {
        ("message" | "smessage", Some(Value::BulkString(payload))) => Ok(Pushed::Message {
            channel,
            payload: Bytes::copy_from_slice(payload),
        }),
        _ => Ok(Pushed::Notice { kind, channel }),
    }
}

/// Hands one message to the shards.
fn deliver(reach: &mut Reach, holders: &Holders, channel: &str, payload: Bytes) {
    if channel == wire::SESSIONS_CHANNEL {
        forward_session(reach, payload);
    } else {
        forward(reach, holders, channel, payload);
    }
    reach.ring_doorbells();
}

/// Sends `verb name` and reads until Redis confirms it (within `--broker-timeout`),
/// delivering the messages read meanwhile in order.
fn subscribe(
    reach: &mut Reach,
    holders: &Holders,
    pubsub: &mut Connection,
    verb: &str,
    name: &str,
) -> Result<(), String> {
    let packed = redis::cmd(verb).arg(name).get_packed_command();
    pubsub
        .send_packed_command(&packed)
        .map_err(|e| e.to_string())?;
    let _ = pubsub.set_read_timeout(Some(reach.broker.config.timeout));
    let confirmation = verb.to_ascii_lowercase();
    loop {
        let value = pubsub.recv_response().map_err(|e| e.to_string())?;
        match pushed(value)? {
            Pushed::Message { channel, payload } => deliver(reach, holders, &channel, payload),
            Pushed::Notice { kind, channel } if kind == confirmation && channel == name => {
                return Ok(());
            }
            Pushed::Notice { .. } => {}
        }
    }
}
