//! The history store's value types: its bounds (`HistoryConfig`), a channel's `Epoch` and
//! `Position`, what a resume or a read answers (`Replay`, `Page`, `Retained`), why an entry
//! left (`Eviction`) and the store's counters (`HistoryStats`). Plain data: the store
//! itself, its locks and its accounting are in `history.rs`.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// The bounds of the store.
#[derive(Clone, Debug)]
pub struct HistoryConfig {
    /// `--history-size`: entries kept per channel; 0 keeps none (history off).
    pub size: usize,
    /// `--history-ttl`: entries older than this are gone; `None` keeps them by size only.
    pub ttl: Option<Duration>,
    /// `--history-memory`: node-wide cap on retained bytes (payloads plus
    /// `ENTRY_OVERHEAD_BYTES` each).
    pub memory_bytes_max: usize,
    /// Channel entries no shard holds that may exist at once (offsets and epochs of
    /// channels nobody is subscribed to); the least recently used goes first.
    pub idle_channels_max: usize,
    /// An entry nobody holds and that retains nothing is dropped by `sweep` after this.
    pub idle_ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            size: 0,
            ttl: None,
            memory_bytes_max: 64 << 20,
            idle_channels_max: 100_000,
            idle_ttl: Duration::from_secs(300),
        }
    }
}

/// One unbroken history of one channel, named on the wire by 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(pub(super) u64);

/// An epoch's text, without allocation.
#[derive(Clone, Copy)]
pub struct EpochText([u8; 16]);

impl EpochText {
    /// The 16 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl Epoch {
    /// The epoch's text on the wire.
    pub fn text(self) -> EpochText {
        let mut out = [0u8; 16];
        for (at, digit) in out.iter_mut().enumerate() {
            let nibble = (self.0 >> (60 - 4 * at)) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        EpochText(out)
    }

    /// Reads an epoch the node wrote; `None` for anything else (a foreign epoch).
    pub fn parse(text: &str) -> Option<Epoch> {
        let valid =
            text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
            .map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// A channel's position: its epoch and the offset of its last publish (0: none yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

impl Position {
    /// No position known yet: a shard holding a channel through the broker before its first
    /// message (epoch 0 is never one Redis gives).
    pub const UNKNOWN: Position = Position {
        epoch: Epoch(0),
        offset: 0,
    };
}

/// The frame kind a publish had, kept for raw subscribers' replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    Text,
    Binary,
}

/// The outcome of a resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Every message in (since, upto] was handed to the closure, in offset order.
    Recovered {
        /// How many were replayed.
        replayed: u64,
    },
    /// The client saw messages this shard has not delivered yet (`upto < since <=` last
    /// offset, same epoch): recovered, but it joins the live list only once the shard's
    /// watermark reaches `since`.
    Ahead,
    /// History is lost (evicted, expired, never kept, another epoch, or an offset the
    /// channel never reached): nothing was replayed. `current` is the channel's position,
    /// if it exists.
    NotRecovered { current: Option<Position> },
}

/// Why retained entries left the store (a metric label each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Past `--history-size` for its channel.
    Size,
    /// Older than `--history-ttl`.
    Ttl,
    /// The oldest entry node-wide while past `--history-memory`.
    Memory,
    /// Its channel entry was dropped (least recently used past `idle_channels_max`).
    Channel,
}

/// A snapshot of the store's counters and gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Channel entries (held or not).
    pub channels: u64,
    /// Retained entries.
    pub entries: u64,
    /// Retained bytes (what `--history-memory` bounds).
    pub bytes: u64,
    /// Entries evicted, by `Eviction` (Size, Ttl, Memory, Channel).
    pub evictions: [u64; 4],
    /// Channel entries dropped (each starts a new epoch on its next use).
    pub channels_dropped: u64,
    /// Resumes that found every missed message (including `Ahead`).
    pub replays_recovered: u64,
    /// Resumes that did not.
    pub replays_not_recovered: u64,
    /// Messages handed out by recovered resumes.
    pub replayed_messages: u64,
}

/// One message handed out by `History::read`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retained {
    pub offset: u64,
    /// A view of the publish's payload (no copy).
    pub payload: Bytes,
    pub kind: PayloadKind,
}

/// What `History::read` found for one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The channel's epoch and last offset.
    pub position: Position,
    /// The oldest offset still retained (and not past `--history-ttl`), if any.
    pub oldest_offset: Option<u64>,
    /// Entries retained (and not past `--history-ttl`).
    pub retained: u64,
    /// The entries after `since`, oldest first, at most `limit`.
    pub entries: Vec<Retained>,
    /// Whether more retained entries follow the last one in `entries`.
    pub more: bool,
}
