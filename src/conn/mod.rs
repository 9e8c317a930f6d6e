//! Per-connection state, kept in the shard's slab.
//!
//! A connection is a few words: its fd, generation, state, timer fields and a send queue
//! that is empty (and unallocated) while idle. Everything that only exists while bytes are
//! in progress (an incomplete request head, a frame or message split across receives)
//! lives behind one `Option<Box<Partial>>` that is `None` for an idle connection.
//!
//! Invariants:
//! - An idle connection holds no read buffer and no heap memory: `partial` is `None` and
//!   `queue` has no capacity.
//! - `flags & SEND_INFLIGHT` is set exactly while a Send SQE for this connection is in the
//!   kernel; `flags & RECV_ARMED` exactly while its multishot recv is.
//! - The slot is freed only when neither is set, so no completion can name a freed slot
//!   except through a stale generation.

use std::os::fd::RawFd;

use crate::channels::{Subscription, NO_SESSION};
use crate::timer::Deadline;
use crate::ws::Decoder;

pub mod admission;
pub mod auth;
pub mod end;
pub mod json;
pub mod json_broker;
pub mod protocol;
pub mod send;

pub use crate::reactor::SendQueue;

/// The per-connection struct is pinned at or under this many bytes: the figure the README
/// states (`tests/docs.rs` checks the README against `size_of::<Conn>()`), so a field that
/// grows it has to move this bound and the README with it.
pub const CONN_BYTES_MAX: usize = 64;
const _: () = assert!(std::mem::size_of::<Conn>() <= CONN_BYTES_MAX);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Accepted; the HTTP upgrade request is not complete yet.
    Handshake,
    /// Upgraded; frames flow.
    Open,
    /// A close frame (or an HTTP refusal) is queued or sent; waiting for the peer's close,
    /// for the queue to drain, or for the close deadline.
    Closing,
    /// Our FIN is sent; reading (and discarding) until the peer's EOF or the deadline.
    Linger,
    /// Shut down; waiting for in-flight operations to complete before the slot is freed.
    Dead,
}

// The skeleton's I/O flags (`reactor::Conns` owns them): RECV_ARMED, SEND_INFLIGHT, DIRTY
// (listed for a flush after the batch) and STARVED (its recv ended on ENOBUFS and waits to
// re-arm). The connection's own flags below use the other bits.
pub use crate::reactor::{DIRTY, RECV_ARMED, SEND_INFLIGHT, STARVED};

/// We queued a close frame (or an HTTP refusal): nothing else is queued after it.
pub const CLOSE_SENT: u16 = 1 << 2;
/// The peer's close frame arrived: its further bytes are ignored.
pub const CLOSE_RECEIVED: u16 = 1 << 3;
/// Send FIN once the queue drains.
pub const FIN_AFTER_FLUSH: u16 = 1 << 4;
/// A ping is out and unanswered.
pub const PING_OUT: u16 = 1 << 5;
/// The upgrade completed: bytes are WebSocket frames.
pub const UPGRADED: u16 = 1 << 7;
/// Admin connection: `100 Continue` was sent for the request in progress.
pub const CONTINUE_SENT: u16 = 1 << 8;

/// Bytes in progress that do not fit in the provided receive buffer they arrived in (the
/// load generator's connections keep theirs in it too).
pub enum Partial {
    /// An incomplete HTTP request (or, client side, response) head, bounded by the header
    /// limit.
    Head(Vec<u8>),
    /// A WebSocket decoder with a frame or message in progress.
    Frames(Decoder),
}

impl Partial {
    /// What a connection keeps after a receive was fed to a decoder: `slot` is what it held
    /// before (the decoder, if one was in progress), `local` the decoder used when it held
    /// none. The decoder stays boxed only while it is not idle, so an idle connection holds
    /// no heap memory.
    pub fn keep_frames(
        slot: Option<Box<Partial>>,
        local: Decoder,
        idle: bool,
    ) -> Option<Box<Partial>> {
        match slot {
            Some(_) if idle => None,
            Some(slot) => Some(slot),
            None if idle => None,
            None => Some(Box::new(Partial::Frames(local))),
        }
    }
}

/// One connection.
pub struct Conn {
    /// The socket, in the owning shard's file table.
    pub fd: RawFd,
    /// Generation of this occupant of the slab slot (24 bits are significant).
    pub gen: u32,
    /// Life-cycle state.
    pub state: State,
    /// Bit flags (`RECV_ARMED`, `SEND_INFLIGHT`, ...).
    pub flags: u16,
    /// The route the connection upgraded on (index into the shard's routes).
    pub route: u8,
    /// Its timer: when it must act, and the wheel's live entry.
    pub timer: Deadline,
    /// Tick of the last frame received (heartbeat and idle accounting).
    pub last_seen: u32,
    /// Bytes queued or in flight for this connection (bounded by --max-pending).
    pub queued_bytes: u32,
    /// Frames waiting for the in-flight send to finish, in order.
    pub queue: SendQueue,
    /// Bytes in progress (None while idle).
    pub partial: Option<Box<Partial>>,
    /// Its channel and slot there (`Subscription::NONE` when not subscribed).
    pub sub: Subscription,
    /// The id of the session the connection is bound to in the shard's `Channels`
    /// (`NO_SESSION` when none); its tab is kept there.
    pub session: u32,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(fd: RawFd, gen: u32, now: u32) -> Conn {
        Conn {
            fd,
            gen,
            state: State::Handshake,
            flags: 0,
            route: 0,
            timer: Deadline::default(),
            last_seen: now,
            queued_bytes: 0,
            queue: SendQueue::default(),
            partial: None,
            sub: Subscription::NONE,
            session: NO_SESSION,
        }
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

crate::impl_slot!(Conn, State::Dead);

// The connection's own flags stay clear of the skeleton's.
const _: () = assert!(
    (CLOSE_SENT | CLOSE_RECEIVED | FIN_AFTER_FLUSH | PING_OUT | UPGRADED | CONTINUE_SENT)
        & crate::reactor::IO_FLAGS
        == 0
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_small() {
        // The compile-time assertion pins the bound; this reports the figure.
        let bytes = std::mem::size_of::<Conn>();
        println!("size_of::<Conn>() = {bytes}");
        assert!(bytes <= CONN_BYTES_MAX);
    }
}
