//! The node-wide sequencer and history store: every channel's epoch and offsets, and the
//! messages kept for resume (`--history-size`, `--history-ttl`, `--history-memory`).
//!
//! One `History` is shared by every shard (`Arc`). Channels are spread over
//! `LOCK_SHARDS` mutexes by a hash of their name, so publishes to different channels rarely
//! contend. Per channel it keeps an `Epoch` (one unbroken history: a new one whenever the
//! history is lost, which is at process start and when the channel's entry is dropped), the
//! last offset (+1 per publish, so every shard sees the same offsets), and a ring of
//! retained `(offset, time, payload, kind)` entries whose payload is a `Bytes` view of the
//! publish itself (a reference, never a copy).
//!
//! Invariants:
//! - A channel's offsets are assigned, appended and handed to the `publish` closure under
//!   the channel's lock, so the closure (which pushes the publish into every shard's inbox)
//!   runs in offset order: every inbox receives a channel's publishes in offset order.
//!   A refused closure consumes no offset.
//! - A channel's retained entries are contiguous offsets ending at its last offset; they
//!   are only ever removed from the front (size, age, memory) or all at once (channel
//!   dropped), so "(since, upto] is retained" is one comparison with the front.
//! - The node-wide byte count is the sum of the retained entries' `entry_bytes`; the
//!   memory cap evicts the globally oldest entry first (a node-wide append sequence; each
//!   lock shard publishes the sequence of its oldest entry in `heads`). Only one lock is
//!   ever held at a time, so eviction across shards cannot deadlock; the cap can be passed
//!   by at most the payloads being published at that instant, one per publishing thread.
//! - A channel entry is dropped (its history lost, a new epoch on its next use) only while
//!   no shard holds it (`attach` .. `detach`): offsets never restart under a live
//!   subscriber. Entries nobody holds are bounded: at most `idle_channels_max` (spread per
//!   lock shard; the least recently used one goes first) and dropped by `sweep` once idle
//!   and empty for `idle_ttl`.
//!
//! The integration's no-gap, no-duplicate scheme (each shard, on its own thread):
//! - A shard keeps, per channel with local subscribers, a watermark `(epoch, offset)`: the
//!   last offset it delivered or skipped. When a channel gets its first local subscriber
//!   it calls `attach`, which reads the position under the channel's lock, and sets the
//!   watermark to it; when the last one leaves it calls `detach` and forgets the watermark.
//! - An inbox publish whose epoch differs from the watermark's, or whose offset is not
//!   above it, is skipped (it was published before the attach); any other is delivered and
//!   becomes the watermark. Attached channels never change epoch.
//! - A subscriber resuming from `since` is replayed `(since, watermark]` with `resume` and
//!   then joins the live list, all on the shard thread between two inbox messages: nothing
//!   is missed and nothing repeated. If the client is ahead of this shard (`since` above
//!   the watermark but not above the channel's last offset: it saw those messages through
//!   another shard), `resume` answers `Ahead` and the shard joins it to the live list only
//!   once its watermark reaches `since`.
//! - A shard's own publishes reach its own subscribers through its inbox like everyone
//!   else's (`Core::publish_channel` drains its own inbox): delivering offset k at once
//!   while k-1 still waits in the inbox would set the watermark to k and then skip k-1.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

mod evict;
mod types;
pub use types::*;

/// How many mutexes the channels are spread over.
pub const LOCK_SHARDS: usize = 64;

/// What one retained entry costs beyond its payload bytes (its slot in the ring).
pub const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<Entry>();

/// One retained message.
struct Entry {
    offset: u64,
    /// Node-wide append order, for the memory cap's oldest-first eviction.
    seq: u64,
    at: Instant,
    payload: Bytes,
    kind: PayloadKind,
}

impl Entry {
    fn bytes(&self) -> usize {
        entry_bytes(self.payload.len())
    }
}

/// What one retained entry of `payload_len` bytes counts against `--history-memory`.
pub fn entry_bytes(payload_len: usize) -> usize {
    payload_len + ENTRY_OVERHEAD_BYTES
}

/// One channel's sequencer and retained entries.
struct ChannelLog {
    epoch: Epoch,
    last_offset: u64,
    /// Shards with local subscribers (between `attach` and `detach`).
    holders: u32,
    used_at: Instant,
    entries: VecDeque<Entry>,
}

