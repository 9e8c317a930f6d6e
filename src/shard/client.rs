//! The WebSocket client role (`WebSocket`; `ClientService` is the node service in that
//! role): what a client shard does with the events the reactor skeleton hands it. A socket
//! from `--listen` gets a slot and a handshake deadline; its bytes go to `Core::on_data`
//! (`conn/protocol.rs`: upgrade, then frames on the route it upgraded on); its open
//! connection is kept alive by ping after silence and closed after idling; the drain closes
//! every connection with 1001 (or, with `--drain-spread`, 4002 in a trickle over the
//! window: `spread.rs`) and aborts what is left at the deadline.
//!
//! This is the place for what is per WebSocket connection: a new protocol mode (a route
//! with its own framing or commands) is a `RouteKind` chosen at the upgrade and a branch
//! of `Core::on_frames`; state a mode needs beyond `Conn`'s 96 bytes goes in a side table
//! keyed by slab key (as the admin role keeps `AdminConn`), freed in `maybe_release`; its
//! per-connection deadlines go in `expire` below.
//!
//! Invariants:
//! - A socket accepted while draining is answered 503 "shutting down" and never gets a slot.
//! - At the drain deadline every connection still held is aborted, once.

use std::os::fd::RawFd;

use bytes::Bytes;

use super::service::{NodeService, Role};
use super::DRAIN_REAP_TICKS;
use crate::conn::end::End;
use crate::conn::json::PING_FRAME;
use crate::conn::{self, protocol, State};
use crate::ring::Owner;
use crate::route::RouteKind;
use crate::shard::{Core, Refusal};
use crate::ws::{frame, OpCode};

/// The role of a client shard (see the module documentation).
pub(crate) struct WebSocket;

/// A client shard's service.
pub(crate) type ClientService = NodeService<WebSocket>;

impl Role for WebSocket {
    /// A new socket from the listener: refused while draining or at the cap, else given a
    /// slot and a handshake deadline.
    fn accepted(core: &mut Core, fd: RawFd) -> Option<Owner> {
        if core.draining.is_some() {
            core.refuse_socket(fd, Refusal::ShuttingDown);
            return None;
        }
        if core.full() {
            core.refuse_socket(fd, Refusal::AtCapacity);
            return None;
        }
        // Decided before the slot exists, so a refused address never holds one of its own.
        let verdict = core.address_at_accept(fd);
        let key = core.admit(fd, State::Handshake, core.ticks_handshake);
        core.settle_address(key, verdict);
        Some(core.owner(key))
    }

    #[inline]
    fn on_data(core: &mut Core, key: usize, data: &mut [u8]) {
        core.on_data(key, data);
    }

    fn on_recv_end(core: &mut Core, key: usize, res: i32) {
        core.recv_ended(key, res);
    }

    /// A tick expired: the wheel, the inbox (in case a doorbell was lost), the counters,
    /// and the drain when the main thread asks for it.
    fn tick(core: &mut Core) {
        core.advance(expire, stepped);
        core.drain_inbox();
        if core.tick_end() {
            start_drain(core);
        } else {
            core.spread_step();
        }
    }

    fn drained(core: &Core, end: u32) -> bool {
        core.conns.is_empty() || core.wheel.now() > end + DRAIN_REAP_TICKS
    }
}

/// Closes every connection: 1001 to open ones, the handshake refusal to the others.
fn start_drain(core: &mut Core) {
    if core.cfg.reuse_port_with_others {
        // Another process shares the port (an overlapping restart): close the listener
        // so the kernel sends every new client there.
        core.stop_accepting = true;
    }
    // Otherwise the listener stays open until the shard exits: a client that connects
    // during the drain hears 503 "shutting down" (`accepted`), not a reset.
    let spread_ticks = core.spread_ticks();
    for key in core.conns.keys() {
        match core.conns[key].state {
            State::Open if spread_ticks == 0 => core.end(key, End::Shutdown),
            State::Handshake => core.end(key, End::DrainHandshake),
            _ => {}
        }
    }
    if spread_ticks > 0 {
        // The open connections are closed 4002 in an even trickle over the window.
        core.spread_start(spread_ticks);
    }
}

/// A client connection's deadline came: the handshake's, the close's, or on an open
/// connection the heartbeat (a ping after `--ping-interval` of silence, the close after
/// `--idle-timeout`).
fn expire(core: &mut Core, key: usize, now: u32) {
    if core.conns[key].state != State::Open {
        core.expire_unopened(key);
        return;
    }
    if core.token_expired(key) {
        core.end(key, End::TokenExpired);
        return;
    }
    let now_us = core.now_us();
    let (ticks_idle, ticks_ping) = (core.ticks_idle, core.ticks_ping);
    let c = &mut core.conns[key];
    let ping_out = c.has(conn::PING_OUT);
    let next = c.last_seen + if ping_out { ticks_idle } else { ticks_ping };
    if now < next {
        core.arm(key, next);
    } else if ping_out || now >= c.last_seen + ticks_idle {
        if ping_out {
            core.counters.pings_lost += 1;
        }
        core.end(key, End::IdleTimeout);
    } else {
        // Browsers cannot see WebSocket pings: a JSON connection's heartbeat is a text
        // frame, answered by {"op":"pong"} (any frame counts as the answer).
        let ping = if c.route == RouteKind::Json as u8 {
            Bytes::from_static(PING_FRAME)
        } else {
            frame::encode(OpCode::Ping, &protocol::ping_payload(key, c.gen, now_us))
        };
        c.flags |= conn::PING_OUT;
        // Look again one ping interval from now, not only at the idle deadline: a client
        // that answered by then has been silent since its answer, and its next ping is due
        // `--ping-interval` after it (PROTOCOL.md); one that did not is closed at the idle
        // deadline. Checking only at the idle deadline spaced the pings of a live client
        // `--idle-timeout` minus `--ping-interval` apart (45 s with the defaults).
        let at = (now + ticks_ping).min(c.last_seen + ticks_idle);
        core.counters.pings_sent += 1;
        core.push_frame(key, ping);
        core.arm(key, at);
    }
}

/// After each step of the wheel: once a second on shard 0, the history's sweep (expired
/// entries, forgotten idle channels); JSON subscriptions past their broker deadline
/// answered; at the drain deadline, abort every connection left.
fn stepped(core: &mut Core, now: u32) {
    if core.index == 0 && now % HISTORY_SWEEP_TICKS == 0 {
        core.shared.history.sweep(std::time::Instant::now());
        core.sweep_addresses();
    }
    core.broker_join_deadlines();
    abort_at_drain_deadline(core, now);
}

/// Ticks between two history sweeps (one second).
const HISTORY_SWEEP_TICKS: u32 = (1000 / crate::shard::TICK_MS) as u32;

/// At the drain deadline, abort every connection left.
fn abort_at_drain_deadline(core: &mut Core, now: u32) {
    if core.draining != Some(now) {
        return;
    }
    let keys = core.conns.keys();
    let left = keys.len();
    core.log(format_args!("event=drain_timeout aborting={left}"));
    for key in keys {
        core.end(key, End::DrainAbort);
    }
}
