//! What crosses the ring boundary: the [`Owner`] a connection's operations carry, the
//! packing of (op kind, key, generation) into `user_data`, the typed [`Completion`]s a reap
//! hands out, and the [`InFlight`] counts a quiesce waits on.
//!
//! Invariants:
//! - `user_data` is (op kind: 8 bits, generation: 24 bits, key: 32 bits); every op kind
//!   decodes to a named [`Completion`], and an unknown byte to `Completion::Unknown`.

use bytes::Bytes;

/// Identifies a connection slot: its slab key and the generation of its current occupant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Slab key of the connection.
    pub key: u32,
    /// Generation of the slot's occupant (24 bits are carried in `user_data`).
    pub gen: u32,
}

/// Generations are carried in 24 bits of `user_data`.
pub const GEN_MASK: u32 = 0x00ff_ffff;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Tick = 4,
    Cancel = 5,
    Msg = 6,
    Connect = 7,
    Doorbell = 8,
}

impl OpKind {
    /// The kind a `user_data` byte names, or None for a byte no SQE of ours carries.
    pub(super) fn decode(byte: u8) -> Option<OpKind> {
        Some(match byte {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Tick,
            5 => OpKind::Cancel,
            6 => OpKind::Msg,
            7 => OpKind::Connect,
            8 => OpKind::Doorbell,
            _ => return None,
        })
    }
}

pub(super) fn pack(kind: OpKind, key: u32, gen: u32) -> u64 {
    ((kind as u64) << 56) | (((gen & GEN_MASK) as u64) << 32) | key as u64
}

pub(super) fn unpack(user_data: u64) -> (u8, u32, u32) {
    (
        (user_data >> 56) as u8,
        user_data as u32,
        ((user_data >> 32) as u32) & GEN_MASK,
    )
}

/// What a ring has in the kernel: every operation whose completion is still to come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Sends (frames the kernel may still read).
    pub sends: usize,
    /// Armed receives (the kernel may still write into provided buffers).
    pub recvs: usize,
    /// Armed multishot accepts.
    pub accepts: usize,
    /// Whether the tick is armed.
    pub tick: bool,
    /// Outgoing connects (addresses the kernel may still read).
    pub connects: usize,
}

impl InFlight {
    /// Whether nothing at all is in the kernel.
    pub fn is_empty(&self) -> bool {
        *self == InFlight::default()
    }
}

impl std::fmt::Display for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sends={} recvs={} accepts={} tick={} connects={}",
            self.sends,
            self.recvs,
            self.accepts,
            u8::from(self.tick),
            self.connects
        )
    }
}

/// A reaped completion, typed by the operation that produced it.
#[derive(Debug)]
pub enum Completion {
    /// Multishot accept: `res` is the new fd or a negative errno.
    Accept { res: i32, more: bool },
    /// Multishot recv for `owner`: `res` bytes in buffer `bid`, 0 at EOF, or a negative errno.
    Recv {
        owner: Owner,
        res: i32,
        more: bool,
        bid: Option<u16>,
        buf_more: bool,
    },
    /// A send of `frame[offset..]` finished: `res` bytes were sent, or a negative errno.
    Send {
        owner: Owner,
        res: i32,
        frame: Bytes,
        offset: usize,
    },
    /// The periodic tick: `res` is -ETIME when it expired; anything else is a failure the
    /// caller counts (the ring re-arms the tick itself, a failed one after a full interval).
    Tick { res: i32, more: bool },
    /// An async cancel finished.
    Cancel { res: i32 },
    /// A doorbell (MsgRingData) to ring `target` failed with `res`; successes post nothing.
    /// The target still drains its inbox on its next tick.
    DoorbellFailed { target: u32, res: i32 },
    /// A completion whose op kind no SQE of ours carries: a bug, counted and logged.
    Unknown { user_data: u64, res: i32 },
    /// Handing SQEs to the kernel failed with `errno` (not EINTR, EBUSY or EAGAIN, which
    /// are retried); the SQEs stay queued for the next enter.
    SubmitFailed { errno: i32 },
    /// A message from another ring (MsgRingData): its 64-bit payload, carried in `user_data`
    /// minus the op byte, and `res` as the sender chose it.
    Msg { data: u64, res: i32 },
    /// An outgoing connect for `owner` finished: 0 when connected, or a negative errno
    /// (`-ECANCELED` after [`Ring::cancel_connect`]). See `connect.rs`.
    Connect { owner: Owner, res: i32 },
}
