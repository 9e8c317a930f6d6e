//! Sending on a node connection: the queue (`reactor::SendQueue`) bounded by
//! `--max-pending` with the slow-consumer policy, coalescing small replies into one send,
//! the FIN after the last byte, and telling fan-out when a broadcast frame has left.
//!
//! Invariants:
//! - `queued_bytes` counts every byte queued or in flight for the connection.
//! - A broadcast frame tracked in `Core::fanouts` is recognised by its pointer; when it is
//!   merged into a larger send, `Core::merged` maps that send to the broadcasts inside it.
//!   Every clone is retired exactly once: when its send completes, or when it is dropped.

use bytes::Bytes;

use crate::config::SlowConsumer;
use crate::conn::end::End;
use crate::conn::{self, State};
use crate::ring::sys;
use crate::shard::Core;

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
        let fanouts = &self.fanouts;
        let mut tracked = Vec::new();
        let frame = self.conns[key]
            .queue
            .next_send(COALESCE_BYTES_MAX, |f| {
                if !fanouts.is_empty() && fanouts.contains_key(&(f.as_ptr() as usize)) {
                    tracked.push(f.as_ptr() as usize);
                }
            })
            .expect("queue is not empty");
        if !tracked.is_empty() {
            // Broadcast frames inside a merged send are retired when it completes.
            self.merged.insert(frame.as_ptr() as usize, tracked);
        }
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
