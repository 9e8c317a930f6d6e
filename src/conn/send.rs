//! The per-connection send queue: ordered, bounded by `--max-pending`, coalescing small
//! replies into one send, and telling fan-out when a broadcast frame has left.
//!
//! Invariants:
//! - `queued_bytes` counts every byte queued or in flight for the connection.
//! - A broadcast frame tracked in `Core::fanouts` is recognised by its pointer; when it is
//!   merged into a larger send, `Core::merged` maps that send to the broadcasts inside it.
//!   Every clone is retired exactly once: when its send completes, or when it is dropped.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use bytes::{Bytes, BytesMut};

use crate::config::SlowConsumer;
use crate::conn::{self, State};
use crate::ring::{sys, Owner};
use crate::shard::{CloseMode, Core};
use crate::ws::CloseCode;

/// Replies queued for one connection are merged into one send up to this many bytes.
const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// What `enqueue` did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// In the queue.
    Yes,
    /// Dropped: the connection is closing, or it is a slow consumer under `drop`.
    Dropped,
    /// The connection exceeded `--max-pending` and is being closed with 1008.
    Closed,
}

impl Core {
    pub(crate) fn mark_dirty(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.has(conn::DIRTY) {
            c.flags |= conn::DIRTY;
            self.dirty.push(key);
        }
    }

    /// Appends a frame to the queue without the --max-pending check (control frames and
    /// HTTP responses).
    pub(crate) fn push_frame(&mut self, key: usize, frame: Bytes) {
        let c = &mut self.conns[key];
        c.queued_bytes = c.queued_bytes.saturating_add(frame.len() as u32);
        c.queue.push_back(frame);
        self.mark_dirty(key);
    }

    /// Queues data for a connection, enforcing --max-pending: past it the slow-consumer
    /// policy applies (close with 1008, or drop this frame).
    pub(crate) fn enqueue(&mut self, key: usize, frame: Bytes) -> Queued {
        let c = &mut self.conns[key];
        if c.has(conn::CLOSE_SENT) || c.state != State::Open {
            return Queued::Dropped;
        }
        // An empty queue takes any frame (up to --max-message), so the bound is
        // --max-pending plus one message and a message as large as allowed always fits.
        if c.queued_bytes == 0 || c.queued_bytes as usize + frame.len() <= self.cfg.max_pending {
            self.push_frame(key, frame);
            return Queued::Yes;
        }
        if self.cfg.slow_consumer == SlowConsumer::Drop {
            self.counters.drops += 1;
            return Queued::Dropped;
        }
        let dropped: VecDeque<Bytes> = std::mem::take(&mut c.queue);
        let dropped_bytes: usize = dropped.iter().map(Bytes::len).sum();
        c.queued_bytes = c.queued_bytes.saturating_sub(dropped_bytes as u32);
        for f in &dropped {
            self.retire(f);
        }
        self.counters.slow_consumer_closes += 1;
        let pending = self.cfg.max_pending;
        self.log(format_args!(
            "event=slow_consumer max_pending={pending} dropped_bytes={dropped_bytes}"
        ));
        self.close_with(key, CloseCode::POLICY, "slow consumer", CloseMode::Fail);
        Queued::Closed
    }

    /// The next send for `key`, coalescing queued frames, or the FIN once drained.
    pub(crate) fn next_send(&mut self, key: usize) -> Option<(RawFd, Owner, Bytes)> {
        let owner = self.owner(key);
        let c = &self.conns[key];
        if c.has(conn::SEND_INFLIGHT) || c.state == State::Dead {
            return None;
        }
        if c.queue.is_empty() {
            if c.has(conn::FIN_AFTER_FLUSH) && c.state != State::Linger {
                let c = &mut self.conns[key];
                sys::shutdown(c.fd, libc::SHUT_WR);
                c.state = State::Linger;
                if !c.has(conn::RECV_ARMED) && !self.starved.contains(&owner) {
                    // The peer already sent EOF: nothing left to wait for.
                    self.finish(key);
                }
            }
            return None;
        }
        // Count how many leading frames merge into one send.
        let mut count = 0;
        let mut total = 0;
        for f in &c.queue {
            if count > 0 && total + f.len() > COALESCE_BYTES_MAX {
                break;
            }
            total += f.len();
            count += 1;
        }
        let frame = if count == 1 {
            self.conns[key]
                .queue
                .pop_front()
                .expect("queue is not empty")
        } else {
            let mut merged = BytesMut::with_capacity(total);
            let mut tracked = Vec::new();
            for f in self.conns[key].queue.drain(..count) {
                merged.extend_from_slice(&f);
                if !self.fanouts.is_empty() && self.fanouts.contains_key(&(f.as_ptr() as usize)) {
                    tracked.push(f.as_ptr() as usize);
                }
            }
            let merged = merged.freeze();
            if !tracked.is_empty() {
                // Broadcast frames inside a merged send are retired when it completes.
                self.merged.insert(merged.as_ptr() as usize, tracked);
            }
            merged
        };
        let c = &mut self.conns[key];
        if c.queue.is_empty() && c.queue.capacity() > 0 {
            // Give the queue's memory back as soon as it drains: an idle connection holds
            // none (this costs one small allocation per burst, not per frame).
            c.queue = VecDeque::new();
        }
        c.flags |= conn::SEND_INFLIGHT;
        Some((c.fd, owner, frame))
    }

    /// A frame left the connection for good (sent, or dropped): if it is a tracked
    /// broadcast, or a merged send carrying some, and this was a broadcast's last local copy,
    /// record its fan-out latency.
    pub(crate) fn retire(&mut self, frame: &Bytes) {
        if self.fanouts.is_empty() && self.merged.is_empty() {
            return;
        }
        let ptr = frame.as_ptr() as usize;
        if let Some(inner) = self.merged.remove(&ptr) {
            for p in inner {
                self.retire_ptr(p);
            }
            return;
        }
        self.retire_ptr(ptr);
    }

    fn retire_ptr(&mut self, ptr: usize) {
        let Some(f) = self.fanouts.get_mut(&ptr) else {
            return;
        };
        f.remaining -= 1;
        if f.remaining == 0 {
            let us = (f.accepted.elapsed().as_micros() as u64).max(1);
            self.fanouts.remove(&ptr);
            let _ = self.fanout_us.record(us);
            self.counters.fanout.record(us);
        }
    }
}
