//! The per-connection send queue: ordered, bounded by `--max-pending`, coalescing small
//! replies into one send, and telling fan-out when a broadcast frame has left.
//!
//! Invariants:
//! - `queued_bytes` counts every byte queued or in flight for the connection.
//! - A broadcast frame tracked in `Core::fanouts` is recognised by its pointer; when it is
//!   merged into a larger send, `Core::merged` maps that send to the broadcasts inside it.
//!   Every clone is retired exactly once: when its send completes, or when it is dropped.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::config::SlowConsumer;
use crate::conn::end::End;
use crate::conn::{self, State};
use crate::ring::sys;
use crate::shard::Core;

/// Replies queued for one connection are merged into one send up to this many bytes.
const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// A connection's FIFO of frames. The first frame lives inline, so a connection with one
/// frame queued (one broadcast: the common case) allocates nothing; only a backlog spills
/// into a boxed deque, which is freed as soon as it empties.
#[derive(Default)]
pub struct SendQueue {
    head: Option<Bytes>,
    // Boxed on purpose: 8 bytes in every connection instead of a 32-byte empty deque.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
}

impl SendQueue {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        debug_assert!(self.head.is_some() || self.rest.is_none());
        self.head.is_none()
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    /// Appends a frame.
    pub fn push_back(&mut self, frame: Bytes) {
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest
                .get_or_insert_with(Default::default)
                .push_back(frame);
        }
    }

    /// Removes the first frame.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let first = self.head.take()?;
        if let Some(rest) = &mut self.rest {
            self.head = rest.pop_front();
            if rest.is_empty() {
                self.rest = None;
            }
        }
        Some(first)
    }

    /// The frames in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.head
            .iter()
            .chain(self.rest.iter().flat_map(|r| r.iter()))
    }

    /// Empties the queue, yielding its frames in order.
    pub fn take_all(&mut self) -> impl Iterator<Item = Bytes> {
        let SendQueue { head, rest } = std::mem::take(self);
        head.into_iter()
            .chain(rest.into_iter().flat_map(|r| r.into_iter()))
    }
}

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
    #[inline]
    pub(crate) fn mark_dirty(&mut self, key: usize) {
        self.conns.mark_dirty(key);
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
        // Each queued frame also costs its 32-byte `Bytes` handle, which counts too: a
        // backlog of tiny frames is bounded by memory, not only by payload bytes.
        let pending = c.queued_bytes as usize + c.queue.len() * std::mem::size_of::<Bytes>();
        if c.queued_bytes == 0 || pending + frame.len() <= self.cfg.max_pending {
            self.push_frame(key, frame);
            return Queued::Yes;
        }
        if self.cfg.slow_consumer == SlowConsumer::Drop {
            self.counters.drops += 1;
            return Queued::Dropped;
        }
        let dropped: Vec<Bytes> = c.queue.take_all().collect();
        let dropped_bytes: usize = dropped.iter().map(Bytes::len).sum();
        c.queued_bytes = c.queued_bytes.saturating_sub(dropped_bytes as u32);
        for f in &dropped {
            self.retire(f);
        }
        let pending = self.cfg.max_pending;
        let detail = format_args!("max_pending={pending} dropped_bytes={dropped_bytes}");
        self.end_logged(key, End::SlowConsumer, Some(detail));
        Queued::Closed
    }

    /// The next send for `key` (not dead, no send in flight: the skeleton checks),
    /// coalescing queued frames, or the FIN once drained.
    pub(crate) fn next_send(&mut self, key: usize) -> Option<Bytes> {
        let c = &self.conns[key];
        debug_assert!(!c.has(conn::SEND_INFLIGHT) && c.state != State::Dead);
        if c.queue.is_empty() {
            if c.has(conn::FIN_AFTER_FLUSH) && c.state != State::Linger {
                let c = &mut self.conns[key];
                sys::shutdown(c.fd, libc::SHUT_WR);
                c.state = State::Linger;
                if !c.has(conn::RECV_ARMED) && !c.has(conn::STARVED) {
                    // The peer already sent EOF: nothing left to wait for.
                    self.finish(key);
                }
            }
            return None;
        }
        // Count how many leading frames merge into one send.
        let mut count = 0;
        let mut total = 0;
        for f in c.queue.iter() {
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
            for _ in 0..count {
                let f = self.conns[key].queue.pop_front().expect("counted above");
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
        Some(frame)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn one_frame_lives_inline_and_a_backlog_spills_in_order() {
        let mut q = SendQueue::default();
        assert!(q.is_empty());
        q.push_back(frame(1));
        assert!(q.rest.is_none(), "a single frame allocates nothing");
        for n in 2..=5 {
            q.push_back(frame(n));
        }
        assert_eq!(q.len(), 5);
        let order: Vec<u8> = q.iter().map(|f| f[0]).collect();
        assert_eq!(order, [1, 2, 3, 4, 5]);
        for n in 1..=5 {
            assert_eq!(q.pop_front().unwrap()[0], n);
        }
        assert!(q.is_empty());
        assert!(q.rest.is_none(), "the spilled deque is freed once empty");
        assert!(q.pop_front().is_none());
    }

    #[test]
    fn take_all_empties_in_order() {
        let mut q = SendQueue::default();
        for n in 1..=3 {
            q.push_back(frame(n));
        }
        let all: Vec<u8> = q.take_all().map(|f| f[0]).collect();
        assert_eq!(all, [1, 2, 3]);
        assert!(q.is_empty());
    }
}
