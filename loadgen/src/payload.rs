//! The stamp every timed message carries, the clock it is read from, and the per-connection
//! sequence tracker that counts missing, reordered and duplicated messages.
//!
//! A stamp is the send time (ns since the Unix epoch, CLOCK_REALTIME, so that a publisher
//! in another process on the same host can stamp messages too) and a sequence number, both
//! big-endian u64, at the start of the payload; the rest is filler. Text messages carry the
//! same two numbers as 32 lowercase hex digits.
//!
//! Invariants:
//! - `read_stamp(write_stamp(..))` returns what was written, for both encodings.
//! - `SeqTracker` holds 16 bytes and never allocates; its counts are exact within the
//!   last [`WINDOW`] sequence numbers and conservative beyond.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of a binary stamp: send time and sequence number.
pub const STAMP_BYTES: usize = 16;
/// Sequence numbers behind the newest that the tracker remembers individually.
pub const WINDOW: u64 = 64;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A payload template of `size` bytes: room for the stamp, then filler.
pub fn template(size: usize) -> Vec<u8> {
    vec![b'x'; size]
}

/// Writes the stamp at the start of `buf` (which holds at least 16 bytes, 32 for text).
pub fn write_stamp(buf: &mut [u8], sent_ns: u64, seq: u64, text: bool) {
    if text {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, value) in [sent_ns, seq].into_iter().enumerate() {
            for (j, byte) in value.to_be_bytes().into_iter().enumerate() {
                buf[i * 16 + j * 2] = HEX[usize::from(byte >> 4)];
                buf[i * 16 + j * 2 + 1] = HEX[usize::from(byte & 0xf)];
            }
        }
    } else {
        buf[..8].copy_from_slice(&sent_ns.to_be_bytes());
        buf[8..16].copy_from_slice(&seq.to_be_bytes());
    }
}

/// Whether `payload` is a whole message of `size` bytes as `template` and `write_stamp`
/// make it: the stamp, then only filler.
pub fn intact(payload: &[u8], size: usize, text: bool) -> bool {
    let stamp = if text { 2 * STAMP_BYTES } else { STAMP_BYTES };
    payload.len() == size && payload[stamp.min(size)..].iter().all(|&b| b == b'x')
}

/// Reads `(sent_ns, seq)` from a payload, or `None` if it carries no stamp.
pub fn read_stamp(payload: &[u8], text: bool) -> Option<(u64, u64)> {
    if text {
        let digits = payload.get(..2 * STAMP_BYTES)?;
        let mut values = [0u64; 2];
        for (i, value) in values.iter_mut().enumerate() {
            for &d in &digits[i * 16..i * 16 + 16] {
                let nibble = match d {
                    b'0'..=b'9' => d - b'0',
                    b'a'..=b'f' => d - b'a' + 10,
                    _ => return None,
                };
                *value = (*value << 4) | u64::from(nibble);
            }
        }
        Some((values[0], values[1]))
    } else {
        let head = payload.get(..STAMP_BYTES)?;
        let sent = u64::from_be_bytes(head[..8].try_into().ok()?);
        let seq = u64::from_be_bytes(head[8..].try_into().ok()?);
        Some((sent, seq))
    }
}

/// What one sequence number meant to the tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The next one expected.
    InOrder,
    /// Ahead of the next expected: this many were skipped (counted missing for now).
    Gap(u64),
    /// Behind the newest and not seen before: it arrived out of order (and is no longer
    /// missing).
    Late,
    /// Seen before.
    Duplicate,
}

/// Per-connection sequence state: the next number expected and a bitmap of the last
/// [`WINDOW`] numbers (bit `i` is `next - 1 - i`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqTracker {
    next: u64,
    window: u64,
}

/// `next` value of a tracker that takes its first number as the baseline.
const BASELINE: u64 = u64::MAX;

impl SeqTracker {
    /// Expects sequence numbers from `first` on.
    pub fn expecting(first: u64) -> SeqTracker {
        SeqTracker {
            next: first,
            window: 0,
        }
    }

    /// Takes whatever number arrives first as the start (a subscriber that joined late).
    pub fn from_first() -> SeqTracker {
        SeqTracker {
            next: BASELINE,
            window: 0,
        }
    }

    /// The next number expected; `None` while waiting for a baseline.
    pub fn next(&self) -> Option<u64> {
        (self.next != BASELINE).then_some(self.next)
    }

    /// Records `seq`.
    pub fn observe(&mut self, seq: u64) -> Seen {
        if self.next == BASELINE {
            self.next = seq;
        }
        if seq == self.next {
            self.window = (self.window << 1) | 1;
            self.next += 1;
            return Seen::InOrder;
        }
        if seq > self.next {
            let gap = seq - self.next;
            let shift = gap + 1;
            self.window = if shift >= WINDOW {
                1
            } else {
                (self.window << shift) | 1
            };
            self.next = seq + 1;
            return Seen::Gap(gap);
        }
        let behind = self.next - 1 - seq;
        if behind >= WINDOW {
            // Too old to tell apart; a skipped number that finally came is the likely case.
            return Seen::Late;
        }
        let bit = 1u64 << behind;
        if self.window & bit != 0 {
            Seen::Duplicate
        } else {
            self.window |= bit;
            Seen::Late
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for text in [false, true] {
            let mut buf = template(40);
            write_stamp(&mut buf, 1_700_000_000_123_456_789, 42, text);
            assert_eq!(
                read_stamp(&buf, text),
                Some((1_700_000_000_123_456_789, 42))
            );
            assert!(buf[32..].iter().all(|&b| b == b'x'));
        }
        let mut buf = template(40);
        write_stamp(&mut buf, 7, 8, false);
        assert!(intact(&buf, 40, false));
        assert!(!intact(&buf[..39], 40, false));
        buf[39] = b'y';
        assert!(!intact(&buf, 40, false));
        assert_eq!(read_stamp(&[0; 15], false), None);
        assert_eq!(read_stamp(&[b'g'; 32], true), None);
    }

    #[test]
    fn tracker_counts_gaps_late_and_duplicates() {
        let mut t = SeqTracker::expecting(0);
        assert_eq!(t.observe(0), Seen::InOrder);
        assert_eq!(t.observe(1), Seen::InOrder);
        assert_eq!(t.observe(4), Seen::Gap(2));
        assert_eq!(t.observe(2), Seen::Late);
        assert_eq!(t.observe(2), Seen::Duplicate);
        assert_eq!(t.observe(4), Seen::Duplicate);
        assert_eq!(t.observe(3), Seen::Late);
        assert_eq!(t.observe(5), Seen::InOrder);
        assert_eq!(t.next(), Some(6));
        assert_eq!(t.observe(1000), Seen::Gap(994));
        assert_eq!(t.observe(10), Seen::Late);
    }

    #[test]
    fn late_joiner_starts_at_its_first_message() {
        let mut t = SeqTracker::from_first();
        assert_eq!(t.next(), None);
        assert_eq!(t.observe(17), Seen::InOrder);
        assert_eq!(t.observe(18), Seen::InOrder);
        assert_eq!(t.next(), Some(19));
    }
}
