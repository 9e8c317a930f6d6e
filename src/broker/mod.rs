//! The Redis broker (`--broker`): what joins several nodes, so that a publish through any of
//! them reaches every subscriber on every node, once and in the same order.
//!
//! Two threads of their own, never a shard, talk to Redis through the `redis` crate's
//! blocking client (each with its own connection, timeouts on every read and write):
//! - the publisher (`publisher.rs`) takes `PublishJob`s from a queue and runs the publish
//!   script (`wire.rs`): Redis takes the offset, keeps the message in the channel's stream
//!   and publishes it, atomically. The outcome goes back to the asking shard's inbox as
//!   `ShardMsg::Brokered`, with a doorbell;
//! - the subscriber (`subscriber.rs`) holds the node's one pub/sub connection. Shards send it
//!   `HoldJob`s when a channel gets its first local subscriber and when its last one leaves;
//!   it subscribes while any shard holds the channel and hands every message it receives to
//!   the holding shards' inboxes (and to every client shard when this node published it and
//!   waits for the count), with a doorbell. A JSON subscription that needs the channel's
//!   position (or a resume's kept messages) asks with `HoldJob::Position`; the answer,
//!   `ShardMsg::Attached`, is read on a second connection of this thread after the
//!   subscription is confirmed and pushed in order with the channel's messages.
//!
//! The publisher thread also answers the admin API's history reads (`JobTo::History`,
//! `reader.rs`), in queue order with the publishes, so `GET /history` under `--broker`
//! keeps the same deadline and 503 as a publish.
//!
//! Sessions span nodes through one node-wide pub/sub channel (`wire::SESSIONS_CHANNEL`):
//! a `/send` and each session-bound connect's claim are published there by the publisher
//! thread (`Broker::publish_session`), and the subscriber thread hands other nodes' to every
//! client shard. One channel, not one per session: a node would otherwise SUBSCRIBE and
//! UNSUBSCRIBE per session connect and leave, Redis traffic per connection.
//!
//! A comma list in `--broker` is a Redis Cluster (`cluster.rs`, `BrokerMode::Cluster`): the
//! publisher keeps one connection per master and runs each channel's script on the master
//! owning the slot of `{C}` (SPUBLISH there), and the subscriber thread runs `shards.rs`
//! instead of `subscriber.rs`: one SSUBSCRIBE connection per master. Both read the slot
//! map (`CLUSTER SLOTS`) again after a redirect or a lost master.
//!
//! Both reconnect on any failure with exponential backoff and full jitter
//! (`Backoff`), and the subscriber then subscribes again to everything held.
//!
//! Invariants:
//! - A shard never waits for Redis: it only pushes into the two queues (unbounded for holds,
//!   `--max-shard-inbox` for publishes) and reads answers from its inbox.
//! - A publish is answered only after Redis ran the script, or 503 by its deadline
//!   (`--broker-timeout` after it was accepted): a job past its deadline is never sent, and
//!   the connection's read and write timeouts end at the deadline.
//! - Every shard receives a channel's brokered messages in the order Redis published them
//!   (one subscriber connection, one thread, inbox pushes in receive order).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::fanout::{Peers, ShardMsg};
use crate::history::{PayloadKind, Position};
use crate::ring::Ring;
use crate::shard::Shared;

pub mod cluster;
mod publisher;
mod reader;
mod shards;
mod subscriber;
pub mod wire;

pub use cluster::BrokerMode;

/// Longest wait of the first reconnect (the backoff's base).
pub const BACKOFF_BASE_MS: u64 = 50;
/// Longest wait between two reconnect attempts (the backoff's cap).
pub const BACKOFF_MAX_MS: u64 = 2_000;
/// Low bits of a brokered claim order that hold the claiming node's tag.
const CLAIM_NODE_BITS: u32 = 16;
const CLAIM_NODE_MASK: u64 = (1 << CLAIM_NODE_BITS) - 1;