/// The channels of one mutex.
#[derive(Default)]
struct LockShard {
    channels: HashMap<Arc<str>, ChannelLog>,
    /// Every channel that retains entries, keyed by its oldest entry's `seq`.
    oldest: BTreeMap<u64, Arc<str>>,
    /// Channel entries with no holder.
    unheld: usize,
}

/// The node-wide sequencer and history store.
pub struct History {
    config: HistoryConfig,
    locks: Box<[Mutex<LockShard>]>,
    /// Per lock shard: the `seq` of its oldest retained entry, `u64::MAX` when none.
    heads: Box<[AtomicU64]>,
    bytes: AtomicUsize,
    entries: AtomicUsize,
    channels: AtomicUsize,
    seq: AtomicU64,
    epoch_seed: u64,
    epoch_count: AtomicU64,
    evictions: [AtomicU64; 4],
    channels_dropped: AtomicU64,
    replays_recovered: AtomicU64,
    replays_not_recovered: AtomicU64,
    replayed_messages: AtomicU64,
}

impl History {
    /// An empty store; epochs are seeded from the clock, the process id and a count of
    /// stores, so neither a restart nor a second store reuses one.
    pub fn new(config: HistoryConfig) -> History {
        static STORES: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let store = STORES
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0xd6e8_feb8_6659_fd93);
        History::with_seed(
            config,
            nanos ^ (u64::from(std::process::id()) << 32) ^ store,
        )
    }

    /// As `new` with a fixed epoch seed (tests).
    pub fn with_seed(config: HistoryConfig, seed: u64) -> History {
        History {
            config,
            locks: (0..LOCK_SHARDS).map(|_| Mutex::default()).collect(),
            heads: (0..LOCK_SHARDS).map(|_| AtomicU64::new(u64::MAX)).collect(),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            channels: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            epoch_seed: seed,
            epoch_count: AtomicU64::new(0),
            evictions: Default::default(),
            channels_dropped: AtomicU64::new(0),
            replays_recovered: AtomicU64::new(0),
            replays_not_recovered: AtomicU64::new(0),
            replayed_messages: AtomicU64::new(0),
        }
    }

    /// The bounds in force.
    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// Assigns `channel`'s next offset to a publish and calls `send` with it while holding
    /// the channel's lock (so every caller's `send` runs in offset order). When `send`
    /// succeeds the offset is taken and, with history on, `payload` (a view of the
    /// publish's own bytes) is retained; when it fails nothing changes but the channel's
    /// existence. `send` must not call into this `History`.
    pub fn publish<T, E>(
        &self,
        channel: &str,
        payload: &Bytes,
        kind: PayloadKind,
        now: Instant,
        send: impl FnOnce(Position) -> Result<T, E>,
    ) -> Result<(Position, T), E> {
        let index = lock_index(channel);
        let sent = {
            let mut shard = self.lock(index);
            let name = self.ensure(&mut shard, index, channel, now);
            let log = shard.channels.get_mut(channel).expect("ensured above");
            let position = Position {
                epoch: log.epoch,
                offset: log.last_offset + 1,
            };
            let sent = send(position)?;
            log.last_offset = position.offset;
            log.used_at = now;
            if self.config.size > 0 {
                self.expire_front(&mut shard, index, &name, now);
                self.append(&mut shard, index, name, position.offset, now, payload, kind);
            }
            (position, sent)
        };
        self.enforce_memory();
        Ok(sent)
    }

    /// Marks `channel` held by one more shard (its first local subscriber arrived) and
    /// returns its position, read under the same lock as `publish`: every publish at or
    /// below it was handed to `send` before, every one above it after. A held channel is
    /// never dropped, so its epoch stays.
    pub fn attach(&self, channel: &str, now: Instant) -> Position {
        let index = lock_index(channel);
        let mut shard = self.lock(index);
        self.ensure(&mut shard, index, channel, now);
        let log = shard.channels.get_mut(channel).expect("ensured above");
        log.holders += 1;
        log.used_at = now;
        let position = Position {
            epoch: log.epoch,
            offset: log.last_offset,
        };
        if log.holders == 1 {
            shard.unheld -= 1;
        }
        position
    }

    /// Releases one shard's hold on `channel` (its last local subscriber left).
    pub fn detach(&self, channel: &str, now: Instant) {
        let mut shard = self.lock(lock_index(channel));
        let Some(log) = shard.channels.get_mut(channel) else {
            debug_assert!(false, "detach of a channel never attached");
            return;
        };
        debug_assert!(log.holders > 0);
        log.holders = log.holders.saturating_sub(1);
        log.used_at = now;
        if log.holders == 0 {
            shard.unheld += 1;
        }
    }

    /// `channel`'s position, if it has an entry; creates nothing.
    pub fn position(&self, channel: &str) -> Option<Position> {
        let shard = self.lock(lock_index(channel));
        shard.channels.get(channel).map(|log| Position {
            epoch: log.epoch,
            offset: log.last_offset,
        })
    }

    /// A page of `channel`'s retained messages after offset `since`, oldest first, at most
    /// `limit` of them, skipping entries older than `--history-ttl` that `sweep` has not
    /// removed yet; `None` when the channel has no entry. Payloads are `Bytes` views, never
    /// copies; the channel's lock is held only while they are gathered.
    pub fn read(&self, channel: &str, since: u64, limit: usize, now: Instant) -> Option<Page> {
        let shard = self.lock(lock_index(channel));
        let log = shard.channels.get(channel)?;
        let len = log.entries.len();
        let expired = |entry: &Entry| self.config.ttl.is_some_and(|ttl| now >= entry.at + ttl);
        // Expired entries are a prefix (entries are in time order), so the first live one
        // starts the retained range.
        let first = log.entries.iter().position(|e| !expired(e)).unwrap_or(len);
        let (oldest_offset, retained) = match log.entries.get(first) {
            Some(oldest) => (Some(oldest.offset), (len - first) as u64),
            None => (None, 0),
        };
        // Retained offsets are contiguous, so the first one after `since` is found by index.
        let start = match log.entries.front() {
            Some(front) => {
                let past_since = since.saturating_add(1).saturating_sub(front.offset);
                usize::try_from(past_since)
                    .unwrap_or(usize::MAX)
                    .clamp(first, len)
            }
            None => 0,
        };
        let mut after = log.entries.range(start..);
        let mut entries = Vec::with_capacity(limit.min(len - start));
        for entry in after.by_ref().take(limit) {
            debug_assert!(entry.offset > since);
            entries.push(Retained {
                offset: entry.offset,
                payload: entry.payload.clone(),
                kind: entry.kind,
            });
        }
        let more = after.next().is_some();
        Some(Page {
            position: Position {
                epoch: log.epoch,
                offset: log.last_offset,
            },
            oldest_offset,
            retained,
            entries,
            more,
        })
    }

    /// Replays `channel`'s messages in `(since_offset, upto]` to `deliver` (offset,
    /// payload, kind), in order and under the channel's lock, if `since_epoch` is its
    /// epoch and every one of them is retained and younger than `--history-ttl`. `upto` is
    /// the caller's watermark (at most the channel's last offset). `deliver` must not call
    /// into this `History`.
    pub fn resume(
        &self,
        channel: &str,
        since_epoch: &str,
        since_offset: u64,
        upto: u64,
        now: Instant,
        mut deliver: impl FnMut(u64, &Bytes, PayloadKind),
    ) -> Replay {
        let outcome = {
            let shard = self.lock(lock_index(channel));
            match shard.channels.get(channel) {
                None => Replay::NotRecovered { current: None },
                Some(log) => {
                    self.replay_log(log, since_epoch, since_offset, upto, now, &mut deliver)
                }
            }
        };
        match outcome {
            Replay::Recovered { replayed } => {
                self.replays_recovered.fetch_add(1, Ordering::Relaxed);
                self.replayed_messages
                    .fetch_add(replayed, Ordering::Relaxed);
            }
            Replay::Ahead => {
                self.replays_recovered.fetch_add(1, Ordering::Relaxed);
            }
            Replay::NotRecovered { .. } => {
                self.replays_not_recovered.fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    fn replay_log(
        &self,
        log: &ChannelLog,
        since_epoch: &str,
        since: u64,
        upto: u64,
        now: Instant,
        deliver: &mut impl FnMut(u64, &Bytes, PayloadKind),
    ) -> Replay {
        let current = Position {
            epoch: log.epoch,
            offset: log.last_offset,
        };
        let lost = Replay::NotRecovered {
            current: Some(current),
        };
        debug_assert!(upto <= log.last_offset);
        if Epoch::parse(since_epoch) != Some(log.epoch) || since > log.last_offset {
            return lost;
        }
        if since > upto {
            return Replay::Ahead;
        }
        if since == upto {
            return Replay::Recovered { replayed: 0 };
        }
        let Some(front) = log.entries.front() else {
            return lost;
        };
        if front.offset > since + 1 {
            return lost;
        }
        let first = (since + 1 - front.offset) as usize;
        let expired = |entry: &Entry| self.config.ttl.is_some_and(|ttl| now >= entry.at + ttl);
        if log.entries.get(first).is_none_or(expired) {
            return lost;
        }
        let mut replayed = 0;
        for entry in log.entries.range(first..).take_while(|e| e.offset <= upto) {
            deliver(entry.offset, &entry.payload, entry.kind);
            replayed += 1;
        }
        debug_assert_eq!(replayed, upto - since);
        Replay::Recovered { replayed }
    }

    /// The counters and gauges.
    pub fn stats(&self) -> HistoryStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        HistoryStats {
            channels: self.channels.load(Ordering::Relaxed) as u64,
            entries: self.entries.load(Ordering::Relaxed) as u64,
            bytes: self.bytes.load(Ordering::Relaxed) as u64,
            evictions: [0, 1, 2, 3].map(|i| load(&self.evictions[i])),
            channels_dropped: load(&self.channels_dropped),
            replays_recovered: load(&self.replays_recovered),
            replays_not_recovered: load(&self.replays_not_recovered),
            replayed_messages: load(&self.replayed_messages),
        }
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, LockShard> {
        // A panic under the lock leaves consistent-enough state for counters; the node
        // aborts on panic anyway (panic = "abort").
        self.locks[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns `channel`'s name as stored, creating its entry (a new epoch, offset 0) if
    /// missing; making room first by dropping the least recently used unheld entry when
    /// this lock shard holds its share of `idle_channels_max`.
    fn ensure(&self, shard: &mut LockShard, index: usize, channel: &str, now: Instant) -> Arc<str> {
        if let Some((name, _)) = shard.channels.get_key_value(channel) {
            return Arc::clone(name);
        }
        let share = self.config.idle_channels_max.div_ceil(LOCK_SHARDS).max(1);
        if shard.unheld >= share {
            let coldest = shard
                .channels
                .iter()
                .filter(|(_, log)| log.holders == 0)
                .min_by_key(|(_, log)| log.used_at)
                .map(|(name, _)| Arc::clone(name));
            if let Some(name) = coldest {
                self.drop_channel(shard, index, &name);
            }
        }
        let name: Arc<str> = Arc::from(channel);
        let log = ChannelLog {
            epoch: self.next_epoch(),
            last_offset: 0,
            holders: 0,
            used_at: now,
            entries: VecDeque::new(),
        };
        shard.channels.insert(Arc::clone(&name), log);
        shard.unheld += 1;
        self.channels.fetch_add(1, Ordering::Relaxed);
        name
    }

    /// A fresh epoch: a counter through a bijective mixer, so epochs never repeat within a
    /// process and look unrelated.
    fn next_epoch(&self) -> Epoch {
        let count = self.epoch_count.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .epoch_seed
            .wrapping_add(count.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Epoch(z ^ (z >> 31))
    }

    /// Retains one entry at the back of the channel's ring.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        shard: &mut LockShard,
        index: usize,
        name: Arc<str>,
        offset: u64,
        now: Instant,
        payload: &Bytes,
        kind: PayloadKind,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            offset,
            seq,
            at: now,
            payload: payload.clone(),
            kind,
        };
        self.bytes.fetch_add(entry.bytes(), Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
        let entries = &mut shard.channels.get_mut(&name).expect("exists").entries;
        debug_assert!(entries.back().is_none_or(|last| last.offset + 1 == offset));
        let was_empty = entries.is_empty();
        entries.push_back(entry);
        if was_empty {
            shard.oldest.insert(seq, name);
            self.publish_head(shard, index);
        }
    }
}

/// The lock shard of a channel: FNV-1a of its name (stable, cheap, no per-process key
/// needed since names only pick a mutex).
fn lock_index(channel: &str) -> usize {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    channel.hash(&mut hasher);
    (hasher.finish() % LOCK_SHARDS as u64) as usize
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "history_scheme_tests.rs"]
mod scheme_tests;
