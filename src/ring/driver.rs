//! [`Driver`]: what a reactor needs from a ring, and nothing about any protocol.
//!
//! The reactor skeleton is generic over it (`Reactor<D: Driver, S>`), so the real path is
//! monomorphised over [`Ring`] and costs no indirection, while unit tests drive the same loop
//! with `FakeRing` (see `fake.rs`) and feed it completions by hand.
//!
//! Invariants (every implementation keeps them):
//! - Pushing an operation never fails and never completes it synchronously: its outcome
//!   arrives as a [`Completion`] from a later [`Driver::reap`].
//! - A send's frame is held by the driver from [`Driver::send`] until its completion,
//!   which hands it back; a recv's data is lent through [`Driver::consume`] only, and the
//!   buffer is settled (returned or kept for incremental filling) when the closure returns.
//! - After [`Driver::quiesce`] returns `Ok`, nothing pushed through the driver is pending.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;

use crate::ring::{Completion, InFlight, Owner, Ring, TickMode};

/// The operation and completion interface of one reactor's ring.
pub trait Driver {
    /// Arms a multishot accept on `listen_fd`.
    fn accept_multi(&mut self, listen_fd: RawFd);
    /// Cancels the multishot accept.
    fn cancel_accept(&mut self);
    /// Arms a multishot recv for `owner` on `fd`, into the provided buffers.
    fn recv_multi(&mut self, fd: RawFd, owner: Owner);
    /// Sends `frame[offset..]` on `fd`; the completion hands `frame` back.
    fn send(&mut self, fd: RawFd, owner: Owner, frame: Bytes, offset: usize);
    /// Arms the periodic tick every `every`; the driver keeps it armed from then on.
    fn tick(&mut self, every: Duration);
    /// How the tick is armed (for the log line of a failed tick).
    fn tick_mode(&self) -> TickMode;
    /// Rings another reactor's doorbell: `data` and `res` land in its completion queue.
    fn msg_ring(&mut self, target_ring_fd: RawFd, target: u32, data: u64, res: i32);
    /// Hands every queued operation to the kernel now, without waiting.
    fn submit_now(&mut self);
    /// Submits everything queued and waits for at least one completion.
    fn submit_and_wait(&mut self) -> io::Result<()>;
    /// Moves every available completion into `out`, in the order they completed.
    fn reap(&mut self, out: &mut Vec<Completion>);
    /// Cancels and reaps everything in flight, for at most `bound`; returns what is left.
    fn quiesce(&mut self, bound: Duration) -> Result<(), InFlight>;
    /// Everything the driver still has pending.
    fn in_flight(&self) -> InFlight;
    /// Lends the `len` bytes a recv completion delivered into provided buffer `bid` to `f`,
    /// then settles the buffer (`buf_more`: the kernel keeps filling it after these bytes).
    fn consume<R>(
        &mut self,
        bid: u16,
        len: usize,
        buf_more: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R;
    /// Provided buffers in the ring (the budget for re-arming starved receives).
    fn buffer_count(&self) -> u16;
}

impl Driver for Ring {
    #[inline]
    fn accept_multi(&mut self, listen_fd: RawFd) {
        Ring::accept_multi(self, listen_fd);
    }

    #[inline]
    fn cancel_accept(&mut self) {
        Ring::cancel_accept(self);
    }

    #[inline]
    fn recv_multi(&mut self, fd: RawFd, owner: Owner) {
        Ring::recv_multi(self, fd, owner);
    }

    #[inline]
    fn send(&mut self, fd: RawFd, owner: Owner, frame: Bytes, offset: usize) {
        Ring::send(self, fd, owner, frame, offset);
    }

    #[inline]
    fn tick(&mut self, every: Duration) {
        Ring::tick(self, every);
    }

    #[inline]
    fn tick_mode(&self) -> TickMode {
        Ring::tick_mode(self)
    }

    #[inline]
    fn msg_ring(&mut self, target_ring_fd: RawFd, target: u32, data: u64, res: i32) {
        Ring::msg_ring(self, target_ring_fd, target, data, res);
    }

    #[inline]
    fn submit_now(&mut self) {
        Ring::submit_now(self);
    }

    #[inline]
    fn submit_and_wait(&mut self) -> io::Result<()> {
        Ring::submit_and_wait(self)
    }

    #[inline]
    fn reap(&mut self, out: &mut Vec<Completion>) {
        Ring::reap(self, out);
    }

    #[inline]
    fn quiesce(&mut self, bound: Duration) -> Result<(), InFlight> {
        Ring::quiesce(self, bound)
    }

    #[inline]
    fn in_flight(&self) -> InFlight {
        Ring::in_flight(self)
    }

    #[inline]
    fn consume<R>(
        &mut self,
        bid: u16,
        len: usize,
        buf_more: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        self.bufs().consume(bid, len, buf_more, f)
    }

    #[inline]
    fn buffer_count(&self) -> u16 {
        self.bufs
            .as_ref()
            .expect("buffers registered at shard start")
            .count()
    }
}
