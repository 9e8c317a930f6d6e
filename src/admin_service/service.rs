//! The admin HTTP service: what the admin shard does with the events the reactor skeleton
//! hands it. It is a service of its own beside the WebSocket client service
//! (`shard/client.rs`): its sockets come from `--admin`, start open (plain HTTP, no
//! upgrade), are read by `Core::on_admin`, resume parsing as their answers drain, and have
//! the admin deadlines (`admin_expire`); it waits for the client shards at the end.
//!
//! Invariants:
//! - A full admin listener first evicts a connection that has completed no request; only
//!   when every connection has completed one is the newcomer refused.
//! - The admin shard keeps answering while draining, and ends only when every client shard
//!   has exited and no publish waits for counts.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::conn::end::End;
use crate::conn::{Conn, State};
use crate::reactor::{Conns, IoEvent, Service};
use crate::ring::driver::Driver;
use crate::ring::{Completion, Owner, TickMode};
use crate::shard::{Core, NodeService, Refusal};

/// The service of the admin shard (see the module documentation).
pub(crate) struct AdminService {
    /// The shard's state.
    pub(crate) core: Core,
}

impl AdminService {
    /// A new socket from the admin listener: given a slot (evicting a connection that has
    /// completed no request when the listener is full), or refused when none can go.
    fn accepted(&mut self, fd: i32) -> Option<Owner> {
        let core = &mut self.core;
        // The evicted slot is freed once its recv ends, so the slab may briefly hold a few
        // more than the cap; the connections still open never exceed it.
        if core.full() && !core.admin_evict_unproven() {
            core.refuse_socket(fd, Refusal::AtCapacity);
            return None;
        }
        let key = core.admit(fd, State::Open, core.ticks_idle);
        core.admin_accepted(key);
        Some(core.owner(key))
    }
}

/// An admin connection's deadline came.
fn expire(core: &mut Core, key: usize, now: u32) {
    if core.conns[key].state == State::Open {
        core.admin_expire(key, now);
    } else {
        core.expire_unopened(key);
    }
}

impl<D: Driver> Service<D> for AdminService {
    type Conn = Conn;

    #[inline]
    fn conns(&mut self) -> &mut Conns<Conn> {
        &mut self.core.conns
    }

    fn on_data(&mut self, key: usize, data: &mut [u8]) {
        self.core.on_admin(key, data);
    }

    fn on_recv_end(&mut self, key: usize, res: i32) {
        if self.core.conns[key].state == State::Open && res == 0 {
            self.core.end(key, End::AdminPeerClosed);
        } else {
            self.core.recv_ended(key, res);
        }
    }

    fn on_sent(&mut self, key: usize, frame: Bytes) {
        self.core.sent(key, &frame);
        // A paused admin connection takes requests again once its answers drain.
        self.core.admin_sent(key);
    }

    fn on_send_failed(&mut self, key: usize, _res: i32, frame: Bytes) {
        self.core.send_failed(key, &frame);
    }

    fn on_send_dropped(&mut self, frame: Bytes) {
        self.core.retire(&frame);
    }

    fn release(&mut self, key: usize) {
        self.core.maybe_release(key);
    }

    fn next_send(&mut self, key: usize) -> Option<Bytes> {
        self.core.next_send(key)
    }

    fn count(&mut self, event: IoEvent) {
        self.core.count(event);
    }

    fn on_accept(&mut self, res: i32, more: bool) -> Option<Owner> {
        let fd = self.core.accept_complete(res, more)?;
        self.accepted(fd)
    }

    fn on_tick(&mut self, res: i32, more: bool, mode: TickMode) {
        if !self.core.tick_expired(res, more, mode) {
            return;
        }
        self.core.advance(expire, |_, _| {});
        self.core.drain_inbox();
        self.core.count_exited_shards();
        // The admin listener keeps answering (healthz says 503) while the clients drain;
        // `finished` ends it.
        let _ = self.core.tick_end();
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
        // The admin listener answers (healthz 503, publishes 503) until every client shard
        // has exited, however it ended: drained, stopped on a ring error, or never started.
        // Requests still waiting count exited shards as 0 (`count_exited_shards`).
        self.core.finished(|core, _| {
            core.shared.exited[..core.peers.clients]
                .iter()
                .all(|done| done.load(Ordering::Acquire))
                && core.pending.is_empty()
        })
    }

    fn on_ring_error(&mut self, error: std::io::Error) {
        self.core.ring_failed(error);
    }
}

impl<D: Driver> NodeService<D> for AdminService {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }
}