/// Key TTL when `--history-ttl` is not set: a channel nobody published to for a day starts
/// a new epoch.
pub const KEY_TTL_DEFAULT_MS: u64 = 24 * 3600 * 1000;

/// The broker's settings, from the command line.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `redis://HOST:PORT[,HOST:PORT...]`, as given.
    pub url: String,
    /// One Redis, or a Redis Cluster (a comma list).
    pub mode: BrokerMode,
    /// One `redis://` URL per address of `url` (the cluster's seed nodes).
    pub seeds: Vec<String>,
    /// Sent with AUTH on every connection, when set.
    pub password: Option<String>,
    /// `--broker-timeout`.
    pub timeout: Duration,
    /// `--history-size`: messages kept per channel in Redis.
    pub history_size: usize,
    /// TTL of a channel's keys, refreshed by every publish.
    pub key_ttl_ms: u64,
}

/// Why a publish did not reach Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerFault {
    /// No connection to Redis (down, refused, reconnecting).
    Unreachable,
    /// Redis did not answer by the publish's deadline.
    Timeout,
    /// Redis answered with an error.
    Refused,
}

impl BrokerFault {
    /// The 503 body's reason.
    pub fn reason(self) -> &'static str {
        match self {
            BrokerFault::Unreachable => "broker unreachable",
            BrokerFault::Timeout => "broker timeout",
            BrokerFault::Refused => "broker refused the publish",
        }
    }
}

/// Where a publish job goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobTo {
    /// Channel `channel`, through the publish script (offset, history, pub/sub).
    Channel,
    /// `wire::SESSIONS_CHANNEL`: `payload` is a whole `wire::session_message`, published
    /// as it is (no offset, no history).
    Sessions,
    /// Not a publish: reads `channel`'s position and at most `limit` kept messages after
    /// `since` (`GET /history`, `GET /channels/<name>`), answered `ShardMsg::BrokerRead`
    /// under the reply's id and `ticket`; `payload` is empty.
    History {
        since: u64,
        limit: usize,
        ticket: u32,
    },
}

/// One publish for the publisher thread.
pub struct PublishJob {
    pub to: JobTo,
    pub channel: Box<str>,
    pub payload: Bytes,
    pub kind: PayloadKind,
    /// `--broker-timeout` after the publish was accepted.
    pub deadline: Instant,
    /// The shard to answer and the publish's sequence number there (`None`: nobody waits,
    /// as for client publishes).
    pub reply: Option<(usize, u32)>,
}

/// A shard's hold on a channel, for the subscriber thread.
pub enum HoldJob {
    /// `shard` has its first local subscriber of `channel`.
    Hold { shard: usize, channel: Box<str> },
    /// `shard`'s last local subscriber of `channel` left.
    Release { shard: usize, channel: Box<str> },
    /// `shard` needs `channel`'s position (read after its subscription is confirmed) and,
    /// with `since`, the kept messages after that offset: answered `ShardMsg::Attached`
    /// under `ticket`, in order with the channel's messages.
    Position {
        shard: usize,
        channel: Box<str>,
        ticket: u64,
        since: Option<u64>,
    },
}

/// One kept message read back from Redis: its offset, kind and payload.
pub type Kept = (u64, PayloadKind, Bytes);

/// What the node reports about the broker (`/healthz`, `/metrics`).
#[derive(Default)]
pub struct BrokerStats {
    pub publisher_up: AtomicBool,
    pub subscriber_up: AtomicBool,
    /// Connections made again after one was lost (both threads).
    pub reconnects: AtomicU64,
    /// Publishes that Redis accepted.
    pub publishes: AtomicU64,
    /// Publishes answered 503 (or, for client publishes, dropped).
    pub publish_failures: AtomicU64,
    /// Messages received on the subscriber connection.
    pub messages: AtomicU64,
    /// Messages received that were not ours to read (counted, never delivered).
    pub unreadable: AtomicU64,
    /// Channels the subscriber connection is subscribed to.
    pub subscriptions: AtomicU64,
    /// Masters in the Redis Cluster's last slot map (0 with one Redis).
    pub cluster_masters: AtomicU64,
    /// Masters the subscriber thread's pub/sub connection is up to.
    pub cluster_masters_up: AtomicU64,
}

