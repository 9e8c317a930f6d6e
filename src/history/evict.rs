//! Eviction from the history store: by size and age as entries are appended, by age and
//! idleness in the periodic `sweep`, and by the node-wide memory cap, oldest entry first.
//!
//! Invariant: every removal goes through `pop_front`, which keeps the lock shard's
//! `oldest` index, its published head sequence and the node-wide totals exact.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Eviction, History, LockShard, LOCK_SHARDS};

impl History {
    /// Drops entries older than `--history-ttl` and channel entries nobody holds that have
    /// retained nothing for `idle_ttl`. Call it periodically (e.g. once a second) from one
    /// thread; it takes each lock shard's mutex in turn.
    pub fn sweep(&self, now: Instant) {
        for index in 0..LOCK_SHARDS {
            let mut shard = self.lock(index);
            if let Some(ttl) = self.config.ttl {
                while let Some((_, name)) = shard.oldest.first_key_value() {
                    let name = Arc::clone(name);
                    let log = &shard.channels[&name];
                    if log.entries.front().is_some_and(|e| now >= e.at + ttl) {
                        self.pop_front(&mut shard, index, &name, Eviction::Ttl);
                    } else {
                        break;
                    }
                }
            }
            let idle_ttl = self.config.idle_ttl;
            let idle: Vec<Arc<str>> = shard
                .channels
                .iter()
                .filter(|(_, log)| {
                    log.holders == 0 && log.entries.is_empty() && now >= log.used_at + idle_ttl
                })
                .map(|(name, _)| Arc::clone(name))
                .collect();
            for name in idle {
                self.drop_channel(&mut shard, index, &name);
            }
        }
    }

    /// Drops a channel entry and everything it retains.
    pub(super) fn drop_channel(&self, shard: &mut LockShard, index: usize, name: &Arc<str>) {
        debug_assert_eq!(shard.channels[name].holders, 0);
        while !shard.channels[name].entries.is_empty() {
            self.pop_front(shard, index, name, Eviction::Channel);
        }
        shard.channels.remove(name);
        shard.unheld -= 1;
        self.channels.fetch_sub(1, Ordering::Relaxed);
        self.channels_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops the channel's entries that are past `--history-size` once one more is added,
    /// or older than `--history-ttl`.
    pub(super) fn expire_front(
        &self,
        shard: &mut LockShard,
        index: usize,
        name: &Arc<str>,
        now: Instant,
    ) {
        loop {
            let log = &shard.channels[name];
            let Some(front) = log.entries.front() else {
                return;
            };
            let reason = if log.entries.len() >= self.config.size {
                Eviction::Size
            } else if self.config.ttl.is_some_and(|ttl| now >= front.at + ttl) {
                Eviction::Ttl
            } else {
                return;
            };
            self.pop_front(shard, index, name, reason);
        }
    }

    /// Removes the channel's oldest entry, keeping `oldest`, `heads` and the totals exact.
    pub(super) fn pop_front(
        &self,
        shard: &mut LockShard,
        index: usize,
        name: &Arc<str>,
        why: Eviction,
    ) {
        let entries = &mut shard.channels.get_mut(name).expect("exists").entries;
        let Some(entry) = entries.pop_front() else {
            return;
        };
        let next_seq = entries.front().map(|next| next.seq);
        self.bytes.fetch_sub(entry.bytes(), Ordering::Relaxed);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.evictions[why as usize].fetch_add(1, Ordering::Relaxed);
        let removed = shard.oldest.remove(&entry.seq);
        debug_assert!(removed.is_some());
        if let Some(seq) = next_seq {
            shard.oldest.insert(seq, Arc::clone(name));
        }
        self.publish_head(shard, index);
    }

    pub(super) fn publish_head(&self, shard: &LockShard, index: usize) {
        let head = shard
            .oldest
            .first_key_value()
            .map_or(u64::MAX, |(&seq, _)| seq);
        self.heads[index].store(head, Ordering::Relaxed);
    }

    /// While retained bytes exceed `--history-memory`, evicts the node-wide oldest entry,
    /// holding one lock shard's mutex at a time.
    pub(super) fn enforce_memory(&self) {
        while self.bytes.load(Ordering::Relaxed) > self.config.memory_bytes_max {
            let oldest = (0..LOCK_SHARDS)
                .map(|index| (self.heads[index].load(Ordering::Relaxed), index))
                .min();
            let Some((head, index)) = oldest.filter(|&(head, _)| head != u64::MAX) else {
                return;
            };
            let mut shard = self.lock(index);
            // Another thread may have moved this shard's head since it was read.
            let Some((&seq, name)) = shard.oldest.first_key_value() else {
                continue;
            };
            if seq != head {
                continue;
            }
            let name = Arc::clone(name);
            self.pop_front(&mut shard, index, &name, Eviction::Memory);
        }
    }
}
