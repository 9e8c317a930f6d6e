//! The node's reactor service: `NodeService<R>`, the one implementation of
//! `reactor::Service` for the node's shards, over the shard's state (`Core`). What differs
//! between a client shard and the admin shard is its `Role`: the WebSocket client role
//! (`client.rs`, `WebSocket`) or the admin HTTP role (`admin_service/service.rs`,
//! `AdminHttp`). A role decides what an accepted socket becomes, what received bytes mean,
//! what the end of a receive and a finished send mean, what a tick does and when a drained
//! shard is done; everything else (sends, releases, counts, ring events, the shard's own
//! submissions) is the same for both and written here once.
//!
//! Invariants:
//! - A role is a type, not a value: `NodeService<R>` is monomorphised per role, so nothing
//!   on the per-event path dispatches dynamically.

use std::marker::PhantomData;
use std::os::fd::RawFd;

use bytes::Bytes;

use super::Core;
use crate::conn::Conn;
use crate::reactor::{Conns, IoEvent, Service};
use crate::ring::driver::Driver;
use crate::ring::{Completion, Owner, TickMode};

/// What a kind of shard does differently (see the module documentation).
pub(crate) trait Role {
    /// A socket from the listener (already counted): a slot for it, or a refusal.
    fn accepted(core: &mut Core, fd: RawFd) -> Option<Owner>;
    /// Bytes received for `key`.
    fn on_data(core: &mut Core, key: usize, data: &mut [u8]);
    /// The recv of live connection `key` ended: EOF (0) or `-errno`.
    fn on_recv_end(core: &mut Core, key: usize, res: i32);
    /// A send of `key` finished whole (the queue accounting is done).
    fn on_sent(core: &mut Core, key: usize) {
        let _ = (core, key);
    }
    /// The tick expired.
    fn tick(core: &mut Core);
    /// Whether a draining shard whose drain deadline is tick `end` is done.
    fn drained(core: &Core, end: u32) -> bool;
}

/// A node shard's service: its state and its role.
pub(crate) struct NodeService<R: Role> {
    /// The shard's state.
    pub(crate) core: Core,
    role: PhantomData<R>,
}

impl<R: Role> NodeService<R> {
    /// The service of role `R` over `core`.
    pub(crate) fn new(core: Core) -> NodeService<R> {
        NodeService {
            core,
            role: PhantomData,
        }
    }
}

impl<D: Driver, R: Role> Service<D> for NodeService<R> {
    type Conn = Conn;

    #[inline]
    fn conns(&mut self) -> &mut Conns<Conn> {
        &mut self.core.conns
    }

    #[inline]
    fn on_data(&mut self, key: usize, data: &mut [u8]) {
        R::on_data(&mut self.core, key, data);
    }

    fn on_recv_end(&mut self, key: usize, res: i32) {
        R::on_recv_end(&mut self.core, key, res);
    }

    #[inline]
    fn on_sent(&mut self, key: usize, frame: Bytes) {
        self.core.sent(key, &frame);
        R::on_sent(&mut self.core, key);
    }

    fn on_send_failed(&mut self, key: usize, _res: i32, frame: Bytes) {
        self.core.send_failed(key, &frame);
    }

    #[inline]
    fn on_send_dropped(&mut self, frame: Bytes) {
        self.core.retire(&frame);
    }

    #[inline]
    fn release(&mut self, key: usize) {
        self.core.maybe_release(key);
    }

    #[inline]
    fn next_send(&mut self, key: usize) -> Option<Bytes> {
        self.core.next_send(key)
    }

    #[inline]
    fn count(&mut self, event: IoEvent) {
        self.core.count(event);
    }

    fn on_accept(&mut self, res: i32, more: bool) -> Option<Owner> {
        let fd = self.core.accept_complete(res, more)?;
        R::accepted(&mut self.core, fd)
    }

    fn on_tick(&mut self, res: i32, more: bool, mode: TickMode) {
        // Only an expiry moves the wheel, and it moves to the wall clock, so a late or
        // merged tick does not make deadlines drift.
        if self.core.tick_expired(res, more, mode) {
            R::tick(&mut self.core);
        }
    }

    fn on_msg(&mut self) {
        self.core.drain_inbox();
    }

    fn on_ring_event(&mut self, completion: Completion) {
        self.core.ring_event(completion);
    }

    fn before_flush(&mut self, ring: &mut D) {
        self.core.before_flush(ring);
    }

    fn finished(&self) -> bool {
        self.core.finished(R::drained)
    }

    fn on_ring_error(&mut self, error: std::io::Error) {
        self.core.ring_failed(error);
    }
}