/// The node's handle on the broker threads (one, in `Shared`).
pub struct Broker {
    pub config: BrokerConfig,
    /// This node's tag in the messages it publishes (random per process).
    pub node: u64,
    publishes: Mutex<Sender<PublishJob>>,
    publishes_queued: AtomicUsize,
    publishes_max: usize,
    holds: Mutex<Sender<HoldJob>>,
    /// Channels the subscriber connection has subscribed to (confirmed by Redis).
    subscribed: Mutex<HashSet<Box<str>>>,
    seq: AtomicU64,
    /// Times the subscriber connection was lost: the publisher checks its own connection
    /// (PING) before its next publish when this moved, as Redis may have gone away.
    subscriber_losses: AtomicU64,
    pub stats: BrokerStats,
}

/// The threads' ends of the queues, until `spawn`.
pub struct BrokerQueues {
    publishes: Receiver<PublishJob>,
    holds: Receiver<HoldJob>,
}

impl Broker {
    /// The handle and the queue ends its threads will read.
    pub fn new(config: BrokerConfig, publishes_max: usize) -> (Broker, BrokerQueues) {
        let (publish_tx, publish_rx) = mpsc::channel();
        let (hold_tx, hold_rx) = mpsc::channel();
        let broker = Broker {
            config,
            node: random_u64(),
            publishes: Mutex::new(publish_tx),
            publishes_queued: AtomicUsize::new(0),
            publishes_max,
            holds: Mutex::new(hold_tx),
            subscribed: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
            subscriber_losses: AtomicU64::new(0),
            stats: BrokerStats::default(),
        };
        let queues = BrokerQueues {
            publishes: publish_rx,
            holds: hold_rx,
        };
        (broker, queues)
    }

