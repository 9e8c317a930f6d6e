//! The admin HTTP role (`AdminHttp`; `AdminService` is the node service in that role): what
//! the admin shard does with the events the reactor skeleton hands it. It is a role of its
//! own beside the WebSocket client role (`shard/client.rs`): its sockets come from
//! `--admin`, start open (plain HTTP, no upgrade), are read by `Core::on_admin`, resume
//! parsing as their answers drain, and have the admin deadlines (`admin_expire`); it waits
//! for the client shards at the end.
//!
//! Invariants:
//! - A full admin listener first evicts a connection that has completed no request; only
//!   when every connection has completed one is the newcomer refused.
//! - The admin shard keeps answering while draining, and ends only when every client shard
//!   has exited and no publish, broadcast or channels request waits for counts.

use std::sync::atomic::Ordering;

use std::os::fd::RawFd;

use crate::conn::end::End;
use crate::conn::State;
use crate::ring::Owner;
use crate::shard::{Core, NodeService, Refusal, Role};

/// The role of the admin shard (see the module documentation).
pub(crate) struct AdminHttp;

/// The admin shard's service.
pub(crate) type AdminService = NodeService<AdminHttp>;

impl Role for AdminHttp {
    /// A new socket from the admin listener: given a slot (evicting a connection that has
    /// completed no request when the listener is full), or refused when none can go.
    fn accepted(core: &mut Core, fd: RawFd) -> Option<Owner> {
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

    fn on_data(core: &mut Core, key: usize, data: &mut [u8]) {
        core.on_admin(key, data);
    }

    fn on_recv_end(core: &mut Core, key: usize, res: i32) {
        if core.conns[key].state == State::Open && res == 0 {
            core.end(key, End::AdminPeerClosed);
        } else {
            core.recv_ended(key, res);
        }
    }

    fn on_sent(core: &mut Core, key: usize) {
        // A paused admin connection takes requests again once its answers drain.
        core.admin_sent(key);
    }

    fn tick(core: &mut Core) {
        core.advance(expire, |_, _| {});
        core.drain_inbox();
        core.count_exited_shards();
        core.broker_deadlines();
        core.read_deadlines();
        // The admin listener keeps answering (healthz says 503) while the clients drain;
        // `drained` ends it.
        let _ = core.tick_end();
    }

    fn drained(core: &Core, _end: u32) -> bool {
        // The admin listener answers (healthz 503, publishes 503) until every client shard
        // has exited, however it ended: drained, stopped on a ring error, or never started.
        // Requests still waiting count exited shards as 0 (`count_exited_shards`).
        core.shared.exited[..core.peers.clients]
            .iter()
            .all(|done| done.load(Ordering::Acquire))
            && core.pending.is_empty()
            && core.queries.is_empty()
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
