//! One client connection as a worker keeps it in its slab.
//!
//! A slot lives from the first connect of a connection index until the connection ends for
//! good; with reconnects it stays (in [`State::Backoff`], without a socket) between
//! attempts, so the index and its source address stay with it.
//!
//! Invariants:
//! - `connect` is Some exactly while a Connect SQE of this slot is in the kernel;
//!   `RECV_ARMED` is set exactly while its multishot recv is; `SEND_INFLIGHT` exactly
//!   while a Send is. The slot's socket is closed only when none of the three holds.
//! - An open idle connection holds no heap memory: `partial` is None and `queue` has no
//!   capacity.
//! - Nothing is queued after our close frame.

use std::os::fd::RawFd;

pub use ringpush::conn::Partial;
use ringpush::reactor::SendQueue;
use ringpush::ring::connect::ConnectId;
use ringpush::timer::Deadline;

use crate::payload::SeqTracker;

/// The per-connection struct is pinned at or under this many bytes.
pub const CONN_BYTES_MAX: usize = 160;
const _: () = assert!(std::mem::size_of::<Conn>() <= CONN_BYTES_MAX);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The Connect SQE is in the kernel.
    Connecting,
    /// Connected; the upgrade request is sent and the 101 not parsed yet.
    Handshake,
    /// Upgraded; frames flow.
    Open,
    /// A close frame is queued or sent (ours or our answer to the server's); waiting for
    /// the rest of the close handshake and the server's FIN.
    Closing,
    /// Shut down; waiting for operations in the kernel before the socket is closed.
    Dead,
    /// No socket; reconnecting when the backoff deadline passes.
    Backoff,
}

// The reactor skeleton's I/O flags (`ringpush::reactor::Conns` owns them): RECV_ARMED,
// SEND_INFLIGHT, DIRTY and STARVED. The connection's own flags below use the other bits.
pub use ringpush::reactor::{RECV_ARMED, SEND_INFLIGHT};

/// We queued a close frame.
pub const CLOSE_SENT: u16 = 1 << 2;
/// The server's close frame arrived.
pub const CLOSE_RECEIVED: u16 = 1 << 3;
/// The 101 was parsed: bytes are WebSocket frames.
pub const UPGRADED: u16 = 1 << 4;
/// Once released, reopen after a backoff rather than free the slot.
pub const RETRY: u16 = 1 << 5;
/// Resume scenario: ended on purpose; once released, wait in `Backoff` without a deadline
/// until the main thread says reconnect.
pub const PARKED: u16 = 1 << 7;
/// Resume scenario: this attempt has every missed message.
pub const CAUGHT_UP: u16 = 1 << 8;
const _: () = assert!(
    (CLOSE_SENT | CLOSE_RECEIVED | UPGRADED | RETRY | PARKED | CAUGHT_UP)
        & ringpush::reactor::IO_FLAGS
        == 0
);

/// One connection slot.
pub struct Conn {
    /// The socket, or -1 in `Backoff`.
    pub fd: RawFd,
    /// Generation of the current attempt (24 bits are carried in `user_data`).
    pub gen: u32,
    /// The connection index: which source address it uses and which share it is of.
    pub index: u64,
    /// Lifecycle state.
    pub state: State,
    /// `RECV_ARMED`, `SEND_INFLIGHT`, ...
    pub flags: u16,
    /// Consecutive failed attempts (reset when a 101 arrives).
    pub attempts: u8,
    /// When the current attempt started, µs since the worker's epoch (wrapping).
    pub started_us: u32,
    /// The current deadline and the wheel entry that checks it.
    pub timer: Deadline,
    /// The Connect in the kernel, if any.
    pub connect: Option<ConnectId>,
    /// The handshake nonce of the current attempt.
    pub nonce: [u8; 16],
    /// Echo: sequence number of the next message sent.
    pub seq_out: u64,
    /// Sequence numbers received.
    pub seq_in: SeqTracker,
    /// JSON mode: the offset of the scenario's channel where this connection's stream
    /// stands (from `subscribed`), which a resume asks to continue from.
    pub since_offset: u64,
    /// Frames waiting for the send in flight to finish.
    pub queue: SendQueue,
    /// Bytes in progress across receives.
    pub partial: Option<Box<Partial>>,
}

impl Conn {
    /// A slot for connection `index` before its first attempt, which waits like a
    /// connection backing off (for no time).
    pub fn new(index: u64) -> Conn {
        Conn {
            fd: -1,
            gen: 0,
            index,
            state: State::Backoff,
            flags: 0,
            attempts: 0,
            started_us: 0,
            timer: Deadline::default(),
            connect: None,
            nonce: [0; 16],
            seq_out: 0,
            seq_in: SeqTracker::default(),
            since_offset: 0,
            queue: SendQueue::default(),
            partial: None,
        }
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Whether an operation of this slot is in the kernel.
    pub fn busy(&self) -> bool {
        self.connect.is_some() || self.has(RECV_ARMED) || self.has(SEND_INFLIGHT)
    }
}

ringpush::impl_slot!(Conn, State::Dead);