    /// A fresh sequence number for a publish whose count this node waits for.
    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed) as u32
    }

    /// Queues a publish; false when `--max-shard-inbox` publishes already wait.
    pub fn publish(&self, job: PublishJob) -> bool {
        if self.publishes_queued.fetch_add(1, Ordering::Relaxed) >= self.publishes_max {
            self.publishes_queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        let sent = lock(&self.publishes).send(job).is_ok();
        if !sent {
            self.publishes_queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Tells the subscriber thread about a hold or a release (never blocks).
    pub fn hold(&self, job: HoldJob) {
        let _ = lock(&self.holds).send(job);
    }

    /// Queues a session message (`/send` or a claim) for every other node; nobody waits
    /// for it. False when it could not be queued (counted as a publish failure).
    pub fn publish_session(&self, note: &wire::SessionNote) -> bool {
        let queued = self.publish(PublishJob {
            to: JobTo::Sessions,
            channel: "".into(),
            payload: wire::session_message(note),
            kind: PayloadKind::Binary,
            deadline: Instant::now() + self.config.timeout,
            reply: None,
        });
        if !queued {
            self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// The claim order of a (session, tab) bound on this node now: a Lamport clock over
    /// the claims of every node (`seen_claim` moves it past others'), with this node's tag
    /// in the low 16 bits, so claims of two nodes never tie and every node ranks them alike.
    pub fn next_claim_seq(&self, clock: &AtomicU64) -> u64 {
        let tick = clock.fetch_add(1, Ordering::Relaxed) + 1;
        (tick << CLAIM_NODE_BITS) | (self.node & CLAIM_NODE_MASK)
    }

    /// Moves the claim clock past another node's claim `seq`.
    pub fn seen_claim(clock: &AtomicU64, seq: u64) {
        clock.fetch_max(seq >> CLAIM_NODE_BITS, Ordering::Relaxed);
    }

    /// Whether the subscriber connection is subscribed to `channel` now.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        lock(&self.subscribed).contains(channel)
    }

    /// Both connections are up.
    pub fn up(&self) -> bool {
        self.stats.publisher_up.load(Ordering::Relaxed)
            && self.stats.subscriber_up.load(Ordering::Relaxed)
    }

    fn set_subscribed(&self, channel: &str, on: bool) {
        let mut set = lock(&self.subscribed);
        if on {
            set.insert(channel.into());
        } else {
            set.remove(channel);
        }
        self.stats
            .subscriptions
            .store(set.len() as u64, Ordering::Relaxed);
    }

    fn clear_subscribed(&self) {
        lock(&self.subscribed).clear();
        self.stats.subscriptions.store(0, Ordering::Relaxed);
    }
}

/// Everything a broker thread needs to reach the shards.
struct Reach {
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    peers: Arc<Peers>,
    /// This thread's own ring, used only for doorbells.
    ring: Ring,
    /// Shards to ring once this round of pushes is done.
    doorbells: Vec<bool>,
}

impl Reach {
    /// Pushes `msg` into `target`'s inbox; a publish waits for room under
    /// `--max-shard-inbox` (back-pressure reaches Redis through the unread socket), unless
    /// the shard has exited. False when the shard is gone.
    fn push(&mut self, target: usize, msg: ShardMsg) -> bool {
        if msg.bounded() {
            loop {
                let queued = &self.peers.queued[target];
                if queued.fetch_add(1, Ordering::Relaxed) < self.peers.inbox_max {
                    break;
                }
                queued.fetch_sub(1, Ordering::Relaxed);
                if self.shared.exited[target].load(Ordering::Acquire) || self.stopping() {
                    return false;
                }
                self.ring_doorbells();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let bounded = msg.bounded();
        if self.peers.inboxes[target].send(msg).is_err() {
            if bounded {
                self.peers.queued[target].fetch_sub(1, Ordering::Relaxed);
            }
            return false;
        }
        self.doorbells[target] = true;
        true
    }

    /// Rings every shard pushed to since the last call.
    fn ring_doorbells(&mut self) {
        let mut rang = false;
        for (target, doorbell) in self.doorbells.iter_mut().enumerate() {
            if std::mem::take(doorbell) {
                self.ring
                    .msg_ring(self.peers.ring_fds[target], target as u32, 1, 0);
                rang = true;
            }
        }
        if rang {
            self.ring.submit_now();
        }
    }

    fn stopping(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }
}

/// Starts the two broker threads. Each makes its own file table (a copy of the node's,
/// with every ring fd) before `ready` is answered, closes the listeners in it and enables
/// its doorbell ring; call before the node closes its own copies.
pub fn spawn(
    shared: &Arc<Shared>,
    peers: &Arc<Peers>,
    queues: BrokerQueues,
    rings: [Ring; 2],
    listeners: &[std::os::fd::RawFd],
) -> Result<(), String> {
    let broker = Arc::clone(shared.broker.as_ref().expect("spawned with a broker"));
    let [publish_ring, subscribe_ring] = rings;
    let (ready_tx, ready_rx) = mpsc::channel();
    let make = |ring: Ring| Reach {
        broker: Arc::clone(&broker),
        shared: Arc::clone(shared),
        peers: Arc::clone(peers),
        ring,
        doorbells: vec![false; peers.inboxes.len()],
    };
    let BrokerQueues { publishes, holds } = queues;
    start_thread(
        "broker-publish",
        make(publish_ring),
        listeners,
        &ready_tx,
        |reach| publisher::run(reach, publishes),
    )?;
    start_thread(
        "broker-subscribe",
        make(subscribe_ring),
        listeners,
        &ready_tx,
        |reach| match reach.broker.config.mode {
            BrokerMode::Single => subscriber::run(reach, holds),
            BrokerMode::Cluster => shards::run(reach, holds),
        },
    )?;
    drop(ready_tx);
    for _ in 0..2 {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a broker thread died during start".to_string()),
        }
    }
    Ok(())
}

/// Spawns one broker thread: `adopt`, report on `ready`, then `body`.
fn start_thread(
    name: &'static str,
    reach: Reach,
    listeners: &[std::os::fd::RawFd],
    ready: &Sender<Result<(), String>>,
    body: impl FnOnce(Reach) + Send + 'static,
) -> Result<(), String> {
    let ready = ready.clone();
    let listeners = listeners.to_vec();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let started = adopt(&reach, &listeners).map_err(|e| format!("{name}: {e}"));
            let ok = started.is_ok();
            let _ = ready.send(started);
            if ok {
                body(reach);
            }
        })
        .map(|_| ())
        .map_err(|e| format!("{name}: spawning the thread failed: {e}"))
}

/// A broker thread's start: its own file table (holding every ring fd), without the
/// listeners (a copy held here would keep a closed shard's listener accepting), and its
/// doorbell ring enabled for it.
fn adopt(reach: &Reach, listeners: &[std::os::fd::RawFd]) -> Result<(), String> {
    crate::ring::sys::unshare_file_table()
        .map_err(|e| format!("unshare(CLONE_FILES) failed: {e}"))?;
    for &fd in listeners {
        crate::ring::sys::close(fd);
    }
    reach
        .ring
        .enable()
        .map_err(|e| format!("enabling the io_uring failed: {e}"))
}

/// Exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(cap, base · 2^n)]`, so nodes that lost Redis together do not return together.
pub struct Backoff {
    attempt: u32,
    state: u64,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            state: seed | 1,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE_MS
            .saturating_mul(1 << self.attempt.min(16))
            .min(BACKOFF_MAX_MS);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*: plenty for spreading reconnects.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let random = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_millis(random % (ceiling + 1))
    }

    /// A connection worked: the next loss starts from the base again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Opens one connection to Redis with `--broker-timeout` on connect, reads and writes, and
/// authenticates when a password is set.
fn connect(config: &BrokerConfig) -> redis::RedisResult<redis::Connection> {
    connect_to(config, &config.seeds[0])
}

/// As `connect`, to the node at `url` (a cluster master or seed).
fn connect_to(config: &BrokerConfig, url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(config.timeout)?;
    con.set_read_timeout(Some(config.timeout))?;
    con.set_write_timeout(Some(config.timeout))?;
    if let Some(password) = &config.password {
        redis::cmd("AUTH").arg(password).query::<()>(&mut con)?;
    }
    Ok(con)
}

/// Checks `--broker` before the node starts: `redis://` addresses the client accepts.
pub fn check_url(url: &str) -> Result<(), String> {
    cluster::parse_seeds(url).map(|_| ())
}

/// A random 64-bit value from the clock, the process id and the stack's address (enough
/// to tell nodes and epochs apart; nothing secret depends on it).
pub fn random_u64() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ (&local as *const u8 as u64)
        ^ COUNT
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A brokered publish's outcome for the shard that asked.
pub type Outcome = Result<Position, BrokerFault>;

/// A history read's outcome: the page (`None`: Redis has no entry for the channel), or
/// why Redis did not answer.
pub type ReadOutcome = Result<Option<crate::history::Page>, BrokerFault>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let mut backoff = Backoff::new(42);
        let waits: Vec<u64> = (0..40)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert!(waits[0] <= BACKOFF_BASE_MS);
        assert!(waits.iter().all(|&w| w <= BACKOFF_MAX_MS));
        // Full jitter: the late waits are spread over [0, cap], not pinned at the cap.
        let late = &waits[20..];
        assert!(late.iter().any(|&w| w < BACKOFF_MAX_MS / 2), "{late:?}");
        assert!(late.iter().any(|&w| w > BACKOFF_MAX_MS / 2), "{late:?}");
        backoff.reset();
        assert!(backoff.next_wait().as_millis() as u64 <= BACKOFF_BASE_MS);
    }

    #[test]
    fn only_plain_redis_urls_are_taken() {
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_url("rediss://127.0.0.1:6379").is_err());
        assert!(check_url("http://x").is_err());
    }
}
